"""HTTP throughput and tail latency: a Starlette app on uvicorn, bare vs observed, under wrk.

The app has a JSON route (``/json``) and a route with a path parameter (``/items/{item_id}``);
wrk alternates between them. Each configuration is a uvicorn process (uvloop and httptools
when installed, access log off) pinned to CPU 0 with ``taskset``; ``wrk`` (Debian package
``wrk``) runs pinned to CPU 1 and connects over 127.0.0.1. All servers run side by side and
are loaded in turn, the order rotated each round; each round yields every configuration's
requests/s divided by bare's in that round, and the table gives the median of those ratios,
the median p99 latency and its ratio to bare's. A second figure, less sensitive to other load
on the machine than requests/s: the server process's CPU time (user + system, from
``/proc``) per request served during the run, and its ratio to bare's. The last column counts
the loop thread's voluntary context switches per 1,000 requests: it sleeps in epoll when it
has nothing to do, and waits for the GIL when another thread of the process holds it, which
is how a background thread's periodic work reaches the loop's latency.

Configurations:

* ``bare`` - the app alone.
* ``asyncwatch`` - ``AsyncWatchMiddleware`` with metrics (and the task hook, installed before
  the loop starts, as ``asyncwatch run`` does), Prometheus endpoint on a spare port.
* ``asyncwatch-http-only`` - the same with the other detectors off (``loop_watch=False``,
  ``deadlock_detection=False``): the middleware and task hook alone.
* ``asyncwatch+spans`` - ``asyncwatch`` with a SERVER span per request (SDK TracerProvider, batch
  processor, an exporter that drops spans).
* Attribution (not run by default; ``--only`` or ``--attribute``): ``asyncwatch`` with one
  periodic piece off each - ``asyncwatch-no-loopwatch`` (heartbeat and watchdog thread),
  ``asyncwatch-no-deadlock`` (scans), ``asyncwatch-no-advisor``, ``asyncwatch-no-exporter``
  (``metrics_exporters=none``: no /metrics server thread), ``asyncwatch-quiet`` (all four
  off: the middleware and the task hook alone), ``asyncwatch-no-middleware`` (defaults,
  the app not wrapped: everything but the middleware), and two floors, the same defaults with
  a yardstick in place of asyncwatch's middleware: ``asyncwatch-floor``
  (``FloorMiddleware``, the least any middleware does to time requests by route, method and
  status) and ``asyncwatch-floor-figures`` (``FiguresFloorMiddleware``, the figures
  asyncwatch's middleware records, done the plainest way). The distance from a floor to
  ``asyncwatch`` is what asyncwatch's middleware costs beyond it.
* ``otel-asgi`` - opentelemetry-instrumentation-asgi's ``OpenTelemetryMiddleware`` with SDK
  Meter and Tracer providers (stable HTTP conventions, same span processing).
* ``otel-asgi-metrics`` - the same with a no-op tracer provider (metrics only).
* ``starlette-exporter`` (not run by default; ``--only``) - starlette-exporter's
  ``PrometheusMiddleware`` (``group_paths=True``: the route template as label), the anchor of
  ``benchmarks/costs.py``.

Run: ``python benchmarks/asgi.py`` (``--quick`` for a short run: 3 rounds of 3 s).
"""

from __future__ import annotations

import argparse
import contextvars
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, save

CONFIGS = (
    "bare",
    "asyncwatch",
    "asyncwatch-http-only",
    "asyncwatch+spans",
    "otel-asgi",
    "otel-asgi-metrics",
)

# asyncwatch with one periodic piece off each, to attribute its tail latency (--attribute)
VARIANTS: dict[str, dict[str, Any]] = {
    "asyncwatch": {},
    "asyncwatch-http-only": {"loop_watch": False, "deadlock_detection": False},
    "asyncwatch+spans": {"http_spans": True},
    "asyncwatch-no-loopwatch": {"loop_watch": False},
    "asyncwatch-no-deadlock": {"deadlock_detection": False},
    "asyncwatch-no-advisor": {"advisor": False},
    "asyncwatch-no-exporter": {"metrics_exporters": ("none",)},
    "asyncwatch-quiet": {
        "loop_watch": False,
        "deadlock_detection": False,
        "advisor": False,
        "metrics_exporters": ("none",),
    },
    "asyncwatch-no-middleware": {},
    "asyncwatch-floor": {},
    "asyncwatch-floor-figures": {},
}
ATTRIBUTION = tuple(v for v in VARIANTS if v not in CONFIGS)
ANCHORS = ("starlette-exporter",)

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  if counter % 2 == 0 then
    return wrk.format("GET", "/json")
  end
  return wrk.format("GET", "/items/" .. (counter % 1000))
