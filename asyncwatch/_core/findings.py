"""Findings: what asyncwatch's detectors report (blocked loops, deadlocks, stuck tasks...).

Every detector records a frozen ``Finding`` (or a subclass with its own fields) into the
watch's ``FindingsLog``: bounded per kind, newest last, safe to write from any thread. Readers:
``asyncwatch.findings(kind=None)``, the console, metrics and the advisor.

Repeats are grouped: findings with the same ``site()`` (for a blocked loop, its culprit line
and route) make one group, read as the newest occurrence with the group's figures filled in
(``count``, ``first_seen``, ``last_seen``, ``worst_s``, ``typical_s``, ``exemplars``). The
occurrences themselves stay readable with ``list(kind, grouped=False)``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_EXEMPLARS = 3
"""Distinct stacks kept per group: the first seen, the worst, the newest."""
TYPICAL_OF = 64
"""The typical (median) duration of a group is taken over its last this many occurrences."""


@dataclass(frozen=True)
class Frame:
    """One frame of a captured stack."""

    filename: str
    lineno: int
    function: str
    line: str | None = None

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


@dataclass(frozen=True)
class Finding:
    """Something a detector found. Subclasses add the fields of their kind.

    Read through ``FindingsLog.list`` (``asyncwatch.findings()``), a finding stands for every
    occurrence at its site: its own fields are the newest occurrence's, and the group fields
    below say how often and how badly it happened. A finding just recorded has ``count=1``.
    """

    kind: str
    started_at: float = field(default_factory=time.time)
    """When it began (seconds since the epoch); for a group, its newest occurrence."""
    summary: str = ""
    """One line for people: what happened, where."""
    count: int = 1
    """Occurrences at this site so far (all of them, also those past the log's bound)."""
    first_seen: float = 0.0
    """When the first occurrence at this site began (seconds since the epoch)."""
    last_seen: float = 0.0
    """When the newest occurrence began (equals ``started_at``)."""
    worst_s: float | None = None
    """Longest duration of any occurrence (None for kinds without a duration)."""
    typical_s: float | None = None
    """Median duration of the recent occurrences (None for kinds without a duration)."""
    exemplars: tuple[tuple[Frame, ...], ...] = ()
    """A few distinct stacks of occurrences (first, worst, newest), outermost frame first."""

    def __post_init__(self) -> None:
        # One occurrence is a group of one: its figures are its own (so a finding read back
        # from the log equals the one its detector made).
        if not self.first_seen:
            object.__setattr__(self, "first_seen", self.started_at)
        if not self.last_seen:
            object.__setattr__(self, "last_seen", self.started_at)
        if self.worst_s is None:
            took = self.duration()
            if took is not None:
                object.__setattr__(self, "worst_s", took)
                if self.typical_s is None:
                    object.__setattr__(self, "typical_s", took)
        if not self.exemplars:
            stack = getattr(self, "stack", None)
            if isinstance(stack, tuple) and stack:
                object.__setattr__(self, "exemplars", (stack,))

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON, the console and logs)."""
        return asdict(self)

    def site(self) -> tuple[Any, ...]:
        """What makes two findings the same problem (grouped together): by default the kind
        and the summary; kinds whose summary carries figures override it."""
        return (self.kind, self.summary)

    def duration(self) -> float | None:
        """How long this occurrence lasted or waited, if its kind has a duration."""
        for name in ("duration_s", "waited_s"):
            value = getattr(self, name, None)
            if isinstance(value, int | float):
                return float(value)
        return None


class _Group:
    """Every occurrence of one site: counts, times, durations and a few stacks."""

    __slots__ = ("count", "exemplars", "first_seen", "latest", "recent", "worst")

    def __init__(self, finding: Finding) -> None:
        self.latest = finding
        self.count = 0
        self.first_seen = finding.started_at
        self.worst: Finding | None = None
        self.recent: deque[Finding] = deque(maxlen=TYPICAL_OF)
        self.exemplars: list[tuple[Frame, ...]] = []

    def add(self, finding: Finding) -> None:
        self.count += 1
        self.latest = finding
        self.first_seen = min(self.first_seen, finding.started_at)
        self.recent.append(finding)
        self._weigh(finding)

    def swap(self, old: Finding, new: Finding) -> bool:
        """``old`` (an occurrence still going on) is now ``new``; False if not found."""
        for i, item in enumerate(self.recent):
            if item is old:
                self.recent[i] = new
                break
        else:
            return False
        if self.latest is old:
            self.latest = new
        if self.worst is old:
            self.worst = None
            for item in self.recent:
                self._weigh(item)
        self._weigh(new)
        return True

    def drop(self, old: Finding) -> None:
        """Forget ``old`` (its final form belongs to another site)."""
        self.count -= 1
        for i, item in enumerate(self.recent):
            if item is old:
                del self.recent[i]
                break
        if self.latest is old and self.recent:
            self.latest = self.recent[-1]
        if self.worst is old:
            self.worst = None
            for item in self.recent:
                self._weigh(item)

    def _weigh(self, finding: Finding) -> None:
        took = finding.duration()
        worst = self.worst.duration() if self.worst is not None else None
        if took is not None and (worst is None or took > worst):
            self.worst = finding
        stack = getattr(finding, "stack", None)
        if isinstance(stack, tuple) and stack and stack not in self.exemplars:
            if len(self.exemplars) < MAX_EXEMPLARS:
                self.exemplars.append(stack)
            elif finding is self.worst:
                self.exemplars[1] = stack  # keep the first; the worst in the middle
            else:
                self.exemplars[-1] = stack  # the newest last

    def view(self) -> Finding:
        """The newest occurrence with the group's figures filled in."""
        if self.count == 1:
            return self.latest  # its own figures are the group's
        durations = [d for d in (f.duration() for f in self.recent) if d is not None]
        worst = self.worst.duration() if self.worst is not None else None
        return dataclasses.replace(
            self.latest,
            count=self.count,
            first_seen=self.first_seen,
            last_seen=self.latest.started_at,
            worst_s=worst,
            typical_s=_median(durations) if durations else None,
            exemplars=tuple(self.exemplars),
        )


