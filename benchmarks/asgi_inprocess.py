"""Per-request CPU cost of the HTTP path without the network: uvicorn's own protocol, in process.

``benchmarks/asgi.py`` measures what a user sees (wrk over a socket), but its figures move with
everything else on the machine. This one isolates the server's work per request: each
configuration's app (the same Starlette app and configurations as ``asgi.py``) is served by
uvicorn's ``HttpToolsProtocol`` on a uvloop loop, fed one keep-alive request at a time through
an in-memory transport. The only cost left out is the kernel's (socket reads and writes), which
is the same for every configuration, so the ratios here are an upper bound of the ratios wrk
sees. Each configuration runs in its own process; processes alternate, rounds are repeated,
and the table gives the median over rounds of CPU time per request (all threads of the
process: the watchdog and exporter threads count too) and its ratio to bare's.

``--callgrind`` counts the event loop thread's instructions instead of timing (valgrind must
be installed): the difference between a run of N and a run of 6N requests, divided by 5N, so
start-up cancels out. Instruction counts do not depend on other load, which makes small
changes visible.

``--tail SECONDS`` looks at the tail instead: each configuration serves requests one after
another for that long, timing each one (wall clock, from the bytes arriving to the response
task's end), so anything else the loop runs in between (timers, other threads holding the GIL,
garbage collections) lands on the request it delays. The table gives p50/p99/p99.9/max per
configuration, and the garbage collections per 1,000 requests with the time they took. With
``--configs`` naming the attribution variants of ``asgi.py`` (``asyncwatch-no-loopwatch`` and
so on), each periodic piece's share of the tail shows.

Run: ``python benchmarks/asgi_inprocess.py`` (``--quick``: fewer, shorter rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import SLOW_PACE, Paced, Row, interleave, paced, save
from asgi import ATTRIBUTION, build_app

CONFIGS = ("bare", "asyncwatch", "asyncwatch-http-only", "otel-asgi-metrics", "otel-asgi")
REQUESTS = (b"GET /json HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: bench\r\n\r\n",
            b"GET /items/%d HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: bench\r\n\r\n")


class MemoryTransport(asyncio.Transport):
    """What uvicorn's protocol needs of a socket transport; written bytes are only counted."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def serve(app: Any, count: int, warm: int) -> tuple[float, float]:
    """Serve ``warm`` then ``count`` requests on one connection: (CPU, wall) seconds for
    ``count``."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app, http="httptools", lifespan="off", log_level="warning", access_log=False)
    config.load()
    state = ServerState()
    protocol = HttpToolsProtocol(config, state, {}, _loop=asyncio.get_running_loop())
    transport = MemoryTransport()
    protocol.connection_made(transport)
    tasks = state.tasks
    json_request, item_request = REQUESTS

    async def run(n: int) -> None:
        for i in range(n):
            protocol.data_received(json_request if i % 2 else item_request % (i % 1000))
            for task in list(tasks):
                await task

    await run(warm)
    started, wall = time.process_time(), time.perf_counter()
    await run(count)
    if transport.written == 0:
        raise RuntimeError("uvicorn wrote no response")
    return time.process_time() - started, time.perf_counter() - wall


async def serve_for(app: Any, seconds: float, warm: int, inflight: int) -> list[float]:
    """``inflight`` keep-alive connections, each sending its next request as soon as the last
    is answered (as wrk does): ``warm`` requests each, then for ``seconds``. Each request's
    wall time from the previous answer on its connection to its own (so the time it waited for
    the loop counts)."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app, http="httptools", lifespan="off", log_level="warning", access_log=False)
    config.load()
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    json_request, item_request = REQUESTS
    times: list[float] = []
    end = [clock() + 3600.0]
    warmed = asyncio.Event()
    waiting = [inflight]

    async def connection() -> None:
        state = ServerState()
        protocol = HttpToolsProtocol(config, state, {}, _loop=loop)
        transport = MemoryTransport()
        protocol.connection_made(transport)
        tasks = state.tasks
        i = 0
        last = clock()
        while True:
            if i == warm:
                waiting[0] -= 1
                if waiting[0] == 0:
                    end[0] = clock() + seconds
                    times.clear()
                    warmed.set()
                await warmed.wait()
                last = clock()
            protocol.data_received(json_request if i % 2 else item_request % (i % 1000))
            for task in list(tasks):
                await task
            now = clock()
            times.append(now - last)
            last = now
            i += 1
            if now > end[0]:
                return

    await asyncio.gather(*(connection() for _ in range(inflight)))
    return times


