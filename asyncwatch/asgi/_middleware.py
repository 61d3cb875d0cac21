"""``AsyncWatchMiddleware``: HTTP and WebSocket telemetry per the OpenTelemetry conventions.

Pure ASGI 3 (no ``BaseHTTPMiddleware``): lifespan and any other scope type go straight to the
app; HTTP and WebSocket messages are observed by wrapping ``receive``/``send`` and passed on
as the very same objects, so status, headers, body and timing are the app's own. Per-request
state lives in one ``HttpExchange`` (see ``_exchange``); figures go to the Watch's bounded
``HttpStats`` and reach OpenTelemetry only at collection time.

Works as ``app.add_middleware(AsyncWatchMiddleware)`` (Starlette, FastAPI) or
``AsyncWatchMiddleware(app)`` around any ASGI app, and is added by itself to Starlette and
FastAPI apps built while asyncwatch is installed (``_asgi_patch``). Whichever way it got
there, a request runs through one layer: wrapping a Starlette app from outside keeps
asyncwatch from adding its own inside that app (and takes out one it already added), and an
app mounted in an observed app gets none (see ``_asgi_patch``). An instance nested in another
one anyway (added twice by hand) passes the request through, so nothing is counted twice.
"""

from __future__ import annotations

import enum
import fnmatch
import os
import re
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeGuard

from opentelemetry.propagators.textmap import Getter

from .._core import names as n
from .._core.config import Config
from ._exchange import REQUEST, HttpExchange, bind_observer, new_http, open_http
from ._routes import fastapi_native, find_fastapi, find_router
from ._starlette import wrapping_from_outside
from ._types import ASGIApp, Message, Receive, Scope, Send
from ._websocket import WsExchange

if TYPE_CHECKING:
    from contextvars import ContextVar

    from opentelemetry.trace import Tracer

    from .._core.faults import Faults
    from ._http import HttpStats


class Telemetry(Protocol):
    """What a middleware uses of the Watch's telemetry (``asyncwatch.otel``)."""

    @property
    def exports_spans(self) -> bool: ...

    def tracer(self) -> Tracer: ...


class RequestTracking(Protocol):
    """What a middleware uses of the Watch's task hook (``asyncwatch.tasks``)."""

    def track_requests(self, var: ContextVar[Any] | None) -> None: ...


class Host(Protocol):
    """What a middleware needs from the running Watch."""

    @property
    def config(self) -> Config: ...
    @property
    def http(self) -> HttpStats: ...
    @property
    def faults(self) -> Faults: ...
    @property
    def telemetry(self) -> Telemetry: ...
    @property
    def tasks(self) -> RequestTracking: ...


# The middleware is made by the app, not by the Watch, so this is where the two meet: the Watch
# module says which Watch runs (``attach``) and how to start one (``use_installer``). Nothing
# here imports it.
_running: Host | None = None
_installer: Callable[[Config | None], object] | None = None
# How many middleware instances have bound to a Watch in this process (never lowered). With
# one, no request can pass through two of them, so the inline path skips the nesting check
# (``REQUEST.get()``: some 600 instructions per request); from the second on it makes it.
_bound = 0


def attach(host: Host | None) -> None:
    """The running Watch, or None once it stopped (middlewares rebind at their next request)."""
    global _running
    _running = host


def use_installer(installer: Callable[[Config | None], object]) -> None:
    """How a middleware made before ``install()`` installs asyncwatch (``asyncwatch.install``)."""
    global _installer
    _installer = installer

Exchange = HttpExchange | WsExchange

__all__ = ["ASGIApp", "AsyncWatchMiddleware", "Message", "Receive", "Scope", "Send"]

# Request methods of the HTTP semantic conventions; anything else is reported as _OTHER.
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_SENSITIVE_QUERY_KEYS = frozenset(
    {
        "AWSAccessKeyId",
        "Signature",
        "sig",
        "X-Goog-Signature",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
    }
)


class _Mark(enum.Enum):
    UNSET = enum.auto()  # a middleware not yet bound to any Watch
    OBSERVE = enum.auto()  # a request the filters let through
    SERVE_METRICS = enum.auto()  # a request for the in-app /metrics page


_UNSET: Final = _Mark.UNSET
_OBSERVE: Final = _Mark.OBSERVE
_SERVE_METRICS: Final = _Mark.SERVE_METRICS


