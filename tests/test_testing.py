"""asyncwatch.testing, the public test helpers: a manual clock the detectors keep time on,
an install for tests, plain snapshots of what was recorded, and waiters for findings that
wait on the detectors' own signal with a deadline. Each is used here against the real
detectors, as an app's tests would use it."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import asyncwatch
import asyncwatch.testing as awt
from asyncwatch import BlockedLoop, DeadlockFinding, StuckTaskFinding

from .conftest import ROOT, python_env, run_python

HERE = __name__


def test_manual_clock_moves_only_when_told() -> None:
    """The clock reads what it was set to, moves forward by ``advance``, and refuses to go
    back or to jump to infinity (a detector on it would never judge again)."""
    clock = awt.ManualClock(5.0)
    assert clock() == clock() == 5.0
    assert clock.advance(2.5) == 7.5 == clock()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="forward"):
            clock.advance(bad)
    assert clock() == 7.5
    assert repr(clock) == "ManualClock(now=7.5)"


def test_installed_sets_test_defaults_and_uninstalls() -> None:
    """``installed()`` installs in strict mode with no exporter and every task timed, lets
    keyword settings override those, and leaves asyncwatch uninstalled after the block."""
    with awt.installed() as watch:
        assert asyncwatch.current() is watch
        assert watch.config.raise_errors
        assert watch.config.metrics_exporters == ("none",)
        assert watch.config.timed_per_s == math.inf
    assert asyncwatch.current() is None
    with awt.installed(timed_per_s=50.0, max_keys=7) as watch:
        assert (watch.config.timed_per_s, watch.config.max_keys) == (50.0, 7)
    assert asyncwatch.current() is None


async def waits_forever(event: asyncio.Event) -> None:
    await event.wait()  # nothing ever sets it


async def test_manual_clock_ages_a_wait_into_a_stuck_task() -> None:
    """On a manual clock, a task is reported stuck once the clock passes
    ``stuck_task_after_s``, with no real waiting: two hand scans, a clock advanced between."""
    clock = awt.ManualClock()
    with awt.installed(clock=clock, stuck_task_after_s=60, deadlock_interval_s=3600):
        task = asyncio.create_task(waits_forever(asyncio.Event()), name="forever")
        await awt.settle()
        assert awt.scan() == []  # the wait is seen begin
        clock.advance(30)
        assert awt.scan() == []  # half a minute: not yet
        clock.advance(31)
        made = awt.scan()
        assert [f.kind for f in made] == ["stuck_task"]
        found = await awt.wait_for_finding("stuck_task", timeout=5)
        assert isinstance(found, StuckTaskFinding)
        assert "forever" in found.tasks
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def job(n: int) -> int:
    await asyncio.sleep(0)
    return n


async def fails() -> None:
    await asyncio.sleep(0)
    raise KeyError("x")


async def test_snapshot_is_a_plain_copy_of_tasks_and_metrics() -> None:
    """``snapshot()`` holds what was recorded per coroutine and every metric point, as
    values: tasks recorded after it leave it as it was."""
    with awt.installed():
        await asyncio.gather(*(asyncio.create_task(job(i)) for i in range(3)))
        with pytest.raises(KeyError):
            await asyncio.create_task(fails())
        before = awt.snapshot()
        stats = before.tasks[f"{HERE}.job"]
        assert (stats.created, stats.ok, stats.in_flight) == (3, 3, 0)
        assert before.tasks[f"{HERE}.fails"].errors_by_type == {"KeyError": 1}
        created = before.point("asyncwatch.task.created", code__function__name=f"{HERE}.job")
        assert created.value == 3
        assert created.attributes == {"code.function.name": f"{HERE}.job"}
        duration = before.point("asyncwatch.task.duration", code__function__name=f"{HERE}.job")
        assert duration.count == 3 == sum(duration.bucket_counts)
        assert duration.value is None and duration.explicit_bounds

        await asyncio.create_task(job(4))
        after = awt.snapshot()
        assert after.tasks[f"{HERE}.job"].created == 4
        assert after.point("asyncwatch.task.created", code__function__name=f"{HERE}.job").value == 4
        assert before.tasks[f"{HERE}.job"].created == 3  # the first snapshot is untouched
        assert created.value == 3
        with pytest.raises(AssertionError, match="no metric 'nope'"):
            after.point("nope")
        doubled = list(after.metrics["asyncwatch.task.created"]) * 2
        with pytest.raises(AssertionError, match="2 points match"):
            awt.point(doubled, code__function__name=f"{HERE}.job")
    assert awt.snapshot() == awt.Snapshot()  # not installed: empty


async def test_snapshot_reads_a_reader_given_to_install() -> None:
    """A reader the test attached itself can be read through ``snapshot(reader)``."""
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    with awt.installed(metric_reader=reader):
        await asyncio.create_task(job(1))
        assert awt.snapshot(reader).point(
            "asyncwatch.task.created", code__function__name=f"{HERE}.job").value == 1
        assert awt.metrics(reader)["asyncwatch.task.created"][0].metric == (
            "asyncwatch.task.created")


async def inversion() -> list[asyncio.Task[None]]:
    first, second = asyncio.Lock(), asyncio.Lock()
    both = asyncio.Barrier(2)

    async def take(a: asyncio.Lock, b: asyncio.Lock) -> None:
        async with a:
            await both.wait()
            async with b:
                pass

    return [asyncio.create_task(take(first, second)), asyncio.create_task(take(second, first))]


async def test_wait_for_finding_waits_for_the_timed_scans() -> None:
    """``await wait_for_finding("deadlock")`` keeps the loop free, so the detector's own timed
    scans find the cycle and the waiter returns that finding; the listener is gone after."""
    with awt.installed(deadlock_interval_s=0.05) as watch:
        listeners = list(watch.findings._listeners)
        tasks = await inversion()
        found = await awt.wait_for_finding("deadlock", timeout=30)
        assert isinstance(found, DeadlockFinding)
        assert len(found.tasks) == 2
        assert watch.findings._listeners == listeners
        # already kept: returned at once
        assert await awt.wait_for_finding("deadlock", timeout=0.001) is found
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_wait_for_finding_times_out_naming_the_kind() -> None:
    """No finding of the kind: ``TimeoutError`` naming it; a ``where`` that matches none
    of the findings kept waits too."""
    clock = awt.ManualClock()
    with awt.installed(clock=clock, deadlock_interval_s=3600) as watch:
        with pytest.raises(TimeoutError, match="'deadlock'"):
            await awt.wait_for_finding("deadlock", timeout=0.05)
        task = asyncio.create_task(waits_forever(asyncio.Event()), name="quiet")
        await awt.settle()
        awt.scan()
        clock.advance(61)
        awt.scan()
        quiet = await awt.wait_for_finding(
            "stuck_task", where=lambda f: "quiet" in getattr(f, "tasks", ()))
        assert quiet.kind == "stuck_task"
        with pytest.raises(TimeoutError, match="'stuck_task'"):
            await awt.wait_for_finding("stuck_task", timeout=0.05, where=lambda f: False)
        assert watch.findings._listeners == []
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_wait_for_finding_sync_sees_a_loop_blocked_in_another_thread() -> None:
    """From outside the loop, ``wait_for_finding_sync`` returns the blocked-loop finding
    while the loop is still blocked (the watchdog reports it as it happens)."""
    release = threading.Event()

    async def blocking() -> None:
        while not release.is_set():  # holds the loop until the finding has been seen
            time.sleep(0.005)

    async def main() -> None:
        await asyncio.create_task(blocking())

    with awt.installed(block_threshold_s=0.05):
        thread = threading.Thread(target=asyncio.run, args=(main(),))
        thread.start()
        try:
            found = awt.wait_for_finding_sync("blocked_loop", timeout=30)
        finally:
            release.set()
            thread.join(60)
        assert isinstance(found, BlockedLoop)
        assert found.ongoing
        assert found.culprit is not None and found.culprit.function.endswith(".blocking")
        with pytest.raises(TimeoutError, match="'deadlock'"):
            awt.wait_for_finding_sync("deadlock", timeout=0.01)


def test_wait_until_returns_the_value_or_names_what_it_waited_for() -> None:
    """``wait_until`` returns the predicate's first truthy value; past its deadline it fails
    with what it was waiting for."""
    calls: list[int] = []

    def third() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert awt.wait_until(third, timeout=30) == 3
    with pytest.raises(AssertionError, match="the moon"):
        awt.wait_until(lambda: None, timeout=0.01, what="the moon")


def test_scan_needs_asyncwatch_installed() -> None:
    """Outside an install, ``scan`` says what is missing instead of failing obscurely."""
    with pytest.raises(RuntimeError, match="not installed"):
        awt.scan()


def test_testing_is_public_and_loaded_only_on_use() -> None:
    """``asyncwatch.testing`` is in the public surface, typed, and ``import asyncwatch``
    does not load it."""
    assert "testing" in asyncwatch.__all__
    assert asyncwatch.testing is awt
    assert set(awt.__all__) <= set(dir(awt))
    result = run_python(
        "import sys, asyncwatch; print('asyncwatch.testing' in sys.modules); "
        "import asyncwatch.testing; print(asyncwatch.testing.ManualClock.__name__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "ManualClock"]
    assert sys.modules["asyncwatch.testing"].__file__ is not None


def test_readme_example_runs(tmp_path: Path) -> None:
    """The guide's example of testing an app with asyncwatch.testing runs as written."""
    text = (ROOT / "docs" / "guide" / "testing.md").read_text()
    section = text.split("# Testing your app: asyncwatch.testing", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "myapp.py").write_text("async def worker(jobs):\n    await jobs.wait()\n")
    [name] = re.findall(r"^async def (test_\w+)", example, re.MULTILINE)
    script = example + f"\nasyncio.run({name}())\nprint('ok')\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=python_env(PYTHONPATH=str(tmp_path)),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]

