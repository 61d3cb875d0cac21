"""What the deadlock detector reports: finding types, await chains, and the plain words.

Everything here runs only when a finding is made (rare), so it may format strings and read
source lines.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._core.findings import Finding, Frame
from .._core.measure import coroutine_key
from .._core.stacks import PACKAGE_DIR, source_line
from ..sync import PrimitiveState, state_of
from ._scanstate import LOCKLIKE, Entry, Graph
from ._waitgraph import Wait, coro_chain, cycle_order, frame_of

LISTED = 20  # tasks named in blocked_behind



@dataclass(frozen=True)
class AwaitChain:
    """One task's await chain, like Python 3.14's ``asyncio.capture_call_graph``."""

    task: str
    """The task's name."""
    coroutine: str
    """The task's coroutine, module-qualified (``myapp.jobs.run``)."""
    frames: tuple[Frame, ...]
    """Coroutine frames from the task's own coroutine (first) to where it waits (last)."""
    waits_for: str
    """What the innermost await waits for, in plain words."""

    def format(self) -> str:
        """Indented text: the task, then one line per frame, innermost last."""
        lines = [f"task {self.task!r} ({self.coroutine}) waits for {self.waits_for}"]
        lines += [f"    {frame}" for frame in self.frames]
        return "\n".join(lines)


@dataclass(frozen=True)
class PrimitiveInfo:
    """A lock, semaphore, condition, event, queue or future involved in a finding."""

    kind: str
    """``Lock``, ``Semaphore``, ``BoundedSemaphore``, ``Condition``, ``Event``, ``Queue``,
    ``Future``..."""
    created_at: Frame | None
    """Where the app created it (None if before asyncwatch was installed)."""
    held_by: tuple[str, ...] = ()
    """Names of the tasks holding it (locks and semaphores)."""
    description: str = ""
    """Plain words: ``Lock created at app.py:12 in main``."""


@dataclass(frozen=True)
class DeadlockFinding(Finding):
    """Tasks that wait for each other (directly, or through locks they hold): none can ever
    proceed."""

    kind: str = "deadlock"
    tasks: tuple[str, ...] = ()
    """Names of the tasks in the cycle, in cycle order (each waits for the next; the last
    waits for the first)."""
    explanation: str = ""
    """Who waits for what, held by whom, in plain words."""
    chains: tuple[AwaitChain, ...] = ()
    """Each cycle task's await chain, in the same order as ``tasks``."""
    locks: tuple[PrimitiveInfo, ...] = ()
    """The locks and semaphores in the cycle, with where they were created."""
    blocked_behind: tuple[str, ...] = ()
    """Other tasks that wait on the cycle (they cannot finish either); at most 20."""
    detected_at: float = 0.0
    """When asyncwatch saw the cycle (``started_at`` is when its last wait began)."""


@dataclass(frozen=True)
class StuckTaskFinding(Finding):
    """A task waiting, for longer than ``stuck_task_after_s``, on something nothing can wake."""

    kind: str = "stuck_task"
    tasks: tuple[str, ...] = ()
    """The stuck task's name."""
    explanation: str = ""
    """What it waits for and why nothing can wake it, in plain words."""
    chains: tuple[AwaitChain, ...] = ()
    """The stuck task's await chain."""
    waiting_on: PrimitiveInfo | None = None
    """The object it waits on (event, condition, queue, lock, future...)."""
    waited_s: float = 0.0
    """How long it had waited at the same await point when reported."""
    blocked_behind: tuple[str, ...] = ()
    """Other tasks that wait on it (they cannot finish either); at most 20."""
    detected_at: float = 0.0
    """When asyncwatch reported it (``started_at`` is when the wait began)."""


# ---------------------------------------------------------------------- building blocks


def task_name(task: asyncio.Task[Any]) -> str:
    try:
        return str(task.get_name())
    except Exception:
        return repr(task)


