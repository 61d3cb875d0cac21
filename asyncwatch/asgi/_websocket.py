"""One WebSocket connection's exchange: its duration, messages each way, route and span.

The WebSocket side of the ASGI middleware (the HTTP side and what both share are in
``_exchange``): the messages pass through unchanged and are only counted; the connection is
recorded into the ``HttpStats`` shard when the app returns.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._core import names as n
from .._core.measure import clock
from ._exchange import BaseExchange
from ._http import BoundHist

if TYPE_CHECKING:
    from ._middleware import Observer
    from ._types import Message, Receive, Scope, Send


class WsExchange(BaseExchange):
    """One WebSocket connection: duration, messages each way, never changed."""

    proto = "websocket"
    default_scheme = "ws"
    received = 0
    sent = 0

    def __init__(self, obs: Observer, scope: Scope, receive: Receive, send: Send) -> None:
        self.obs = obs
        self.scope = scope
        self._receive = receive
        self._send = send
        self.root_path = scope.get("root_path", "")
        scheme = scope.get("scheme")
        if scheme.__class__ is str and len(scheme) < 16:
            self.scheme = scheme
        else:
            self.scheme = self.default_scheme
        self.started = clock()
        active = obs.stats.shard.ws_active
        active[self.scheme] = active.get(self.scheme, 0) + 1

    async def receive(self) -> Message:
        """The server's receive, observed."""
        message = await self._receive()
        try:
            kind = message["type"]
            if kind == "websocket.receive":
                self.received += 1
            elif kind == "websocket.disconnect":
                self.disconnected = True
        except (KeyError, TypeError, AttributeError):
            pass
        return message

    async def send(self, message: Message) -> None:
        """The server's send, observed."""
        try:
            if message["type"] == "websocket.send":
                self.sent += 1
        except (KeyError, TypeError, AttributeError):
            pass
        try:
            await self._send(message)
        except OSError:
            self.disconnected = True
            raise

    def finish(self) -> None:
        """The app returned or raised."""
        self.leave()
        try:
            stats = self.obs.stats
            shard = stats.shard
            self.route = route = self.resolve_route()
            error = None
            if self.exc is not None and not self.disconnected:
                error = stats.exception_type(self.exc)
            key = (route, self.scheme, error)
            hist = shard.ws.get(key)
            if hist is None:
                hist = shard.ws[key] = BoundHist(n.WEBSOCKET_DURATION_BOUNDS)
            hist.add(clock() - self.started)
            shard.ws_active[self.scheme] = shard.ws_active.get(self.scheme, 0) - 1
            messages = shard.ws_messages
            for direction, count in (("received", self.received), ("sent", self.sent)):
                if count:
                    messages[(route, direction)] = messages.get((route, direction), 0) + count
            self.end_span(error, None, error is not None, time.time_ns())
            self.close_tasks(shard)
        except Exception as exc:
            self.obs.fault("asgi_websocket", exc)
        finally:
            self.release()
            if self.span_token is not None:
                self.detach_span()
