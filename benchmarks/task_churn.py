"""Task churn: what observing every task costs, against bare asyncio and the anchor tools.

Configurations, interleaved round by round in one process:

* ``bare`` - stock asyncio, no task factory.
* ``asyncwatch`` - metrics only (the default: every task counted, a sample timed).
* ``asyncwatch+spans`` - a span for every task as well (``task_span_ratio=1``; no traces
  exporter, the default: the spans are contexts for what the tasks start).
* ``asyncwatch+spans+batch`` - the same, each span handed at its end to the SDK's
  ``BatchSpanProcessor`` (an exporter that discards: the export thread's CPU time counts).
* ``asyncwatch+asgi`` - metrics, with an ``AsyncWatchMiddleware`` active in the process but
  the tasks created outside any request (background work of a served app).
* ``asyncwatch+request`` - metrics, with the tasks created inside an HTTP request handled by
  ``AsyncWatchMiddleware`` (each task also counted for its request and route).
* ``asyncwatch+memory`` - metrics with tracemalloc on (``memory_attribution=True``'s cost
  on the hot path; snapshots are taken off the hot path, every ``memory_interval_s``).
* ``otel-asyncio`` - opentelemetry-instrumentation-asyncio with SDK providers (metrics).
* ``otel-asyncio+spans`` - the same, tracing the workload's coroutines by name.
* ``aiomonitor`` - aiomonitor's task-factory hook (``hook_task_factory=True``).

Workloads (each round runs ``--tasks`` tasks):

* ``flat/empty`` - a parent creates 1,000 tasks with ``create_task`` and awaits them; the
  tasks return at once (the worst case: the hook's cost against the least work).
* ``flat/await`` - the same, each task awaiting once (``asyncio.sleep(0)``).
* ``nested/await`` - binary trees of tasks: each node creates two child tasks and awaits them.
* ``gather/await`` - ``asyncio.gather`` over 1,000 coroutines that await once.

Run: ``python benchmarks/task_churn.py`` (``--quick`` for a smoke run, ``--uvloop`` to use
uvloop's loop for every configuration).

``--span-memory``: bytes per live span instead of time. ``--tasks`` tasks (default 20,000) are
started and left waiting on an event; tracemalloc counts what the process holds with them
alive, for bare asyncio, asyncwatch with a span for every task, and
opentelemetry-instrumentation-asyncio tracing the same coroutine; per live span = (holding -
bare's) / tasks. Each configuration runs ``--rounds`` times (median).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, interleave, save, table, timed

from asyncwatch import Config
from asyncwatch._watch import Watch

BATCH = 1000


async def empty() -> None:
    pass


async def one_await() -> None:
    await asyncio.sleep(0)


async def node(depth: int) -> None:
    if depth:
        a = asyncio.create_task(node(depth - 1))
        b = asyncio.create_task(node(depth - 1))
        await a
        await b
    else:
        await asyncio.sleep(0)


def flat(body: Callable[[], Awaitable[None]]) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        for _ in range(max(1, n // BATCH)):
            tasks = [asyncio.create_task(body()) for _ in range(BATCH)]  # type: ignore[arg-type]
            for t in tasks:
                await t

    return run


async def nested(n: int) -> None:
    depth = 9  # 2**10 - 1 = 1023 tasks per tree, the root included
    for _ in range(max(1, n // 1023)):
        await asyncio.create_task(node(depth))


async def gathered(n: int) -> None:
    for _ in range(max(1, n // BATCH)):
        await asyncio.gather(*[one_await() for _ in range(BATCH)])


WORKLOADS: dict[str, Callable[[int], Awaitable[None]]] = {
    "flat/empty": flat(empty),
    "flat/await": flat(one_await),
    "nested/await": nested,
    "gather/await": gathered,
}
TRACED_NAMES = "empty,one_await,node"


def configurations(
    workload: Callable[[int], Awaitable[None]],
    n: int,
    use_uvloop: bool,
    anchors: bool,
    timed_per_s: float = Config.timed_per_s,
) -> dict[str, Callable[[], tuple[float, int]]]:
    metrics = Watch(
        Config(metrics_exporters=("prometheus",), prometheus_port=0, timed_per_s=timed_per_s)
    )
    metrics.telemetry.start()
    spans = Watch(
        Config(metrics_exporters=("none",), task_span_ratio=1.0, timed_per_s=timed_per_s)
    )
    spans.telemetry.start()

    requests = Watch(Config(metrics_exporters=("none",), timed_per_s=timed_per_s))
    requests.telemetry.start()

    def in_request(loop: asyncio.AbstractEventLoop) -> Any:
        from asyncwatch.asgi._exchange import REQUEST, open_http
        from asyncwatch.asgi._middleware import Observer

        requests.tasks.track_requests(REQUEST)
        requests.tasks.instrument(loop)
        observer = Observer(requests, requests.config)
        request = open_http(observer, {"type": "http"}, None, None, "GET")
        return REQUEST.set(request)  # the workload's task inherits it, as a handler's would

    def asgi_idle(loop: asyncio.AbstractEventLoop) -> Any:
        from asyncwatch.asgi._exchange import REQUEST

        requests.tasks.track_requests(REQUEST)
        return requests.tasks.instrument(loop)

    def end_request(token: Any) -> None:
        from asyncwatch.asgi._exchange import REQUEST

        REQUEST.reset(token)

    def with_tracemalloc(loop: asyncio.AbstractEventLoop) -> Any:
        tracemalloc.start(Config().memory_frames)  # what memory_attribution=True turns on
        return metrics.tasks.instrument(loop)

    def tracemalloc_off(state: Any) -> None:
        del state
        tracemalloc.stop()

    batched = Watch(
        Config(metrics_exporters=("none",), task_span_ratio=1.0),
        tracer_provider=discarding_provider(),
    )
    batched.telemetry.start()

    configs: dict[str, Callable[[], tuple[float, int]]] = {
        "bare": lambda: timed(workload, n, use_uvloop),
        "asyncwatch": lambda: timed(workload, n, use_uvloop, metrics.tasks.instrument),
        "asyncwatch+spans": lambda: timed(workload, n, use_uvloop, spans.tasks.instrument),
        "asyncwatch+spans+batch": lambda: timed(
            workload, n, use_uvloop, batched.tasks.instrument
        ),
        "asyncwatch+asgi": lambda: timed(workload, n, use_uvloop, asgi_idle),
        "asyncwatch+request": lambda: timed(workload, n, use_uvloop, in_request, end_request),
        "asyncwatch+memory": lambda: timed(
            workload, n, use_uvloop, with_tracemalloc, tracemalloc_off
        ),
    }
    if anchors:
        configs.update(anchor_configurations(workload, n, use_uvloop))
    return configs


def discarding_provider() -> Any:
    """An SDK TracerProvider whose BatchSpanProcessor exports to an exporter that discards."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    # a queue that holds a whole round: spans are exported, not dropped
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=100_000))
    return provider


