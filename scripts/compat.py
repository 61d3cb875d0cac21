"""Other projects' test suites, bare and under ``asyncwatch run`` (run by ``scripts/compat``).

Each suite runs under ``asyncwatch run`` with ``ASYNCWATCH_RAISE=1`` (internal errors raise
instead of being counted); per-test outcomes are read from JUnit XML. Only the tests that did
not pass there (or did not run at all: the suite is also collected, bare) are then run bare: a
test that fails or is skipped bare says nothing about asyncwatch, and one that passes under
asyncwatch needs no bare run (CPython's suite, whose ids the collection cannot give, runs bare
whole; it takes seconds). One that passed bare and not under asyncwatch is run again under
asyncwatch, alone: it is a regression if it fails again, flaky otherwise. Exit status 1 on any
regression not in ``EXPECTED_UNTIL_MERGE``.

    scripts/compat                  every suite
    scripts/compat anyio cpython    some of them
    scripts/compat --prepare        only download, unpack and install the suites
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".compat"  # sdists, their unpacked sources, JUnit files (git-ignored)
PYTHON = sys.executable
BIN = Path(PYTHON).parent

# Tests that fail under asyncwatch today because of a fix another branch brings; reported, not
# failing the run. EMPTY THIS LIST once the branches are merged (each entry names its issue).
EXPECTED_UNTIL_MERGE: set[str] = set()

CPYTHON_TESTS = [
    "test_asyncio.test_tasks", "test_asyncio.test_taskgroups", "test_asyncio.test_timeouts",
    "test_asyncio.test_waitfor", "test_asyncio.test_locks", "test_asyncio.test_queues",
    "test_asyncio.test_context", "test_asyncio.test_runners", "test_asyncio.test_pep492",
    "test_asyncio.test_futures",
]


@dataclass
class Suite:
    name: str
    version: str = ""  # PyPI version of the sdist whose tests run ("" for CPython's)
    args: list[str] = field(default_factory=list)  # pytest arguments after the common ones
    workers: int = 2  # pytest-xdist workers (0: in-process)

    @property
    def source(self) -> Path:
        return WORK / f"{self.name}-{self.version}"


SUITES = [
    # asyncio backend only; the uvloop variants of each test are left out for time (uvloop is
    # covered by uvicorn's suite); IPv6 tests fail bare on hosts without IPv6.
    Suite("anyio", "4.16.0", ["-k", "not trio and not uvloop and not ipv6 and not dualstack",
                              "-m", "not network"]),
    Suite("starlette", "1.10.0", ["-k", "not trio"], workers=0),  # crashes under xdist bare
    # httpx's test server listens on the fixed port 8000: one process only. The SSLContext
    # test connects to the Internet.
    Suite("httpx", "0.29.0", ["-k", "not trio and not test_SSLContext_with_get_request",
                              "-m", "not network"], workers=0),
    # the reload tests wait 5 s each for file events (watchfiles in a thread, nothing asyncio
    # does) and the benchmarks need pytest-codspeed: both left out for time.
    Suite("uvicorn", "0.55.0", ["--ignore=tests/benchmarks",
                                "--deselect=tests/supervisors/test_reload.py"]),
    Suite("cpython"),
]


def log(text: str) -> None:
    print(text, flush=True)


def prepare(suite: Suite) -> None:
    """Download and unpack the sdist (its tests) and install it, once."""
    if suite.name == "cpython":
        return
    spec = f"{suite.name}=={suite.version}"
    archive = WORK / "dist" / f"{suite.name}-{suite.version}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [PYTHON, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-binary", ":all:", "--no-deps", spec, "-d", str(archive.parent)],
            check=True,
        )
    if not suite.source.is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(WORK, filter="data")
    try:
        installed = metadata.version(suite.name)
    except metadata.PackageNotFoundError:
        installed = None
    if installed != suite.version:
        subprocess.run(
            [PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
             str(archive)],
            check=True,
        )


def command(suite: Suite, junit: Path, only: list[str] | None = None) -> list[str]:
    if suite.name == "cpython":
        tests = only or CPYTHON_TESTS
        cmd = [PYTHON, "-m", "test", "--junit-xml", str(junit)]
        if only:  # these tests alone, by id
            listing = junit.with_suffix(".only")
            listing.write_text("\n".join(only) + "\n")
            cmd += ["--matchfile", str(listing)]
            tests = sorted({".".join(t.split(".")[1:3]) for t in only})
        else:
            cmd += ["-j", "2"]
        return cmd + tests
    cmd = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-rN",
           "--timeout", "60", "-o", "junit_family=xunit1", f"--junitxml={junit}"]
    if suite.workers and not only:
        cmd += ["-n", str(suite.workers)]
    else:
        cmd += ["-p", "no:xdist"]
    return cmd + (only if only else suite.args)


def run(suite: Suite, mode: str, only: list[str] | None = None) -> dict[str, str]:
    """Run the suite bare or under asyncwatch; test id -> passed/failed/skipped."""
    junit = WORK / "results" / f"{suite.name}-{mode}{'-again' if only else ''}.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    cmd = command(suite, junit, only)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCWATCH_", "OTEL_"))}
    if mode == "asyncwatch":
        # The endpoint on an ephemeral port: every process (xdist workers, servers the tests
        # start) serves its own, so they never compete for one port.
        cmd = [str(BIN / "asyncwatch"), "run", "--port", "0", "--", *cmd]
        env["ASYNCWATCH_RAISE"] = "1"
    cwd = suite.source if suite.name != "cpython" else WORK
    out = WORK / "results" / f"{suite.name}-{mode}{'-again' if only else ''}.log"
    with open(out, "w") as sink:
        try:  # (the exit status says nothing the JUnit file does not)
            subprocess.run(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=1200, check=False)
        except subprocess.TimeoutExpired:
            log(f"  {suite.name} ({mode}) killed after 20 minutes: see {out}")
    return outcomes(suite, junit)


def outcomes(suite: Suite, junit: Path) -> dict[str, str]:
    if not junit.exists():
        return {}
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    result: dict[str, str] = {}
    for case in ET.parse(junit).iter("testcase"):
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                state = "failed"
            elif child.tag == "skipped" and state == "passed":
                state = "skipped"
        key = test_id(suite, case)
        # (a test can have two entries, e.g. its call and an error in its teardown: the worst)
        if rank[state] >= rank[result.get(key, "passed")]:
            result[key] = state
    return result


def test_id(suite: Suite, case: ET.Element) -> str:
    """A pytest node id (from xunit1's file attribute), or CPython's dotted test id."""
    classname, name = case.get("classname", ""), case.get("name", "")
    if suite.name == "cpython":
        return name  # already the whole dotted id
    path = case.get("file", "")
    module = path[: -len(".py")].replace("/", ".")
    inner = classname[len(module) + 1:] if classname.startswith(module) else ""
    return "::".join(part for part in (path, *inner.split(".")) if part) + f"::{name}"


def collected(suite: Suite) -> set[str]:
    """The ids of a pytest suite's tests, collected bare (what a run should report on)."""
    cmd = [PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
           "--no-header", *suite.args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCWATCH_", "OTEL_"))}
    done = subprocess.run(cmd, cwd=suite.source, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300, check=False)
    return {line.strip() for line in done.stdout.splitlines() if "::" in line}


def compare(suite: Suite) -> tuple[list[str], list[str], dict[str, float]]:
    """(regressions, flaky, figures) for one suite."""
    started = time.monotonic()
    watched = run(suite, "asyncwatch")
    watched_s = time.monotonic() - started
    started = time.monotonic()
    if suite.name == "cpython":
        bare = run(suite, "bare")
        tests = set(bare) | set(watched)
    else:
        tests = collected(suite) | set(watched)
        not_passed = sorted(t for t in tests if watched.get(t) != "passed")
        bare = run(suite, "bare", not_passed) if not_passed else {}
    bare_s = time.monotonic() - started
    suspects = [t for t in sorted(tests) if bare.get(t) == "passed" and watched.get(t) != "passed"]
    regressions, flaky = [], []
    if suspects:
        again = run(suite, "asyncwatch", suspects)
        for test in suspects:
            if again.get(test) != "passed":
                regressions.append(test)
            else:
                flaky.append(test)
    passed = sum(1 for state in watched.values() if state == "passed")
    figures: dict[str, float] = {
        "tests": len(tests), "passed": passed + len(suspects), "bare_s": bare_s,
        "asyncwatch_s": watched_s,
    }
    return regressions, flaky, figures


def main(names: list[str], prepare_only: bool = False) -> int:
    known = {s.name: s for s in SUITES}
    unknown = [n for n in names if n not in known]
    if unknown:
        log(f"scripts/compat: unknown suite(s) {unknown}; known: {sorted(known)}")
        return 2
    chosen = [known[n] for n in names] if names else SUITES
    (WORK / "dist").mkdir(parents=True, exist_ok=True)
    for suite in SUITES:  # all of them: the suites import one another (starlette's, httpx)
        prepare(suite)
    if prepare_only:
        return 0
    total = time.monotonic()
    failed = False
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    # passed: under asyncwatch, or bare where not under asyncwatch; bare s: the bare runs,
    # only of what did not pass under asyncwatch (CPython's whole suite)
    log(f"{'suite':<10} {'tests':>6} {'passed':>7} {'asyncwatch s':>13} {'bare s':>7}"
        "  result")
    for suite in chosen:
        regressions, flaky, fig = compare(suite)
        ids = {f"{suite.name}::{t}" for t in regressions}
        expected = ids & EXPECTED_UNTIL_MERGE
        new = sorted(ids - expected)
        if fig["passed"] == 0:
            new.append(f"{suite.name}: no test passed (see .compat/results)")
        result = "ok" if not new else f"{len(new)} REGRESSION(S)"
        if expected:
            result += f", {len(expected)} expected until merge"
        if flaky:
            result += f", {len(flaky)} flaky (passed when run again)"
        log(f"{suite.name:<10} {fig['tests']:>6} {fig['passed']:>7} "
            f"{fig['asyncwatch_s']:>13.0f} {fig['bare_s']:>7.0f}  {result}")
        for test in new:
            log(f"  REGRESSION {test}")
        for test in sorted(expected):
            log(f"  expected until merge: {test}")
        for test in flaky:
            log(f"  flaky: {suite.name}::{test}")
        failed = failed or bool(new)
        counts["failed"] += len(new)
        counts["skipped"] += len(expected) + len(flaky)
        counts["passed"] += int(fig["passed"]) - len(regressions) - len(flaky)
    log(f"wall time {time.monotonic() - total:.0f} s; logs and JUnit files in {WORK}/results")
    # (tests that pass: under asyncwatch too / regressions / flaky or expected)
    log(f"compat: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    shutil.rmtree(WORK / "results", ignore_errors=True)
    arguments = sys.argv[1:]
    sys.exit(main([a for a in arguments if a != "--prepare"], "--prepare" in arguments))
