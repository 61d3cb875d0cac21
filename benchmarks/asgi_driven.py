"""What each figure of an HTTP middleware costs: middlewares driven by hand, no server, no loop.

``asgi_inprocess.py`` measures the whole request path through uvicorn. This one isolates a
middleware: the issue's Starlette app (a JSON route and a route with a path parameter) is
called directly, its coroutine driven to the end with ``send(None)`` (nothing in it waits),
with the server's ``receive``/``send`` replaced by coroutines that return at once. No task is
created, so the task hook plays no part; asyncwatch runs with everything periodic off.

Configurations:

* ``bare``: the app alone;
* ``floor``: ``asgi.FloorMiddleware`` (the request's duration by route template, method and
  status, nothing else);
* ``figures``: ``asgi.FiguresFloorMiddleware`` (what asyncwatch's middleware records, the
  plainest way, without its guards);
* ``figures without X``: the same with one figure left out: ``in-flight`` (requests in flight
  by method and scheme), ``tasks`` (the context variable set around the app for tasks per
  request), ``sizes`` (request and response body sizes), ``receive`` (the wrapper of the
  server's ``receive``, which the body sizes need); ``figures without all`` leaves all four
  out;
* ``asyncwatch``: ``AsyncWatchMiddleware``.

Default mode: CPU time per request, interleaved rounds. ``--callgrind`` counts instructions
per request instead (valgrind): each configuration in its own process, the difference
between runs of N and 6N requests divided by 5N, so start-up cancels out.

Run: ``python benchmarks/asgi_driven.py [--callgrind]``.
"""

from __future__ import annotations

import argparse
import asyncio
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
from asgi import FIGURES, FloorMiddleware, build_app, figures_floor

CONFIGS = ("bare", "floor", "figures", *(f"figures without {x}" for x in FIGURES),
           "figures without all", "asyncwatch")


def build(config: str) -> Any:
    """The app of ``config`` (asgi.py's Starlette app), with asyncwatch installed, everything
    periodic off, for ``asyncwatch``."""
    if config == "asyncwatch":
        return build_app("asyncwatch-quiet")
    if config == "floor":
        return FloorMiddleware(build_app("bare"))
    if config == "figures":
        return figures_floor()(build_app("bare"))
    if config.startswith("figures without "):
        left = config.removeprefix("figures without ")
        return figures_floor(frozenset(FIGURES) if left == "all" else frozenset({left}))(
            build_app("bare"))
    return build_app("bare")


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


def _scope(i: int) -> dict[str, Any]:
    path = "/json" if i % 2 else f"/items/{i % 1000}"
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
        "scheme": "http", "method": "GET", "root_path": "", "path": path,
        "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench")], "state": {},
    }


def drive(app: Any, count: int) -> float:
    """CPU seconds of ``count`` requests through ``app``, each driven to its end by hand."""
    scopes = [_scope(i) for i in range(1000)]
    started = time.process_time()
    for i in range(count):
        coro = app(scopes[i % 1000].copy(), _receive, _send)
        try:
            coro.send(None)
        except StopIteration:
            continue
        coro.close()
        raise RuntimeError("a request waited for something: not a driven benchmark any more")
    return time.process_time() - started


def child(config: str, count: int) -> None:
    """One configuration in this process (under callgrind: no warm-up, start-up cancels)."""
    asyncio.set_event_loop(asyncio.new_event_loop())  # what asyncwatch's install looks for
    drive(build(config), count)


def instructions(config: str, count: int) -> int:
    """Instructions of a child process driving ``count`` requests, under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--child", config, "--count", str(count)],
            check=True, capture_output=True, env=dict(os.environ, PYTHONHASHSEED="0"),
        )
        text = Path(out).read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError("no instruction total in callgrind's output")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions per request with valgrind instead of timing")
    parser.add_argument("--name", default="asgi_driven", help="results file name")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.count)
        return
    if args.callgrind:
        if shutil.which("valgrind") is None:
            sys.exit("--callgrind needs valgrind (Debian package valgrind)")
        small = 500
        per = {c: (instructions(c, 6 * small) - instructions(c, small)) / (5 * small)
               for c in CONFIGS}
        lines = ["| configuration | instructions per request | over bare | vs figures |",
                 "|---|---:|---:|---:|"]
        lines += [f"| {c} | {per[c]:,.0f} | {per[c] - per['bare']:+,.0f} "
                  f"| {per[c] - per['figures']:+,.0f} |" for c in CONFIGS]
        lines += ["", f"callgrind, difference between runs of {small:,} and {6 * small:,} "
                  "requests driven by hand (no server, no task), each configuration in its own "
                  f"process; Python {sys.version.split()[0]}."]
        text = "\n".join(lines)
        rows = [Row("driven", c, [per[c] / per["bare"]], [per[c]]) for c in CONFIGS]
        save(args.name + "_callgrind", rows, text, {"small": small})
        print(text)
        return
    apps: dict[str, Any] = {}
    for config in CONFIGS:  # asyncwatch's install needs a loop set; the others ignore it
        asyncio.set_event_loop(asyncio.new_event_loop())
        apps[config] = build(config)
        drive(apps[config], 200)  # warm up

    def run(config: str) -> tuple[float, int]:
        return drive(apps[config], args.count), args.count

    rows = interleave("driven", {c: (lambda c=c: run(c)) for c in CONFIGS}, rounds=args.rounds)
    lines = ["| configuration | requests/s (median) | cost vs bare (median of per-round ratios) |",
             "|---|---:|---:|"]
    lines += [f"| {r.config} | {r.rate:,.0f} | {r.ratio:.2f}x |" for r in rows]
    lines += ["", f"{args.rounds} interleaved rounds of {args.count:,} requests driven by hand, "
              f"one process; Python {sys.version.split()[0]}."]
    text = "\n".join(lines)
    save(args.name, rows, text, {"rounds": args.rounds, "count": args.count})
    print(text)


if __name__ == "__main__":
    main()
