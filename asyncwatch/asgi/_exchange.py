"""Per-request state of the ASGI middleware: one ``HttpExchange`` each (a WebSocket
connection's ``WsExchange`` is in ``_websocket``; ``BaseExchange`` is what they share).

An exchange wraps the server's ``receive``/``send`` (passing every message through as the
same object), notes what it needs with a few attribute writes, and records into the
``HttpStats`` shard when the response is complete. It is also the value of ``REQUEST``
while the request is handled, so the task hook can count tasks per request (``on_task``).

``HttpExchange``'s base, ``HttpCore``, is one of two twins (``ACCELERATOR`` says which): the
compiled ``_fastexchange`` (C, built by ``setup.py`` where a compiler is present) or
``_pureexchange`` (Python, the fallback, or forced with ``ASYNCWATCH_NO_EXTENSIONS=1``). It
holds the fields every request touches, makes the exchange (``new_http``), observes ``send``
and ``receive``, and in C also records and finishes the common request; everything else,
and every request the C code does not take the common way, is ``record_full`` and
``finish_full`` here.

Timing semantics:

* The request ends at its last body chunk (or trailers, or ``pathsend``): duration, active
  requests and the span stop there. Work the app does afterwards (Starlette/FastAPI
  background tasks) is timed separately (``asyncwatch.http.server.background.duration``).
* A response with status >= 500 is recorded when the app returns, so that an exception
  re-raised after the error page was sent (Starlette's ``ServerErrorMiddleware`` does this)
  names the ``error.type`` of the request it broke.
* A client that goes away first (``http.disconnect`` before the response was complete, or
  the server's ``send`` raising ``OSError``) is counted in ``asyncwatch.http.server.disconnects``;
  it is not an error of the app, whatever the app raises because of it. Following the HTTP
  conventions its request has ``error.type`` ``client_disconnect`` and no
  ``http.response.status_code`` unless the status line went out before the client left (a
  500 the app answers to a vanished client is never sent, so never counted as a 5xx); the
  span's status stays unset.
"""

from __future__ import annotations

import contextvars
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .._core import names as n
from .._core.context import add_route_reader
from .._core.imports import twin
from .._core.measure import clock
from . import _routes
from ._http import FOLD_AT, MAX_SHORTCUTS, BoundHist, HttpShard, HttpStats, RequestKey, RequestSlot

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from ..tasks import TaskStats
    from ._middleware import Observer
    from ._pureexchange import HttpCore, bind, bind_observer, new_http
    from ._types import Receive, Scope, Send

    TaskCallback = Callable[[asyncio.Task[Any]], None]

__all__ = [
    "ACCELERATOR",
    "COMPILED",
    "REQUEST",
    "BaseExchange",
    "HttpCore",
    "HttpExchange",
    "bind_observer",
    "new_http",
    "open_http",
]

# The exchange of the request being handled (HttpExchange or WsExchange), for the task hook.
REQUEST: ContextVar[BaseExchange | None] = ContextVar("asyncwatch.request", default=None)


def _route_in(ctx: contextvars.Context) -> str | None:
    """The route template of the request this middleware handles in ``ctx`` (for
    ``_core.context.route_in``, which the watchdog calls to name a blocked request).

    The template is not worked out until the request ends, so that costs nothing per request;
    here it is read from the request's scope as routed so far. The reader is the watchdog,
    while the loop's thread is held by a blocking call, so the scope is not changing under it.
    """
    request = ctx.get(REQUEST)
    if request is None:
        return None
    try:
        found = _routes.template(request.scope, request.root_path, request.router)
    except Exception:  # a scope changing under us after all: no route, never an error
        return None
    return found if isinstance(found, str) else None


add_route_reader(_route_in)

# What ``url.scheme`` and ``network.protocol.version`` may be (anything else from a server is
# reported as "http" and left out, so a hostile scope cannot grow the metric's cardinality).
HTTP_SCHEMES = frozenset({"http", "https"})
HTTP_VERSIONS = frozenset({"1.0", "1.1", "2", "2.0", "3", "3.0"})


def bounded_scheme(value: Any) -> str:
    """``value`` if it is a known ``url.scheme``, else "http"."""
    try:
        return value if value in HTTP_SCHEMES else "http"
    except TypeError:  # unhashable
        return "http"


def bounded_version(value: Any) -> str | None:
    """``value`` if it is a known ``network.protocol.version``, else None (left out)."""
    try:
        return value if value in HTTP_VERSIONS else None
    except TypeError:  # unhashable
        return None


#: Which twin of the HTTP request path is in use, "compiled (file)" or "pure Python (why)":
#: ``asyncwatch config`` prints it.
ACCELERATOR: str
if not TYPE_CHECKING:
    # _fastexchange is built by setup.py when it can (stub: _fastexchange.pyi)
    _core, ACCELERATOR = twin(__package__, "_fastexchange", "_pureexchange")
    HttpCore, new_http, bind, bind_observer = (
        _core.HttpCore, _core.new_http, _core.bind, _core.bind_observer)
