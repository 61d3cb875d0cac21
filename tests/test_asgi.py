"""The ASGI middleware over a real uvicorn and a real HTTP client, one ASGI shape per test."""

from __future__ import annotations

import random
import socket
from typing import Any

import httpx
import pytest
from opentelemetry.trace import StatusCode
from starlette.middleware import Middleware
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

import asyncwatch
from asyncwatch._core import names as n

from .asgi_apps import Controls, Observed, make_app, observed_fixture, observing
from .asgi_servers import Uvicorn, read_responses
from .conftest import wait_for

__all__ = ["observed_fixture"]  # the fixture, used by name

DURATION = n.HTTP_SERVER_DURATION.name
ACTIVE = n.HTTP_SERVER_ACTIVE.name


def wrapped(c: Controls, how: str = "outside", **kwargs: Any) -> Any:
    """The test app with the middleware added inside Starlette's stack or around it."""
    if how == "inside":
        return make_app(c, middleware=[Middleware(asyncwatch.AsyncWatchMiddleware)], **kwargs)
    return asyncwatch.AsyncWatchMiddleware(make_app(c, **kwargs))


def test_request_metrics_follow_the_http_conventions(observed: Observed) -> None:
    """Duration (convention buckets), active requests and body sizes, per route template."""
    with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/items/7").json() == {"id": "7"}
        assert client.get("/items/8").status_code == 200
        assert client.post("/echo", content=b"x" * 100).content == b"x" * 100
    get = observed.points(DURATION, http__route="/items/{item_id}")
    assert len(get) == 1
    assert get[0].count == 2
    assert dict(get[0].attributes) == {
        "http.request.method": "GET",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
        "url.scheme": "http",
        "network.protocol.version": "1.1",
    }
    assert tuple(get[0].explicit_bounds) == n.HTTP_DURATION_BOUNDS
    post = {"http__route": "/echo", "http__request__method": "POST"}
    assert observed.points(n.HTTP_SERVER_REQUEST_SIZE.name, **post)[0].sum == 100
    assert observed.points(n.HTTP_SERVER_RESPONSE_SIZE.name, **post)[0].sum == 100
    assert observed.count(ACTIVE, http__request__method="GET") == 0
    assert not any("7" in str(p.attributes) for p in observed.metrics()[DURATION])


def test_unknown_methods_are_folded_to_other(observed: Observed) -> None:
    """A method outside the conventions' set is _OTHER; the span keeps the original."""
    with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
        assert client.request("PURGE", "/items/1").status_code == 405
    point = observed.points(DURATION, http__request__method="_OTHER")[0]
    assert point.attributes["http.route"] == "/items/{item_id}"
    assert point.attributes["http.response.status_code"] == 405
    (span,) = observed.server_spans()
    assert span.name == "HTTP /items/{item_id}"
    assert span.attributes["http.request.method_original"] == "PURGE"


def test_a_scan_of_random_urls_adds_no_series(observed: Observed) -> None:
    """Paths that match no route carry no http.route: one series however many paths."""
    rng = random.Random(7)
    with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
        for _ in range(150):
            path = "/" + "/".join(str(rng.randrange(10**9)) for _ in range(rng.randrange(1, 4)))
            assert client.get(path).status_code == 404
    points = observed.metrics()[DURATION]
    assert len(points) == 1
    assert "http.route" not in points[0].attributes
    assert points[0].count == 150


def test_routes_beyond_the_cap_are_other() -> None:
    """At most http_max_routes templates are kept; later ones are counted as _OTHER."""
    with observing(http_max_routes=1) as obs:
        with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
            client.get("/items/1")
            client.get("/healthz")
            client.get("/items/2")
        assert obs.count(DURATION, http__route="/items/{item_id}") == 2
        assert obs.count(DURATION, http__route=n.OVERFLOW) == 1


