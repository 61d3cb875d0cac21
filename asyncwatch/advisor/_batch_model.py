"""The batch model (``batch_advice``): a batch site's size from a fit of batch time against
batch size.

Batch time = overhead + per-item cost x n (+ a growth term when the data show one); the size
with the most items per second under the latency budget, never more than 2x the size in use
beyond the sizes measured (4x when a straight overhead + per-item line explains the times,
R^2 >= 0.95); beyond the sizes measured the confidence is low (apply, measure, ask again).
With too few sizes to fit, the sizes to run next.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._fit import BatchFit, fit_batch, nnls3, r_squared
from ._recommendation import FIT_R2, Recommendation, nice, no_change, rate, secs


@dataclass(frozen=True)
class BatchFigures:
    """A batch site: recent batches (size, seconds)."""

    label: str
    explicit: bool
    batches: tuple[tuple[int, float], ...]
    budget_s: float | None


def batch_advice(f: BatchFigures, *, min_batches: int) -> list[Recommendation]:
    """Batch cost fit; see the module docstring."""
    if not f.batches:
        return []
    sizes = [s for s, _ in f.batches]
    counts: dict[int, int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    # The size in force: the largest of the last few batches (items[i:i+n] gives n and a
    # smaller remainder; batches capped at n give n whenever there is enough work).
    current = max(sizes[-8:])
    distinct = sorted(counts)
    if (len(f.batches) < min_batches or len(distinct) < 3
            or distinct[-1] < 1.5 * distinct[0]):
        return _batch_runs(f, current, distinct, counts, min_batches)
    by_size: dict[int, list[float]] = {}
    for s, d in f.batches:
        by_size.setdefault(s, []).append(d)
    ns = [float(s) for s in by_size]
    ts = [sum(v) / len(v) for v in by_size.values()]
    ws = [float(len(v)) for v in by_size.values()]
    fit = _batch_fit(ns, ts, ws)
    if fit is None:
        return [no_change(f.label, "batch_size", current, "batch times could not be fitted "
                          "against their sizes", f"{len(f.batches)} batches, sizes "
                          f"{_sizes_text(distinct)}", "batch cost fit")]
    # A poor fit still tells the overhead (the intercept) well when it dominates; then a
    # bigger batch is a safe step (2x at most, low confidence), just not a precise one.
    if fit.r2 < FIT_R2 and fit.overhead < 0.5 * fit.duration(current):
        runs = sorted({max(1, current // 2), current * 2} - {current})
        return [Recommendation(
            f.label, "batch_size", current, None, "unknown yet",
            f"{len(f.batches)} batches, sizes {_sizes_text(distinct)}; their times do not "
            "follow their sizes clearly", "low", model="batch cost fit",
            detail=f"fit R^2 {fit.r2:.2f}",
            need="a while with batches of " + " and of ".join(map(str, runs)) + " items")]
    biggest = distinct[-1]
    budget = f.budget_s
    # One step beyond the sizes measured: 2x at most; 4x when the times follow overhead +
    # per-item cost closely with no growth term (items per second then only rise with size,
    # and the budget bounds the latency).
    step = 4.0 if fit.growth <= 0 and fit.r2 >= 0.95 else 2.0
    best = fit.best_size(budget, max(step * current, biggest))
    target = nice(best, down=budget is not None and fit.duration(best) >= 0.97 * budget)
    target = min(target, int(max(step * current, biggest)))
    now_x, new_x = fit.throughput(current), fit.throughput(target)
    now_t, new_t = fit.duration(current), fit.duration(target)
    over_budget = budget is not None and now_t > budget
    gain = new_x / now_x if now_x > 0 else 1.0
    if abs(target - current) <= 0.15 * current or (not over_budget and abs(gain - 1) < 0.1):
        return [no_change(f.label, "batch_size", current, f"{current} items is near the best "
                          f"size ({target}: {gain:.2f}x the items per second)"
                          + (f", within the budget of {secs(budget)}" if budget else ""),
                          f"at {current} items: {secs(now_t)} per batch, {rate(now_x)} items/s",
                          "batch cost fit")]
    model = (f"each batch costs {secs(fit.overhead)} of overhead plus {secs(fit.per_item)} "
             f"per item" + (", and more per item in bigger batches" if fit.growth > 0 else "")
             + f" ({len(f.batches)} batches, sizes {_sizes_text(distinct)})")
    detail = (f"fit T(n) = a + b*n + c*n^2: a {secs(fit.overhead)}, b {secs(fit.per_item)}, "
              f"c {fit.growth * 1e6:.3g} us, R^2 {fit.r2:.2f}")
    seen = f"batches of {current} items take {secs(now_t)} ({rate(now_x)} items/s)"
    figures = (f"at {current} items: {secs(now_t)} per batch, {rate(now_x)} items/s; at "
               f"{target}: {secs(new_t)}, {rate(new_x)} items/s")
    limit_note = f"; latency budget {secs(budget)} per batch" if budget is not None else ""
    if target > biggest * 1.05:
        limit_note += (f"; {target} is beyond the sizes measured (up to {biggest}): apply it, "
                       "and ask again once batches of that size have run")
    inside = target <= biggest * 1.05
    confidence = ("high" if inside and fit.r2 >= 0.95 else
                  "medium" if inside and fit.r2 >= FIT_R2 else "low")
    words = (f"about {gain:.1f}x the items per second" if gain >= 1
             else f"batches within the latency budget ({secs(new_t)} instead of {secs(now_t)})")
    return [Recommendation(
        f.label, "batch_size", current, target, words,
        f"{model}; {figures}{limit_note}", confidence, gain, "batch cost fit", seen=seen,
        detail=detail)]


MIN_FANOUT = 16  # a gather of one width, with no remainder seen, counts as a batch from here


def _batch_shaped(f: BatchFigures, current: int, counts: dict[int, int]) -> bool:
    """Is this site a batch size the app chose? Its own ``asyncwatch.batch`` sites are; a
    gather site is when it looks like ``items[i:i+n]``: most fan-outs at one width, the
    widest, with smaller remainders (or a width of ``MIN_FANOUT`` or more)."""
    if f.explicit:
        return True
    total = sum(counts.values())
    if current < max(counts) or counts[current] < 0.6 * total:
        return False
    remainders = any(size < current for size in counts)
    return current >= MIN_FANOUT or (remainders and current >= 8)


def _batch_runs(f: BatchFigures, current: int, distinct: list[int], counts: dict[int, int],
                min_batches: int) -> list[Recommendation]:
    """Too few sizes to fit (the commonest shape: one size, ``items[i:i+n]``): name the sizes
    to run, bigger ones unless batches break their budget."""
    if not _batch_shaped(f, current, counts):
        return []  # a fan-out of fixed width (gather(a(), b())): not a batch size knob
    recent_t = [d for s, d in f.batches[-30:] if s == current] or [d for _, d in f.batches]
    now_t = sum(recent_t) / len(recent_t)
    seen = f"batches of {current} items take {secs(now_t)} ({rate(current / now_t)} items/s)" \
        if now_t > 0 else f"batches of {current} items"
    evidence = f"{len(f.batches)} batches, sizes {_sizes_text(distinct)}"
    if len(f.batches) < min_batches:
        return [Recommendation(
            f.label, "batch_size", current, None, "unknown yet", evidence, "low",
            model="batch cost fit", seen=seen,
            need=f"{min_batches}+ batches (have {len(f.batches)})")]
    slow = f.budget_s is not None and now_t > f.budget_s

    def tried(n: int) -> bool:
        return any(abs(n - d) <= 0.1 * d and counts[d] >= 3 for d in distinct)

    steps = (current // 2, current // 4) if slow else (current * 2, current * 4)
    runs = [n for n in steps if n >= 1 and not tried(n)][:2]
    if not runs:
        runs = [n for n in (current * 8, current // 8) if n >= 1 and not tried(n)][:1]
    if slow:
        evidence += f"; at {current} items a batch takes {secs(now_t)}, over its budget of " \
            f"{secs(f.budget_s or 0)}"
    return [Recommendation(
        f.label, "batch_size", current, None, "unknown yet", evidence, "low",
        model="batch cost fit", seen=seen,
        need="a while with batches of " + " and of ".join(map(str, runs)) + " items: "
        f"with {len(distinct)} size{'s' if len(distinct) > 1 else ''} measured, what a batch "
        "costs per item and per batch is not known")]


def _batch_fit(ns: list[float], ts: list[float], ws: list[float]) -> BatchFit | None:
    """The quadratic fit, or the linear one when the data do not support a growth term."""
    fit = fit_batch(ns, ts, ws)
    if fit is None or fit.growth <= 0:
        return fit
    top = max(ns)
    if fit.growth * top * top >= 0.1 * fit.duration(top):
        return fit
    res = nnls3(ns, ts, ws, (lambda n: 1.0, lambda n: n))
    if res is None:
        return fit
    a, b = res[0]
    line = BatchFit(a, b, 0.0, 0.0)
    return BatchFit(a, b, 0.0, r_squared(ts, [line.duration(n) for n in ns], ws))


def _sizes_text(distinct: list[int]) -> str:
    if len(distinct) <= 4:
        return ", ".join(map(str, distinct))
    return f"{distinct[0]}-{distinct[-1]} ({len(distinct)} sizes)"
