"""The advisor's answer, ``Recommendation``, and what every model shares.

The models (``_pool_model``, ``_limit_model``, ``_batch_model``, ``_loop_model``) are pure
functions: each ``*_advice`` function takes a summary of what was measured over the window
(plain frozen dataclasses built by ``_advisor``) and returns recommendations; no clocks, no
threads, so the decisions are tested with figures written by hand. This module holds the
type they return, the helpers that word their figures for people (``secs``, ``rate``,
``nice``), ``no_change`` and the fit threshold (``FIT_R2``) the limit and batch models share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KNOBS = ("max_workers", "concurrency_limit", "batch_size", "processes")
FIT_R2 = 0.8  # a fit explaining less than this is not acted on


@dataclass(frozen=True)
class Recommendation:
    """One knob the advisor watches: a change to make (``suggested``), the data it still
    needs (``need``), or no change with the ``reason`` (see ``kind``).

    ``expected_gain`` and ``evidence`` are written for people; ``gain`` is the same expected
    gain as a ratio (e.g. 3.5 = 3.5x the throughput) for programs.
    """

    target: str
    """What to change: an executor, a semaphore (by where it is created), a batch site, the
    process."""
    knob: str
    """``max_workers``, ``concurrency_limit``, ``batch_size`` or ``processes``."""
    current: int | None
    """Its value now (None when unknown)."""
    suggested: int | None
    """The value to set; None when there is not enough data yet (see ``need``)."""
    expected_gain: str
    """What setting it should bring, in words."""
    evidence: str
    """The figures the suggestion rests on."""
    confidence: str
    """``high``, ``medium`` or ``low``."""
    gain: float | None = None
    """Expected throughput ratio, suggested vs current (None when not estimated)."""
    model: str = ""
    """The model used (Little's law, USL, batch cost fit, loop saturation)."""
    need: str | None = None
    """When ``suggested`` is None: the data still needed (the runs to make), or None when
    nothing is to change (see ``reason``)."""
    reason: str | None = None
    """For a ``no_change`` entry: why the knob is where it should be."""
    seen: str = ""
    """What was measured, in plain words (the start of ``summary``)."""
    detail: str = ""
    """The model's own terms (USL contention and crosstalk, fit R^2): for who wants them."""

    @property
    def summary(self) -> str:
        """Plain words first: what was seen, then what to do."""
        if self.kind == "no_change":
            todo = f"leave {self.knob} at {self.current}: {self.reason}"
        elif self.kind == "need_data":
            todo = f"to know what to change, it needs {self.need}"
        else:
            todo = (f"set {self.knob} from {'?' if self.current is None else self.current} to "
                    f"{self.suggested}: {self.expected_gain} ({self.confidence} confidence)")
        seen = self.seen or self.evidence.split(";")[0]
        return f"{seen}; {todo}" if seen else todo[:1].upper() + todo[1:]

    @property
    def kind(self) -> str:
        """``advice`` (a value to set), ``need_data`` (runs to make) or ``no_change``."""
        if self.suggested is not None:
            return "advice"
        return "need_data" if self.need is not None else "no_change"

    def __str__(self) -> str:
        if self.suggested is None and self.need is None:
            return f"{self.target}: {self.knob} - no change: {self.reason}"
        if self.suggested is None:
            return f"{self.target}: {self.knob} - not enough data yet, need {self.need}"
        now = "?" if self.current is None else str(self.current)
        return (f"{self.target}: {self.knob} {now} -> {self.suggested} "
                f"({self.expected_gain}; {self.confidence} confidence)")


# ---------------------------------------------------------------- formatting helpers


def secs(s: float) -> str:
    """Seconds for people: 850 us, 12.5 ms, 1.20 s."""
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def rate(x: float) -> str:
    """A rate with sensible digits."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def nice(n: float, *, down: bool = False) -> int:
    """Round to 2 significant digits (``down``: never above ``n``; never below 1)."""
    if n < 1:
        return 1
    digits = max(0, math.floor(math.log10(n)) - 1)
    step = 10**digits
    kept = math.floor(n / step) if down else round(n / step)
    return max(1, int(kept * step))


def no_change(target: str, knob: str, current: int | None, reason: str, evidence: str = "",
              model: str = "") -> Recommendation:
    """A knob that is where it should be, and why (``kind`` ``no_change``)."""
    return Recommendation(target, knob, current, None, "no change", evidence or reason,
                          "medium", model=model, reason=reason)