def test_server_span_continues_the_callers_trace(observed: Observed) -> None:
    """traceparent, tracestate and baggage are extracted; the span is current in the app."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        "tracestate": "vendor=abc",
        "baggage": "user=alice",
    }
    with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
        seen = client.get("/context/1", headers=headers).json()
    assert seen == {"trace_id": trace_id, "user": "alice"}
    (span,) = observed.server_spans()
    assert span.name == "GET /context/{x}"
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7
    assert span.context.trace_state.get("vendor") == "abc"
    assert span.attributes["http.route"] == "/context/{x}"
    assert span.attributes["url.path"] == "/context/1"
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("how", ["inside", "outside"])
def test_an_exception_is_a_500_and_reraised_unchanged(observed: Observed, how: str) -> None:
    """The app's exception is recorded (500, its type, on the span) and propagates as is."""
    c = Controls()
    app = wrapped(c, how)
    reached_server: list[BaseException] = []

    async def server_side(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:
            reached_server.append(exc)
            raise

    with Uvicorn(server_side) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/boom").status_code == 500
    assert reached_server == c.raised
    assert reached_server[0] is c.raised[0]
    point = observed.points(DURATION, http__route="/boom")[0]
    assert point.attributes["http.response.status_code"] == 500
    assert point.attributes["error.type"] == "tests.asgi_apps.Boom"
    (span,) = observed.server_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in span.events] == ["tests.asgi_apps.Boom"]


def test_5xx_is_an_error_and_4xx_is_not(observed: Observed) -> None:
    """A 503 response sets error.type '503' and an error span; a 404 sets neither."""
    with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/unavailable").status_code == 503
        assert client.get("/missing").status_code == 404
    assert (
        observed.points(DURATION, http__route="/unavailable")[0].attributes["error.type"] == "503"
    )
    missing = observed.points(DURATION, http__response__status_code=404)[0]
    assert "error.type" not in missing.attributes
    statuses = {s.name: s.status.status_code for s in observed.server_spans()}
    assert statuses == {"GET /unavailable": StatusCode.ERROR, "GET": StatusCode.UNSET}


def test_tasks_of_a_request_are_its_span_children_and_counted_per_route() -> None:
    """Tasks created while handling a request nest under its span and count per route."""
    with observing(task_spans=("tests.asgi_apps.child_*",)) as obs:
        with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
            for _ in range(2):
                assert client.get("/spawn").text == "spawned"
            for _ in range(3):
                assert client.get("/items/1").status_code == 200
        route = {"http__route": "/spawn", "http__request__method": "GET"}
        done = n.HTTP_SERVER_TASKS_COMPLETED.name
        assert obs.count(done, asyncwatch__task__outcome="ok", **route) == 2
        failed = obs.points(done, asyncwatch__task__outcome="error", **route)
        assert [(p.attributes["error.type"], p.value) for p in failed] == [("KeyError", 2)]
        per_request = obs.points(n.HTTP_SERVER_REQUEST_TASKS.name, **route)[0]
        assert (per_request.count, per_request.sum) == (2, 4)
        none = obs.points(n.HTTP_SERVER_REQUEST_TASKS.name, http__route="/items/{item_id}")[0]
        assert (none.count, none.sum, none.bucket_counts[0]) == (3, 0, 3)
        servers = {s.context.span_id: s for s in obs.server_spans()}
        children = [s for s in obs.spans.get_finished_spans() if s.name.startswith("tests.")]
        assert len(children) == 4
        assert all(s.parent is not None and s.parent.span_id in servers for s in children)


def test_a_streamed_response_ends_at_its_last_chunk(observed: Observed) -> None:
    """While a stream is held open the request is active; it ends at the last chunk."""
    c = Controls()
    with Uvicorn(wrapped(c)) as server, httpx.Client(base_url=server.url) as client:
        with client.stream("GET", "/stream") as response:
            chunks = response.iter_bytes()
            assert next(chunks).startswith(b"a")
            c.stream.reached.wait(10)
            assert observed.count(ACTIVE, http__request__method="GET") == 1
            assert observed.points(DURATION, http__route="/stream") == []
            c.stream.open()
            rest = b"".join(chunks)
        assert rest.endswith(b"b" * 20)
        assert observed.count(ACTIVE, http__request__method="GET") == 0
    assert observed.points(n.HTTP_SERVER_RESPONSE_SIZE.name, http__route="/stream")[0].sum == 30


@pytest.mark.parametrize("fails", [False, True])
def test_background_work_is_timed_apart_from_the_request(observed: Observed, fails: bool) -> None:
    """The request is recorded when its response is complete, background work separately."""
    c = Controls(background_fails=fails)
    with Uvicorn(wrapped(c)) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/background").json() == {"queued": True}
        c.background.reached.wait(10)  # the background job is running, held at its gate
        wait_for(lambda: observed.points(DURATION, http__route="/background"), what="request")
        assert observed.count(ACTIVE, http__request__method="GET") == 0
        background = n.HTTP_SERVER_BACKGROUND.name
        assert observed.points(background) == []
        c.background.open()
        (point,) = wait_for(lambda: observed.points(background), what="background recorded")
    assert point.attributes["http.route"] == "/background"
    assert point.attributes.get("error.type") == ("tests.asgi_apps.Boom" if fails else None)
    request = observed.points(DURATION, http__route="/background")[0]
    assert "error.type" not in request.attributes