async def waiter(event: asyncio.Event) -> None:
    await event.wait()


def held_per_task(n: int, setup: Callable[[asyncio.AbstractEventLoop], Any] | None) -> float:
    """Bytes tracemalloc counts per task with ``n`` tasks started and waiting."""
    import gc

    loop = asyncio.new_event_loop()
    state = setup(loop) if setup else None

    async def main() -> float:
        event = asyncio.Event()
        await asyncio.sleep(0)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tasks = [asyncio.create_task(waiter(event)) for _ in range(n)]
        await asyncio.sleep(0)  # every task has taken its first step (a span is started)
        await asyncio.sleep(0)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        event.set()
        await asyncio.gather(*tasks)
        return held / n

    tracemalloc.start(1)
    try:
        return loop.run_until_complete(main())
    finally:
        tracemalloc.stop()
        if state is not None and hasattr(state, "uninstrument"):
            state.uninstrument()
        loop.close()


def span_memory(n: int, rounds: int, anchors: bool) -> list[Row]:
    """Bytes per live span: asyncwatch's and (``anchors``) OTel-asyncio's, over bare."""
    spans = Watch(
        Config(metrics_exporters=("none",), task_span_ratio=1.0),
        tracer_provider=discarding_provider(),
    )
    spans.telemetry.start()
    setups: dict[str, Callable[[asyncio.AbstractEventLoop], Any] | None] = {
        "bare": None,
        "asyncwatch+spans": spans.tasks.instrument,
    }
    if anchors:
        from opentelemetry.instrumentation.asyncio import AsyncioInstrumentor

        provider = discarding_provider()

        def otel(loop: asyncio.AbstractEventLoop) -> Any:
            del loop
            os.environ["OTEL_PYTHON_ASYNCIO_COROUTINE_NAMES_TO_TRACE"] = "waiter"
            instrumentor = AsyncioInstrumentor()
            instrumentor.instrument(tracer_provider=provider)
            return instrumentor

        setups["otel-asyncio+spans"] = otel
    held: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            held[name].append(held_per_task(n, setup))
    rows = []
    import statistics

    bare = statistics.median(held["bare"])
    for name, values in held.items():
        per_task = statistics.median(values)
        # rate: bytes per task held; ratio: against bare's
        rows.append(Row("span-memory", name, [per_task / bare], [per_task]))
    return rows


