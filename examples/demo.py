"""The asyncwatch demo: a small service with the troubles real ones have, and what asyncwatch says.

An HTTP API (Starlette on uvicorn, 127.0.0.1:8000) whose item handler fans out with
``asyncio.gather`` and pushes a blocking client call to a thread pool that is too small; a
report handler that blocks the event loop now and then; an event-bus consumer whose producer
crashed; and a load generator calling the API over keep-alive connections. asyncwatch watches
all of it and names each problem: the line blocking the loop (at once), how many pool threads
to use instead (after about 10 s of data). The stuck consumer is not reported here today: what
else holds its queue is the dead producer's frame, kept by its traceback, which only a heap walk
can clear, and this process is past the heap size whose walk a timed scan allows (see
docs/guide/deadlocks.md, "Stuck tasks"; with a smaller heap it is found after 5 s).

Run it with ``./scripts/demo`` (``--seconds N``, ``--forever``). While it runs:
metrics on http://127.0.0.1:9464/metrics, the live console with ``asyncwatch console``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import asyncwatch
from asyncwatch import AsyncWatchMiddleware

HOST = "127.0.0.1"
PORT = 8000  # --port
pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lookups")  # too small: see advice


def blocking_lookup(item: int) -> int:
    time.sleep(0.01)  # a blocking client library, correctly pushed off the loop
    return item * 2


async def lookup(item: int) -> int:
    if random.random() < 0.02:
        raise ConnectionError(f"upstream refused item {item}")
    return await asyncio.get_running_loop().run_in_executor(pool, blocking_lookup, item)


async def item(request: Request) -> JSONResponse:
    item_id = int(request.path_params["item_id"])
    parts = await asyncio.gather(*(lookup(item_id + i) for i in range(4)), return_exceptions=True)
    ok = [p for p in parts if not isinstance(p, BaseException)]
    return JSONResponse({"item": item_id, "parts": ok}, status_code=200 if ok else 502)


def render_pdf() -> bytes:
    time.sleep(0.15)  # a synchronous renderer called on the loop: asyncwatch names this line
    return b"%PDF"


async def report(request: Request) -> JSONResponse:
    return JSONResponse({"report": request.path_params["name"], "bytes": len(render_pdf())})


app = Starlette(routes=[Route("/items/{item_id:int}", item), Route("/reports/{name}", report)])
app.add_middleware(AsyncWatchMiddleware)


# ---------------------------------------------------------------- an event bus gone quiet


async def producer(bus: asyncio.Queue[int]) -> None:
    for event in range(3):
        await bus.put(event)
    raise RuntimeError("producer lost its upstream connection")  # and nobody restarts it


async def consumer(bus: asyncio.Queue[int]) -> None:
    while True:
        await bus.get()  # after the producer died, nothing will ever put here again


def start_event_bus() -> list[asyncio.Task[None]]:
    """A producer and a consumer sharing a queue that only they hold."""
    bus: asyncio.Queue[int] = asyncio.Queue()
    return [
        asyncio.create_task(producer(bus), name="bus-producer"),
        asyncio.create_task(consumer(bus), name="bus-consumer"),
    ]


# ---------------------------------------------------------------- load


async def client(stop: asyncio.Event, paths: list[str]) -> None:
    """One keep-alive HTTP/1.1 connection, requesting ``paths`` in a random order."""
    reader, writer = await asyncio.open_connection(HOST, PORT)
    try:
        while not stop.is_set():
            path = random.choice(paths)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
    finally:
        writer.close()


async def occasional_report(stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 4)
        if not stop.is_set():
            await client_once(f"/reports/monthly-{random.randint(1, 12)}")


async def client_once(path: str) -> None:
    reader, writer = await asyncio.open_connection(HOST, PORT)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    await reader.read()
    writer.close()


# ---------------------------------------------------------------- main


def show(title: str, text: str) -> None:
    print(f"\n=== {title} ===\n{text}")


async def main(seconds: float) -> None:
    watch = asyncwatch.current()
    assert watch is not None
    print("asyncwatch is observing this process")
    if watch.prometheus_url:
        print(f"  metrics (Prometheus text): {watch.prometheus_url}")
    print("  live console:              asyncwatch console   (or telnet 127.0.0.1 20101)")
    print(f"  the demo API:              http://{HOST}:{PORT}/items/7")

    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=PORT, log_level="warning"))
    serving = asyncio.create_task(server.serve(), name="uvicorn")
    while not server.started:
        await asyncio.sleep(0.05)

    background = start_event_bus()
    stop = asyncio.Event()
    paths = [f"/items/{i}" for i in range(50)]
    load = [asyncio.create_task(client(stop, paths), name=f"client-{i}") for i in range(8)]
    load.append(asyncio.create_task(occasional_report(stop), name="reports"))

    deadline = time.monotonic() + seconds
    next_print = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= next_print:
            next_print += 10
            show("tasks (asyncwatch.stats())", asyncwatch.stats().format(8))

    stop.set()
    await asyncio.gather(*load, return_exceptions=True)
    show("tasks (asyncwatch.stats())", asyncwatch.stats().format(10))
    show("HTTP routes", "\n".join(
        f"{r['method']:<5} {r['route']:<24} {r['requests']:>6} requests, {r['errors']:>4} errors, "
        f"p99 {r['p99'] * 1000 if r['p99'] is not None else float('nan'):.1f} ms"
        for r in watch.http_routes()
    ))
    show("findings (asyncwatch.findings())", "\n".join(
        f"- {f.summary}" for f in asyncwatch.findings() if not getattr(f, "ongoing", False)
    ) or "none")
    show("advice (asyncwatch.advise())", "\n".join(
        f"- {r}\n    evidence: {r.evidence}" for r in asyncwatch.advise()
    ) or "none yet")

    server.should_exit = True
    await serving
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=45.0, help="how long to run (default: %(default)g s)"
    )
    parser.add_argument("--forever", action="store_true")
    parser.add_argument("--port", type=int, default=PORT, help="the demo API's port")
    args = parser.parse_args()
    PORT = args.port
    asyncwatch.install(
        console=True,  # loopback only
        stuck_task_after_s=5,  # demo-sized thresholds: the defaults are for production
        deadlock_interval_s=1,
        advisor_interval_s=5,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(float("inf") if args.forever else args.seconds))