def known_methods(env: MutableMapping[str, str] | None = None) -> frozenset[str]:
    """The methods kept as they are (``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` overrides)."""
    raw = (os.environ if env is None else env).get("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "")
    chosen = frozenset(m.strip() for m in raw.split(",") if m.strip())
    return chosen or KNOWN_METHODS


HeaderIndex = dict[bytes, list[bytes]]


class _HeadersGetter(Getter[HeaderIndex]):
    """Reads W3C propagation headers from a ``_header_index`` of the request's ASGI headers
    (the propagators ask for a few names each: one pass over the headers serves them all)."""

    def get(self, carrier: HeaderIndex, key: str) -> list[str] | None:
        want = key.lower().encode("latin-1")
        raw = carrier.get(want)
        if not raw:
            return None
        values = [value.decode("latin-1") for value in raw]
        return [",".join(values)] if want == b"baggage" else values

    def keys(self, carrier: HeaderIndex) -> list[str]:
        return [name.decode("latin-1") for name in carrier]


def _header_index(headers: Sequence[object]) -> HeaderIndex:
    """Lower-cased header name -> its values in order; malformed entries are skipped."""
    index: HeaderIndex = {}
    for item in headers:
        if _is_header(item):
            name = item[0].lower()
            values = index.get(name)
            if values is None:
                index[name] = [item[1]]
            else:
                values.append(item[1])
    return index


def _is_header(item: object) -> TypeGuard[Sequence[bytes]]:
    """A well-formed ASGI header: a pair of byte strings."""
    return (
        isinstance(item, list | tuple)
        and len(item) == 2
        and isinstance(item[0], bytes)
        and isinstance(item[1], bytes)
    )


def _headers(scope: Scope) -> Sequence[object]:
    """The scope's headers as sent (each checked by ``_is_header`` where it is read)."""
    headers = scope.get("headers")
    return headers if isinstance(headers, list | tuple) else ()


_GETTER = _HeadersGetter()
_otel: Any = None  # (context, propagate, trace, SpanKind.SERVER), imported at the first span


def _otel_api() -> Any:
    global _otel
    if _otel is None:
        from opentelemetry import context, propagate, trace

        _otel = (context, propagate, trace, trace.SpanKind.SERVER)
    return _otel


class Observer:
    """What a middleware needs from one running Watch, resolved once per Watch."""

    # (slots: the compiled request path reads by_thread, stats, last_shard and last_thread at
    # their offsets)
    __slots__ = (
        "_metrics_app",
        "by_thread",
        "excluded_path",
        "excluded_url",
        "faults",
        "filtering",
        "last_shard",
        "last_thread",
        "methods",
        "metrics_path",
        "off",
        "plain",
        "router",
        "spans_wanted",
        "stats",
        "telemetry",
        "watch",
    )

    def __init__(self, watch: Host, config: Config, router: Any = None) -> None:
        self.watch = watch
        self.router = router  # the Starlette router under the middleware, if any
        self.stats = watch.http
        # HttpStats' shard per thread (the same dict): where new_http finds this thread's
        self.by_thread = watch.http._by_thread
        # The shard of the thread (ident) of the last request (the compiled new_http's cache)
        self.last_shard: Any = None
        self.last_thread: int | None = None
        self.faults = watch.faults
        self.telemetry = watch.telemetry
        self.methods = known_methods()
        globs = [fnmatch.translate(g) for g in config.http_excluded_paths]
        self.excluded_path = re.compile("|".join(globs)) if globs else None
        urls = config.http_excluded_urls
        self.excluded_url = re.compile("|".join(urls)) if urls else None
        self.metrics_path = config.http_metrics_path or None
        self.spans_wanted = config.http_spans
        self.filtering = bool(self.metrics_path or self.excluded_path or self.excluded_url)
        # no filter to apply: __call__ may take its inline path (spans are checked there)
        self.plain = not self.filtering
        self._metrics_app: ASGIApp | None = None
        self.off = False

    def fault(self, hook: str, exc: BaseException) -> None:
        """An internal error: counted; the middleware turns itself off if it keeps failing."""
        if self.faults.report(hook, exc):
            self.off = True

    def begin(
        self, mw: AsyncWatchMiddleware, scope: Scope, receive: Receive, send: Send, kind: str
    ) -> Exchange | Literal[_Mark.SERVE_METRICS] | None:
        """The exchange for this request, ``_SERVE_METRICS``, or None (pass it through)."""
        try:
            outer = REQUEST.get()
            if outer is not None and outer.scope is scope:
                return None  # an outer AsyncWatchMiddleware already observes this request
            if self.filtering:
                verdict = self.filter(scope, kind)
                if verdict is not _OBSERVE:
                    return verdict
            fastapi_spans = fastapi_meters = False
            if "fastapi.telemetry" in scope or mw.fastapi is not None:
                fastapi_spans, fastapi_meters = fastapi_native(
                    scope, mw.fastapi, kind == "websocket"
                )
            ex: Exchange
            if kind == "http":
                method = scope.get("method")
                if method.__class__ is not str or method not in self.methods:
                    method = n.OVERFLOW
                ex = open_http(self, scope, receive, send, method)
                if fastapi_meters:
                    ex.meters = ex.plain = False
            else:
                ex = WsExchange(self, scope, receive, send)
        except Exception as exc:
            self.fault("asgi_request", exc)
            return None
        if self.spans_wanted and not fastapi_spans and self.telemetry.exports_spans:
            try:
                self.start_span(ex, scope)
            except Exception as exc:
                self.fault("asgi_span", exc)
        return ex

    def filter(
        self, scope: Scope, kind: str
    ) -> Literal[_Mark.SERVE_METRICS, _Mark.OBSERVE] | None:
        """``_SERVE_METRICS`` (the page), None for an excluded request, else ``_OBSERVE``."""
        path = scope.get("path")
        if path.__class__ is not str:
            path = ""
        if (
            path == self.metrics_path
            and kind == "http"
            and scope.get("method") in ("GET", "HEAD")
            and self.metrics_app() is not None
        ):
            return _SERVE_METRICS
        if self.excluded_path is not None and self.excluded_path.match(path):
            return None
        if self.excluded_url is not None and self.excluded_url.search(full_url(scope, path)):
            return None
        return _OBSERVE

    def start_span(self, ex: Exchange, scope: Scope) -> None:
        """Start the SERVER span, child of the W3C context the request carries, and make it
        current for the app (and so for every task the request creates)."""
        context, propagate, trace, kind = _otel or _otel_api()
        parent = propagate.extract(_header_index(_headers(scope)), getter=_GETTER)
        scheme = ex.scheme_now() if isinstance(ex, HttpExchange) else ex.scheme
        attributes: dict[str, Any] = {n.URL_SCHEME: scheme}
        path = scope.get("path")
        if isinstance(path, str):
            attributes["url.path"] = path
        if isinstance(ex, HttpExchange):
            name = ex.method if ex.method != n.OVERFLOW else "HTTP"
            attributes[n.HTTP_METHOD] = ex.method
            if ex.method == n.OVERFLOW and isinstance(scope.get("method"), str):
                attributes["http.request.method_original"] = scope["method"]
            version = ex.protocol_version()
            if version is not None:
                attributes[n.PROTOCOL_VERSION] = version
            query = scope.get("query_string")
            if query and isinstance(query, bytes):
                attributes["url.query"] = _redacted_query(query)
        else:
            name = "WS"
            attributes[n.PROTOCOL_NAME] = "websocket"
        client = scope.get("client")
        if isinstance(client, list | tuple) and client and isinstance(client[0], str):
            attributes["client.address"] = client[0]
        server = scope.get("server")
        if isinstance(server, list | tuple) and len(server) == 2 and isinstance(server[0], str):
            attributes["server.address"] = server[0]
            if isinstance(server[1], int):
                attributes["server.port"] = server[1]
        span = self.telemetry.tracer().start_span(
            name, context=parent, kind=kind, attributes=attributes
        )
        ex.span = span
        ex.span_token = context.attach(trace.set_span_in_context(span, parent))
        if isinstance(ex, HttpExchange):
            ex.plain = False

    def metrics_app(self) -> ASGIApp | None:
        """prometheus_client's ASGI app over asyncwatch's registry (None if there is none)."""
        if self._metrics_app is None:
            registry = getattr(self.telemetry, "prometheus_registry", None)
            if registry is None:
                return None
            from prometheus_client import make_asgi_app

            self._metrics_app = make_asgi_app(registry)
        return self._metrics_app


bind_observer(Observer)


def full_url(scope: Scope, path: str) -> str:
    """``scheme://host/path?query`` as OTEL_PYTHON_EXCLUDED_URLS patterns expect it."""
    scheme = scope.get("scheme")
    scheme = scheme if isinstance(scheme, str) and scheme else "http"
    host = ""
    for item in _headers(scope):
        if _is_header(item) and item[0] == b"host":
            host = item[1].decode("latin-1")
            break
    if not host:
        server = scope.get("server")
        if isinstance(server, list | tuple) and len(server) == 2:
            host = f"{server[0]}:{server[1]}"
    query = scope.get("query_string")
    tail = "?" + query.decode("latin-1") if isinstance(query, bytes) and query else ""
    return f"{scheme}://{host}{path}{tail}"


def _redacted_query(raw: bytes) -> str:
    parts = []
    for part in raw.decode("latin-1").split("&"):
        key, sep, _ = part.partition("=")
        parts.append(f"{key}=REDACTED" if sep and key in _SENSITIVE_QUERY_KEYS else part)
    return "&".join(parts)


class AsyncWatchMiddleware:
    """ASGI middleware: HTTP server metrics and spans per the OpenTelemetry semantic
    conventions, WebSocket metrics, and asyncio tasks counted per route.

    ``app.add_middleware(AsyncWatchMiddleware)`` (Starlette, FastAPI) or
    ``app = AsyncWatchMiddleware(app)`` (any ASGI 3 app). If asyncwatch is not installed yet
    it is installed with ``config`` (default ``Config.from_env()``); a bad setting raises
    ``ConfigError`` here. ``config`` also sets this middleware's own ``http_*`` settings
    (default: those of the running asyncwatch). Nothing else it does ever raises into the app.
    """

    def __init__(self, app: ASGIApp, *, config: Config | None = None) -> None:
        if config is not None and not isinstance(config, Config):
            raise TypeError("AsyncWatchMiddleware(config=...) takes an asyncwatch.Config")
        self.app = app
        self.config = config
        self._watch: Host | Literal[_Mark.UNSET] | None = _UNSET
        self._observer: Observer | None = None
        self.fastapi: Any = None  # the FastAPI app this wraps from outside, if any
        self.router: Any = None  # the Starlette router under this middleware, if any
        # The Observer while requests may take __call__'s inline set-up (see _bind), else None
        self._fast: Observer | None = None
        self.auto = False  # added by asyncwatch itself (``_asgi_patch``), not by the app
        if _running is None and _installer is not None and (config is None or config.enabled):
            _installer(config)
        wrapping_from_outside(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex: Exchange | None = None
        obs = self._fast
        if obs is not None and self._watch is _running:
            # The common HTTP request (no path filters, no FastAPI telemetry to defer to,
            # not nested, no span to start) is set up inline: this runs for every request
            # and each step saved is measurable (see benchmarks/asgi_inprocess.py).
            try:
                if (
                    scope["type"] == "http"
                    and "fastapi.telemetry" not in scope
                    and (_bound < 2 or REQUEST.get() is None)
                    and not obs.off
                    and not (obs.spans_wanted and obs.telemetry.exports_spans)
                ):
                    method = scope["method"]
                    if method not in obs.methods:
                        method = n.OVERFLOW
                    # open_http's work without its call (a Python call is some 500
                    # instructions here); a KeyError for a scope without root_path takes the
                    # long way
                    # (and REQUEST set to it, until its finish: True)
                    ex = new_http(obs, scope, receive, send, method, scope["root_path"], True)
            except Exception:  # an odd scope (unhashable method, no type): the long way
                ex = None
        if ex is None:  # anything else: set up by Observer.begin, or passed through
            begun = self._begin(scope, receive, send)
            if begun is None:
                await self.app(scope, receive, send)
                return
            if begun is _SERVE_METRICS:
                await self._observer.metrics_app()(scope, receive, send)  # type: ignore[union-attr,misc]
                return
            ex = begun
            ex.token = REQUEST.set(ex)
        try:
            await self.app(scope, ex.receive, ex.send)
        except BaseException as exc:
            ex.exc = exc
            if ex.__class__ is HttpExchange:
                ex.plain = False
            raise
        finally:
            ex.finish()  # REQUEST is reset first (ex.token)

    def _begin(
        self, scope: Scope, receive: Receive, send: Send
    ) -> Exchange | Literal[_Mark.SERVE_METRICS] | None:
        """The long way: the request's exchange, ``_SERVE_METRICS``, or None (pass the
        request through)."""
        try:
            kind = scope["type"]
        except Exception:
            return None
        if kind not in ("http", "websocket"):
            return None
        if self._watch is not _running:
            self._bind(_running)
        obs = self._observer
        if obs is None or obs.off:
            return None
        return obs.begin(self, scope, receive, send, kind)

    def _bind(self, watch: Host | None) -> None:
        global _bound
        self._watch = watch
        self._observer = None
        self._fast = None
        if watch is None or not watch.config.enabled:
            return
        try:
            # What the wrapped app is does not change once it serves: look it up once.
            self.fastapi = find_fastapi(self.app)
            self.router = find_router(self.app)
            self._observer = obs = Observer(watch, self.config or watch.config, self.router)
            # A FastAPI with telemetry of its own (0.142 and later) is asked per request
            # whether it records this one; an older one never does: the inline path serves it.
            native = getattr(self.fastapi, "_native_telemetry", None)
            if obs.plain and native is None:
                self._fast = obs
            watch.tasks.track_requests(REQUEST)
            _bound += 1
        except Exception as exc:
            watch.faults.report("asgi_bind", exc)
