"""What a waiting task waits for, and which waits can never end.

``classify(task, fut)`` looks at a suspended task (``fut`` is its ``_fut_waiter``) and its
await chain (``cr_await``/``gi_yieldfrom`` from the task's coroutine down to the innermost
suspended coroutine) and returns a ``Wait``: the kind of wait (``task``, ``gather``,
``taskgroup``, ``wait``, ``shield``, ``lock``, ``semaphore``, ``event``, ``queue_get``,
``sleep``, ``io``...), what it waits on (tasks, or a lock's holders) and how (``and``: every
one must finish, as in gather/TaskGroup; ``or``: any one, as a lock whose holder releases it
or ``wait(FIRST_COMPLETED)``), the object it waits on, and whether a timeout will end it.

``doomed(...)`` is the deadlock decision on the resulting graph: a node is live if it is not
waiting, has a timeout, waits on something asyncwatch cannot follow, or (``and``) all / (``or``)
any of what it waits on is live. What is left can never wake; ``cycles(...)`` returns its
strongly connected parts that contain a cycle, which are the deadlocks.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.locks
import asyncio.queues
import asyncio.selector_events
import asyncio.streams
import asyncio.taskgroups
import asyncio.tasks
import asyncio.timeouts
import gc
import os
import sys
import types
from collections.abc import Iterable
from typing import Any

from ..sync import PrimitiveTracker, state_of

MAX_DEPTH = 64  # await-chain links followed; deeper chains are cut (never seen in practice)

TASK_TYPES: tuple[type, ...] = tuple({asyncio.Task, asyncio.tasks._PyTask})  # type: ignore[attr-defined]
_GATHERING = getattr(asyncio.tasks, "_GatheringFuture", None)
_TIMEOUT = asyncio.timeouts.Timeout
ALL_COMPLETED = asyncio.ALL_COMPLETED

# Kinds whose edges asyncwatch follows (the rest end a path: live as far as deadlocks go).
EDGE_KINDS = frozenset({
    "task", "gather", "shield", "taskgroup", "wait", "wait_for", "cancel_wait", "lock",
    "semaphore",
})
# Kinds that wait for someone to signal an object: stuck if nothing can reach the object.
SIGNAL_KINDS = frozenset(
    {"event", "condition", "queue_get", "queue_put", "queue_join", "future", "semaphore_signal"}
)


def _unwrapped_code(fn: Any) -> Any:
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return getattr(fn, "__code__", None)


def _known_codes() -> dict[int, str]:
    table: dict[int, str] = {}
    locks, queues, tasks = asyncio.locks, asyncio.queues, asyncio.tasks
    entries: list[tuple[str, Any]] = [
        ("lock", locks.Lock.__dict__["acquire"]),
        ("semaphore", locks.Semaphore.__dict__["acquire"]),
        ("condition", locks.Condition.__dict__["wait"]),
        ("event", locks.Event.__dict__["wait"]),
        ("queue_get", queues.Queue.__dict__["get"]),
        ("queue_put", queues.Queue.__dict__["put"]),
        ("queue_join", queues.Queue.__dict__["join"]),
        ("taskgroup", asyncio.taskgroups.TaskGroup.__dict__["__aexit__"]),
        ("taskgroup", asyncio.taskgroups.TaskGroup.__dict__.get("_aexit")),  # 3.13+
        ("wait", getattr(tasks, "_wait", None)),
        ("wait_for", getattr(tasks, "wait_for", None)),
        ("cancel_wait", getattr(tasks, "_cancel_and_wait", None)),
        ("sleep", tasks.sleep),
        ("io", asyncio.base_events.Server.__dict__.get("serve_forever")),
        ("io", asyncio.base_events.Server.__dict__.get("wait_closed")),
    ]
    for kind, fn in entries:
        code = _unwrapped_code(fn) if fn is not None else None
        if code is not None:
            table[id(code)] = kind
    return table


def _io_files() -> frozenset[str]:
    """Files of asyncio's event loops, transports and streams: waits there are I/O waits."""
    names = (
        "base_events", "selector_events", "proactor_events", "streams", "base_subprocess",
        "subprocess", "unix_events", "windows_events", "sslproto", "transports", "staggered",
    )
    # By path, not by importing them: a module the app never loads (the Windows ones on
    # Linux, the proactor) costs no memory here, and a wait in it cannot happen anyway.
    package = os.path.dirname(getattr(asyncio, "__file__", None) or "")
    files: set[str] = set()
    for name in names:
        filename = getattr(sys.modules.get(f"asyncio.{name}"), "__file__", None)
        if not filename and package:
            filename = os.path.join(package, f"{name}.py")
        if filename:
            files.add(filename)
    return frozenset(files)


