"""On-demand profiling: the hot coroutine found, one profile at a time, capped, memory released."""

from __future__ import annotations

import asyncio
import json
import pstats
import sys
import threading
from pathlib import Path

import pytest

import asyncwatch
from asyncwatch import ProfilerBusy
from asyncwatch.profiler._yappi_leak import GUARD
from tests.conftest import ROOT, python_env, run_python, wait_for

HERE = __name__


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


async def hot() -> None:
    burn(200_000)  # holds the loop: the coroutine a profile must rank first


async def idle() -> None:
    await asyncio.sleep(0.4)  # long-lived (largest wall time) but nearly no loop time


async def chatty() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def workload(stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.gather(hot(), idle(), chatty())


async def test_profile_ranks_the_hot_coroutine_first(tmp_path: Path) -> None:
    """A profile of a known workload puts the loop-burning coroutine first, with files saved."""
    asyncwatch.install(metrics_exporters=("none",), profile_dir=str(tmp_path))
    stop = asyncio.Event()
    runner = asyncio.create_task(workload(stop))
    try:
        report = await asyncwatch.profile(1.0, top=10)
    finally:
        stop.set()
        await runner
    names = [c.name for c in report.coroutines]
    assert names[0] == f"{HERE}.hot", report.format()
    hot_row = report.coroutines[0]
    assert hot_row.busy_s is not None
    assert hot_row.calls > 0
    assert hot_row.steps > 0
    idle_row = next(c for c in report.coroutines if c.name == f"{HERE}.idle")
    assert idle_row.wall_s > hot_row.wall_s  # wall time alone would have ranked idle first
    # Own time of a coroutine that awaits includes its suspensions (yappi's wall clock), so the
    # hottest plain function is the one to look for.
    assert next(f for f in report.by_own if not f.coroutine).name == f"{HERE}.burn"
    assert report.leak_guard == "on"
    assert not report.capped
    saved = pstats.Stats(report.files["pstats"])
    assert any(func[2] == "burn" for func in saved.stats)  # type: ignore[attr-defined]
    assert "fn=" in Path(report.files["callgrind"]).read_text()
    assert Path(report.files["pstats"]).parent == tmp_path


async def test_second_profile_is_refused_while_one_runs() -> None:
    """A profile requested during another gets ProfilerBusy, and works again afterwards."""
    session = asyncwatch.profiling(save=False).start()
    try:
        with pytest.raises(ProfilerBusy, match="already running"):
            await asyncwatch.profile(0.05, save=False)
    finally:
        first = session.stop()
    assert not first.capped
    again = await asyncwatch.profile(0.05, save=False)
    assert again.duration_s > 0


def test_profile_is_capped() -> None:
    """A profile nobody stops ends at profile_max_s, and says so."""
    asyncwatch.install(metrics_exporters=("none",), profile_max_s=0.3)
    session = asyncwatch.profiling(save=False).start()
    wait_for(lambda: not session.running, timeout=30, what="the cap to stop the profile")
    report = session.stop()
    assert report.capped
    with pytest.raises(ValueError, match="profile_max_s"):
        asyncwatch.profile_sync(5)


async def test_profile_sync_refuses_to_block_a_running_loop() -> None:
    """profile_sync() inside a loop would block it: refused, with the async form named."""
    with pytest.raises(RuntimeError, match=r"await asyncwatch\.profile"):
        asyncwatch.profile_sync(0.1)


def test_profile_sync_from_another_thread() -> None:
    """From a thread without a loop, profile_sync() profiles the app's loop thread."""
    stop = threading.Event()

    async def app() -> None:
        while not stop.is_set():
            await asyncio.create_task(hot())  # busy time is charged to the task's coroutine

    thread = threading.Thread(target=asyncio.run, args=(app(),))
    thread.start()
    try:
        report = asyncwatch.profile_sync(0.5, save=False)
    finally:
        stop.set()
        thread.join(30)
    assert report.coroutines[0].name == f"{HERE}.hot"


def test_nothing_stays_armed_after_a_profile() -> None:
    """After a profile: no profile hook, Handle._run and yappi's slot as they were."""
    original_run = asyncio.events.Handle._run
    asyncwatch.profile_sync(0.05, save=False)
    assert sys.getprofile() is None
    assert threading._profile_hook is None  # type: ignore[attr-defined]
    assert asyncio.events.Handle._run is original_run
    assert not GUARD.active
    import yappi

    assert not yappi.is_running()


def test_zero_cost_when_not_profiling() -> None:
    """Installed, console and all, but never profiled: yappi is not even imported."""
    code = """
import asyncio, sys, asyncwatch
asyncwatch.install(metrics_exporters="none")
original = asyncio.events.Handle._run
async def main():
    await asyncio.gather(*(asyncio.sleep(0) for _ in range(100)))
asyncio.run(main())
print(("yappi" in sys.modules, sys.getprofile() is None, asyncio.events.Handle._run is original))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(False, True, True)"


_MEMORY_CHILD = """
import asyncio, gc, json, sys
import asyncwatch
from asyncwatch.profiler import _yappi_leak
tasks, guard = int(sys.argv[1]), sys.argv[2] == "on"
if not guard:
    _yappi_leak.GUARD.apply = lambda yappi: "off (disabled by the test)"

async def short():
    return None

def live_coroutines():
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "coroutine")

async def main():
    gc.collect()
    before = live_coroutines()
    with asyncwatch.profiling(save=False) as session:
        for _ in range(tasks // 1000):
            await asyncio.gather(*[asyncio.create_task(short()) for _ in range(1000)])
    gc.collect()
    runs = next(c.calls for c in session.report.coroutines if c.name == "__main__.short")
    print(json.dumps({"before": before, "after": live_coroutines(), "runs": runs,
                      "guard": session.report.leak_guard}))

asyncio.run(main())
"""


def _memory_run(tasks: int, guard: str) -> dict[str, int | str]:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(tasks), guard],
        env=python_env(), capture_output=True, text=True, timeout=110, check=False, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_profiled_coroutines_are_released() -> None:
    """After profiling 50k short tasks, the profiled coroutines are freed (yappi pins them
    without the guard: the control run shows it)."""
    guarded = _memory_run(50_000, "on")
    assert guarded["guard"] == "on"
    assert guarded["runs"] == 50_000
    # At most the last batch of 1,000 may still be referenced by the finished gather.
    assert int(guarded["after"]) - int(guarded["before"]) <= 1_001
    control = _memory_run(10_000, "off")
    assert int(control["after"]) - int(control["before"]) >= 10_000
