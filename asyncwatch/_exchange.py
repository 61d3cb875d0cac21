"""Per-request state of the ASGI middleware: one ``HttpExchange`` or ``WsExchange`` each.

An exchange wraps the server's ``receive``/``send`` (passing every message through as the
same object), notes what it needs with a few attribute writes, and records into the
``HttpStats`` shard when the response is complete. It is also the value of ``REQUEST``
while the request is handled, so the task hook can count tasks per request (``on_task``).

Timing semantics:

* The request ends at its last body chunk (or trailers, or ``pathsend``): duration, active
  requests and the span stop there. Work the app does afterwards (Starlette/FastAPI
  background tasks) is timed separately (``asyncwatch.http.server.background.duration``).
* A response with status >= 500 is recorded when the app returns, so that an exception
  re-raised after the error page was sent (Starlette's ``ServerErrorMiddleware`` does this)
  names the ``error.type`` of the request it broke.
* A client that goes away first (``http.disconnect`` before the response was complete, or
  the server's ``send`` raising ``OSError``) is counted in ``asyncwatch.http.server.disconnects``;
  it is not an error of the app, whatever the app raises because of it.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from . import _names as n
from ._http import BoundHist, HttpShard
from ._recorder import clock

if TYPE_CHECKING:
    from ._asgi import Observer

REQUEST: ContextVar[Any] = ContextVar("asyncwatch.request", default=None)


class _Exchange:
    """What HTTP requests and WebSocket connections share: task counting, route, span."""

    __slots__ = (
        "_receive",
        "_send",
        "callbacks",
        "disconnected",
        "exc",
        "finished",
        "method",
        "obs",
        "proto",
        "root_path",
        "route",
        "router",
        "scheme",
        "scope",
        "span",
        "span_token",
        "started",
        "task_cancelled",
        "task_cb",
        "task_errors",
        "task_ok",
        "tasks",
    )

    def __init__(self, obs: Observer, scope: Any, receive: Any, send: Any, router: Any) -> None:
        self.obs = obs
        self.scope = scope
        self._receive = receive
        self._send = send
        self.router = router  # a router hint for route resolution (None: the scope's own)
        self.root_path = scope.get("root_path", "")
        scheme = scope.get("scheme")
        self.scheme = scheme if type(scheme) is str and len(scheme) < 16 else self.default_scheme
        self.started = clock()
        self.method: str | None = None
        self.proto = "http"
        self.route: str | None = None
        self.exc: BaseException | None = None
        self.disconnected = False
        self.finished = False
        self.span: Any = None
        self.span_token: Any = None
        # Tasks created while handling this request and how they ended (folded into the
        # route's counters when the request finishes; later endings go straight there).
        self.tasks = 0
        self.task_ok = 0
        self.task_cancelled = 0
        self.task_errors: dict[str, int] | None = None
        self.task_cb: Any = None
        self.callbacks: dict[Any, Any] | None = None

    default_scheme = "http"

    # ---------------------------------------------------------------- tasks (hot path)

    def done_callback(self, stats: Any) -> Any:
        """For the task hook: the one done-callback of a task of this request, doing the
        task's own counting (``stats.on_done``) and the request's. One callback instead of two
        saves the loop scheduling a second one per task; it is made once per coroutine."""
        self.tasks += 1
        callbacks = self.callbacks
        if callbacks is None:
            callbacks = self.callbacks = {}
        callback = callbacks.get(stats)
        if callback is None:
            on_done, request_done = stats.on_done, self.task_done

            def callback(task: Any) -> None:
                on_done(task)
                request_done(task)

            if len(callbacks) < 64:
                callbacks[stats] = callback
        return callback

    def on_task(self, task: Any) -> None:
        """For the task hook's timed path: count a task that has its own done-callback."""
        self.tasks += 1
        cb = self.task_cb
        if cb is None:
            cb = self.task_cb = self.task_done
        task.add_done_callback(cb)

    def task_done(self, task: Any) -> None:
        """A task created while handling the request ended."""
        try:
            if task.cancelled():
                self.task_cancelled += 1
            else:
                exc = getattr(task, "_exception", None)  # .exception() would mark it retrieved
                if exc is None:
                    self.task_ok += 1
                else:
                    errors = self.task_errors
                    if errors is None:
                        errors = self.task_errors = {}
                    error = self.obs.stats.exception_type(exc)
                    errors[error] = errors.get(error, 0) + 1
            if self.finished:  # outlived its request: straight to the route's counters
                self.flush_tasks(self.obs.stats.shard)
        except Exception as exc:
            self.obs.fault("asgi_task_done", exc)

    def flush_tasks(self, shard: HttpShard) -> None:
        """Move the task outcomes counted so far into ``shard`` under this request's route."""
        base = (self.method, self.route, self.proto)
        outcomes = shard.task_outcomes
        for outcome, count in (("ok", self.task_ok), ("cancelled", self.task_cancelled)):
            if count:
                key = (*base, outcome, None)
                outcomes[key] = outcomes.get(key, 0) + count
        self.task_ok = self.task_cancelled = 0
        if self.task_errors:
            for error, count in self.task_errors.items():
                key = (*base, "error", error)
                outcomes[key] = outcomes.get(key, 0) + count
            self.task_errors = None

    # ---------------------------------------------------------------- shared end

    def resolve_route(self) -> str | None:
        """The bounded route template (None: the request matched no route)."""
        from ._routes import template

        found = template(self.scope, self.root_path, self.router)
        return None if found is None else self.obs.stats.route(found)

    def close_tasks(self, shard: HttpShard) -> None:
        """Record tasks-per-request and the outcomes seen so far; later ones go direct."""
        key = (self.method, self.route, self.proto)
        hist = shard.request_tasks.get(key)
        if hist is None:
            hist = shard.request_tasks[key] = BoundHist(n.TASKS_PER_REQUEST_BOUNDS)
        hist.add(self.tasks)
        self.finished = True
        self.flush_tasks(shard)

    def release(self) -> None:
        """Drop references to the request, so long-lived tasks do not keep it alive."""
        self.scope = self._receive = self._send = self.router = None
        self.exc = None
        self.span = None
        self.callbacks = None

    def end_span(self, error: str | None, status: int | None, failed: bool, end_ns: int) -> None:
        span = self.span
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        base = self.method if self.method != n.OVERFLOW else "HTTP"
        if self.proto == "websocket":
            base = "WS"
        if self.route is not None:
            span.update_name(f"{base} {self.route}")
            span.set_attribute(n.HTTP_ROUTE, self.route)
        if status is not None:
            span.set_attribute(n.HTTP_STATUS, status)
        if error is not None:
            span.set_attribute(n.ERROR_TYPE, error)
        if self.disconnected:
            span.set_attribute("asyncwatch.http.client_disconnected", True)
        exc = self.exc
        if exc is not None and not self.disconnected:
            span.record_exception(exc)
        if failed:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)