def user_frames(chain: list[Any]) -> tuple[Frame, ...]:
    """Frames of the chain, without asyncwatch's own wrappers."""
    out = []
    lines: dict[str, list[str]] = {}
    for coro in chain:
        frame = frame_of(coro)
        if frame is None:
            continue
        code = frame.f_code
        if code.co_filename.startswith(PACKAGE_DIR):
            continue
        lineno = frame.f_lineno or code.co_firstlineno
        line = source_line(code.co_filename, lineno, lines)
        function = getattr(code, "co_qualname", code.co_name)
        out.append(Frame(code.co_filename, lineno, function, line))
    return tuple(out)


def site_frame(state: PrimitiveState | None) -> Frame | None:
    if state is None or state.site is None:
        return None
    filename, line, function = state.site
    return Frame(filename, line, function, source_line(filename, line))


def number(obj: Any) -> None:
    state = state_of(obj) if obj is not None else None
    if state is not None:
        state.number()
        if state.part_of is not None:
            state.part_of.number()


def describe_object(obj: Any) -> str:
    """``Lock created at app.py:12 in main``, ``a Future``..."""
    state = state_of(obj)
    if state is not None:
        return state.describe()
    return f"a {type(obj).__name__}"


def primitive_info(obj: Any, holders: list[Any] | None = None) -> PrimitiveInfo:
    state = state_of(obj)
    if state is not None and state.part_of is not None:
        kind, frame = "Condition lock", site_frame(state.part_of)
    else:
        kind, frame = type(obj).__name__, site_frame(state)
    names = tuple(task_name(t) for t in holders or ())
    return PrimitiveInfo(kind, frame, names, describe_object(obj))


def where(chain: list[Any]) -> str:
    """' at app.py:20 in consume' for the innermost frame of the app's own code."""
    frames = user_frames(chain)
    for frame in reversed(frames):
        if not _is_stdlib_asyncio(frame.filename):
            return f" at {frame.filename}:{frame.lineno} in {frame.function}"
    return ""


def _is_stdlib_asyncio(filename: str) -> bool:
    import asyncio

    return filename.startswith(os.path.dirname(asyncio.__file__) + os.sep)


def _names(tasks: list[Any], limit: int = 5) -> str:
    shown = ", ".join(repr(task_name(t)) for t in tasks[:limit])
    if len(tasks) > limit:
        shown += f" and {len(tasks) - limit} more"
    return shown


def waits_for_words(wait: Wait | None, next_task: Any = None) -> str:
    """What a wait is for, in a few words (for await chains and explanations)."""
    if wait is None:
        return "something asyncwatch does not follow"
    kind = wait.kind
    target = f"task {task_name(next_task)!r}" if next_task is not None else "another task"
    if kind == "task":
        return target
    if kind == "gather":
        return f"{target} through gather()"
    if kind == "taskgroup":
        child = f"child {target}" if next_task is not None else "its children"
        return f"{child} of its TaskGroup"
    if kind == "wait":
        return f"{target} in asyncio.wait()"
    if kind == "shield":
        return f"{target} through shield()"
    if kind in ("wait_for", "cancel_wait"):
        return f"{target} in wait_for()"
    if kind in ("lock", "semaphore"):
        holders = list(wait.succ)
        held = f", held by {_names(holders)}" if holders else ""
        return f"{describe_object(wait.obj)}{held}"
    words = {
        "event": "{} to be set",
        "condition": "a notify() on {}",
        "queue_get": "an item from {}",
        "queue_put": "room in {}",
        "queue_join": "every item of {} to be processed",
        "semaphore_signal": "a release() of {}",
        "future": "the result of {}",
    }
    if kind in words:
        return words[kind].format(describe_object(wait.obj))
    if kind == "sleep":
        return "asyncio.sleep() to end"
    if kind == "io":
        return "I/O"
    return "something asyncwatch does not follow"


