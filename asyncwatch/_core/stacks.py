"""Reading another thread's Python stack: samples, culprit frames, findings' stacks.

Everything here runs in the watchdog thread (or, for precise mode's after-the-fact reports, on
the loop's thread once a slow callback has returned), never per callback.

The *culprit* of a block is the innermost frame of the application's own code. Frames are
sorted into four classes by file: the loop's machinery (asyncio, selectors, asyncwatch), the
standard library, installed libraries (``site-packages``/``dist-packages``) and the app
(everything else). The culprit is the innermost app frame; if there is none (an app installed
into site-packages, say) the innermost library frame, then the innermost standard-library
frame, then the innermost frame at all.
"""

from __future__ import annotations

import asyncio
import gc
import linecache
import os
import selectors
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

from .findings import Frame

RawFrame = tuple[str, int, str]  # filename, line number, qualified function name

APP, LIBRARY, STDLIB, MACHINERY = 0, 1, 2, 3
MAX_STACK = 128  # frames kept per stack (the innermost ones)

PACKAGE_DIR = os.path.dirname(os.path.dirname(__file__)) + os.sep
"""asyncwatch's own directory: frames under it are never the culprit."""

_MACHINERY_DIRS = (
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
    os.path.abspath(PACKAGE_DIR) + os.sep,  # asyncwatch itself
)
_MACHINERY_FILES = frozenset({os.path.abspath(selectors.__file__)})
_LIBRARY_MARKERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


def _stdlib_dirs() -> tuple[str, ...]:
    """The standard library's directories: the one ``os`` was loaded from (or
    ``sys._stdlib_dir``), and the one holding the directory of the extension modules
    (``lib-dynload``) where it differs. Worked out from paths alone, once, at import: no
    file system call (one would let go of the GIL in the middle of a watchdog's look).

    Not ``sysconfig.get_paths()``: that loads the build's configuration (some 170 kB kept
    for the process's life) and, in a virtual environment, names the environment's own
    ``lib/pythonX.Y`` as "platstdlib"."""
    import _json  # an extension module of the standard library (built in on some builds)

    dirs = set()
    # (an embedded interpreter may run a frozen os with no __file__: sys._stdlib_dir)
    module = getattr(os, "__file__", None)
    base = os.path.dirname(module) if module else getattr(sys, "_stdlib_dir", None)
    if base:
        dirs.add(os.path.abspath(base) + os.sep)
    extension = getattr(_json, "__file__", None)
    if extension:
        dirs.add(os.path.dirname(os.path.dirname(os.path.abspath(extension))) + os.sep)
    return tuple(dirs)


_STDLIB = (*_stdlib_dirs(), "<frozen ")  # prefixes of the standard library's files


_classes: dict[str, int] = {}
_RUN_CODE = asyncio.events.Handle._run.__code__  # read before precise mode wraps it
_RUN_ONCE_CODE = asyncio.base_events.BaseEventLoop._run_once.__code__  # type: ignore[attr-defined]
# Frames that run one callback (asyncio's Handle._run; precise mode adds its wrapper's code).
CALLBACK_CODES: set[Any] = {_RUN_CODE}


def classify(filename: str) -> int:
    """Which of APP, LIBRARY, STDLIB, MACHINERY a source file belongs to (cached)."""
    kind = _classes.get(filename)
    if kind is not None:
        return kind
    path = os.path.abspath(filename) if not filename.startswith("<") else filename
    if path.startswith(_MACHINERY_DIRS) or path in _MACHINERY_FILES:
        kind = MACHINERY
    elif any(marker in path for marker in _LIBRARY_MARKERS):
        kind = LIBRARY
    elif path.startswith(_STDLIB):
        kind = STDLIB
    else:
        kind = APP
    if len(_classes) > 4096:  # bounded whatever the app loads
        _classes.clear()
    _classes[filename] = kind
    return kind


@dataclass
class Sample:
    """One look at a loop thread's stack."""

    key: tuple[Any, ...] | None
    """Identity of the callback holding the loop (None: the loop is in its own machinery)."""
    chain: list[FrameType]
    """The thread's frames, outermost first."""
    depth: int
    """Index in ``chain`` of the callback's first frame."""
    since: float | None = None
    """Exact start of the callback when known (precise mode)."""
    idle: bool = False
    """The loop is between callbacks, in its own ``_run_once``: waiting in its selector (or
    handling the events it returned). Nothing of the app's holds it (``key`` is None)."""


def between_callbacks(chain: list[FrameType]) -> bool:
    """Whether a stdlib loop's innermost ``_run_once`` is running no callback: it waits in
    its selector (however the selector's ``select`` is wrapped) or sorts out events and
    timers. A selector used inside a callback is below a ``Handle._run``: not this."""
    for i in range(len(chain) - 1, -1, -1):
        if chain[i].f_code is _RUN_ONCE_CODE:
            return not any(frame.f_code in CALLBACK_CODES for frame in chain[i + 1 :])
    return False


