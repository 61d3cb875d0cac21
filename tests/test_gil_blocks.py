"""Blocks inside C code that holds the GIL: the watchdog thread cannot sample them, a
faulthandler dump names them (asyncwatch._gilwatch)."""

from __future__ import annotations

import asyncio
import faulthandler
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch
from asyncwatch._blocked import BlockedLoop
from asyncwatch._gilwatch import parse_dump

from .conftest import marked_line, strict_watch, wait_for
from .test_loopwatch import start_loop

SOURCE = Path(__file__).resolve()
EVIL = re.compile(r"(a+)+$")


def catastrophic(n: int) -> None:
    EVIL.match("a" * n + "b")  # held in C


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