def await_chain(task: asyncio.Task[Any], wait: Wait | None, next_task: Any = None,
                chain: list[Any] | None = None) -> AwaitChain:
    chain = coro_chain(task) if chain is None else chain
    coro = chain[0] if chain else None
    return AwaitChain(
        task_name(task),
        coroutine_key(coro) if coro is not None else "?",
        user_frames(chain),
        waits_for_words(wait, next_task),
    )


# ---------------------------------------------------------------------- findings

UNREACHABLE_WHY = {
    "event": "no other task, callback, timer, thread or module holds the Event, so nobody "
    "can set it",
    "condition": "no other task, callback, timer, thread or module holds the Condition, so "
    "nobody can notify it",
    "queue_get": "no other task, callback, timer, thread or module holds the queue, so no "
    "producer is left to put an item",
    "queue_put": "no other task, callback, timer, thread or module holds the queue, so no "
    "consumer is left to take an item",
    "queue_join": "no other task, callback, timer, thread or module holds the queue, so no "
    "consumer is left to call task_done()",
    "future": "no other task, callback, timer, thread or module holds the Future, so nobody "
    "can set its result",
    "semaphore_signal": "no other task, callback, timer, thread or module holds the "
    "Semaphore, so nobody can release it",
}


def fate_of(task: asyncio.Task[Any]) -> str:
    """How a finished task ended: 'was cancelled', 'raised ValueError', 'returned'."""
    try:
        if task.cancelled():
            return "was cancelled"
        exc = task.exception()
    except Exception:  # not done after all, or an odd task class
        return "finished"
    return f"raised {type(exc).__name__}" if exc is not None else "returned"


def released_never(holders: list[Any], what: str = "it") -> str:
    """"'a' was cancelled while holding it and never released it" (grouped by fate)."""
    by_fate: dict[str, list[Any]] = {}
    for task in holders:
        by_fate.setdefault(fate_of(task), []).append(task)
    return "; ".join(
        f"{names_of(tasks)} {fate} while holding {what} and never released it"
        for fate, tasks in by_fate.items()
    )


def join_reason(queue: Any, waiters: list[Any]) -> str | None:
    """queue.join() that cannot return although a consumer is alive: the consumers (tasks
    waiting in get()) took items and never called task_done(). None if no consumer waits."""
    getters = [t for t in waiters if _waits_in(t, getattr(queue, "_getters", None))]
    if not getters:
        return None
    unfinished = getattr(queue, "_unfinished_tasks", None)
    items = f" for {unfinished} item(s) it took" if isinstance(unfinished, int) else ""
    verb = "is" if len(getters) == 1 else "are"
    who = "consumer" if len(getters) == 1 else "consumers"
    return (
        f"the {who} {names_of(getters)} {verb} alive (waiting for the next item) but never "
        f"called task_done(){items}, and nothing else can put an item or call it"
    )


def get_reason(queue: Any, waiters: list[Any]) -> str | None:
    """queue.get() whose producers all wait in join(): they wait for this consumer's
    task_done(). None if no producer waits in join()."""
    finished = getattr(getattr(queue, "_finished", None), "_waiters", None)
    joiners = [t for t in waiters if _waits_in(t, finished)]
    if not joiners:
        return None
    return (
        f"the only other {'task' if len(joiners) == 1 else 'tasks'} holding the queue, "
        f"{names_of(joiners)}, {'waits' if len(joiners) == 1 else 'wait'} in join() for "
        "task_done() calls that never came, so no item will be put"
    )


def _waits_in(task: asyncio.Task[Any], futures: Any) -> bool:
    waiter = getattr(task, "_fut_waiter", None)
    return waiter is not None and any(f is waiter for f in futures or ())


def names_of(tasks: list[Any]) -> str:
    shown = ", ".join(repr(task_name(t)) for t in tasks[:5])
    return shown + (f" and {len(tasks) - 5} more" if len(tasks) > 5 else "")


