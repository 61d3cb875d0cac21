"""Which browsers' requests asyncwatch's own HTTP ports answer (DNS rebinding, cross-site).

A web page cannot open a socket, but it can make the browser send HTTP requests: to
``127.0.0.1:20102`` directly (the browser then sends the page's ``Origin``), or to its own
host name after rebinding that name to 127.0.0.1 (the browser then sends ``Host:
attacker.example``, and treats the answer as same-origin, so it can read it). Every HTTP port
asyncwatch opens (the embedded ``/metrics`` endpoint, the console's web UI) therefore:

* refuses (421) a ``Host`` that is not a loopback name or address (``localhost``,
  ``*.localhost``, 127.0.0.0/8, ``::1``), the address it listens on, or, when it listens on
  every interface, an IP address (an address literal cannot be rebound), unless the host is
  in ``allowed_hosts`` (``*`` allows any);
* refuses (403) an ``Origin`` whose host fails the same test (``null`` included);
* for requests that change state (anything but GET, HEAD and OPTIONS) also requires the
  ``HX-Request`` header that the web UI's own page (htmx) sends: a header a page from another
  origin can only send after a CORS preflight, which these servers never grant; an ``Origin``
  must then be this very origin, and ``Sec-Fetch-Site`` (where the browser sends it) must
  not be cross-site.

A request with no ``Host`` (HTTP/1.0 tools) is answered: browsers always send one.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # ipaddress and urllib.parse load with the first check or server
    import ipaddress

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROOF_HEADER = "HX-Request"  # sent by htmx, which aiomonitor's web UI uses for every request
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})
_HOSTNAME = re.compile(r"^\.?(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?$")


def check_allowed_hosts(value: Any) -> str | None:
    """The setting's check: a tuple of host names, addresses, ``.suffix`` names or ``*``."""
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        return "must be a tuple of host names (or empty)"
    for entry in value:
        if entry == "*" or _HOSTNAME.match(entry.lower()):
            continue
        import ipaddress

        try:
            ipaddress.ip_address(entry.strip("[]"))
        except ValueError:
            return (
                f"{entry!r} is not a host name, an address, a .suffix or * "
                "(no scheme, port or path)"
            )
    return None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    import ipaddress

    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """The Host/Origin rules above, for a server listening on ``listen_host``."""

    def __init__(self, listen_host: str, allowed: Iterable[str] = ()) -> None:
        self.listen = listen_host.strip().strip("[]").lower()
        self.listen_ip = _ip(self.listen)
        self.any_interface = self.listen in _WILDCARDS
        entries = {a.strip().strip("[]").lower().rstrip(".") for a in allowed}
        self.allow_all = "*" in entries
        self.suffixes = tuple(e for e in entries if e.startswith("."))
        self.exact = {e for e in entries if not e.startswith(".")}

    def host_ok(self, name: str) -> bool:
        """Whether ``name`` (a host, without port or brackets) may be this server's name."""
        name = name.strip().lower().rstrip(".")
        if self.allow_all or name == "localhost" or name.endswith(".localhost"):
            return True
        if name == self.listen or name in self.exact:
            return True
        if any(name.endswith(suffix) for suffix in self.suffixes):
            return True
        ip = _ip(name)
        if ip is None:
            return False
        return ip.is_loopback or ip == self.listen_ip or self.any_interface

    def header_host_ok(self, header: str | None) -> bool:
        """Whether a ``Host`` header value is acceptable (None: no header, answered)."""
        if header is None:
            return True
        return self.host_ok(_split_host(header))

    def origin_ok(self, origin: str | None) -> bool:
        """Whether an ``Origin`` header value is acceptable (None: no header)."""
        if origin is None:
            return True
        from urllib.parse import urlsplit

        host = urlsplit(origin.strip()).hostname
        return host is not None and self.host_ok(host)

    def refusal(
        self,
        method: str,
        host: str | None,
        origin: str | None,
        proof: str | None,
        fetch_site: str | None,
    ) -> tuple[int, str] | None:
        """(status, reason) if the request must be refused, else None."""
        if not self.header_host_ok(host):
            return 421, "this server does not answer to that Host (see allowed_hosts)"
        if not self.origin_ok(origin):
            return 403, "cross-origin requests are refused (see allowed_hosts)"
        if method.upper() in SAFE_METHODS:
            return None
        if proof is None:
            return 403, f"a request that changes state needs the {PROOF_HEADER} header"
        if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
            return 403, "cross-site requests are refused"
        if origin is not None and host is not None:
            from urllib.parse import urlsplit

            own = urlsplit(origin.strip())
            if own.netloc.lower() != host.strip().lower():
                return 403, "cross-origin requests are refused"
        return None