# CPython 3.11 can deadlock in sys._current_frames(): it holds the runtime's thread-list
# lock while it builds its dict, an allocation there can start a garbage collection, and if
# that frees a threading.local (the app's, a library's) the local's clean-up takes the same
# lock (gh-106883; seen here, it hung a test run). The fix (disable the collector inside the
# call) came to the 3.11 branch late, so asyncwatch does it around the call on every 3.11.
# 3.12 and later collect only at safe points of the interpreter loop, never inside the call.
_GC_GUARD = sys.version_info < (3, 12)


def current_frames() -> dict[int, FrameType]:
    """``sys._current_frames()``, with no garbage collection during it where that can deadlock."""
    if not _GC_GUARD or not gc.isenabled():
        return sys._current_frames()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        gc.enable()


def sample_thread(thread_id: int, depth: int) -> Sample | None:
    """The stack of ``thread_id`` now, keyed by the frames at ``depth - 1`` and ``depth``.

    ``depth`` is how many Python frames lie below a callback on that loop (measured by the
    heartbeat, itself a callback). The frame at ``depth`` is the callback's own (for a task,
    its outermost coroutine); the one below is the loop's frame that called it (asyncio's
    ``Handle._run``, new for every callback; under uvloop, whatever called
    ``run_until_complete``). The same pair seen twice means the same callback still runs.
    """
    frames = current_frames()
    top = frames.get(thread_id)
    del frames
    if top is None:
        return None
    chain: list[FrameType] = []
    frame: FrameType | None = top
    while frame is not None:
        chain.append(frame)
        frame = frame.f_back
    chain.reverse()
    if between_callbacks(chain):
        # (Its stack can be as deep as a callback's when the selector is wrapped, as a
        # library or a test may wrap it: never take the selector for a callback.)
        return Sample(None, chain, depth, idle=True)
    if depth <= 0 or len(chain) <= depth:
        return Sample(None, chain, depth)
    return Sample((chain[depth - 1], chain[depth]), chain, depth)


def own_switches() -> int | None:
    """Times the calling thread was switched out (waited for something, or was preempted).
    Read by a looking thread before it waits, so a look can tell how often it was switched
    out while it waited (``LoopMonitor._held_computing``)."""
    try:
        import resource  # (not on Windows)

        usage = resource.getrusage(resource.RUSAGE_THREAD)
    except (ImportError, AttributeError, OSError, ValueError):
        return None  # no per-thread figures here
    return int(usage.ru_nvcsw + usage.ru_nivcsw)


def raw(frame: FrameType) -> RawFrame:
    """(filename, line, qualified name) of a live frame."""
    code = frame.f_code
    return (code.co_filename, frame.f_lineno or code.co_firstlineno, _qualname(code))


def _qualname(code: Any) -> str:
    return str(getattr(code, "co_qualname", code.co_name))


def culprit_of(chain: list[FrameType], depth: int) -> tuple[RawFrame, str] | None:
    """The culprit frame of a sample (see the module docstring) and its module name."""
    best: list[FrameType | None] = [None, None, None, None]
    start = max(0, min(depth, len(chain) - 1))
    for frame in reversed(chain[start:]):
        kind = classify(frame.f_code.co_filename)
        if best[kind] is None:
            best[kind] = frame
            if kind == APP:
                break
    # Never asyncio's (or asyncwatch's) own frames: a sample with nothing else is the loop's
    # machinery, or C code run from it (objects freed as a callback's references go).
    chosen = best[APP] or best[LIBRARY] or best[STDLIB]
    if chosen is None:
        return None
    module = chosen.f_globals.get("__name__") or ""
    return raw(chosen), str(module)


def raw_stack(chain: list[FrameType]) -> list[RawFrame]:
    """The whole sampled stack, outermost first, innermost MAX_STACK frames."""
    return [raw(frame) for frame in chain[-MAX_STACK:]]


def source_lines(filename: str) -> list[str]:
    """Every line of ``filename`` (through ``linecache``, so sources it knows of, a zip
    import's or one registered under ``<...>``, are found too), without leaving the file in
    ``linecache``'s cache. A report quotes a few lines of a file now and then; kept, each
    file a report passed through (asyncio's, the app's) would stay in memory for the rest
    of the process, some 400 kB for one blocked-loop report's stack."""
    kept = filename in linecache.cache
    try:
        return linecache.getlines(filename)
    finally:
        if not kept:
            linecache.cache.pop(filename, None)


def source_line(
    filename: str, lineno: int, lines: dict[str, list[str]] | None = None
) -> str | None:
    """Line ``lineno`` of ``filename``, stripped (None: unreadable or blank). ``lines`` holds
    the files read so far, for a caller quoting many lines at once (a stack)."""
    if lines is None:
        text = source_lines(filename)
    elif filename in lines:
        text = lines[filename]
    else:
        text = lines[filename] = source_lines(filename)
    if 0 < lineno <= len(text):
        return text[lineno - 1].strip() or None
    return None


