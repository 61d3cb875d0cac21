"""The demo a new user runs first (``./scripts/demo``): it serves, finds and advises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port, python_env

ROOT = Path(__file__).resolve().parent.parent


def test_demo_names_the_blocking_line_its_route_and_serves_http() -> None:
    """A short run: the blocked loop is named with the report route, the HTTP table has both
    route templates, and every section is printed."""
    demo = ROOT / "examples" / "demo.py"
    line = next(
        i for i, text in enumerate(demo.read_text().splitlines(), 1) if "time.sleep(0.15)" in text
    )
    result = subprocess.run(
        [sys.executable, str(demo), "--seconds", "12", "--port", str(free_port())],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(
        rf"event loop blocked for [\d.]+ s at {re.escape(str(demo))}:{line} in render_pdf "
        r"\(task '[^']+' running \S+run_asgi, route /reports/\{name\}", out
    ), out
    assert re.search(r"GET\s+/items/\{item_id\}\s+\d+ requests", out), out
    assert re.search(r"GET\s+/reports/\{name\}\s+\d+ requests", out), out
    for section in ("=== findings", "=== advice", "=== tasks"):
        assert section in out, out


def test_demo_script_states_the_demo_length() -> None:
    """scripts/demo's comment and README say how long the demo runs: the length it runs."""
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--help"],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    match = re.search(r"default: ([\d.]+) s", help_text)
    assert match, help_text
    seconds = match.group(1)
    assert f"runs for {seconds} seconds" in (ROOT / "scripts" / "demo").read_text()
    assert f"for {seconds} s" in (ROOT / "README.md").read_text()