def _split_host(header: str) -> str:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``)."""
    header = header.strip()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


# ---------------------------------------------------------------------------- /metrics


def guard_wsgi(app: Callable[..., Any], policy: HostPolicy) -> Callable[..., Any]:
    """``app`` answering only requests the policy accepts."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        refused = policy.refusal(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("HTTP_HOST"),
            environ.get("HTTP_ORIGIN"),
            environ.get("HTTP_" + PROOF_HEADER.upper().replace("-", "_")),
            environ.get("HTTP_SEC_FETCH_SITE"),
        )
        if refused is None:
            return app(environ, start_response)  # type: ignore[no-any-return]
        status, reason = refused
        phrase = "Misdirected Request" if status == 421 else "Forbidden"
        body = (reason + "\n").encode()
        start_response(
            f"{status} {phrase}",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return guarded


class MetricsServer:
    """The /metrics endpoint's listening socket, bound and listening from the start; the HTTP
    server behind it (``wsgiref`` and ``http.server``, with the ``email`` package they import:
    about 2.5 MiB and 15 ms) is built at the first connection, so a process never scraped
    never loads it. ``serve_forever`` sleeps in ``select`` with no timeout: no wake-ups while
    idle, and ``shutdown()`` wakes it at once instead of after a poll interval."""

    request_queue_size = 5  # socketserver's

    def __init__(self, family: int, address: tuple[str, int], app: Callable[..., Any]) -> None:
        self.app = app
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            # what http.server.HTTPServer does (allow_reuse_address)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(self.request_queue_size)
        except BaseException:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.server_port: int = self.server_address[1]
        self._wake_r, self._wake_w = socket.socketpair()  # shutdown() writes, select wakes
        self._stopping = False
        self._stopped = threading.Event()
        self._http: Any = None

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self.socket.fileno()

    def serve_forever(self) -> None:
        """Serve until ``shutdown()`` (in a thread of its own)."""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._stopping:
                    for key, _ in selector.select():
                        if key.fileobj is self.socket and not self._stopping:
                            self._http_server()._handle_request_noblock()
        finally:
            self._stopped.set()

    def _http_server(self) -> Any:
        if self._http is None:
            self._http = _http_server_class()(self.socket, self.app)
        return self._http

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop ``serve_forever`` (from another thread), waiting at most ``timeout_s``."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        """Close the listening socket (requests being answered finish in their threads)."""
        if self._http is not None:
            self._http.server_close()
        self.socket.close()
        for end in (self._wake_r, self._wake_w):
            end.close()


def _http_server_class() -> type[Any]:
    """wsgiref's threading server answering on a socket already listening, its handler quiet
    (loaded at the first connection; see ``MetricsServer``)."""
    global _HTTP_SERVER
    if _HTTP_SERVER is not None:
        return _HTTP_SERVER
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class _QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Log nothing (prometheus_client's server does the same)."""

    class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True  # no list of finished threads kept for joining

        def __init__(self, listening: socket.socket, app: Callable[..., Any]) -> None:
            # what WSGIServer((host, port), handler) would do, around the socket bound at start
            socketserver.BaseServer.__init__(self, listening.getsockname(), _QuietHandler)
            self.socket = listening
            host, port = self.server_address[:2]
            self.server_name = socket.getfqdn(str(host))
            self.server_port = port
            self.setup_environ()
            self.set_app(app)

    _HTTP_SERVER = _ThreadingServer
    return _HTTP_SERVER


_HTTP_SERVER: type[Any] | None = None


def _metrics_app(registry: Any) -> Callable[..., Any]:
    """prometheus_client's WSGI app for ``registry``, made at the first request; ``registry``
    may be a function returning it (so what it serves is built only when first scraped)."""
    made: list[Callable[..., Any]] = []
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not made:
            with lock:
                if not made:
                    from prometheus_client import CollectorRegistry, make_wsgi_app

                    served = registry() if callable(registry) else registry
                    if served is None:  # shutting down: an empty page, made again next time
                        return make_wsgi_app(CollectorRegistry())(environ, start_response)  # type: ignore[no-any-return]
                    made.append(make_wsgi_app(served))
        return made[0](environ, start_response)  # type: ignore[no-any-return]

    return app


def address_arg(host: str) -> str | bytes:
    """``host`` as ``socket.getaddrinfo`` takes it: an address literal as bytes (a str would
    load the ``idna`` codec, with ``stringprep`` and ``unicodedata``, to encode it unchanged),
    a name as it is."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return host.encode("ascii")
    return host


def start_metrics_server(
    host: str, port: int, registry: Any, allowed_hosts: Iterable[str]
) -> tuple[MetricsServer, threading.Thread]:
    """prometheus_client's WSGI app for ``registry`` (or a function returning it, called at
    the first request) on (host, port), behind the host guard, served from a daemon thread
    (what ``prometheus_client.start_http_server`` does, with the guard in place before the
    first request can arrive). ``shutdown()`` returns at once, with no poll interval."""
    found = socket.getaddrinfo(
        address_arg(host), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, sockaddr = next(iter(found))

    app = guard_wsgi(_metrics_app(registry), HostPolicy(host, allowed_hosts))
    httpd = MetricsServer(family, (str(sockaddr[0]), port), app)
    thread = threading.Thread(target=httpd.serve_forever, name="asyncwatch-metrics", daemon=True)
    thread.start()
    return httpd, thread


# ---------------------------------------------------------------------------- web UI


def aiohttp_guard(policy: HostPolicy) -> Any:
    """An aiohttp middleware applying ``policy`` (for aiomonitor's web UI)."""
    from aiohttp import web

    @web.middleware
    async def guard(request: Any, handler: Any) -> Any:
        headers = request.headers
        refused = policy.refusal(
            request.method,
            headers.get("Host"),
            headers.get("Origin"),
            headers.get(PROOF_HEADER),
            headers.get("Sec-Fetch-Site"),
        )
        if refused is None:
            return await handler(request)
        status, reason = refused
        return web.Response(status=status, text=reason + "\n")

    return guard
