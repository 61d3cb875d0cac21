"""The HTTP figures' deferred histograms: folding equals adding one by one, memory stays
bounded with no reader, and a reader folding while requests arrive loses nothing."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import asyncwatch
from asyncwatch._core import names as n
from asyncwatch.asgi._http import FOLD_AT, BoundHist

from .asgi_apps import observing

DURATION = n.HTTP_DURATION_BOUNDS
SIZES = n.BODY_SIZE_BOUNDS
values = st.one_of(
    st.sampled_from(DURATION + SIZES),  # on a boundary: the bucket it closes
    st.floats(0, 2 * SIZES[-1], allow_nan=False),
    st.integers(0, 2 * int(SIZES[-1])),
)


@given(st.lists(values, max_size=400), st.sampled_from([DURATION, SIZES]))
def test_folding_equals_adding_one_by_one(observed: list[float], bounds: tuple[float, ...]) -> None:
    one_by_one, folded = BoundHist(bounds), BoundHist(bounds)
    for value in observed:
        one_by_one.add(value)
    pending = list(observed)
    assert folded.take(pending) == len(observed)
    assert pending == []
    assert folded.counts == one_by_one.counts
    assert folded.count == one_by_one.count
    assert math.isclose(folded.sum, one_by_one.sum, rel_tol=1e-9, abs_tol=1e-12)
    assert (folded.min, folded.max) == (one_by_one.min, one_by_one.max)


def app() -> Starlette:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x" * int(request.path_params["size"]))

    return Starlette(routes=[Route("/items/{size:int}", item)])


async def serve(application: Any, count: int, **odd: Any) -> None:
    """Be the ASGI server for ``count`` GET requests (sizes 0..9 bytes); ``odd`` values
    (callables of the request's number) replace scope entries."""
    for i in range(count):
        path = f"/items/{i % 10}"
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": b"", "headers": [],
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}
        scope.update({key: make(i) for key, make in odd.items()})

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        await application(scope, receive, send)


def test_with_no_reader_memory_stays_bounded_and_nothing_is_lost() -> None:
    """Thousands of requests and nobody collecting: each slot keeps fewer than FOLD_AT
    observations listed, and a later collection still counts every request and byte."""
    with observing(http_spans=False) as obs:
        application = asyncwatch.AsyncWatchMiddleware(app())
        total = 10 * FOLD_AT + 7
        asyncio.run(serve(application, total))
        shards = obs.watch.http._shards
        slots = [slot for shard in shards for slot in shard.requests.values()]
        assert slots
        for slot in slots:
            for pending in (slot.durations, slot.request_sizes, slot.response_sizes):
                assert len(pending) < FOLD_AT
        name = n.HTTP_SERVER_DURATION.name
        assert obs.count(name, http__route="/items/{size}") == total
        sizes = obs.points(n.HTTP_SERVER_RESPONSE_SIZE.name, http__route="/items/{size}")
        assert sum(p.count for p in sizes) == total
        assert sum(p.sum for p in sizes) == sum(i % 10 for i in range(total))


def test_a_reader_folding_while_requests_arrive_loses_nothing() -> None:
    """Collections from another thread while the loop records: every request is counted
    exactly once (the fold takes entries off the front; appends go on the back)."""
    with observing(http_spans=False) as obs:
        application = asyncwatch.AsyncWatchMiddleware(app())
        total = 6000
        stop = threading.Event()
        collections = 0

        def reader() -> None:
            nonlocal collections
            while not stop.is_set():
                obs.metrics()
                collections += 1

        thread = threading.Thread(target=reader)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as CPython will: mid-fold too
        thread.start()
        try:
            asyncio.run(serve(application, total))
        finally:
            stop.set()
            thread.join()
            sys.setswitchinterval(interval)
        assert collections > 0
        assert obs.count(n.HTTP_SERVER_DURATION.name, http__route="/items/{size}") == total
        sizes = obs.points(n.HTTP_SERVER_REQUEST_SIZE.name, http__route="/items/{size}")
        assert sum(p.count for p in sizes) == total


def test_scheme_and_version_are_bounded_whatever_the_server_says() -> None:
    """A server (or a middleware below it) putting any string in ``scheme`` or
    ``http_version`` adds no series: unknown ones are reported as http / left out."""
    with observing(http_spans=False) as obs:
        application = asyncwatch.AsyncWatchMiddleware(app())
        odd = {"scheme": lambda i: ["https", f"s{i}", None][i % 3],
               "http_version": lambda i: ["2", f"v{i}", "1.1"][i % 3]}
        asyncio.run(serve(application, 300, **odd))
        points = obs.points(n.HTTP_SERVER_DURATION.name)
        assert sum(p.count for p in points) == 300
        schemes = {p.attributes.get("url.scheme") for p in points}
        versions = {p.attributes.get("network.protocol.version") for p in points}
        assert schemes == {"http", "https"}
        assert versions == {"2", "1.1", None}
        assert len(points) <= 3
