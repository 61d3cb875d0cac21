"""``asyncwatch.stats()``: a frozen snapshot of what the Recorder holds, for code and people."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._core.measure import Histogram
from ._recorder import KeySnapshot


@dataclass(frozen=True)
class Percentiles:
    """Percentiles of a timed sample (seconds); None until something was timed."""

    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    timed: int
    """Tasks the sample stands for (weighted), not the number of samples."""

    @classmethod
    def of(cls, hist: Histogram) -> Percentiles:
        """Percentiles of a recorder histogram."""
        if hist.total <= 0:
            return cls(None, None, None, None, 0)
        return cls(
            hist.quantile(0.50), hist.quantile(0.95), hist.quantile(0.99), hist.max, hist.total
        )


@dataclass(frozen=True)
class CoroutineStats:
    """Everything counted for one coroutine name (``module.qualname``)."""

    name: str
    created: int
    in_flight: int
    peak: int
    ok: int
    errors: int
    cancelled: int
    errors_by_type: Mapping[str, int]
    duration: Percentiles
    """First step to end."""
    schedule_delay: Percentiles
    """Creation to first step."""
    memory_bytes: int | None = None
    """Live bytes allocated inside this coroutine (only with ``memory_attribution``)."""

    @property
    def finished(self) -> int:
        """Tasks that ended, whatever the outcome."""
        return self.ok + self.errors + self.cancelled

    @classmethod
    def of(cls, name: str, snap: KeySnapshot, memory: int | None = None) -> CoroutineStats:
        """Build from a merged recorder snapshot."""
        return cls(
            name=name,
            created=snap.created,
            in_flight=snap.in_flight,
            peak=snap.peak,
            ok=snap.ok,
            errors=sum(snap.errors.values()),
            cancelled=snap.cancelled,
            errors_by_type=dict(snap.errors),
            duration=Percentiles.of(snap.duration),
            schedule_delay=Percentiles.of(snap.delay),
            memory_bytes=memory,
        )


@dataclass(frozen=True)
class ProcessStats:
    """Process figures at the time of the snapshot (None where the OS does not say)."""

    rss_bytes: int | None = None
    uss_bytes: int | None = None
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    threads: int | None = None
    gc_collections: tuple[int, ...] = ()


_SORT_KEYS = ("created", "in_flight", "peak", "errors", "cancelled", "p50", "p95", "p99")


@dataclass(frozen=True)
class Stats:
    """A snapshot of every observed coroutine, returned by ``asyncwatch.stats()``."""

    coroutines: Mapping[str, CoroutineStats] = field(default_factory=dict)
    process: ProcessStats = field(default_factory=ProcessStats)
    taken_at: float = field(default_factory=time.time)
    installed: bool = True

    def __getitem__(self, name: str) -> CoroutineStats:
        return self.coroutines[name]

    def __contains__(self, name: object) -> bool:
        return name in self.coroutines

    @property
    def created(self) -> int:
        """Tasks created, all coroutines together."""
        return sum(c.created for c in self.coroutines.values())

    @property
    def in_flight(self) -> int:
        """Tasks in flight now, all coroutines together."""
        return sum(c.in_flight for c in self.coroutines.values())

    def top(self, n: int = 10, by: str = "created") -> list[CoroutineStats]:
        """The ``n`` coroutines with the most of ``by`` (see ``_SORT_KEYS``)."""
        if by not in _SORT_KEYS:
            raise ValueError(f"by={by!r}: sort by one of {', '.join(_SORT_KEYS)}")

        def value(c: CoroutineStats) -> float:
            if by.startswith("p"):
                return getattr(c.duration, by) or 0.0
            return float(getattr(c, by))

        return sorted(self.coroutines.values(), key=value, reverse=True)[:n]

    def format(self, n: int = 20, by: str = "created") -> str:
        """A plain-text table of the top ``n`` coroutines."""
        head = (
            f"{'coroutine':<48} {'created':>9} {'flight':>7} {'peak':>6} {'errors':>7} "
            f"{'cancel':>7} {'p50':>9} {'p95':>9} {'p99':>9} {'delay p99':>10}"
        )
        lines = [head, "-" * len(head)]
        for c in self.top(n, by):
            lines.append(
                f"{_short(c.name, 48):<48} {c.created:>9} {c.in_flight:>7} {c.peak:>6} "
                f"{c.errors:>7} {c.cancelled:>7} {format_ms(c.duration.p50):>9} "
                f"{format_ms(c.duration.p95):>9} {format_ms(c.duration.p99):>9} "
                f"{format_ms(c.schedule_delay.p99):>10}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def format_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]
