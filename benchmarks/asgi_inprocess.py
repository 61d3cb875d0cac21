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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, interleave, save
from asgi import build_app

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


async def serve(app: Any, count: int, warm: int) -> float:
    """Serve ``warm`` then ``count`` requests on one connection; CPU seconds for ``count``."""
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
    started = time.process_time()
    await run(count)
    spent = time.process_time() - started
    if transport.written == 0:
        raise RuntimeError("uvicorn wrote no response")
    return spent


def child(config: str, count: int, warm: int) -> None:
    """One measurement in this process: prints CPU seconds per request."""
    import uvloop

    app = build_app(config)
    spent = uvloop.run(serve(app, count, warm))
    print(f"{spent / count!r}")
    if config.startswith("asyncwatch"):
        import asyncwatch

        asyncwatch.uninstall()


def measure(config: str, count: int, warm: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", config, "--count", str(count), "--warm", str(warm)],
        check=True, capture_output=True, text=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def instructions(config: str, count: int) -> int:
    """Instructions the main thread ran in a child serving ``count`` requests (no warm-up).

    Only the main thread (the event loop's): under valgrind everything runs 20-50 times
    slower, so threads that wake on a timer (the watchdog, exporters) would do many times
    their real share of work per request. Their cost shows in the timed mode."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        # One timed task a second: at valgrind's pace the adaptive sampling would time
        # nearly every task, which it does not at full speed.
        env = dict(os.environ, PYTHONHASHSEED="0", ASYNCWATCH_TIMED_PER_S="1")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out}", sys.executable, __file__,
             "--child", config, "--count", str(count), "--warm", "0"],
            check=True, capture_output=True, env=env,
        )
        text = Path(out + "-01").read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError("no instruction total in callgrind's output")
    return int(found.group(1))


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
    parser.add_argument("--name", default="asgi_inprocess", help="results file name")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.count, args.warm)
        return
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or "bare" not in configs:
        parser.error(f"--configs: known are {', '.join(CONFIGS)}, and bare is needed")
    if args.callgrind:
        if shutil.which("valgrind") is None:
            sys.exit("--callgrind needs valgrind (Debian package valgrind)")
        small = 500 if args.quick else 1000
        per = {c: (instructions(c, 6 * small) - instructions(c, small)) / (5 * small)
               for c in configs}
        lines = [
            "| configuration | instructions per request (loop thread) | vs bare |",
            "|---|---:|---:|",
        ]
        lines += [f"| {c} | {per[c]:,.0f} | {per[c] / per['bare']:.2f}x |" for c in configs]
        lines += [
            "",
            f"callgrind, difference between runs of {small:,} and {6 * small:,} requests; "
            "default settings but one timed task a second (at valgrind's pace the adaptive "
            "sampling would time nearly every task); the heartbeat still beats 40 times per "
            "(slow) second, so its share is overstated; Python "
            f"{sys.version.split()[0]}.",
        ]
        text = "\n".join(lines)
        rows = [Row("http in process", c, [per[c] / per["bare"]], [per[c]]) for c in configs]
        save(args.name + "_callgrind", rows, text, {"small": small})
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
