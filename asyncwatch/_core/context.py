"""Request context that detectors read from another thread: the hook for the ASGI middleware.

A blocked-loop finding names the request that held the loop. The watchdog runs in its own
thread, so it cannot ask "what is current?"; it reads the ``contextvars.Context`` of the task
(or callback) holding the loop and looks up, in this order:

1. ``current_route``: this module's ContextVar, for other frameworks or middlewares to set
   to the route *template* (``/items/{id}``, never the raw path) for a request::

       token = current_route.set("/items/{id}")
       try:
           await app(scope, receive, send)
       finally:
           current_route.reset(token)

   Tasks created while handling the request inherit it, as contextvars do.
2. asyncwatch's own ASGI middleware: the request it handles in that context (its
   ``REQUEST`` ContextVar), whose template is read from the scope as routed so far.
3. The OpenTelemetry span current in that context (any instrumentation's SERVER or task span):
   its trace and span ids go into the finding, the block is added to it as a span event, and
   its ``http.route`` attribute is the route when (1) is unset.

Reading is side-effect free: ``Context.get`` on another thread's context, never
``Context.run`` (a context can be entered by one thread at a time).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
from collections.abc import Callable
from typing import Any

current_route: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "asyncwatch.current_route", default=None
)
"""The route template of the request being handled, set by the ASGI middleware."""

_HTTP_ROUTE = "http.route"


RouteReader = Callable[[contextvars.Context], "str | None"]
_route_readers: list[RouteReader] = []


def add_route_reader(reader: RouteReader) -> None:
    """Let ``route_in`` ask ``reader`` for the route of the request current in a context.

    asyncwatch's ASGI middleware adds its reader when it is first imported; it must not
    raise, and it runs on the watchdog's thread while the loop's thread is held.
    """
    if reader not in _route_readers:
        _route_readers.append(reader)


def task_context(task: asyncio.Task[Any]) -> contextvars.Context | None:
    """The context a task runs in, read from any thread."""
    get = getattr(task, "get_context", None)  # Python 3.12+
    if get is not None:
        ctx: contextvars.Context | None = get()
        return ctx
    ctx = getattr(task, "_context", None)  # the pure-Python Task
    if isinstance(ctx, contextvars.Context):
        return ctx
    if sys.version_info < (3, 12):
        # 3.11's C Task has no accessor; its GC traversal visits the task's own context first
        # (then the future's first callback context), so the first Context referent is it.
        for ref in gc.get_referents(task):
            if isinstance(ref, contextvars.Context):
                return ref
    return None


def span_in(ctx: contextvars.Context | None) -> Any:
    """The OpenTelemetry span current in ``ctx``, or None (no span, or not recording)."""
    if ctx is None:
        return None
    try:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - the API is a dependency
        return None
    var = getattr(getattr(otel_context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if not isinstance(var, contextvars.ContextVar):
        return None  # a custom OTEL_PYTHON_CONTEXT: not readable from another thread
    otel_ctx = ctx.get(var)
    if otel_ctx is None:
        return None
    span = trace.get_current_span(otel_ctx)
    if not span.get_span_context().is_valid:
        return None
    return span


def route_in(ctx: contextvars.Context | None, span: Any = None) -> str | None:
    """The request route current in ``ctx``: ``current_route``, else the request that
    asyncwatch's ASGI middleware is handling there, else the span's http.route."""
    if ctx is not None:
        route = ctx.get(current_route)
        if route:
            return str(route)
        for reader in _route_readers:
            route = reader(ctx)
            if route:
                return route
    attributes = getattr(span, "attributes", None)
    if attributes:
        route = attributes.get(_HTTP_ROUTE)
        if route:
            return str(route)
    return None
