"""Malformed and hostile input: the app behaves exactly as without asyncwatch.

Raw requests go over real sockets to two uvicorn servers, one serving the bare app and one the
wrapped app, and the answers are compared byte for byte. A property-based fuzz over ASGI scopes
and messages runs the middleware in strict mode (any internal error raises) and checks it
passes every scope, message and exception through as the very same objects.
"""

from __future__ import annotations

import asyncio
import copy
import socket
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router

import asyncwatch
from asyncwatch._core import names as n

from .asgi_apps import Controls, make_app, observing
from .asgi_servers import Uvicorn

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

HOSTILE = {
    "unknown method": b"BREW /items/1 HTTP/1.1\r\nHost: t\r\n\r\n",
    "lowercase method": b"get /items/1 HTTP/1.1\r\nHost: t\r\n\r\n",
    "invalid method token": b"G@T /items/1 HTTP/1.1\r\nHost: t\r\n\r\n",
    "huge header": b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    "many headers": b"GET /items/1 HTTP/1.1\r\nHost: t\r\n" + b"X-H: v\r\n" * 400 + b"\r\n",
    "raw invalid utf-8 path": b"GET /items/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n",
    "encoded invalid utf-8 path": b"GET /items/%ff%fe%c0%af HTTP/1.1\r\nHost: t\r\n\r\n",
    "absolute-form target": b"GET http://elsewhere/items/1 HTTP/1.1\r\nHost: t\r\n\r\n",
    "garbage trace headers": b"GET /items/1 HTTP/1.1\r\nHost: t\r\ntraceparent: zz-\xff\r\n"
    b"tracestate: ,,,=\r\nbaggage: %%%;;==," + b"k=v," * 500 + b"\r\n\r\n",
    "valid trace headers": b"GET /items/1 HTTP/1.1\r\nHost: t\r\ntraceparent: "
    + TRACEPARENT
    + b"\r\n\r\n",
    "no host": b"GET /items/1 HTTP/1.0\r\n\r\n",
    "bad host": b"GET /items/1 HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "not http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "chunked body": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "bad chunk": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "two content-lengths": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nab",
}


