"""A steady, varied asyncio workload that puts data in every asyncwatch dashboard panel.

Use it to try the Grafana dashboards and Prometheus rules in ``grafana/`` and ``exporters/``
(the test suite scrapes it with a real Prometheus)::

    python examples/dashboard_load.py --forever
    # metrics at http://127.0.0.1:9464/metrics (ASYNCWATCH_PROMETHEUS_PORT to move it)

What it does, so each panel has something to show:

* a request-like fan-out (``handle_order`` -> ``gather`` of ``fetch_price`` / ``reserve_stock``)
  with varied durations, a few ``ConnectionError`` and ``TimeoutError`` failures and some
  cancelled tasks;
* a burst now and then, so schedule delay and peak in-flight counts move;
* a short-lived allocation-heavy coroutine (``build_report``) for the per-coroutine memory panel
  (``ASYNCWATCH_MEMORY_ATTRIBUTION=1``);
* one task that waits forever on an ``asyncio.Event`` nobody sets (``wait_for_approval``):
  a stuck task for the diagnosis dashboard, reported after 10 s here
  (``ASYNCWATCH_STUCK_TASK_AFTER_S`` overrides that; scans every second,
  ``ASYNCWATCH_DEADLOCK_INTERVAL_S``);
* HTTP traffic for the HTTP dashboard: a Starlette app with ``AsyncWatchMiddleware``, served
  by uvicorn in this process on 127.0.0.1 (a free port), and a client loop calling it
  (``GET /orders/{order_id}`` runs ``handle_order``, so each request fans out into tasks;
  ``POST /orders`` carries a body; a few answers are 503). Needs ``starlette``, ``uvicorn``
  and ``httpx``; without them (or with ``--no-http``) the HTTP panels stay empty;
* a synchronous call left in async code every two seconds or so (``load_legacy_config``
  sleeps 150 ms on the loop): a blocked loop for the loop-lag and blocked-loop panels;
* a blocking tax-rate client called through a thread pool that is too small for it (2 threads,
  6 callers, each call mostly waiting): the advisor suggests more ``max_workers``, for the
  diagnosis dashboard's Advisor row and the ``AsyncwatchAdvisorSuggestionPending`` alert. The
  advisor evaluates every 2 s over a 10 s window here (``ASYNCWATCH_ADVISOR_INTERVAL_S`` and
  ``ASYNCWATCH_ADVISOR_WINDOW_S`` override that), so the suggestion shows up within seconds.

``--inject-faults`` also exercises asyncwatch's own health panels: it registers a metric
source that always fails (counted in ``asyncwatch.internal.errors``; your app is unaffected)
and sends OTLP metrics to a port where nothing listens (counted in
``asyncwatch.export.dropped``). Never use it outside a demo.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import random
import socket
import time
from typing import Any

import asyncwatch


async def fetch_price(item: int) -> float:
    await asyncio.sleep(random.uniform(0.001, 0.02))
    if random.random() < 0.04:
        raise ConnectionError(f"price service refused item {item}")
    return item * 1.5


async def reserve_stock(item: int) -> bool:
    await asyncio.sleep(random.expovariate(1 / 0.01))
    if random.random() < 0.02:
        raise TimeoutError(f"stock service timed out for item {item}")
    return True


async def handle_order(order: int) -> int:
    items = range(order % 7 + 1)
    results = await asyncio.gather(
        *(fetch_price(i) for i in items), *(reserve_stock(i) for i in items), return_exceptions=True
    )
    return sum(1 for r in results if not isinstance(r, BaseException))


async def build_report() -> int:
    rows = [str(i) * 20 for i in range(2000)]  # allocated inside the coroutine
    await asyncio.sleep(0.05)
    return len(rows)


def read_config_file() -> None:
    time.sleep(0.15)  # a blocking call on the event loop, on purpose


async def load_legacy_config() -> None:
    read_config_file()


async def wait_for_approval() -> None:
    # Nobody ever sets it: a stuck task, on purpose. The event lives only in this coroutine:
    # an event some other task still holds could be set by it, so it would not be stuck.
    approved = asyncio.Event()
    await approved.wait()


def lookup_tax_rate(item: int) -> float:
    time.sleep(0.02)  # a blocking client library: the thread mostly waits on the network
    return 0.2 if item % 3 else 0.07


async def tax_caller(pool: concurrent.futures.Executor, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    item = 0
    while time.monotonic() < deadline:
        item += 1
        await loop.run_in_executor(pool, lookup_tax_rate, item)


async def run(seconds: float, pause: float) -> None:
    stuck = asyncio.create_task(wait_for_approval())
    deadline = time.monotonic() + seconds
    # too few threads for 6 callers of a blocking client: the advisor suggests more
    tax_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="tax-lookup")
    taxes = [asyncio.create_task(tax_caller(tax_pool, deadline)) for _ in range(6)]
    order = 0
    pending: set[asyncio.Task[int]] = set()
    while time.monotonic() < deadline:
        order += 1
        burst = 40 if order % 50 == 0 else 2  # a burst now and then: delay and peaks move
        for _ in range(burst):
            task = asyncio.create_task(handle_order(order))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if order % 10 == 0:
            report = asyncio.create_task(build_report())
            pending.add(report)
            report.add_done_callback(pending.discard)
        if order % max(1, round(2.0 / pause)) == 0:  # about every two seconds
            blocker = asyncio.create_task(load_legacy_config())
            pending.add(blocker)
            blocker.add_done_callback(pending.discard)
        if order % 15 == 0 and pending:
            next(iter(pending)).cancel()  # a client went away
        await asyncio.sleep(pause)
    stuck.cancel()
    await asyncio.gather(*pending, *taxes, stuck, return_exceptions=True)
    tax_pool.shutdown()


def http_app() -> Any:
    """The Starlette app the HTTP client loop calls, observed by AsyncWatchMiddleware."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def get_order(request: Request) -> Response:
        order = int(request.path_params["order_id"])
        if random.random() < 0.05:
            return JSONResponse({"error": "stock service unavailable"}, status_code=503)
        return JSONResponse({"order": order, "items": await handle_order(order)})

    async def post_order(request: Request) -> Response:
        body = await request.body()
        return JSONResponse({"accepted": len(body)}, status_code=201)

    routes = [
        Route("/orders/{order_id:int}", get_order),
        Route("/orders", post_order, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(asyncwatch.AsyncWatchMiddleware)])