COMPILED = ACCELERATOR.startswith("compiled")


class BaseExchange:
    """What HTTP requests and WebSocket connections share: task counting, route, span."""

    # Defaults live on the class, so an exchange only writes what differs. Only immutable
    # values here. (``open_http`` sets the fields every request reads.)
    proto = "http"
    default_scheme = "http"
    method: str | None = None
    route: str | None = None
    exc: BaseException | None = None
    disconnected = False
    finished = False
    span: Span | None = None
    span_token: Token[Context] | None = None  # what made the span current
    token: Token[BaseExchange | None] | None = None  # what made this the value of REQUEST
    # Tasks created while handling this request and how they ended (folded into the
    # route's counters when the request finishes; later endings go straight there).
    tasks = 0
    task_ok = 0
    task_cancelled = 0
    task_errors: dict[str, int] | None = None
    task_cb: TaskCallback | None = None
    callbacks: dict[TaskStats, TaskCallback] | None = None

    scope: Scope
    _receive: Receive
    _send: Send

    obs: Observer
    root_path: Any
    started: float

    @property
    def router(self) -> Any:
        """The router hint for route resolution (None: the scope's own); the middleware's."""
        return self.obs.router

    # ---------------------------------------------------------------- tasks (hot path)

    def done_callback(self, stats: TaskStats) -> TaskCallback:
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

            def callback(task: asyncio.Task[Any]) -> None:
                on_done(task)
                request_done(task)

            if len(callbacks) < 64:
                callbacks[stats] = callback
        return callback

    def on_task(self, task: asyncio.Task[Any]) -> None:
        """For the task hook's timed path: count a task that has its own done-callback."""
        self.tasks += 1
        cb = self.task_cb
        if cb is None:
            cb = self.task_cb = self.task_done
        task.add_done_callback(cb)

    def task_done(self, task: asyncio.Task[Any]) -> None:
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
                error_key = (*base, "error", error)
                outcomes[error_key] = outcomes.get(error_key, 0) + count
            self.task_errors = None

    # ---------------------------------------------------------------- shared end

    def resolve_route(self) -> str | None:
        """The bounded route template (None: the request matched no route)."""
        found = _routes.template(self.scope, self.root_path, self.router)
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
        # (typed as always there: nothing reads them once the exchange is released)
        self.scope = self._receive = self._send = None  # type: ignore[assignment]
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

    def leave(self) -> None:
        """``REQUEST`` back to what it was before this request (once; at its ``finish``)."""
        token = self.token
        if token is not None:
            self.token = None
            REQUEST.reset(token)

    def detach_span(self) -> None:
        """Make the request's span no longer current (after ``REQUEST`` was reset)."""
        from opentelemetry import context

        token, self.span_token = self.span_token, None
        if token is None:
            return
        try:
            context.detach(token)
        except Exception as exc:  # pragma: no cover - the SDK logs and swallows its own
            self.obs.fault("asgi_span", exc)


