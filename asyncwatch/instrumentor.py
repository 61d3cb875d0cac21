"""``opentelemetry-instrument`` integration: the ``opentelemetry_instrumentor`` entry point.

With asyncwatch installed, ``opentelemetry-instrument python app.py`` loads this instrumentor
after the OpenTelemetry distro has set the global providers, so asyncwatch's metrics and spans
go through the same exporters as the rest of the app's telemetry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from ._core.config import Config
from ._watch import install, uninstall


class AsyncWatchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs asyncwatch; keyword arguments that are asyncwatch settings are passed on."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """asyncwatch instruments asyncio itself, which needs no package."""
        return []

    def _instrument(self, **kwargs: Any) -> None:
        fields = {f.name for f in dataclasses.fields(Config)}
        install(**{k: v for k, v in kwargs.items() if k in fields})

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstall()