def span_memory_table(rows: list[Row], n: int, rounds: int) -> str:
    bare = next(r.rate for r in rows if r.config == "bare")
    lines = [
        "| configuration | bytes per live task | bytes per live span (over bare) |",
        "|---|---:|---:|",
    ]
    for row in rows:
        extra = "" if row.config == "bare" else f"{row.rate - bare:,.0f}"
        lines.append(f"| {row.config} | {row.rate:,.0f} | {extra} |")
    lines.append("")
    lines.append(
        f"{n:,} tasks started and waiting, tracemalloc's count of what is held, median of "
        f"{rounds} rounds; the same coroutine for every configuration."
    )
    return "\n".join(lines)


def anchor_configurations(
    workload: Callable[[int], Awaitable[None]], n: int, use_uvloop: bool
) -> dict[str, Callable[[], tuple[float, int]]]:
    from opentelemetry.instrumentation.asyncio import AsyncioInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    meter_provider, tracer_provider = MeterProvider(), TracerProvider()

    def otel(traced: bool) -> Callable[[asyncio.AbstractEventLoop], Any]:
        def setup(loop: asyncio.AbstractEventLoop) -> Any:
            del loop
            os.environ["OTEL_PYTHON_ASYNCIO_COROUTINE_NAMES_TO_TRACE"] = (
                TRACED_NAMES if traced else ""
            )
            instrumentor = AsyncioInstrumentor()
            instrumentor.instrument(meter_provider=meter_provider, tracer_provider=tracer_provider)
            return instrumentor

        return setup

    def otel_off(instrumentor: Any) -> None:
        instrumentor.uninstrument()

    def aiomonitor_on(loop: asyncio.AbstractEventLoop) -> Any:
        import aiomonitor

        logging.getLogger("aiomonitor").setLevel(logging.WARNING)
        monitor = aiomonitor.Monitor(
            loop, hook_task_factory=True, termui_port=0, webui_port=0, console_port=0
        )
        monitor.start()
        return monitor

    def aiomonitor_off(monitor: Any) -> None:
        monitor.close()

    return {
        "otel-asyncio": lambda: timed(workload, n, use_uvloop, otel(False), otel_off),
        "otel-asyncio+spans": lambda: timed(workload, n, use_uvloop, otel(True), otel_off),
        "aiomonitor": lambda: timed(workload, n, use_uvloop, aiomonitor_on, aiomonitor_off),
    }