class HttpExchange(HttpCore, BaseExchange):
    """One HTTP request; see the module docstring. The fields every request reads and writes,
    ``send``, ``receive`` and the common request's ``record`` and ``finish`` are
    ``HttpCore``'s, compiled or pure Python (``_fastexchange``, ``_pureexchange``)."""

    method: str
    trailers: bool
    slot: RequestSlot | None
    status_unsent: bool
    background = False
    meters = True  # False when FastAPI's own telemetry records the HTTP metrics

    def scheme_now(self) -> str:
        """The bounded ``url.scheme`` of this request."""
        scope = self.scope
        return bounded_scheme(None if scope is None else scope.get("scheme"))

    def protocol_version(self) -> str | None:
        """The bounded ``network.protocol.version`` (None: not one the conventions know)."""
        scope = self.scope
        return bounded_version(None if scope is None else scope.get("http_version"))

    def finish_full(self) -> None:
        """The app returned or raised: record whatever is still open (every case)."""
        self.leave()
        try:
            if not self.recorded:
                end = self.end
                if end is None:
                    self.end = end = clock()
                self.record(end)
            elif not self.plain and (self.background or self.exc is not None):
                self.record_background()
            slot = self.slot
            tasks = self.tasks
            self.finished = True
            if tasks:
                if slot is not None:
                    slot.tasks.add(tasks)
                self.flush_tasks(self.obs.stats.shard)
                self.release()  # its tasks may outlive it: keep nothing of the request alive
            elif slot is not None:
                slot.zero_tasks += 1
        except Exception as exc:
            self.obs.fault("asgi_request", exc)
        if not self.plain and self.span_token is not None:
            self.detach_span()

    def record_full(self, end: float) -> None:
        """Record the request (once), ended at ``end``: metrics, disconnect count, span
        (every case)."""
        try:
            self.recorded = True
            shard = self.shard
            shard.live.discard(self)
            scope = self.scope
            status = self.status
            slot = key = None
            # The common request (it succeeded, and Starlette's matched route names it: no
            # mount crossed, no FastAPI included router holding prefixes) finds its figures
            # by the route's template, scheme and version as the server gave them.
            if (
                status is not None
                and status < 500
                and (self.plain or (self.exc is None and not self.disconnected))
                and "fastapi" not in scope
            ):
                route = scope.get("route")
                if route is not None:
                    try:
                        if scope["root_path"] == self.root_path:
                            key = (route.path_format, self.method, status, scope["scheme"],
                                   scope["http_version"])
                            slot = shard.by_route.get(key)
                    except (AttributeError, KeyError, TypeError):  # no route object, a key
                        key = None  # missing or unhashable: the long way
            if slot is None:
                slot = self.find_slot(shard, scope, status)
                # (a template that is no str was resolved from the scope: not cached)
                if key is not None and key[0].__class__ is str and slot.error is None:
                    shard.remember(key, slot)
            self.slot = slot
            self.route = slot.route
            if self.plain or self.meters:
                slot.durations.append(end - self.started)
            slot.request_sizes.append(self.req_bytes)
            sizes = slot.response_sizes
            sizes.append(self.resp_bytes)
            if len(sizes) >= FOLD_AT:
                shard.fold(slot)
            if not self.plain and self.span is not None:
                end_ns = time.time_ns() - int((clock() - end) * 1e9)
                error = slot.error
                self.end_span(error, slot.status, error is not None and not self.disconnected,
                              end_ns)
        except Exception as exc:
            self.obs.fault("asgi_request", exc)

    def find_slot(self, shard: HttpShard, scope: Scope, status: int | None) -> RequestSlot:
        """The figures this request goes to, the long way: its route template (Starlette's
        matched route, else found by ``_routes``) and its error, if any."""
        template = None
        route = scope.get("route")
        if (
            route is not None
            and scope.get("root_path", "") == self.root_path
            and "fastapi" not in scope
        ):
            template = getattr(route, "path_format", None)
        stats = self.obs.stats
        if template.__class__ is not str:
            template = _routes.template(scope, self.root_path, self.router)
            if template is not None:
                template = stats.route(template)
        elif template not in stats.routes:
            template = stats.route(template)
        if status is not None and status < 500 and self.exc is None and not self.disconnected:
            error = None
        else:
            status, error = self.failure(stats, template, status)
        # Scheme and version as the server gave them: a key with anything else (not a
        # known scheme or version) is not found and takes the bounded path below.
        key: Any = (self.method, template, status, scope.get("scheme"),
                    scope.get("http_version"), error)
        try:
            slot = shard.requests.get(key)
        except TypeError:  # an unhashable value in a hostile scope
            slot = None
        if slot is None:
            slot = shard.request(self.bounded_key(key))
        return slot

    @staticmethod
    def bounded_key(key: tuple[Any, ...]) -> RequestKey:
        """``key`` with its scheme and protocol version bounded to known values."""
        method, template, status, scheme, version, error = key
        return (method, template, status, bounded_scheme(scheme), bounded_version(version), error)

    def live_route(self) -> str | None:
        """The route template of this request while it is in flight (None: not routed yet, or
        no route); read by the console from another thread, so it only reads."""
        if self.route is not None:
            return self.route
        scope = self.scope
        if scope is None or scope.get("route") is None:
            return None
        return _routes.template(scope, self.root_path, self.router)

    def failure(
        self, stats: HttpStats, template: str | None, status: int | None
    ) -> tuple[int | None, str]:
        """(status, error.type) of a request that did not simply succeed."""
        if self.disconnected:  # counted apart, never an error of the app
            shard = self.shard
            key = (self.method, template, self.scheme_now())
            shard.disconnects[key] = shard.disconnects.get(key, 0) + 1
            return (None if self.status_unsent else status), n.CLIENT_DISCONNECT
        if self.exc is not None:
            # status None: what the server (or Starlette's error middleware) answers
            return (500 if status is None else status), stats.exception_type(self.exc)
        if status is None:
            return None, stats.error_type("incomplete_response")
        return status, stats.error_type(str(status))

    def record_background(self) -> None:
        """Work after the response (background tasks), or a failure after it was sent."""
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


def open_http(
    obs: Observer, scope: Scope, receive: Receive, send: Send, method: str
) -> HttpExchange:
    """The exchange of one HTTP request (``method`` already bounded), counted in flight
    (``new_http`` with the scope's ``root_path``, "" if it has none).

    ``AsyncWatchMiddleware.__call__`` calls ``new_http`` itself for the common request: a
    function call less there is measurable.
    """
    return new_http(obs, scope, receive, send, method, scope.get("root_path", ""))


if not COMPILED:  # the Python core has no fast path of its own: the full methods are it
    HttpExchange.record = HttpExchange.record_full  # type: ignore[method-assign,assignment]
    HttpExchange.finish = HttpExchange.finish_full  # type: ignore[method-assign,assignment]
bind(HttpExchange, clock, FOLD_AT, MAX_SHORTCUTS, RequestSlot, HttpShard, REQUEST)
