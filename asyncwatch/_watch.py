"""The running asyncwatch instance: wires the Recorder, task hook and telemetry together."""

from __future__ import annotations

import asyncio
import atexit
import fnmatch
import gc
import logging
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from ._core import names as n
from ._core.aio import UVLOOP
from ._core.config import Config, put_in_force
from ._core.environment import check_environment
from ._core.faults import Faults
from ._core.findings import FindingsLog
from ._core.imports import PostImportHook, when_imported
from ._core.points import Point
from .advisor import Advisor
from .deadlock import DeadlockDetector
from .loopwatch import LoopWatch
from .otel import DropCounter, MetricsBridge, ProcessSampler, Telemetry
from .sync import PrimitiveTracker
from .tasks._hook import TaskWatcher
from .tasks._points import task_points
from .tasks._recorder import Recorder

if TYPE_CHECKING:  # imported where used: stats() is not needed to start
    from types import ModuleType

    from .asgi._http import HttpStats
    from .profiler._profiling import ProfileSession
    from .tasks._stats import ProcessStats, Stats

logger = logging.getLogger("asyncwatch")

VERSION = __version__


class Watch:
    """What ``install()`` returns: the live instance, its settings and its figures."""

    def __init__(
        self, config: Config, *, metric_readers: Sequence[Any] = (), tracer_provider: Any = None
    ) -> None:
        self.config = config
        self.faults = Faults(raise_errors=config.raise_errors)
        self._patterns = tuple(config.task_spans)
        self.recorder = Recorder(
            max_keys=config.max_keys,
            max_error_types=config.max_error_types,
            timed_per_s=config.timed_per_s,
            span_for=self._span_share,
            fault_sink=self.faults.report,
        )
        self.drops = DropCounter()
        self.findings = FindingsLog()
        self.bridge = MetricsBridge(VERSION, config.max_series)
        self.bridge.on_error = self._report
        self.process = ProcessSampler()
        self.bridge.add_source("tasks", task_points(self.recorder))
        self.bridge.add_source("process", self.process.points)
        self.bridge.add_source("internal", self._internal_points, last=True)
        # The ASGI middleware's figures: made (and the module imported) when a middleware
        # first binds to this Watch, so an app that serves no HTTP never loads them.
        self._http: HttpStats | None = None
        self._http_lock = threading.Lock()
        self.bridge.add_source("http", self._http_points)
        self._asgi_patches: Any = None
        self._import_hook: PostImportHook | None = None
        self.loops = LoopWatch(config, self.findings, self.faults)
        self.bridge.add_source("loops", self.loops.points)
        self.telemetry = Telemetry(
            config, self.bridge, self.drops, self._report, VERSION, metric_readers, tracer_provider
        )
        self.primitives = PrimitiveTracker(self.faults)
        self.deadlocks = DeadlockDetector(
            self.primitives,
            self.findings,
            self.faults,
            interval_s=config.deadlock_interval_s,
            stuck_after_s=config.stuck_task_after_s,
            idle_patterns=config.idle_coroutines,
        )
        self.bridge.add_source("deadlock", self.deadlocks.points)
        self.advisor = Advisor(config, self.faults, self.primitives, self.loops)
        self.bridge.add_source("advice", self.advisor.points)
        self._memory: Any = None
        self._started_ns = self.recorder.started_ns
        self.console: Any = None
        skip_thread = None
        if config.console and config.enabled:
            import asyncwatch

            from .console._server import Console, is_console_thread

            self.console = Console(self, {"asyncwatch": asyncwatch})
            skip_thread = is_console_thread  # the console's own loop is left alone
        self.tasks = TaskWatcher(
            self.recorder, self.faults, tracer=self.telemetry.tracer, on_loop=self._on_loop,
            skip_thread=skip_thread,
        )

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Check the configuration, start exporters (unless lazy) and hook the loops.

        If anything fails, what was already started is stopped again before the error
        propagates: a refused install() leaves no thread, port or patch behind.
        """
        check_environment(self.config)
        self.telemetry.check()
        if self.console is not None:
            self.console.check()
        try:
            self._start()
        except BaseException:
            self.stop(self.config.export_timeout_s)
            raise

    def _start(self) -> None:
        if not self.config.enabled:
            logger.info("asyncwatch: disabled by configuration (ASYNCWATCH_ENABLED=0)")
            return
        if not self.config.lazy_start:
            self.telemetry.start()
        if self.config.memory_attribution:
            from .tasks._memory import MemoryAttribution

            self._memory = MemoryAttribution(
                self.recorder, self.config.memory_interval_s, self.config.memory_frames
            )
            self._memory.start()
            self.bridge.add_source("memory", self._memory.points)
        if self.config.loop_watch:
            self.loops.start()
        if self.config.deadlock_detection or self.config.advisor:
            # the advisor reads semaphores through it; the deadlock detector needs the rest
            self.primitives.install(semaphores_only=not self.config.deadlock_detection)
        if self.config.deadlock_detection:
            self.deadlocks.start()
        if self.config.advisor:
            self.advisor.start()
        self.tasks.install()
        # Patched when the app imports them (now, if it has): importing uvloop or the
        # Starlette patches (importlib.abc and what it pulls in) only to patch them would cost
        # every program that never uses them.
        self._import_hook = when_imported(
            {UVLOOP: self._patch_uvloop, "starlette": self._patch_starlette},
            lambda name, exc: self._report(f"patch_{name}", exc),
        )

    def _patch_uvloop(self, module: ModuleType) -> None:
        cls = module.Loop
        self.tasks.patch_loop_class(cls)
        self.advisor.executors.patch_loop_class(cls)

    def _patch_starlette(self, module: ModuleType) -> None:
        from .asgi._starlette import StarlettePatches

        self._asgi_patches = StarlettePatches(self.faults, auto_add=self.config.asgi_auto)
        self._asgi_patches.install()

    def stop(self, timeout_s: float | None = None, *, at_exit: bool = False) -> None:
        """Undo everything ``start`` did, within ``timeout_s`` for the exporters."""
        if self._import_hook is not None:
            self._import_hook.remove()
            self._import_hook = None
        if self._asgi_patches is not None:
            self._asgi_patches.uninstall()
            self._asgi_patches = None
        self.tasks.track_requests(None)
        self.tasks.uninstall()
        if self.console is not None:
            self.console.stop()
        self.loops.stop()
        self.deadlocks.stop()
        self.advisor.stop()
        self.primitives.uninstall()
        if self._memory is not None:
            self._memory.stop()
            self._memory = None
        self.telemetry.shutdown(timeout_s, at_exit=at_exit)

    def _on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.console is not None:
            try:
                if self.console.on_loop(loop):
                    return  # the console's own loop: nothing to start for it
            except Exception as exc:
                self._report("console", exc)
        # A loop with a clock of its own (a virtual-time test loop such as CPython's TestLoop)
        # gets no timer of ours: they would fire on its clock, not in real time, and such
        # loops account for every timer scheduled on them.
        timers = not virtual_clock(loop)
        try:
            if timers:
                self.deadlocks.attach(loop)
        except Exception as exc:
            self._report("deadlock_attach", exc)
        try:
            self.advisor.attach(loop)
        except Exception as exc:
            self._report("advisor_attach", exc)
        if not self.telemetry.started:
            try:
                self.telemetry.start()
            except Exception as exc:
                self._report("telemetry_start", exc)
        try:
            if timers:
                self.loops.add_loop(loop)
        except Exception as exc:
            self._report("loop_watch", exc)

    def _after_fork_in_child(self) -> None:
        # Each part renews its own locks (one another thread held at fork time would stay
        # locked forever in the child) and starts from zero.
        self.faults.after_fork()
        self.drops.after_fork()
        self.bridge.after_fork()
        self.recorder.after_fork()
        if self._http is not None:
            self._http.after_fork()
        self.deadlocks.reset()
        self.advisor.after_fork()
        self.findings.clear()
        # Exporters restart with the child's first new event loop (see _on_loop), not here:
        # starting threads inside an at-fork handler can deadlock the child.
        self.telemetry.forget_after_fork()
        if self.console is not None:
            self.console.forget_after_fork()
        self.loops.after_fork()  # its watchdog restarts from the child's next heartbeat

    # ---------------------------------------------------------------- reading

    @property
    def prometheus_url(self) -> str | None:
        """Where the embedded endpoint serves ``/metrics``, if it is serving."""
        return self.telemetry.prometheus_url

    def stats(self) -> Stats:
        """A snapshot of every coroutine seen, with process figures."""
        from .tasks._stats import CoroutineStats, Stats

        memory = self._memory.bytes_by_key if self._memory is not None else {}
        coroutines = {
            key: CoroutineStats.of(key, snap, memory.get(key))
            for key, snap in self.recorder.snapshot().items()
        }
        return Stats(coroutines=coroutines, process=self._process_stats())

    def advice_text(self, *, evidence: bool = True) -> str | None:
        """The advisor's recommendations as text (the console's ``advice``); None when the
        advisor is off. ``evidence=False``: without the figures behind them."""
        if not self.advisor.active:
            return None
        from .advisor._advisor import render

        return render(self.advisor.advise(), evidence=evidence)

    def start_profile(self, seconds: float, *, top: int = 15) -> ProfileSession:
        """Start a profile of ``seconds`` with this Watch's settings (the console's
        ``profile``); raises ``ProfilerBusy`` if one is running, ``ValueError`` if
        ``seconds`` is over ``profile_max_s``."""
        from .profiler._profiling import ProfileSession

        return ProfileSession(seconds=seconds, top=top).start()

    @property
    def http(self) -> HttpStats:
        """The ASGI middleware's figures (made at first use)."""
        http = self._http
        if http is None:
            from .asgi._http import HttpStats

            with self._http_lock:
                http = self._http
                if http is None:
                    http = self._http = HttpStats(
                        max_routes=self.config.http_max_routes,
                        max_error_types=self.config.max_error_types,
                    )
        return http

    def _http_points(self) -> Iterable[Point]:
        http = self._http
        return () if http is None else http.points()

    def http_routes(self) -> list[dict[str, Any]]:
        """Per (method, route) figures of the ASGI middleware: ``route``, ``method``,
        ``requests``, ``errors``, ``in_flight``, ``p50``/``p95``/``p99`` (seconds or None).
        Empty until a request went through ``AsyncWatchMiddleware``."""
        http = self._http
        return [] if http is None else http.route_table()

    def _process_stats(self) -> ProcessStats:
        from .tasks._stats import ProcessStats

        values: dict[str, Any] = {}
        try:
            for mdef, attrs, value, _ in self.process.points():
                if mdef is n.PROCESS_MEMORY_USAGE:
                    values["rss_bytes"] = value
                elif mdef is n.PROCESS_MEMORY_USS:
                    values["uss_bytes"] = value
                elif mdef is n.PROCESS_THREADS:
                    values["threads"] = value
                elif mdef is n.PROCESS_CPU_TIME:
                    values[f"cpu_{attrs[n.CPU_MODE]}_s"] = value
        except Exception as exc:
            self._report("stats", exc)
        values["gc_collections"] = tuple(s["collections"] for s in gc.get_stats())
        return ProcessStats(**values)

    def _internal_points(self) -> Iterable[Point]:
        start = self._started_ns
        for hook, count in list(self.faults.counts.items()):
            yield n.INTERNAL_ERRORS, {n.HOOK: hook}, count, start
        yield from self.drops.points()

    # ---------------------------------------------------------------- helpers

    def _span_share(self, key: str) -> float:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in self._patterns):
            return 1.0
        return self.config.task_span_ratio

    def _report(self, hook: str, exc: BaseException) -> None:
        self.faults.report(hook, exc)

    def __repr__(self) -> str:
        where = self.prometheus_url or "no embedded endpoint"
        return f"<asyncwatch.Watch loops={self.tasks.loop_count} metrics={where}>"


