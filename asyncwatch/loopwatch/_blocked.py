"""Deciding, for one event loop, that it is blocked, by what, and when the block ends.

Two parties share a ``LoopMonitor``:

* the loop's own thread runs the **heartbeat** (``beat()``), a ``call_later`` chain every
  ``interval_s`` (``min(25 ms, threshold / 4)``): it records how late it ran (loop lag) and
  when the next beat is due. A loop that is idle in ``select()`` still beats on time.
* the **watchdog** thread calls ``check()``, at most every ``look_s`` (threshold / 2) while
  the loop keeps time. Once a beat is overdue by ``sample_s`` the loop
  is busy in one iteration, and the watchdog samples the loop thread's stack every
  ``sample_s`` until the beat runs. Each sample is keyed by the frames where the callback
  starts (``_stacks.sample_thread``), so a run of many short callbacks (a busy but healthy
  loop) is told apart from one callback holding the loop. One callback seen in at least two
  samples and holding the loop for more than ``threshold_s`` is a block: reported at once
  (``sink.detected``), sampled until it returns, then closed (``sink.ended``).

Timing: without per-callback hooks nobody knows when a callback started, so a block is dated
from the moment its loop was due back (the overdue beat), which can be up to ``interval_s``
after it really started; its end is when the beat finally ran. That dating needs a first look
on schedule: when the watchdog itself was starved of CPU and looks late, a callback counts
only from when it was first seen (else whatever it happened to catch would be blamed for all
the lateness). Blocks are therefore caught for
sure once they last ``threshold_s + interval_s``, and reported within ``sample_s`` of
``threshold_s`` past that due time. Precise mode (``_precise``) stamps every callback's start:
then ``since`` and the end are exact and every callback over ``threshold_s`` is reported.

Deciding is separate from scheduling: ``check(now, running, sampler)`` reads only its
arguments and the monitor, so tests drive it with a manual clock and synthetic samples.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .._core.findings import Finding, Frame
from .._core.measure import Histogram
from .._core.stacks import RawFrame, Sample, culprit_of, own_switches, raw_stack

LONG_BLOCK_S = 1.0  # a block still holding the loop after this long is logged without waiting
IDLE_POLL_S = 0.5  # how often a stopped or not yet started loop is looked at
MAX_CULPRITS_PER_BLOCK = 32
MAX_STACKS_PER_BLOCK = 8
# A late look proves a block held in one call when, since the loop's beat was due, the loop's
# thread ran at least LOOP_RAN_SHARE of the time and the watchdog's thread was switched out
# WATCHDOG_RUNS times or more (see ``_held_computing``).
LOOP_RAN_SHARE = 0.15
WATCHDOG_RUNS = 5


class ThreadClock:
    """The CPU clock of one thread, readable from any thread; made on the thread itself
    (``thread_clock``), so it always names the right one. Reading it takes a few hundred
    nanoseconds and never lets go of the GIL; it raises OSError once the thread is gone."""

    __slots__ = ("clock_id",)

    def __init__(self, clock_id: int) -> None:
        self.clock_id = clock_id

    def read(self) -> float:
        return time.clock_gettime(self.clock_id)


def thread_clock() -> ThreadClock | None:
    """The calling thread's clock, or None where there is none (macOS, Windows)."""
    try:
        clock = ThreadClock(time.pthread_getcpuclockid(threading.get_ident()))
        clock.read()
    except (AttributeError, OSError):
        return None
    return clock


@dataclass(frozen=True)
class BlockedLoop(Finding):
    """One callback held an event loop for longer than ``block_threshold_s``."""

    kind: str = "blocked_loop"
    duration_s: float = 0.0
    """How long the loop was held (so far, while ``ongoing``)."""
    culprit: Frame | None = None
    """Innermost frame of the app's own code while it held the loop (the most sampled one)."""
    stack: tuple[Frame, ...] = ()
    """The loop thread's stack when the culprit was first sampled, outermost first."""
    task: str | None = None
    """Name of the task that held the loop (None for a plain callback)."""
    coroutine: str | None = None
    """Module-qualified name of that task's coroutine."""
    route: str | None = None
    """Route template of the request being handled, if any (see ``asyncwatch._core.context``)."""
    trace_id: str | None = None
    """Trace of the span current in the blocking task or callback, if any (hex)."""
    span_id: str | None = None
    """That span's id (hex); the block is also added to it as a span event."""
    thread: str = ""
    """Name of the thread running the loop."""
    ongoing: bool = False
    """True while the loop is still held; the finding is replaced by its final form after."""
    samples: int = 0
    """Stack samples taken while it held the loop (0: timed by precise mode after the fact,
    the culprit is then the callback's location, not the blocking line)."""
    exact: bool = False
    """Start and duration measured exactly (precise mode), not from the heartbeat."""
    cause: str = "code"
    """What held the loop: ``"code"`` (the culprit's line running), ``"deallocation"``
    (objects being freed after a callback or task returned, letting go of them; the culprit
    is then that callback's or coroutine's first line), ``"garbage_collection"`` (a
    collection, timed through ``gc.callbacks``, took at least half of the block; the culprit is
    the app's line it started at, if any), ``"unknown"`` (no line of the app ran)."""

    def site(self) -> tuple[Any, ...]:
        """Blocks at the same culprit line (and route) are one problem, whatever they took."""
        where = self.culprit
        if where is None:
            return (self.kind, None, self.coroutine, self.route)
        return (self.kind, where.filename, where.lineno, where.function, self.route)


