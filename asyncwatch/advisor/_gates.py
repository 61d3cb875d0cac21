"""Rate gates: ``asyncwatch.gate(name, rpm=..., tpm=..., tokens=n)``.

LLM and other metered APIs limit requests and tokens per minute; clients wait at their own
limiter (aiolimiter, a token bucket, the SDK's) before each call. ``gate`` is a context
manager (``with`` or ``async with``) put around that wait::

    async with asyncwatch.gate("openai", rpm=RPM, tpm=TPM, tokens=n):
        await rpm_limiter.acquire()
        await tpm_limiter.acquire(n)

Per gate name it counts the passes (requests, and tokens when given), the time spent inside
(the wait at the gate) and the callers inside now, and keeps the declared limits, exported
as ``asyncwatch.gate.*``. It never waits itself. At most ``MAX_GATES`` names; later ones
are counted under ``_OTHER``. A no-op when asyncwatch is not installed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from .._core import names as n

clock = time.perf_counter
MAX_GATES = 100


class GateStats:
    """Cumulative figures of one gate name."""

    __slots__ = ("passes", "rpm", "tokens", "tpm", "wait_s", "waiting")

    def __init__(self) -> None:
        self.passes = 0
        self.tokens = 0
        self.wait_s = 0.0
        self.waiting = 0
        self.rpm: float | None = None
        self.tpm: float | None = None


class GateProbe:
    """The gates of one ``Watch``."""

    def __init__(self) -> None:
        self.active = False
        self._gates: dict[str, GateStats] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget everything (after fork)."""
        self._lock = threading.Lock()
        self._gates = {}

    def stats(self, name: str) -> GateStats:
        """The figures of ``name`` (``_OTHER`` past ``MAX_GATES`` names)."""
        stats = self._gates.get(name)
        if stats is None:
            with self._lock:
                stats = self._gates.get(name)
                if stats is None:
                    if len(self._gates) >= MAX_GATES:
                        name = n.OVERFLOW
                        stats = self._gates.get(name)
                    if stats is None:
                        stats = self._gates[name] = GateStats()
        return stats

    def points(self) -> Iterable[Any]:
        """Metric points (any thread)."""
        start = 0
        with self._lock:
            gates = list(self._gates.items())
        for name, g in gates:
            attrs = {n.RESOURCE: name}
            yield n.GATE_PASSES, {**attrs, n.GATE_UNIT: "requests"}, g.passes, start
            if g.tokens or g.tpm is not None:
                yield n.GATE_PASSES, {**attrs, n.GATE_UNIT: "tokens"}, g.tokens, start
            if g.rpm is not None:
                yield n.GATE_LIMIT, {**attrs, n.GATE_UNIT: "requests"}, g.rpm, start
            if g.tpm is not None:
                yield n.GATE_LIMIT, {**attrs, n.GATE_UNIT: "tokens"}, g.tpm, start
            yield n.GATE_WAIT_TIME, attrs, g.wait_s, start
            yield n.GATE_WAITING, attrs, g.waiting, start


class Gate:
    """One pass through a gate; see the module docstring."""

    __slots__ = ("_began", "_stats", "_tokens")

    def __init__(self, stats: GateStats | None, tokens: int) -> None:
        self._stats = stats
        self._tokens = tokens
        self._began = 0.0

    def __enter__(self) -> Gate:
        stats = self._stats
        if stats is not None:
            stats.waiting += 1
            self._began = clock()
        return self

    def __exit__(self, *exc: object) -> None:
        stats = self._stats
        if stats is not None:
            stats.wait_s += clock() - self._began
            stats.waiting -= 1
            if exc[0] is None:  # a wait that raised (cancelled, timed out) let nothing through
                stats.passes += 1
                stats.tokens += self._tokens

    async def __aenter__(self) -> Gate:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)


def _limit(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"asyncwatch.gate: {what} must be a positive number or None")
    return float(value)


def make_gate(probe: GateProbe | None, name: str, rpm: Any, tpm: Any, tokens: Any) -> Gate:
    """Validate the arguments and build the context manager (inert without a probe)."""
    if not isinstance(name, str) or not name:
        raise ValueError("asyncwatch.gate: name must be a non-empty string")
    rpm_f, tpm_f = _limit(rpm, "rpm"), _limit(tpm, "tpm")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError("asyncwatch.gate: tokens must be a whole number >= 0")
    if probe is None or not probe.active:
        return Gate(None, tokens)
    stats = probe.stats(name)
    if rpm_f is not None:
        stats.rpm = rpm_f
    if tpm_f is not None:
        stats.tpm = tpm_f
    return Gate(stats, tokens)
