"""Findings: what asyncwatch's detectors report (blocked loops, deadlocks, stuck tasks...).

Every detector records a frozen ``Finding`` (or a subclass with its own fields) into the
watch's ``FindingsLog``: bounded per kind, newest last, safe to write from any thread. Readers:
``asyncwatch.findings(kind=None)``, the console, metrics and the advisor.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


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
    """Something a detector found. Subclasses add the fields of their kind."""

    kind: str
    started_at: float = field(default_factory=time.time)
    """When it began (seconds since the epoch)."""
    summary: str = ""
    """One line for people: what happened, where."""

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON, the console and logs)."""
        return asdict(self)


class FindingsLog:
    """Bounded store of findings per kind, with listeners called on each new one."""

    def __init__(self, per_kind: int = 200) -> None:
        self.per_kind = per_kind
        self._lock = threading.Lock()
        self._by_kind: dict[str, deque[Finding]] = {}
        self.totals: dict[str, int] = {}
        self._listeners: list[Callable[[Finding], None]] = []

    def add(self, finding: Finding) -> None:
        """Record a finding (oldest of its kind dropped past ``per_kind``) and notify."""
        with self._lock:
            ring = self._by_kind.get(finding.kind)
            if ring is None:
                ring = self._by_kind[finding.kind] = deque(maxlen=self.per_kind)
            ring.append(finding)
            self.totals[finding.kind] = self.totals.get(finding.kind, 0) + 1
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(finding)
            except Exception:  # a broken listener must not stop the detector
                import logging

                logging.getLogger("asyncwatch").debug("findings listener failed", exc_info=True)

    def replace(self, old: Finding, new: Finding) -> None:
        """Put ``new`` where ``old`` is (a finding recorded while its event was still going
        on, now final); listeners are not called again. Added anew if ``old`` aged out."""
        with self._lock:
            ring = self._by_kind.get(old.kind)
            if ring is not None:
                for i, item in enumerate(ring):
                    if item is old:
                        ring[i] = new
                        return
        self.add(new)

    def listen(self, listener: Callable[[Finding], None]) -> None:
        """Call ``listener(finding)`` for every finding added from now on."""
        with self._lock:
            self._listeners.append(listener)

    def list(self, kind: str | None = None) -> list[Finding]:
        """Findings of ``kind`` (all kinds if None), oldest first."""
        with self._lock:
            if kind is not None:
                return list(self._by_kind.get(kind, ()))
            merged = [f for ring in self._by_kind.values() for f in ring]
        return sorted(merged, key=lambda f: f.started_at)

    def clear(self) -> None:
        """Forget everything (after fork)."""
        # A fresh lock first: the watchdog thread may have held the old one at fork time.
        self._lock = threading.Lock()
        self._by_kind.clear()
        self.totals.clear()