class BlockSink(Protocol):
    """Where a monitor reports (``BlockReporter`` in production, a list in tests)."""

    def detected(self, monitor: LoopMonitor, episode: Episode, now: float,
                 sample: Sample | None) -> None: ...

    def still_blocked(self, monitor: LoopMonitor, episode: Episode, now: float) -> None: ...

    def ended(self, monitor: LoopMonitor, episode: Episode) -> None: ...

    def unseen(self, monitor: LoopMonitor, since: float, duration: float) -> None: ...


class Episode:
    """One callback seen holding a busy loop, from its first sample to its end."""

    __slots__ = (
        "beats", "counts", "end", "exact", "finding", "first_seen", "gil", "handle", "info",
        "internal", "key", "last_seen", "logged", "modules", "overflow", "reported", "samples",
        "since", "stacks",
    )

    def __init__(self, key: tuple[Any, ...], since: float, beats: int, now: float) -> None:
        self.key = key
        self.since = since
        self.beats = beats
        self.first_seen = self.last_seen = now
        self.end = math.nan
        self.samples = 0
        self.counts: dict[RawFrame, int] = {}
        self.modules: dict[RawFrame, str] = {}
        self.stacks: dict[RawFrame, list[RawFrame]] = {}
        self.overflow = 0
        self.internal = 0  # samples with only asyncio's own frames (no culprit to count)
        self.reported = False
        self.logged = False
        self.exact = False
        # Named by the first look the watchdog could make, late, once the loop's thread let go
        # of the GIL: it computed all along (a call holding the GIL, see ``_held_computing``).
        self.gil = False
        self.handle: Any = None  # precise mode: the asyncio Handle, when timed after the fact
        self.finding: Any = None  # what the sink recorded at detection
        self.info: Any = None  # what the sink looked up at detection (task, span...)

    @property
    def duration(self) -> float:
        """Seconds from start to end (to the last sample while still going)."""
        end = self.last_seen if math.isnan(self.end) else self.end
        return max(0.0, end - self.since)

    def add(self, sample: Sample, now: float) -> None:
        """Digest one sample: count its culprit, keep the first stack of each culprit."""
        self.samples += 1
        self.last_seen = now
        found = culprit_of(sample.chain, sample.depth)
        if found is None:
            self.internal += 1
            return
        where, module = found
        seen = self.counts.get(where)
        if seen is not None:
            self.counts[where] = seen + 1
        elif len(self.counts) < MAX_CULPRITS_PER_BLOCK:
            self.counts[where] = 1
            self.modules[where] = module
            if len(self.stacks) < MAX_STACKS_PER_BLOCK:
                self.stacks[where] = raw_stack(sample.chain)
        else:
            self.overflow += 1

    def culprit(self) -> tuple[RawFrame, str, list[RawFrame]] | None:
        """The most sampled culprit (earliest seen on ties), its module and its stack."""
        if not self.counts:
            return None
        where = max(self.counts, key=self.counts.__getitem__)  # first max: earliest seen
        return where, self.modules.get(where, ""), self.stacks.get(where, [])