end
"""


class FloorMiddleware:
    """The floor of an HTTP metrics middleware: ``http.server.request.duration`` by route
    template, method and status and nothing else (no sizes, no active requests, no errors,
    no task counts, no guards against odd messages). It wraps ``send`` to see the status and
    the last body part, as every pure ASGI middleware must, and appends the duration to a
    list per key. Not a product: the yardstick for ``asyncwatch``'s own middleware."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.durations: dict[tuple[Any, ...], list[float]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def observed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, observed)
        route = scope.get("route")
        key = (getattr(route, "path_format", None), scope["method"], status)
        durations = self.durations.get(key)
        if durations is None:
            durations = self.durations[key] = []
        durations.append(time.perf_counter() - start)
        if len(durations) > 1000:
            durations.clear()


# The request being handled, for the tasks it creates (FiguresFloorMiddleware)
REQUEST_TASKS: contextvars.ContextVar[list[int]] = contextvars.ContextVar("floor_request_tasks")


# The figures FiguresFloorMiddleware records that ``figures_floor`` can leave out, to see what
# each costs (``asgi_driven.py``): requests in flight, the context variable for tasks per
# request, body sizes, and the ``receive`` wrapper the request body sizes need.
FIGURES = ("in-flight", "tasks", "sizes", "receive")


def figures_floor(left_out: frozenset[str] = frozenset()) -> type:
    """``FiguresFloorMiddleware``, or the same with the figures in ``left_out`` (of
    ``FIGURES``) taken out."""
    unknown = left_out - set(FIGURES)
    if unknown:
        raise ValueError(f"unknown figures: {sorted(unknown)}")
    in_flight, tasks_var = "in-flight" not in left_out, "tasks" not in left_out
    sizes, wrap_receive = "sizes" not in left_out, "receive" not in left_out

    class FiguresFloorMiddleware:
        """The floor of the figures asyncwatch's middleware records, done the plainest way,
        with none of its guards: duration, request and response body sizes and tasks created
        per request, by route template, method, status, scheme and protocol version, and
        requests in flight by method and scheme. Tasks are counted the cheapest way a
        middleware can make its request known to them, a context variable set around the app
        (the counting itself would be the task hook's). The yardstick for ``asyncwatch``'s
        middleware with its features."""

        def __init__(self, app: Any) -> None:
            self.app = app
            # key -> (durations, request sizes, response sizes, tasks per request)
            self.slots: dict[tuple[Any, ...], tuple[list[Any], ...]] = {}
            self.active: dict[tuple[Any, Any], int] = {}

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            method, scheme = scope["method"], scope["scheme"]
            active, busy = self.active, (method, scheme)
            if in_flight:
                active[busy] = active.get(busy, 0) + 1
            start = time.perf_counter()
            status = request_bytes = response_bytes = 0
            tasks = [0]

            async def observed_receive() -> Any:
                nonlocal request_bytes
                message = await receive()
                if sizes and message["type"] == "http.request":
                    request_bytes += len(message.get("body", b""))
                return message

            async def observed_send(message: Any) -> None:
                nonlocal status, response_bytes
                kind = message["type"]
                if kind == "http.response.start":
                    status = message["status"]
                elif sizes and kind == "http.response.body":
                    response_bytes += len(message.get("body", b""))
                await send(message)

            token = REQUEST_TASKS.set(tasks) if tasks_var else None
            try:
                await self.app(scope, observed_receive if wrap_receive else receive,
                               observed_send)
            finally:
                if token is not None:
                    REQUEST_TASKS.reset(token)
                if in_flight:
                    active[busy] -= 1
                route = scope.get("route")
                key = (getattr(route, "path_format", None), method, status, scheme,
                       scope["http_version"])
                slot = self.slots.get(key)
                if slot is None:
                    slot = self.slots[key] = ([], [], [], [])
                durations, request_sizes, response_sizes, task_counts = slot
                durations.append(time.perf_counter() - start)
                if sizes:
                    request_sizes.append(request_bytes)
                    response_sizes.append(response_bytes)
                if tasks_var:
                    task_counts.append(tasks[0])
                if len(durations) > 1000:
                    for values in slot:
                        values.clear()

    return FiguresFloorMiddleware