def virtual_clock(loop: asyncio.AbstractEventLoop) -> bool:
    """Does ``loop`` keep time on a clock of its own (``time()`` replaced on a stdlib loop)?"""
    if not isinstance(loop, asyncio.BaseEventLoop):
        return False  # uvloop and other loops in C: their own monotonic clock
    return getattr(loop.time, "__func__", None) is not asyncio.BaseEventLoop.time


# ---------------------------------------------------------------- the process-wide instance

_lock = threading.RLock()
_current: Watch | None = None


def current() -> Watch | None:
    """The installed Watch, or None."""
    return _current


def install(
    config: Config | None = None,
    /,
    *,
    metric_readers: Sequence[Any] = (),
    tracer_provider: Any = None,
    **settings: Any,
) -> Watch:
    """Start observing every asyncio task in this process; see ``asyncwatch.install``."""
    global _current
    with _lock:
        if _current is not None:
            wanted = None
            if config or settings:
                wanted = (config or Config.from_env()).replace(**settings)
            if wanted is not None and wanted != _current.config:
                differ = [
                    k
                    for k in wanted.__dataclass_fields__
                    if getattr(wanted, k) != getattr(_current.config, k)
                ]
                logger.warning(
                    "asyncwatch: already installed; keeping the running settings "
                    "(call uninstall() first to change %s)",
                    ", ".join(differ),
                )
            _current.tasks.instrument_current()
            return _current
        resolved = (config or Config.from_env()).replace(**settings)
        watch = Watch(resolved, metric_readers=metric_readers, tracer_provider=tracer_provider)
        watch.start()
        _current = watch
        _publish(watch)
        return watch


