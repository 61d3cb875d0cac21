"""Repeats grouped by site: the findings log, the API, the console rendering, the log lines."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch
from asyncwatch._core.findings import Finding, FindingsLog, Frame
from asyncwatch.console._render import render_finding
from asyncwatch.loopwatch._blocked import BlockedLoop
from asyncwatch.loopwatch._limits import RepeatLimiter

from .conftest import collect, point, wait_for
from .test_loopwatch import SOURCE, Sleep, line_of, start_loop


def block_at(line: int, duration: float, at: float, *, depth: int = 0, route: str = "/r",
             ongoing: bool = False) -> BlockedLoop:
    culprit = Frame("/srv/app.py", line, "handler")
    caller = Frame("/srv/app.py", 100 + depth, f"caller{depth}")
    return BlockedLoop(
        started_at=at, summary=f"event loop blocked for {duration:.3f} s at {culprit}",
        duration_s=duration, culprit=culprit, stack=(caller, culprit), route=route,
        ongoing=ongoing,
    )


def test_repeats_at_one_line_are_one_finding_with_figures() -> None:
    log = FindingsLog()
    durations = [0.2, 0.9, 0.3, 0.25, 0.4]
    for i, took in enumerate(durations):
        log.add(block_at(10, took, at=1000.0 + i, depth=i))
    log.add(block_at(11, 0.5, at=1010.0))  # another line
    log.add(block_at(10, 0.5, at=1011.0, route="/other"))  # same line, another route

    grouped = log.list("blocked_loop")
    assert len(grouped) == 3
    first = grouped[0]
    assert isinstance(first, BlockedLoop)
    assert first.count == 5
    assert first.first_seen == 1000.0 and first.last_seen == 1004.0 == first.started_at
    assert first.worst_s == 0.9
    assert first.typical_s == 0.3  # the median
    assert first.duration_s == 0.4  # the newest occurrence's own fields
    # first, worst and newest stacks, all distinct
    assert [s[0].function for s in first.exemplars] == ["caller0", "caller1", "caller4"]
    assert [g.count for g in grouped[1:]] == [1, 1]
    assert log.totals == {"blocked_loop": 7}
    every = log.list("blocked_loop", grouped=False)
    assert len(every) == 7 and all(f.count == 1 for f in every)
    assert log.count_of(block_at(10, 0.1, at=0)) == 5


def test_an_ongoing_finding_replaced_by_its_final_form_counts_once() -> None:
    log = FindingsLog()
    log.add(block_at(10, 0.2, at=1000.0))
    ongoing = block_at(10, 0.15, at=1001.0, ongoing=True)
    log.add(ongoing)
    log.replace(ongoing, block_at(10, 2.0, at=1001.0))
    (group,) = log.list("blocked_loop")
    assert group.count == 2 and group.worst_s == 2.0 and not group.ongoing
    # the final culprit differs from the one seen at detection: it moves to its own site
    ongoing = block_at(10, 0.15, at=1002.0, ongoing=True)
    log.add(ongoing)
    log.replace(ongoing, block_at(12, 0.3, at=1002.0))
    counts = {g.culprit.lineno: g.count for g in log.list("blocked_loop")}  # type: ignore[attr-defined]
    assert counts == {10: 2, 12: 1}


def test_sites_are_bounded_least_recent_dropped() -> None:
    log = FindingsLog(per_kind=3)
    for line in (1, 2, 3, 1, 4):
        log.add(block_at(line, 0.2, at=float(line)))
    lines = sorted(g.culprit.lineno for g in log.list("blocked_loop"))  # type: ignore[attr-defined]
    assert lines == [1, 3, 4]


def test_other_kinds_group_by_summary_and_keep_their_fields() -> None:
    log = FindingsLog()
    log.add(Finding(kind="custom", summary="same"))
    log.add(Finding(kind="custom", summary="same"))
    (only,) = log.list("custom")
    assert only.count == 2 and only.worst_s is None and only.exemplars == ()


def test_console_renders_one_entry_per_site() -> None:
    log = FindingsLog()
    for i, took in enumerate((0.2, 0.9, 0.3)):
        log.add(block_at(10, took, at=1000.0 + i, depth=i))
    text = render_finding(log.list("blocked_loop")[0])
    assert "seen 3 times since" in text
    assert "worst 0.900 s, typical 0.300 s" in text
    assert "3 distinct stacks" in text


def test_repeat_limiter_holds_back_a_site_logged_a_moment_ago() -> None:
    now = [0.0]
    limiter = RepeatLimiter(lambda: now[0], every_s=60.0)
    assert limiter.allow("a", 0.2) == (0, 0.0)
    assert limiter.allow("b", 0.2) == (0, 0.0)  # another site: its own first line
    for took in (0.3, 0.7, 0.4):
        now[0] += 1
        assert limiter.allow("a", took) is None
    now[0] = 61.0
    assert limiter.allow("a", 0.2) == (3, 0.7)
    now[0] = 62.0
    assert limiter.allow("a", 0.2) is None


REPEATS = 4


def test_repeated_blocks_are_one_finding_one_log_line_every_block_counted(
    watch: asyncwatch.Watch, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    """The same line blocking the loop four times: one grouped finding (count 4), one WARNING
    line, and the metrics count all four."""
    caplog.set_level(logging.WARNING, logger="asyncwatch")
    blockers = [Sleep() for _ in range(REPEATS)]
    go = [threading.Event() for _ in range(REPEATS)]

    async def main() -> None:
        for blocker, start in zip(blockers, go, strict=True):
            while not start.is_set():
                await asyncio.sleep(0.005)
            await asyncio.create_task(asyncio.to_thread(lambda: None))  # a healthy await
            blocker.body()

    thread = start_loop(main)
    try:
        for i, blocker in enumerate(blockers):
            go[i].set()
            wait_for(
                lambda i=i: len(asyncwatch.findings("blocked_loop", grouped=False)) > i,
                what=f"block {i + 1} reported",
            )
            blocker.release()
            wait_for(
                lambda i=i: [f for f in asyncwatch.findings("blocked_loop", grouped=False)
                             if not f.ongoing][i:],
                what=f"block {i + 1} ended",
            )
    finally:
        for blocker in blockers:
            blocker.release()
        for start in go:
            start.set()
        thread.join(30)
    (group,) = asyncwatch.findings("blocked_loop")
    assert isinstance(group, BlockedLoop)
    assert group.culprit is not None and group.culprit.lineno == line_of("sleep")
    assert Path(group.culprit.filename).resolve() == SOURCE
    assert group.count == REPEATS
    assert group.worst_s is not None and group.typical_s is not None
    assert group.worst_s >= group.typical_s > 0
    assert group.first_seen < group.last_seen
    assert len(group.exemplars) >= 1
    lines = [r for r in caplog.records if f":{line_of('sleep')} in " in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    blocked = point(collect(reader)["asyncwatch.loop.blocked"],
                    code__line__number=line_of("sleep"))
    assert blocked.value == REPEATS
