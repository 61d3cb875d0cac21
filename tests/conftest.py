"""Shared fixtures. Every fixture that changes global state puts it back."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch

ROOT = Path(__file__).resolve().parent.parent

_ORIGINAL_INIT = asyncio.BaseEventLoop.__init__
_ORIGINAL_GET = asyncio.BaseEventLoop.get_task_factory
_ORIGINAL_SET = asyncio.BaseEventLoop.set_task_factory
_ORIGINAL_RUN = asyncio.BaseEventLoop.run_forever
_ORIGINAL_CLOSE = asyncio.BaseEventLoop.close
_ORIGINAL_CREATE = asyncio.BaseEventLoop.create_task  # patched on 3.13.0-3.13.2 only
_PRIMITIVES = (asyncio.Lock, asyncio.Semaphore, asyncio.BoundedSemaphore, asyncio.Condition,
               asyncio.Event, asyncio.Queue)
_ORIGINAL_PRIMITIVES = {cls: dict(vars(cls)) for cls in _PRIMITIVES}


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    """Every test leaves asyncwatch uninstalled and the loop and lock classes as they were."""
    yield
    asyncwatch.uninstall(timeout_s=2)
    assert asyncio.BaseEventLoop.__init__ is _ORIGINAL_INIT
    assert asyncio.BaseEventLoop.get_task_factory is _ORIGINAL_GET
    assert asyncio.BaseEventLoop.set_task_factory is _ORIGINAL_SET
    assert asyncio.BaseEventLoop.run_forever is _ORIGINAL_RUN
    assert asyncio.BaseEventLoop.close is _ORIGINAL_CLOSE
    assert asyncio.BaseEventLoop.create_task is _ORIGINAL_CREATE
    for cls, attributes in _ORIGINAL_PRIMITIVES.items():
        now = vars(cls)
        assert now.keys() == attributes.keys(), cls
        assert all(now[k] is v for k, v in attributes.items()), cls


@pytest.fixture
def reader() -> InMemoryMetricReader:
    """An OTel in-memory reader to hand to install(metric_readers=[...])."""
    return InMemoryMetricReader()


def strict_watch(reader: InMemoryMetricReader, **settings: Any) -> Iterator[asyncwatch.Watch]:
    """asyncwatch installed in strict mode, no exporter, an in-memory reader attached (and any
    further settings), uninstalled afterwards: the body of the ``watch`` fixtures."""
    w = asyncwatch.install(
        metrics_exporters=("none",),
        raise_errors=True,
        timed_per_s=float("inf"),
        metric_readers=[reader],
        **settings,
    )
    yield w
    asyncwatch.uninstall(timeout_s=2)


@pytest.fixture
def watch(reader: InMemoryMetricReader) -> Iterator[asyncwatch.Watch]:
    """asyncwatch installed in strict mode, no exporter, an in-memory reader attached."""
    yield from strict_watch(reader)


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> data points, from one collection."""
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def point(points: list[Any], **attrs: Any) -> Any:
    """The single data point whose attributes include ``attrs`` (keys with dots as __)."""
    wanted = {k.replace("__", "."): v for k, v in attrs.items()}
    found = [p for p in points if all(p.attributes.get(k) == v for k, v in wanted.items())]
    assert len(found) == 1, (wanted, [dict(p.attributes) for p in points])
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def marked_line(path: str | Path, marker: str) -> int:
    """The number of the line of ``path`` that ends with ``# <marker>``."""
    for number, text in enumerate(Path(path).read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(f"no line marked {marker!r} in {path}")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)  # polling with a deadline, not sleeping to wait
        delay = min(delay * 2, 0.2)


def python_env(**extra: str) -> dict[str, str]:
    """An environment for a child Python with no stray ASYNCWATCH_/OTEL_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCWATCH_", "OTEL_"))}
    env.update(extra)
    return env


def run_python(
    code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -c code args...`` in a clean environment; output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env or python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