def deadlock_finding(graph: Graph, group: list[int], behind: list[int],
                     wall_of: Callable[[float], float], detected_at: float) -> DeadlockFinding:
    """The finding for one strongly connected group of doomed nodes (``_waitgraph.cycles``);
    ``behind``: doomed nodes waiting on it; ``wall_of``: detector clock to epoch seconds."""
    nodes, res, succ = graph.nodes, graph.res, graph.succ
    count = len(nodes)
    start = min(v for v in group if v < count)
    order = cycle_order(group, succ, start)
    tasks = [v for v in order if v < count]
    lines = []
    chains = []
    holds: dict[int, list[str]] = {}
    for v in group:  # numbered before any is described: two from one line are told apart
        if v >= count:
            number(res[v - count].obj)
        else:
            number(getattr(nodes[v].wait, "obj", None))
    for r in (v for v in group if v >= count):
        for h in res[r - count].succ:
            holds.setdefault(id(h), []).append(describe_object(res[r - count].obj))
    for pos, v in enumerate(tasks):
        e = nodes[v]
        nxt_task = nodes[tasks[(pos + 1) % len(tasks)]].task
        chain = coro_chain(e.task)
        wait = e.wait
        next_for_words = None if wait is not None and wait.kind in LOCKLIKE else nxt_task
        words = waits_for_words(wait, next_for_words)
        held = holds.get(id(e.task))
        holding = f" holds {' and '.join(held)} and" if held else ""
        verb = "waits for" if wait is None or wait.kind != "task" else "awaits"
        lines.append(f"task {task_name(e.task)!r}{where(chain)}{holding} {verb} {words}")
        chains.append(await_chain(e.task, wait, next_for_words, chain))
    names = tuple(task_name(nodes[v].task) for v in tasks)
    if len(names) == 1:
        head = f"Deadlock: task {names[0]!r} waits for itself and can never proceed."
    else:
        head = f"Deadlock: {len(names)} tasks wait for each other; none can ever proceed."
    blocked = [nodes[v].task for v in behind if v < count]
    explanation = "\n".join([head, *(f"  {line}" for line in lines)])
    if blocked:
        explanation += f"\n  {len(blocked)} more task(s) wait behind them: {names_of(blocked)}"
    locks = tuple(
        primitive_info(res[v - count].obj, res[v - count].succ) for v in group if v >= count
    )
    since = max(nodes[v].rec.since for v in tasks)
    return DeadlockFinding(
        started_at=wall_of(since),
        summary=f"Deadlock: {' -> '.join(repr(x) for x in (*names, names[0]))}",
        tasks=names,
        explanation=explanation,
        chains=tuple(chains),
        locks=locks,
        blocked_behind=tuple(task_name(t) for t in blocked[:LISTED]),
        detected_at=detected_at,
    )


def stuck_finding(entry: Entry, reason: str, blocked: list[Any], now: float,
                  wall_of: Callable[[float], float], detected_at: float) -> StuckTaskFinding:
    """The finding for one stuck wait; ``reason``: why nothing can wake it."""
    wait = entry.wait
    assert wait is not None
    chain = coro_chain(entry.task)
    waited = now - entry.rec.since
    name = task_name(entry.task)
    coro = coroutine_key(chain[0]) if chain else "?"
    explanation = (
        f"Task {name!r} ({coro}) has waited {waited:.0f}s{where(chain)} for "
        f"{waits_for_words(wait)}, and nothing asyncwatch can see can wake it: {reason}."
    )
    if blocked:
        explanation += f" {len(blocked)} more task(s) wait on it: {names_of(blocked)}."
    holders = wait.succ if wait.kind in LOCKLIKE else []
    return StuckTaskFinding(
        started_at=wall_of(entry.rec.since),
        summary=f"Stuck task {name!r}: waits for {waits_for_words(wait)}",
        tasks=(name,),
        explanation=explanation,
        chains=(await_chain(entry.task, wait, None, chain),),
        waiting_on=primitive_info(wait.obj, holders) if wait.obj is not None else None,
        waited_s=waited,
        blocked_behind=tuple(task_name(t) for t in blocked[:LISTED]),
        detected_at=detected_at,
    )
