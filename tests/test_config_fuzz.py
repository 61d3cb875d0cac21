"""Every setting is either refused at install() with a ConfigError naming it, leaving nothing
behind, or works: install, a short loop and uninstall raise nothing (issue 13.4)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncwatch
from asyncwatch import ConfigError
from asyncwatch._core.config import _SETTINGS, Config
from asyncwatch._core.environment import check_environment

from .conftest import free_port, wait_for

# Every class or module whose attributes asyncwatch may patch while installed.
_PATCHABLE: list[Any] = [
    asyncio,
    asyncio.tasks,
    asyncio.BaseEventLoop,
    asyncio.events.Handle,
    asyncio.Lock,
    asyncio.Semaphore,
    asyncio.BoundedSemaphore,
    asyncio.Condition,
    asyncio.Event,
    asyncio.Queue,
    concurrent.futures.ThreadPoolExecutor,
]
with contextlib.suppress(ImportError):
    import starlette.applications

    _PATCHABLE.append(starlette.applications.Starlette)


def _state() -> dict[str, Any]:
    """What a refused or undone install must leave as it found: threads and patched names."""
    return {
        "threads": {t for t in threading.enumerate() if t.is_alive()},
        "attributes": {id(obj): dict(vars(obj)) for obj in _PATCHABLE},
    }


def _assert_restored(before: dict[str, Any], port: int | None = None) -> None:
    def threads_gone() -> bool:
        return not {t for t in threading.enumerate() if t.is_alive()} - before["threads"]

    extra = lambda: {t.name for t in threading.enumerate()} - {t.name for t in before["threads"]}  # noqa: E731
    wait_for(threads_gone, timeout=20, what="asyncwatch's threads to end")
    assert threads_gone(), extra()
    for obj in _PATCHABLE:
        now, then = vars(obj), before["attributes"][id(obj)]
        changed = [k for k in now.keys() | then.keys() if now.get(k) is not then.get(k)]
        assert not changed, (obj, changed)
    assert asyncwatch.current() is None
    if port is not None:
        with socket.socket() as s:  # the port asyncwatch would have served on is free again
            s.bind(("127.0.0.1", port))


def _free_ports() -> dict[str, int]:
    return {
        "prometheus_port": free_port(),
        "console_port": free_port(),
        "console_webui_port": free_port(),
        "console_repl_port": free_port(),
    }


async def _short_run() -> None:
    lock = asyncio.Lock()

    async def child(i: int) -> int:
        async with lock:
            await asyncio.sleep(0)
        return i

    await asyncio.gather(*(child(i) for i in range(5)))
    await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2])
    await asyncio.sleep(0.01)


def _try(chosen: dict[str, Any]) -> None:
    """install() with ``chosen`` settings: refused naming one of them, or working end to end."""
    ports = _free_ports()
    base: dict[str, Any] = {**ports, "advisor_interval_s": 0.05, "deadlock_interval_s": 0.05}
    base.update(chosen)
    before = _state()
    try:
        watch = asyncwatch.install(**base)
    except ConfigError as exc:
        named = [name for name in chosen if name in str(exc)]
        assert named, exc  # noqa: PT017 - refused or not is the fuzz's outcome
        _assert_restored(before, ports["prometheus_port"])
        return
    try:
        asyncio.run(_short_run())
    finally:
        asyncwatch.uninstall(timeout_s=5)
    assert not watch.faults.counts, (chosen, dict(watch.faults.counts))  # no hidden errors
    _assert_restored(before)


HOSTILE: list[Any] = [
    math.inf, -math.inf, math.nan, 1e300, -1e300, 1e-300, -1, 0, 1, 0.5, 2**64, 65535, 65536,
    "", "x", "::1", "1", "all", "none", "otlp", "localhost", "256.0.0.1", "/nonexistent",
    None, [], (), ("x",), ["prometheus"], True, False, b"x", object(),
]  # fmt: skip


def _values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(HOSTILE),
        st.floats(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.booleans(),
        st.floats(min_value=0.001, max_value=10),  # plausible values: the "works" path
        st.integers(min_value=0, max_value=100),
        st.text(max_size=6),
        st.lists(st.text(max_size=4), max_size=2).map(tuple),
    )


@pytest.mark.parametrize("name", sorted(_SETTINGS))
def test_every_setting_refuses_every_hostile_value_by_name(name: str) -> None:
    """Config-level sweep: each hostile value is accepted or refused with the setting named
    (never another exception type)."""
    for value in HOSTILE:
        try:
            Config().replace(**{name: value})
        except ConfigError as exc:
            assert name in str(exc), exc  # noqa: PT017 - either outcome is allowed


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    names=st.lists(st.sampled_from(sorted(_SETTINGS)), min_size=1, max_size=3, unique=True),
    data=st.data(),
)
def test_fuzz_every_setting_is_refused_or_works(names: list[str], data: st.DataObject) -> None:
    """Hypothesis over every setting, up to three at once: ConfigError naming one of them
    with nothing left behind, or install + a short loop + uninstall with no exception and no
    internal error."""
    chosen = {name: data.draw(st.one_of(_plausible(name), _values()), label=name) for name in names}
    _try(chosen)


def _plausible(name: str) -> st.SearchStrategy[Any]:
    """Values of the setting's own type near its usual range: the "works" path."""
    default = getattr(Config(), name)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.just(default), st.integers(min_value=1, max_value=200))
    if isinstance(default, float):
        return st.one_of(st.just(default), st.floats(min_value=0.01, max_value=100))
    return st.just(default)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("export_timeout_s", math.inf),  # was OverflowError from uninstall() and at exit
        ("export_timeout_s", 1e300),
        ("export_timeout_s", 1e-300),  # abandoned every export
        ("advisor_window_s", math.inf),  # failed at run time
        ("memory_frames", 70_000),  # raw ValueError, /metrics thread and port left behind
        ("console_host", "::1"),  # accepted, then the console could not start
        ("prometheus_host", "no-such-host.invalid"),  # accepted, then a warning
        ("prometheus_host", "300.1.1.1"),
        ("profile_dir", "/nonexistent/asyncwatch-profiles"),
        ("prometheus_port_span", 10**12),  # built a list of 10**12 ports
    ],
)
def test_values_that_failed_later_are_refused_at_install(name: str, value: Any) -> None:
    """The values from issue 13.4: refused at install, named, and nothing left running."""
    extra = {"memory_attribution": True} if name == "memory_frames" else {}
    extra |= {"console": True} if name == "console_host" else {}
    ports = _free_ports()
    before = _state()
    with pytest.raises(ConfigError, match=name):
        asyncwatch.install(**ports, **extra, **{name: value})
    _assert_restored(before, ports["prometheus_port"])