FiguresFloorMiddleware = figures_floor()


def build_app(config: str) -> Any:
    """The app for one configuration (runs in the server process)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "world", "items": [1, 2, 3]})

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": int(request.path_params["item_id"]), "name": "thing"})

    app: Any = Starlette(routes=[Route("/json", hello), Route("/items/{item_id:int}", item)])
    if config == "bare":
        return app
    if config == "starlette-exporter":  # the Prometheus middleware most Starlette apps use
        from starlette_exporter import PrometheusMiddleware

        return PrometheusMiddleware(app, group_paths=True)

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    if config.startswith("asyncwatch"):
        import asyncwatch

        settings: dict[str, Any] = {"prometheus_port": 0, "asgi_auto": False, "http_spans": False}
        settings.update(VARIANTS[config])
        if settings["http_spans"]:
            settings["tracer_provider"] = tracer_provider
        asyncwatch.install(**settings)
        if config == "asyncwatch-no-middleware":
            return app
        if config == "asyncwatch-floor":
            return FloorMiddleware(app)
        if config == "asyncwatch-floor-figures":
            return FiguresFloorMiddleware(app)
        return asyncwatch.AsyncWatchMiddleware(app)
    from opentelemetry import trace
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    if config == "otel-asgi-metrics":
        return OpenTelemetryMiddleware(
            app, tracer_provider=trace.NoOpTracerProvider(), meter_provider=meter_provider
        )
    return OpenTelemetryMiddleware(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )


def serve(config: str, port: int) -> None:
    """Server process: the configuration's app on uvicorn."""
    import uvicorn

    app = build_app(config)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu)] if taskset and (os.cpu_count() or 1) > 1 else []


def start_server(config: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "OTEL_SEMCONV_STABILITY_OPT_IN": "http"}
    env = {k: v for k, v in env.items() if not k.startswith("ASYNCWATCH_")}
    cmd = [*pinned(0), sys.executable, __file__, "--serve", config, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as r:
                r.read()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{config} server did not start") from None
            time.sleep(0.1)  # polling for startup with a deadline


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_waits(pid: int) -> int:
    """Voluntary context switches of the server's loop (main) thread so far: its waits for
    I/O when idle and for the GIL when another thread holds it."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
    return int(found.group(1)) if found else 0


def load(
    port: int, seconds: float, connections: int, script: str, pid: int | None = None
) -> tuple[float, float, float, float, float, float]:
    """(requests/s, p99 latency in ms, server CPU µs per request, loop thread waits per
    1,000 requests, p50 latency in ms, the server's CPU seconds per second: 1.0 is a saturated
    server) from one wrk run."""
    before = cpu_seconds(pid) if pid else 0.0
    waits = loop_waits(pid) if pid else 0
    cmd = [
        *pinned(1),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        script,
        f"http://127.0.0.1:{port}",
    ]
    began = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before if pid else 0.0
    busy = used / (time.monotonic() - began)  # the server's CPU per second of the run
    waits = loop_waits(pid) - waits if pid else 0
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50, p99 = (percentile(out, q) for q in ("50", "99"))
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    served = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rate, p99, used * 1e6 / max(served, 1), waits * 1000 / max(served, 1), p50, busy


def percentile(wrk_output: str, q: str) -> float:
    """A latency percentile from wrk's ``--latency`` distribution, in ms."""
    found = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", wrk_output)
    if found is None:
        raise RuntimeError(f"no {q}% latency in wrk's output:\n{wrk_output}")
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]


