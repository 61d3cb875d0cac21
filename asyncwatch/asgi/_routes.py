"""Route templates from Starlette routing, and what FastAPI's own telemetry will record.

``http.route`` must be the route *template* (``/items/{item_id}``), never the raw path.
Starlette's router stores the matched route in ``scope["route"]``; with no mount crossed its
``path_format`` is the template (the fast path, a dictionary read). Mounted sub-apps and
routers overwrite ``scope["route"]`` with the innermost route and move ``root_path``, so the
template of the whole chain, mount prefixes included, is rebuilt by matching the router tree
again with the scope as it arrived (``resolve``); the same is done when the scope has no
route at all (a middleware answered before routing, an older Starlette, a copied scope).

FastAPI 0.137 and later keep an included router as one route (``_IncludedRouter``) instead of
copying its routes with the prefix applied: ``scope["route"]`` is then the route as the
router declared it (``/list/{n}``, without the ``include_router`` prefix), and the prefixed
route is the "effective route context" FastAPI keeps in ``scope["fastapi"]``. Its template is
read from there; matching again walks an included router through its effective routes.
Nothing here imports Starlette: without it loaded there is no Starlette router to read.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ._types import Scope

_MAX_DEPTH = 16  # nested mounts followed at most; also bounds the walk down .app chains


def starlette_routing() -> Any:
    """``starlette.routing`` if the app has loaded it, else None."""
    return sys.modules.get("starlette.routing")


def find_router(app: Any) -> Any:
    """The Starlette ``Router`` under ``app`` (through middleware ``.app`` attributes)."""
    routing = starlette_routing()
    if routing is None:
        return None
    for _ in range(_MAX_DEPTH * 4):
        if app is None:
            return None
        if isinstance(app, routing.Router):
            return app
        router = getattr(app, "router", None)
        if isinstance(router, routing.Router):
            return router
        app = getattr(app, "app", None)
    return None


def template(scope: Scope, entry_root_path: object, router: Any) -> str | None:
    """The route template of a finished request, or None if it matched no route.

    ``entry_root_path`` is the ``root_path`` the request arrived with; ``router`` is where to
    match from when the fast path cannot answer (default: the router that handled it).
    """
    route = scope.get("route")
    if route is not None and scope.get("root_path", "") == entry_root_path:
        if isinstance(route, str):
            return route if route.startswith("/") else None
        path_format = _included_template(scope, route)
        if path_format is None:
            path_format = getattr(route, "path_format", None)
        if isinstance(path_format, str):
            return path_format
    if router is None:
        router = scope.get("router")
    if router is None:
        return None
    return resolve(router, scope, entry_root_path)


def _included_template(scope: Scope, route: Any) -> Any:
    """The template of ``route`` as a FastAPI included router applies it (prefixes included);
    None: not routed through an included router (the route's own template is right), or
    ``_STALE`` when FastAPI's record names another route (match again to be sure)."""
    fastapi = scope.get("fastapi")
    if fastapi is None:
        return None
    try:
        context = fastapi.get("effective_route_context")
    except AttributeError:  # not FastAPI's dictionary
        return None
    if context is None:
        return None
    starlette_route = getattr(context, "starlette_route", None)
    if starlette_route is not None and starlette_route is route:  # e.g. an included WebSocket
        return getattr(route, "path_format", None)
    if getattr(context, "original_route", None) is not route:
        return _STALE
    return getattr(starlette_route or context, "path_format", None)


_STALE = object()  # not a str: template() matches the request again


def resolve(router: Any, scope: Scope, root_path: object) -> str | None:
    """Match the request against ``router``'s routes as Starlette would; the full template.

    Routing changes only the keys dropped here and ``root_path`` (put back as it arrived);
    ``path``, ``method`` and headers are what routing saw.
    """
    routing = starlette_routing()
    if routing is None:
        return None
    probe = {k: v for k, v in scope.items() if k not in _ROUTING_KEYS}
    probe["root_path"] = root_path
    return _match(routing, getattr(router, "routes", ()), probe, 0)


# "fastapi": FastAPI's per-request routing state, which its routers write while matching; the
# probe gets a fresh one (setdefault), so the request's own is never touched.
_ROUTING_KEYS = frozenset(
    {"route", "path_params", "endpoint", "app_root_path", "router", "fastapi"}
)


def _match(routing: Any, routes: Any, scope: Scope, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None
    partial = None
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # a route that cannot read this scope does not match it
            continue
        if match is routing.Match.FULL:
            return _descend(routing, route, scope, child, depth)
        if match is routing.Match.PARTIAL and partial is None:
            partial = (route, child)
    if partial is not None:
        return _descend(routing, partial[0], scope, partial[1], depth)
    return None


def _descend(
    routing: Any, route: Any, scope: Scope, child: Mapping[str, Any], depth: int
) -> str | None:
    candidates = getattr(route, "effective_candidates", None)
    if callable(candidates):  # a FastAPI included router: its routes with its prefixes applied
        return _match(routing, candidates(), {**scope, **child}, depth + 1)
    # A FastAPI effective route context: the Starlette route it built with the prefix, if any
    # (a Route, Mount or Host), else its own (prefixed) template.
    route = getattr(route, "starlette_route", None) or route
    if isinstance(route, routing.Mount | routing.Host):
        inner = route.routes
        if not inner:  # a mounted non-router app (static files, another framework)
            return route.path_format if isinstance(route, routing.Mount) else None
        found = _match(routing, inner, {**scope, **child}, depth + 1)
        if found is None:
            return None
        if isinstance(route, routing.Host):
            return found
        return str(route.path_format).removesuffix("/{path}") + found
    path_format = getattr(route, "path_format", None)
    return path_format if isinstance(path_format, str) else None


# ---------------------------------------------------------------------------- FastAPI

# Deferred (not yet configured) global providers: FastAPI records nothing through them.
_UNCONFIGURED = frozenset(
    {
        "ProxyTracerProvider",
        "_ProxyMeterProvider",
        "NoOpTracerProvider",
        "NoOpMeterProvider",
    }
)


def find_fastapi(app: Any) -> Any:
    """The FastAPI application under ``app`` (through middleware ``.app``), if any."""
    module = sys.modules.get("fastapi.applications")
    if module is None:
        return None
    for _ in range(_MAX_DEPTH * 4):
        if app is None:
            return None
        if isinstance(app, module.FastAPI):
            return app
        app = getattr(app, "app", None)
    return None


def fastapi_native(
    scope: Scope, outer_app: Any, websocket: bool
) -> tuple[bool, bool]:
    """Whether FastAPI's native telemetry traces and meters this request: (spans, metrics).

    FastAPI (0.142 and later) records ``http.server.request.duration`` and
    ``http.server.active_requests`` and makes the SERVER span itself when an OpenTelemetry
    provider is configured for it; asyncwatch must then not record them a second time.
    Inside FastAPI the request carries ``scope["fastapi.telemetry"]``; wrapping a FastAPI app
    from outside, the app's telemetry settings are read the way FastAPI reads them.
    """
    if "fastapi.telemetry" in scope:
        request_telemetry = scope["fastapi.telemetry"]
        if request_telemetry is None:  # FastAPI's own ``exclude`` skipped this request
            return False, False
        app = scope.get("app")
        spans = getattr(request_telemetry, "span", None) is not None
        return spans, _fastapi_meters(app, websocket)
    app = outer_app
    config = getattr(app, "_telemetry", None)
    native = getattr(app, "_native_telemetry", None)
    if not isinstance(config, Mapping) or native is None or not native.enabled():
        return False, False
    exclude = config.get("exclude")
    if exclude is not None and exclude(scope):
        return False, False
    if _legacy_otel(getattr(app, "middleware_stack", None)):
        return False, False
    from opentelemetry import trace

    provider = config.get("tracer_provider") or trace.get_tracer_provider()
    spans = bool(config.get("tracing")) and type(provider).__name__ not in _UNCONFIGURED
    return spans, _fastapi_meters(app, websocket)


def _fastapi_meters(app: Any, websocket: bool) -> bool:
    config = getattr(app, "_telemetry", None)
    if websocket or not isinstance(config, Mapping) or not config.get("metrics"):
        return False
    if _legacy_otel(getattr(app, "middleware_stack", None)):
        return False
    from opentelemetry import metrics

    provider = config.get("meter_provider") or metrics.get_meter_provider()
    return type(provider).__name__ not in _UNCONFIGURED


def _legacy_otel(stack: Any) -> bool:
    """FastAPI turns its telemetry off when contrib's OpenTelemetryMiddleware is in the stack."""
    for _ in range(_MAX_DEPTH * 4):
        if stack is None:
            return False
        kind = type(stack)
        if kind.__name__ == "OpenTelemetryMiddleware" and kind.__module__.startswith(
            "opentelemetry.instrumentation"
        ):
            return True
        stack = getattr(stack, "app", None)
    return False
