"""Reports quote source lines without keeping whole files: what asyncwatch reads to name a
line (a blocked loop's stack, a deadlock's await chain, a lock's variable) is dropped from
``linecache`` again, and telling the standard library's files apart loads no ``sysconfig``."""

from __future__ import annotations

import json
import linecache
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from asyncwatch._core import stacks
from tests.conftest import python_env, run_python


def test_to_frames_quotes_lines_and_keeps_no_file() -> None:
    """Each frame gets its line; a file linecache did not hold before is not held after, one
    it did hold stays (the app's own traceback printing keeps its cache)."""
    here = __file__
    held = os.__file__
    linecache.getlines(held)
    linecache.cache.pop(here, None)
    frames = stacks.to_frames([(here, 1, "f"), (held, 1, "g"), (here, 99999, "h")])
    assert frames[0].line == '"""Reports quote source lines without keeping whole files: what ' \
        "asyncwatch reads to name a"
    assert frames[1].line is not None
    assert frames[2].line is None  # past the end of the file
    assert here not in linecache.cache
    assert held in linecache.cache


def test_stdlib_is_told_apart_without_sysconfig() -> None:
    """The standard library's files (os, an extension module's directory) are STDLIB, a
    site-packages file LIBRARY, the app's APP; sysconfig stays unloaded."""
    code = textwrap.dedent(
        """
        import json, os, sys, _json, email
        from asyncwatch._core import stacks
        kinds = [stacks.classify(os.__file__), stacks.classify(email.__file__),
                 stacks.classify("/srv/app/site-packages/lib/x.py"),
                 stacks.classify("/srv/app/main.py")]
        print(json.dumps([kinds, "sysconfig" in sys.modules]))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    kinds, loaded = json.loads(result.stdout)
    assert kinds == [stacks.STDLIB, stacks.STDLIB, stacks.LIBRARY, stacks.APP]
    assert loaded is False


def test_blocked_loop_report_leaves_linecache_as_it_was(tmp_path: Path) -> None:
    """A real blocked-loop report (default install, the loop held until the watchdog names
    it) quotes the culprit's line and its stack's, then keeps none of those files: before,
    each report left every file of its stack (asyncio's among them) cached for good."""
    code = textwrap.dedent(
        """
        import asyncio, json, linecache, sys, time
        import asyncwatch
        asyncwatch.install(metrics_exporters="none", block_threshold_s=0.05)
        before = set(linecache.cache)

        def reported():
            return [f for f in asyncwatch.findings("blocked_loop") if f.culprit is not None]

        async def hold():
            deadline = time.monotonic() + 60
            while not reported() and time.monotonic() < deadline:
                sum(range(300_000))  # the culprit: holds the loop until it is named

        async def main():  # a task of its own: the loop has run (and beat) before it blocks
            await asyncio.create_task(hold())

        asyncio.run(main())
        deadline = time.monotonic() + 60
        while any(f.ongoing for f in reported()) and time.monotonic() < deadline:
            time.sleep(0.01)
        finding = reported()[-1]
        added = [f for f in set(linecache.cache) - before if not f.startswith("<")]
        print(json.dumps([finding.culprit.line, [f.line for f in finding.stack], added,
                          "sysconfig" in sys.modules]))
        asyncwatch.uninstall()
        """
    )
    program = tmp_path / "blocker.py"  # a file, so its lines can be quoted
    program.write_text(code)
    result = subprocess.run([sys.executable, str(program)], env=python_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    culprit, stack, added, sysconfig_loaded = json.loads(result.stdout)
    assert culprit is not None and "sum(range(300_000))  # the culprit" in culprit
    assert "asyncio.run(main())" in stack and "self._run_once()" in stack  # asyncio quoted too
    assert added == []
    assert sysconfig_loaded is False
