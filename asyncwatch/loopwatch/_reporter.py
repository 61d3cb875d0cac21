"""What a block becomes once it is found (``BlockReporter``, the ``BlockSink`` every
``LoopMonitor`` reports to):

* a ``BlockedLoop`` finding, added while the loop is still held (``ongoing=True``) and
  replaced by its final form when the loop returns, with its cause (a line of the app, a
  garbage collection, objects being freed) and the task, request and span it ran in;
* a count and a duration per culprit line (``CulpritCounts``);
* a span event on the span current in the blocking task or callback;
* one WARNING line on the ``asyncwatch`` logger, repeats of a site grouped and all lines
  rate-limited (``_limits``).

Blocks seen only in a faulthandler dump (a call holding the GIL) are reported here too
(``gil_block``), once the watchdog knows how long they lasted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .._core import names as n
from .._core.context import route_in, span_in, task_context
from .._core.findings import FindingsLog, Frame
from .._core.measure import coroutine_key
from .._core.stacks import (
    MAX_STACK,
    RawFrame,
    Sample,
    callback_site,
    classify,
    finished,
    function_name,
    handle_in,
    module_of_file,
    task_of,
    to_frame,
    to_frames,
)
from ._blocked import BlockedLoop, Episode, LoopMonitor
from ._gctimes import GcTimes
from ._limits import LogLimiter, RepeatLimiter
from ._points import CulpritCounts

logger = logging.getLogger("asyncwatch")


class _Info:
    """What was looked up about a block when it was detected."""

    __slots__ = ("coroutine", "freed", "freed_site", "label", "route", "span", "span_id",
                 "started_at", "task", "trace_id")

    def __init__(self) -> None:
        self.task: str | None = None
        self.coroutine: str | None = None
        # The callback or task the block came after, when it had already returned (its
        # tail: freeing what it let go), e.g. "task 'x' running app.jobs.handler".
        self.freed: str | None = None
        self.freed_site: tuple[RawFrame, str] | None = None  # its first line and module
        self.label = ""  # the culprit's module-qualified name (``code.function.name``)
        self.route: str | None = None
        self.span: Any = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.started_at = 0.0


class BlockReporter:
    """Turns the blocks the monitors find into findings, culprit counts, span events and log
    lines (see the module docstring)."""

    def __init__(
        self,
        findings: FindingsLog,
        culprits: CulpritCounts,
        gc: GcTimes,
        clock: Callable[[], float],
    ) -> None:
        self.findings = findings
        self.culprits = culprits
        self.gc = gc
        self.clock = clock
        self.limiter = LogLimiter(clock)
        self.repeats = RepeatLimiter(clock)

    def after_fork(self) -> None:
        """In a forked child: the log limits start from zero."""
        self.limiter = LogLimiter(self.clock)
        self.repeats = RepeatLimiter(self.clock)

    def detected(
        self, monitor: LoopMonitor, episode: Episode, now: float, sample: Sample | None
    ) -> None:
        """A block was found: look up its task and request, record it (ongoing), and add it to
        the current span now, while that span is surely still open."""
        info = episode.info = self._lookup(monitor, episode, sample)
        info.started_at = time.time() - (self.clock() - episode.since)
        finding = episode.finding = self._finding(monitor, episode, ongoing=True)
        self.findings.add(finding)
        span = info.span
        if span is not None and span.is_recording():
            where = finding.culprit
            attributes: dict[str, Any] = {
                n.BLOCK_DURATION: finding.duration_s,
                n.BLOCK_ONGOING: not episode.exact,
            }
            if where is not None:
                attributes.update(
                    {n.CODE_FILE: where.filename, n.CODE_LINE: where.lineno,
                     n.CODE_FUNCTION: info.label or where.function}
                )
            span.add_event(
                n.BLOCKED_EVENT, attributes, timestamp=int(info.started_at * 1e9)
            )

    def still_blocked(self, monitor: LoopMonitor, episode: Episode, now: float) -> None:
        """A block has held its loop for LONG_BLOCK_S: say so now rather than when it ends."""
        episode.logged = True
        self._log(self._finding(monitor, episode, ongoing=True))

    def ended(self, monitor: LoopMonitor, episode: Episode) -> None:
        """The loop came back: final finding, metrics, span event, log line."""
        if episode.info is None:
            self.detected(monitor, episode, episode.end, None)
        final = self._finding(monitor, episode, ongoing=False)
        if episode.finding is not None:
            self.findings.replace(episode.finding, final)
        else:
            self.findings.add(final)
        episode.finding = final
        monitor.reported_until = max(monitor.reported_until, episode.end)
        if final.culprit is not None:
            where = final.culprit
            path, line, function = where.filename, where.lineno, episode.info.label
        else:
            path, line, function = n.OVERFLOW, 0, n.OVERFLOW
        self.culprits.add((path, line, function), final.duration_s)
        if not episode.logged:
            episode.logged = True
            self._log(final)

    def starved(self, monitor: LoopMonitor, late_s: float) -> None:
        """The loop was idle in its selector yet ``late_s`` late: not a block (no finding,
        no culprit); one rate-limited line says what it is."""
        held = self.limiter.allow()
        if held is None:
            return
        more = f", {held} similar lines held back" if held else ""
        logger.warning(
            "asyncwatch: event loop in thread %r was idle in its selector yet ran %.3f s "
            "late: the process is short of CPU (not a blocked loop%s)",
            monitor.thread_name, late_s, more,
        )

    def gil_block(self, monitor: LoopMonitor, frames: list[tuple[str, int, str]],
                  since: float, duration: float) -> None:
        """A block seen only in a faulthandler dump (a call holding the GIL, see
        ``_gilwatch``): ``frames`` is the loop thread's traceback in that dump."""
        best: list[tuple[str, int, str] | None] = [None, None, None, None]
        for entry in reversed(frames):
            kind = classify(entry[0])
            if best[kind] is None:
                best[kind] = entry
        chosen = best[0] or best[1] or best[2]  # never asyncio's own frames
        culprit = to_frame(chosen) if chosen is not None else None
        if culprit is not None:
            summary = (
                f"event loop blocked for {duration:.3f} s at {culprit} (in a call holding "
                "the GIL; named from a faulthandler dump)"
            )
            self._held(monitor, since, duration, summary, "code", culprit, frames)
            return
        self._held(
            monitor, since, duration,
            f"event loop blocked for {duration:.3f} s between callbacks, in no line of the "
            "app: objects being freed (deallocation of what a finished callback or task let "
            "go) or garbage collection (from a faulthandler dump)",
            "unknown", None, frames, source="from a faulthandler dump",
        )

    def unseen(self, monitor: LoopMonitor, since: float, duration: float) -> None:
        """A block proven by the clocks only once the loop had come back: one call held the
        GIL, and the loop's thread took it back before any other thread could look
        (``LoopMonitor._came_back_unseen``). Nothing saw where; a collection timed meanwhile
        is named if it took most of it."""
        self._held(
            monitor, since, duration,
            f"event loop blocked for {duration:.3f} s in a call that held the GIL and "
            "returned before any other thread could look, so it is not named (gil_watch=True "
            "names such calls while they run)",
            "unknown", None, [], source="timed through gc.callbacks",
        )

    def _held(self, monitor: LoopMonitor, since: float, duration: float, summary: str,
              cause: str, culprit: Frame | None, frames: list[tuple[str, int, str]],
              source: str = "") -> None:
        """Record and log a block known only after the fact (``gil_block``, ``unseen``)."""
        collected = self.gc.during(since, since + duration)
        if culprit is None and collected is not None and collected[0] >= duration / 2:
            cause = "garbage_collection"
            summary = (
                f"event loop blocked for {duration:.3f} s by a garbage collection (generation "
                f"{collected[1]}, {collected[0]:.3f} s), in no line of the app ({source})"
            )
        finding = BlockedLoop(
            started_at=time.time() - (self.clock() - since),
            summary=summary,
            duration_s=duration,
            culprit=culprit,
            stack=to_frames(frames[-MAX_STACK:]),
            thread=monitor.thread_name,
            cause=cause,
        )
        monitor.reported_until = max(monitor.reported_until, since + duration)
        self.findings.add(finding)
        if culprit is not None:
            label = function_name(module_of_file(culprit.filename), culprit.function)
            self.culprits.add((culprit.filename, culprit.lineno, label), duration)
        self._log(finding)

    def _lookup(self, monitor: LoopMonitor, episode: Episode, sample: Sample | None) -> _Info:
        info = _Info()
        handle = episode.handle
        if handle is None and sample is not None:
            handle = handle_in(sample.chain)
        task: asyncio.Task[Any] | None = None
        loop = monitor.loop()
        if loop is not None and sample is not None:
            task = asyncio.current_task(loop)
        if task is None and handle is not None:
            task = task_of(handle)
        if task is not None:
            info.task = task.get_name()
            info.coroutine = coroutine_key(task.get_coro())
            ctx = task_context(task)
        else:
            ctx = getattr(handle, "_context", None)
        chain = sample.chain[sample.depth:] if sample is not None else None
        if handle is not None and finished(handle, chain):
            # The callback had returned: the loop was in its tail (see ``_finding``).
            site = info.freed_site = callback_site(handle)
            if task is not None and task is task_of(handle):
                info.freed = f"task {info.task!r} running {info.coroutine}"
            elif task is None and site is not None:
                (_, _, qualname), module = site
                info.freed = f"callback {module}.{qualname}" if module else f"callback {qualname}"
        span = info.span = span_in(ctx)
        info.route = route_in(ctx, span)
        if span is not None:
            span_context = span.get_span_context()
            info.trace_id = f"{span_context.trace_id:032x}"
            info.span_id = f"{span_context.span_id:016x}"
        return info

    def _finding(self, monitor: LoopMonitor, episode: Episode, *, ongoing: bool) -> BlockedLoop:
        info = episode.info
        culprit_frame = None
        stack: tuple[Any, ...] = ()
        culprit = episode.culprit()
        site = None
        if culprit is not None:
            where, module, raw_stack = culprit
            site = (where, module)
            stack = to_frames(raw_stack)
        elif info.freed is not None and episode.internal:
            site = info.freed_site
        elif episode.handle is not None:
            site = callback_site(episode.handle)
        if site is not None:
            culprit_frame = to_frame(site[0])
            info.label = function_name(site[1], site[0][2])
        duration = episode.duration
        collected = self.gc.during(episode.since, episode.since + duration)
        cause = "code"
        where_text = str(culprit_frame) if culprit_frame is not None else "an unknown line"
        summary = f"event loop blocked for {duration:.3f} s at {where_text}"
        if culprit is None and episode.internal:
            # Sampled, but only ever in asyncio's own frames: no line of the app ran. What
            # holds the loop then is C code run from asyncio: freeing the objects a callback or
            # task let go as it returned (a large parsed document), or a garbage collection.
            after = f" after {info.freed} returned" if info.freed is not None else ""
            step = f"after {culprit_frame}" if culprit_frame is not None else "between callbacks"
            if collected is not None and collected[0] >= duration / 2:
                cause = "garbage_collection"
                summary = (
                    f"event loop blocked for {duration:.3f} s by a garbage collection "
                    f"(generation {collected[1]}, {collected[0]:.3f} s){after}, in no line of "
                    "the app"
                )
            elif info.freed is not None:
                cause = "deallocation"
                summary = (
                    f"event loop blocked for {duration:.3f} s by objects being freed{after} "
                    "(deallocation of what it let go, in no line of the app)"
                )
            else:
                cause = "unknown"
                summary = (
                    f"event loop blocked for {duration:.3f} s {step}, in no line of the app: "
                    "asyncio's own code, or C code run from it (objects being freed, a garbage "
                    "collection)"
                )
        elif collected is not None and collected[0] >= duration / 2:
            # The line was running when the collector started: the heap, not the line,
            # held the loop (any allocation there could have set it off).
            cause = "garbage_collection"
            summary = (
                f"event loop blocked for {duration:.3f} s by a garbage collection "
                f"(generation {collected[1]}, {collected[0]:.3f} s) that started at {where_text}"
            )
        elif collected is not None and collected[0] >= duration / 4:
            summary += (
                f" (a garbage collection, generation {collected[1]}, took {collected[0]:.3f} s "
                "of it)"
            )
        if episode.gil and cause == "code":
            summary += (
                " (in a call that held the GIL, so no other thread could look meanwhile: "
                "named the moment it returned)"
            )
        if ongoing:
            summary += " (still blocked)"
        return BlockedLoop(
            started_at=info.started_at,
            summary=summary,
            duration_s=duration,
            culprit=culprit_frame,
            stack=stack,
            task=info.task,
            coroutine=info.coroutine,
            route=info.route,
            trace_id=info.trace_id,
            span_id=info.span_id,
            thread=monitor.thread_name,
            ongoing=ongoing,
            samples=episode.samples,
            exact=episode.exact,
            cause=cause,
        )

    def _log(self, finding: BlockedLoop) -> None:
        repeats = self.repeats.allow(finding.site(), finding.duration_s)
        if repeats is None:
            return  # the same line again, logged a moment ago: counted, said in its next line
        held = self.limiter.allow()
        if held is None:
            return
        parts = []
        seen = self.findings.count_of(finding)
        if seen > 1:
            text = f"seen {seen} times here"
            if repeats[0]:
                text += (
                    f", {repeats[0]} not logged since the last line (worst {repeats[1]:.3f} s)"
                )
            parts.append(text)
        if finding.task is not None:
            parts.append(f"task {finding.task!r} running {finding.coroutine}")
        if finding.route:
            parts.append(f"route {finding.route}")
        parts.append(f"thread {finding.thread!r}")
        if held:
            parts.append(f"{held} similar lines held back")
        logger.warning("asyncwatch: %s (%s)", finding.summary, ", ".join(parts))
