"""One frozen configuration, from keyword arguments and ``ASYNCWATCH_*`` variables.

Every setting is declared once in ``_SETTINGS`` with its environment variable, its parser and
its check. ``Config.from_env`` parses the variables (errors name the variable); ``Config(...)``
and ``install(**settings)`` check keyword arguments (errors name the argument). Either way a
bad value fails at once with the accepted form in the message.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._hostguard import check_allowed_hosts

__all__ = ["Config", "ConfigError", "check_environment"]


class ConfigError(ValueError):
    """A setting has a value asyncwatch cannot use; the message names the setting."""


# ---------------------------------------------------------------- parsers (raw text -> value)


def _parse_flag(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true"):
        return True
    if low in ("0", "false"):
        return False
    raise ValueError("expected 1, 0, true or false")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected a whole number, e.g. 500") from None


def _parse_float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError("expected a number, e.g. 0.25") from None


def _parse_rate(raw: str) -> float:
    if raw.strip().lower() == "all":
        return math.inf
    return _parse_float(raw)


def _parse_str(raw: str) -> str:
    return raw.strip()


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# ---------------------------------------------------------------- checks (value -> error or None)


def _whole(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high}"
        return None

    return check


def _seconds(low: float, high: float, *, example: float) -> Callable[[Any], str | None]:
    """Finite seconds from ``low`` to ``high``: a value outside either breaks at run time
    (an infinite timeout overflows the thread APIs, a vanishing one abandons every call)."""

    def check(value: Any) -> str | None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            return f"must be a number of seconds from {low:g} to {high:g}, e.g. {example:g}"
        return None

    return check


def _rate(value: Any) -> str | None:
    if value == math.inf and not isinstance(value, bool):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.001 <= value <= 1e9:
        return "must be tasks per second from 0.001 to 1e9, or inf ('all')"
    return None


def _port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        return "must be a TCP port from 0 to 65535 (0 picks a free one)"
    return None


def _threshold(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.001 <= value < 3600:
        return "must be a number of seconds from 0.001 to 3600, e.g. 0.1"
    return None


def _fraction(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        return "must be a fraction from 0 to 1, e.g. 0.01"
    return None


def _is_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def _is_str(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def _host(value: Any) -> str | None:
    """An IP address or a well-formed host name (whether it resolves is checked at install)."""
    if isinstance(value, str) and value and len(value) <= 253:
        try:
            ipaddress.ip_address(value)
            return None
        except ValueError:
            if _HOST_NAME.fullmatch(value) and not value.replace(".", "").isdigit():
                return None
    return "must be an IP address or a host name"


def _ipv4_host(value: Any) -> str | None:
    """aiomonitor listens on IPv4 only: an IPv4 address, or ``localhost``."""
    if isinstance(value, str) and value == "localhost":
        return None
    if isinstance(value, str):
        try:
            ipaddress.IPv4Address(value)
            return None
        except ValueError:
            pass
    return "must be an IPv4 address or localhost (the console does not listen on IPv6)"


def _str_tuple(value: Any) -> str | None:
    if isinstance(value, tuple) and all(isinstance(v, str) and v for v in value):
        return None
    return "must be a tuple of non-empty strings"


def _str_tuple_or_empty(value: Any) -> str | None:
    if isinstance(value, tuple) and all(isinstance(v, str) and v for v in value):
        return None
    return "must be a tuple of non-empty strings (or empty)"


def _regexes(value: Any) -> str | None:
    problem = _str_tuple_or_empty(value)
    if problem is not None:
        return problem
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"{pattern!r} is not a regular expression ({exc})"
    return None


def _url_path(value: Any) -> str | None:
    if isinstance(value, str) and (
        value == "" or (value.startswith("/") and not re.search(r"[\s?#]", value))
    ):
        return None
    return "must be a path starting with /, without spaces, ? or # (or empty for off)"


_METRICS_EXPORTERS = frozenset({"prometheus", "otlp", "console", "none"})
_TRACES_EXPORTERS = frozenset({"otlp", "console", "none"})


def _exporters(allowed: frozenset[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        problem = _str_tuple(value)
        if problem is None and value and set(value) <= allowed:
            return None
        return f"must name exporters among {', '.join(sorted(allowed))}"

    return check


def _listen_port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return "must be a TCP port from 1 to 65535"
    return None


def _any_str(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string (empty for the default)"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (an address in 127.0.0.0/8 or ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False  # any other host name may resolve to anything


def _protocol(value: Any) -> str | None:
    if value in ("http/protobuf", "grpc"):
        return None
    return "must be http/protobuf or grpc"


@dataclass(frozen=True)
class _Setting:
    env: tuple[str, ...]  # first is asyncwatch's own; later ones are standard OTEL_* fallbacks
    parse: Callable[[str], Any]
    check: Callable[[Any], str | None]
    form: str  # the accepted form, for messages and the README


_SETTINGS: dict[str, _Setting] = {
    "enabled": _Setting(("ASYNCWATCH_ENABLED",), _parse_flag, _is_bool, "1 or 0"),
    "max_keys": _Setting(
        ("ASYNCWATCH_MAX_KEYS",), _parse_int, _whole(1, 1_000_000), "whole number 1-1000000"
    ),
    "max_series": _Setting(
        ("ASYNCWATCH_MAX_SERIES",), _parse_int, _whole(1, 10_000_000), "whole number 1-10000000"
    ),
    "max_error_types": _Setting(
        ("ASYNCWATCH_MAX_ERROR_TYPES",), _parse_int, _whole(1, 10_000), "whole number 1-10000"
    ),
    "timed_per_s": _Setting(
        ("ASYNCWATCH_TIMED_PER_S",), _parse_rate, _rate, "tasks per second (0.001-1e9), or 'all'"
    ),
    "task_spans": _Setting(
        ("ASYNCWATCH_TASK_SPANS",), _parse_list, _str_tuple, "comma-separated globs"
    ),
    "task_span_ratio": _Setting(
        ("ASYNCWATCH_TASK_SPAN_RATIO",), _parse_float, _fraction, "fraction from 0 to 1"
    ),
    "metrics_exporters": _Setting(
        ("ASYNCWATCH_METRICS_EXPORTER", "OTEL_METRICS_EXPORTER"),
        _parse_list,
        _exporters(_METRICS_EXPORTERS),
        "comma-separated: prometheus, otlp, console, none",
    ),
    "traces_exporters": _Setting(
        ("ASYNCWATCH_TRACES_EXPORTER", "OTEL_TRACES_EXPORTER"),
        _parse_list,
        _exporters(_TRACES_EXPORTERS),
        "comma-separated: otlp, console, none",
    ),
    "otlp_protocol": _Setting(
        ("ASYNCWATCH_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        _parse_str,
        _protocol,
        "http/protobuf or grpc",
    ),
    "prometheus_host": _Setting(
        ("ASYNCWATCH_PROMETHEUS_HOST", "OTEL_EXPORTER_PROMETHEUS_HOST"),
        _parse_str,
        _host,
        "IP address or host name that resolves",
    ),
    "prometheus_port": _Setting(
        ("ASYNCWATCH_PROMETHEUS_PORT", "OTEL_EXPORTER_PROMETHEUS_PORT"),
        _parse_int,
        _port,
        "port 0-65535",
    ),
    "prometheus_port_span": _Setting(
        ("ASYNCWATCH_PROMETHEUS_PORT_SPAN",), _parse_int, _whole(0, 1000), "whole number 0-1000"
    ),
    "export_timeout_s": _Setting(
        ("ASYNCWATCH_EXPORT_TIMEOUT_S",),
        _parse_float,
        _seconds(0.1, 600, example=3),
        "seconds from 0.1 to 600, e.g. 3",
    ),
    "memory_attribution": _Setting(
        ("ASYNCWATCH_MEMORY_ATTRIBUTION",), _parse_flag, _is_bool, "1 or 0"
    ),
    "memory_interval_s": _Setting(
        ("ASYNCWATCH_MEMORY_INTERVAL_S",),
        _parse_float,
        _seconds(0.1, 86_400, example=30),
        "seconds from 0.1 to 86400, e.g. 30",
    ),
    "http_excluded_paths": _Setting(
        ("ASYNCWATCH_HTTP_EXCLUDED_PATHS",),
        _parse_list,
        _str_tuple_or_empty,
        "comma-separated globs",
    ),
    "http_excluded_urls": _Setting(
        ("ASYNCWATCH_HTTP_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"),
        _parse_list,
        _regexes,
        "comma-separated regular expressions",
    ),
    "http_max_routes": _Setting(
        ("ASYNCWATCH_HTTP_MAX_ROUTES",), _parse_int, _whole(1, 100_000), "whole number 1-100000"
    ),
    "http_spans": _Setting(("ASYNCWATCH_HTTP_SPANS",), _parse_flag, _is_bool, "1 or 0"),
    "http_metrics_path": _Setting(
        ("ASYNCWATCH_HTTP_METRICS_PATH",),
        _parse_str,
        _url_path,
        "a path such as /metrics, or empty",
    ),
    "asgi_auto": _Setting(("ASYNCWATCH_ASGI_AUTO",), _parse_flag, _is_bool, "1 or 0"),
    "memory_frames": _Setting(
        ("ASYNCWATCH_MEMORY_FRAMES",), _parse_int, _whole(1, 65_535), "whole number 1-65535"
    ),
    "console": _Setting(("ASYNCWATCH_CONSOLE",), _parse_flag, _is_bool, "1 or 0"),
    "console_host": _Setting(
        ("ASYNCWATCH_CONSOLE_HOST",), _parse_str, _ipv4_host, "IPv4 address or localhost"
    ),
    "console_port": _Setting(
        ("ASYNCWATCH_CONSOLE_PORT",), _parse_int, _listen_port, "port 1-65535"
    ),
    "console_webui_port": _Setting(
        ("ASYNCWATCH_CONSOLE_WEBUI_PORT",), _parse_int, _listen_port, "port 1-65535"
    ),
    "console_repl_port": _Setting(
        ("ASYNCWATCH_CONSOLE_REPL_PORT",), _parse_int, _listen_port, "port 1-65535"
    ),
    "console_allow_remote": _Setting(
        ("ASYNCWATCH_CONSOLE_ALLOW_REMOTE",), _parse_flag, _is_bool, "1 or 0"
    ),
    "console_repl": _Setting(("ASYNCWATCH_CONSOLE_REPL",), _parse_flag, _is_bool, "1 or 0"),
    "console_webui": _Setting(("ASYNCWATCH_CONSOLE_WEBUI",), _parse_flag, _is_bool, "1 or 0"),
    "allowed_hosts": _Setting(
        ("ASYNCWATCH_ALLOWED_HOSTS",),
        _parse_list,
        check_allowed_hosts,
        "comma-separated host names, addresses, .suffixes, or *",
    ),
    "console_task_tracing": _Setting(
        ("ASYNCWATCH_CONSOLE_TASK_TRACING",), _parse_flag, _is_bool, "1 or 0"
    ),
    "profile_max_s": _Setting(
        ("ASYNCWATCH_PROFILE_MAX_S",),
        _parse_float,
        _seconds(0.01, 3600, example=60),
        "seconds from 0.01 to 3600",
    ),
    "profile_dir": _Setting(
        ("ASYNCWATCH_PROFILE_DIR",), _parse_str, _any_str, "existing writable directory"
    ),
    "loop_watch": _Setting(("ASYNCWATCH_LOOP_WATCH",), _parse_flag, _is_bool, "1 or 0"),
    "block_threshold_s": _Setting(
        ("ASYNCWATCH_BLOCK_THRESHOLD_S",), _parse_float, _threshold, "seconds from 0.001, e.g. 0.1"
    ),
    "precise_callbacks": _Setting(
        ("ASYNCWATCH_PRECISE_CALLBACKS",), _parse_flag, _is_bool, "1 or 0"
    ),
    "gil_watch": _Setting(("ASYNCWATCH_GIL_WATCH",), _parse_flag, _is_bool, "1 or 0"),
    "max_culprits": _Setting(
        ("ASYNCWATCH_MAX_CULPRITS",), _parse_int, _whole(1, 100_000), "whole number 1-100000"
    ),
    "deadlock_detection": _Setting(
        ("ASYNCWATCH_DEADLOCK_DETECTION",), _parse_flag, _is_bool, "1 or 0"
    ),
    "deadlock_interval_s": _Setting(
        ("ASYNCWATCH_DEADLOCK_INTERVAL_S",),
        _parse_float,
        _seconds(0.01, 86_400, example=0.5),
        "seconds from 0.01 to 86400, e.g. 0.5",
    ),
    "stuck_task_after_s": _Setting(
        ("ASYNCWATCH_STUCK_TASK_AFTER_S",),
        _parse_float,
        _seconds(0.001, 604_800, example=60),
        "seconds from 0.001 to 604800 (a week), e.g. 60",
    ),
    "idle_coroutines": _Setting(
        ("ASYNCWATCH_IDLE_COROUTINES",), _parse_list, _str_tuple, "comma-separated globs"
    ),
    "advisor": _Setting(("ASYNCWATCH_ADVISOR",), _parse_flag, _is_bool, "1 or 0"),
    "advisor_interval_s": _Setting(
        ("ASYNCWATCH_ADVISOR_INTERVAL_S",),
        _parse_float,
        _seconds(0.01, 86_400, example=30),
        "seconds from 0.01 to 86400, e.g. 30",
    ),
    "advisor_window_s": _Setting(
        ("ASYNCWATCH_ADVISOR_WINDOW_S",),
        _parse_float,
        _seconds(0.01, 86_400, example=60),
        "seconds from 0.01 to 86400, e.g. 60",
    ),
    "advisor_batch_budget_s": _Setting(
        ("ASYNCWATCH_ADVISOR_BATCH_BUDGET_S",),
        _parse_float,
        _seconds(0.0001, 3600, example=1),
        "seconds from 0.0001 to 3600, e.g. 1",
    ),
    "advisor_max_threads": _Setting(
        ("ASYNCWATCH_ADVISOR_MAX_THREADS",), _parse_int, _whole(1, 10_000), "whole number 1-10000"
    ),
    "advisor_gather": _Setting(("ASYNCWATCH_ADVISOR_GATHER",), _parse_flag, _is_bool, "1 or 0"),
    "require": _Setting(("ASYNCWATCH_REQUIRE",), _parse_flag, _is_bool, "1 or 0"),
    "advisor_queues": _Setting(("ASYNCWATCH_ADVISOR_QUEUES",), _parse_flag, _is_bool, "1 or 0"),
    "lazy_start": _Setting(("ASYNCWATCH_LAZY_START",), _parse_flag, _is_bool, "1 or 0"),
    "raise_errors": _Setting(("ASYNCWATCH_RAISE",), _parse_flag, _is_bool, "1 or 0"),
}


@dataclass(frozen=True)
class Config:
    """Every asyncwatch setting. Build it with keywords, or from the environment.

    ``Config.from_env()`` reads ``ASYNCWATCH_*`` variables (and the standard ``OTEL_*`` ones
    where a setting has one); keyword arguments to ``install()`` override them. The README's
    configuration reference lists each setting with its variable and default.
    """

    enabled: bool = True
    """Observe tasks at all. ``ASYNCWATCH_ENABLED=0`` turns a wrapped process into a no-op."""
    max_keys: int = 200
    """Distinct coroutine names tracked; further names are counted under ``_OTHER``."""
    max_series: int = 3000
    """Most metric series exported (a histogram counts its buckets, sum and count); series
    beyond it are folded into one ``_OTHER`` series per metric (see "Metric reference")."""
    max_error_types: int = 20
    """Distinct exception types counted per coroutine; others are folded into ``_OTHER``."""
    timed_per_s: float = 200.0
    """Tasks per second per coroutine whose schedule delay and duration are timed
    (``math.inf`` or ``'all'``: every task). Counts are always exact."""
    task_spans: tuple[str, ...] = ()
    """Glob patterns of coroutine names (``myapp.jobs.*``) that get a span per task."""
    task_span_ratio: float = 0.0
    """Fraction of all other tasks that get a span (0 = none, 1 = every task)."""
    metrics_exporters: tuple[str, ...] = ("prometheus",)
    """Where metrics go: ``prometheus`` (embedded endpoint), ``otlp``, ``console``, ``none``."""
    traces_exporters: tuple[str, ...] = ("none",)
    """Where spans go: ``otlp``, ``console``, ``none``. Default ``otlp`` when an OTLP endpoint
    variable is set, else ``none``."""
    otlp_protocol: str = "http/protobuf"
    """OTLP transport: ``http/protobuf`` or ``grpc``."""
    prometheus_host: str = "127.0.0.1"
    """Address of the embedded ``/metrics`` endpoint. Loopback unless you choose otherwise."""
    prometheus_port: int = 9464
    """Port of the embedded ``/metrics`` endpoint."""
    prometheus_port_span: int = 0
    """If the port is busy, also try this many following ports (one per worker process)."""
    export_timeout_s: float = 3.0
    """Longest any one export, flush or shutdown may take before it is abandoned and counted."""
    memory_attribution: bool = False
    """Attribute live memory to coroutines with tracemalloc (costly; see the README)."""
    memory_interval_s: float = 30.0
    """Seconds between tracemalloc snapshots when memory attribution is on."""
    http_excluded_paths: tuple[str, ...] = ()
    """Request paths (globs, e.g. ``/health*``) the ASGI middleware passes through unobserved."""
    http_excluded_urls: tuple[str, ...] = ()
    """Regular expressions searched in each request's full URL; matching requests are passed
    through unobserved (the standard ``OTEL_PYTHON_EXCLUDED_URLS``)."""
    http_max_routes: int = 200
    """Distinct ``http.route`` templates tracked; further routes are counted under ``_OTHER``."""
    http_spans: bool = True
    """A SERVER span per HTTP request and WebSocket connection, when spans go anywhere (a
    traces exporter, the app's tracer provider, or ``install(tracer_provider=...)``)."""
    http_metrics_path: str = ""
    """Serve Prometheus ``/metrics`` text at this path of the app itself (opt-in, e.g.
    ``/metrics``), for deployments that expose one port."""
    asgi_auto: bool = True
    """Add the ASGI middleware to every Starlette/FastAPI app whose middleware stack is built
    while asyncwatch is installed (unless the app added it already)."""
    memory_frames: int = 4
    """Stack frames tracemalloc keeps per allocation: more finds allocations made deeper in
    helpers a coroutine calls, and costs more (see the README's figures)."""
    console: bool = False
    """Serve the live aiomonitor console (telnet) with asyncwatch's commands; see the README."""
    console_host: str = "127.0.0.1"
    """Address the console listens on. Anything but loopback needs ``console_allow_remote``."""
    console_port: int = 20101
    """Telnet port of the console (connect with ``asyncwatch console`` or ``telnet``)."""
    console_webui_port: int = 20102
    """Port of aiomonitor's web UI (task list, cancel), on ``console_host``."""
    console_repl_port: int = 20103
    """Port of the Python REPL behind the console's ``console`` command (only with
    ``console_repl``)."""
    console_allow_remote: bool = False
    """Let ``console_host`` be a non-loopback address (logs a warning: anyone who reaches the
    port can cancel tasks, and run code if ``console_repl`` is on)."""
    console_repl: bool = False
    """Allow aiomonitor's Python REPL (arbitrary code execution in the app). Off by default."""
    console_webui: bool = False
    """Serve aiomonitor's web UI (task list, cancel) on ``console_webui_port``. Off by default:
    it is a web page that can cancel tasks (see the README's security section)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (``Host`` and ``Origin``) the ``/metrics`` endpoint and the console's web UI
    answer besides loopback names and the address they listen on: names, addresses,
    ``.example.com`` for its subdomains, ``*`` for any (not advised)."""
    console_task_tracing: bool = False
    """Let aiomonitor trace tasks (creation stacks, ``ps-terminated``); it wraps each task's
    coroutine, so it is off by default."""
    profile_max_s: float = 60.0
    """Longest profile ``asyncwatch.profile()`` or the console's ``profile`` accepts."""
    profile_dir: str = ""
    """Where profiles are saved (pstats, callgrind); empty: a per-process temporary folder."""
    loop_watch: bool = True
    """Watch every instrumented event loop: a loop-lag heartbeat and one watchdog thread that
    names the line holding a blocked loop. ``0`` turns both off."""
    block_threshold_s: float = 0.1
    """A loop held longer than this by one callback is reported as blocked (finding, metrics,
    one log line). The heartbeat runs every ``min(0.025, block_threshold_s / 4)`` seconds."""
    precise_callbacks: bool = False
    """Time every asyncio callback (patches ``asyncio.Handle._run``): every block is caught and
    timed exactly, at a cost per callback (see the README). No effect on uvloop loops."""
    gil_watch: bool = False
    """Opt-in, experimental: name blocks inside C code that holds the GIL *while* they last,
    with ``faulthandler``'s later-timer, re-armed by the watchdog (by default, on Linux, they
    are named the moment the call returns). Off by default: when the timer
    fires while other threads run Python (a starved watchdog, not only a GIL-holding call),
    faulthandler reads their frames without the GIL, which can crash the process. asyncwatch
    gives the timer up as soon as anything else arms it after install."""
    max_culprits: int = 100
    """Distinct culprit lines counted in the blocked-loop metrics; others count as ``_OTHER``."""
    deadlock_detection: bool = True
    """Scan the await graph for deadlocks and stuck tasks, and track who holds each asyncio
    Lock/Semaphore (see "Deadlocks and stuck tasks")."""
    deadlock_interval_s: float = 0.5
    """Seconds between scans of each event loop (stretched if a scan would take more than 1%
    of the loop's time). A wait is judged once two scans have seen it, so a cycle is found
    within two intervals; one closed by a lock wait is scanned for at once."""
    stuck_task_after_s: float = 60.0
    """A task waiting this long at the same await point, on something nothing can wake, is
    reported as stuck."""
    idle_coroutines: tuple[str, ...] = ()
    """Globs of coroutine names (``myapp.listeners.*``) whose waits are expected to be idle:
    never reported as stuck."""
    advisor: bool = True
    """Measure executors, semaphores, batches and loop load, and offer advice
    (``asyncwatch.advise()``; see "Advisor")."""
    advisor_interval_s: float = 30.0
    """Seconds between the advisor's evaluations (logged when the advice changes, exported
    as ``asyncwatch.advisor.*`` gauges)."""
    advisor_window_s: float = 60.0
    """How far back the advisor looks at executor calls, waits and loop load (seconds)."""
    advisor_batch_budget_s: float = 1.0
    """Latency budget per batch: suggested batch sizes keep one batch within it (a batch site
    can set its own with ``asyncwatch.batch(..., budget_s=...)``)."""
    advisor_max_threads: int = 128
    """Most threads the advisor will ever suggest for one thread pool."""
    advisor_gather: bool = True
    """Record the size and duration of ``asyncio.gather`` fan-outs (observed through the class
    of gather's outer future; ``gather`` itself is not replaced)."""
    require: bool = False
    """Under ``asyncwatch run``: a Python process that cannot be observed (its interpreter
    cannot import asyncwatch, or install() fails) stops with exit code 2 instead of running
    unobserved with a warning. Implied by ``raise_errors``."""
    advisor_queues: bool = True
    """Export each ``asyncio.Queue`` site's depth and get/put wait (wraps ``Queue.get`` and
    ``Queue.put`` while installed)."""
    lazy_start: bool = False
    """Start exporters when the first event loop is instrumented (set by ``asyncwatch run``)."""
    raise_errors: bool = False
    """Raise asyncwatch's own internal errors instead of counting them (for tests)."""

    def __post_init__(self) -> None:
        for name, setting in _SETTINGS.items():
            problem = setting.check(getattr(self, name))
            if problem is not None:
                raise ConfigError(
                    f"Config({name}={getattr(self, name)!r}): {problem} (accepted: {setting.form})"
                )
        if self.console and not self.console_allow_remote and not is_loopback(self.console_host):
            raise ConfigError(
                f"console_host={self.console_host!r} (ASYNCWATCH_CONSOLE_HOST) is not a loopback "
                "address: the console can cancel tasks and may run code, so it listens on "
                "127.0.0.1 unless you also set console_allow_remote=True "
                "(ASYNCWATCH_CONSOLE_ALLOW_REMOTE=1)"
            )
        if self.prometheus_port + self.prometheus_port_span > 65535:
            raise ConfigError(
                f"prometheus_port_span={self.prometheus_port_span} "
                "(ASYNCWATCH_PROMETHEUS_PORT_SPAN): prometheus_port + prometheus_port_span "
                f"= {self.prometheus_port + self.prometheus_port_span}, beyond port 65535"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, /, **overrides: Any) -> Config:
        """Build a Config from ``env`` (default ``os.environ``), then apply ``overrides``.

        Unknown ``ASYNCWATCH_*`` variables are an error, so a typo cannot silently do nothing.
        """
        env = os.environ if env is None else env
        known = {var for s in _SETTINGS.values() for var in s.env if var.startswith("ASYNCWATCH_")}
        known |= _OTHER_KNOWN_VARIABLES
        for var in env:
            if var.startswith("ASYNCWATCH_") and var not in known:
                hint = _close_match(var, known)
                also = f"; did you mean {hint[0]}?" if hint else ""
                raise ConfigError(f"{var}: unknown asyncwatch setting{also}")
        values: dict[str, Any] = {}
        for name, setting in _SETTINGS.items():
            for var in setting.env:
                raw = env.get(var)
                if raw is None or raw.strip() == "":
                    continue
                try:
                    value = setting.parse(raw)
                except ValueError as exc:
                    raise ConfigError(f"{var}={raw!r}: {exc}") from None
                problem = setting.check(value)
                if problem is not None:
                    raise ConfigError(f"{var}={raw!r}: {problem} (accepted: {setting.form})")
                values[name] = value
                break
        if "traces_exporters" not in values and any(
            env.get(v)
            for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        ):
            values["traces_exporters"] = ("otlp",)
        return cls(**values).replace(**overrides)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes``; unknown names are an error naming the argument."""
        if not changes:
            return self
        fields = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            if name not in fields:
                hint = _close_match(name, fields)
                also = f"; did you mean {hint[0]}?" if hint else ""
                raise ConfigError(f"{name}: unknown asyncwatch setting{also}")
        normalised = {k: _normalise(k, v) for k, v in changes.items()}
        return dataclasses.replace(self, **normalised)

    def uses(self, exporter: str, *, signal: str = "metrics") -> bool:
        """Whether ``exporter`` is among the configured exporters for ``signal``."""
        chosen = self.metrics_exporters if signal == "metrics" else self.traces_exporters
        return exporter in chosen and "none" not in chosen


def check_environment(config: Config, env: Mapping[str, str] | None = None) -> None:
    """The checks that depend on this machine and on the SDK's ``OTEL_*`` variables.

    ``install()`` runs them before it starts anything (``asyncwatch run`` too, before the
    command starts), so a value that would only fail later (a host name that does not resolve,
    a missing profile folder, an export interval the SDK would ignore) is refused up front
    with the setting named.
    """
    env = os.environ if env is None else env
    if config.uses("prometheus") and config.enabled:
        host = config.prometheus_host
        try:
            socket.getaddrinfo(host, config.prometheus_port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(
                f"prometheus_host={host!r} ({_source('prometheus_host', env)}): does not "
                f"resolve ({exc})"
            ) from None
    if config.profile_dir and not (
        os.path.isdir(config.profile_dir) and os.access(config.profile_dir, os.W_OK | os.X_OK)
    ):
        raise ConfigError(
            f"profile_dir={config.profile_dir!r} ({_source('profile_dir', env)}): not a writable "
            "directory (create it first, or leave it empty for a temporary folder)"
        )
    periodic = any(config.uses(kind) for kind in ("otlp", "console"))
    spans = "none" not in config.traces_exporters
    otlp = config.uses("otlp") or config.uses("otlp", signal="traces")
    checks: list[tuple[str, bool, float, float, str]] = [
        # variable, read by what asyncwatch builds, low, high, unit
        ("OTEL_METRIC_EXPORT_INTERVAL", periodic, 10, 86_400_000, "milliseconds"),
        ("OTEL_BSP_SCHEDULE_DELAY", spans, 1, 86_400_000, "milliseconds"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", spans, 1, 10_000_000, "spans"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", spans, 1, 10_000_000, "spans"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", otlp, 0.001, 3600, "seconds"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", otlp, 0.001, 3600, "seconds"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", otlp, 0.001, 3600, "seconds"),
    ]
    values: dict[str, float] = {}
    for variable, used, low, high, unit in checks:
        raw = env.get(variable)
        if not used or raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        whole = unit == "spans" or variable.startswith("OTEL_BSP")
        if not low <= value <= high or (whole and not value.is_integer()):
            kind = "a whole number" if whole else "a number"
            raise ConfigError(
                f"{variable}={raw!r}: must be {kind} of {unit} from {low:g} to {high:g}"
            )
        values[variable] = value
    batch = values.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
    queue = values.get("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    if spans and batch > queue:
        raise ConfigError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch:g} must not exceed "
            f"OTEL_BSP_MAX_QUEUE_SIZE={queue:g}"
        )
    if otlp:
        for variable in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ):
            raw = env.get(variable)
            if raw and (problem := _endpoint_problem(raw.strip(), config.otlp_protocol)):
                raise ConfigError(f"{variable}={raw!r}: {problem}")
        raw = env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
        if raw and raw.strip().lower() not in ("gzip", "deflate", "none"):
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_COMPRESSION={raw!r}: must be gzip, deflate or none"
            )


def _source(name: str, env: Mapping[str, str]) -> str:
    """The variable that set ``name`` (the first one present), else its own variable."""
    variables = _SETTINGS[name].env
    return next((v for v in variables if (env.get(v) or "").strip()), variables[0])


def _endpoint_problem(url: str, protocol: str) -> str | None:
    try:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if "://" not in url and protocol != "grpc":
        return "must be a URL such as http://localhost:4318"
    if parsed.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    try:
        parsed.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return "has an invalid port"
    if not parsed.hostname:
        return "names no host"
    return None


# Variables read by other modules (the CLI, extensions) that are still asyncwatch's own.
_OTHER_KNOWN_VARIABLES: set[str] = {"ASYNCWATCH_BOOTSTRAP", "ASYNCWATCH_BOOTSTRAP_WARNED"}


def _normalise(name: str, value: Any) -> Any:
    """Accept the obvious Python spellings of a setting: lists for tuples, 'all' for inf."""
    if name in (
        "task_spans",
        "metrics_exporters",
        "traces_exporters",
        "http_excluded_paths",
        "http_excluded_urls",
        "idle_coroutines",
        "allowed_hosts",
    ):
        if isinstance(value, str):
            return _parse_list(value)
        if isinstance(value, list):
            return tuple(value)
    if name == "timed_per_s" and value == "all":
        return math.inf
    return value


def raw_problem(name: str, raw: str) -> str | None:
    """What is wrong with ``raw`` as the text of setting ``name`` (None: nothing)."""
    setting = _SETTINGS[name]
    if raw.strip() == "":
        return None
    try:
        value = setting.parse(raw)
    except ValueError as exc:
        return str(exc)
    problem = setting.check(value)
    return None if problem is None else f"{problem} (accepted: {setting.form})"


def settings_reference() -> list[tuple[str, str, str, str]]:
    """(argument, variables, default, accepted form) for each setting, for docs and tests."""
    defaults = Config()
    rows = []
    for name, setting in _SETTINGS.items():
        rows.append((name, ", ".join(setting.env), repr(getattr(defaults, name)), setting.form))
    return rows


def _close_match(name: str, known: set[str]) -> list[str]:
    """The known name closest to a misspelt one (difflib is imported only for a typo)."""
    import difflib

    return difflib.get_close_matches(name, sorted(known), n=1)
