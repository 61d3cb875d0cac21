"""Bounded aggregation of what the ASGI middleware observes, exported at collection time.

Like the task Recorder, nothing here calls OpenTelemetry per request: the middleware
appends a request's duration and sizes to lists and bumps plain integers in a per-thread
``HttpShard`` (each thread running an event loop writes only its own shard, so no lock on
the request path); the lists are folded into explicit-bucket histograms in bulk (see
``RequestSlot``), and ``HttpStats.points`` turns the merged shards into ``Point``s when a
reader collects. Scheme and protocol version are bounded to known values.

Cardinality is bounded whatever the traffic: ``http.route`` is a route template from the
app's routing (never a raw path; requests that match no route carry no ``http.route``) and
at most ``max_routes`` distinct templates are kept, later ones counted under ``_OTHER``;
``error.type`` values are capped at ``max_error_types``; methods outside the known set are
``_OTHER`` (done by the middleware).
"""

from __future__ import annotations

import threading
import time
from _thread import get_ident
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._core import names as n
from .._core.measure import exception_name
from .._core.points import HistValue, Point

if TYPE_CHECKING:
    from ._exchange import HttpExchange

# (method or None, route, protocol name, outcome, error.type) -> tasks
TaskOutcomeKey = tuple[str | None, str | None, str, str, str | None]

# (method, route, status, scheme, protocol version, error.type); None = attribute absent
RequestKey = tuple[str, "str | None", "int | None", str, "str | None", "str | None"]


