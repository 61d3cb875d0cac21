"""The loop model (``loop_advice``): the ``processes`` knob from the event loop's saturation.

A loop busy >= 90 % of its running time is saturated whatever the pools and limits are:
more processes (one event loop each, on its own core), as many as the machine's spare
cores allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._recommendation import Recommendation, no_change, secs


@dataclass(frozen=True)
class LoopFigures:
    """One event loop over the window."""

    label: str
    seconds: float
    busy: float | None
    thread_cpu: float | None
    lag_p99_s: float | None
    cores: int
    machine_busy: float | None  # percent of all cores in use (whole machine)
    process_cores: float | None  # cores this process used


def loop_advice(f: LoopFigures, *, min_seconds: float) -> list[Recommendation]:
    """Loop saturation: more processes; see the module docstring."""
    busy = f.busy if f.busy is not None else f.thread_cpu
    if busy is None:
        return []
    if busy < 0.9:
        return [no_change(f.label, "processes", 1, f"the loop is busy {busy:.0%} of the time: "
                          "one process keeps up", model="loop saturation")]
    what = "busy" if f.busy is not None else "on CPU"
    base = f"the loop was {what} {busy:.0%} of the last {secs(f.seconds)}"
    if f.thread_cpu is not None and f.busy is not None:
        base += f" ({f.thread_cpu / max(busy, 1e-9):.0%} of that computing)"
    if f.lag_p99_s is not None:
        base += f", loop lag p99 {secs(f.lag_p99_s)}"
    if f.process_cores is not None:
        base += f"; the process used {f.process_cores:.2f} cores"
    if f.seconds < min_seconds:
        return [Recommendation(
            f.label, "processes", 1, None, "unknown yet", base, "low",
            model="loop saturation", need=f"{secs(min_seconds)} of measurements (have "
            f"{secs(f.seconds)})")]
    if f.cores < 2:
        return [no_change(f.label, "processes", 1, f"{base}, but the machine has one core: "
                          "more processes cannot run at once", model="loop saturation")]
    spare: float = f.cores
    if f.machine_busy is not None:
        spare = max(0.0, f.cores * (1 - f.machine_busy / 100))
    suggested = int(max(2, min(f.cores, 1 + round(spare))))
    computing = f.thread_cpu is None or f.busy is None or f.thread_cpu >= 0.7 * busy
    confidence = "medium" if computing and spare >= 0.5 else "low"
    note = ("" if computing else "; much of the busy time is blocking rather than computing: "
            "moving blocking calls to an executor would help first")
    if spare < 0.5:
        note += f"; the machine has little spare CPU ({f.machine_busy:.0f}% busy)"
    return [Recommendation(
        f.label, "processes", 1, suggested,
        f"up to {suggested}x the capacity: one event loop per process, each on its own core "
        "(e.g. more uvicorn/gunicorn workers)",
        f"{base}: the loop itself is saturated, so waits grow whatever the pools and limits are"
        f"{note}", confidence, float(suggested), "loop saturation")]
