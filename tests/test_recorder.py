"""The Recorder: histograms, sampling weights, the key cap and folding of finished loops."""

from __future__ import annotations

import bisect
import random
import sys
import threading

import pytest

from asyncwatch._core.measure import FINE_BOUNDS, Histogram
from asyncwatch._core.names import OVERFLOW, TIMING_BOUNDS
from asyncwatch.tasks import _path
from asyncwatch.tasks._path import TaskStats
from asyncwatch.tasks._recorder import Recorder


def test_every_exported_bound_is_on_the_fine_grid() -> None:
    """Re-binning to the exported bounds is exact because each is a fine bound."""
    assert set(TIMING_BOUNDS) <= set(FINE_BOUNDS)


def test_quantiles_track_the_data_within_a_bucket() -> None:
    """Percentiles of a known distribution come out within one fine bucket (25 %)."""
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(-6, 1.5) for _ in range(20_000))
    h = Histogram()
    for v in values:
        h.add(v)
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        estimate = h.quantile(q)
        assert estimate is not None
        assert exact / 1.3 <= estimate <= exact * 1.3, (q, exact, estimate)
    assert h.max == values[-1]
    assert h.min == values[0]


def test_weights_stand_for_skipped_tasks() -> None:
    """A sample of weight w counts as w observations in totals and sums."""
    h = Histogram()
    h.add(0.002, weight=10)
    h.add(0.004, weight=30)
    assert h.total == 40
    assert h.sum == pytest.approx(0.002 * 10 + 0.004 * 30)
    counts, total_sum, count = h.cumulative(TIMING_BOUNDS)
    assert count == 40 and sum(counts) == 40
    assert total_sum == pytest.approx(h.sum)


def test_cumulative_rebins_bucket_by_bucket() -> None:
    """A value lands in the exported bucket whose upper bound is the first >= it."""
    h = Histogram()
    h.add(0.001)  # exactly on a bound: belongs to that bucket (le semantics)
    h.add(0.0011)
    counts, _, _ = h.cumulative(TIMING_BOUNDS)
    i = TIMING_BOUNDS.index(0.001)
    assert counts[i] == 1
    assert counts[i + 1] == 1


def test_histogram_keeps_only_the_buckets_it_hit() -> None:
    """Sparse counts (two per coroutine name, up to max_keys names): a handful of buckets, not
    the grid's 112, and the same re-binned counts as a dense count of the same values."""
    rng = random.Random(3)
    values = [rng.choice((0.0004, 0.0011, 0.002, 0.05, 9000.0)) * rng.uniform(0.9, 1.1)
              for _ in range(500)]
    h = Histogram()
    for v in values:
        h.add(v)
    assert 0 < len(h.bins) <= 10
    dense = [0] * (len(FINE_BOUNDS) + 1)
    for v in values:
        dense[bisect.bisect_left(FINE_BOUNDS, v)] += 1
    assert h.counts == dense
    exported, _, total = h.cumulative(TIMING_BOUNDS)
    assert total == 500 and sum(exported) == 500
    assert exported[-1] == sum(1 for v in values if v > TIMING_BOUNDS[-1]) > 0
    assert h.bins == {i: c for i, c in enumerate(dense) if c} and h.total == 500


def test_histogram_readers_on_another_thread_never_break() -> None:
    """The console, advisor and exporter read a coroutine's histogram from their threads
    while the loop's thread adds buckets: copies, merges, quantiles and re-binning see a
    consistent set of buckets and never raise (a dict changing size while iterated would)."""
    h = Histogram()
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                other = Histogram()
                other.merge(h)
                h.copy().quantile(0.99)
                h.cumulative(TIMING_BOUNDS)
                assert sum(h.counts) >= 0
            except BaseException as exc:  # collected for the assertion
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    reader.start()
    try:
        for round_ in range(1000):
            h.bins.clear()
            for v in FINE_BOUNDS:
                h.add(v * (1 + round_ % 3) / 3)
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert not errors, errors


