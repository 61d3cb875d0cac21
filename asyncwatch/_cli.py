"""``asyncwatch``: the command line. ``asyncwatch run -- CMD`` observes CMD with no code change.

``run`` works like ``opentelemetry-instrument``: it puts a small ``sitecustomize`` on
``PYTHONPATH`` (which installs asyncwatch as the interpreter starts, then runs any
``sitecustomize`` the environment already had) and replaces itself with CMD. Child Python
processes inherit it, so ``uvicorn --workers N`` and gunicorn workers are observed too.
Exporters start when the first event loop is created, so Python helpers that never run an
event loop (build steps, management commands) open no port.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from ._core.config import Config, ConfigError, raw_problem, settings_reference
from ._core.environment import check_environment

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "_bootstrap")


def _path(text: str) -> Any:
    from pathlib import Path  # only `assets` takes a path: not loaded for `run`

    return Path(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncwatch",
        description="Observe every asyncio task of a Python program.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"asyncwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a command with asyncwatch installed at interpreter start",
        description="Run CMD with asyncwatch installed, e.g. asyncwatch run -- uvicorn app:app",
    )
    run.add_argument("--host", help="address of the /metrics endpoint (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port of the /metrics endpoint (default 9464)")
    run.add_argument(
        "--port-span",
        type=int,
        help="if the port is busy, try this many following ports (one per worker process)",
    )
    run.add_argument(
        "--metrics-exporter",
        help="prometheus, otlp, console or none (comma-separated; default prometheus)",
    )
    run.add_argument("--traces-exporter", help="otlp, console or none (comma-separated)")
    run.add_argument("--task-spans", help="comma-separated globs of coroutine names to trace")
    run.add_argument(
        "--console",
        action="store_true",
        default=None,
        help="serve the live console (aiomonitor, telnet on 127.0.0.1:20101)",
    )
    run.add_argument("--console-port", type=int, help="telnet port of the console (default 20101)")
    run.add_argument(
        "--require",
        action="store_true",
        default=None,
        help="stop with exit code 2 if a Python process of CMD cannot be observed (e.g. its "
        "interpreter cannot import asyncwatch) instead of warning",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any setting, by argument name or ASYNCWATCH_ variable (repeatable)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    connect = sub.add_parser(
        "console",
        help="connect to a running app's console",
        description="Connect to the live console of an app started with console=True.",
    )
    connect.add_argument("--host", default="127.0.0.1", help="console host (default 127.0.0.1)")
    connect.add_argument("--port", type=int, default=20101, help="console port (default 20101)")
    sub.add_parser("config", help="print the settings in effect here and where they come from")
    sub.add_parser("version", help="print the version")
    assets = sub.add_parser(
        "assets",
        help="write the Prometheus rules and configs and Grafana dashboards to DIR",
        description="Write asyncwatch's Prometheus configs, rules (and their promtool tests), "
        "OpenTelemetry Collector configs and Grafana dashboards and provisioning to "
        "DIR/exporters and DIR/grafana.",
    )
    assets.add_argument("dir", type=_path, help="where to write them (created if missing)")
    assets.add_argument("--force", action="store_true", help="overwrite files that differ")
    return parser


# flag -> setting it sets
_FLAG_SETTINGS = {
    "host": "prometheus_host",
    "port": "prometheus_port",
    "port_span": "prometheus_port_span",
    "metrics_exporter": "metrics_exporters",
    "traces_exporter": "traces_exporters",
    "task_spans": "task_spans",
    "console": "console",
    "console_port": "console_port",
    "require": "require",
}


def run_environment(args: argparse.Namespace, base: dict[str, str]) -> dict[str, str]:
    """The environment CMD runs in; raises ConfigError for a bad setting.

    A bad value given on the command line is reported under the flag that gave it
    (``--port``, ``--set max_keys=...``), one from the environment under its variable.
    """
    env = dict(base)
    by_argument = {row[0]: row[1].split(", ")[0] for row in settings_reference()}
    by_variable = {variable: name for name, variable in by_argument.items()}
    for attr, name in _FLAG_SETTINGS.items():
        value = getattr(args, attr)
        if value is not None:
            raw = "1" if value is True else str(value)
            problem = raw_problem(name, raw)
            if problem is not None:
                flag = "--" + attr.replace("_", "-")
                raise ConfigError(f"{flag} {raw!r}: {problem}")
            env[by_argument[name]] = raw
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE")
        variable = by_argument.get(name, name)
        if variable not in by_variable:
            raise ConfigError(f"--set {name}: unknown setting (see `asyncwatch config`)")
        problem = raw_problem(by_variable[variable], value)
        if problem is not None:
            raise ConfigError(f"--set {item}: {problem}")
        env[variable] = value
    env.setdefault("ASYNCWATCH_LAZY_START", "1")
    env["ASYNCWATCH_BOOTSTRAP"] = "1"
    env.pop("ASYNCWATCH_BOOTSTRAP_WARNED", None)
    # fail here, before CMD starts, with the variable named
    check_environment(Config.from_env(env), env)
    paths = [str(BOOTSTRAP_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "asyncwatch run: give a command, e.g. asyncwatch run -- python app.py", file=sys.stderr
        )
        return 2
    try:
        env = run_environment(args, dict(os.environ))
    except ConfigError as exc:
        print(f"asyncwatch: {exc}", file=sys.stderr)
        return 2
    program = shutil.which(cmd[0], path=env.get("PATH"))
    if program is None:
        print(f"asyncwatch run: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    os.execve(program, cmd, env)
    return 0  # pragma: no cover - execve does not return


def _config() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"asyncwatch: {exc}", file=sys.stderr)
        return 2
    width = max(len(row[0]) for row in settings_reference())
    for name, variables, default, form in settings_reference():
        value = getattr(config, name)
        mark = " " if repr(value) == default else "*"
        print(f"{mark} {name:<{width}} = {value!r:<24} {variables}  ({form})")
    print("\n* differs from the default")
    from .asgi._exchange import ACCELERATOR as HTTP_ACCELERATOR
    from .tasks import ACCELERATOR

    print(f"\ntask path: {ACCELERATOR}")
    print(f"HTTP path: {HTTP_ACCELERATOR}")
    return 0


def _connect(host: str, port: int) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "asyncwatch console: needs a terminal (stdin and stdout must be a tty); from a "
            f"script, use a telnet client: telnet {host} {port}",
            file=sys.stderr,
        )
        return 2
    try:
        from aiomonitor.cli import monitor_client
    except ImportError:
        print(
            "asyncwatch console needs aiomonitor: pip install 'asyncwatch[console]'",
            file=sys.stderr,
        )
        return 2
    try:
        monitor_client(host, port)
    except OSError as exc:
        print(f"asyncwatch console: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _assets(target: Any, force: bool) -> int:
    from . import _assets

    try:
        files = _assets.write(target, force=force)
    except (FileExistsError, FileNotFoundError, OSError) as exc:
        print(f"asyncwatch assets: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(files)} files to {target}/exporters and {target}/grafana")
    print(f"  prometheus --config.file={target}/exporters/prometheus/prometheus.yml")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asyncwatch`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "config":
        return _config()
    if args.command == "console":
        return _connect(args.host, args.port)
    if args.command == "assets":
        return _assets(args.dir, args.force)
    from . import __version__

    print(__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