class LoopMonitor:
    """One event loop's heartbeat state and the watchdog's decision; see the module doc."""

    def __init__(
        self,
        name: str,
        *,
        threshold_s: float,
        clock: Callable[[], float],
        sink: BlockSink,
        loop: Callable[[], Any] = lambda: None,
        precise: bool = False,
    ) -> None:
        self.name = name
        self.threshold_s = threshold_s
        self.interval_s = min(0.025, threshold_s / 4)
        self.sample_s = min(0.01, threshold_s / 4)
        # While the loop keeps time the watchdog looks at it only every ``look_s``: a loop
        # found late then has still been held for under threshold - 2 samples, so the block
        # is confirmed as soon as it passes the threshold, as if the loop were watched always.
        self.look_s = threshold_s / 2
        self.clock = clock
        self.sink = sink
        self.loop = loop  # weak reference to the loop (returns None once it is gone)
        self.precise = precise
        self.lock = threading.Lock()
        # Written by the loop's thread (the heartbeat), read by the watchdog.
        self.due = math.inf  # when the next beat should run
        self.beat_at = 0.0
        self.beats = 0
        self.paused = True  # the next beat records no lag (first beat, or after a stop)
        self.thread_id = 0
        self.thread_name = ""
        # The loop thread's clock (made by the heartbeat, on the loop's thread: see
        # ``ThreadClock``); None until the first beat, or where there is none.
        self.thread_clock: ThreadClock | None = None
        self.native_id = 0
        self.depth = 0  # Python frames below a callback on this loop
        self.lag = Histogram()
        self.late = (0.0, 0.0)  # (when, how late) of the last beat late by threshold_s or more
        self.reported_until = 0.0  # end of the last block reported (watchdog's side)
        # Written by precise mode around every callback on this loop (0: none running).
        self.cb_start = 0.0
        # Watchdog-only state.
        self.episode: Episode | None = None
        self.looks = 0  # stack samples taken of this loop
        self._stretch = -1  # beats value of the busy stretch the last episode began in
        # Late stretches the loop spent idle in its selector (its thread starved of CPU).
        self.starved = 0
        self._starved_stretch = -1
        # At the last look: clock, the loop thread's CPU seconds (and the looking thread's
        # switches, not used: see ``own_switches``).
        self._clock_mark: tuple[float, float, int] | None = None
        # Report a block proven only after the loop came back (``_came_back_unseen``); off
        # where the GIL watch names such blocks from faulthandler's dump instead.
        self.unseen = True
        self._asked = math.inf  # when the last look asked to be looked at next

    # ---------------------------------------------------------------- loop thread

    def beat(self) -> float | None:
        """The heartbeat ran: record lag (None after a pause) and when the next one is due."""
        now = self.clock()
        lag = None
        if self.paused:
            self.paused = False
        else:
            lag = max(0.0, now - self.due)
            self.lag.add(lag)
        if lag is not None and lag >= self.threshold_s:
            self.late = (now, lag)  # read by the GIL watch (``_gilwatch``)
        self.beat_at = now
        self.due = now + self.interval_s
        self.beats += 1  # last: a watchdog that sees the new count sees the new due time
        return lag

    def slow_callback(self, handle: Any, start: float, elapsed: float) -> None:
        """Precise mode: a callback ran ``elapsed`` >= threshold seconds (on the loop thread,
        after it returned and before the next callback starts)."""
        with self.lock:
            episode = self.episode
            if episode is None or episode.key != (start,):
                episode = Episode((start,), start, self.beats, start + elapsed)
            episode.handle = handle
            self.episode = None
            episode.exact = True
            episode.since = start
            episode.end = start + elapsed
            if not episode.reported:
                episode.reported = True
                self.sink.detected(self, episode, episode.end, None)
            self.sink.ended(self, episode)

    # ---------------------------------------------------------------- watchdog thread

    def check(
        self, now: float, running: bool, sampler: Callable[[LoopMonitor], Sample | None],
        switched_since: int | None = None,
    ) -> float:
        """Look at the loop now (the watchdog); returns when it wants to be looked at next.
        ``switched_since``: the watchdog thread's ``own_switches()`` from before it last
        waited (None: unknown; a call holding the GIL is then never proven)."""
        with self.lock:
            wake = self._check(now, running, sampler, switched_since)
            self._asked = wake
            self._clock_mark = self._read_clocks()
            return wake

    def look_for_watchdog(
        self, now: float, running: bool, sampler: Callable[[LoopMonitor], Sample | None],
        switched_since: int | None,
    ) -> None:
        """Another asyncwatch thread (the advisor's sampler) has the GIL back after a wait,
        while the loop is overdue by ``threshold_s`` and the watchdog has been held back as
        long: it takes the look the watchdog is waiting to take. After a call that held the
        GIL returns, whichever waiting thread gets the GIL first is the one that can still
        see the loop's thread in that call; if it is not the watchdog, the loop's thread may
        take the GIL back (and move on) before the watchdog gets it. The watchdog's own plan
        (when it asked to look next) is left alone."""
        if (self.precise or self.episode is not None or now - self.due < self.threshold_s
                or now - self._asked < self.threshold_s):
            return
        if not self.lock.acquire(False):
            return  # the watchdog is looking
        try:
            if self.episode is None:
                self._check(now, running, sampler, switched_since)
        finally:
            self.lock.release()

    def _check(
        self, now: float, running: bool, sampler: Callable[[LoopMonitor], Sample | None],
        switched_since: int | None,
    ) -> float:
        s = self.sample_s
        episode = self.episode
        prior = None
        if episode is not None and not self.precise and self.beats != episode.beats:
            self._end(episode, self.beat_at)  # the heartbeat ran: the loop came back
            prior = None if episode.reported else episode
            episode = None
        if episode is None and self.unseen and not self.precise:
            self._came_back_unseen(now, switched_since, prior)
        if not running:
            if episode is not None:
                self._end(episode, episode.last_seen)
            self.paused = True
            return now + IDLE_POLL_S
        # Read before the sample: the moment this thread lets go of the GIL, the loop's
        # thread may run its beat (and move due and beats on).
        due = self.due
        beats = self.beats
        if episode is None and not self._busy(now):
            if self.precise and not self.cb_start:
                self._idle_but_late(now)  # no callback runs: late only if starved
            return self._next(now)
        # A first look at this busy stretch, late, by a looker held back (by the GIL?).
        late_look = (episode is None and self._stretch != beats
                     and now - due > self.look_s + 2 * s
                     and now - self._asked >= self.threshold_s)
        sample = sampler(self)
        # At once, before anything that may let go of the GIL (see ``_held_in_one_call``).
        reading = self._read_clocks() if late_look else None
        self.looks += 1
        if sample is None or sample.key is None:
            # Thread gone, or the loop is in its own machinery: nothing holds it.
            if sample is not None and sample.idle:
                self._idle_but_late(now)
            if episode is not None and not (self.precise and episode.reported):
                self._end(episode, now)
            return now + s
        if episode is not None and episode.key != sample.key:
            if not (self.precise and episode.reported):
                # Another callback holds the loop now: the previous one ended in between.
                self._end(episode, (episode.last_seen + now) / 2)
            # (A reported precise block is closed, exactly, by slow_callback.)
            episode = self.episode = None
        if episode is None:
            late = False
            if sample.since is not None:
                since = sample.since
            elif self._stretch != beats and now - due <= self.look_s + 2 * s:
                since = due  # first look at this busy stretch, on time: busy since due
            else:
                # Not the first callback of the stretch, or the watchdog itself looks late:
                # what ran before is unknown, so count from now (unless proven below).
                since = now
                late = self._stretch != beats
            self._stretch = beats
            episode = self.episode = Episode(sample.key, since, beats, now)
            if late:
                began = self._held_in_one_call(now, due, reading, switched_since)
                if began is not None:
                    episode.since = began  # the loop's thread held the GIL all along
                    episode.gil = True
            episode.add(sample, now)
        else:
            episode.add(sample, now)
        held = now - episode.since
        confirmed = episode.samples >= 2 or sample.since is not None or episode.gil
        if not episode.reported:
            if confirmed and held > self.threshold_s:
                episode.reported = True
                self.sink.detected(self, episode, now, sample)
            elif confirmed:
                # Look again the moment the threshold is passed, not at the next sample time.
                return min(now + s, episode.since + self.threshold_s + 0.001)
        elif not episode.logged and held >= LONG_BLOCK_S:
            self.sink.still_blocked(self, episode, now)
        return now + s

    def _idle_but_late(self, now: float) -> None:
        """The beat is overdue while the loop waits in its selector: its thread did not get
        the CPU to wake up. The process is starved, the loop is not blocked: counted (once
        per late stretch) and said as such, never as a block."""
        late = now - self.due
        if late < self.threshold_s or self._starved_stretch == self.beats:
            return
        self._starved_stretch = self.beats
        self.starved += 1
        report = getattr(self.sink, "starved", None)
        if report is not None:
            report(self, late)

    def _held_in_one_call(
        self, now: float, due: float, reading: tuple[float, float, int] | None,
        switched_since: int | None,
    ) -> float | None:
        """A late first look at a busy stretch: was it one call holding the GIL? If so, when
        it began (``due``, when the beat was due, read before the sample). ``reading``: the
        clocks read right after the sample (None when the looker was not held back)."""
        mark = self._clock_mark
        if mark is None or due - mark[0] > self.look_s + 2 * self.sample_s:
            return None  # no look shortly before the beat was due to measure from
        if now - self._asked < self.threshold_s:
            return None  # the watchdog was not held back (by the GIL) for long
        return due if self._held_computing(mark, reading, due, switched_since) else None

    def _came_back_unseen(
        self, now: float, switched_since: int | None, prior: Episode | None
    ) -> None:
        """The loop's beat came back late by ``threshold_s`` or more since the last look,
        and no look saw the block: the loop's thread took the GIL back before any looker got
        it (see ``look_for_watchdog``). If the clocks prove that the loop's own thread held
        the GIL meanwhile (``_held_computing``), it was blocked in one call: reported, named
        only if a look (``prior``, the episode just ended unproven) caught it in the call."""
        when, lag = self.late
        mark = self._clock_mark
        if not lag or mark is None or when <= mark[0] or self.reported_until >= when:
            return
        due = when - lag
        if self._held_in_one_call(now, due, self._read_clocks(), switched_since) is None:
            return
        if prior is not None and prior.counts and due <= prior.first_seen <= when:
            prior.since = due
            prior.gil = True
            prior.reported = True
            self.sink.detected(self, prior, now, None)
            self._end(prior, when)
            return
        self.reported_until = when
        self.sink.unseen(self, due, lag)

    def _read_clocks(self) -> tuple[float, float, int] | None:
        """(clock, loop thread CPU seconds, watchdog switches): nothing here lets go of the
        GIL, so the loop stays where the sample found it."""
        loop_clock = self.thread_clock
        if loop_clock is None:
            return None
        switches = own_switches()
        if switches is None:
            return None
        try:
            ran = loop_clock.read()
        except OSError:  # the loop's thread has exited
            self.thread_clock = None
            return None
        return self.clock(), ran, switches

    def _held_computing(self, mark: tuple[float, float, int] | None,
                        reading: tuple[float, float, int] | None, due: float,
                        switched_since: int | None) -> bool:
        """Whether one call held the GIL since the loop's beat was due.

        The watchdog looks late at a loop whose beat is overdue. Either the watchdog was short
        of CPU (a loaded machine), or a thread held the GIL without a break: C code such as a
        catastrophic ``re.match`` or ``json.loads`` of a huge document, during which no other
        thread runs a line of Python. ``_held_in_one_call`` has checked that the watchdog
        looked at least ``threshold_s`` later than it meant to. Two clocks tell the cases apart:

        * the loop's thread RAN a good part of the time. A thread waiting for the GIL (another
          thread holds it) sleeps; and a thread running Python hands the GIL over as soon as
          it runs after being asked, so a loop of short callbacks holds the watchdog off for
          long only while the OS has taken the CPU from it (a loaded machine), running next
          to nothing meanwhile. Measured at a load of 8 on 2 cores: catastrophic regexes of
          0.7-2.2 s ran 25-72% of the time; a busy loop of short callbacks seen late, and a
          loop while a regex ran in another thread, ran less than they had been allowed
          before the beat was due;
        * the looking thread was switched out again and again while it waited
          (``switched_since``: its ``own_switches()`` from before its wait): a thread waiting
          for the GIL wakes at every switch interval (5 ms) to ask for it.

        CPU the loop's thread may have spent between the previous look and the beat's due
        time counts against the proof."""
        if mark is None or reading is None or switched_since is None:
            return False
        then, ran_then, _ = mark
        now, ran, switches = reading
        span = now - max(due, then)
        if span < self.threshold_s:
            return False
        loop_ran = ran - ran_then - max(0.0, due - then)
        return loop_ran >= LOOP_RAN_SHARE * span and switches - switched_since >= WATCHDOG_RUNS

    def _busy(self, now: float) -> bool:
        if self.precise:
            start = self.cb_start
            return bool(start) and now - start >= self.sample_s
        return now - self.due >= self.sample_s

    def _next(self, now: float) -> float:
        wake = self.due + self.sample_s
        if self.precise and self.cb_start:
            wake = min(wake, self.cb_start + self.sample_s)
        if wake == math.inf:
            return now + IDLE_POLL_S
        return max(wake, now + self.look_s)

    def _end(self, episode: Episode, end: float) -> None:
        self.episode = None
        if episode.reported:
            episode.end = max(end, episode.since)
            self.sink.ended(self, episode)

    def close(self) -> None:
        """The loop is closed or gone: a block still open ends at its last sample."""
        with self.lock:
            episode = self.episode
            if episode is not None:
                self._end(episode, episode.last_seen)
            self.forget()

    def forget(self) -> None:
        """Drop any block in progress without reporting it (uninstall, fork)."""
        self.episode = None
        self.cb_start = 0.0
        self.paused = True