class BoundHist:
    """Counts on explicit bucket boundaries (bucket i holds (bounds[i-1], bounds[i]])."""

    __slots__ = ("bounds", "count", "counts", "max", "min", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def take(self, pending: list[float] | list[int]) -> int:
        """Add the observations listed in ``pending`` and remove them from it; how many.
        Entries appended meanwhile (by the loop's thread) stay: ``del`` of a slice is atomic.
        Sorted first (in C, and nearly free for the repeated sizes of a route), so each
        bucket's count is the distance between two searches, min and max are the ends."""
        count = len(pending)
        if not count:
            return 0
        values = pending[:count]
        del pending[:count]
        values.sort()
        counts = self.counts
        lo = 0
        for index, bound in enumerate(self.bounds):
            hi = bisect_right(values, bound, lo)  # values <= bound
            if hi > lo:
                counts[index] += hi - lo
                lo = hi
            if hi == count:
                break
        if lo < count:
            counts[-1] += count - lo
        self.count += count
        self.sum += sum(values)
        self.min = min(self.min, values[0])
        self.max = max(self.max, values[-1])
        return count

    def merge_into(self, total: BoundHist) -> None:
        """Add this histogram's counts into ``total`` (same bounds)."""
        counts = total.counts
        for i, c in enumerate(list(self.counts)):
            if c:
                counts[i] += c
        total.count += self.count
        total.sum += self.sum
        total.min = min(total.min, self.min)
        total.max = max(total.max, self.max)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile, interpolated inside its bucket and clamped to the observed
        min/max (None when empty). Coarse by nature: the buckets are the exported ones."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        bounds = self.bounds
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                low = bounds[i - 1] if i > 0 else self.min
                high = bounds[i] if i < len(bounds) else self.max
                low, high = max(low, self.min), min(high, self.max)
                return low + (high - low) * max(0.0, rank - seen) / c
            seen += c
        return self.max

    def value(self) -> HistValue:
        """The exported form."""
        empty = self.count == 0
        return HistValue(
            self.bounds,
            tuple(self.counts),
            self.sum,
            self.count,
            0.0 if empty else self.min,
            0.0 if empty else self.max,
        )


class RequestSlot:
    """Figures for one combination of request attributes.

    The per-request write is three list appends (``durations``, ``request_sizes``,
    ``response_sizes``); ``fold`` turns what piled up into the histograms in a few C-level
    passes (a sort, then one search per bucket boundary). That is several times cheaper per
    request than updating three histograms in Python, and it runs when a
    reader collects, or on the request path once a list reaches ``FOLD_AT`` entries, so memory
    stays bounded with no reader at all. Appends need no lock; folds take the shard's (a
    reader's fold and the loop's may overlap).
    """

    __slots__ = (
        "duration",
        "durations",
        "error",
        "request_size",
        "request_sizes",
        "response_size",
        "response_sizes",
        "route",
        "status",
        "tasks",
        "zero_tasks",
    )

    def __init__(self, key: RequestKey | None = None) -> None:
        # what the request path needs of the key: http.route, the status and error.type
        self.route, self.status, self.error = (None, None, None) if key is None else (
            key[1], key[2], key[5])
        self.duration = BoundHist(n.HTTP_DURATION_BOUNDS)
        self.request_size = BoundHist(n.BODY_SIZE_BOUNDS)
        self.response_size = BoundHist(n.BODY_SIZE_BOUNDS)
        # not folded yet (durations only of requests timed here, not by FastAPI's telemetry)
        self.durations: list[float] = []
        self.request_sizes: list[int] = []
        self.response_sizes: list[int] = []
        # tasks created per request; requests that created none are only counted (cheaper)
        self.tasks = BoundHist(n.TASKS_PER_REQUEST_BOUNDS)
        self.zero_tasks = 0

    def fold(self) -> None:
        """Move the listed observations into the histograms. Call with the shard's lock.
        Each list is folded on its own (entries appended meanwhile stay for the next fold)."""
        self.duration.take(self.durations)
        self.request_size.take(self.request_sizes)
        self.response_size.take(self.response_sizes)

    def tasks_hist(self) -> BoundHist:
        """Tasks per request, the zero-task requests included."""
        total = BoundHist(n.TASKS_PER_REQUEST_BOUNDS)
        self.tasks.merge_into(total)
        if self.zero_tasks:
            total.counts[0] += self.zero_tasks
            total.count += self.zero_tasks
            total.min = 0.0
            total.max = max(total.max, 0.0)
        return total


FOLD_AT = 256  # observations listed per slot before the request path folds them itself
MAX_SHORTCUTS = 512  # HttpShard.by_route entries (past that, requests take the long way)


class HttpShard:
    """One thread's share. Written only by that thread; read by collectors."""

    __slots__ = (
        "active_seen",
        "background",
        "by_route",
        "by_route_object",
        "disconnects",
        "live",
        "lock",
        "request_tasks",
        "requests",
        "task_outcomes",
        "ws",
        "ws_active",
        "ws_messages",
    )

    def __init__(self) -> None:
        self.requests: dict[RequestKey, RequestSlot] = {}
        # (template, method, status, scheme, version) of requests that succeeded, as the server
        # and Starlette's route gave them -> their slot (see HttpExchange.record)
        self.by_route: dict[tuple[Any, ...], RequestSlot] = {}
        # The compiled request path's cache in front of by_route: the address of Starlette's
        # route object -> (route, method, status, scheme, version, slot) (see _fastexchange.c)
        self.by_route_object: dict[int, tuple[Any, ...]] = {}
        # Requests whose response is not complete yet: the active-requests gauge (counted
        # when read, so the request path only adds and discards) and the console's in-flight.
        self.live: set[HttpExchange] = set()
        # (method, scheme) pairs seen: the gauge reports 0 for them once nothing is in flight
        self.active_seen: set[tuple[str, str]] = set()
        self.disconnects: dict[tuple[str, str | None, str], int] = {}
        self.background: dict[tuple[str, str | None, str | None], BoundHist] = {}
        # (method or None, route, protocol name)
        self.request_tasks: dict[tuple[str | None, str | None, str], BoundHist] = {}
        self.task_outcomes: dict[TaskOutcomeKey, int] = {}
        self.ws: dict[tuple[str | None, str, str | None], BoundHist] = {}
        self.ws_active: dict[str, int] = {}
        self.ws_messages: dict[tuple[str | None, str], int] = {}
        self.lock = threading.Lock()  # for folds only: writers of the lists never take it

    def request(self, key: RequestKey) -> RequestSlot:
        """The slot for ``key`` (made on first use)."""
        slot = self.requests.get(key)
        if slot is None:
            slot = self.requests[key] = RequestSlot(key)
            self.active_seen.add((key[0], key[3]))
        return slot

    def remember(self, key: tuple[Any, ...], slot: RequestSlot) -> None:
        """Find ``slot`` by ``key`` (route template, method, status, scheme and version as the
        server gave them) from now on: the request path's shortcut, bounded."""
        if len(self.by_route) < MAX_SHORTCUTS:
            self.by_route[key] = slot

    def fold(self, slot: RequestSlot | None = None) -> None:
        """Fold ``slot``'s listed observations (every slot's if None) into its histograms."""
        with self.lock:
            if slot is not None:
                slot.fold()
                return
            for each in list(self.requests.values()):
                each.fold()

    def active(self) -> dict[tuple[str, str], int]:
        """Requests in flight per (method, scheme), the ones seen before included at 0."""
        out = dict.fromkeys(self.active_seen, 0)
        for exchange in list(self.live):
            try:
                if exchange.meters:
                    key = (exchange.method, exchange.scheme_now())
                    out[key] = out.get(key, 0) + 1
            except Exception:  # pragma: no cover - an exchange changing under us
                continue
        return out

    def clear(self) -> None:
        """Forget everything."""
        with self.lock:
            for name in self.__slots__:
                if name != "lock":
                    getattr(self, name).clear()


class HttpStats:
    """HTTP and WebSocket figures for the whole process; see the module docstring."""

    def __init__(self, *, max_routes: int = 200, max_error_types: int = 20) -> None:
        self.max_routes = max_routes
        self.max_error_types = max_error_types
        self._lock = threading.Lock()
        self._shards: list[HttpShard] = []
        self.routes: set[str] = set()  # admitted templates (read without the lock)
        self._errors: set[str] = set()
        self._error_names: dict[type[BaseException], str] = {}
        # thread id -> that thread's shard. Not a threading.local: freeing one (say, with a
        # garbage-collected Watch) while another thread is in sys._current_frames() deadlocks
        # CPython before 3.12 (gh-106883). A dead thread's id reused by a new thread reuses
        # its shard, which is harmless: one writer at a time either way.
        self._by_thread: dict[int, HttpShard] = {}
        self.started_ns = time.time_ns()

    # ---------------------------------------------------------------- writers

    def new_shard(self) -> HttpShard:
        """A shard for a thread that handles requests for the first time."""
        shard = HttpShard()
        with self._lock:
            self._shards.append(shard)
        return shard

    @property
    def shard(self) -> HttpShard:
        """This thread's shard."""
        shard = self._by_thread.get(get_ident())
        if shard is None:
            shard = self._by_thread[get_ident()] = self.new_shard()
        return shard

    def route(self, template: str) -> str:
        """``template`` if admitted, else ``_OTHER`` once ``max_routes`` are tracked."""
        routes = self.routes
        if template in routes:
            return template
        with self._lock:
            if len(routes) < self.max_routes:
                routes.add(template)
                return template
        return n.OVERFLOW

    def error_type(self, value: str) -> str:
        """``value`` as an ``error.type``, or ``_OTHER`` once ``max_error_types`` are used."""
        errors = self._errors
        if value in errors:
            return value
        with self._lock:
            if len(errors) < self.max_error_types:
                errors.add(value)
                return value
        return n.OVERFLOW

    def exception_type(self, exc: BaseException) -> str:
        """The bounded ``error.type`` of an exception (fully qualified class name)."""
        kind = type(exc)
        name = self._error_names.get(kind)
        if name is None:
            name = self.error_type(exception_name(kind))
            if len(self._error_names) < 4 * self.max_error_types:
                self._error_names[kind] = name
        return name

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held this one at fork
        time), then start from zero (``reset``)."""
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start from zero (after fork)."""
        with self._lock:
            for shard in self._shards:
                # A fold running in another thread at fork time left its lock held forever.
                shard.lock = threading.Lock()
                shard.clear()
            self.routes.clear()
            self._errors.clear()
            self._error_names.clear()
            self.started_ns = time.time_ns()

    # ---------------------------------------------------------------- readers

    def route_table(self) -> list[dict[str, Any]]:
        """One mapping per (method, route): ``route``, ``method``, ``requests``, ``errors``
        (requests with an ``error.type``), ``in_flight`` and ``p50``/``p95``/``p99`` of the
        duration in seconds (None when not timed here), for the console's ``http`` command.
        Requests that matched no route are under route ``""``; a request still in flight is
        placed by the route it matched so far."""
        with self._lock:
            shards = list(self._shards)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        durations: dict[tuple[str, str], BoundHist] = {}

        def row(method: str, route: str | None) -> dict[str, Any]:
            key = (method, route or "")
            found = rows.get(key)
            if found is None:
                found = rows[key] = {"method": method, "route": route or "", "requests": 0,
                                     "errors": 0, "in_flight": 0}
            return found

        for shard in shards:
            shard.fold()
            for (method, route, _status, _scheme, _version, error), slot in list(
                shard.requests.items()
            ):
                r = row(method, route)
                r["requests"] += slot.request_size.count
                if error is not None and error != n.CLIENT_DISCONNECT:
                    r["errors"] += slot.request_size.count
                total = durations.get((method, route or ""))
                if total is None:
                    total = durations[(method, route or "")] = BoundHist(n.HTTP_DURATION_BOUNDS)
                slot.duration.merge_into(total)
            for exchange in list(shard.live):
                try:
                    route = exchange.live_route()
                except Exception:  # a request changing under us: count it unrouted
                    route = None
                row(exchange.method, route)["in_flight"] += 1
        for key, r in rows.items():
            hist = durations.get(key)
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                r[name] = None if hist is None else hist.quantile(q)
        return list(rows.values())

    # ---------------------------------------------------------------- exporter

    def points(self) -> Iterable[Point]:
        """Every HTTP and WebSocket point, merged over the shards."""
        with self._lock:
            shards = list(self._shards)
        requests: dict[RequestKey, RequestSlot] = {}
        sums: dict[str, dict[Any, int]] = {}
        hists: dict[str, dict[Any, BoundHist]] = {}
        for shard in shards:
            shard.fold()
            for key, slot in list(shard.requests.items()):
                total = requests.get(key)
                if total is None:
                    total = requests[key] = RequestSlot()
                slot.duration.merge_into(total.duration)
                slot.request_size.merge_into(total.request_size)
                slot.response_size.merge_into(total.response_size)
                slot.tasks_hist().merge_into(total.tasks)
            into = sums.setdefault("active", {})
            for pair, count in shard.active().items():
                into[pair] = into.get(pair, 0) + count
            for name in ("disconnects", "task_outcomes", "ws_active", "ws_messages"):
                into = sums.setdefault(name, {})
                for key, count in list(getattr(shard, name).items()):
                    into[key] = into.get(key, 0) + count
            for name in ("background", "request_tasks", "ws"):
                merged = hists.setdefault(name, {})
                for key, hist in list(getattr(shard, name).items()):
                    total_hist = merged.get(key)
                    if total_hist is None:
                        total_hist = merged[key] = BoundHist(hist.bounds)
                    hist.merge_into(total_hist)
        start = self.started_ns
        for key, slot in requests.items():
            attrs = _request_attrs(key)
            if slot.duration.count:  # zero when FastAPI's own telemetry timed these requests
                yield n.HTTP_SERVER_DURATION, attrs, slot.duration.value(), start
            yield n.HTTP_SERVER_REQUEST_SIZE, attrs, slot.request_size.value(), start
            yield n.HTTP_SERVER_RESPONSE_SIZE, attrs, slot.response_size.value(), start
            method, route = key[0], key[1]
            per_route = hists.setdefault("request_tasks", {})
            task_key = (method, route, "http")
            if task_key not in per_route:
                per_route[task_key] = BoundHist(n.TASKS_PER_REQUEST_BOUNDS)
            slot.tasks.merge_into(per_route[task_key])
        for (method, scheme), count in sums.get("active", {}).items():
            yield n.HTTP_SERVER_ACTIVE, {n.HTTP_METHOD: method, n.URL_SCHEME: scheme}, count, start
        for (method, route, scheme), count in sums.get("disconnects", {}).items():
            attrs = _drop_none({n.HTTP_METHOD: method, n.HTTP_ROUTE: route, n.URL_SCHEME: scheme})
            yield n.HTTP_SERVER_DISCONNECTS, attrs, count, start
        for (method, route, error), hist in hists.get("background", {}).items():
            attrs = _drop_none({n.HTTP_METHOD: method, n.HTTP_ROUTE: route, n.ERROR_TYPE: error})
            yield n.HTTP_SERVER_BACKGROUND, attrs, hist.value(), start
        for (method, route, proto), hist in hists.get("request_tasks", {}).items():
            attrs = _drop_none({n.HTTP_METHOD: method, n.HTTP_ROUTE: route, n.PROTOCOL_NAME: proto})
            yield n.HTTP_SERVER_REQUEST_TASKS, attrs, hist.value(), start
        for (method, route, proto, outcome, error), count in sums.get("task_outcomes", {}).items():
            attrs = _drop_none(
                {
                    n.HTTP_METHOD: method,
                    n.HTTP_ROUTE: route,
                    n.PROTOCOL_NAME: proto,
                    n.OUTCOME: outcome,
                    n.ERROR_TYPE: error,
                }
            )
            yield n.HTTP_SERVER_TASKS_COMPLETED, attrs, count, start
        for (route, scheme, error), hist in hists.get("ws", {}).items():
            attrs = _drop_none({n.HTTP_ROUTE: route, n.URL_SCHEME: scheme, n.ERROR_TYPE: error})
            yield n.WEBSOCKET_DURATION, attrs, hist.value(), start
        for scheme, count in sums.get("ws_active", {}).items():
            yield n.WEBSOCKET_ACTIVE, {n.URL_SCHEME: scheme}, count, start
        for (route, direction), count in sums.get("ws_messages", {}).items():
            attrs = _drop_none({n.HTTP_ROUTE: route, n.WS_DIRECTION: direction})
            yield n.WEBSOCKET_MESSAGES, attrs, count, start


def _request_attrs(key: RequestKey) -> dict[str, Any]:
    method, route, status, scheme, version, error = key
    return _drop_none(
        {
            n.HTTP_METHOD: method,
            n.HTTP_ROUTE: route,
            n.HTTP_STATUS: status,
            n.URL_SCHEME: scheme,
            n.PROTOCOL_VERSION: version,
            n.ERROR_TYPE: error,
        }
    )


def _drop_none(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}
