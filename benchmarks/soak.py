"""Soak: the same churny app, bare and under asyncwatch side by side, RSS every 10 seconds.

Two subprocesses run the same workload at the same time, one bare and one with asyncwatch
installed (default settings, its Prometheus endpoint on a free port), while this process
scrapes the asyncwatch one's ``/metrics`` over HTTP every ``--scrape-s`` seconds, as a
Prometheus server would. The workload churns everything asyncwatch keeps state for:

* coroutine names that keep changing (new coroutine functions made all the time, so the
  ``max_keys`` cap and its ``_OTHER`` key are reached and stay in use);
* many exception types (new exception classes raised from tasks, beyond ``max_error_types``);
* locks, semaphores, events, conditions and queues created, used and dropped;
* gather batches and ``run_in_executor`` calls;
* short-lived event loops (``asyncio.run`` in a side thread);
* light HTTP load: a uvicorn server (a Starlette app, with ``AsyncWatchMiddleware`` in the
  asyncwatch process) and a client making a few requests a second on changing paths.

Every 10 s the resident set size of both processes is printed side by side, and at the end a
summary (the figures docs/costs/performance.md quotes). Not part of the test suite; it takes
minutes:

    python benchmarks/soak.py --minutes 10            # the docs' run
    python benchmarks/soak.py --minutes 1 --every 5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from _harness import RESULTS

CHILD = r"""
import asyncio, gc, os, random, socket, sys, threading, time, types

mode, port_file = sys.argv[1], sys.argv[2]
watched = mode == "asyncwatch"
if watched:
    import asyncwatch
    watch = asyncwatch.install(prometheus_port=0)

import httpx, uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def item(request):
    return PlainTextResponse(request.path_params["name"])

async def fail(request):
    raise KeyError(request.path_params["name"])

app = Starlette(routes=[Route("/items/{name}", item), Route("/fail/{name}", fail)])
if watched:
    app = asyncwatch.AsyncWatchMiddleware(app)

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
http_port = sock.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))

async def template(i, fail_with):
    await asyncio.sleep(0)
    if fail_with is not None:
        raise fail_with(i)
    return i

made = 0
def new_job():
    # A coroutine function with a name never seen before.
    global made
    made += 1
    name = f"job_{made}"
    code = template.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, {"__name__": "soak.jobs", "asyncio": asyncio}, name)

errors = 0
def new_error():
    global errors
    errors += 1
    return type(f"SoakError{errors}", (Exception,), {"__module__": "soak.errors"})

async def primitives():
    lock, sem, event = asyncio.Lock(), asyncio.Semaphore(3), asyncio.Event()
    cond, queue = asyncio.Condition(), asyncio.Queue()
    async def user(i):
        async with lock:
            await asyncio.sleep(0)
        async with sem:
            await queue.put(i)
        async with cond:
            cond.notify_all()
        await event.wait()
        return await queue.get()
    users = [asyncio.create_task(user(i)) for i in range(8)]
    await asyncio.sleep(0.001)
    event.set()
    await asyncio.gather(*users)

def side_loops(stop):
    async def short():
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(10)))
    while not stop.is_set():
        asyncio.run(short())
        stop.wait(0.5)

async def client():
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
        n = 0
        while True:
            n += 1
            path = f"/items/{n}" if n % 5 else f"/fail/{n}"
            try:
                await http.get(path)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)

async def main():
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    load = asyncio.create_task(client())
    jobs = [new_job() for _ in range(50)]
    kinds = [new_error() for _ in range(10)]
    if watched:
        url = watch.prometheus_url
        with open(port_file + ".tmp", "w") as f:
            f.write(url)
        os.rename(port_file + ".tmp", port_file)
    else:
        open(port_file, "w").close()
    stop = threading.Event()
    side = threading.Thread(target=side_loops, args=(stop,), daemon=True)
    side.start()
    loop = asyncio.get_running_loop()
    rounds = 0
    while True:
        rounds += 1
        jobs[random.randrange(len(jobs))] = new_job()  # names keep changing
        if rounds % 4 == 0:
            kinds[random.randrange(len(kinds))] = new_error()  # so do exception types
        batch = []
        for job in jobs:
            fail_with = random.choice(kinds) if random.random() < 0.1 else None
            batch.append(job(len(batch), fail_with))
        await asyncio.gather(*batch, return_exceptions=True)
        await primitives()
        await loop.run_in_executor(None, sum, range(100))
        await asyncio.sleep(0.02)

