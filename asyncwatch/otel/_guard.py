"""Exports that can never hurt the app, and what they could not deliver.

Every push export runs through an ``ExportGuard``: one export in flight at a time, on a
worker thread, abandoned after ``export_timeout_s``; what could not be sent is counted by the
``DropCounter`` (``asyncwatch.export.dropped``), and the SDK exporters' per-attempt warnings
from those threads are kept out of the log (``exporter_log_filter``) in favour of one line
when exports start failing and one when they recover. ``run_with_deadline`` bounds shutdown
the same way, so a dead, black-holed or resetting collector can neither block the app nor
hold up its exit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._core import names as n
from .._core.points import Point

logger = logging.getLogger("asyncwatch")


class DropCounter:
    """Counts what exporters could not deliver, by signal and reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}
        self.started_ns = time.time_ns()

    def add(self, signal: str, reason: str, items: int = 1) -> None:
        """Count ``items`` dropped."""
        with self._lock:
            key = (signal, reason)
            self.counts[key] = self.counts.get(key, 0) + items

    def points(self) -> Iterable[Point]:
        """Metric points for ``asyncwatch.export.dropped``."""
        with self._lock:
            counts = dict(self.counts)
        for (signal, reason), count in counts.items():
            yield n.EXPORT_DROPPED, {n.SIGNAL: signal, n.REASON: reason}, count, self.started_ns

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held this one at fork
        time) and no counts."""
        self._lock = threading.Lock()
        self.counts.clear()


class _ExporterLogFilter(logging.Filter):
    """Keeps the SDK exporters' per-attempt warnings out of the log when they come from
    asyncwatch's export threads (a dead endpoint made hundreds of lines), remembering the last
    one per thread so the ExportGuard's single "failing" line can say why. Records from any
    other thread (the app's own exporters) pass untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.threadName or ""
        if not name.startswith(_EXPORT_THREAD):
            return True
        with contextlib.suppress(Exception):
            self.last[name] = record.getMessage()
        return False

    def attach(self) -> None:
        """Filter every exporter logger that exists now (call after importing exporters)."""
        for name, item in list(logging.Logger.manager.loggerDict.items()):
            if (
                isinstance(item, logging.Logger)
                and name.startswith("opentelemetry.exporter.otlp")
                and self not in item.filters
            ):
                item.addFilter(self)

    # No detach on uninstall: an export abandoned after its deadline can still be retrying on
    # its thread and log after shutdown. Left on a logger, the filter passes every record but
    # those of asyncwatch's own export threads.


_EXPORT_THREAD = "asyncwatch-export-"
exporter_log_filter = _ExporterLogFilter()


class ExportGuard:
    """Runs one export at a time on a worker thread and gives up on it after a deadline.

    It also keeps the log quiet about a dead or failing endpoint: one warning when exports
    start failing (with the reason), one when they recover; every drop is counted in between.
    """

    def __init__(self, signal: str, timeout_s: float, drops: DropCounter) -> None:
        self.signal = signal
        self.timeout_s = timeout_s
        self.drops = drops
        self._lock = threading.Lock()
        self._busy = False
        self.failing = False
        self.failed_exports = 0
        self.thread_name = f"{_EXPORT_THREAD}{signal}"

    def call(self, fn: Callable[[], Any], items: int, *, reason_prefix: str = "") -> Any:
        """``fn()``'s result, or None if it was skipped, failed or overran (then counted)."""
        with self._lock:
            if self._busy:
                self.drops.add(self.signal, reason_prefix + "busy", items)
                self.last_problem = "the previous export is still running"
                return None
            self._busy = True
        outcome: list[Any] = [None]
        error: list[BaseException | None] = [None]
        finished = threading.Event()

        def work() -> None:
            try:
                outcome[0] = fn()
            except Exception as exc:
                logger.debug("asyncwatch: %s export failed", self.signal, exc_info=True)
                outcome[0] = None
                error[0] = exc
            finally:
                with self._lock:
                    self._busy = False
                finished.set()

        if not _start(threading.Thread(target=work, name=self.thread_name, daemon=True)):
            work()  # the final export at exit on 3.12, bounded by the exporter's own timeout
        if not finished.wait(self.timeout_s):
            self.drops.add(self.signal, reason_prefix + "timeout", items)
            self.last_problem = f"no answer within {self.timeout_s:g} s"
            return None
        if outcome[0] is None:
            self.drops.add(self.signal, reason_prefix + "error", items)
            self.last_problem = repr(error[0]) if error[0] is not None else "no result"
        return outcome[0]

    last_problem = ""

    def note(self, ok: bool) -> None:
        """Record how an export went; log only when that changes (failing <-> recovered)."""
        if ok:
            if self.failing:
                self.failing = False
                logger.warning(
                    "asyncwatch: %s exports recovered after %d failed export(s)",
                    self.signal,
                    self.failed_exports,
                )
            self.failed_exports = 0
            return
        self.failed_exports += 1
        if not self.failing:
            self.failing = True
            why = exporter_log_filter.last.pop(self.thread_name, None) or self.last_problem
            logger.warning(
                "asyncwatch: %s exports are failing (%s); what cannot be sent is counted in "
                "asyncwatch.export.dropped, and one line follows when they recover",
                self.signal,
                why or "the exporter reported a failure",
            )


_exiting = False  # set by note_exit(), from Telemetry.shutdown(at_exit=True); see _start


def _start(worker: threading.Thread) -> bool:
    """Start ``worker``; False if this is interpreter exit and Python refuses new threads.

    Python 3.12 raises RuntimeError for a thread started in an atexit handler (gh-113964,
    allowed again in 3.13), which lost the final export and printed a traceback at exit: the
    caller then runs the work itself. Any other refusal is raised as before."""
    try:
        worker.start()
    except RuntimeError:
        if not _exiting:
            raise
        return False
    return True


def note_exit() -> None:
    """This is interpreter exit: from now on a thread Python refuses to start is not an
    error, its work runs on the caller's thread (see ``_start``)."""
    global _exiting
    _exiting = True


def run_with_deadline(fn: Callable[[], Any], seconds: float, what: str) -> bool:
    """Run ``fn`` on a daemon thread; True if it finished within ``seconds``."""
    worker = threading.Thread(target=fn, name=f"asyncwatch-{what}", daemon=True)
    if not _start(worker):
        fn()  # at exit on 3.12: here, bounded by the SDK's own shutdown timeouts
        return True
    worker.join(seconds)
    if worker.is_alive():
        logger.warning("asyncwatch: %s did not finish within %.1f s; abandoned", what, seconds)
        return False
    return True