def test_a_client_disconnect_is_counted_not_an_app_error(observed: Observed) -> None:
    """A client leaving mid-stream counts as a disconnect: the status it was sent is kept,
    error.type says client_disconnect (as the conventions' dropped-connection example), the
    span is not an error."""
    with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
        with client.stream("GET", "/forever") as response:
            next(response.iter_bytes())
        disconnects = n.HTTP_SERVER_DISCONNECTS.name
        wait_for(lambda: observed.count(disconnects, http__route="/forever") == 1, what="count")
    point = observed.points(DURATION, http__route="/forever")[0]
    assert point.attributes["http.response.status_code"] == 200
    assert point.attributes["error.type"] == n.CLIENT_DISCONNECT
    (span,) = observed.server_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["asyncwatch.http.client_disconnected"] is True
    assert span.attributes["error.type"] == n.CLIENT_DISCONNECT


def test_a_client_gone_before_the_response_has_no_status_and_is_no_5xx(
    observed: Observed,
) -> None:
    """A client that leaves while the app reads its body: Starlette raises ClientDisconnect
    and answers 500 to nobody. Recorded with no http.response.status_code (none was sent) and
    error.type client_disconnect, so it is no 5xx; the console does not count it an error."""
    with Uvicorn(wrapped(Controls())) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc")
        wait_for(lambda: observed.count(ACTIVE) == 1, what="the request in flight")
        sock.close()
        disconnects = n.HTTP_SERVER_DISCONNECTS.name
        wait_for(lambda: observed.count(disconnects, http__route="/echo") == 1, what="count")
    (point,) = observed.points(DURATION, http__route="/echo")
    assert "http.response.status_code" not in point.attributes
    assert point.attributes["error.type"] == n.CLIENT_DISCONNECT
    (span,) = observed.server_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert "http.response.status_code" not in span.attributes
    (row,) = observed.watch.http_routes()
    assert (row["requests"], row["errors"]) == (1, 0)


def test_websocket_connections_get_duration_and_message_counts(observed: Observed) -> None:
    """A WebSocket session works as without asyncwatch and is measured per route."""
    with Uvicorn(wrapped(Controls())) as server:
        with connect(server.ws_url + "/ws/lobby") as ws:
            for word in ("a", "b", "c"):
                ws.send(word)
                assert ws.recv(timeout=10) == word.upper()
        duration = n.WEBSOCKET_DURATION.name
        wait_for(lambda: observed.points(duration), what="websocket closed")
    (point,) = observed.points(duration)
    assert dict(point.attributes) == {"http.route": "/ws/{room}", "url.scheme": "ws"}
    messages = n.WEBSOCKET_MESSAGES.name
    assert observed.count(messages, asyncwatch__websocket__direction="received") == 3
    assert observed.count(messages, asyncwatch__websocket__direction="sent") == 3
    assert observed.count(n.WEBSOCKET_ACTIVE.name) == 0
    assert [s.name for s in observed.server_spans()] == ["WS /ws/{room}"]


def test_a_failing_websocket_handler_closes_as_without_asyncwatch(observed: Observed) -> None:
    """The client sees the same abnormal close with or without the middleware; error counted."""
    codes: list[Any] = []
    for app in (make_app(Controls()), wrapped(Controls())):
        with Uvicorn(app) as server, connect(server.ws_url + "/wsboom") as ws:
            ws.send("go")
            with pytest.raises(ConnectionClosedError) as closed:
                ws.recv(timeout=10)
            rcvd = closed.value.rcvd
            codes.append((type(closed.value), rcvd.code if rcvd else None))
    assert codes[0] == codes[1]
    (point,) = observed.points(n.WEBSOCKET_DURATION.name)
    assert point.attributes["error.type"] == "tests.asgi_apps.Boom"


def test_lifespan_passes_straight_through(observed: Observed) -> None:
    """Startup and shutdown run once each; lifespan is neither measured nor changed."""
    events: list[str] = []
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        events.append("startup")
        yield {"ready": True}
        events.append("shutdown")

    with Uvicorn(wrapped(Controls(), lifespan=lifespan), lifespan="on") as server:
        assert events == ["startup"]
        assert httpx.get(server.url + "/items/1").status_code == 200
    assert events == ["startup", "shutdown"]
    assert observed.count(DURATION) == 1


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    """A plain ASGI callable: no framework, no routing."""
    assert scope["type"] == "http"
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status = 500 if scope["path"] == "/fail" else 200
    headers = [(b"content-type", b"text/plain"), (b"x-bare", b"1")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"bare:" + body})


