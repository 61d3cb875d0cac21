"""Blocks inside C code that holds the GIL: the watchdog thread cannot sample them while they
last. By default the watchdog names them the moment the call returns, its late look proven a
block by the loop thread's CPU clock (``LoopMonitor._held_computing``); with ``gil_watch`` on,
a faulthandler dump names them while they last (asyncwatch.loopwatch._gilwatch)."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch
from asyncwatch._core.stacks import Sample
from asyncwatch.loopwatch._blocked import BlockedLoop, LoopMonitor, ThreadClock, thread_clock
from asyncwatch.loopwatch._gilwatch import parse_dump
from asyncwatch.testing import ManualClock

from .conftest import marked_line, strict_watch, wait_for
from .test_blocked import Sink
from .test_loopwatch import start_loop

SOURCE = Path(__file__).resolve()
EVIL = re.compile(r"(a+)+$")


def catastrophic(n: int) -> None:
    EVIL.match("a" * n + "b")  # held in C


def size_holding_for(seconds: float) -> int:
    """A catastrophic input size that holds the GIL for at least ``seconds`` on this machine
    (each extra character doubles the time), measured before anything is watched."""
    n = 16
    while True:
        began = time.perf_counter()
        catastrophic(n)
        if time.perf_counter() - began > seconds:
            return n + 1
        n += 1


def parse(document: str) -> int:
    return len(json.loads(document))  # a large document


async def watched(then: Callable[[], object]) -> None:
    """Once the loop is watched (two heartbeats), run ``then`` on it and keep the loop running
    until its heartbeat has come back twice (so the block's length is known)."""
    loop = asyncio.get_running_loop()
    watch = asyncwatch.current()
    assert watch is not None
    deadline = loop.time() + 20
    monitor = watch.loops.monitor_of(loop)
    while monitor is None or monitor.beats < 2:
        assert loop.time() < deadline, "never watched"
        await asyncio.sleep(0.01)
        monitor = watch.loops.monitor_of(loop)
    beats = monitor.beats
    then()
    while monitor.beats < beats + 2:
        await asyncio.sleep(0.01)


def reported() -> list[BlockedLoop]:
    return [f for f in asyncwatch.findings("blocked_loop") if isinstance(f, BlockedLoop)]


async def block_in_c(n: int) -> None:
    """Once the loop is watched (two heartbeats, the timer armed since), block in C."""
    watch = asyncwatch.current()
    assert watch is not None
    monitor = watch.loops.monitor_of(asyncio.get_running_loop())
    deadline = asyncio.get_running_loop().time() + 20
    while monitor is None or monitor.beats < 2 or not watch.loops.gil.armed_at:
        assert asyncio.get_running_loop().time() < deadline, "never watched"
        await asyncio.sleep(0.01)
        monitor = watch.loops.monitor_of(asyncio.get_running_loop())
    beats = monitor.beats
    catastrophic(n)
    # The loop keeps running until its heartbeat has come back (a loop closed at once never
    # says how long it was held).
    while monitor.beats < beats + 2:
        await asyncio.sleep(0.01)


def test_parse_dump_reads_every_thread() -> None:
    text = (
        "Timeout (0:00:00.150000)!\n"
        "Thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/usr/lib/python3.11/threading.py", line 320 in wait\n'
        "\n"
        "Thread 0x00007f0000000002 (most recent call first):\n"
        '  File "/srv/app.py", line 12 in parse\n'
        '  File "/srv/app.py", line 30 in handler\n'
    )
    threads = parse_dump(text)
    assert threads[0x7F0000000002] == [("/srv/app.py", 30, "handler"), ("/srv/app.py", 12, "parse")]
    assert threads[0x7F0000000001] == [("/usr/lib/python3.11/threading.py", 320, "wait")]


def test_parse_dump_reads_thread_names_of_3_14() -> None:
    """Python 3.14's faulthandler names each thread in brackets after its id (a name that
    may itself hold brackets or spaces): the frames are read all the same."""
    text = (
        "Timeout (0:00:00.150001)!\n"
        "Thread 0x00007f965651c6c0 [app-loop] (most recent call first):\n"
        '  File "/srv/app.py", line 32 in catastrophic\n'
        '  File "/srv/app.py", line 84 in block_in_c\n'
        "\n"
        "Current thread 0x00007f96593ae400 [worker [2] x] (most recent call first):\n"
        '  File "/usr/lib/python3.14/threading.py", line 1133 in join\n'
    )
    threads = parse_dump(text)
    assert threads[0x7F965651C6C0] == [("/srv/app.py", 84, "block_in_c"),
                                       ("/srv/app.py", 32, "catastrophic")]
    assert threads[0x7F96593AE400] == [("/usr/lib/python3.14/threading.py", 1133, "join")]


def test_regex_holding_the_gil_is_named(watch: asyncwatch.Watch) -> None:
    """A catastrophic re.match holds the GIL (no sample can be taken) for several times the
    threshold: the finding names its line from faulthandler's dump."""
    threshold = watch.config.block_threshold_s
    n = 16
    while True:  # a size that holds the GIL for 5x the threshold on this machine, whatever it is
        loop = asyncio.new_event_loop()
        began = loop.time()
        catastrophic(n)
        took = loop.time() - began
        loop.close()
        if took > 5 * threshold:
            break
        n += 1
    thread = start_loop(lambda: block_in_c(n + 1))
    thread.join(60)
    found = wait_for(
        lambda: [f for f in asyncwatch.findings("blocked_loop") if isinstance(f, BlockedLoop)],
        what=f"the GIL-holding block reported (dumps read: {watch.loops.gil.dumps})",
    )
    [finding] = found
    assert finding.culprit is not None
    assert Path(finding.culprit.filename).resolve() == SOURCE
    assert finding.culprit.lineno == marked_line(SOURCE, "held in C")
    assert finding.duration_s > threshold
    assert watch.loops.gil.dumps >= 1


def test_an_app_using_the_timer_gets_it(watch: asyncwatch.Watch, tmp_path: Path) -> None:
    """The app arming faulthandler's later-timer itself: asyncwatch gives it up for good and
    the app's call goes through unchanged."""
    with open(tmp_path / "dump.txt", "w") as out:
        faulthandler.dump_traceback_later(3600, file=out)
        assert watch.loops.gil.yielded
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def watch(reader: InMemoryMetricReader) -> Iterator[asyncwatch.Watch]:
    """The suite's strict install, with the GIL watch turned on (it is opt-in)."""
    yield from strict_watch(reader, gil_watch=True)


@pytest.fixture(autouse=True)
def _timer_restored() -> object:
    yield None
    assert not hasattr(faulthandler.dump_traceback_later, "__wrapped__")


def test_gil_watch_is_off_by_default_and_leaves_the_timer_alone() -> None:
    """By default (``gil_watch`` off: the timer's dump reads other threads' frames without the
    GIL), faulthandler's functions are the originals and asyncwatch never arms the timer."""
    original = faulthandler.dump_traceback_later
    watch = asyncwatch.install(metrics_exporters=("none",))
    try:
        assert faulthandler.dump_traceback_later is original
        assert not watch.loops.gil.active

        async def main() -> None:
            monitor = watch.loops.monitor_of(asyncio.get_running_loop())
            assert monitor is not None
            while monitor.beats < 3:
                await asyncio.sleep(0.01)

        asyncio.run(main())
        assert not watch.loops.gil.armed_at
    finally:
        asyncwatch.uninstall(timeout_s=2)


# ------------------------------------------------------------- default mode (no gil_watch)


def blocks_until_named(block: Callable[[], object]) -> list[BlockedLoop]:
    """Run ``block`` on a watched loop: it is always reported. Named when a thread of
    asyncwatch got the GIL before the loop's thread took it back; should another thread
    get it first (none does here, but the OS picks which waiting thread wakes), the block is
    reported unnamed, and tried again (up to three times)."""
    for _ in range(3):
        thread = start_loop(lambda: watched(block))
        thread.join(60)
        found = wait_for(reported, timeout=30, what="the GIL-holding block reported")
        named = [f for f in found if f.culprit is not None]
        if named:
            return named
        asyncwatch.current().findings.clear()  # type: ignore[union-attr]
    raise AssertionError("three GIL-holding blocks, none named")


def test_regex_holding_the_gil_is_named_by_default(reader: InMemoryMetricReader) -> None:
    """Default settings: a catastrophic re.match holding the GIL for several thresholds is
    reported, naming its line, as soon as it returns."""
    n = size_holding_for(0.5)
    for _ in strict_watch(reader, block_threshold_s=0.1):
        [finding] = blocks_until_named(lambda: catastrophic(n))
        assert finding.culprit is not None
        assert Path(finding.culprit.filename).resolve() == SOURCE
        assert finding.culprit.lineno == marked_line(SOURCE, "held in C")
        assert finding.duration_s > 0.1
        assert "held the GIL" in finding.summary
        assert finding.task is not None  # looked up while the loop was still there


def test_json_loads_of_a_large_document_is_named_by_default(
    reader: InMemoryMetricReader,
) -> None:
    document = json.dumps([{"k": i, "v": [i, str(i)]} for i in range(300_000)])
    began = time.perf_counter()
    parse(document)
    took = time.perf_counter() - began
    threshold = max(0.02, took / 5)  # the parse holds the loop for about 5 thresholds
    for _ in strict_watch(reader, block_threshold_s=threshold):
        found = blocks_until_named(lambda: parse(document))
        assert any(
            f.culprit is not None
            and Path(f.culprit.filename).resolve() == SOURCE
            and f.culprit.lineno == marked_line(SOURCE, "a large document")
            for f in found
        ), [f.summary for f in found]


@pytest.fixture
def fast_watch(reader: InMemoryMetricReader) -> Iterator[asyncwatch.Watch]:
    """The suite's strict install, defaults otherwise, a 0.1 s block threshold."""
    yield from strict_watch(reader, block_threshold_s=0.1)


def test_another_thread_holding_the_gil_is_not_the_loops_block(
    fast_watch: asyncwatch.Watch,
) -> None:
    """A catastrophic regex in a worker thread stalls the loop too (it waits for the GIL), but
    the loop's own thread did not compute meanwhile: no block is reported against the loop."""
    n = size_holding_for(0.5)
    watch = fast_watch
    started = threading.Event()

    def hog() -> None:
        started.set()
        catastrophic(n)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        monitor = watch.loops.monitor_of(loop)
        while monitor is None or monitor.beats < 2:
            await asyncio.sleep(0.01)
            monitor = watch.loops.monitor_of(loop)
        worker = threading.Thread(target=hog)
        worker.start()
        started.wait()
        while worker.is_alive():
            await asyncio.sleep(0.005)  # the loop stays idle but for its own timers
        beats = monitor.beats
        while monitor.beats < beats + 3:
            await asyncio.sleep(0.01)
        worker.join()

    thread = start_loop(main)
    thread.join(60)
    blamed = [f for f in reported() if f.culprit is not None
              and Path(f.culprit.filename).resolve() == SOURCE]
    assert not [f for f in blamed if "held the GIL" in f.summary], [
        f.summary for f in blamed
    ]


def _proof(ran: float, watchdog_switches: int = 100, *, late: float = 0.5,
           ran_before_due: float = 0.0) -> bool:
    """The decision for a look ``late`` seconds after the beat was due, the previous look
    25 ms before it, with what the two threads' clocks say happened meanwhile: the loop's
    thread ``ran`` (CPU seconds); the watchdog was switched out ``watchdog_switches`` times."""
    monitor = LoopMonitor("loop", threshold_s=0.1, clock=time.monotonic, sink=None)  # type: ignore[arg-type]
    then = 100.0
    monitor.due = then + 0.025
    mark = (then, 5.0, 70)
    reading = (monitor.due + late, 5.0 + ran_before_due + ran, 70 + watchdog_switches)
    return monitor._held_computing(mark, reading, monitor.due, 70)


@pytest.mark.parametrize(
    ("ran", "watchdog_switches", "proven"),
    [
        (0.5, 100, True),  # a quiet machine: the call computed all along
        (0.125, 100, True),  # a loaded one (load 8 on 2 cores: ran 25-72%)
        (0.0, 100, False),  # hardly ran: the OS took its CPU, or another thread had the GIL
        (0.5, 3, False),  # the watchdog did not keep asking for the GIL
    ],
)
def test_the_thread_clock_proof(ran: float, watchdog_switches: int, proven: bool) -> None:
    assert _proof(ran, watchdog_switches) is proven


def test_what_ran_before_the_beat_was_due_never_counts() -> None:
    assert _proof(0.125)
    # 0.085 s run in all, 0.06 of it after the beat was due: enough, were the rest counted
    assert not _proof(0.06, ran_before_due=0.025)


def test_a_late_look_shorter_than_the_threshold_proves_nothing() -> None:
    assert not _proof(0.05, late=0.05)


def test_a_watchdog_not_held_back_proves_nothing() -> None:
    """A first look at a busy stretch, late after the beat was due but on time for the
    watchdog's own plan (it meant to sleep that long): not a GIL-holding call, whatever the
    clocks would say."""
    monitor = LoopMonitor("loop", threshold_s=0.1, clock=time.monotonic, sink=None)  # type: ignore[arg-type]
    monitor.due = 100.025
    monitor._clock_mark = (100.0, 5.0, 0)
    monitor._asked = 100.2
    reading = (100.23, 5.2, 100)  # the loop's thread computed all along, the watchdog waited
    assert monitor._held_in_one_call(100.23, monitor.due, reading, 0) is None
    monitor._asked = 100.1  # held back 130 ms: now it is proven
    assert monitor._held_in_one_call(100.23, monitor.due, reading, 0) == monitor.due


def test_the_clock_reads_the_thread_it_was_made_on() -> None:
    """The clock made on a thread reads THAT thread (it grows while the thread computes, not
    while the reading thread waits), and raises OSError once the thread has exited."""
    made: list[ThreadClock | None] = []
    spin = threading.Event()
    stop = threading.Event()

    def target() -> None:
        made.append(thread_clock())
        spin.set()
        x = 0
        while not stop.is_set():
            x += 1

    worker = threading.Thread(target=target)
    worker.start()
    spin.wait()
    clock = made[0]
    assert clock is not None, "no thread clock on this machine"
    first = clock.read()
    deadline = time.monotonic() + 30
    while clock.read() - first < 0.05:  # the worker computes: its clock moves
        assert time.monotonic() < deadline
        stop.wait(0.01)
    stop.set()
    worker.join()
    # The kernel lets go of the thread a moment after join returns.
    deadline = time.monotonic() + 30
    gone = None
    while gone is None and time.monotonic() < deadline:
        try:
            clock.read()
        except OSError as exc:
            gone = exc
        stop.wait(0.001)
    assert gone is not None, "the clock still reads a thread that has exited"


# ------------------------------------------- the race after a call that held the GIL returns
#
# When such a call returns, whichever thread waiting for the GIL gets it first is the only
# one that can still see the loop's thread in that call. The loop's thread may take the GIL
# back before the watchdog gets it (measured on Python 3.13: the watchdog lost 3 blocks in 15
# that way, 5 in 12 with the advisor's sampler also waiting). Two answers, driven here by a
# manual clock with the threads' clocks scripted: another asyncwatch thread that gets the GIL
# first looks on the watchdog's behalf; a block nobody could look at is still reported, from
# the late beat and the clocks, without a name.


def held_monitor(
    readings: list[tuple[float, float, int]],
) -> tuple[LoopMonitor, Sink, ManualClock]:
    """A monitor on a manual clock, looked at by the watchdog at 100.0 (its thread's switch
    count then: 70), its next beat due at 100.025; ``readings`` are what the clocks say at
    each later look: (time, loop thread's CPU seconds, looking thread's switches)."""
    clock = ManualClock(100.0)
    sink = Sink()
    monitor = LoopMonitor("loop", threshold_s=0.1, clock=clock, sink=sink)  # type: ignore[arg-type]
    marks = [(100.0, 5.0, 70)]
    monitor._read_clocks = lambda: (marks or readings).pop(0)  # type: ignore[method-assign]
    monitor.beat()  # first beat: due at 100.025
    assert monitor.check(clock.now, True, no_sample, 70) == pytest.approx(100.05)
    return monitor, sink, clock


def no_sample(monitor: LoopMonitor) -> Sample | None:
    raise AssertionError("sampled")


def in_the_call(monitor: LoopMonitor) -> Sample:
    return Sample(("the call",), [], 0)


def test_a_block_back_before_any_look_is_reported_without_a_name() -> None:
    """The beat came back 0.975 s late before the watchdog could look; the watchdog was held
    back all along (it asked to look at 100.05), switched out 200 times meanwhile, and the
    loop's thread computed 0.95 s of it: one call held the GIL. Reported once."""
    monitor, sink, clock = held_monitor([(101.001, 5.95, 270)] * 3)
    clock.now = 101.0
    monitor.beat()  # the loop's thread got the GIL first
    clock.now = 101.001
    monitor.check(clock.now, True, no_sample, 70)
    assert sink.events == [("unseen", 100.025, pytest.approx(0.975))]
    clock.now = 101.01
    monitor.check(clock.now, True, no_sample, 70)
    assert len(sink.events) == 1


@pytest.mark.parametrize(
    ("reading", "asked", "unseen"),
    [
        ((101.001, 5.01, 270), None, True),  # the loop's thread hardly ran: it waited too
        ((101.001, 5.95, 72), None, True),  # the watchdog did not keep asking for the GIL
        ((101.001, 5.95, 270), 100.95, True),  # the watchdog meant to sleep that long
        ((101.001, 5.95, 270), None, False),  # the GIL watch names such blocks instead
    ],
)
def test_a_late_beat_alone_proves_nothing(reading: tuple[float, float, int],
                                          asked: float | None, unseen: bool) -> None:
    monitor, sink, clock = held_monitor([reading] * 3)
    monitor.unseen = unseen
    if asked is not None:
        monitor._asked = asked
    clock.now = 101.0
    monitor.beat()
    clock.now = 101.001
    monitor.check(clock.now, True, no_sample, 70)
    assert sink.events == []


def test_another_thread_looks_for_the_held_back_watchdog() -> None:
    """The advisor's sampler gets the GIL first: it takes the watchdog's look, with its own
    switch count, and the block is named from its sample, dated from the beat's due time. The
    watchdog's plan is left as it was; its next look closes the block."""
    monitor, sink, clock = held_monitor([(101.0, 5.95, 40)] * 3)
    clock.now = 101.0
    monitor.look_for_watchdog(clock.now, True, in_the_call, 35)  # its own count before waiting
    assert monitor._asked == pytest.approx(100.05)
    assert sink.events == [("detected", 100.025, pytest.approx(0.975))]
    clock.now = 101.001
    monitor.beat()
    clock.now = 101.002
    monitor.check(clock.now, True, no_sample, 70)
    assert sink.events[1:] == [("ended", 100.025, pytest.approx(0.976))]


def test_no_look_for_a_watchdog_that_is_not_held_back() -> None:
    monitor, sink, clock = held_monitor([])
    clock.now = 100.13  # overdue by a threshold, but the watchdog meant to look at 100.05
    monitor._asked = 100.1
    monitor.look_for_watchdog(clock.now, True, no_sample, 35)
    clock.now = 100.3
    monitor.beat()
    monitor.look_for_watchdog(clock.now, True, no_sample, 35)  # on time again
    assert sink.events == []


def test_a_look_that_proved_nothing_names_the_block_proven_later() -> None:
    """The other thread's look caught the call but could not prove it (that thread had not
    waited long enough: 2 switches); once the beat is back, the watchdog's clocks prove it,
    and the block is named from that look."""
    monitor, sink, clock = held_monitor([(101.0, 5.95, 37)] + [(101.002, 5.95, 270)] * 2)
    clock.now = 101.0
    monitor.look_for_watchdog(clock.now, True, in_the_call, 35)
    assert sink.events == []
    assert monitor.episode is not None and not monitor.episode.reported
    monitor.episode.counts[("app.py", 12, "parse")] = 1  # what a real sample would count
    clock.now = 101.001
    monitor.beat()
    clock.now = 101.002
    monitor.check(clock.now, True, no_sample, 70)
    assert sink.events == [("detected", 100.025, pytest.approx(0.977)),
                           ("ended", 100.025, pytest.approx(0.976))]


def test_the_loop_running_on_during_the_look_changes_nothing() -> None:
    """The watchdog got the GIL first, but lets go of it during its look (anything touching
    the file system does): the loop's thread runs its beat meanwhile. The look still judges
    the block by what it read before it sampled (when the beat was due)."""
    monitor, sink, clock = held_monitor([(101.0, 5.95, 270)] * 3)
    clock.now = 101.0

    def sampled_then_let_go(m: LoopMonitor) -> Sample:
        sample = in_the_call(m)
        clock.now = 101.0005
        m.beat()  # the loop's thread, while the watchdog waited for the GIL again
        clock.now = 101.0
        return sample

    monitor.check(clock.now, True, sampled_then_let_go, 70)
    assert sink.events == [("detected", 100.025, pytest.approx(0.975))]
