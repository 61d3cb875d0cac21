"""What the wrappers copy from asyncio rather than call: the lazy ``__init__`` generated
with the stdlib's own body inlined (``lazy_init``), and the check that Lock and Semaphore
keep the state the inlined acquire fast paths test (``fast_paths_match``). Both check the
stdlib's code at install and fall back to calling the original when it differs.
"""

from __future__ import annotations

import asyncio.locks
import collections
import linecache
import sys
import textwrap
from typing import TYPE_CHECKING, Any

from .._core.stacks import source_lines
from ._sites import APP_FILES, caller
from ._state import STATE_ATTR

if TYPE_CHECKING:
    from ._tracker import PrimitiveTracker


# The lazy ``__init__`` wrapper is generated from this text (as dataclasses generates its
# methods): for Lock and Event, whose ``__init__`` is two attribute stores, those two stores
# then run in the wrapper itself instead of through a second Python call, which takes what
# tracking adds to creating one from about 3,000 to 2,100 instructions (uvicorn makes an
# Event per request). Any other
# ``__init__``, or one that is not exactly the stdlib's, is called as it is.
_LAZY_INIT = """\
def __init__(self{params}):
{body}
    if tracker.active:
        try:
            frame = getframe(1)
            code = frame.f_code
            if code.co_filename in app_files and not tracker.on_created:
                self._asyncwatch_state = (tracker, {name}, code, frame.f_lasti)
            else:
                if code.co_filename in app_files:
                    where = (code, frame.f_lasti)
                else:
                    where = caller(frame)
                if tracker.on_created:
                    tracker.made(self, {name}, where)
                else:
                    self._asyncwatch_state = (tracker, {name}, where)
        except Exception as exc:
            tracker.fault(exc)
"""
_CALL_ORIGINAL = """\
    if args or kwargs:
        original(self, *args, **kwargs)
    else:
        original(self)"""
# The __init__ bodies of asyncio.Lock and asyncio.Event as on 3.11 (checked at install:
# on a Python where they differ, the original is called).
_STDLIB_BODIES = (
    "    self._waiters = None\n    self._locked = False",
    "    self._waiters = collections.deque()\n    self._value = False",
)


def _stdlib_body(original: Any) -> str | None:
    """The body of ``original`` as text if it is exactly one of ``_STDLIB_BODIES``: the
    same source, and compiled here, the same constants, names and signature (the bytecode
    itself may differ with how the stdlib was compiled). Else None."""
    code = getattr(original, "__code__", None)
    if code is None or original.__defaults__ or original.__kwdefaults__:
        return None
    if original.__globals__.get("collections", collections) is not collections:
        return None
    lines = _source_lines(code)
    if not lines:
        return None
    found = "\n".join(line.rstrip() for line in lines[1:] if line.strip())
    for body in _STDLIB_BODIES:
        if textwrap.dedent(found) != textwrap.dedent(body):
            continue
        namespace: dict[str, Any] = {}
        # In a class body, as the original is (3.14 flags a method's code as such), and with
        # dont_inherit: this module's __future__ flags would change the code's flags.
        method = textwrap.indent(f"def __init__(self):\n{body}\n", "    ")
        exec(compile(f"class Ref:\n{method}", "<ref>", "exec", dont_inherit=True), {}, namespace)
        ref = namespace["Ref"].__dict__["__init__"].__code__
        if (ref.co_consts, ref.co_names, ref.co_varnames, ref.co_argcount,
                ref.co_kwonlyargcount, ref.co_flags) == (
                code.co_consts, code.co_names, code.co_varnames, code.co_argcount,
                code.co_kwonlyargcount, code.co_flags):
            return body
    return None


def _source_lines(code: Any) -> list[str]:
    """The source lines of ``code``'s function, from its first line (the ``def``) to the last
    line with bytecode: what ``inspect.getsource`` gives for a function ending in a statement,
    without tokenizing the file (which compiles tokenize's patterns: ~10 ms at install)."""
    numbers = [line for _, _, line in code.co_lines() if line is not None]
    lines = source_lines(code.co_filename)
    if not numbers or not lines:
        return []
    return [line.rstrip("\n") for line in lines[code.co_firstlineno - 1 : max(numbers)]]


def lazy_init(original: Any, tracker: PrimitiveTracker, kind: str | None) -> Any:
    """The lazy ``__init__`` for ``original`` (see ``_LAZY_INIT``): it runs the original,
    then notes the creating frame's code and offset (the common creator, a frame of the
    app's own code, is recognised without a call) in ``_asyncwatch_state``."""
    body = _stdlib_body(original)
    params = ""
    if body is None:
        body, params = _CALL_ORIGINAL, ", *args, **kwargs"
    name = "kind" if kind else "type(self).__name__"
    source = _LAZY_INIT.format(params=params, body=body, name=name)
    filename = f"<asyncwatch {original.__qualname__}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    scope = {
        "original": original, "tracker": tracker, "kind": kind, "getframe": sys._getframe,
        "app_files": APP_FILES, "caller": caller, "collections": collections,
    }
    exec(compile(source, filename, "exec", dont_inherit=True), scope, namespace)
    init = namespace["__init__"]
    # Argument errors name the class's method, as the original's would.
    init.__code__ = init.__code__.replace(co_name=original.__code__.co_name,
                                          co_qualname=original.__code__.co_qualname)
    return init



def fast_paths_match() -> bool:
    """Whether Lock and Semaphore keep the state their fast paths test (``_locked``,
    ``_value``, ``_waiters``) as on 3.11-3.14; if a future Python changes that, the wrappers
    fall back to calling the original ``acquire`` every time."""
    lock = asyncio.locks.Lock.__new__(asyncio.locks.Lock)
    sem = asyncio.locks.Semaphore.__new__(asyncio.locks.Semaphore)
    try:
        asyncio.locks.Lock.__dict__["__init__"](lock)
        asyncio.locks.Semaphore.__dict__["__init__"](sem, 1)
    except Exception:
        return False
    return (
        set(vars(lock)) == {"_waiters", "_locked"} | ({STATE_ATTR} & set(vars(lock)))
        and {"_waiters", "_value"} <= set(vars(sem))
        and vars(lock)["_locked"] is False and not vars(lock)["_waiters"]
        and vars(sem)["_value"] == 1
    )