def test_stride_adapts_to_the_rate() -> None:
    """At 100,000 tasks/s with a 200/s target, about 200 tasks a second are timed."""
    stats = TaskStats("k", 200.0, 5, 0.0)
    now = stats.win_t
    timed_in_second_two = 0
    for created in range(1, 200_001):  # two seconds at 100,000 tasks/s
        now += 1e-5
        if created >= stats.sample_at:
            if created > 100_000:
                timed_in_second_two += 1
            stats.schedule_sample(now, created)
    assert 400 <= stats.stride <= 600
    assert 100 <= timed_in_second_two <= 400
    assert stats.weight >= 1


def test_a_first_burst_is_not_timed_task_by_task() -> None:
    """A fresh coroutine's burst (10,000 tasks in 0.1 s: a new loop, a short program) adapts
    the stride after _WINDOW_N tasks instead of timing every task for a whole window."""
    stats = TaskStats("burst", 200.0, 5, 0.0)
    now = stats.win_t
    timed = 0
    for created in range(1, 10_001):
        now += 1e-5
        if created >= stats.sample_at:
            timed += 1
            stats.schedule_sample(now, created)
    assert timed < 2 * _path._WINDOW_N  # the old rule timed all 10,000 (0.1 s < _WINDOW_S)
    assert stats.stride > 100  # 100,000 tasks/s against 200/s
    assert stats.memo["burst"] == stats.stride  # the next loop starts from it


def test_key_cap_folds_extra_names_into_other() -> None:
    """Past max_keys, new names are admitted as _OTHER and counted as overflowed."""
    rec = Recorder(max_keys=3)
    admitted = [rec.admit(f"k{i}") for i in range(10)]
    assert admitted[:3] == ["k0", "k1", "k2"]
    assert set(admitted[3:]) == {OVERFLOW}
    assert rec.overflowed == 7
    assert rec.key_count() == 4


def test_retired_loop_keeps_counters_monotonic() -> None:
    """A shard whose loop is gone is folded in: totals stay, in-flight drops out."""
    rec = Recorder()
    shard = rec.new_shard("l1")
    stats = rec.make_stats("k")
    shard.stats["k"] = stats
    stats.created, stats.done, stats.failed, stats.peak = 10, 8, 1, 4
    before = rec.snapshot()["k"]
    assert (before.created, before.in_flight, before.ok, before.peak) == (10, 2, 7, 4)
    rec.retire(shard)
    after = rec.snapshot()["k"]
    assert (after.created, after.in_flight, after.ok, after.peak) == (10, 0, 7, 4)
    assert sum(after.errors.values()) == 0  # errors are counted by type in on_done only


def test_done_callback_errors_go_to_the_recorders_fault_sink() -> None:
    """An error of asyncwatch's own in a done-callback is reported to the sink the Recorder
    was built with (the Watch's), and never raised into the app's loop."""
    reported: list[tuple[str, BaseException]] = []
    rec = Recorder(fault_sink=lambda hook, exc: reported.append((hook, exc)))
    stats = rec.make_stats("k")

    class Broken:
        def cancelled(self) -> bool:
            raise RuntimeError("broken")

    stats.on_done(Broken())
    assert [(hook, str(exc)) for hook, exc in reported] == [("task_done", "broken")]


def test_after_fork_renews_a_lock_held_at_fork_time() -> None:
    """In a forked child the Recorder takes a new lock of its own and starts from zero, even
    when the old lock was held (by a thread that does not exist in the child)."""
    rec = Recorder()
    shard = rec.new_shard("l1")
    shard.stats["k"] = rec.make_stats("k")
    rec.admit("k")
    rec._lock.acquire()  # as if another thread held it when the process forked
    rec.after_fork()
    assert rec.snapshot() == {}
    assert rec.key_count() == 0
