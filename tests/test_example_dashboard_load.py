"""examples/dashboard_load.py's stuck task is reported, so the stuck-task panel shows it
(issue 14.9: it waited on an event its parent still held, so it was never stuck)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import free_port, python_env, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dashboard_load.py"


def _stuck_now(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name in ("asyncwatch_stuck_tasks", "asyncwatch_stuck_tasks_total")
        for s in f.samples
        if s.name.endswith("_total")
    )


@pytest.mark.slow
def test_dashboard_load_reports_its_stuck_task() -> None:
    """With the settings the example sets itself, the stuck task is counted within its run."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--no-http", "--seconds", "60", "--pause", "0.1"],
        env=python_env(ASYNCWATCH_PROMETHEUS_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _stuck_now(port) >= 1, timeout=50, what="the stuck task to be counted")
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert "wait_for_approval" in out, out  # its one log line names the coroutine
