"""Every metric has one Prometheus name, whichever way it reaches Prometheus, and the docs'
metric reference says that name.

Two paths: asyncwatch's embedded /metrics endpoint (opentelemetry-exporter-prometheus), and
OTLP to an OpenTelemetry Collector or to Prometheus's OTLP receiver, which name metrics with
Prometheus's otlptranslator rules. ``MetricDef.prometheus`` is what the metric reference
(docs/reference/metrics.md) and the dashboards use; it must equal both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import asyncwatch
from asyncwatch._core import names as n
from asyncwatch._core.points import HistValue

from .conftest import ROOT, free_port

BOUNDS = (1.0, 2.0)


def _one_point_each() -> Iterator[tuple[n.MetricDef, dict[str, str], object, int]]:
    """A point for every metric asyncwatch defines, so the page shows them all at once."""
    for m in n.METRICS:
        attrs = dict.fromkeys(m.attributes, "x")
        value: object = HistValue(BOUNDS, (1, 0, 0), 0.5, 1, 0.5, 0.5)
        if m.kind != "histogram":
            value = 1
        yield m, attrs, value, 0


def served_names() -> set[str]:
    """The sample names on a real /metrics page with every metric on it."""
    port = free_port()
    watch = asyncwatch.install(prometheus_port=port, raise_errors=True)
    try:
        watch.bridge.add_source("every-metric", _one_point_each)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        asyncwatch.uninstall(timeout_s=2)
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_is_served_under_its_documented_name() -> None:
    """The embedded endpoint serves each metric under ``MetricDef.prometheus`` (a histogram's
    samples add _bucket, _sum and _count), and nothing else but target_info."""
    expected = {"target_info"}
    for m in n.METRICS:
        parts = ("_bucket", "_sum", "_count") if m.kind == "histogram" else ("",)
        expected.update(m.prometheus + part for part in parts)
    served = served_names()
    assert served == expected
    assert "asyncwatch_advisor_expected_gain_ratio" in served


# Prometheus's otlptranslator (used by the OpenTelemetry Collector's prometheus and
# prometheusremotewrite exporters and by Prometheus's OTLP receiver), normalizeName with
# suffixes on: github.com/prometheus/otlptranslator metric_namer.go.
_OTLP_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "", "%": "percent"}


def otlptranslator_name(name: str, unit: str, kind: str) -> str:
    tokens = [t for t in re.split(r"[^a-zA-Z0-9:]+", name) if t]
    bare = re.sub(r"\{[^}]*\}", "", unit)  # annotations such as {task} name no unit
    unit_word = _OTLP_UNITS.get(bare, bare)
    if unit_word and unit_word not in tokens:
        tokens.append(unit_word)
    if kind == "counter":  # monotonic sums only
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":  # Gauge data only (an UpDownCounter is a Sum)
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    return "_".join(tokens)


@pytest.mark.parametrize("metric", n.METRICS, ids=lambda m: m.name)
def test_a_collector_gives_the_same_name(metric: n.MetricDef) -> None:
    assert otlptranslator_name(metric.name, metric.unit, metric.kind) == metric.prometheus
    reference = (ROOT / "docs" / "reference" / "metrics.md").read_text()
    for m in n.METRICS:
        assert f"| `{m.name}` | `{m.prometheus}` |" in reference


def test_attribute_keys_follow_current_semantic_conventions() -> None:
    assert n.CONTEXT_SWITCH_TYPE == "process.context_switch.type"
