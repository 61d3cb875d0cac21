"""The advisor examples run as proof: each one's advice, applied where it applies, pays off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import asyncwatch
from examples import api_client, checkpoint_runner, event_bus, llm_client, period_calc


@pytest.fixture(autouse=True)
def _uninstalled() -> Iterator[None]:
    yield
    asyncwatch.uninstall(timeout_s=2)


def test_period_calc_more_ledger_workers_pay_off() -> None:
    """Ledger reads queue behind 4 workers: the suggested count at least doubles throughput."""
    out = period_calc.main([])
    assert out["suggested"] > 4
    assert out["after"] >= 2 * out["before"]


def test_event_bus_batch_size_grows_to_the_budget() -> None:
    """Writes of up to 8 events: the advice, applied step by step, multiplies events/s."""
    steps = event_bus.main(["--steps", "4"])
    assert len(steps) >= 3
    sizes = [size for size, _ in steps]
    assert sizes == sorted(sizes) and sizes[-1] <= 800  # 20 ms + 0.1 ms x n within 100 ms
    assert steps[-1][1] >= 5 * steps[0][1]


def test_api_client_limit_is_not_raised_past_the_rate_gates() -> None:
    """Trials at 2-16 in flight, gates capping at ~100 requests/s: the advice lowers the
    limit to where throughput stops growing instead of asking for more."""
    rates = api_client.main(["--limits", "2,4,8,16"])
    assert rates[16] < 1.3 * rates[8]  # the gates really cap it
    (rec,) = [r for r in asyncwatch.advise() if r.knob == "concurrency_limit"]
    assert rec.current == 16 and rec.suggested is not None and 4 < rec.suggested <= 12


def test_checkpoint_runner_pool_size_is_raised() -> None:
    """Jobs queue for 8 workers and the step scales: more workers are suggested."""
    checkpoint_runner.main(["--workers", "2,4,8"])
    (rec,) = [r for r in asyncwatch.advise() if r.target == "concurrency 'checkpoint-runner'"]
    assert rec.current == 8 and rec.suggested is not None and rec.suggested > 8


def test_llm_client_gate_wait_and_tokens_are_metrics() -> None:
    """RPM and TPM gates measured with asyncwatch.gate: every request and token through it
    is counted against the declared limits, and the callers' wait at it is there."""
    out = llm_client.main(["--requests", "36", "--callers", "12"])
    assert out["asyncwatch.gate.passes[requests]"] == 36
    assert 36 * 40 <= out["asyncwatch.gate.passes[tokens]"] <= 36 * 160
    assert out["asyncwatch.gate.limit[requests]"] == llm_client.RPM
    assert out["asyncwatch.gate.limit[tokens]"] == llm_client.TPM
    assert out["asyncwatch.gate.wait.time"] > 0 and out["asyncwatch.gate.waiting"] == 0
