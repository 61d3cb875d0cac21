"""asyncwatch's own faults stay inside asyncwatch: counted, never reaching the app, and a
failing part of a collection never empties the rest of the /metrics page (issue 13.6)."""

from __future__ import annotations

import logging
import urllib.request
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics._internal.measurement_consumer import (
    SynchronousMeasurementConsumer,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

import asyncwatch
from asyncwatch._core import names as n
from asyncwatch.asgi._exchange import COMPILED, HttpExchange

from .asgi_servers import Uvicorn
from .conftest import collect, free_port, point


def test_a_fault_in_recording_a_request_never_reaches_the_app(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Recording a request raising (a bug there) leaves the app's send() unaffected; the fault
    is counted in asyncwatch.internal.errors (hook asgi_request). The compiled core's send
    records a request it has no shortcut for (the first one) with ``record_full``; the
    Python core's with ``record``."""

    def broken(self: HttpExchange, end: float) -> None:
        raise RuntimeError("bug in record")

    monkeypatch.setattr(HttpExchange, "record_full" if COMPILED else "record", broken)
    reader = InMemoryMetricReader()
    asyncwatch.install(metrics_exporters=("none",), metric_readers=[reader], asgi_auto=False)
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": b"ok"})
        except BaseException as exc:
            raised.append(exc)
            raise

    with (
        caplog.at_level(logging.ERROR, logger="asyncwatch"),
        Uvicorn(asyncwatch.AsyncWatchMiddleware(app)) as server,
    ):
        response = httpx.get(server.url + "/")
    assert (response.status_code, response.text) == (200, "ok")
    assert raised == []
    errors = collect(reader)[n.INTERNAL_ERRORS.name]
    assert point(errors, asyncwatch__hook="asgi_request").value >= 1


def scrape(url: str) -> dict[str, Any]:
    """The metric families of one /metrics page, by name."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def internal_errors(families: dict[str, Any]) -> dict[str, float]:
    family = families.get("asyncwatch_internal_errors")
    if family is None:
        return {}
    return {s.labels["asyncwatch_hook"]: s.value for s in family.samples}


def test_a_source_that_fails_leaves_the_rest_of_the_page_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A metric source whose points cannot be converted: the other sources are still served
    on the real /metrics endpoint, and the failure is counted on the same page."""
    port = free_port()
    watch = asyncwatch.install(prometheus_port=port, metrics_exporters=("prometheus",))
    watch.bridge.add_source("broken", lambda: [(n.INTERNAL_ERRORS, None, 1, 0)])
    with caplog.at_level(logging.ERROR, logger="asyncwatch"):
        families = scrape(f"http://127.0.0.1:{port}/metrics")
    assert {"process_memory_usage_bytes", "asyncwatch_deadlocks"} <= families.keys()
    assert internal_errors(families) == {"collect:broken": 1.0}


def test_the_sdk_part_of_a_collection_failing_still_serves_asyncwatchs_metrics(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The OpenTelemetry SDK's own collection raising (before asyncwatch's metrics are merged
    in): asyncwatch's metrics are still served, and the failure is counted."""

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("SDK collection failed")

    monkeypatch.setattr(SynchronousMeasurementConsumer, "collect", broken)
    port = free_port()
    asyncwatch.install(prometheus_port=port, metrics_exporters=("prometheus",))
    with caplog.at_level(logging.ERROR, logger="asyncwatch"):
        families = scrape(f"http://127.0.0.1:{port}/metrics")
    assert internal_errors(families) == {"collect:sdk": 1.0}
    assert {"process_memory_usage_bytes", "asyncwatch_deadlocks"} <= families.keys()