async def http_traffic(seconds: float, pause: float) -> None:
    """Serve ``http_app`` with uvicorn on a free loopback port and call it until done."""
    try:
        import httpx
        import uvicorn
    except ImportError as exc:
        print(f"no HTTP traffic: {exc} (pip install uvicorn httpx starlette)", flush=True)
        return
    config = uvicorn.Config(
        http_app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving  # raises why it could not start
            return
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    print(f"HTTP app at http://127.0.0.1:{port}/orders/1", flush=True)
    deadline = time.monotonic() + seconds
    request = 0
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while time.monotonic() < deadline and not server.should_exit:
                request += 1
                if request % 5 == 0:
                    await client.post("/orders", content=b"x" * random.randrange(100, 5000))
                else:
                    await client.get(f"/orders/{request % 20}")
                await asyncio.sleep(pause)
    finally:
        server.should_exit = True
        await serving


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broken_source() -> list[object]:
    raise RuntimeError("injected by examples/dashboard_load.py --inject-faults")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--forever", action="store_true")
    parser.add_argument(
        "--pause", type=float, default=0.05, help="seconds between orders (default 0.05)"
    )
    parser.add_argument("--no-http", action="store_true", help="no HTTP app and traffic")
    parser.add_argument(
        "--inject-faults",
        action="store_true",
        help="exercise asyncwatch's health metrics (internal errors, dropped exports)",
    )
    args = parser.parse_args()
    settings: dict[str, Any] = {}
    # a demo: advice within seconds rather than the default 30 s / 60 s
    if "ASYNCWATCH_ADVISOR_INTERVAL_S" not in os.environ:
        settings["advisor_interval_s"] = 2.0
    if "ASYNCWATCH_ADVISOR_WINDOW_S" not in os.environ:
        settings["advisor_window_s"] = 10.0
    # and the stuck task reported within about 15 s rather than after the default 60 s
    if "ASYNCWATCH_STUCK_TASK_AFTER_S" not in os.environ:
        settings["stuck_task_after_s"] = 10.0
    if "ASYNCWATCH_DEADLOCK_INTERVAL_S" not in os.environ:
        settings["deadlock_interval_s"] = 1.0
    if args.inject_faults:
        os.environ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = (
            f"http://127.0.0.1:{_closed_port()}/v1/metrics"
        )
        os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        settings.update(metrics_exporters=("prometheus", "otlp"), export_timeout_s=0.5)
    watch = asyncwatch.install(**settings)
    if args.inject_faults:
        watch.bridge.add_source("dashboard_load.injected_fault", _broken_source)
    print(f"metrics at {watch.prometheus_url}", flush=True)
    seconds = float("inf") if args.forever else args.seconds

    async def everything() -> None:
        jobs = [run(seconds, args.pause)]
        if not args.no_http:
            jobs.append(http_traffic(seconds, args.pause))
        await asyncio.gather(*jobs)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(everything())


if __name__ == "__main__":
    main()
