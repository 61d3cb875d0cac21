"""Shared fixtures. Every fixture that changes global state puts it back."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch
from asyncwatch import testing

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
    """asyncwatch installed for a test (``asyncwatch.testing.installed``: strict mode, no
    exporter, every task timed) with ``reader`` attached and any further settings: the body of
    the ``watch`` fixtures."""
    with testing.installed(metric_reader=reader, **settings) as w:
        yield w


@pytest.fixture
def watch(reader: InMemoryMetricReader) -> Iterator[asyncwatch.Watch]:
    """asyncwatch installed in strict mode, no exporter, an in-memory reader attached."""
    yield from strict_watch(reader)


# Metric name -> plain data points, from one collection (asyncwatch.testing.metrics).
collect = testing.metrics
point = testing.point


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


# Poll a condition with a deadline (asyncwatch.testing.wait_until).
wait_for = testing.wait_until


def python_env(**extra: str) -> dict[str, str]:
    """An environment for a child Python with no stray ASYNCWATCH_/OTEL_ settings (but the
    choice of task path: a run on the pure-Python twin runs its children on it too)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ASYNCWATCH_", "OTEL_")) or k == "ASYNCWATCH_NO_EXTENSIONS"
    }
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
