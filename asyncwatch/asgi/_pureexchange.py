"""The pure-Python twin of ``_fastexchange.c``: the fields and per-message work of one HTTP
request, ``HttpExchange``'s base (see ``_exchange``).

``new_http`` makes a request's exchange and counts it in flight; ``send`` and ``receive`` are
the server's, observed. The compiled twin also does ``record`` and ``finish`` for the common
request and hands every other to ``record_full``/``finish_full``; here ``HttpExchange`` uses
those two as they are. ``ASYNCWATCH_NO_EXTENSIONS=1`` forces this twin (``./scripts/test``
runs the ASGI tests on both).
"""

from __future__ import annotations

from _thread import get_ident
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._exchange import HttpExchange
    from ._http import HttpShard, RequestSlot
    from ._middleware import Observer
    from ._types import Message, Receive, Scope, Send

_made: type[HttpExchange] | None = None  # the HttpExchange class new_http makes (bind)
_clock: Callable[[], float] = float  # the clock (bind)
_request: ContextVar[Any] | None = None  # _exchange.REQUEST (bind)


def bind(
    cls: type[HttpExchange],
    clock: Callable[[], float],
    fold_at: int,
    max_shortcuts: int,
    slot_class: type[RequestSlot],
    shard_class: type[HttpShard],
    request_var: ContextVar[Any],
) -> None:
    """The class ``new_http`` makes, the clock it reads and the ContextVar it sets (the
    compiled twin also takes ``FOLD_AT``, ``MAX_SHORTCUTS`` and the classes whose fields it
    reads)."""
    global _made, _clock, _request
    _made, _clock, _request = cls, clock, request_var


def bind_observer(cls: type[Observer]) -> None:
    """The middleware's Observer class (the compiled twin reads its fields at their offsets)."""


def new_http(
    obs: Observer,
    scope: Scope,
    receive: Receive,
    send: Send,
    method: str,
    root_path: Any,
    enter: bool = False,
) -> HttpExchange:
    """The exchange of one HTTP request (``method`` already bounded), counted in flight; with
    ``enter``, also the value of ``REQUEST`` until its ``finish`` (``token``).

    Every field a request reads is set here, where the store is cheap and makes later reads
    cheap too (a read that falls through to a class default is a slow lookup). The scheme
    and protocol version are read when the request is recorded.
    """
    assert _made is not None, "new_http before bind()"
    self = _made()
    self.obs = obs
    self.scope = scope
    self._receive = receive
    self._send = send
    self.method = method
    shard = obs.by_thread.get(get_ident())  # HttpStats.shard inlined (hot path)
    if shard is None:
        shard = obs.stats.shard
    self.shard = shard
    self.root_path = root_path
    self.status = self.end = None
    self.recorded = False
    self.plain = True
    self.tasks = self.req_bytes = self.resp_bytes = 0
    shard.live.add(self)
    self.started = _clock()
    if enter:  # the last step: nothing after it can fail
        assert _request is not None
        self.token = _request.set(self)
    return self


def _kind(message: Message) -> object:
    """``message["type"]``, or None if it has none."""
    try:
        return message["type"]
    except (KeyError, TypeError, AttributeError):
        return None


class HttpCore:
    """What ``new_http`` sets, ``send`` and ``receive``: see the module docstring."""

    # Defaults (the compiled twin's members read the same until written).
    route: str | None = None
    slot: RequestSlot | None = None
    trailers = False
    disconnected = False
    finished = False
    # The client left before the status line was sent (set and read only on that rare path).
    status_unsent = False
    tasks = 0

    obs: Observer
    scope: Scope
    _receive: Receive
    _send: Send
    shard: HttpShard
    method: str | None
    root_path: Any
    status: int | None
    end: float | None
    started: float
    recorded: bool
    # False once anything unusual happened to the request (one of the fields below set, or
    # ``exc``, ``disconnected``, ``span``, ``span_token``): the common request reads this one
    # field instead of each of them, and none of them is written for it.
    plain: bool
    req_bytes: int
    resp_bytes: int

    def record(self, end: float) -> None:
        raise NotImplementedError  # HttpExchange.record_full (see the module docstring)

    def finish(self) -> None:
        raise NotImplementedError  # HttpExchange.finish_full

    async def receive(self) -> Message:
        """The server's receive, observed."""
        message = await self._receive()
        try:
            kind = message["type"]
            if kind == "http.request":
                self.req_bytes += len(message.get("body", b""))
            elif kind == "http.disconnect" and self.end is None:
                self.disconnected = True
                self.plain = False
                if self.status is None:
                    self.status_unsent = True
        except (KeyError, TypeError, AttributeError):
            pass  # not a message this middleware understands; the app gets it unchanged
        return message

    async def send(self, message: Message) -> Any:
        """The server's send, observed; the request ends when its last part is sent. Returns
        what the server's send returned (None, for a server that keeps to ASGI)."""
        last = False
        try:
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    self.resp_bytes += len(body)
                last = not message.get("more_body") and (self.plain or not self.trailers)
            elif kind == "http.response.start":
                status = message["status"]
                self.status = status if status.__class__ is int else None
                if message.get("trailers"):
                    self.trailers = True
                    self.plain = False
            elif kind == "http.response.trailers":
                last = not message.get("more_trailers")
            elif kind == "http.response.pathsend":
                last = True
        except (KeyError, TypeError, AttributeError):
            pass
        try:
            # (what a server's send returns, None under ASGI, goes back to the app unchanged)
            result: Any = await self._send(message)  # type: ignore[func-returns-value]
        except OSError:
            if self.end is None:
                self.disconnected = True
                self.plain = False
                if self.status is None or _kind(message) == "http.response.start":
                    self.status_unsent = True
            raise
        if last and self.end is None:
            # Guarded here too (record guards its own body): nothing asyncwatch does after the
            # app's send may reach the app. A try costs nothing in 3.11 unless it catches.
            try:
                self.end = end = _clock()
                status = self.status
                if status is None or status < 500:
                    self.record(end)
            except Exception as exc:
                self.obs.fault("asgi_request", exc)
        return result
