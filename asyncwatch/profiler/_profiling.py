"""On-demand profiling with yappi: wall-clock, coroutine-aware, bounded in time and memory.

Nothing here runs until a profile is asked for (yappi is not even imported): zero cost when
not profiling. One profile at a time per process (yappi is process-wide); a second request gets
``ProfilerBusy``. Every profile is capped at ``profile_max_s`` by a timer thread that stops it
even if the caller never comes back (a blocked loop, a lost console connection).

What a report holds:

* functions by total and by own time (yappi's ``ttot``/``tsub``, wall clock; a coroutine's
  total is its whole life including awaits, as yappi's coroutine-aware mode measures it);
* per coroutine (asyncwatch's ``module.qualname`` names): yappi's calls and wall time, plus
  **busy time**, the time that coroutine's task steps held the event loop, measured by timing
  each ``Handle._run`` while the profile runs (asyncio loops; not available on uvloop);
* pstats and callgrind files (open with snakeviz/tuna or KCachegrind/QCachegrind).

Memory: yappi 1.7.6 pins every coroutine it profiles (see ``_yappi_leak``); the guard there is
armed for the length of the profile, and yappi's own tables are cleared after each report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .._core.config import in_force
from ._loopbusy import StepTimer
from ._report import CoroutineProfile, FunctionProfile, ProfileReport

logger = logging.getLogger("asyncwatch")

_CO_ASYNC = 0x0080 | 0x0100 | 0x0200  # CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR
_GRACE_S = 2.0  # a planned profile still running this long after its end is stopped by the timer
_KEEP_FILES = 20  # newest profile files kept in the profile folder (older ones are removed)


class ProfilerBusy(RuntimeError):
    """A profile is already running in this process (yappi profiles the whole process)."""


# ---------------------------------------------------------------- the session


_lock = threading.Lock()
_running: ProfileSession | None = None


def _import_yappi() -> Any:
    try:
        import yappi
    except ImportError:
        raise ImportError(
            "asyncwatch profiling needs yappi: pip install 'asyncwatch[profile]'"
        ) from None
    return yappi


class ProfileSession:
    """One profile: ``start()`` ... ``stop()`` -> ``ProfileReport``. Also a context manager.

    ``seconds``: how long the caller means to profile (checked against ``profile_max_s``).
    A timer stops it ``_GRACE_S`` after that (or at ``profile_max_s`` if no length is
    planned) even if nobody calls ``stop()``; ``stop()`` then returns that report.
    """

    def __init__(
        self, *, seconds: float | None = None, top: int = 30, save: bool = True
    ) -> None:
        config = in_force()
        if seconds is not None and not 0 < seconds <= config.profile_max_s:
            raise ValueError(
                f"profile of {seconds!r}s: must be above 0 and at most profile_max_s="
                f"{config.profile_max_s:g}s (ASYNCWATCH_PROFILE_MAX_S)"
            )
        self.seconds = seconds
        self.max_s = (
            config.profile_max_s
            if seconds is None
            else min(config.profile_max_s, seconds + _GRACE_S)
        )
        self.top = top
        self.save = save
        self.folder = config.profile_dir or os.path.join(
            tempfile.gettempdir(), f"asyncwatch-{os.getpid()}"
        )
        self.report: ProfileReport | None = None
        self.started_at = 0.0
        self._t0 = 0.0
        self._done = threading.Event()
        self._stop_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._steps: StepTimer | None = None
        self._guard_state = ""
        self._yappi: Any = None

    @property
    def running(self) -> bool:
        """Started and not yet stopped."""
        return self._t0 > 0 and not self._done.is_set()

    @property
    def remaining_s(self) -> float:
        """Seconds until the cap stops it."""
        return max(0.0, self._t0 + self.max_s - time.monotonic()) if self.running else 0.0

    def start(self) -> ProfileSession:
        """Start profiling the whole process; ``ProfilerBusy`` if a profile is running."""
        global _running
        yappi = _import_yappi()
        import sys

        with _lock:
            if _running is not None:
                raise ProfilerBusy(
                    f"a profile is already running (ends in {_running.remaining_s:.1f}s); "
                    "wait for it, one profile at a time"
                )
            if yappi.is_running():
                raise ProfilerBusy("yappi is already running in this process (not asyncwatch's)")
            if sys.getprofile() is not None:
                raise ProfilerBusy("another profiler is active in this thread (sys.getprofile)")
            _running = self
        try:
            from ._yappi_leak import GUARD

            self._yappi = yappi
            self._guard_state = GUARD.apply(yappi)
            self._steps = StepTimer()
            self._steps.install()
            yappi.clear_stats()
            yappi.set_clock_type("wall")
            self.started_at = time.time()
            self._t0 = time.monotonic()
            yappi.start(builtins=False, profile_threads=True)
        except BaseException:
            self._release()
            raise
        self._timer = threading.Timer(self.max_s, self._stop_at_cap)
        self._timer.daemon = True
        self._timer.name = "asyncwatch-profile-cap"
        self._timer.start()
        return self

    def stop(self) -> ProfileReport:
        """Stop (if still running) and return the report. Idempotent."""
        self._finish(capped=False)
        self._done.wait()
        assert self.report is not None
        return self.report

    def _stop_at_cap(self) -> None:
        try:
            self._finish(capped=True)
        except Exception:  # pragma: no cover - a timer thread must not die noisily
            logger.exception("asyncwatch: stopping a profile at its cap failed")

    def _finish(self, *, capped: bool) -> None:
        with self._stop_lock:
            if self._done.is_set() or self._yappi is None:
                return
            try:
                yappi = self._yappi
                yappi.stop()
                duration = time.monotonic() - self._t0
                busy = self._steps.collect() if self._steps is not None else None
                self.report = self._build(yappi, duration, busy, capped)
            finally:
                self._release()
                self._done.set()

    def _release(self) -> None:
        global _running
        from ._yappi_leak import GUARD

        if self._timer is not None:
            self._timer.cancel()
        if self._steps is not None:
            self._steps.uninstall()
        try:
            if self._yappi is not None:
                self._yappi.clear_stats()
        finally:
            GUARD.restore()
            with _lock:
                if _running is self:
                    _running = None

    def _build(
        self, yappi: Any, duration: float, busy: dict[str, tuple[float, int]] | None, capped: bool
    ) -> ProfileReport:
        stats = yappi.get_func_stats(filter_callback=_not_ours)
        yappi_bytes = int(yappi.get_mem_usage())
        descriptors = getattr(yappi, "_fn_descriptor_dict", {})
        modules = _module_names()
        names = self._steps.names_by_code if self._steps is not None else {}
        functions: list[FunctionProfile] = []
        per_coro: dict[str, list[float]] = {}
        for s in stats:
            code = descriptors.get(s.full_name)
            is_coro = bool(getattr(code, "co_flags", 0) & _CO_ASYNC)
            name = s.name
            if code is not None and hasattr(code, "co_qualname"):
                name = names.get(id(code)) or (
                    f"{_module_of(code.co_filename, modules)}.{code.co_qualname}"
                )
            functions.append(
                FunctionProfile(
                    name, s.module, int(s.lineno), int(s.ncall), s.ttot, s.tsub, is_coro
                )
            )
            if is_coro:
                entry = per_coro.setdefault(name, [0, 0.0])
                entry[0] += int(s.ncall)
                entry[1] += s.ttot
        coroutines = []
        for name in set(per_coro) | set(busy or {}):
            calls, wall = per_coro.get(name, (0, 0.0))
            spent, steps = (busy or {}).get(name, (None, 0))
            coroutines.append(CoroutineProfile(name, int(calls), wall, spent, steps))
        coroutines.sort(key=lambda c: (c.busy_s or 0.0, c.wall_s), reverse=True)
        by_total = tuple(sorted(functions, key=lambda f: f.total_s, reverse=True)[: self.top])
        by_own = tuple(sorted(functions, key=lambda f: f.own_s, reverse=True)[: self.top])
        files = self._save(stats) if self.save else {}
        return ProfileReport(
            started_at=self.started_at,
            duration_s=duration,
            by_total=by_total,
            by_own=by_own,
            coroutines=tuple(coroutines[: self.top]),
            files=files,
            leak_guard=self._guard_state,
            capped=capped,
            yappi_bytes=yappi_bytes,
            busy_measured=busy is not None,
        )

    def _save(self, stats: Any) -> dict[str, str]:
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started_at))
        base = folder / f"profile-{stamp}-{os.getpid()}-{int(self._t0 * 1000) % 100000}"
        files = {}
        for kind, suffix in (("pstat", ".pstats"), ("callgrind", ".callgrind")):
            path = str(base) + suffix
            stats.save(path, type=kind)
            files[suffix[1:]] = path
        _prune(folder)
        return files

    def __enter__(self) -> ProfileSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _not_ours(stat: Any) -> bool:
    module = str(stat.module)
    return not ("asyncwatch" in module and ("_profiling" in module or "_loopbusy" in module))


def _module_names() -> dict[str, str]:
    import sys

    names = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            names[path] = name
    return names


def _module_of(filename: str, modules: dict[str, str]) -> str:
    if filename in modules:
        return modules[filename]
    if filename in ("<string>", "<stdin>"):
        return "__main__"  # python -c / piped scripts
    return "?"


def _prune(folder: Path) -> None:
    files = sorted(folder.glob("profile-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[_KEEP_FILES:]:
        with contextlib.suppress(OSError):
            old.unlink()


# ---------------------------------------------------------------- the public forms


def profiling(*, top: int = 30, save: bool = True) -> ProfileSession:
    """A profile of whatever runs in the ``with`` block (the whole process, every thread)::

        with asyncwatch.profiling() as session:
            ...
        print(session.report)

    Stopped at ``profile_max_s`` if the block lasts longer (``report.capped``).
    """
    return ProfileSession(top=top, save=save)


async def profile(seconds: float = 5.0, *, top: int = 30, save: bool = True) -> ProfileReport:
    """Profile the whole process for ``seconds`` from inside an event loop.

    ``await asyncwatch.profile(5)``: the loop keeps running (this coroutine only sleeps),
    the report is built off the loop. Raises ``ProfilerBusy`` if a profile is running and
    ``ValueError`` beyond ``profile_max_s``.
    """
    session = ProfileSession(seconds=seconds, top=top, save=save).start()
    try:
        await asyncio.sleep(seconds)
    finally:
        # Building the report reads yappi's tables and writes files: not on the app's loop.
        report = await asyncio.get_running_loop().run_in_executor(None, session.stop)
    return report


def profile_sync(seconds: float = 5.0, *, top: int = 30, save: bool = True) -> ProfileReport:
    """Profile the whole process for ``seconds``, blocking the calling thread.

    For threads that are not running an event loop (a REPL, a management thread, a signal
    handler thread). From inside a running loop it raises ``RuntimeError``: blocking the loop
    would profile nothing but the wait; use ``await asyncwatch.profile(...)`` there.
    """
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError(
            "asyncwatch.profile_sync() would block this thread's running event loop; "
            "use `await asyncwatch.profile(seconds)` inside the loop"
        )
    session = ProfileSession(seconds=seconds, top=top, save=save).start()
    session._done.wait(seconds)
    return session.stop()


def running() -> ProfileSession | None:
    """The profile in progress, if any."""
    return _running


__all__ = [
    "CoroutineProfile",
    "FunctionProfile",
    "ProfileReport",
    "ProfileSession",
    "ProfilerBusy",
    "profile",
    "profile_sync",
    "profiling",
    "running",
]