KNOWN = _known_codes()
IO_FILES = _io_files()


# ---------------------------------------------------------------------- await chains


_CORO, _GEN, _AGEN = types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType


def coro_chain(task: asyncio.Task[Any]) -> list[Any]:
    """The suspended coroutines (and generators) of ``task``, outermost first.

    Follows ``cr_await``/``gi_yieldfrom``/``ag_await`` only: no frame object is created.
    """
    out: list[Any] = []
    try:
        coro: Any = task.get_coro()  # walked through the private await fields
    except Exception:
        return out
    for _ in range(MAX_DEPTH):
        kind = type(coro)
        if kind is _CORO:
            nxt = coro.cr_await
        elif kind is _GEN:
            nxt = coro.gi_yieldfrom
        elif kind is _AGEN:
            nxt = coro.ag_await
        else:
            nxt = getattr(coro, "cr_await", _NOT_A_CORO)  # compiled (Cython) coroutines
            if nxt is _NOT_A_CORO:
                break
        out.append(coro)
        if nxt is None:
            break
        coro = nxt
    return out


_NOT_A_CORO = object()


def code_of(coro: Any) -> Any:
    """The code object a coroutine, generator or async generator runs."""
    kind = type(coro)
    if kind is _CORO:
        return coro.cr_code
    if kind is _GEN:
        return coro.gi_code
    if kind is _AGEN:
        return coro.ag_code
    return getattr(coro, "cr_code", None)


def frame_of(coro: Any) -> Any:
    """The frame of a coroutine, generator or async generator (None once finished)."""
    for attr in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(coro, attr, None)
        if frame is not None:
            return frame
    return None


_SELF_TYPES = {
    "lock": asyncio.Lock,
    "semaphore": asyncio.Semaphore,
    "condition": asyncio.Condition,
    "event": asyncio.Event,
    "queue_get": asyncio.Queue,
    "queue_put": asyncio.Queue,
    "queue_join": asyncio.Queue,
    "taskgroup": asyncio.TaskGroup,
}


def _self_of(coro: Any, kind: str) -> Any:
    """The ``self`` of a suspended asyncio method, read from the coroutine's references: unlike
    ``frame.f_locals`` on 3.11-3.12 this leaves no snapshot of the locals behind (one that
    would itself reference the object and hide whether anything else does)."""
    cls = _SELF_TYPES[kind]
    for ref in gc.get_referents(coro):
        if isinstance(ref, cls):
            return ref
    return None


def _locals(coro: Any) -> dict[str, Any]:
    """Locals of asyncio's own wait helpers (``wait``, ``wait_for``), which hold only tasks
    and futures they already reference."""
    frame = frame_of(coro)
    if frame is None:
        return {}
    try:
        return dict(frame.f_locals)
    except Exception:
        return {}


def kind_of_code(code: Any) -> str | None:
    """The wait kind a frame running ``code`` stands for, if asyncio's own."""
    kind = KNOWN.get(id(code))
    if kind is None and code.co_filename in IO_FILES:
        kind = "io"
    return kind


def wait_kind(task: asyncio.Task[Any], fut: asyncio.Future[Any]) -> str:
    """Just the kind of ``classify(task, fut)``, without building the ``Wait``."""
    chain = coro_chain(task)
    code = code_of(chain[-1]) if chain else None
    kind = kind_of_code(code) if code is not None else None
    if kind is not None:
        if kind == "event" and len(chain) > 1 and KNOWN.get(id(code_of(chain[-2]))) == "queue_join":
            return "queue_join"
        return kind
    if is_task(fut):
        return "task"
    if _GATHERING is not None and isinstance(fut, _GATHERING):
        return "gather"
    if _shielded(fut) is not None:
        return "shield"
    if type(fut) in (asyncio.Future, asyncio.futures._PyFuture):  # type: ignore[attr-defined]
        return "future"
    return "other"


# ---------------------------------------------------------------------- one wait


