"""``http.route`` templates for every way Starlette and FastAPI route a request.

Runs against whatever Starlette and FastAPI are installed; ``scripts/frameworks`` runs this
file (and the other ASGI files) against the oldest supported and the newest releases.
Requests go through a real uvicorn server.
"""

from __future__ import annotations

from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route, Router
from websockets.sync.client import connect

import asyncwatch
from asyncwatch._core import names as n

from .asgi_apps import observing
from .asgi_servers import Uvicorn

DURATION = n.HTTP_SERVER_DURATION.name
HOST = "api.example.test"


async def text(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> tuple[Starlette, dict[tuple[str, str], str | None]]:
    """A Starlette app: plain routes, a Mount with routes, a mounted app, Host routing."""
    sub = Starlette(routes=[Route("/s/{z}", text)])
    app = Starlette(
        routes=[
            Host(HOST, app=Router(routes=[Route("/h/{k}", text)])),
            Route("/items/{item_id}", text),
            Mount("/m/{org}", routes=[Route("/x/{y}", text)]),
            Mount("/sub", app=sub),
        ]
    )
    expected = {
        ("GET", "/items/1"): "/items/{item_id}",
        ("POST", "/items/1"): "/items/{item_id}",  # 405: the route matched, not the method
        ("GET", "/m/acme/x/2"): "/m/{org}/x/{y}",
        ("GET", "/sub/s/3"): "/sub/s/{z}",
        ("HOST", "/h/4"): "/h/{k}",
        ("GET", "/nowhere"): None,  # 404
    }
    return app, expected


def fastapi_app() -> tuple[FastAPI, dict[tuple[str, str], str | None]]:
    """A FastAPI app: plain routes, APIRouter(prefix=), one router included under two prefixes,
    nested routers, Starlette routes and mounts inside routers, mounted FastAPI and Starlette
    apps (the FastAPI one built from include_router), Host routing."""
    app = FastAPI()

    @app.get("/plain/{n}")
    async def plain(n: int) -> int:
        return n

    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    async def user(user_id: int) -> int:
        return user_id

    app.include_router(users)

    listing = APIRouter()

    @listing.get("/list/{n}")
    async def list_(n: int) -> int:
        return n

    listing.add_route("/raw/{q}", text)
    listing.mount("/st", Starlette(routes=[Route("/p/{v}", text)]))
    app.include_router(listing, prefix="/c1")
    app.include_router(listing, prefix="/c2")

    inner = APIRouter(prefix="/inner")

    @inner.get("/leaf/{x}")
    async def leaf(x: int) -> int:
        return x

    outer = APIRouter(prefix="/outer")
    outer.include_router(inner, prefix="/mid")
    app.include_router(outer, prefix="/top")

    sub = FastAPI()
    sub_router = APIRouter()

    @sub_router.get("/list/{n}")
    async def sub_list(n: int) -> int:
        return n

    sub.include_router(sub_router, prefix="/c3")
    app.mount("/sub", sub)
    app.mount("/star", Starlette(routes=[Route("/a/{b}", text)]))
    hosted = APIRouter()

    @hosted.get("/h/{k}")
    async def hosted_get(k: int) -> int:
        return k

    host_app = FastAPI()
    host_app.include_router(hosted, prefix="/hp")
    app.host(HOST, host_app)
    expected = {
        ("GET", "/plain/1"): "/plain/{n}",
        ("POST", "/plain/1"): "/plain/{n}",  # 405
        ("GET", "/users/2"): "/users/{user_id}",
        ("GET", "/c1/list/3"): "/c1/list/{n}",
        ("GET", "/c2/list/3"): "/c2/list/{n}",
        ("POST", "/c1/list/3"): "/c1/list/{n}",  # 405 through an included router
        ("POST", "/sub/c3/list/5"): "/sub/c3/list/{n}",  # 405 in a mounted app's router
        ("GET", "/c1/raw/x"): "/c1/raw/{q}",
        ("GET", "/c2/st/p/y"): "/c2/st/p/{v}",
        ("GET", "/top/outer/mid/inner/leaf/4"): "/top/outer/mid/inner/leaf/{x}",
        ("GET", "/sub/c3/list/5"): "/sub/c3/list/{n}",
        ("GET", "/star/a/6"): "/star/a/{b}",
        ("HOST", "/hp/h/7"): "/hp/h/{k}",
        ("GET", "/nowhere"): None,  # 404
        ("GET", "/sub/nowhere"): None,  # 404 inside a mounted app
    }
    if not hasattr(fastapi.routing, "_IncludedRouter"):
        # FastAPI before 0.137 copies only its own and Starlette's routes out of an included
        # router and leaves mounts behind: that path is a 404 there.
        expected["GET", "/c2/st/p/y"] = None
    return app, expected


@pytest.mark.parametrize("how", ["add_middleware", "wrapped"])
@pytest.mark.parametrize("build", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
def test_every_kind_of_route_is_recorded_with_its_full_template(build: Any, how: str) -> None:
    """Each request's http.route is its whole template: mount and include prefixes included,
    the same router included twice gives two routes, a 404 has none."""
    with observing() as obs:
        app, expected = build()
        if how == "add_middleware":
            app.add_middleware(asyncwatch.AsyncWatchMiddleware)
        else:
            app = asyncwatch.AsyncWatchMiddleware(app)
        statuses = {}
        with Uvicorn(app) as server, httpx.Client(base_url=server.url) as client:
            for method, path in expected:
                if method == "HOST":
                    response = client.get(path, headers={"host": HOST})
                else:
                    response = client.request(method, path)
                statuses[method, path] = response.status_code
        points = obs.metrics()[DURATION]
    for (method, path), template in expected.items():
        status = statuses[method, path]
        if template is None:
            assert status == 404, (path, status)
        else:
            assert status == (405 if method == "POST" else 200), (method, path, status)
    recorded: dict[str, int] = {}  # route template ("": none) -> requests
    for point in points:
        route = point.attributes.get("http.route", "")
        recorded[route] = recorded.get(route, 0) + point.count
    wanted: dict[str, int] = {}
    for template in expected.values():
        wanted[template or ""] = wanted.get(template or "", 0) + 1
    assert recorded == wanted


def test_a_websocket_in_an_included_router_gets_its_prefixed_template() -> None:
    """An APIRouter's WebSocket route included under a prefix (twice)."""
    app = FastAPI()
    rooms = APIRouter()

    @rooms.websocket("/ws/{room}")
    async def ws(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(room)
        await websocket.close()

    app.include_router(rooms, prefix="/c1")
    app.include_router(rooms, prefix="/c2")
    with observing() as obs:
        with Uvicorn(asyncwatch.AsyncWatchMiddleware(app)) as server:
            for prefix in ("/c1", "/c2"):
                with connect(server.ws_url + prefix + "/ws/lobby") as client:
                    assert client.recv() == "lobby"
        points = obs.metrics()["asyncwatch.websocket.connection.duration"]
        routes = sorted(p.attributes.get("http.route") for p in points)
    assert routes == ["/c1/ws/{room}", "/c2/ws/{room}"]
