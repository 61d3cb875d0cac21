"""A dead, black-holed or resetting exporter endpoint never blocks or breaks the app."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import pytest

import asyncwatch

from .conftest import python_env, wait_for
from .endpoints import OtlpReceiver, black_hole, closed_port, resetting

APP = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import asyncwatch

    watch = asyncwatch.install()

    async def job():
        await asyncio.sleep(0)

    async def main():
        deadline = time.monotonic() + 60
        # keep making tasks (and spans) until the exporters have tried and failed a few times
        while sum(watch.drops.counts.values()) < 3 and time.monotonic() < deadline:
            await asyncio.gather(*(job() for _ in range(50)))
            await asyncio.sleep(0.05)
        return sum(c.created for c in asyncwatch.stats().coroutines.values())

    created = asyncio.run(main())
    print(json.dumps({"created": created,
                      "drops": {f"{s}/{r}": n for (s, r), n in watch.drops.counts.items()}}),
          flush=True)
    print("done", flush=True)
    """
)


def endpoint_env(port: int) -> dict[str, str]:
    return python_env(
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_METRIC_EXPORT_INTERVAL="200",
        OTEL_BSP_SCHEDULE_DELAY="200",
        ASYNCWATCH_EXPORT_TIMEOUT_S="1",
        ASYNCWATCH_TASK_SPAN_RATIO="1",
    )


def closed() -> AbstractContextManager[int]:
    return nullcontext(closed_port())


@pytest.mark.parametrize(
    "endpoint", [closed, black_hole, resetting], ids=["dead", "black-hole", "reset"]
)
def test_bad_endpoint_costs_a_counted_drop_and_a_prompt_exit(
    endpoint: Callable[[], AbstractContextManager[int]],
) -> None:
    """The app runs and exits normally; drops are counted; shutdown is bounded by our timeout."""
    with endpoint() as port:
        proc = subprocess.Popen(
            [sys.executable, "-c", APP],
            env=endpoint_env(port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        report = proc.stdout.readline()
        assert proc.stdout.readline().strip() == "done", proc.stderr.read() if proc.stderr else ""
        done_at = time.monotonic()
        _, err = proc.communicate(timeout=60)
        exit_took = time.monotonic() - done_at
    import json

    data = json.loads(report)
    assert proc.returncode == 0, err
    assert data["created"] > 0
    assert sum(data["drops"].values()) >= 3, data
    assert "Traceback" not in err, err
    # Without asyncwatch's bound the OTLP exporter alone waits out its own 10 s timeout.
    assert exit_took < 10, exit_took


def test_export_resumes_when_the_endpoint_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports fail while nothing listens, then arrive once a receiver is up on that port."""
    port = closed_port()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    watch = asyncwatch.install(metrics_exporters=("otlp",), export_timeout_s=1)

    async def job() -> None:
        await asyncio.sleep(0)

    asyncio.run(job())
    wait_for(lambda: sum(watch.drops.counts.values()) > 0, what="a failed export")
    with OtlpReceiver(port) as receiver:
        wait_for(lambda: receiver.metric_names, what="an export to arrive")
        assert "asyncwatch.task.created" in receiver.metric_names[-1]


def test_span_queue_is_bounded_and_overflow_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """With spans piling up behind a black hole, the queue stays bounded and drops are counted."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "32")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    with black_hole() as port:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        watch = asyncwatch.install(
            metrics_exporters=("none",),
            traces_exporters=("otlp",),
            task_span_ratio=1.0,
            export_timeout_s=1,
        )

        async def job() -> None:
            pass

        async def main() -> None:
            await asyncio.gather(*(job() for _ in range(500)))

        asyncio.run(main())
        processor = watch.telemetry.tracer_provider._active_span_processor._span_processors[0]
        assert len(processor._batch_processor._queue) <= 64
        # 500 spans into a 64-span queue whose worker is stuck on the black hole
        assert watch.drops.counts.get(("traces", "queue_full"), 0) >= 500 - 64 - 32
        asyncwatch.uninstall(timeout_s=1)


def test_otlp_metrics_reach_a_real_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """With OTEL_METRICS_EXPORTER=otlp, task metrics arrive at an OTLP/HTTP receiver."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
        asyncwatch.install(
            metrics_exporters=("otlp",), traces_exporters=("otlp",), task_spans=("*.job",)
        )

        async def job() -> None:
            await asyncio.sleep(0)

        asyncio.run(job())
        wait_for(
            lambda: any("asyncwatch.task.duration" in names for names in receiver.metric_names),
            what="metrics",
        )
        asyncwatch.uninstall(timeout_s=5)
        wait_for(
            lambda: any(name.endswith(".job") for name in receiver.span_names), what="the task span"
        )


def test_inconsistent_batch_settings_fail_at_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_BSP_* values the SDK would reject fail install() with both variables named."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    with pytest.raises(
        asyncwatch.ConfigError,
        match="OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512 must not exceed OTEL_BSP_MAX_QUEUE_SIZE=64",
    ):
        asyncwatch.install(metrics_exporters=("none",), traces_exporters=("console",))
    assert asyncwatch.current() is None


def test_a_dead_endpoint_logs_one_line_and_one_on_recovery(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14.8: a closed port gives one "failing" line per signal (not the SDK's line per
    attempt), the drops are counted, and one "recovered" line once a real receiver appears."""
    port = closed_port()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
    caplog.set_level(logging.INFO)
    watch = asyncwatch.install(metrics_exporters=("otlp",), export_timeout_s=2)

    async def job() -> None:
        await asyncio.sleep(0)

    asyncio.run(job())
    wait_for(lambda: sum(watch.drops.counts.values()) >= 8, what="8 failed exports")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    assert len(lines()) == 1, lines()
    assert lines()[0].startswith("asyncwatch: metrics exports are failing (")
    assert str(port) in lines()[0]  # the reason, from the exporter's own (suppressed) line
    with OtlpReceiver(port) as receiver:
        wait_for(lambda: receiver.metric_names, what="an export to arrive")
        wait_for(lambda: len(lines()) == 2, what="the recovery line")
        assert lines()[1].startswith("asyncwatch: metrics exports recovered after ")
        asyncwatch.uninstall(timeout_s=2)
    # whatever the shutdown adds, none of it is the SDK's per-attempt lines
    assert all(r.name == "asyncwatch" for r in caplog.records if r.levelno >= logging.WARNING)


def test_the_apps_own_exporter_logs_are_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    """Only records from asyncwatch's export threads are held back."""
    from opentelemetry.exporter.otlp.proto.http import metric_exporter

    asyncwatch.install(metrics_exporters=("otlp",), export_timeout_s=1)
    logging.getLogger(metric_exporter.__name__).warning("the app's own exporter speaks")
    assert "the app's own exporter speaks" in caplog.text
