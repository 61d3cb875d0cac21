"""The HTTP request path's core (``asgi/_fastexchange.c`` or its twin ``_pureexchange.py``):
the middleware's ``send``/``receive`` behave as the server's own under every way an await can
go (suspension, cancellation, ``close``, errors, reuse), and the stuck-task walkers see through
them. ``./scripts/test`` runs this file on both twins.

The server side here is a pair of coroutines that suspend on futures the test resolves, so each
step is reached by an event, never by a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import asyncwatch
from asyncwatch._core import names as n
from asyncwatch.asgi._exchange import ACCELERATOR, HttpExchange
from asyncwatch.deadlock._waitgraph import coro_chain

from .asgi_apps import Observed, observing

SCOPE: dict[str, Any] = {
    "type": "http", "method": "GET", "path": "/", "root_path": "", "scheme": "http",
    "http_version": "1.1", "headers": [], "query_string": b"",
}


@pytest.fixture(name="observed")
def observed_fixture() -> Iterator[Observed]:
    """asyncwatch with no spans: requests take the middleware's inline path (the core's)."""
    with observing(http_spans=False) as obs:
        yield obs


class Server:
    """A server side whose send and receive wait until the test lets them go."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.gate: asyncio.Future[None] | None = None
        self.entered = asyncio.Event()
        self.exited: list[str] = []
        self.fail: BaseException | None = None
        self.incoming: list[dict[str, Any]] = []

    async def send(self, message: Any) -> str:
        try:
            self.gate = asyncio.get_running_loop().create_future()
            self.entered.set()
            await self.gate
            if self.fail is not None:
                raise self.fail
            self.sent.append(message)
            return "sent"
        finally:
            self.exited.append("send")

    async def receive(self) -> dict[str, Any]:
        self.gate = asyncio.get_running_loop().create_future()
        self.entered.set()
        await self.gate
        return self.incoming.pop(0)

    def release(self) -> None:
        assert self.gate is not None
        self.entered.clear()
        self.gate.set_result(None)


def points(observed: Observed, name: str) -> list[Any]:
    for rm in observed.reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    return list(metric.data.data_points)
    return []


def test_the_core_in_use_is_named() -> None:
    assert ACCELERATOR.startswith(("compiled", "pure Python"))