def test_a_bare_asgi_callable_is_measured_without_a_route(observed: Observed) -> None:
    """Any ASGI 3 callable: conventions' metrics and spans, no http.route (it has no routing),
    and the answers are the app's own."""
    with (
        Uvicorn(asyncwatch.AsyncWatchMiddleware(bare_app)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        answer = client.post("/a/b", content=b"xyz")
        assert (answer.status_code, answer.text, answer.headers["x-bare"]) == (200, "bare:xyz", "1")
        assert client.get("/fail").status_code == 500
    ok = observed.points(DURATION, http__response__status_code=200)[0]
    assert ok.count == 1
    assert "http.route" not in ok.attributes
    assert ok.attributes["http.request.method"] == "POST"
    failed = observed.points(DURATION, http__response__status_code=500)[0]
    assert failed.attributes["error.type"] == "500"
    assert (
        observed.points(n.HTTP_SERVER_REQUEST_SIZE.name, http__request__method="POST")[0].sum == 3
    )
    assert sorted(s.name for s in observed.server_spans()) == ["GET", "POST"]


def test_keep_alive_and_pipelined_requests_are_each_counted(observed: Observed) -> None:
    """Several requests on one connection, pipelined or one after another, count one each."""
    with Uvicorn(wrapped(Controls())) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /items/1 HTTP/1.1\r\nHost: t\r\n\r\n" * 3)
            responses = read_responses(sock, 3)
        assert all(r.startswith(b"HTTP/1.1 200") and r.endswith(b'{"id":"1"}') for r in responses)
        with httpx.Client(base_url=server.url) as client:
            for i in range(4):
                assert client.get(f"/items/{i}").status_code == 200
    assert observed.count(DURATION, http__route="/items/{item_id}") == 7


def test_excluded_paths_and_otel_excluded_urls_are_not_observed() -> None:
    """ASYNCWATCH_HTTP_EXCLUDED_PATHS globs and OTEL_PYTHON_EXCLUDED_URLS regexes both apply."""
    config = asyncwatch.Config.from_env(
        {"ASYNCWATCH_HTTP_EXCLUDED_PATHS": "/health*", "OTEL_PYTHON_EXCLUDED_URLS": "/ready$"}
    )
    settings = {k: getattr(config, k) for k in ("http_excluded_paths", "http_excluded_urls")}
    with observing(**settings) as obs:
        with Uvicorn(wrapped(Controls())) as server, httpx.Client(base_url=server.url) as client:
            for path in ("/healthz", "/ready", "/items/1"):
                assert client.get(path).status_code == 200
        assert [p.attributes.get("http.route") for p in obs.metrics()[DURATION]] == [
            "/items/{item_id}"
        ]
        assert [s.name for s in obs.server_spans()] == ["GET /items/{item_id}"]


def test_the_app_can_serve_metrics_itself() -> None:
    """http_metrics_path serves Prometheus text from the app's own port (GET only)."""
    with (
        observing(http_metrics_path="/metrics"),
        Uvicorn(wrapped(Controls())) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        client.get("/items/1")
        page = client.get("/metrics")
        assert client.post("/metrics").status_code == 404  # not ours: the app's answer
        again = client.get("/metrics").text
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    assert "http_server_request_duration_seconds_count{" in page.text
    assert 'http_route="/items/{item_id}"' in page.text
    assert 'http_route="/metrics"' not in again
    assert again.count("http_server_request_duration_seconds_count{") == 2  # item + the POST


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return b"\r\n".join(
        line for line in data.split(b"\r\n") if not line.lower().startswith(b"date:")
    )


def test_responses_are_byte_for_byte_the_apps_own(observed: Observed) -> None:
    """Status line, headers and body are identical with and without the middleware."""
    requests = [
        b"GET /items/5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"HEAD /items/5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"GET /custom HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /boom HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ]
    answers = []
    for app in (make_app(Controls()), wrapped(Controls())):
        with Uvicorn(app) as server:
            answers.append([_exchange(server.port, r) for r in requests])
    assert answers[0] == answers[1]
    assert answers[1][3].count(b"set-cookie") == 2
