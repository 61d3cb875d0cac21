"""One frozen configuration, from keyword arguments and ``ASYNCWATCH_*`` variables.

Every setting is described once, as a ``Config`` field declared with ``setting()``: its
default, its environment variables, its accepted form (parser and check) and its help.
``Config.from_env`` parses the variables (errors name the variable); ``Config(...)`` and
``install(**settings)`` check keyword arguments (errors name the argument). Either way a bad
value fails at once with the accepted form in the message. ``asyncwatch config`` and the
docs' settings reference (scripts/gen_reference.py) are built from the same fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config_parse import (
    ALLOWED_HOSTS,
    DIRECTORY,
    FLAG,
    FRACTION,
    GLOBS,
    GLOBS_OR_NONE,
    HOST,
    IPV4_HOST,
    LISTEN_PORT,
    METADATA_KEY,
    METRICS_EXPORTERS,
    PORT,
    PROTOCOL,
    RATE,
    REGEXES,
    THRESHOLD,
    TRACES_EXPORTERS,
    URL_PATH,
    Setting,
    is_loopback,
    parse_list,
    seconds,
    setting,
    whole,
)

__all__ = ["Config", "ConfigError", "in_force", "is_loopback", "put_in_force"]


class ConfigError(ValueError):
    """A setting has a value asyncwatch cannot use; the message names the setting."""


@dataclass(frozen=True)
class Config:
    """Every asyncwatch setting. Build it with keywords, or from the environment.

    ``Config.from_env()`` reads ``ASYNCWATCH_*`` variables (and the standard ``OTEL_*`` ones
    where a setting has one); keyword arguments to ``install()`` override them. Each field's
    variables, accepted form and help are in its metadata (``settings()``); the docs'
    settings reference and ``asyncwatch config`` list them.
    """

    enabled: bool = setting(
        True, "ASYNCWATCH_ENABLED", FLAG,
        help="Observe tasks at all. ``ASYNCWATCH_ENABLED=0`` turns a wrapped process into a no-op.",
    )
    max_keys: int = setting(
        200, "ASYNCWATCH_MAX_KEYS", whole(1, 1_000_000),
        help="Distinct coroutine names tracked; further names are counted under ``_OTHER``.",
    )
    max_series: int = setting(
        3000, "ASYNCWATCH_MAX_SERIES", whole(1, 10_000_000),
        help=(
            "Most metric series exported (a histogram counts its buckets, sum and count); series "
            "beyond it are folded into one ``_OTHER`` series per metric (see \"Metric reference\")."
        ),
    )
    max_error_types: int = setting(
        20, "ASYNCWATCH_MAX_ERROR_TYPES", whole(1, 10_000),
        help="Distinct exception types counted per coroutine; others are folded into ``_OTHER``.",
    )
    timed_per_s: float = setting(
        200.0, "ASYNCWATCH_TIMED_PER_S", RATE,
        help=(
            "Tasks per second per coroutine whose schedule delay and duration are timed "
            "(``math.inf`` or ``'all'``: every task). Counts are always exact."
        ),
    )
    task_spans: tuple[str, ...] = setting(
        (), "ASYNCWATCH_TASK_SPANS", GLOBS,
        help="Glob patterns of coroutine names (``myapp.jobs.*``) that get a span per task.",
    )
    task_span_ratio: float = setting(
        0.0, "ASYNCWATCH_TASK_SPAN_RATIO", FRACTION,
        help="Fraction of all other tasks that get a span (0 = none, 1 = every task).",
    )
    metrics_exporters: tuple[str, ...] = setting(
        ("prometheus",),
        ("ASYNCWATCH_METRICS_EXPORTER", "OTEL_METRICS_EXPORTER"),
        METRICS_EXPORTERS,
        help=(
            "Where metrics go: ``prometheus`` (embedded endpoint), ``otlp``, ``console``, "
            "``none``."
        ),
    )
    traces_exporters: tuple[str, ...] = setting(
        ("none",), ("ASYNCWATCH_TRACES_EXPORTER", "OTEL_TRACES_EXPORTER"), TRACES_EXPORTERS,
        help=(
            "Where spans go: ``otlp``, ``console``, ``none``. Default ``otlp`` when an OTLP "
            "endpoint variable is set, else ``none``."
        ),
    )
    otlp_protocol: str = setting(
        "http/protobuf", ("ASYNCWATCH_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"), PROTOCOL,
        help="OTLP transport: ``http/protobuf`` or ``grpc``.",
    )
    prometheus_host: str = setting(
        "127.0.0.1", ("ASYNCWATCH_PROMETHEUS_HOST", "OTEL_EXPORTER_PROMETHEUS_HOST"), HOST,
        help="Address of the embedded ``/metrics`` endpoint. Loopback unless you choose otherwise.",
    )
    prometheus_port: int = setting(
        9464, ("ASYNCWATCH_PROMETHEUS_PORT", "OTEL_EXPORTER_PROMETHEUS_PORT"), PORT,
        help="Port of the embedded ``/metrics`` endpoint.",
    )
    prometheus_port_span: int = setting(
        0, "ASYNCWATCH_PROMETHEUS_PORT_SPAN", whole(0, 1000),
        help="If the port is busy, also try this many following ports (one per worker process).",
    )
    export_timeout_s: float = setting(
        3.0, "ASYNCWATCH_EXPORT_TIMEOUT_S", seconds(0.1, 600, example=3),
        help=(
            "Longest any one export, flush or shutdown may take before it is abandoned and "
            "counted."
        ),
    )
    memory_attribution: bool = setting(
        False, "ASYNCWATCH_MEMORY_ATTRIBUTION", FLAG,
        help=(
            "Attribute live memory to coroutines with tracemalloc (costly; see the docs' "
            "figures)."
        ),
    )
    memory_interval_s: float = setting(
        30.0, "ASYNCWATCH_MEMORY_INTERVAL_S", seconds(0.1, 86_400, example=30),
        help="Seconds between tracemalloc snapshots when memory attribution is on.",
    )
    http_excluded_paths: tuple[str, ...] = setting(
        (), "ASYNCWATCH_HTTP_EXCLUDED_PATHS", GLOBS_OR_NONE,
        help=(
            "Request paths (globs, e.g. ``/health*``) the ASGI middleware passes through "
            "unobserved."
        ),
    )
    http_excluded_urls: tuple[str, ...] = setting(
        (), ("ASYNCWATCH_HTTP_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"), REGEXES,
        help=(
            "Regular expressions searched in each request's full URL; matching requests are "
            "passed through unobserved (the standard ``OTEL_PYTHON_EXCLUDED_URLS``)."
        ),
    )
    http_max_routes: int = setting(
        200, "ASYNCWATCH_HTTP_MAX_ROUTES", whole(1, 100_000),
        help=(
            "Distinct ``http.route`` templates tracked; further routes are counted under "
            "``_OTHER``."
        ),
    )
    http_spans: bool = setting(
        True, "ASYNCWATCH_HTTP_SPANS", FLAG,
        help=(
            "A SERVER span per HTTP request and WebSocket connection, when spans go anywhere (a "
            "traces exporter, the app's tracer provider, or ``install(tracer_provider=...)``)."
        ),
    )
    http_metrics_path: str = setting(
        "", "ASYNCWATCH_HTTP_METRICS_PATH", URL_PATH,
        help=(
            "Serve Prometheus ``/metrics`` text at this path of the app itself (opt-in, e.g. "
            "``/metrics``), for deployments that expose one port."
        ),
    )
    asgi_auto: bool = setting(
        True, "ASYNCWATCH_ASGI_AUTO", FLAG,
        help=(
            "Add the ASGI middleware to every Starlette/FastAPI app whose middleware stack is "
            "built while asyncwatch is installed (unless the app added it already)."
        ),
    )
    memory_frames: int = setting(
        4, "ASYNCWATCH_MEMORY_FRAMES", whole(1, 65_535),
        help=(
            "Stack frames tracemalloc keeps per allocation: more finds allocations made deeper in "
            "helpers a coroutine calls, and costs more (see the docs' figures)."
        ),
    )
    console: bool = setting(
        False, "ASYNCWATCH_CONSOLE", FLAG,
        help=(
            "Serve the live aiomonitor console (telnet) with asyncwatch's commands; see the "
            "docs."
        ),
    )
    console_host: str = setting(
        "127.0.0.1", "ASYNCWATCH_CONSOLE_HOST", IPV4_HOST,
        help=(
            "Address the console listens on. Anything but loopback needs "
            "``console_allow_remote``."
        ),
    )
    console_port: int = setting(
        20101, "ASYNCWATCH_CONSOLE_PORT", LISTEN_PORT,
        help="Telnet port of the console (connect with ``asyncwatch console`` or ``telnet``).",
    )
    console_webui_port: int = setting(
        20102, "ASYNCWATCH_CONSOLE_WEBUI_PORT", LISTEN_PORT,
        help="Port of aiomonitor's web UI (task list, cancel), on ``console_host``.",
    )
    console_repl_port: int = setting(
        20103, "ASYNCWATCH_CONSOLE_REPL_PORT", LISTEN_PORT,
        help=(
            "Port of the Python REPL behind the console's ``console`` command (only with "
            "``console_repl``)."
        ),
    )
    console_allow_remote: bool = setting(
        False, "ASYNCWATCH_CONSOLE_ALLOW_REMOTE", FLAG,
        help=(
            "Let ``console_host`` be a non-loopback address (logs a warning: anyone who reaches "
            "the port can cancel tasks, and run code if ``console_repl`` is on)."
        ),
    )
    console_repl: bool = setting(
        False, "ASYNCWATCH_CONSOLE_REPL", FLAG,
        help=(
            "Allow aiomonitor's Python REPL (arbitrary code execution in the app). Off by "
            "default."
        ),
    )
    console_webui: bool = setting(
        False, "ASYNCWATCH_CONSOLE_WEBUI", FLAG,
        help=(
            "Serve aiomonitor's web UI (task list, cancel) on ``console_webui_port``. Off by "
            "default: it is a web page that can cancel tasks (see the docs' security notes)."
        ),
    )
    allowed_hosts: tuple[str, ...] = setting(
        (), "ASYNCWATCH_ALLOWED_HOSTS", ALLOWED_HOSTS,
        help=(
            "Host names (``Host`` and ``Origin``) the ``/metrics`` endpoint and the console's web "
            "UI answer besides loopback names and the address they listen on: names, addresses, "
            "``.example.com`` for its subdomains, ``*`` for any (not advised)."
        ),
    )
    console_task_tracing: bool = setting(
        False, "ASYNCWATCH_CONSOLE_TASK_TRACING", FLAG,
        help=(
            "Let aiomonitor trace tasks (creation stacks, ``ps-terminated``); it wraps each "
            "task's coroutine, so it is off by default."
        ),
    )
    profile_max_s: float = setting(
        60.0,
        "ASYNCWATCH_PROFILE_MAX_S",
        seconds(0.01, 3600, example=60, text='seconds from 0.01 to 3600'),
        help="Longest profile ``asyncwatch.profile()`` or the console's ``profile`` accepts.",
    )
    profile_dir: str = setting(
        "", "ASYNCWATCH_PROFILE_DIR", DIRECTORY,
        help="Where profiles are saved (pstats, callgrind); empty: a per-process temporary folder.",
    )
    loop_watch: bool = setting(
        True, "ASYNCWATCH_LOOP_WATCH", FLAG,
        help=(
            "Watch every instrumented event loop: a loop-lag heartbeat and one watchdog thread "
            "that names the line holding a blocked loop. ``0`` turns both off."
        ),
    )
    block_threshold_s: float = setting(
        0.1, "ASYNCWATCH_BLOCK_THRESHOLD_S", THRESHOLD,
        help=(
            "A loop held longer than this by one callback is reported as blocked (finding, "
            "metrics, one log line). The heartbeat runs every ``min(0.025, block_threshold_s / "
            "4)`` seconds."
        ),
    )
    precise_callbacks: bool = setting(
        False, "ASYNCWATCH_PRECISE_CALLBACKS", FLAG,
        help=(
            "Time every asyncio callback (patches ``asyncio.Handle._run``): every block is caught "
            "and timed exactly, at a cost per callback (see the docs). No effect on uvloop "
            "loops."
        ),
    )
    gil_watch: bool = setting(
        False, "ASYNCWATCH_GIL_WATCH", FLAG,
        help=(
            "Opt-in, experimental: name blocks inside C code that holds the GIL *while* they "
            "last, with ``faulthandler``'s later-timer, re-armed by the watchdog (by default, on "
            "Linux, they are named the moment the call returns). Off by default: when the timer "
            "fires while other threads run Python (a starved watchdog, not only a GIL-holding "
            "call), faulthandler reads their frames without the GIL, which can crash the process. "
            "asyncwatch gives the timer up as soon as anything else arms it after install."
        ),
    )
    max_culprits: int = setting(
        100, "ASYNCWATCH_MAX_CULPRITS", whole(1, 100_000),
        help=(
            "Distinct culprit lines counted in the blocked-loop metrics; others count as "
            "``_OTHER``."
        ),
    )
    deadlock_detection: bool = setting(
        True, "ASYNCWATCH_DEADLOCK_DETECTION", FLAG,
        help=(
            "Scan the await graph for deadlocks and stuck tasks, and track who holds each asyncio "
            "Lock/Semaphore (see \"Deadlocks and stuck tasks\")."
        ),
    )
    deadlock_interval_s: float = setting(
        0.5, "ASYNCWATCH_DEADLOCK_INTERVAL_S", seconds(0.01, 86_400, example=0.5),
        help=(
            "Seconds between scans of each event loop (stretched if a scan would take more than "
            "1% of the loop's time) and between cycle probes (stretched past 0.5%). A wait is "
            "judged once two scans have seen it, so a cycle is found within two intervals; one "
            "that a lock wait or a probe sees close is scanned for at once."
        ),
    )
    stuck_task_after_s: float = setting(
        60.0,
        "ASYNCWATCH_STUCK_TASK_AFTER_S",
        seconds(0.001, 604_800, example=60, text='seconds from 0.001 to 604800 (a week), e.g. 60'),
        help=(
            "A task waiting this long at the same await point, on something nothing can wake, is "
            "reported as stuck."
        ),
    )
    idle_coroutines: tuple[str, ...] = setting(
        (), "ASYNCWATCH_IDLE_COROUTINES", GLOBS,
        help=(
            "Globs of coroutine names (``myapp.listeners.*``) whose waits are expected to be "
            "idle: never reported as stuck."
        ),
    )
    advisor: bool = setting(
        True, "ASYNCWATCH_ADVISOR", FLAG,
        help=(
            "Measure executors, semaphores, batches and loop load, and offer advice "
            "(``asyncwatch.advise()``; see \"Advisor\")."
        ),
    )
    advisor_interval_s: float = setting(
        30.0, "ASYNCWATCH_ADVISOR_INTERVAL_S", seconds(0.01, 86_400, example=30),
        help=(
            "Seconds between the advisor's evaluations (logged when the advice changes, exported "
            "as ``asyncwatch.advisor.*`` gauges)."
        ),
    )
    advisor_window_s: float = setting(
        60.0, "ASYNCWATCH_ADVISOR_WINDOW_S", seconds(0.01, 86_400, example=60),
        help="How far back the advisor looks at executor calls, waits and loop load (seconds).",
    )
    advisor_batch_budget_s: float = setting(
        1.0, "ASYNCWATCH_ADVISOR_BATCH_BUDGET_S", seconds(0.0001, 3600, example=1),
        help=(
            "Latency budget per batch: suggested batch sizes keep one batch within it (a batch "
            "site can set its own with ``asyncwatch.batch(..., budget_s=...)``)."
        ),
    )
    advisor_max_threads: int = setting(
        128, "ASYNCWATCH_ADVISOR_MAX_THREADS", whole(1, 10_000),
        help="Most threads the advisor will ever suggest for one thread pool.",
    )
    advisor_gather: bool = setting(
        True, "ASYNCWATCH_ADVISOR_GATHER", FLAG,
        help=(
            "Record the size and duration of ``asyncio.gather`` fan-outs (observed through the "
            "class of gather's outer future; ``gather`` itself is not replaced)."
        ),
    )
    require: bool = setting(
        False, "ASYNCWATCH_REQUIRE", FLAG,
        help=(
            "Under ``asyncwatch run``: a Python process that cannot be observed (its interpreter "
            "cannot import asyncwatch, or install() fails) stops with exit code 2 instead of "
            "running unobserved with a warning. Implied by ``raise_errors``."
        ),
    )
    advisor_queues: bool = setting(
        True, "ASYNCWATCH_ADVISOR_QUEUES", FLAG,
        help=(
            "Export each ``asyncio.Queue`` site's depth and get/put wait (wraps ``Queue.get`` and "
            "``Queue.put`` while installed)."
        ),
    )
    lazy_start: bool = setting(
        False, "ASYNCWATCH_LAZY_START", FLAG,
        help=(
            "Start exporters when the first event loop is instrumented (set by ``asyncwatch "
            "run``)."
        ),
    )
    raise_errors: bool = setting(
        False, "ASYNCWATCH_RAISE", FLAG,
        help="Raise asyncwatch's own internal errors instead of counting them (for tests).",
    )

    def __post_init__(self) -> None:
        for name, spec in _SETTINGS.items():
            problem = spec.check(getattr(self, name))
            if problem is not None:
                raise ConfigError(
                    f"Config({name}={getattr(self, name)!r}): {problem} (accepted: {spec.form})"
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
        for name, spec in _SETTINGS.items():
            for var in spec.env:
                raw = env.get(var)
                if raw is None or raw.strip() == "":
                    continue
                try:
                    value = spec.parse(raw)
                except ValueError as exc:
                    raise ConfigError(f"{var}={raw!r}: {exc}") from None
                problem = spec.check(value)
                if problem is not None:
                    raise ConfigError(f"{var}={raw!r}: {problem} (accepted: {spec.form})")
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


def _described(field: dataclasses.Field[Any]) -> Setting:
    meta = field.metadata.get(METADATA_KEY)
    if not isinstance(meta, Setting):
        raise TypeError(f"Config.{field.name} is not declared with setting(...)")
    return meta


# Every setting by its argument name, in declaration order: derived from the fields.
_SETTINGS: dict[str, Setting] = {f.name: _described(f) for f in dataclasses.fields(Config)}

# help(Config) and API docs list the settings, from the same descriptions.
Config.__doc__ = (Config.__doc__ or "") + "\n    Settings:\n\n" + "\n".join(
    f"    - ``{f.name}`` (``{_SETTINGS[f.name].env[0]}``, default ``{f.default!r}``): "
    f"{_SETTINGS[f.name].help}"
    for f in dataclasses.fields(Config)
)


_in_force: Config | None = None


def in_force() -> Config:
    """The running asyncwatch's settings; the defaults when none is running.

    For what the app calls directly rather than through the Watch (``ProfileSession``):
    the Watch hands its settings in here when it starts (``put_in_force``).
    """
    return _in_force if _in_force is not None else Config()


def put_in_force(config: Config | None, *, replacing: Config | None = None) -> None:
    """Set the settings in force (``None``: none), only if ``replacing`` is what is set
    (when given), so a stopping Watch never clears a newer one's."""
    global _in_force
    if replacing is None or _in_force is replacing:
        _in_force = config