asyncio.run(main())
"""


def start(mode: str, scratch: Path) -> tuple[subprocess.Popen[bytes], Path]:
    ready = scratch / f"{mode}.ready"
    ready.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCWATCH_", "OTEL_"))}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(ready)], env=env, stderr=subprocess.PIPE
    )
    return proc, ready


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(f"child exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise SystemExit("child did not start")
        time.sleep(0.05)  # polling with a deadline
    return ready.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS lines")
    parser.add_argument("--scrape-s", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--no-write", action="store_true", help="do not write results/")
    args = parser.parse_args()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"asyncwatch-soak-{os.getpid()}"
    scratch.mkdir(exist_ok=True)
    children = {mode: start(mode, scratch) for mode in ("bare", "asyncwatch")}
    try:
        url = ""
        for mode, (proc, ready) in children.items():
            got = wait_ready(proc, ready)
            if mode == "asyncwatch":
                url = got
        procs = {mode: psutil.Process(proc.pid) for mode, (proc, _) in children.items()}
        began = time.monotonic()
        end = began + args.minutes * 60
        next_line = began
        next_scrape = began
        scrapes = failed = 0
        series = 0
        rows: list[tuple[float, float, float, int, int]] = []
        print(f"{'t (s)':>6} {'bare RSS':>9} {'asyncwatch RSS':>15} {'difference':>11} "
              f"{'scrapes':>8} {'series':>7}", flush=True)
        while True:
            now = time.monotonic()
            if now >= next_scrape:
                next_scrape += args.scrape_s
                try:
                    with urllib.request.urlopen(url, timeout=10) as response:
                        body = response.read().decode()
                    series = sum(1 for line in body.splitlines() if line and line[0] != "#")
                    scrapes += 1
                except OSError:
                    failed += 1
            if now >= next_line:
                next_line += args.every
                for mode, (proc, _) in children.items():
                    if proc.poll() is not None:
                        err = proc.stderr.read().decode() if proc.stderr else ""
                        raise SystemExit(f"{mode} child died:\n{err}")
                bare = procs["bare"].memory_info().rss / 2**20
                watched = procs["asyncwatch"].memory_info().rss / 2**20
                rows.append((now - began, bare, watched, scrapes, series))
                print(f"{now - began:6.0f} {bare:9.1f} {watched:15.1f} {watched - bare:11.1f} "
                      f"{scrapes:8d} {series:7d}", flush=True)
                if now >= end:
                    break
            time.sleep(max(0.0, min(next_line, next_scrape) - time.monotonic()))
    finally:
        for proc, _ in children.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in children.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    summary = summarise(rows, failed, args)
    print(summary)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak.md").write_text(summary + "\n")
        (RESULTS / "soak.json").write_text(json.dumps(rows) + "\n")
    return 0


def summarise(rows: list[tuple[float, float, float, int, int]], failed: int,
              args: argparse.Namespace) -> str:
    first, last = rows[0], rows[-1]
    half = min(rows, key=lambda r: abs(r[0] - last[0] / 2))
    lines = [
        "| | bare | asyncwatch |",
        "|---|---:|---:|",
        f"| RSS at start (MiB) | {first[1]:.1f} | {first[2]:.1f} |",
        f"| RSS at the end (MiB) | {last[1]:.1f} | {last[2]:.1f} |",
        f"| growth over the run (MiB) | {last[1] - first[1]:+.1f} | {last[2] - first[2]:+.1f} |",
        f"| growth over the second half (MiB) | {last[1] - half[1]:+.2f} | "
        f"{last[2] - half[2]:+.2f} |",
        "",
        f"{last[0] / 60:.1f} minutes, RSS every {args.every:g} s; {last[3]} scrapes of /metrics "
        f"(every {args.scrape_s:g} s, {failed} failed), {last[4]} series on the last page.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