def _answer(port: int, request: bytes) -> bytes:
    """Everything the server sends back for ``request`` (Date headers removed)."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        except OSError:
            data += b"<send refused>"  # the server answered and closed before reading it all
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            data += b"<reset>"
        except TimeoutError:
            data += b"<no answer>"
    lines = data.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"date:"))


def _early_disconnects(port: int) -> None:
    """Clients that leave mid-headers, mid-body, or right after sending a request."""
    for partial in (
        b"GET /items/1 HTTP/1.1\r\nHo",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-some",
        b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(partial)


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_hostile_requests_get_the_apps_own_answers(http: str) -> None:
    """Bad methods, huge headers, invalid UTF-8 paths, odd bodies and early disconnects:
    byte-identical answers with and without asyncwatch, and no internal error."""
    with observing() as obs:
        bare, wrapped = make_app(Controls()), asyncwatch.AsyncWatchMiddleware(make_app(Controls()))
        answers: list[dict[str, bytes]] = []
        for app in (bare, wrapped):
            with Uvicorn(app, http=http) as server:
                _early_disconnects(server.port)
                answers.append({name: _answer(server.port, raw) for name, raw in HOSTILE.items()})
                assert httpx.get(server.url + "/items/1").status_code == 200  # still serving
        for name in HOSTILE:
            assert answers[0][name] == answers[1][name], name
        assert obs.watch.faults.counts == {}
        routes = {
            p.attributes.get("http.route") for p in obs.metrics()[n.HTTP_SERVER_DURATION.name]
        }
        assert routes <= {"/items/{item_id}", "/echo", "/stream", None}


# ---------------------------------------------------------------------------- the fuzz

text = st.text(max_size=12)
junk = (
    st.none() | st.integers() | st.binary(max_size=8) | text | st.lists(st.integers(), max_size=2)
)
header = st.tuples(
    st.sampled_from([b"traceparent", b"tracestate", b"baggage", b"host", b"x"])
    | st.binary(max_size=8),
    st.sampled_from([TRACEPARENT, b"user=al%ice,x", b"[::1", b""]) | st.binary(max_size=40),
)
scopes = st.fixed_dictionaries(
    {"type": st.sampled_from(["http", "websocket", "lifespan"]) | junk},
    optional={
        "method": st.sampled_from(["GET", "HEAD", "POST", "get", "PURGE", ""]) | junk,
        "path": st.sampled_from(["/items/1", "/org/a/deep/2", "/", "/healthz", "/ready"])
        | text
        | junk,
        "root_path": st.sampled_from(["", "/api", "/org/a"]) | junk,
        "headers": st.lists(header | junk, max_size=5) | junk,
        "query_string": st.binary(max_size=20) | junk,
        "scheme": st.sampled_from(["http", "https", "ws"]) | junk,
        "http_version": st.sampled_from(["1.1", "2"]) | junk,
        "client": st.tuples(text, st.integers()) | junk,
        "server": st.tuples(text, st.integers() | junk) | junk,
        "route": junk,
        "router": junk,
        "fastapi.telemetry": st.none(),
        "asgi": st.just({"version": "3.0"}) | junk,
    },
)
incoming = st.lists(
    st.sampled_from(
        [
            {"type": "http.request", "body": b"abc", "more_body": False},
            {"type": "http.disconnect"},
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "hi"},
            {"type": "websocket.disconnect", "code": 1000},
        ]
    )
    | st.fixed_dictionaries({"type": junk, "body": junk})
    | junk,
    min_size=1,
    max_size=4,
)
outgoing = st.lists(
    st.sampled_from(
        [
            {"type": "http.response.start", "status": 200, "headers": []},
            {"type": "http.response.start", "status": 503, "trailers": True},
            {"type": "http.response.body", "body": b"part", "more_body": True},
            {"type": "http.response.body", "body": b"end"},
            {"type": "http.response.trailers", "headers": []},
            {"type": "http.response.pathsend", "path": "/x"},
            {"type": "websocket.accept"},
            {"type": "websocket.send", "text": "x"},
            {"type": "websocket.close"},
        ]
    )
    | st.fixed_dictionaries({"type": junk, "status": junk, "body": junk, "more_body": junk})
    | junk,
    max_size=5,
)


class Failure(Exception):
    """Raised by the fuzzed app or server."""


def fuzz_app(receives: int, sends: list[Any], fail: str) -> tuple[Any, list[Any]]:
    """A plain ASGI app doing exactly what it is told; ``seen`` logs what it got."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        for _ in range(receives):
            seen.append(await receive())
        for i, message in enumerate(sends):
            if fail == "mid" and i == len(sends) // 2:
                raise Failure("mid")
            await send(message)
        if fail == "end":
            raise Failure("end")
        if fail == "cancel":
            raise asyncio.CancelledError

    return app, seen


DISCONNECT = {"type": "http.disconnect"}


async def drive(
    app: Any, scope: Any, messages: list[Any], send_fails: bool
) -> tuple[Any, list[Any]]:
    """Be the server: feed ``messages`` (then disconnects), collect what is sent."""
    sent: list[Any] = []
    queue = list(messages)

    async def receive() -> Any:
        return queue.pop(0) if queue else DISCONNECT

    async def send(message: Any) -> None:
        if send_fails and len(sent) == 1:
            raise OSError("client went away")
        sent.append(message)

    try:
        await app(scope, receive, send)
    except BaseException as exc:  # the outcome under test, whatever it is
        return exc, sent
    return None, sent