class Wait:
    """What one suspended task waits for (see the module docstring)."""

    __slots__ = ("escapable", "kind", "mode", "obj", "succ")

    def __init__(self, kind: str, mode: str | None = None, succ: Iterable[Any] = (),
                 obj: Any = None, escapable: bool = False) -> None:
        self.kind = kind
        self.mode = mode  # "and", "or", or None (asyncwatch cannot follow it)
        self.succ = list(succ)
        self.obj = obj
        self.escapable = escapable

    def __repr__(self) -> str:
        return f"<Wait {self.kind} {self.mode} succ={len(self.succ)} escapable={self.escapable}>"


def is_task(obj: Any) -> bool:
    return isinstance(obj, TASK_TYPES)


def _pending(futures: Iterable[Any]) -> list[Any]:
    return [f for f in futures if asyncio.isfuture(f) and not f.done()]


def _shielded(fut: asyncio.Future[Any]) -> Any:
    """The inner future of a ``shield()`` outer future, else None."""
    try:
        callbacks = fut._callbacks or ()
    except AttributeError:
        return None
    for entry in callbacks:
        cb = entry[0] if isinstance(entry, tuple) else entry
        if getattr(cb, "__qualname__", "") == "shield.<locals>._outer_done_callback":
            names = cb.__code__.co_freevars
            if "inner" in names and cb.__closure__:
                return cb.__closure__[names.index("inner")].cell_contents
    return None


def classify(task: asyncio.Task[Any], fut: asyncio.Future[Any], tracker: PrimitiveTracker | None,
             chain: list[Any] | None = None) -> Wait:
    """The ``Wait`` of ``task``, suspended on ``fut``."""
    if chain is None:
        chain = coro_chain(task)
    inner = chain[-1] if chain else None
    code = code_of(inner) if inner is not None else None
    kind = kind_of_code(code) if code is not None else None
    if kind is None:
        if is_task(fut):
            return Wait("task", "and", [fut], fut)
        if _GATHERING is not None and isinstance(fut, _GATHERING):
            return Wait("gather", "and", _pending(fut._children), fut)
        inner_fut = _shielded(fut)
        if inner_fut is not None:
            return Wait("shield", "and", _pending([inner_fut]), fut)
        if type(fut) in (asyncio.Future, asyncio.futures._PyFuture):  # type: ignore[attr-defined]
            return Wait("future", None, (), fut)
        return Wait("other", None, (), fut)
    if kind in ("sleep", "io"):
        return Wait(kind, None, (), None, escapable=kind == "sleep")
    if kind == "event" and len(chain) > 1 and KNOWN.get(id(code_of(chain[-2]))) == "queue_join":
        return Wait("queue_join", None, (), _self_of(chain[-2], "queue_join"))
    owner = _self_of(inner, kind) if kind in _SELF_TYPES else None
    if kind == "lock":
        return _lock_wait(owner, fut, tracker)
    if kind == "semaphore":
        return _semaphore_wait(owner, fut, tracker)
    if kind in ("condition", "event", "queue_get", "queue_put", "queue_join"):
        return Wait(kind, None, (), owner)
    if kind == "taskgroup":
        return Wait("taskgroup", "and", _pending(getattr(owner, "_tasks", ())), owner)
    local = _locals(inner)
    if kind == "wait":
        mode = "and" if local.get("return_when") == ALL_COMPLETED else "or"
        return Wait("wait", mode, _pending(local.get("fs", ())), None,
                    escapable=local.get("timeout") is not None)
    if kind in ("wait_for", "cancel_wait"):
        inner_fut = local.get("fut")
        escapable = kind == "wait_for" and local.get("timeout") is not None
        return Wait(kind, "and", _pending([inner_fut]), inner_fut, escapable=escapable)
    return Wait("other", None, (), fut)


def _waits_in(prim: Any, fut: asyncio.Future[Any]) -> bool:
    # Futures compare by identity, so `in` is the identity search, done in C.
    return fut in (getattr(prim, "_waiters", None) or ())


def _lock_wait(lock: Any, fut: asyncio.Future[Any], tracker: PrimitiveTracker | None) -> Wait:
    state = state_of(lock)
    if (
        lock is None or not lock._locked or not _waits_in(lock, fut)
        or state is None or state.tracker is not tracker or state.holder is None
    ):
        return Wait("lock", None, (), lock)  # free (a wake-up is on its way) or holder unknown
    return Wait("lock", "or", [state.holder], lock)


