"""Start-up and exit: what ``asyncwatch run`` adds to a short program's wall time.

Each program runs as a fresh interpreter, side by side in every round (order rotated):

* ``bare``: ``python prog.py``
* ``asyncwatch``: ``asyncwatch run -- python prog.py`` (defaults: the /metrics endpoint, here
  on a free port, the watchdog, the deadlock detector and the advisor)
* ``otel-instrument``: ``opentelemetry-instrument python prog.py`` (opentelemetry-distro, the
  installed instrumentations, asyncio's among them; metrics to its Prometheus endpoint on a
  free port, traces and logs exporter ``none``, so nothing waits on a collector; asyncwatch's
  own instrumentor entry point disabled). Skipped, with a note, if the command is absent.

Programs: ``python -c pass`` (no event loop: asyncwatch starts no exporter), an asyncio
program that awaits once, one that runs 300 tasks, and a "test suite": 20 sequential runs of
the short asyncio program (what a suite that starts many interpreters pays).

Reported per configuration: the median wall time, the median over rounds of (time - bare's
time in that round), i.e. the added milliseconds, and the median ratio to bare; plus the
same for CPU time (user + system of the child processes), which is less sensitive to a busy
machine. Bytecode caches are written and warmed first, as an installed package has them.

Every configuration runs on an interpreter where asyncwatch is installed the way a wheel
installs it (``installed()``): a throwaway venv with a copy of the package and its console
scripts, and the checkout's venv's packages as a plain path entry. A development checkout is
an editable install, and setuptools' editable finder is imported by every interpreter that
starts there (about 20 ms, mostly ``pathlib``); ``asyncwatch run`` starts two interpreters, so
measured in the checkout's venv it would pay that twice to bare's once, a cost no user pays.
``--editable`` measures in the checkout's venv as it is.

Run: ``python benchmarks/startup.py [--rounds 9]`` (``./scripts/test`` installs every tool).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _harness import PACKAGE, RESULTS

BIN = Path(sys.executable).parent
WHERE = tempfile.gettempdir()  # the programs' working directory
SCRIPTS = ("asyncwatch", "opentelemetry-instrument")  # console scripts the runs start

PROGRAMS = {
    "asyncio, one await": (
        "import asyncio\nasync def main():\n    await asyncio.sleep(0)\nasyncio.run(main())\n"
    ),
    "asyncio, 300 tasks": (
        "import asyncio\n"
        "async def work(i):\n"
        "    await asyncio.sleep(0)\n"
        "    return i\n"
        "async def main():\n"
        "    assert sum(await asyncio.gather(*(work(i) for i in range(300)))) == 44850\n"
        "asyncio.run(main())\n"
    ),
}
SUITE_RUNS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCWATCH_", "OTEL_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached
    return env


@contextlib.contextmanager
def installed() -> Iterator[Path]:
    """The ``bin`` folder of a throwaway venv where asyncwatch is installed as from a wheel.

    The package (with its compiled modules, as built in the checkout) is copied into the venv's
    site-packages; the checkout venv's site-packages, where the dependencies are, is added by a
    ``.pth`` line, a plain path entry, so the ``.pth`` files there (setuptools' editable
    finder among them) do not run. The console scripts are the checkout venv's, pointed at
    this venv's interpreter.
    """
    with tempfile.TemporaryDirectory(prefix="asyncwatch-installed-") as folder:
        venv = Path(folder)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        Path(site, "checkout-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
        shutil.copytree(
            PACKAGE, Path(site, "asyncwatch"), ignore=shutil.ignore_patterns("__pycache__")
        )
        for name in SCRIPTS:
            source = BIN / name
            if source.exists():
                body = source.read_text().split("\n", 1)[1]
                target = venv / "bin" / name
                target.write_text(f"#!{python}\n{body}")
                target.chmod(0o755)
        yield venv / "bin"


def commands(
    script: list[str], bindir: Path = BIN
) -> dict[str, Callable[[], tuple[list[str], dict[str, str]]]]:
    """Configuration name -> a function giving (argv, env) for one run of ``script`` on the
    interpreter in ``bin`` (with the console scripts beside it)."""
    python = str(bindir / "python")

    def bare() -> tuple[list[str], dict[str, str]]:
        return [python, *script], base_env()

    def asyncwatch() -> tuple[list[str], dict[str, str]]:
        argv = [str(bindir / "asyncwatch"), "run", "--port", str(free_port()), "--", python]
        return [*argv, *script], base_env()

    def otel() -> tuple[list[str], dict[str, str]]:
        env = base_env() | {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(free_port()),
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "asyncwatch",
        }
        return [str(bindir / "opentelemetry-instrument"), python, *script], env

    out = {"bare": bare, "asyncwatch": asyncwatch}
    if (bindir / "opentelemetry-instrument").exists():
        out["otel-instrument"] = otel
    return out


def wait(proc: subprocess.Popen[Any], limit: float = 120.0) -> int:
    """``proc``'s exit status, waited for in a blocking ``waitpid``; killed after ``limit`` s.

    Not ``Popen.wait(timeout)`` nor ``subprocess.run(timeout=...)``: with a timeout they poll,
    sleeping up to 50 ms between polls, which would add up to 50 ms to every time measured
    here (the times came out in steps of about 50 ms).
    """
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    try:
        return proc.wait()
    finally:
        timer.cancel()


def run_once(argv: list[str], env: dict[str, str], times: int = 1) -> tuple[float, float]:
    """Wall and CPU milliseconds of ``times`` sequential runs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    for _ in range(times):
        # run outside the checkout: its package must not shadow the installed one
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, cwd=WHERE)
        if wait(proc) != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall * 1000, cpu * 1000


