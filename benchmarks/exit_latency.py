"""Exit latency with a black-holed collector: asyncwatch vs a plain OpenTelemetry SDK set-up.

Both programs export metrics and spans over OTLP/HTTP to an endpoint that accepts TCP
connections and never answers. We measure the time from the program's last line to the
process having exited: the SDK alone waits out its exporter's own timeouts and retries;
asyncwatch bounds every export and its shutdown by ``export_timeout_s`` (default 3 s).
Run: ``python benchmarks/exit_latency.py``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS
from startup import commands, wait

from tests.endpoints import black_hole

PLAIN_SDK = """
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
metrics.set_meter_provider(MeterProvider(metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]))
tp = TracerProvider()
tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(tp)
counter = metrics.get_meter("app").create_counter("jobs")
async def job():
    with trace.get_tracer("app").start_as_current_span("job"):
        counter.add(1)
asyncio.run(job())
print("done", flush=True)
"""

ASYNCWATCH = """
import asyncio, asyncwatch
asyncwatch.install(metrics_exporters=("otlp",), traces_exporters=("otlp",), task_span_ratio=1.0)
async def job():
    await asyncio.sleep(0)
asyncio.run(job())
print("done", flush=True)
"""


# A short asyncio program whose last line says so (for compare()).
SHORT = (
    "import asyncio\nasync def main():\n    await asyncio.sleep(0)\nasyncio.run(main())\n"
    "print('done', flush=True)\n"
)


def exit_after_last_line(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from the program printing ``done`` (its last line) to its process gone."""
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    began = time.monotonic()
    assert line.strip() == "done", line
    wait(proc, 300)  # blocking: Popen.wait(timeout) would poll in steps of up to 50 ms
    return time.monotonic() - began


def exit_time(code: str, port: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ASYNCWATCH_"))}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    return exit_after_last_line([sys.executable, "-c", code], env)


def compare(rounds: int) -> dict[str, float]:
    """Exit alone, side by side: milliseconds from SHORT's last line to its process gone, bare,
    under ``asyncwatch run`` (defaults: the /metrics endpoint running) and under
    opentelemetry-instrument (startup.py's commands); the median over ``rounds``."""
    configs = commands(["-c", SHORT])
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(exit_after_last_line(*configs[name]()) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    rounds = 3
    times: dict[str, list[float]] = {"plain OTel SDK": [], "asyncwatch": []}
    with black_hole() as port:
        for _ in range(rounds):
            times["plain OTel SDK"].append(exit_time(PLAIN_SDK, port))
            times["asyncwatch"].append(exit_time(ASYNCWATCH, port))
    lines = ["| program | exit after last line, black-holed collector (median s) | worst (s) |",
             "|---|---:|---:|"]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values):.1f} | {max(values):.1f} |")
    lines.append("")
    lines.append(f"{rounds} runs each, OTLP/HTTP metrics and spans, default timeouts.")
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "exit_latency.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
