"""The blocked-loop decision (``LoopMonitor``) driven by a manual clock and synthetic samples."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from asyncwatch._core import names as n
from asyncwatch._core.stacks import Sample, sample_thread
from asyncwatch.loopwatch._blocked import LONG_BLOCK_S, Episode, LoopMonitor
from asyncwatch.loopwatch._limits import LogLimiter
from asyncwatch.loopwatch._points import CulpritCounts
from asyncwatch.testing import ManualClock

THRESHOLD = 0.1


class Sink:
    """Records what the monitor reports, with the episode's figures at that moment."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []  # (what, since, duration)

    def detected(self, monitor: LoopMonitor, ep: Episode, now: float, sample: Any) -> None:
        self.events.append(("detected", ep.since, now - ep.since))

    def still_blocked(self, monitor: LoopMonitor, ep: Episode, now: float) -> None:
        ep.logged = True
        self.events.append(("still", ep.since, now - ep.since))

    def ended(self, monitor: LoopMonitor, ep: Episode) -> None:
        self.events.append(("ended", ep.since, ep.duration))

    def unseen(self, monitor: LoopMonitor, since: float, duration: float) -> None:
        self.events.append(("unseen", since, duration))


def sampler_of(keys: list[Any]) -> Callable[[LoopMonitor], Sample | None]:
    """A sampler returning the given callback keys in turn (None: no callback holds it)."""

    def sample(monitor: LoopMonitor) -> Sample | None:
        key = keys.pop(0)
        return Sample(None if key is None else (key,), [], 0)

    return sample


def never(monitor: LoopMonitor) -> Sample | None:
    raise AssertionError("the loop was sampled although its heartbeat was on time")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(100.0)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def monitor(clock: ManualClock, sink: Sink) -> LoopMonitor:
    m = LoopMonitor("loop-1", threshold_s=THRESHOLD, clock=clock, sink=sink)
    m.beat()  # first beat: the loop is running; no lag recorded
    return m


def test_intervals_follow_the_threshold() -> None:
    """Heartbeat every min(25 ms, threshold/4); samples every min(10 ms, threshold/4); a loop
    keeping time is looked at every threshold/2."""
    m = LoopMonitor("x", threshold_s=0.1, clock=ManualClock(), sink=Sink())
    assert (m.interval_s, m.sample_s, m.look_s) == (0.025, 0.01, 0.05)
    m = LoopMonitor("x", threshold_s=0.02, clock=ManualClock(), sink=Sink())
    assert (m.interval_s, m.sample_s, m.look_s) == (0.005, 0.005, 0.01)


