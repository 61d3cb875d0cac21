"""Every configuration of the in-process benchmarks still runs.

The benchmarks are not part of the suite (timing is asserted there, never here), so a
configuration that no longer matches the code would go unnoticed until someone measures: this
runs each of them once on a tiny workload, into a temporary results file, and checks that
every configuration produced a finite, positive figure. The figures themselves are not looked
at. (``asgi.py`` needs wrk and takes seconds per configuration; ``tests/test_asgi*`` cover
its app, and ``asgi_inprocess.py`` here runs the same configurations; ``costs.py --quick``
runs it for one second per configuration, wrk installed by ``./scripts/test``.)
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# benchmark -> (arguments for a tiny run, configurations that must appear in its results)
CASES: dict[str, tuple[list[str], set[str]]] = {
    "task_churn": (
        ["--rounds", "1", "--tasks", "40"],
        {"bare", "asyncwatch", "asyncwatch+spans", "asyncwatch+spans+batch", "asyncwatch+asgi",
         "asyncwatch+request", "asyncwatch+memory", "otel-asyncio", "aiomonitor"},
    ),
    "locks": (["--rounds", "1", "--ops", "200"], {"bare", "asyncwatch"}),
    "advisor": (["--rounds", "1", "--ops", "200"], {"bare"}),
    "callbacks": (
        ["--rounds", "1", "--callbacks", "200"],
        {"bare", "bare + a thread + a timer", "defaults", "defaults, advisor off"},
    ),
    "asgi_driven": (
        ["--rounds", "1", "--count", "40"],
        {"bare", "floor", "figures", "figures without in-flight", "figures without tasks",
         "figures without sizes", "figures without receive", "figures without all",
         "asyncwatch"},
    ),
    "asgi_inprocess": (
        ["--rounds", "1", "--count", "40", "--warm", "10"],
        {"bare", "asyncwatch", "asyncwatch-http-only", "otel-asgi-metrics", "otel-asgi"},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_configuration_runs(name: str, tmp_path: Path) -> None:
    args, expected = CASES[name]
    out = tmp_path / name
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--name", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    configurations = {row["config"] for row in rows}
    assert expected <= configurations, expected - configurations
    for row in rows:
        for key in ("ratio", "rate"):
            value = row.get(key)
            if value is not None:
                assert math.isfinite(value) and value > 0, row


def test_the_span_memory_mode_runs(tmp_path: Path) -> None:
    """``task_churn.py --span-memory``: bare, asyncwatch's spans and OTel-asyncio's each held
    live tasks and reported a positive size per task (the figures are not looked at)."""
    out = tmp_path / "span_memory"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "task_churn.py"), "--span-memory", "--rounds", "1",
         "--tasks", "200", "--name", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {row["config"] for row in rows} == {"bare", "asyncwatch+spans", "otel-asyncio+spans"}
    assert all(math.isfinite(row["rate"]) and row["rate"] > 0 for row in rows), rows


def test_the_asgi_tail_attribution_runs(tmp_path: Path) -> None:
    """``asgi_inprocess.py --tail`` with the attribution variants: every configuration served
    requests and reported its percentiles (the figures are not looked at)."""
    configs = ["bare", "asyncwatch", "asyncwatch-no-loopwatch", "asyncwatch-quiet"]
    out = tmp_path / "asgi"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "asgi_inprocess.py"), "--tail", "0.3", "--rounds", "1",
         "--warm", "5", "--inflight", "2", "--configs", ",".join(configs), "--name", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "asgi_tail.json").read_text())["meta"]["runs"]
    assert sorted(runs) == sorted(configs)
    for config, (run,) in runs.items():
        assert run["count"] > 0, config
        assert all(math.isfinite(run[k]) and run[k] > 0 for k in ("p50", "p99", "max")), run
    assert runs["asyncwatch"][0]["pauses"]["heartbeat"][0] > 0  # the loop watch was timed
    assert runs["asyncwatch-no-loopwatch"][0]["pauses"]["heartbeat"][0] == 0


COSTS_ROWS = ["startup", "callbacks", "churn", "memory", "spans", "asgi", "asgi"]


@pytest.mark.timeout(600)  # about 20 s alone; many times that on a loaded machine
def test_costs_quick_measures_every_row(tmp_path: Path) -> None:
    """``costs.py --quick`` measures every row of issue 17's table in one run (wrk included)
    and writes the table: each row has a verdict against its goal (the figures are not looked
    at)."""
    out = tmp_path / "costs"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "costs.py"), "--quick", "--no-callgrind",
         "--name", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = json.loads(out.with_suffix(".json").read_text())["lines"]
    assert [line["row"] for line in lines] == COSTS_ROWS
    for line in lines:
        assert line["at_goal"] in (True, False), line  # measured, not skipped
    table = out.with_suffix(".md").read_text()
    assert "| measure | goal | asyncwatch | anchor | at goal | command |" in table


def test_the_asgi_floor_middlewares_record_what_they_claim() -> None:
    """The two yardsticks of the ASGI row (``asgi.FloorMiddleware``, duration by route,
    method and status; ``asgi.FiguresFloorMiddleware``, asyncwatch's figures the plainest
    way) serve the app unchanged and record each request under its route template."""
    import asyncio

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import asgi
    finally:
        sys.path.remove(str(BENCHMARKS))
    import httpx

    async def serve(wrapped: object) -> None:
        transport = httpx.ASGITransport(app=wrapped)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i in range(3):
                response = await client.get(f"/items/{i}")
                assert response.json() == {"id": i, "name": "thing"}
            assert (await client.get("/json")).status_code == 200

    floor = asgi.FloorMiddleware(asgi.build_app("bare"))
    asyncio.run(serve(floor))
    assert {key: len(times) for key, times in floor.durations.items()} == {
        ("/items/{item_id}", "GET", 200): 3, ("/json", "GET", 200): 1}

    figures = asgi.FiguresFloorMiddleware(asgi.build_app("bare"))
    asyncio.run(serve(figures))
    assert {key: len(slot[0]) for key, slot in figures.slots.items()} == {
        ("/items/{item_id}", "GET", 200, "http", "1.1"): 3,
        ("/json", "GET", 200, "http", "1.1"): 1}
    durations, request_sizes, response_sizes, tasks = figures.slots[
        ("/json", "GET", 200, "http", "1.1")]
    assert response_sizes == [len(b'{"hello":"world","items":[1,2,3]}')]
    assert request_sizes == [0] and tasks == [0]  # no request body, no task
    assert durations[0] > 0
    assert figures.active == {("GET", "http"): 0}  # every request left


def test_paced_separates_per_second_work_from_each_operation() -> None:
    """``_harness.paced`` recovers what each operation costs and what runs per second from
    counts at two paces, and counts the latter at the native pace. Fed a made-up program:
    900 instructions per operation, 2,000,000 per second of wall time, 3 ms and 5,000,000
    instructions of start-up; 80 µs per operation under plain callgrind, 400 µs at the slow
    pace, 1 µs natively."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _harness import paced
    finally:
        sys.path.remove(str(BENCHMARKS))
    own, per_second = 900.0, 2_000_000.0

    def count(n: int, slow: bool) -> tuple[int, float]:
        wall = 0.003 + n * (400e-6 if slow else 80e-6)
        return round(5_000_000 + n * own + per_second * wall), wall

    result = paced(count, lambda n: 0.01 + n * 1e-6, small=1_000, slow_small=250)
    assert math.isclose(result.raw, own + per_second * 80e-6, rel_tol=1e-6)  # 1,060
    assert math.isclose(result.per_second, per_second, rel_tol=1e-4)
    assert math.isclose(result.own, own, rel_tol=1e-4)
    assert math.isclose(result.paced, own + per_second * 1e-6, rel_tol=1e-4)  # 902
    assert math.isclose(result.slowdown, 80, rel_tol=1e-6)