def _publish(watch: Watch | None, *, stopping: Watch | None = None) -> None:
    """Tell what the app constructs or calls directly (the ASGI middleware, profiles) which
    Watch runs: the dependencies it cannot be handed when the Watch builds it (the
    middleware's module only if it is loaded: it learns the Watch when it is, see below)."""
    middleware = sys.modules.get(_MIDDLEWARE)
    if middleware is not None:
        middleware.attach(watch)
    put_in_force(
        None if watch is None else watch.config,
        replacing=None if stopping is None else stopping.config,
    )


def uninstall(timeout_s: float | None = None) -> None:
    """Stop observing and restore everything install() changed. Idempotent."""
    global _current
    with _lock:
        watch, _current = _current, None
    if watch is not None:
        _publish(None, stopping=watch)
        watch.stop(timeout_s)


def _at_exit() -> None:
    global _current
    with _lock:
        watch, _current = _current, None
    if watch is not None:
        _publish(None, stopping=watch)
        watch.stop(watch.config.export_timeout_s, at_exit=True)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    watch = _current
    if watch is not None:
        watch._after_fork_in_child()


def _wire_middleware(module: ModuleType) -> None:
    """The ASGI middleware's module is loaded: tell it how to install and what is running."""
    module.use_installer(install)
    module.attach(_current)


_MIDDLEWARE = "asyncwatch.asgi._middleware"
# The middleware (and the OpenTelemetry propagators it imports) loads only if the app uses it.
_middleware_hook = when_imported(
    {_MIDDLEWARE: _wire_middleware}, lambda name, exc: logger.warning(
        "asyncwatch: cannot wire %s (%r)", name, exc
    )
)
atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
