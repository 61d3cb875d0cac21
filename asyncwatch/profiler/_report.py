"""What a profile returns: frozen figures per function and per coroutine, and a text view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FunctionProfile:
    """One function's figures in a profile (seconds, wall clock)."""

    name: str
    filename: str
    lineno: int
    calls: int
    total_s: float
    """Time from entry to return, callees included (a coroutine's whole life, awaits included)."""
    own_s: float
    """Total minus the time in callees yappi saw."""
    coroutine: bool = False

    @property
    def where(self) -> str:
        """``file:line``."""
        return f"{self.filename}:{self.lineno}"


@dataclass(frozen=True)
class CoroutineProfile:
    """One coroutine (by asyncwatch's ``module.qualname`` name) in a profile."""

    name: str
    calls: int = 0
    """Coroutine runs yappi saw finish (tasks or awaited coroutines)."""
    wall_s: float = 0.0
    """Summed wall-clock life of those runs, awaits included."""
    busy_s: float | None = None
    """Time this coroutine's task steps held the event loop (None: not measured)."""
    steps: int = 0
    """Task steps measured for ``busy_s``."""


@dataclass(frozen=True)
class ProfileReport:
    """What ``asyncwatch.profile()`` returns."""

    started_at: float
    duration_s: float
    by_total: tuple[FunctionProfile, ...]
    by_own: tuple[FunctionProfile, ...]
    coroutines: tuple[CoroutineProfile, ...]
    """Sorted by busy time (then wall time), highest first."""
    files: Mapping[str, str] = field(default_factory=dict)
    """Format (``pstats``, ``callgrind``) -> path of the saved file."""
    leak_guard: str = ""
    """Whether the guard against yappi pinning coroutines was on, and if not why."""
    capped: bool = False
    """Stopped by the ``profile_max_s`` cap rather than by the caller."""
    yappi_bytes: int = 0
    """Memory yappi's own tables held at the end of the profile (freed afterwards)."""
    busy_measured: bool = False

    def format(self, n: int = 15) -> str:
        """Plain text: the top ``n`` coroutines and functions."""
        head = (
            f"profile: {self.duration_s:.2f}s wall clock"
            f"{' (stopped at the profile_max_s cap)' if self.capped else ''}; "
            f"leak guard {self.leak_guard}"
        )
        lines = [head, "", "coroutines (busy = time its task steps held the loop)"]
        lines.append(f"{'coroutine':<52} {'busy':>9} {'steps':>8} {'calls':>8} {'wall':>9}")
        for c in self.coroutines[:n]:
            busy = "-" if c.busy_s is None else _secs(c.busy_s)
            lines.append(
                f"{_short(c.name, 52):<52} {busy:>9} {c.steps:>8} {c.calls:>8} {_secs(c.wall_s):>9}"
            )
        for title, rows in (("by total time", self.by_total), ("by own time", self.by_own)):
            lines += ["", f"functions {title}"]
            lines.append(f"{'function':<40} {'where':<44} {'calls':>8} {'total':>9} {'own':>9}")
            for f in rows[:n]:
                lines.append(
                    f"{_short(f.name, 40):<40} {_short(f.where, 44):<44} {f.calls:>8} "
                    f"{_secs(f.total_s):>9} {_secs(f.own_s):>9}"
                )
        if self.files:
            lines += ["", "saved: " + ", ".join(f"{k} {v}" for k, v in self.files.items())]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _secs(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1:
        return f"{s * 1e3:.1f}ms"
    return f"{s:.2f}s"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else ".." + text[-(width - 2) :]