def settings() -> dict[str, Setting]:
    """Each setting's variables, accepted form and help, by argument name (a copy)."""
    return dict(_SETTINGS)


# Variables read by other modules (the CLI, extensions, the build) that are still asyncwatch's
# own: ASYNCWATCH_NO_EXTENSIONS=1 makes the task path use its pure-Python twin (tasks/_path.py),
# ASYNCWATCH_BUILD_EXTENSIONS is setup.py's.
_OTHER_KNOWN_VARIABLES: set[str] = {
    "ASYNCWATCH_BOOTSTRAP",
    "ASYNCWATCH_BOOTSTRAP_WARNED",
    "ASYNCWATCH_NO_EXTENSIONS",
    "ASYNCWATCH_BUILD_EXTENSIONS",
}


def _normalise(name: str, value: Any) -> Any:
    """Accept the obvious Python spellings of a setting: lists for tuples, 'all' for inf."""
    if _SETTINGS[name].listed:
        if isinstance(value, str):
            return parse_list(value)
        if isinstance(value, list):
            return tuple(value)
    if name == "timed_per_s" and value == "all":
        return math.inf
    return value


def raw_problem(name: str, raw: str) -> str | None:
    """What is wrong with ``raw`` as the text of setting ``name`` (None: nothing)."""
    spec = _SETTINGS[name]
    if raw.strip() == "":
        return None
    try:
        value = spec.parse(raw)
    except ValueError as exc:
        return str(exc)
    problem = spec.check(value)
    return None if problem is None else f"{problem} (accepted: {spec.form})"


def settings_reference() -> list[tuple[str, str, str, str]]:
    """(argument, variables, default, accepted form) for each setting, for docs and tests."""
    defaults = Config()
    rows = []
    for name, spec in _SETTINGS.items():
        rows.append((name, ", ".join(spec.env), repr(getattr(defaults, name)), spec.form))
    return rows


def _close_match(name: str, known: set[str]) -> list[str]:
    """The known name closest to a misspelt one (difflib is imported only for a typo)."""
    import difflib

    return difflib.get_close_matches(name, sorted(known), n=1)