def test_fuzzed_scopes_and_messages_pass_through_unchanged() -> None:
    """Any scope, message or failure: the app gets the same scope and messages, the server
    the same messages and the same exception, and asyncwatch raises nothing of its own."""
    with observing(http_excluded_paths=("/healthz",), http_excluded_urls=("ready",)) as obs:
        runner = asyncio.Runner()

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            scope=scopes,
            messages=incoming,
            receives=st.integers(0, 3),
            sends=outgoing,
            fail=st.sampled_from(["no", "mid", "end", "cancel"]),
            send_fails=st.booleans(),
        )
        def run(
            scope: dict[str, Any],
            messages: list[Any],
            receives: int,
            sends: list[Any],
            fail: str,
            send_fails: bool,
        ) -> None:
            app, seen = fuzz_app(receives, sends, fail)
            original = copy.deepcopy(scope)
            error, sent = runner.run(
                drive(asyncwatch.AsyncWatchMiddleware(app), scope, messages, send_fails)
            )
            bare_app, bare_seen = fuzz_app(receives, sends, fail)
            bare_error, bare_sent = runner.run(
                drive(bare_app, copy.deepcopy(original), messages, send_fails)
            )
            assert scope == original  # not one key changed
            assert seen[0] is scope
            assert all(a is b for a, b in zip(seen[1:], bare_seen[1:], strict=True))
            assert all(a is b for a, b in zip(sent, bare_sent, strict=True))
            assert type(error) is type(bare_error)
            assert error is None or error.args == bare_error.args

        try:
            run()
        finally:
            runner.close()
        assert obs.watch.faults.counts == {}


def router_app() -> Router:
    async def leaf(request: Any) -> PlainTextResponse:
        return PlainTextResponse("leaf")

    return Router(
        routes=[
            Route("/items/{item_id}", leaf),
            Mount("/org/{org}", routes=[Route("/deep/{x}", leaf)]),
        ]
    )


def test_fuzzed_scopes_through_starlette_routing_end_as_without_asyncwatch() -> None:
    """With a Starlette router inside (which reads and writes the scope), every fuzzed scope
    ends the same way with or without the middleware, and route resolution never raises."""
    with observing() as obs:
        runner = asyncio.Runner()

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(scope=scopes, messages=incoming)
        def run(scope: dict[str, Any], messages: list[Any]) -> None:
            bare_scope = copy.deepcopy(scope)
            error, sent = runner.run(
                drive(asyncwatch.AsyncWatchMiddleware(router_app()), scope, messages, False)
            )
            bare_error, bare_sent = runner.run(drive(router_app(), bare_scope, messages, False))
            assert type(error) is type(bare_error)
            assert sent == bare_sent

        try:
            run()
        finally:
            runner.close()
        assert obs.watch.faults.counts == {}


def test_the_inline_set_up_makes_the_same_exchange_as_the_long_way() -> None:
    """The middleware's inline set-up of a plain request (``new_http`` called from __call__,
    which also makes it the value of REQUEST) makes the same exchange as ``open_http``, which
    the other requests take: the same field values (C members or instance attributes,
    whichever core is in use) and the same instance attributes, but for the REQUEST token."""
    from asyncwatch.asgi._exchange import REQUEST, HttpExchange, open_http

    names = ("method", "root_path", "status", "end", "recorded", "plain", "tasks", "req_bytes",
             "resp_bytes", "trailers", "disconnected", "status_unsent", "finished", "route",
             "slot")

    def snapshot(ex: Any) -> tuple[Any, ...]:
        return ({name: getattr(ex, name) for name in names}, set(vars(ex)) - {"token"},
                ex.shard, ex.obs)

    with observing(http_spans=False):
        fields: list[tuple[Any, ...]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            request = REQUEST.get()
            assert request.__class__ is HttpExchange
            assert request.token is not None
            fields.append(snapshot(request))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        middleware = asyncwatch.AsyncWatchMiddleware(app)
        scope = {"type": "http", "method": "GET", "path": "/", "root_path": "",
                 "scheme": "http", "http_version": "1.1", "headers": []}
        for _ in range(2):  # the first binds the middleware to the Watch (the long way)
            error, sent = asyncio.run(drive(middleware, dict(scope), [], False))
            assert error is None and len(sent) == 2
        assert middleware._fast is not None  # so the second took the inline path
        made = open_http(middleware._fast, dict(scope), None, None, "GET")  # type: ignore[arg-type]
        made.shard.live.discard(made)
        assert made.token is None and REQUEST.get() is None  # open_http leaves REQUEST alone
        assert fields == [snapshot(made)] * 2
