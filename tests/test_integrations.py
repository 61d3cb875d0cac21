"""opentelemetry-instrument picks asyncwatch up; memory attribution; the docs' references stay
true."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import asyncwatch
from asyncwatch._core import names as n

from .conftest import ROOT, collect, point, python_env


def test_opentelemetry_instrument_installs_asyncwatch(tmp_path: Path) -> None:
    """Through the entry point, asyncwatch rides on the distro's providers and exporters."""
    tool = shutil.which("opentelemetry-instrument", path=os.path.dirname(sys.executable))
    if tool is None:
        pytest.skip("opentelemetry-instrument is not installed")
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, asyncwatch
            async def job():
                await asyncio.sleep(0)
            asyncio.run(job())
            w = asyncwatch.current()
            adopted = w is not None and not w.telemetry._own_meter_provider
            print("ADOPTED", adopted, w and w.prometheus_url)
            """
        )
    )
    env = python_env(
        OTEL_METRICS_EXPORTER="console", OTEL_TRACES_EXPORTER="none", OTEL_LOGS_EXPORTER="none"
    )
    result = subprocess.run(
        [tool, sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ADOPTED True None" in result.stdout
    assert '"name": "asyncwatch.task.created"' in result.stdout  # the distro's final export


async def hoarder() -> list[bytes]:
    await asyncio.sleep(0)
    return [bytes(1000) for _ in range(2000)]  # ~2 MB still alive when sampled


def test_memory_attribution_charges_the_allocating_coroutine(reader: object) -> None:
    """With memory_attribution on, live bytes are charged to the coroutine that made them."""
    watch = asyncwatch.install(
        metrics_exporters=("none",),
        memory_attribution=True,
        memory_interval_s=3600,
        metric_readers=[reader],
    )
    kept: list[list[bytes]] = []

    async def main() -> None:
        kept.append(await asyncio.create_task(hoarder()))

    asyncio.run(main())
    assert watch._memory is not None
    sizes = watch._memory.sample()
    key = f"{__name__}.hoarder"
    assert sizes[key] >= 2_000_000
    assert asyncwatch.stats()[key].memory_bytes == sizes[key]
    metric = point(collect(reader)[n.TASK_MEMORY.name], code__function__name=key)  # type: ignore[arg-type]
    assert metric.value == sizes[key]
    assert len(kept[0]) == 2000  # still alive while sampled


def test_docs_reference_tables_are_current() -> None:
    """The docs' settings, metrics, alerts and command-line references match the code
    (regenerate if not); the metric names they list are the ones tests/test_names.py checks on
    a served page."""
    result = subprocess.run(
        [sys.executable, "scripts/gen_reference.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_name_every_metric_and_variable() -> None:
    """Every metric appears in the metric reference, every ASYNCWATCH_ variable in the
    settings reference."""
    reference = ROOT / "docs" / "reference"
    metrics = (reference / "metrics.md").read_text()
    for metric in n.METRICS:
        assert f"`{metric.name}`" in metrics
    text = (reference / "settings.md").read_text()
    from asyncwatch._core.config import settings_reference

    for _, variables, _, _ in settings_reference():
        for variable in variables.split(", "):
            assert variable in text