class FindingsLog:
    """Bounded store of findings per kind, grouped by site, with listeners called on each new
    one. ``per_kind`` bounds both the groups and the raw occurrences kept per kind."""

    def __init__(self, per_kind: int = 200) -> None:
        self.per_kind = per_kind
        self._lock = threading.Lock()
        self._by_kind: dict[str, deque[Finding]] = {}
        self._groups: dict[str, OrderedDict[tuple[Any, ...], _Group]] = {}
        self.totals: dict[str, int] = {}
        self._listeners: list[Callable[[Finding], None]] = []

    def add(self, finding: Finding) -> None:
        """Record a finding (oldest of its kind dropped past ``per_kind``) and notify."""
        with self._lock:
            self._add(finding)
            self.totals[finding.kind] = self.totals.get(finding.kind, 0) + 1
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(finding)
            except Exception:  # a broken listener must not stop the detector
                import logging

                logging.getLogger("asyncwatch").debug("findings listener failed", exc_info=True)

    def _add(self, finding: Finding) -> None:
        ring = self._by_kind.get(finding.kind)
        if ring is None:
            ring = self._by_kind[finding.kind] = deque(maxlen=self.per_kind)
        ring.append(finding)
        self._group(finding).add(finding)

    def _group(self, finding: Finding) -> _Group:
        groups = self._groups.get(finding.kind)
        if groups is None:
            groups = self._groups[finding.kind] = OrderedDict()
        site = _site(finding)
        group = groups.get(site)
        if group is None:
            group = groups[site] = _Group(finding)
            while len(groups) > self.per_kind:
                groups.popitem(last=False)  # the group seen least recently
        else:
            groups.move_to_end(site)
        return group

    def replace(self, old: Finding, new: Finding) -> None:
        """Put ``new`` where ``old`` is (a finding recorded while its event was still going
        on, now final); listeners are not called again. Added anew if ``old`` aged out."""
        with self._lock:
            ring = self._by_kind.get(old.kind)
            if ring is not None:
                for i, item in enumerate(ring):
                    if item is old:
                        ring[i] = new
                        self._regroup(old, new)
                        return
        self.add(new)

    def _regroup(self, old: Finding, new: Finding) -> None:
        groups = self._groups.get(old.kind, OrderedDict())
        before = groups.get(_site(old))
        if before is not None and _site(old) == _site(new) and before.swap(old, new):
            return
        if before is not None and any(item is old for item in before.recent):
            before.drop(old)
            if before.count <= 0:
                del groups[_site(old)]
        self._group(new).add(new)

    def listen(self, listener: Callable[[Finding], None]) -> None:
        """Call ``listener(finding)`` for every finding added from now on."""
        with self._lock:
            self._listeners.append(listener)

    def unlisten(self, listener: Callable[[Finding], None]) -> None:
        """Stop calling ``listener`` (no error if it was not listening)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def list(self, kind: str | None = None, *, grouped: bool = True) -> list[Finding]:
        """Findings of ``kind`` (all kinds if None), oldest first. Grouped (the default): one
        per site, its newest occurrence with the group's figures; else every occurrence
        still kept."""
        with self._lock:
            if grouped:
                groups = (
                    [self._groups.get(kind, OrderedDict())]
                    if kind is not None
                    else list(self._groups.values())
                )
                merged = [g.view() for by_site in groups for g in by_site.values()]
            elif kind is not None:
                return list(self._by_kind.get(kind, ()))
            else:
                merged = [f for ring in self._by_kind.values() for f in ring]
        return sorted(merged, key=lambda f: f.started_at)

    def count_of(self, finding: Finding) -> int:
        """Occurrences so far at ``finding``'s site (0 if none is kept)."""
        with self._lock:
            group = self._groups.get(finding.kind, OrderedDict()).get(_site(finding))
            return group.count if group is not None else 0

    def clear(self) -> None:
        """Forget everything (after fork)."""
        # A fresh lock first: the watchdog thread may have held the old one at fork time.
        self._lock = threading.Lock()
        self._by_kind.clear()
        self._groups.clear()
        self.totals.clear()


def _site(finding: Finding) -> tuple[Any, ...]:
    try:
        return finding.site()
    except Exception:  # a finding that cannot say: its own group
        return (finding.kind, id(finding))


def _median(values: list[float]) -> float:
    """``statistics.median``, imported at the first finding summed up, not at start."""
    import statistics

    return statistics.median(values)