class Pauses:
    """What asyncwatch's periodic work on the loop took (heartbeat beats, deadlock scan
    slices), timed by wrapping the methods in this process only."""

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = {}

    def wrap(self, cls: Any, name: str, label: str) -> None:
        original = getattr(cls, name)
        spent = self.spent.setdefault(label, [])
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = clock()
            try:
                return original(*args, **kwargs)
            finally:
                spent.append(clock() - began)

        setattr(cls, name, timed)


def thread_cpu() -> dict[str, float]:
    """CPU seconds each of this process's threads has used, by thread name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"thread {tid}")
        if int(tid) == os.getpid():
            name = "loop (main)"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK"
        )
    return out


def loop_waits() -> int:
    """Voluntary context switches of the loop's (main) thread so far. Served from memory the
    loop never waits for I/O, so each one is a wait for the GIL (another thread held it)."""
    status = Path(f"/proc/self/task/{os.getpid()}/status").read_text()
    found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
    return int(found.group(1)) if found else 0


def tail_child(config: str, seconds: float, warm: int, inflight: int) -> None:
    """The tail measurement in this process: prints JSON (percentiles, collections, pauses)."""
    import gc
    import json

    import uvloop

    pauses = Pauses()
    if config.startswith("asyncwatch"):
        from asyncwatch.deadlock import DeadlockDetector
        from asyncwatch.loopwatch import _heartbeat

        pauses.wrap(_heartbeat.Heartbeat, "run", "heartbeat")
        pauses.wrap(DeadlockDetector, "_step", "deadlock scan slice")
    app = build_app(config)
    collections = [0, 0, 0]
    gc_time = [0.0, 0.0, 0.0]
    gc_max = [0.0]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        collections[info["generation"]] += 1
        gc_time[info["generation"]] += took
        gc_max[0] = max(gc_max[0], took)

    gc.collect()
    gc.callbacks.append(on_gc)
    cpu_before = thread_cpu()
    waits_before = loop_waits()
    times = uvloop.run(serve_for(app, seconds, warm, inflight))
    waits = loop_waits() - waits_before
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in thread_cpu().items()}
    gc.callbacks.remove(on_gc)
    times.sort()

    def pct(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] * 1e6

    print(json.dumps({
        "count": len(times),
        "p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999), "max": times[-1] * 1e6,
        "collections": collections, "gc_s": gc_time, "gc_max_s": gc_max[0],
        "pauses": {k: [len(v), sum(v), sorted(v)[int(0.99 * len(v))] if v else 0.0,
                       max(v, default=0.0)] for k, v in pauses.spent.items()},
        "thread_cpu_s": cpu, "loop_waits": waits,
    }))
    if config.startswith("asyncwatch"):
        import asyncwatch

        asyncwatch.uninstall()


def tail(
    configs: list[str], seconds: float, warm: int, rounds: int, name: str, inflight: int
) -> None:
    """Run each configuration's tail measurement ``rounds`` times, interleaved; save a table."""
    import json
    import statistics

    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    load_before = os.getloadavg()[0]
    for r in range(rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for config in order:
            out = subprocess.run(
                [sys.executable, __file__, "--tail-child", config, "--seconds", str(seconds),
                 "--warm", str(warm), "--inflight", str(inflight)],
                check=True, capture_output=True, text=True,
            ).stdout
            results[config].append(json.loads(out.strip().splitlines()[-1]))

    def med(config: str, key: str) -> float:
        return statistics.median(x[key] for x in results[config])

    lines = [
        "| configuration | requests/s | p50 | p99 | p99 vs bare | p99.9 | max "
        "| gc per 1,000 requests (gen 0/1/2) | gc time per request | longest gc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in configs:
        runs = results[config]
        count = sum(x["count"] for x in runs)
        per_k = [1000 * sum(x["collections"][g] for x in runs) / count for g in range(3)]
        gc_us = 1e6 * sum(sum(x["gc_s"]) for x in runs) / count
        lines.append(
            f"| {config} | {med(config, 'count') / seconds:,.0f} | {med(config, 'p50'):.0f} µs "
            f"| {med(config, 'p99'):.0f} µs | {med(config, 'p99') / med('bare', 'p99'):.2f}x "
            f"| {med(config, 'p999'):.0f} µs | {med(config, 'max') / 1000:.1f} ms "
            f"| {per_k[0]:.1f} / {per_k[1]:.2f} / {per_k[2]:.3f} | {gc_us:.2f} µs "
            f"| {max(x['gc_max_s'] for x in runs) * 1000:.1f} ms |"
        )
    lines += [
        "",
        "| configuration | periodic work on the loop: calls/s, loop time per s, p99 and longest "
        "call | CPU per second of other threads | loop thread's waits (GIL) per s |",
        "|---|---|---|---:|",
    ]
    for config in configs:
        runs = results[config]
        total = seconds * len(runs)
        pauses = {}
        for x in runs:
            for label, (calls, spent, p99, longest) in x["pauses"].items():
                p = pauses.setdefault(label, [0, 0.0, [], 0.0])
                p[0] += calls
                p[1] += spent
                p[2].append(p99)
                p[3] = max(p[3], longest)
        work = "; ".join(
            f"{label} {p[0] / total:.1f}/s, {p[1] / total * 1000:.2f} ms/s, "
            f"{statistics.median(p[2]) * 1000:.2f} ms and {p[3] * 1000:.2f} ms"
            for label, p in pauses.items() if p[0]
        ) or "none"
        threads: dict[str, float] = {}
        for x in runs:
            for thread, used in x["thread_cpu_s"].items():
                if thread != "loop (main)":
                    threads[thread] = threads.get(thread, 0.0) + used
        others = ", ".join(
            f"{thread} {used / total * 1000:.1f} ms" for thread, used in sorted(threads.items())
        ) or "none"
        waits = sum(x["loop_waits"] for x in runs) / total
        lines.append(f"| {config} | {work} | {others} | {waits:.1f} |")
    lines += [
        "",
        f"{rounds} interleaved rounds of {seconds:g} s per configuration (after {warm:,} warm-up "
        f"requests per connection), each in its own process; {inflight} keep-alive "
        "connection(s), each sending its next request when the last is answered (as wrk does), "
        "each request timed from the previous answer on its connection to its own answer; "
        "medians over rounds (gc, pauses and threads: totals); uvicorn "
        f"HttpToolsProtocol on uvloop over an in-memory transport; Python "
        f"{sys.version.split()[0]}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (wall-clock percentiles move with other load; the "
        "loop time, thread CPU and GIL waits much less).",
    ]
    text = "\n".join(lines)
    save(name + "_tail", [], text, {"rounds": rounds, "seconds": seconds, "runs": results})
    print(text)


def child(config: str, count: int, warm: int) -> None:
    """One measurement in this process: prints CPU seconds per request and the wall seconds
    of the whole measured work."""
    import uvloop

    app = build_app(config)
    spent, wall = uvloop.run(serve(app, count, warm))
    print(f"{spent / max(count, 1)!r} {wall!r}")
    if config.startswith("asyncwatch"):
        import asyncwatch

        asyncwatch.uninstall()


def measure(config: str, count: int, warm: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", config, "--count", str(count), "--warm", str(warm)],
        check=True, capture_output=True, text=True,
    ).stdout
    return float(out.strip().splitlines()[-1].split()[0])


def native_wall(config: str, count: int) -> float:
    """Wall seconds of ``count`` requests served in a child process run alone."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", config, "--count", str(count), "--warm", "0"],
        check=True, capture_output=True, text=True,
        env=dict(os.environ, PYTHONHASHSEED="0", ASYNCWATCH_TIMED_PER_S="1"),
    ).stdout
    return float(out.strip().splitlines()[-1].split()[1])


def paced_per_request(config: str, small: int) -> Paced:
    """Loop-thread instructions per request, raw and at the program's pace (``Paced``)."""
    return paced(lambda n, slow: counted(config, n, slow),
                 lambda n: native_wall(config, n), small, max(1, small // 3))


def instructions(config: str, count: int) -> int:
    """Instructions the main thread ran in a child serving ``count`` requests (no warm-up).

    Only the main thread (the event loop's): under valgrind everything runs 20-50 times
    slower, so threads that wake on a timer (the watchdog, exporters) would do many times
    their real share of work per request. Their cost shows in the timed mode."""
    return counted(config, count)[0]


def counted(config: str, count: int, slow: bool = False) -> tuple[int, float]:
    """(main thread's instructions, wall seconds of the requests) of a child serving
    ``count`` requests under callgrind (``slow``: at ``SLOW_PACE``), no warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        # One timed task a second: at valgrind's pace the adaptive sampling would time
        # nearly every task, which it does not at full speed.
        env = dict(os.environ, PYTHONHASHSEED="0", ASYNCWATCH_TIMED_PER_S="1")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             *(SLOW_PACE if slow else ()), f"--callgrind-out-file={out}", sys.executable,
             __file__, "--child", config, "--count", str(count), "--warm", "0"],
            check=True, capture_output=True, env=env, text=True,
        )
        text = Path(out + "-01").read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError("no instruction total in callgrind's output")
    return int(found.group(1)), float(done.stdout.strip().splitlines()[-1].split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--warm", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions per request with valgrind instead of timing")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--tail", type=float, metavar="SECONDS",
                        help="time each request for SECONDS per configuration (see above)")
    parser.add_argument("--tail-child", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, default=16,
                        help="--tail: connections with a request in flight (wrk's -c)")
    parser.add_argument("--name", default="asgi_inprocess", help="results file name")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.count, args.warm)
        return
    if args.tail_child:
        tail_child(args.tail_child, args.seconds, args.warm, args.inflight)
        return
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - {*CONFIGS, *ATTRIBUTION})
    if unknown or "bare" not in configs:
        parser.error(f"--configs: known are {', '.join(CONFIGS)}, and bare is needed")
    if args.tail:
        tail(configs, args.tail, args.warm, 3 if args.quick else args.rounds, args.name,
             args.inflight)
        return
    if args.callgrind:
        if shutil.which("valgrind") is None:
            sys.exit("--callgrind needs valgrind (Debian package valgrind)")
        small = 500 if args.quick else 1000
        pace = {c: paced_per_request(c, small) for c in configs}
        per = {c: pace[c].raw for c in configs}
        base = pace["bare"]
        lines = [
            "| configuration | instructions per request (loop thread) | vs bare "
            "| at the program's pace | vs bare | per-second work (loop thread) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {c} | {p.raw:,.0f} | {p.raw / base.raw:.3f}x | {p.paced:,.0f} "
                  f"| {p.paced / base.paced:.3f}x | {p.per_second:,.0f} instructions/s |"
                  for c, p in pace.items()]
        slowdowns = [p.slowdown for p in pace.values() if p.slowdown]
        lines += [
            "",
            f"callgrind, difference between runs of {small:,} and {6 * small:,} requests; "
            "default settings but one timed task a second (at valgrind's pace the adaptive "
            "sampling would time nearly every task). The heartbeat and deadlock scans keep "
            "their rate per second of wall time, so at valgrind's pace (here "
            f"{min(slowdowns, default=0):.0f} to {max(slowdowns, default=0):.0f} times slower "
            "than the program alone) they land on many more requests; 'at the program's pace' "
            "counts the loop thread's per-second work (measured busy, from counts at two "
            "valgrind paces) at the rate of the program run alone (benchmarks/_harness.py, "
            "``Paced``); Python "
            f"{sys.version.split()[0]}.",
        ]
        text = "\n".join(lines)
        rows = [Row("http in process", c, [per[c] / per["bare"]], [per[c]]) for c in configs]
        save(args.name + "_callgrind", rows, text,
             {"small": small, "paced": {c: asdict(p) for c, p in pace.items()}})
        print(text)
        return
    if args.quick:
        args.rounds, args.count = 3, 5000
    def run(config: str) -> tuple[float, int]:
        return measure(config, args.count, args.warm) * args.count, args.count

    rows = interleave(
        "http in process", {c: functools.partial(run, c) for c in configs}, rounds=args.rounds
    )
    lines = [
        "| configuration | server CPU per request (median) "
        "| cost vs bare (median of per-round ratios) | range over rounds |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.config} | {1e6 / row.rate:.1f} µs | {row.ratio:.2f}x "
            f"| {min(row.ratios):.2f}-{max(row.ratios):.2f} |"
        )
    lines += [
        "",
        f"{args.rounds} interleaved rounds of {args.count:,} requests per configuration (after "
        f"{args.warm:,} warm-up requests), each in its own process; uvicorn "
        f"HttpToolsProtocol on uvloop over an in-memory transport; Python "
        f"{sys.version.split()[0]}.",
    ]
    text = "\n".join(lines)
    save(args.name, rows, text, {"rounds": args.rounds, "count": args.count})
    print(text)

if __name__ == "__main__":
    main()