def test_punctual_loop_is_never_sampled(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """A loop whose heartbeat runs on time is only looked at, never sampled."""
    for _ in range(50):
        wake = monitor.check(clock.now, True, never)
        assert wake == pytest.approx(clock.now + THRESHOLD / 2)  # looks at it every threshold/2
        clock.advance(monitor.interval_s)
        monitor.beat()
    assert sink.events == []
    assert monitor.lag.total == 50 and monitor.lag.max == 0.0


def test_lag_is_how_late_the_beat_ran(monitor: LoopMonitor, clock: ManualClock) -> None:
    """Each beat records how long after its due time it ran."""
    clock.advance(monitor.interval_s + 0.004)
    assert monitor.beat() == pytest.approx(0.004)
    assert monitor.lag.max == pytest.approx(0.004)


def test_slightly_late_loop_is_not_sampled(monitor: LoopMonitor, clock: ManualClock) -> None:
    """Lateness under one sample interval is timer slack, not a busy loop."""
    clock.now = monitor.due + monitor.sample_s * 0.9
    monitor.check(clock.now, True, never)


def test_one_callback_holding_the_loop_is_a_block(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """Reported once, as soon as one callback has held the loop past the threshold; closed
    when the heartbeat runs again, dated from the overdue beat to the beat that came back."""
    due = monitor.due
    keys = ["cb"] * 30
    clock.now = due + monitor.sample_s
    monitor.check(clock.now, True, sampler_of(keys))
    assert sink.events == []
    while clock.now - due <= THRESHOLD:
        clock.advance(monitor.sample_s)
        monitor.check(clock.now, True, sampler_of(keys))
    assert [e[0] for e in sink.events] == ["detected"]
    assert sink.events[0][1] == due
    for _ in range(5):
        clock.advance(monitor.sample_s)
        monitor.check(clock.now, True, sampler_of(keys))
    assert len(sink.events) == 1  # not reported again while it lasts
    clock.advance(0.003)
    came_back = clock.now
    monitor.beat()
    clock.advance(0.002)
    monitor.check(clock.now, True, never)
    assert sink.events[-1] == ("ended", due, pytest.approx(came_back - due))


def test_confirmed_block_is_looked_at_when_it_crosses_the_threshold(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """Once a callback is confirmed, the next look is when it will pass the threshold (if
    that comes before the next sample), so the report is not late by a sample interval."""
    due = monitor.due
    keys = ["cb"] * 20
    clock.now = due + 0.065  # a first look on schedule (the block dates from due)
    wake = monitor.check(clock.now, True, sampler_of(keys))
    while wake < due + THRESHOLD:
        clock.now = wake
        wake = monitor.check(clock.now, True, sampler_of(keys))
    assert clock.now + monitor.sample_s > due + THRESHOLD + 0.001  # a sample would be late
    assert wake == pytest.approx(due + THRESHOLD + 0.001)
    clock.now = wake
    monitor.check(clock.now, True, sampler_of(keys))
    assert sink.events == [("detected", due, pytest.approx(THRESHOLD + 0.001))]


def test_many_short_callbacks_are_not_a_block(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """A loop late by ten thresholds running a different callback at every sample (a busy
    but healthy loop working through a backlog) produces no block."""
    due = monitor.due
    clock.now = due + monitor.sample_s
    keys = [f"cb{i}" for i in range(200)]
    while clock.now - due < 10 * THRESHOLD:
        monitor.check(clock.now, True, sampler_of(keys))
        clock.advance(monitor.sample_s)
    monitor.beat()
    monitor.check(clock.now, True, never)
    assert sink.events == []


def test_late_first_look_dates_the_block_from_first_sight(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """If the watchdog itself first looks long after the beat fell due (starved of CPU), the
    callback it catches is not blamed for the lateness before: it counts from first sight."""
    due = monitor.due
    clock.now = due + 3 * THRESHOLD
    keys = ["cb"] * 30
    first_seen = clock.now
    monitor.check(clock.now, True, sampler_of(keys))
    clock.advance(monitor.sample_s)
    monitor.check(clock.now, True, sampler_of(keys))
    assert sink.events == []
    while clock.now - first_seen <= THRESHOLD:
        clock.advance(monitor.sample_s)
        monitor.check(clock.now, True, sampler_of(keys))
    assert sink.events == [("detected", first_seen, pytest.approx(clock.now - first_seen))]


def test_single_sample_is_not_enough(monitor: LoopMonitor, clock: ManualClock, sink: Sink) -> None:
    """A callback seen once, even late, is not reported (it may be one of many short ones)."""
    clock.now = monitor.due + monitor.sample_s
    monitor.check(clock.now, True, sampler_of(["a"]))
    assert sink.events == []
    clock.advance(monitor.sample_s)
    monitor.check(clock.now, True, sampler_of(["b"]))
    assert sink.events == []


def test_later_callback_in_a_busy_stretch_is_dated_from_first_sight(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """After a backlog, a long callback counts from when it was first seen, not from the
    overdue beat, so the backlog is not blamed on it."""
    due = monitor.due
    clock.now = due + monitor.sample_s
    keys = ["a", "b", "c"] + ["long"] * 40
    for _ in range(3):
        monitor.check(clock.now, True, sampler_of(keys))
        clock.advance(monitor.sample_s)
    first_seen = clock.now
    monitor.check(clock.now, True, sampler_of(keys))
    while clock.now - first_seen <= THRESHOLD:
        assert sink.events == []
        clock.advance(monitor.sample_s)
        monitor.check(clock.now, True, sampler_of(keys))
    assert sink.events == [("detected", first_seen, pytest.approx(clock.now - first_seen))]


def test_block_followed_by_another_callback_ends_between_samples(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """When another callback is seen holding the loop, the block ended between the two
    samples."""
    due = monitor.due
    clock.now = due + monitor.sample_s
    keys = ["a"] * 15 + ["b"]
    while keys[0] == "a":
        monitor.check(clock.now, True, sampler_of(keys))
        last = clock.now
        clock.advance(monitor.sample_s)
    monitor.check(clock.now, True, sampler_of(keys))
    assert sink.events[-1] == ("ended", due, pytest.approx((last + clock.now) / 2 - due))


def test_stopped_loop_is_not_blocked_and_its_gap_is_not_lag(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """A loop that stopped running (run_until_complete returned) is no block, and the first
    beat after it runs again records no lag."""
    clock.now = monitor.due + 5.0
    monitor.check(clock.now, False, never)
    assert sink.events == []
    lags = monitor.lag.total
    assert monitor.beat() is None
    assert monitor.lag.total == lags


def test_block_open_when_the_loop_stops_ends_at_last_sample(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """A block whose loop stops right after it (no beat ran) ends at its last sample."""
    due = monitor.due
    clock.now = due + monitor.sample_s
    keys = ["a"] * 20
    while not sink.events:
        monitor.check(clock.now, True, sampler_of(keys))
        last = clock.now
        clock.advance(monitor.sample_s)
    monitor.check(clock.now + 1.0, False, never)
    assert sink.events[-1] == ("ended", due, pytest.approx(last - due))


def test_long_block_is_announced_while_it_lasts(
    monitor: LoopMonitor, clock: ManualClock, sink: Sink
) -> None:
    """A block still holding the loop after LONG_BLOCK_S is announced once, not at its end."""
    due = monitor.due
    clock.now = due + monitor.sample_s
    keys = ["a"] * 1000
    while clock.now - due < LONG_BLOCK_S + 0.5:
        monitor.check(clock.now, True, sampler_of(keys))
        clock.advance(monitor.sample_s)
    assert [e[0] for e in sink.events] == ["detected", "still"]
    assert sink.events[1][2] >= LONG_BLOCK_S


def test_precise_slow_callback_unseen_by_the_watchdog(clock: ManualClock, sink: Sink) -> None:
    """Precise mode reports a slow callback the watchdog never sampled, timed exactly."""
    m = LoopMonitor("x", threshold_s=THRESHOLD, clock=clock, sink=sink, precise=True)
    m.beat()
    m.slow_callback(handle=None, start=100.01, elapsed=0.12)
    assert sink.events == [("detected", 100.01, pytest.approx(0.12)),
                           ("ended", 100.01, pytest.approx(0.12))]


def test_precise_block_is_dated_exactly_and_reported_once(clock: ManualClock, sink: Sink) -> None:
    """With callback start stamps the watchdog dates the block from the callback's start,
    needs no second sample, and the callback's own end closes it exactly (once)."""
    m = LoopMonitor("x", threshold_s=THRESHOLD, clock=clock, sink=sink, precise=True)
    m.beat()
    start = clock.now + 0.002
    m.cb_start = start

    def precise_sample(monitor: LoopMonitor) -> Sample:
        return Sample((monitor.cb_start,), [], 0, since=monitor.cb_start)

    clock.now = start + THRESHOLD / 2
    m.check(clock.now, True, precise_sample)
    assert sink.events == []
    clock.now = start + THRESHOLD + 0.001
    m.check(clock.now, True, precise_sample)
    assert sink.events == [("detected", start, pytest.approx(THRESHOLD + 0.001))]
    m.slow_callback(handle=None, start=start, elapsed=0.25)
    m.cb_start = 0.0
    clock.advance(0.2)
    m.check(clock.now, True, precise_sample)
    assert sink.events[1:] == [("ended", start, pytest.approx(0.25))]


def test_log_limiter_allows_a_burst_then_one_per_interval(clock: ManualClock) -> None:
    """10 lines at once, then one per 6 s, and the next line says how many were held back."""
    limiter = LogLimiter(clock, burst=10, every_s=6.0)
    assert [limiter.allow() for _ in range(10)] == [0] * 10
    assert [limiter.allow() for _ in range(5)] == [None] * 5
    clock.advance(6.0)
    assert limiter.allow() == 5
    assert limiter.allow() is None


def test_culprit_lines_are_capped() -> None:
    """Past max_culprits distinct lines, blocks are counted under _OTHER."""
    counts = CulpritCounts(cap=2)
    for line in (1, 2, 3, 4, 1):
        counts.add(("app.py", line, "f"), 0.2)
    points = {(p[1][n.CODE_LINE], p[0].name): p[2] for p in counts.points()}
    assert points[(1, n.LOOP_BLOCKED.name)] == 2
    assert points[(2, n.LOOP_BLOCKED.name)] == 1
    assert points[(0, n.LOOP_BLOCKED.name)] == 2
    assert len({line for line, _ in points}) == 3


def test_bad_threshold_fails_naming_the_setting() -> None:
    """A threshold that is not a number, or out of range, fails at once naming the setting."""
    from asyncwatch import Config, ConfigError

    with pytest.raises(ConfigError, match="ASYNCWATCH_BLOCK_THRESHOLD_S='fast'"):
        Config.from_env({"ASYNCWATCH_BLOCK_THRESHOLD_S": "fast"})
    with pytest.raises(ConfigError, match="ASYNCWATCH_BLOCK_THRESHOLD_S='0'"):
        Config.from_env({"ASYNCWATCH_BLOCK_THRESHOLD_S": "0"})
    with pytest.raises(ConfigError, match="block_threshold_s"):
        Config(block_threshold_s=-1)
    with pytest.raises(ConfigError, match="ASYNCWATCH_PRECISE_CALLBACKS"):
        Config.from_env({"ASYNCWATCH_PRECISE_CALLBACKS": "yes"})
    assert Config.from_env({"ASYNCWATCH_BLOCK_THRESHOLD_S": "0.25"}).block_threshold_s == 0.25


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ never collects inside the call")
def test_no_garbage_collection_inside_current_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """On 3.11 the watchdog's stack sample runs with the collector off (gh-106883: a
    collection freeing a threading.local inside sys._current_frames() deadlocks), and the
    collector is back on afterwards, or left off if the app had turned it off."""
    real = sys._current_frames
    seen: list[bool] = []

    def spy() -> dict[int, Any]:
        seen.append(gc.isenabled())
        return real()

    monkeypatch.setattr(sys, "_current_frames", spy)
    assert gc.isenabled()
    sample = sample_thread(threading.get_ident(), 1)
    assert sample is not None
    names = [f.f_code.co_name for f in sample.chain]
    assert names[-3:] == ["sample_thread", "current_frames", "spy"]  # this thread, sampled
    assert seen == [False]
    assert gc.isenabled()
    gc.disable()
    try:
        sample_thread(threading.get_ident(), 1)
        assert seen == [False, False]
        assert not gc.isenabled()  # the app's choice is kept
    finally:
        gc.enable()