def compare(
    chosen: list[str], rounds: int, seconds: float, connections: int, progress: bool = False
) -> dict[str, dict[str, list[float]]]:
    """Serve every configuration in ``chosen`` (bare first) side by side and load each with
    wrk in turn, the order rotated each round. Per figure (``rates``, ``ratios`` to bare's
    requests/s, ``p99s`` and ``p50s`` in ms, ``cpus`` in µs per request, ``cpu_ratios``,
    ``waits`` per 1,000 requests, ``busy``: server CPU seconds per second), per configuration,
    one value per round."""
    figures = ("rates", "ratios", "p99s", "p50s", "cpus", "cpu_ratios", "waits", "busy")
    out: dict[str, dict[str, list[float]]] = {f: {name: [] for name in chosen} for f in figures}
    servers = {name: start_server(name) for name in chosen}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
    try:
        for _, port in servers.values():
            load(port, 1.0, connections, f.name)  # warm up
        for r in range(rounds):
            order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
            seen = {}
            for name in order:
                proc, port = servers[name]
                seen[name] = load(port, seconds, connections, f.name, proc.pid)
            for name in chosen:
                rate, p99, cpu, waits, p50, busy = seen[name]
                out["p50s"][name].append(p50)
                out["busy"][name].append(busy)
                out["rates"][name].append(rate)
                out["ratios"][name].append(rate / seen["bare"][0])
                out["p99s"][name].append(p99)
                out["cpus"][name].append(cpu)
                out["cpu_ratios"][name].append(cpu / seen["bare"][2])
                out["waits"][name].append(waits)
            if progress:
                print(
                    f"round {r + 1}: " + ", ".join(f"{n} {seen[n][0]:,.0f}/s" for n in chosen),
                    flush=True,
                )
    finally:
        os.unlink(f.name)
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 s")
    parser.add_argument("--only", help="comma-separated configurations (bare is always run)")
    parser.add_argument(
        "--attribute",
        action="store_true",
        help="bare, asyncwatch and the attribution variants (one periodic piece off each)",
    )
    parser.add_argument("--name", default="asgi", help="results file name")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if shutil.which("wrk") is None:
        print("asgi benchmark: needs wrk (Debian package wrk)", file=sys.stderr)
        return 2
    if args.quick:
        args.rounds, args.seconds = 3, 3.0
    wanted = args.only.split(",") if args.only else CONFIGS
    if args.attribute:
        wanted = ["asyncwatch", *ATTRIBUTION]
    unknown = sorted(set(wanted) - {*CONFIGS, *ATTRIBUTION, *ANCHORS})
    if unknown:
        parser.error(f"unknown configurations: {', '.join(unknown)}")
    chosen = ["bare", *[c for c in wanted if c != "bare"]]
    load_before = os.getloadavg()[0]
    seen = compare(chosen, args.rounds, args.seconds, args.connections, progress=True)
    rates, ratios, p99s = seen["rates"], seen["ratios"], seen["p99s"]
    cpus, cpu_ratios, waits = seen["cpus"], seen["cpu_ratios"], seen["waits"]
    load_after = os.getloadavg()[0]
    bare_p99 = statistics.median(p99s["bare"])
    lines = [
        "| configuration | requests/s (median) | throughput vs bare (median of per-round ratios) "
        "| p99 latency (median) | p99 vs bare | server CPU per request | CPU vs bare "
        "| loop thread waits per 1,000 requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for name in chosen:
        p99 = statistics.median(p99s[name])
        rows.append(Row("http", name, ratios[name], rates[name]))
        lines.append(
            f"| {name} | {statistics.median(rates[name]):,.0f} "
            f"| {statistics.median(ratios[name]):.2f} "
            f"| {p99:.2f} ms | {p99 / bare_p99:.2f}x "
            f"| {statistics.median(cpus[name]):.0f} µs "
            f"| {statistics.median(cpu_ratios[name]):.2f}x "
            f"| {statistics.median(waits[name]):.0f} |"
        )
    lines += [
        "",
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per configuration; wrk -t1 "
        f"-c{args.connections} alternating GET /json and GET /items/{{id}}; uvicorn on CPU 0, "
        f"wrk on CPU 1; Python {sys.version.split()[0]}; load average {load_before:.1f} before, "
        f"{load_after:.1f} after (other work on the machine shows up as noise in requests/s "
        "and p99 more than in CPU per request).",
    ]
    text = "\n".join(lines)
    extra = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "p99_ms": p99s,
        "cpu_us": cpus,
        "loop_waits_per_1000": waits,
    }
    save(args.name, rows, text, extra)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
