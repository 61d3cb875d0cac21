"""One middleware layer per request, however the middleware got there (issue 17, point 4).

With asyncwatch installed, Starlette and FastAPI apps get the middleware by itself
(``asgi_auto``). An app that is also wrapped from outside (``AsyncWatchMiddleware(app)``),
that added the middleware itself, or that is mounted in another observed app must still run
exactly one layer per request: one ``__call__`` and one ``http.server.request.duration``
point, with the route template right. Each case is served by a real uvicorn over a socket;
the layers are counted by wrapping ``AsyncWatchMiddleware.__call__``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import asyncwatch
from asyncwatch._core import names as n

from .asgi_apps import Observed, observing
from .asgi_servers import Uvicorn

DURATION = n.HTTP_SERVER_DURATION.name


@pytest.fixture(name="calls")
def calls_fixture(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every ``AsyncWatchMiddleware.__call__``, counted per request path (as it arrived)."""
    seen: Counter[str] = Counter()
    original = asyncwatch.AsyncWatchMiddleware.__call__

    async def counted(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen[scope["path"]] += 1
        await original(self, scope, receive, send)

    monkeypatch.setattr(asyncwatch.AsyncWatchMiddleware, "__call__", counted)
    return seen


@pytest.fixture(name="obs")
def obs_fixture() -> Iterator[Observed]:
    """asyncwatch installed with auto-adding on (the default), strict."""
    with observing(asgi_auto=True) as obs:
        yield obs


async def _text(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(request.path_params))


def starlette_app(**kwargs: Any) -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", _text)], **kwargs)


def fastapi_app(**kwargs: Any) -> FastAPI:
    app = FastAPI(**kwargs)

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    return app


class Passthrough:
    """A pure ASGI middleware of the app's own, between the outer layer and Starlette."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _prebuilt(app: Starlette) -> Starlette:
    """The app with its middleware stack already built (as after serving a request) while
    asyncwatch adds its layer by itself."""
    app.middleware_stack = app.build_middleware_stack()
    return app


def _mounted(outer_wrap: bool) -> Callable[[], Any]:
    def build() -> Any:
        parent = Starlette(
            routes=[
                Route("/items/{item_id}", _text),
                Mount("/sub/{tenant}", app=starlette_app()),
                Mount("/api", app=fastapi_app()),
            ]
        )
        return asyncwatch.AsyncWatchMiddleware(parent) if outer_wrap else parent

    return build


# name -> (app factory, {request path: expected http.route})
ITEMS = {"/items/1": "/items/{item_id}", "/items/2": "/items/{item_id}"}
MOUNTED = {
    "/items/1": "/items/{item_id}",
    "/sub/t1/items/2": "/sub/{tenant}/items/{item_id}",
    "/api/items/3": "/api/items/{item_id}",
}
CASES: dict[str, tuple[Callable[[], Any], dict[str, str]]] = {
    "starlette-auto": (starlette_app, ITEMS),
    "starlette-wrapped-outside": (lambda: asyncwatch.AsyncWatchMiddleware(starlette_app()), ITEMS),
    "starlette-wrapped-outside-after-build": (
        lambda: asyncwatch.AsyncWatchMiddleware(_prebuilt(starlette_app())),
        ITEMS,
    ),
    "starlette-wrapped-outside-other-middleware": (
        lambda: asyncwatch.AsyncWatchMiddleware(Passthrough(starlette_app())),
        ITEMS,
    ),
    "starlette-add_middleware": (
        lambda: starlette_app(middleware=[Middleware(asyncwatch.AsyncWatchMiddleware)]),
        ITEMS,
    ),
    "fastapi-auto": (fastapi_app, ITEMS),
    "fastapi-wrapped-outside": (lambda: asyncwatch.AsyncWatchMiddleware(fastapi_app()), ITEMS),
    "fastapi-add_middleware": (
        lambda: fastapi_app(middleware=[Middleware(asyncwatch.AsyncWatchMiddleware)]),
        ITEMS,
    ),
    "mounted-auto": (_mounted(outer_wrap=False), MOUNTED),
    "mounted-wrapped-outside": (_mounted(outer_wrap=True), MOUNTED),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_layer_per_request(case: str, obs: Observed, calls: Counter[str]) -> None:
    build, paths = CASES[case]
    app = build()
    rounds = 3
    with Uvicorn(app) as server, httpx.Client(base_url=server.url) as client:
        for _ in range(rounds):
            for path in paths:
                assert client.get(path).status_code == 200, path
    # the middleware's __call__ ran once per request, whatever the nesting
    assert calls == dict.fromkeys(paths, rounds)
    # one duration point per request, under the route template
    expected: Counter[str] = Counter()
    for template in paths.values():
        expected[template] += rounds
    points = obs.points(DURATION)
    assert {p.attributes["http.route"]: p.count for p in points} == dict(expected)


def test_two_instances_nested_by_hand_count_each_request_once(
    calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance inside another one (both added by hand, another middleware between them,
    nothing added by asyncwatch itself) passes the request through. Counted from a process
    where no instance has bound yet: the inline path skips the nesting check only while a
    single instance is bound."""
    from asyncwatch.asgi import _middleware

    monkeypatch.setattr(_middleware, "_bound", 0)
    with observing(asgi_auto=False, http_spans=False) as obs:  # no span: the inline path
        inner = asyncwatch.AsyncWatchMiddleware(starlette_app())
        app = asyncwatch.AsyncWatchMiddleware(Passthrough(inner))
        with Uvicorn(app) as server, httpx.Client(base_url=server.url) as client:
            for _ in range(3):
                assert client.get("/items/1").status_code == 200
        assert _middleware._bound == 2
        assert calls == {"/items/1": 6}  # both layers are called...
        points = obs.points(DURATION)  # ...and the request is counted once
        assert {p.attributes["http.route"]: p.count for p in points} == {"/items/{item_id}": 3}


def test_an_app_first_served_by_a_task_a_request_left_behind(
    obs: Observed, calls: Counter[str]
) -> None:
    """A task created by a request outlives it (the request's state is released) and then
    serves a Starlette app of its own in process: that app is not nested in the finished
    request, so it gets its layer, and its request is counted once."""
    import asyncio

    import httpx as httpx_module

    inner = starlette_app()
    go: list[asyncio.Event] = []
    answers: list[int] = []
    left_behind: list[asyncio.Task[None]] = []

    async def serve_later() -> None:
        await go[0].wait()
        transport = httpx_module.ASGITransport(app=inner)
        async with httpx_module.AsyncClient(transport=transport, base_url="http://in") as c:
            answers.append((await c.get("/items/9")).status_code)

    async def start(request: Request) -> PlainTextResponse:
        go.append(asyncio.Event())
        left_behind.append(asyncio.create_task(serve_later()))
        return PlainTextResponse("started")

    async def release(request: Request) -> PlainTextResponse:
        go[0].set()
        await left_behind[0]
        return PlainTextResponse(str(answers))

    outer = Starlette(routes=[Route("/start", start), Route("/release", release)])
    with Uvicorn(outer) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/start").text == "started"
        assert client.get("/release").text == "[200]"
    assert calls == {"/start": 1, "/release": 1, "/items/9": 1}
    routes = {p.attributes["http.route"]: p.count for p in obs.points(DURATION)}
    assert routes == {"/start": 1, "/release": 1, "/items/{item_id}": 1}
