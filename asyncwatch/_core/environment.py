"""The checks a configuration needs of this machine and of the SDK's ``OTEL_*`` variables.

``Config`` checks each value alone when it is made; these run when asyncwatch is about to
start (``install()``, ``asyncwatch run``, ``asyncwatch config --check``), where what the
machine says (a host that does not resolve, a folder that is not writable) can be known.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from .config import Config, ConfigError, settings
from .config_parse import sdk_problem
from .hostguard import address_arg


def check_environment(config: Config, env: Mapping[str, str] | None = None) -> None:
    """The checks that depend on this machine and on the SDK's ``OTEL_*`` variables.

    ``install()`` runs them before it starts anything (``asyncwatch run`` too, before the
    command starts), so a value that would only fail later (a host name that does not resolve,
    a missing profile folder, an export interval the SDK would ignore) is refused up front
    with the setting named.
    """
    env = os.environ if env is None else env
    if config.uses("prometheus") and config.enabled:
        host = config.prometheus_host
        try:
            socket.getaddrinfo(
                address_arg(host), config.prometheus_port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:
            raise ConfigError(
                f"prometheus_host={host!r} ({_source('prometheus_host', env)}): does not "
                f"resolve ({exc})"
            ) from None
    if config.profile_dir and not (
        os.path.isdir(config.profile_dir) and os.access(config.profile_dir, os.W_OK | os.X_OK)
    ):
        raise ConfigError(
            f"profile_dir={config.profile_dir!r} ({_source('profile_dir', env)}): not a writable "
            "directory (create it first, or leave it empty for a temporary folder)"
        )
    periodic = any(config.uses(kind) for kind in ("otlp", "console"))
    spans = "none" not in config.traces_exporters
    otlp = config.uses("otlp") or config.uses("otlp", signal="traces")
    problem = sdk_problem(env, periodic=periodic, spans=spans, otlp=otlp,
                          protocol=config.otlp_protocol)
    if problem is not None:
        raise ConfigError(problem)


def _source(name: str, env: Mapping[str, str]) -> str:
    """The variable that set ``name`` (the first one present), else its own variable."""
    variables = settings()[name].env
    return next((v for v in variables if (env.get(v) or "").strip()), variables[0])