def compare(
    workload: str, n: int, rounds: int, configs: tuple[str, ...], use_uvloop: bool = False
) -> list[Row]:
    """``configs`` (names from configurations()) side by side on one workload, interleaved."""
    every = configurations(WORKLOADS[workload], n, use_uvloop, anchors=True)
    chosen = {name: every[name] for name in configs}
    for run in chosen.values():  # warm up imports and caches outside the measured rounds
        run()
    return interleave(workload, chosen, rounds=rounds)


# Under valgrind everything runs about 50 times slower, so the adaptive sampling (200 timed
# tasks a second by default) would time about 50 times its share of tasks: scaled down as much.
CALLGRIND_TIMED_PER_S = Config.timed_per_s / 50


def instructions(config: str, workload: str, tasks: int) -> int:
    """Instructions the loop's (main) thread ran in a child process running ``tasks`` tasks of
    ``workload`` in configuration ``config`` once, under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out}", sys.executable, __file__,
             "--child", config, "--only", workload, "--tasks", str(tasks)],
            check=True, capture_output=True, env=dict(os.environ, PYTHONHASHSEED="0"),
        )
        text = Path(out + "-01").read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError("no instruction total in callgrind's output")
    return int(found.group(1))


def per_task(config: str, workload: str, small: int) -> float:
    """Instructions per task on the loop's thread: the difference between runs of ``small``
    and ``6 * small`` tasks, divided by ``5 * small`` (start-up and set-up cancel out). The
    workloads run whole batches of 1,000, so ``small`` is rounded up to one."""
    small = -(-small // BATCH) * BATCH
    return (instructions(config, workload, 6 * small) - instructions(config, workload, small)) / (
        5 * small
    )


def child(config: str, workload: str, tasks: int) -> None:
    """One run of one configuration in this process (what callgrind counts)."""
    configs = configurations(
        WORKLOADS[workload], tasks, False, config.startswith(("otel", "aiomonitor")),
        timed_per_s=CALLGRIND_TIMED_PER_S,
    )
    configs[config]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2,000 tasks")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop's loop")
    parser.add_argument("--no-anchors", action="store_true", help="skip OTel and aiomonitor")
    parser.add_argument("--only", help="comma-separated workloads")
    parser.add_argument("--name", default=None, help="results file name")
    parser.add_argument(
        "--span-memory", action="store_true", help="bytes per live span, not time"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.only or "flat/await", args.tasks)
        return 0
    if args.quick:
        args.rounds, args.tasks = 2, 2_000
    if args.span_memory:
        rounds = 3 if args.rounds == 11 else args.rounds
        rows = span_memory(args.tasks, rounds, not args.no_anchors)
        text = span_memory_table(rows, args.tasks, rounds)
        save(args.name or "span_memory", rows, text, {"rounds": rounds, "tasks": args.tasks})
        print(text)
        return 0
    chosen = args.only.split(",") if args.only else list(WORKLOADS)
    rows: list[Row] = []
    for name in chosen:
        workload = WORKLOADS[name]
        configs = configurations(workload, args.tasks, args.uvloop, not args.no_anchors)
        configs["bare"]()  # warm up imports and caches outside the measured rounds
        rows += interleave(name, configs, rounds=args.rounds)
        print(table([r for r in rows if r.workload == name], "tasks/s"), flush=True)
    loop_name = "uvloop" if args.uvloop else "asyncio"
    note = (
        f"{args.rounds} interleaved rounds of {args.tasks:,} tasks each, {loop_name} loop; "
        "CPU time of the workload; ratio = configuration time / bare time in the same round."
    )
    text = table(rows, "tasks/s", note)
    save(
        args.name or f"task_churn_{loop_name}",
        rows,
        text,
        {"rounds": args.rounds, "tasks": args.tasks},
    )
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