def test_a_suspended_send_is_forwarded_and_its_result_returned(observed: Observed) -> None:
    """The server's send suspends twice over; the app's await gets the server's own return
    value, the message passes through as the same object, and the request is recorded once the
    last part went out."""
    results: list[Any] = []
    body = {"type": "http.response.body", "body": b"hello"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        results.append(await send({"type": "http.response.start", "status": 200,
                                   "headers": []}))
        results.append(await send(body))

    async def main() -> None:
        server = Server()
        middleware = asyncwatch.AsyncWatchMiddleware(app)
        task = asyncio.ensure_future(middleware(dict(SCOPE), server.receive, server.send))
        for _ in range(2):
            await server.entered.wait()
            server.release()
        await task
        assert server.sent[1] is body

    asyncio.run(main())
    assert results == ["sent", "sent"]
    durations = points(observed, n.HTTP_SERVER_DURATION.name)
    assert sum(p.count for p in durations) == 1
    sizes = points(observed, "http.server.response.body.size")
    assert sum(p.sum for p in sizes) == len(b"hello")


def test_cancelling_a_suspended_send_reaches_the_server_and_the_app(observed: Observed) -> None:
    """Cancelled while the server's send waits: the CancelledError is thrown into the server's
    coroutine (its ``finally`` runs) and reaches the app's await."""
    seen: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except BaseException as exc:
            seen.append(exc)
            raise

    async def main() -> Server:
        server = Server()
        middleware = asyncwatch.AsyncWatchMiddleware(app)
        task = asyncio.ensure_future(middleware(dict(SCOPE), server.receive, server.send))
        await server.entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return server

    server = asyncio.run(main())
    assert server.exited == ["send"]
    assert len(seen) == 1
    assert isinstance(seen[0], asyncio.CancelledError)


def test_closing_the_app_closes_the_servers_send(observed: Observed) -> None:
    """``close()`` on a coroutine suspended in our send closes the server's coroutine too."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def main() -> Server:
        server = Server()
        middleware = asyncwatch.AsyncWatchMiddleware(app)
        coro = middleware(dict(SCOPE), server.receive, server.send)
        future = coro.send(None)  # runs to the server's await of its gate
        assert isinstance(future, asyncio.Future)
        coro.close()
        return server

    server = asyncio.run(main())
    assert server.exited == ["send"]


def test_an_oserror_from_the_servers_send_marks_the_client_gone(observed: Observed) -> None:
    """The server's send raising OSError (the client went away) reaches the app unchanged and
    counts a disconnect, with no status code (the status line was never sent)."""
    seen: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except OSError as exc:
            seen.append(exc)
            raise

    async def main() -> None:
        server = Server()
        server.fail = ConnectionResetError("gone")
        middleware = asyncwatch.AsyncWatchMiddleware(app)
        task = asyncio.ensure_future(middleware(dict(SCOPE), server.receive, server.send))
        await server.entered.wait()
        server.release()
        with pytest.raises(ConnectionResetError):
            await task

    asyncio.run(main())
    assert seen and seen[0].args == ("gone",)
    disconnects = points(observed, n.HTTP_SERVER_DISCONNECTS.name)
    assert sum(p.value for p in disconnects) == 1
    durations = points(observed, n.HTTP_SERVER_DURATION.name)
    assert [dict(p.attributes).get(n.ERROR_TYPE) for p in durations] == [n.CLIENT_DISCONNECT]
    assert all(n.HTTP_STATUS not in dict(p.attributes) for p in durations)


def test_receive_returns_the_servers_message_and_counts_its_body(observed: Observed) -> None:
    got: list[Any] = []
    incoming = {"type": "http.request", "body": b"12345", "more_body": False}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        server = Server()
        server.incoming.append(incoming)
        middleware = asyncwatch.AsyncWatchMiddleware(app)
        task = asyncio.ensure_future(middleware(dict(SCOPE), server.receive, server.send))
        for _ in range(3):
            await server.entered.wait()
            server.release()
        await task

    asyncio.run(main())
    assert got[0] is incoming
    sizes = points(observed, "http.server.request.body.size")
    assert sum(p.sum for p in sizes) == 5


def test_a_send_awaited_twice_fails_like_a_coroutine(observed: Observed) -> None:
    """Awaiting one ``send(...)`` twice raises RuntimeError, as reusing a coroutine does."""
    errors: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        awaitable = send({"type": "http.response.start", "status": 200, "headers": []})
        await awaitable
        try:
            await awaitable
        except RuntimeError as exc:
            errors.append(exc)
        await send({"type": "http.response.body", "body": b"x"})

    async def server_send(message: Any) -> None:
        return None

    async def server_receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    asyncio.run(asyncwatch.AsyncWatchMiddleware(app)(dict(SCOPE), server_receive, server_send))
    assert len(errors) == 1


def test_a_message_that_raises_reaches_the_app_and_is_not_sent(observed: Observed) -> None:
    """A message whose lookup raises something other than KeyError/TypeError/AttributeError:
    the error reaches the app and the server's send is never called (as without asyncwatch, a
    server would fail on the same lookup); one without a type passes through unobserved."""

    class Exploding(dict[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise ValueError("hostile")

    sent: list[Any] = []
    seen: list[BaseException] = []
    typeless = {"status": 200}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await send(Exploding())
        except ValueError as exc:
            seen.append(exc)
        await send(typeless)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    async def server_send(message: Any) -> None:
        sent.append(message)

    async def server_receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    asyncio.run(asyncwatch.AsyncWatchMiddleware(app)(dict(SCOPE), server_receive, server_send))
    assert [str(e) for e in seen] == ["hostile"]
    assert sent[0] is typeless
    assert len(sent) == 3


def test_the_await_chain_runs_through_send_to_the_server(observed: Observed) -> None:
    """The deadlock and stuck-task walkers follow a task suspended in the middleware's send
    down to the server's coroutine (``cr_await``)."""
    chain_codes: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    async def main() -> None:
        server = Server()
        middleware = asyncwatch.AsyncWatchMiddleware(app)
        task = asyncio.ensure_future(middleware(dict(SCOPE), server.receive, server.send))
        await server.entered.wait()
        for coro in coro_chain(task):
            code = getattr(coro, "cr_code", None)
            if code is not None:
                chain_codes.append(code.co_qualname)
        server.release()
        await server.entered.wait()
        server.release()
        await task

    asyncio.run(main())
    assert chain_codes[0] == "AsyncWatchMiddleware.__call__"
    assert chain_codes[-1] == "Server.send"


def test_exchange_fields_read_and_write_from_python(observed: Observed) -> None:
    """The fields Python code writes (``plain``, ``tasks``, ``end``) and the class defaults
    behave the same on either core."""
    ex = HttpExchange()
    assert (ex.trailers, ex.disconnected, ex.status_unsent, ex.finished) == (
        False, False, False, False)
    assert ex.route is None and ex.slot is None and ex.tasks == 0
    ex.plain = True
    ex.tasks += 2
    ex.end = 1.5
    assert (ex.plain, ex.tasks, ex.end) == (True, 2, 1.5)
    ex.end = None
    assert ex.end is None
    ex.background = True  # a Python field, beside the core's
    assert ex.background is True and HttpExchange.background is False


def test_requests_from_two_threads_go_to_each_threads_shard(observed: Observed) -> None:
    """One middleware serving loops on two threads, turn about: each request's figures land in
    the shard of the thread that served it (the compiled core keeps the last thread's shard
    and must notice the thread changed)."""
    import threading

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    async def server_send(message: Any) -> None:
        return None

    async def server_receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    middleware = asyncwatch.AsyncWatchMiddleware(app)
    served: dict[int, int] = {}

    def serve_one() -> None:
        asyncio.run(middleware(dict(SCOPE), server_receive, server_send))
        ident = threading.get_ident()
        served[ident] = served.get(ident, 0) + 1

    serve_one()  # binds the middleware (the long way)
    for _ in range(2):
        for _ in range(2):
            thread = threading.Thread(target=serve_one)
            thread.start()
            thread.join()
        serve_one()
    stats = observed.watch.http
    for ident, count in served.items():
        shard = stats._by_thread[ident]
        recorded = sum(len(slot.durations) + slot.duration.count
                       for slot in shard.requests.values())
        assert recorded == count, (ident, recorded, count)