def to_frame(entry: RawFrame, lines: dict[str, list[str]] | None = None) -> Frame:
    """A finding's ``Frame``, with the source line when it can be read (``lines``: see
    ``source_line``)."""
    filename, lineno, function = entry
    return Frame(filename, lineno, function, source_line(filename, lineno, lines))


def to_frames(entries: Iterable[RawFrame]) -> tuple[Frame, ...]:
    """``to_frame`` of each entry, reading each file once."""
    lines: dict[str, list[str]] = {}
    return tuple(to_frame(entry, lines) for entry in entries)


def function_name(module: str, qualname: str) -> str:
    """``module.qualname`` (the ``code.function.name`` attribute), bare for ``__main__``."""
    if not module or module in ("__main__", "builtins"):
        return qualname
    return f"{module}.{qualname}"


def handle_in(chain: list[FrameType]) -> Any:
    """The asyncio ``Handle`` whose ``_run`` is on the stack (stdlib loops only), or None."""
    for frame in reversed(chain):
        if frame.f_code is _RUN_CODE:
            return frame.f_locals.get("self")
    return None


_module_names: dict[str, str] = {}


def module_of_file(filename: str) -> str:
    """The name of the loaded module whose source file is ``filename`` ("" if none is).

    Names a coroutine whose frame is gone (it returned, so its globals cannot be read) from
    its code object. Scans ``sys.modules`` on a miss: for findings, never per task."""
    name = _module_names.get(filename)
    if name is not None:
        return name
    for module in list(sys.modules.copy().values()):
        if not isinstance(module, ModuleType):
            continue
        namespace = module.__dict__
        if namespace.get("__file__") == filename:
            name = str(namespace.get("__name__") or "")
            if len(_module_names) > 4096:
                _module_names.clear()
            _module_names[filename] = name
            return name
    return ""


def _unwrap(callback: Any) -> Any:
    """The function behind a callback (bound methods and ``functools.partial`` unwrapped)."""
    for _ in range(8):
        inner = getattr(callback, "func", None)  # functools.partial
        if inner is None or not callable(inner):
            break
        callback = inner
    return getattr(callback, "__func__", callback)


def task_of(handle: Any) -> Any:
    """The asyncio Task whose step (or wake-up) ``handle`` runs, or None for a plain callback."""
    owner = getattr(getattr(handle, "_callback", None), "__self__", None)
    if asyncio.isfuture(owner) and hasattr(owner, "get_coro"):
        return owner
    return None


def _coroutine_frames(coro: Any) -> list[FrameType]:
    frames: list[FrameType] = []
    while coro is not None and len(frames) < MAX_STACK:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def code_site(code: Any) -> tuple[RawFrame, str] | None:
    """A function's (or coroutine's) first line and module, unless it is asyncio's or
    asyncwatch's own code (never a culprit)."""
    filename = getattr(code, "co_filename", None)
    if filename is None or classify(filename) == MACHINERY:
        return None
    return (filename, code.co_firstlineno, _qualname(code)), module_of_file(filename)


def callback_site(handle: Any) -> tuple[RawFrame, str] | None:
    """Where a handle's callback lives, for a block timed after the fact (precise mode): the
    line a task's coroutine is suspended at (the innermost frame of the app's, as for a
    culprit), the first line of a finished task's coroutine, or a plain callback's first
    line. Never a line of asyncio's own (an asyncio-internal callback has no site)."""
    task = task_of(handle)
    if task is not None:
        coro = task.get_coro()
        frames = _coroutine_frames(coro)
        if frames:
            found = culprit_of(frames, 0)
            if found is not None:
                return found
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        return code_site(code) if code is not None and not frames else None
    func = _unwrap(getattr(handle, "_callback", None))
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    site = code_site(code)
    if site is None:
        return None
    module = getattr(func, "__module__", None) or site[1]
    return site[0], str(module)


def finished(handle: Any, chain: list[FrameType] | None) -> bool:
    """Whether the callback ``handle`` runs has already returned, the handle still running:
    the loop is then in the tail of that callback, in asyncio's code and in C (freeing what
    the callback let go, scheduling done callbacks). A task's: its step ended the task. A
    plain callback's (of the app's or a library's, never asyncio's own): its code is no longer
    on ``chain`` (None: timed after the fact by precise mode, so it has returned)."""
    task = task_of(handle)
    if task is not None:
        return bool(task.done())
    code = getattr(_unwrap(getattr(handle, "_callback", None)), "__code__", None)
    if code is None or classify(code.co_filename) == MACHINERY:
        return False
    return chain is None or all(frame.f_code is not code for frame in chain)
