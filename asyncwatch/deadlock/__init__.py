"""Deadlock and stuck-task detection over the await graph and lock waits: the cycle probe,
the sliced scans, and the findings they report.

``DeadlockDetector`` (``_detector``: timers, slices, the cycle probe and the lock-wait hook)
is built in layers: ``_scan.DeadlockScanner`` (settled waits, the wait-for graph, deadlocks)
on ``_stuck.StuckChecker`` (stuck checks, heap-walk pacing). ``idle()`` marks a wait as meant
to be long; ``_report`` holds the finding types.
"""

from ._detector import DeadlockDetector
from ._idle import idle
from ._report import AwaitChain, DeadlockFinding, PrimitiveInfo, StuckTaskFinding

__all__ = [
    "AwaitChain",
    "DeadlockDetector",
    "DeadlockFinding",
    "PrimitiveInfo",
    "StuckTaskFinding",
    "idle",
]