def measure(
    workload: str, script: list[str], rounds: int, times: int = 1, bindir: Path = BIN
) -> list[dict[str, object]]:
    configs = commands(script, bindir)
    for make in configs.values():  # warm: bytecode written, files in the page cache
        run_once(*make())
    names = list(configs)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c = run_once(*configs[name](), times=times)
            wall[name].append(w)
            cpu[name].append(c)
    rows = []
    for name in names:
        pairs = {"wall": (wall[name], wall["bare"]), "cpu": (cpu[name], cpu["bare"])}
        added = {
            k: statistics.median(a - b for a, b in zip(*v, strict=True)) for k, v in pairs.items()
        }
        ratio = {
            k: statistics.median(a / b for a, b in zip(*v, strict=True)) for k, v in pairs.items()
        }
        rows.append(
            {
                "workload": workload,
                "config": name,
                "wall_ms": statistics.median(wall[name]),
                "added_ms": added["wall"],
                "ratio": ratio["wall"],
                "cpu_ms": statistics.median(cpu[name]),
                "added_cpu_ms": added["cpu"],
                "cpu_ratio": ratio["cpu"],
            }
        )
    return rows


def compare(rounds: int, program: str = "asyncio, one await") -> list[dict[str, object]]:
    """One of PROGRAMS run bare, under ``asyncwatch run`` and under opentelemetry-instrument,
    side by side on an installed copy (``installed``; ``measure``'s rows: wall and CPU, added
    milliseconds and ratios to bare)."""
    with tempfile.TemporaryDirectory() as folder, installed() as bindir:
        path = Path(folder) / "prog.py"
        path.write_text(PROGRAMS[program])
        return measure(program, [str(path)], rounds, bindir=bindir)


def table(rows: list[dict[str, object]], rounds: int, suite_rounds: int, skipped: str) -> str:
    lines = [
        "| program | configuration | wall (median ms) | added wall (ms) | wall vs bare "
        "| added CPU (ms) | CPU vs bare |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workload']} | {row['config']} | {row['wall_ms']:,.0f} "
            f"| {row['added_ms']:+,.0f} | {row['ratio']:.2f}x "
            f"| {row['added_cpu_ms']:+,.0f} | {row['cpu_ratio']:.2f}x |"
        )
    lines.append("")
    lines.append(
        f"{rounds} rounds, configurations interleaved; added = median over rounds of "
        "(configuration - bare) in the same round; CPU = user + system of the child "
        f"processes. Suite: {SUITE_RUNS} sequential runs of the one-await program, "
        f"{suite_rounds} rounds.{skipped}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--suite-rounds", type=int, default=3)
    parser.add_argument("--name", default=str(RESULTS / "startup"), help="results file stem")
    parser.add_argument(
        "--editable", action="store_true",
        help="run in this checkout's venv as it is (its editable install's finder included)",
    )
    args = parser.parse_args()
    skipped = ""
    if not (BIN / "opentelemetry-instrument").exists():
        skipped = (
            " otel-instrument skipped: no opentelemetry-instrument next to this Python "
            "(pip install opentelemetry-distro)."
        )
    rows: list[dict[str, object]] = []
    where = contextlib.nullcontext(BIN) if args.editable else installed()
    with tempfile.TemporaryDirectory() as folder, where as bindir:
        paths = {}
        for name, code in PROGRAMS.items():
            path = Path(folder) / (name.replace(" ", "_").replace(",", "") + ".py")
            path.write_text(code)
            paths[name] = path
        rows += measure("python -c pass", ["-c", "pass"], args.rounds, bindir=bindir)
        for name, path in paths.items():
            rows += measure(name, [str(path)], args.rounds, bindir=bindir)
        first = str(paths["asyncio, one await"])
        suite = f"suite: {SUITE_RUNS} interpreters"
        rows += measure(suite, [first], args.suite_rounds, SUITE_RUNS, bindir=bindir)
    text = table(rows, args.rounds, args.suite_rounds, skipped)
    if args.editable:
        text += "\nMeasured in the checkout's venv (editable install), not an installed copy."
    out = Path(args.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rounds": args.rounds,
        "suite_rounds": args.suite_rounds,
    }
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    header = f"<!-- startup: Python {meta['python']}, {meta['when']}, load {meta['load']:.1f} -->\n"
    out.with_suffix(".md").write_text(header + text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
