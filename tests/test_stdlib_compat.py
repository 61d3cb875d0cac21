"""asyncwatch is invisible to asyncio's own tests: a slice of CPython's test_asyncio (gather,
cancellation, exception marking, futures on the virtual-time TestLoop) runs in-process with
asyncwatch installed in strict mode, and the stdlib objects asyncwatch touches look as bare.
The whole suites run in ``scripts/compat``; this is the fast slice."""

from __future__ import annotations

import asyncio
import unittest
from collections.abc import Iterator
from typing import Any

import pytest

import asyncwatch

ORIGINAL_GATHER = asyncio.gather
ORIGINAL_GATHERING = asyncio.tasks._GatheringFuture  # type: ignore[attr-defined]


@pytest.fixture
def strict() -> Iterator[asyncwatch.Watch]:
    """Installed in strict mode (internal errors raise), no exporter."""
    watch = asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
    yield watch
    asyncwatch.uninstall(timeout_s=2)


def _cpython_slice() -> unittest.TestSuite:
    """CPython's gather tests, every task test about gather, cancellation or exception
    marking, and the futures tests (which run on TestLoop, a loop with a virtual clock)."""
    test_tasks = pytest.importorskip("test.test_asyncio.test_tasks")
    test_futures = pytest.importorskip("test.test_asyncio.test_futures")
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for cls in (test_tasks.FutureGatherTests, test_tasks.CoroutineGatherTests):
        suite.addTests(loader.loadTestsFromTestCase(cls))
    for name in loader.getTestCaseNames(test_tasks.CTask_CFuture_Tests):
        if any(word in name for word in ("gather", "cancel", "exception_marking", "sleep")):
            suite.addTest(test_tasks.CTask_CFuture_Tests(name))
    suite.addTests(loader.loadTestsFromTestCase(test_futures.CFutureTests))
    return suite


def test_cpython_gather_cancellation_and_futures_tests_pass(strict: asyncwatch.Watch) -> None:
    """They pass as they do bare, and asyncwatch counts no internal error while they run (its
    heartbeat used to go through a test's mocked ``call_later`` and TestLoop's timer log)."""
    suite = _cpython_slice()
    result = unittest.TestResult()
    suite.run(result)
    problems = [test.id() for test, _ in result.failures + result.errors]
    first = (result.failures + result.errors)[0][1] if problems else ""
    if problems:  # (no assertion rewriting here: a failed CPython test can leave the
        # interpreter in a state where pytest cannot render a traceback)
        pytest.fail(f"{len(problems)} failed: {problems[:10]}; the first:\n{first}",
                    pytrace=False)
    assert result.testsRun >= 90  # 99 on 3.11.7
    assert dict(strict.faults.counts) == {}


def test_gather_is_the_original_and_its_future_looks_bare(strict: asyncwatch.Watch) -> None:
    """``asyncio.gather`` is not replaced; its outer future has no callback, attribute or repr
    of ours, is an instance of the original class, and its batch is still recorded."""
    seen: dict[str, Any] = {}

    async def child(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def main() -> None:
        outer = asyncio.gather(child(1), child(2))
        # asyncio's own (3.14's gather adds one for its call graph) are not ours to judge
        seen["callbacks"] = [
            cb for cb, _ in outer._callbacks or ()  # type: ignore[attr-defined]
            if "asyncwatch" in f"{getattr(getattr(cb, 'func', cb), '__module__', '')} {cb!r}"
        ]
        seen["repr"] = repr(outer)
        seen["isinstance"] = isinstance(outer, ORIGINAL_GATHERING)
        seen["name"] = type(outer).__qualname__
        assert await outer == [1, 2]

    assert asyncio.gather is ORIGINAL_GATHER and asyncio.tasks.gather is ORIGINAL_GATHER
    asyncio.run(main())
    assert seen["callbacks"] == []
    assert seen["repr"].startswith("<_GatheringFuture pending") and "asyncwatch" not in seen["repr"]
    assert seen["isinstance"] and seen["name"] == "_GatheringFuture"
    sites = strict.advisor.batches.sites()
    assert [size for site in sites for size, _, _ in site.recent()] == [2]
    asyncwatch.uninstall(timeout_s=2)
    assert asyncio.tasks._GatheringFuture is ORIGINAL_GATHERING  # type: ignore[attr-defined]


def test_heartbeat_ignores_an_instance_level_call_later(strict: asyncwatch.Watch) -> None:
    """A loop whose ``call_later`` was replaced on the instance (as tests do) keeps its
    heartbeat, and the replacement never sees asyncwatch's timers."""
    loop = asyncio.new_event_loop()
    seen: list[Any] = []
    original = loop.call_later

    def call_later(delay: float, callback: Any, *args: Any) -> Any:  # no context argument
        seen.append(callback)
        return original(delay, callback, *args)

    loop.call_later = call_later  # type: ignore[method-assign]

    async def main() -> None:
        # the heartbeat starts when the loop first runs
        monitor = strict.loops.monitor_of(asyncio.get_running_loop())
        assert monitor is not None
        while monitor.beats < 3:
            await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()
    ours = [cb for cb in seen if type(getattr(cb, "__self__", None)).__module__.startswith(
        "asyncwatch")]
    assert ours == []
    assert dict(strict.faults.counts) == {}


class VirtualLoop(asyncio.SelectorEventLoop):
    """A loop on a clock of its own that logs every timer scheduled on it (as TestLoop)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.timers: list[float] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.timers.append(when)
        return super().call_at(when, callback, *args, context=context)


def test_a_virtual_clock_loop_gets_no_timer(strict: asyncwatch.Watch) -> None:
    """No heartbeat or deadlock scan is scheduled on a loop with its own clock."""
    loop = VirtualLoop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))
        assert loop.timers == []
        assert loop._scheduled == []  # type: ignore[attr-defined]
        assert strict.loops.monitor_of(loop) is None
    finally:
        loop.close()
    # a real loop still gets its heartbeat
    real = asyncio.new_event_loop()

    async def beat() -> None:
        monitor = strict.loops.monitor_of(asyncio.get_running_loop())
        assert monitor is not None
        while monitor.beats < 1:
            await asyncio.sleep(0.01)

    try:
        real.run_until_complete(asyncio.wait_for(beat(), 20))
    finally:
        real.close()


def test_install_creates_no_event_loop_policy() -> None:
    """install() with no policy yet leaves none (CPython's tests check that it is unchanged)."""
    saved = asyncio.events._event_loop_policy  # type: ignore[attr-defined]
    asyncio.events._event_loop_policy = None  # type: ignore[attr-defined]
    try:
        asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
        assert asyncio.events._event_loop_policy is None  # type: ignore[attr-defined]
    finally:
        asyncwatch.uninstall(timeout_s=2)
        asyncio.events._event_loop_policy = saved  # type: ignore[attr-defined]