def test_a_failure_inside_start_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a part fails after the /metrics server started, start() undoes what it did: no
    thread, the port free, no patch, and a second install() serves /metrics again."""
    from asyncwatch.tasks import _memory

    def broken(self: Any) -> None:
        raise RuntimeError("tracemalloc refused")

    monkeypatch.setattr(_memory.MemoryAttribution, "start", broken)
    port = free_port()
    before = _state()
    with pytest.raises(RuntimeError, match="tracemalloc refused"):
        asyncwatch.install(prometheus_port=port, memory_attribution=True)
    _assert_restored(before, port)
    monkeypatch.undo()
    watch = asyncwatch.install(prometheus_port=port)
    assert watch.prometheus_url == f"http://127.0.0.1:{port}/metrics"


@pytest.mark.parametrize(
    ("variable", "raw", "exporter"),
    [
        ("OTEL_METRIC_EXPORT_INTERVAL", "-5", "console"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "inf", "console"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "soon", "console"),
        ("OTEL_BSP_SCHEDULE_DELAY", "-1", "traces"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "traces"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "nan", "otlp"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:99999", "otlp"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "otlp"),
    ],
)
def test_otel_variables_asyncwatch_uses_are_checked(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, exporter: str
) -> None:
    """An OTEL_* variable the SDK would reject or ignore in what asyncwatch builds is refused
    at install() with the variable named."""
    monkeypatch.setenv(variable, raw)
    settings_: dict[str, Any] = {"prometheus_port": free_port()}
    if exporter == "traces":
        settings_["traces_exporters"] = ("console",)
    else:
        settings_["metrics_exporters"] = (exporter,)
    before = _state()
    with pytest.raises(ConfigError, match=variable):
        asyncwatch.install(**settings_)
    _assert_restored(before)
    # the same variable is left alone when nothing asyncwatch builds reads it
    check_environment(Config(metrics_exporters=("none",)), {variable: raw})


@pytest.fixture(autouse=True)
def _quiet_asyncwatch_log() -> Iterator[None]:
    logger = logging.getLogger("asyncwatch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


_VARIABLES = sorted({var for s in _SETTINGS.values() for var in s.env})
_OTEL_CHECKED = [
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
]
_RAW = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "1e300", "1e-300", "-5", "0", "1", "0.5", "65536",
                     "all", "true", "yes", " ", "::1", "http://127.0.0.1:1", "localhost:4317"]),
    st.text(max_size=10),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(variable=st.sampled_from(_VARIABLES + _OTEL_CHECKED), raw=_RAW)
def test_fuzz_every_variable_is_refused_by_name_or_accepted(variable: str, raw: str) -> None:
    """Environment text for every variable asyncwatch reads: ConfigError naming the variable,
    or a Config the machine checks accept (with every exporter that reads OTEL_* on)."""
    env = {variable: raw}
    try:
        config = Config.from_env(env)
        if variable in _OTEL_CHECKED:
            config = config.replace(
                metrics_exporters=("otlp", "console"), traces_exporters=("otlp",)
            )
        check_environment(config, env)
    except ConfigError as exc:
        assert variable in str(exc), exc  # noqa: PT017 - either outcome is allowed


@pytest.mark.parametrize("timeout_s", [math.inf, 1e300, math.nan, -1.0, 0.0])
def test_uninstall_takes_any_timeout(timeout_s: float) -> None:
    """uninstall(timeout_s=inf) is "as long as it takes" (capped at an hour), not an
    OverflowError from the thread APIs; nan and negative values mean the default
    (export_timeout_s), 0 the shortest wait the SDK accepts."""
    before = _state()
    asyncwatch.install(prometheus_port=free_port())
    asyncio.run(_short_run())
    asyncwatch.uninstall(timeout_s=timeout_s)
    _assert_restored(before)
