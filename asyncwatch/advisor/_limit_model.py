"""The concurrency-limit model (``limit_advice``): a semaphore's limit from the throughput
measured at each concurrency level.

Successful completions per second at each concurrency level measured (levels within 2 %
merged; failed holds are not throughput, and longer holds count against a level through
Little's law). The limit goes to the smallest level measured within 5 % of the best one
(medium or high confidence only when it measured no worse than the level in force); beyond
the levels measured, one step of at most 2x (or half) at low confidence; a USL fit
(Universal Scalability Law) that does not explain the levels (R^2 < 0.8) gives the runs to
make instead of a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._fit import fit_usl
from ._recommendation import FIT_R2, Recommendation, rate, secs


@dataclass(frozen=True)
class LimitFigures:
    """A concurrency limit: levels are cumulative, the rest over the window."""

    label: str
    limit: int | None
    levels: tuple[tuple[int, float, int], ...]  # (concurrency, hold-seconds, holds) at it
    active_s: float  # time with at least one holder (window)
    holders: float  # mean holders while active
    waiters: float  # mean tasks waiting while active
    done: int  # completions in the window
    max_level: int
    failed: tuple[tuple[int, int], ...] = ()  # (concurrency, holds that failed) at it


MERGE_LEVELS = 0.02  # levels this close (relative) are one level (a ramp, a drain)
SHOW_LEVELS = 12  # levels listed in the evidence
KNEE = 0.95  # the smallest level reaching this share of the best throughput is the best
OVERLOADED = 0.1  # a level where this share of holds fails: the service refuses work


@dataclass(frozen=True)
class Level:
    """One measured concurrency level (levels within ``MERGE_LEVELS`` merged)."""

    n: int
    hold_s: float  # mean hold time
    holds: int
    failed: int

    @property
    def fail_share(self) -> float:
        """Share of the holds at this level that failed."""
        return self.failed / self.holds if self.holds else 0.0

    @property
    def goodput(self) -> float:
        """Successful completions per second at this level (Little's law)."""
        ok = max(0, self.holds - self.failed)
        return self.n * ok / (self.holds * self.hold_s) if self.holds and self.hold_s > 0 else 0.0


def merge_levels(levels: tuple[tuple[int, float, int], ...],
                 failed: tuple[tuple[int, int], ...] = ()) -> list[Level]:
    """Levels in ascending order, those within ``MERGE_LEVELS`` of a group's first merged
    (named by the level with the most holds)."""
    fails = dict(failed)
    groups: list[list[tuple[int, float, int, int]]] = []
    for n, t, d in sorted(levels):
        if d <= 0:
            continue
        row = (n, t, d, min(d, fails.get(n, 0)))
        if groups and n <= groups[-1][0][0] * (1 + MERGE_LEVELS):
            groups[-1].append(row)
        else:
            groups.append([row])
    out = []
    for g in groups:
        holds = sum(r[2] for r in g)
        name = max(g, key=lambda r: (r[2], r[0]))[0]
        out.append(Level(name, sum(r[1] for r in g) / holds, holds, sum(r[3] for r in g)))
    return out


def _levels_text(levels: list[Level]) -> str:
    """Every level (the ``SHOW_LEVELS`` with the most completions when there are more)."""
    shown = sorted(sorted(levels, key=lambda lv: -lv.holds)[:SHOW_LEVELS], key=lambda lv: lv.n)
    parts = []
    for lv in shown:
        part = f"{lv.n} at once: {rate(lv.goodput)}/s ({lv.holds} done"
        if lv.failed:
            part += f", {lv.failed / lv.holds:.0%} failed"
        parts.append(part + f", {secs(lv.hold_s)} each)")
    more = len(levels) - len(shown)
    return "; ".join(parts) + (f"; and {more} more levels with fewer completions" if more else "")


def _nearest(levels: list[Level], n: float) -> Level | None:
    """The level nearest ``n`` (relative distance), if within 25 % of it."""
    if not levels or n <= 0:
        return None
    best = min(levels, key=lambda lv: abs(math.log(lv.n / n)))
    return best if abs(math.log(best.n / n)) <= math.log(1.25) else None


def _limit_rec(f: LimitFigures, limit: int, **kw: object) -> Recommendation:
    base: dict[str, object] = {
        "target": f.label, "knob": "concurrency_limit", "current": limit, "suggested": None,
        "expected_gain": "", "evidence": "", "confidence": "low",
        "model": "measured levels + Universal Scalability Law"}
    base.update(kw)
    return Recommendation(**base)  # type: ignore[arg-type]


def limit_advice(f: LimitFigures, *, min_done: int, max_limit: int) -> list[Recommendation]:
    """Throughput measured at each concurrency level; see the module docstring.

    Never a harmful step: a move to a level already measured is judged on its measured
    throughput (medium or high confidence only when it did no worse); a move beyond the levels
    measured is at most 2x (or half) the limit and only of low confidence; a fit that does
    not explain the data gives the runs to make instead.
    """
    limit = f.limit or f.max_level
    if limit <= 0 or f.active_s <= 0 or f.done <= 0:
        return []
    levels = merge_levels(f.levels, f.failed)
    usable = [lv for lv in levels if lv.holds >= min_done and lv.hold_s > 0]
    waiting = f.waiters >= max(0.5, 0.1 * f.holders)
    full = waiting or f.holders >= 0.9 * limit  # every permit in use: the limit sets the pace
    demand = f.holders + f.waiters
    pressure = (f"{f.holders:.1f} tasks hold it on average (limit {limit})"
                + (f", {f.waiters:.1f} more waiting" if waiting else ", none waiting"))
    seen = "measured: " + (_levels_text(levels) or "nothing yet")
    in_force = min(float(limit), demand) if not full else float(limit)
    cur = _nearest(usable, in_force) or _nearest(usable, limit)
    up, down = min(limit * 2, max_limit), max(1, limit // 2)
    if cur is None:
        return [_limit_rec(
            f, limit, expected_gain="unknown yet", evidence=f"{pressure}; {seen}",
            need=f"{min_done}+ completions at the limit in force ({limit}); keep it running")]
    overloaded = cur.fail_share >= OVERLOADED
    # Past the point where the backend refuses work, more at once only adds refusals: the
    # levels above are no target, however their throughput compares.
    targets = [lv for lv in usable if lv.n <= cur.n] if overloaded else usable
    best = max(targets, key=lambda lv: lv.goodput)
    knee = next(lv for lv in targets if lv.goodput >= KNEE * best.goodput)
    cur_x = cur.goodput
    detail = ""
    fit = None
    if len(usable) >= 3:
        fit = fit_usl([float(lv.n) for lv in usable], [lv.goodput for lv in usable],
                      [float(lv.holds) for lv in usable])
        if fit is not None:
            detail = (f"USL fit: contention {fit.sigma:.1%}, crosstalk {fit.kappa:.2%}, "
                      + (f"peak at ~{fit.peak:.0f}" if math.isfinite(fit.peak) else "no peak")
                      + f", R^2 {fit.r2:.2f}")
    evidence = f"{pressure}; {seen}"
    seen_words = (f"{f.holders:.0f} tasks hold the limit at once" + (
        f" and {f.waiters:.0f} wait for it" if waiting else "") + f"; {cur.n} at once gave "
        f"{rate(cur_x)}/s" + (f", {knee.n} at once {rate(knee.goodput)}/s" if knee is not cur
                              else ""))

    def rec(**kw: object) -> Recommendation:
        return _limit_rec(f, limit, detail=detail, seen=seen_words, **kw)

    # 1. A measured level does better (or as well with fewer in flight): go there.
    if abs(knee.n - cur.n) > 0.15 * cur.n and (knee.n < cur.n or full):
        target = knee.n
        ratio = knee.goodput / cur_x if cur_x > 0 else math.inf
        solid = min(knee.holds, cur.holds) >= 4 * min_done
        confidence = ("high" if solid and ratio >= 1.1 else
                      "medium" if ratio >= 1.0 else "low")
        if knee.n < cur.n:
            words = (f"about {ratio:.1f}x the throughput measured at {target} at once "
                     f"({rate(cur_x)}/s -> ~{rate(knee.goodput)}/s)" if ratio >= 1.1 else
                     f"about the same throughput (~{rate(knee.goodput)}/s) with {cur.n - target}"
                     f" fewer in flight: each holds it ~{secs(knee.hold_s)} instead of "
                     f"{secs(cur.hold_s)}")
        else:
            words = (f"about {ratio:.1f}x the throughput measured at {target} at once "
                     f"({rate(cur_x)}/s -> ~{rate(knee.goodput)}/s)")
        return [rec(
            suggested=target, expected_gain=words, confidence=confidence,
            gain=ratio, evidence=f"{evidence}. {target} at once did best of the levels measured")]
    top, bottom = usable[-1], usable[0]
    if overloaded and down < limit and _nearest(usable, down) is None:
        return [rec(
            suggested=down, confidence="low", gain=1.0,
            expected_gain="fewer refused requests, maybe more that succeed: apply it and ask "
            "again",
            evidence=f"{evidence}. {cur.fail_share:.0%} of the holds at {cur.n} at once failed "
            "(errors, or responses marked rejected): the service behind the limit refuses work "
            "at this load, so fewer at once")]
    if not full:
        return [rec(
            expected_gain="no change", evidence=evidence, confidence="medium",
            reason=f"the limit is not reached ({f.holders:.1f} of {limit} held on average)")]
    if cur is not top and cur is not bottom:
        lower = max(lv.n for lv in usable if lv.n < cur.n)
        higher = min(lv.n for lv in usable if lv.n > cur.n)
        return [rec(
            expected_gain="no change", evidence=evidence, confidence="medium",
            reason=f"{cur.n} at once did best of the levels measured ({lower} did worse, "
            f"{higher} no better)")]
    if fit is not None and fit.r2 < FIT_R2:
        measured = {lv.n for lv in usable}
        runs = ([up] if cur is top and waiting and up > limit else []) + (
            [down] if down < limit and _nearest(usable, down) is None else [])
        runs = [r for r in runs if r not in measured]
        if runs:
            return [rec(
                expected_gain="unknown yet", evidence=evidence,
                need=("a while at a limit of " + " and at ".join(map(str, runs))
                      + ": the throughput measured so far does not follow a clear curve"))]
    # 2. The current level is the best measured. Beyond the levels measured: one step of at
    # most 2x in the direction the measurements point, low confidence (apply, ask again).
    if cur is top and waiting and up > limit:
        prev = usable[-2] if len(usable) >= 2 else None
        if prev is None:
            return [rec(
                expected_gain="unknown yet", evidence=evidence,
                need=f"a while at a limit of {up} (and {down}): measured at one level only, "
                "whether more at once helps is not known")]
        target = int(min(up, max(limit + 1, math.ceil(demand))))
        scaling = (cur_x / prev.goodput) / (cur.n / prev.n) if prev.goodput > 0 else 0.0
        if fit is not None and fit.r2 >= FIT_R2:
            predicted = fit.throughput(target) / max(fit.throughput(cur.n), 1e-12)
        else:
            predicted = 1 + scaling * (target / cur.n - 1)
        gain = 1 + (predicted - 1) / 2  # conservative: half the predicted gain
        if scaling >= 0.5 and gain >= 1.1 and target > limit * 1.15:
            return [rec(
                suggested=target, confidence="low", gain=gain,
                expected_gain=f"maybe {gain:.1f}x the throughput ({rate(cur_x)}/s -> "
                f"~{rate(cur_x * gain)}/s), beyond the levels measured: apply it and ask again",
                evidence=f"{evidence}. Throughput grew {scaling:.0%} as fast as the level from "
                f"{prev.n} to {cur.n} at once")]
    if cur is bottom and len(usable) >= 2 and down < limit:
        nxt = usable[1]
        if cur_x >= 1.05 * nxt.goodput:
            target = max(down, 1)
            return [rec(
                suggested=target, confidence="low", gain=1.0,
                expected_gain=f"maybe more throughput than {rate(cur_x)}/s with fewer at once "
                "(below the levels measured): apply it and ask again",
                evidence=f"{evidence}. Throughput fell from {rate(cur_x)}/s at {cur.n} at once "
                f"to {rate(nxt.goodput)}/s at {nxt.n}: fewer at once may do better still")]
    if len(usable) == 1 and full:
        runs = [down] + ([up] if waiting and up > limit else [])
        return [rec(
            expected_gain="unknown yet", evidence=evidence,
            need="a while at a limit of " + " and at ".join(map(str, runs))
            + ": measured at one level only, whether another does better is not known")]
    reason = (f"{limit} at once does as well as any level measured"
              + ("" if waiting else "; no task waits for it"))
    return [rec(expected_gain="no change", evidence=evidence,
                       reason=reason, confidence="medium")]