def _semaphore_wait(sem: Any, fut: asyncio.Future[Any], tracker: PrimitiveTracker | None) -> Wait:
    state = state_of(sem)
    if sem is None or sem._value > 0 or not _waits_in(sem, fut):
        return Wait("semaphore", None, (), sem)
    if state is None or state.tracker is not tracker or state.initial is None:
        return Wait("semaphore", None, (), sem)
    used = state.initial - sem._value
    holders = state.holders or {}
    if used <= 0 and not holders:
        return Wait("semaphore_signal", None, (), sem)  # a counter nobody holds: a signal
    if state.uncertain or sum(holders.values()) != used:
        return Wait("semaphore", None, (), sem)  # some permits are held by unknown parties
    return Wait("semaphore", "or", list(holders), sem)


def has_deadline(task: asyncio.Task[Any], chain: list[Any]) -> bool:
    """Whether an ``asyncio.timeout()`` block with a deadline encloses the task's wait."""
    for coro in chain:
        for ref in gc.get_referents(coro):
            owner = ref.__self__ if isinstance(ref, types.MethodType) else ref
            if isinstance(owner, _TIMEOUT) and getattr(owner, "_task", None) is task:
                try:
                    if owner.when() is not None and not owner.expired():
                        return True
                except Exception:
                    return True
    return False


def timer_targets(loop: asyncio.AbstractEventLoop) -> set[int] | None:
    """Ids of tasks and futures a pending timer of ``loop`` will touch (None: cannot tell,
    e.g. uvloop keeps its timers out of reach)."""
    scheduled = getattr(loop, "_scheduled", None)
    if scheduled is None:
        return None
    out: set[int] = set()
    for handle in list(scheduled):
        if handle.cancelled():
            continue
        cb = handle._callback
        owner = getattr(cb, "__self__", None)
        if owner is not None:
            out.add(id(owner))
            inner = getattr(owner, "_task", None)  # asyncio.timeout()'s Timeout
            if inner is not None:
                out.add(id(inner))
        for arg in handle._args or ():
            out.add(id(arg))
    return out


# ---------------------------------------------------------------------- the graph

LIVE = -1  # a successor that is running, runnable, done, or not followed
DEAD = -2  # a successor that can never act again (a lock holder that has finished)


def doomed(succ: list[list[int]], mode: list[str], live0: list[bool]) -> list[bool]:
    """For each node, whether it can never wake (see the module docstring)."""
    n = len(succ)
    live = [False] * n
    remaining = [0] * n
    preds: list[list[int]] = [[] for _ in range(n)]
    todo: list[int] = []
    for i in range(n):
        edges = succ[i]
        for j in edges:
            if j >= 0:
                preds[j].append(i)
        if live0[i]:
            live[i] = True
        elif mode[i] == "and":
            remaining[i] = sum(1 for j in edges if j != LIVE)
            live[i] = remaining[i] == 0
        else:  # "or"
            live[i] = LIVE in edges or not edges
            remaining[i] = 1
        if live[i]:
            todo.append(i)
    while todo:
        j = todo.pop()
        for i in preds[j]:
            if live[i]:
                continue
            if mode[i] == "and":
                remaining[i] -= 1  # preds[j] lists i once per edge i -> j
                if remaining[i] > 0:
                    continue
            live[i] = True
            todo.append(i)
    return [not x for x in live]


def cycles(succ: list[list[int]], bad: list[bool]) -> list[list[int]]:
    """Strongly connected groups of doomed nodes that contain a cycle (Tarjan, iterative)."""
    n = len(succ)
    edges = [[w for w in succ[v] if w >= 0 and bad[w]] if bad[v] else [] for v in range(n)]
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in range(n):
        if not bad[root] or index[root] >= 0:
            continue
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            v, pos = work.pop()
            if pos == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            if pos < len(edges[v]):
                work.append((v, pos + 1))
                w = edges[v][pos]
                if index[w] < 0:
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1 or v in edges[v]:
                    out.append(group)
    return out


def cycle_order(group: list[int], succ: list[list[int]], start: int) -> list[int]:
    """A simple cycle through ``start`` inside ``group``, then the group's other members."""
    members = set(group)
    path = [start]
    seen = {start}
    iters = [iter([w for w in succ[start] if w in members])]
    while iters:
        nxt = next(iters[-1], None)
        if nxt is None:
            iters.pop()
            if len(path) > 1:
                path.pop()
            continue
        if nxt == start:
            break
        if nxt not in seen:
            seen.add(nxt)
            path.append(nxt)
            iters.append(iter([w for w in succ[nxt] if w in members]))
    rest = [v for v in sorted(group) if v not in path]
    return path + rest
