"""Naming blocks inside C code that holds the GIL (a catastrophic ``re.match``, a huge
``json.loads``): the watchdog thread cannot run a line of Python until such a call returns,
so it cannot sample the loop thread. ``faulthandler`` can: its ``dump_traceback_later``
timer is a C thread that writes every thread's traceback without taking the GIL.

The watchdog re-arms that timer (``threshold_s``) on each of its looks; when a call holds
the GIL longer, the watchdog cannot re-arm it and the timer fires, writing the tracebacks
into an unlinked temporary file. When the GIL comes back, the watchdog reads the file and
keeps the tracebacks; once a loop's heartbeat shows it ran late past the dump, the block is
reported with that loop thread's traceback (``LoopWatch``), unless the thread was idle in
``select()`` then (a loop only starved of the GIL by another thread's call).

Sharing: faulthandler has ONE later-timer per process. While installed, asyncwatch wraps
``faulthandler.dump_traceback_later`` and ``cancel_dump_traceback_later``: the first call
from anyone else (the app, pytest's ``faulthandler_timeout``) makes asyncwatch give the timer
up for good and forward the call unchanged. A timer armed *before* install cannot be seen:
asyncwatch's first re-arm replaces it (see the docs' blocked-loop guide).
"""

from __future__ import annotations

import faulthandler
import os
import re
import threading
from collections.abc import Callable
from typing import Any

# "Thread 0x00007f... (most recent call first):"; Python 3.14 adds the thread's name in
# brackets after the id ("Thread 0x00007f... [app-loop] (most recent call first):").
_THREAD = re.compile(
    r"^(Current thread|Thread) (0x[0-9a-fA-F]+)(?: \[.*\])? \(most recent call first\):"
)
_FRAME = re.compile(r'^  File "(.*)", line (\d+) in (.*)$')


def parse_dump(text: str) -> dict[int, list[tuple[str, int, str]]]:
    """Thread id -> frames (outermost first) from a faulthandler dump. (A dump from the
    later-timer's own C thread marks no thread as current: which thread held the GIL is
    decided by whose loop came back late.)"""
    out: dict[int, list[tuple[str, int, str]]] = {}
    current: list[tuple[str, int, str]] | None = None
    for line in text.splitlines():
        head = _THREAD.match(line)
        if head is not None:
            current = out[int(head.group(2), 16)] = []
            continue
        frame = _FRAME.match(line)
        if frame is not None and current is not None:
            current.append((frame.group(1), int(frame.group(2)), frame.group(3)))
    for frames in out.values():
        frames.reverse()
    return {ident: frames for ident, frames in out.items() if frames}


class GilWatch:
    """Arms faulthandler's later-timer for the watchdog and reads what it wrote."""

    def __init__(self, timeout_s: float, clock: Callable[[], float]) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.active = False
        self.yielded = False  # someone else used the timer: never touched again
        self.armed_at = 0.0
        self.dumps = 0  # dumps read
        self._file: Any = None
        self._originals: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.active:
            return
        try:
            self._file = _scratch_file()
        except OSError:
            return
        dump, cancel = faulthandler.dump_traceback_later, faulthandler.cancel_dump_traceback_later
        self._originals = (dump, cancel)
        owner = self

        def dump_traceback_later(*args: Any, **kwargs: Any) -> Any:
            owner.yielded = True
            return dump(*args, **kwargs)

        def cancel_dump_traceback_later() -> Any:
            owner.yielded = True
            return cancel()

        dump_traceback_later.__wrapped__ = dump  # type: ignore[attr-defined]
        cancel_dump_traceback_later.__wrapped__ = cancel  # type: ignore[attr-defined]
        faulthandler.dump_traceback_later = dump_traceback_later
        faulthandler.cancel_dump_traceback_later = cancel_dump_traceback_later
        self._wrappers = (dump_traceback_later, cancel_dump_traceback_later)
        self.active = True

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        assert self._originals is not None
        dump, cancel = self._originals
        if not self.yielded:
            cancel()  # (after a fork, yielded: cancelling there would hang)
        if faulthandler.dump_traceback_later is self._wrappers[0]:
            faulthandler.dump_traceback_later = dump
        if faulthandler.cancel_dump_traceback_later is self._wrappers[1]:
            faulthandler.cancel_dump_traceback_later = cancel
        if self._file is not None:
            self._file.close()
            self._file = None

    def after_fork(self) -> None:
        """In a forked child: never touch the timer again. faulthandler's timer thread is
        not in the child, and arming (which first cancels, waiting for that thread) would
        hang the child for ever. The wrappers stay in place (and forward) until uninstall."""
        self.yielded = True

    def arm(self, timeout_s: float) -> None:
        """(Re-)start the timer: it fires unless the watchdog looks again within timeout_s."""
        if not self.active or self.yielded or self._originals is None:
            return
        self._originals[0](timeout_s, repeat=False, file=self._file.fileno(), exit=False)
        self.armed_at = self.clock()
        self.timeout_s = timeout_s

    def read(self) -> tuple[float, dict[int, list[tuple[str, int, str]]]] | None:
        """A dump written since the last read: (when it fired, on the clock; thread id ->
        frames outermost first), or None."""
        file = self._file
        if not self.active or file is None:
            return None
        with self._lock:
            fd = file.fileno()
            if os.fstat(fd).st_size == 0:
                return None
            text = os.pread(fd, 1 << 20, 0).decode("utf-8", "replace")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        self.dumps += 1
        parsed = parse_dump(text)
        if not parsed:
            return None
        return self.armed_at + self.timeout_s, parsed


def _scratch_file() -> Any:
    """An anonymous file for faulthandler's dumps: in memory where the OS offers it (Linux),
    else a temporary file (``tempfile`` and what it imports load only there)."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        try:
            return os.fdopen(memfd("asyncwatch-gil", os.MFD_CLOEXEC), "w+b")
        except OSError:
            pass
    import tempfile

    return tempfile.TemporaryFile()