class HttpExchange(_Exchange):
    """One HTTP request; see the module docstring."""

    __slots__ = (
        "background",
        "end",
        "end_ns",
        "meters",
        "recorded",
        "req_bytes",
        "resp_bytes",
        "status",
        "trailers",
        "version",
    )

    def __init__(
        self, obs: Observer, scope: Any, receive: Any, send: Any, router: Any, method: str, meters: bool
    ) -> None:
        super().__init__(obs, scope, receive, send, router)
        self.method = method
        version = scope.get("http_version")
        self.version = version if type(version) is str and len(version) < 8 else None
        self.meters = meters  # False when FastAPI's own telemetry records the HTTP metrics
        self.status: int | None = None
        self.trailers = False
        self.req_bytes = 0
        self.resp_bytes = 0
        self.end: float | None = None
        self.end_ns = 0
        self.recorded = False
        self.background = False
        if meters:
            active = obs.stats.shard.active
            key = (method, self.scheme)
            active[key] = active.get(key, 0) + 1

    async def receive(self) -> Any:
        """The server's receive, observed."""
        message = await self._receive()
        try:
            kind = message["type"]
            if kind == "http.request":
                self.req_bytes += len(message.get("body", b""))
            elif kind == "http.disconnect" and self.end is None:
                self.disconnected = True
        except (KeyError, TypeError, AttributeError):
            pass  # not a message this middleware understands; the app gets it unchanged
        return message

    async def send(self, message: Any) -> None:
        """The server's send, observed; the request ends when its last part is sent."""
        last = False
        try:
            kind = message["type"]
            if kind == "http.response.body":
                self.resp_bytes += len(message.get("body", b""))
                last = not message.get("more_body", False) and not self.trailers
            elif kind == "http.response.start":
                status = message["status"]
                self.status = status if type(status) is int else None
                self.trailers = bool(message.get("trailers", False))
            elif kind == "http.response.trailers":
                last = not message.get("more_trailers", False)
            elif kind == "http.response.pathsend":
                last = True
        except (KeyError, TypeError, AttributeError):
            pass
        try:
            await self._send(message)
        except OSError:
            if self.end is None:
                self.disconnected = True
            raise
        if last and self.end is None:
            self.complete()

    def complete(self) -> None:
        """The response is fully sent."""
        try:
            self.end = clock()
            if self.span is not None:
                self.end_ns = time.time_ns()
            status = self.status
            if status is None or status < 500:
                self.record()
        except Exception as exc:
            self.obs.fault("asgi_request", exc)

    def raised(self, exc: BaseException) -> None:
        """The app raised ``exc`` (it is re-raised unchanged by the middleware)."""
        self.exc = exc

    def finish(self) -> None:
        """The app returned or raised: record whatever is still open."""
        try:
            if not self.recorded:
                if self.end is None:
                    self.end = clock()
                    self.end_ns = time.time_ns()
                self.record()
            elif self.background or self.exc is not None:
                error = None
                if self.exc is not None and not self.disconnected:
                    error = self.obs.stats.exception_type(self.exc)
                shard = self.obs.stats.shard
                key = (self.method, self.route, error)
                hist = shard.background.get(key)
                if hist is None:
                    hist = shard.background[key] = BoundHist(n.HTTP_DURATION_BOUNDS)
                assert self.end is not None
                hist.add(clock() - self.end)
            self.close_tasks(self.obs.stats.shard)
        except Exception as exc:
            self.obs.fault("asgi_request", exc)
        finally:
            self.release()

    def record(self) -> None:
        """Record the request (once): metrics, disconnect count, span."""
        self.recorded = True
        stats = self.obs.stats
        shard = stats.shard
        self.route = route = self.resolve_route()
        status = self.status
        exc = self.exc
        error: str | None = None
        if self.disconnected:
            shard.disconnects[(self.method, route, self.scheme)] = (
                shard.disconnects.get((self.method, route, self.scheme), 0) + 1
            )
        elif exc is not None:
            error = stats.exception_type(exc)
            if status is None:
                status = 500  # what the server (or Starlette's error middleware) answers
        elif status is None:
            error = stats.error_type("incomplete_response")
        elif status >= 500:
            error = stats.error_type(str(status))
        assert self.end is not None and self.method is not None
        key = (self.method, route, status, self.scheme, self.version, error)
        slot = shard.requests.get(key)
        if slot is None:
            slot = shard.request(key)
        if self.meters:
            slot.duration.add(self.end - self.started)
            active = shard.active
            active_key = (self.method, self.scheme)
            active[active_key] = active.get(active_key, 0) - 1
        slot.request_size.add(self.req_bytes)
        slot.response_size.add(self.resp_bytes)
        if self.span is not None:
            failed = error is not None
            self.end_span(error, status, failed, self.end_ns or time.time_ns())


class WsExchange(_Exchange):
    """One WebSocket connection: duration, messages each way, never changed."""

    __slots__ = ("received", "sent")

    default_scheme = "ws"

    def __init__(self, obs: Observer, scope: Any, receive: Any, send: Any, router: Any) -> None:
        super().__init__(obs, scope, receive, send, router)
        self.proto = "websocket"
        self.received = 0
        self.sent = 0
        active = obs.stats.shard.ws_active
        active[self.scheme] = active.get(self.scheme, 0) + 1

    async def receive(self) -> Any:
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

    async def send(self, message: Any) -> None:
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

    def raised(self, exc: BaseException) -> None:
        """The app raised ``exc`` (re-raised unchanged)."""
        self.exc = exc

    def finish(self) -> None:
        """The app returned or raised."""
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
