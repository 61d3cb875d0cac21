"""The advisor's models: from measured figures to a ``Recommendation`` (pure functions).

Each ``*_advice`` function takes a summary of what was measured over the window (plain frozen
dataclasses built by ``_advisor``) and returns recommendations; no clocks, no threads, so
the decisions are tested with figures written by hand.

* Pools (``pool_advice``): Little's law. Calls in the pool on average L = (queue wait + run
  time) x throughput; workers busy = run time x throughput. More workers help only while calls
  queue (queue wait is a large share of their time) and the work is not CPU-bound; then about
  L workers remove the queue. Thread pools share one GIL: their CPU use (cores) must stay
  under ~0.7 of one core, which caps the threads worth adding; CPU-bound Python work in a
  thread pool is pointed at a process pool instead (at most one worker per core). CPU-bound
  workers are never suggested beyond the number of cores.
* Concurrency limits (``limit_advice``): successful completions per second at each
  concurrency level measured (levels within 2 % merged; failed holds are not throughput, and
  longer holds count against a level through Little's law). The limit goes to the smallest
  level measured within 5 % of the best one (medium or high confidence only when it measured
  no worse than the level in force); beyond the levels measured, one step of at most 2x (or
  half) at low confidence; a USL fit (Universal Scalability Law) that does not explain the
  levels (R^2 < 0.8) gives the runs to make instead of a value.
* Batches (``batch_advice``): batch time = overhead + per-item cost x n (+ a growth term when
  the data show one); the size with the most items per second under the latency budget,
  never more than 2x the size in use beyond the sizes measured (4x when a straight
  overhead + per-item line explains the times, R^2 >= 0.95); beyond the sizes measured the
  confidence is low (apply, measure, ask again).
* The loop (``loop_advice``): busy >= 90 % of its running time: more processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._fit import BatchFit, fit_batch, fit_usl, nnls3, r_squared

CPU_POOL_CORES = 0.25  # a pool's calls using this many cores in all count as CPU-bound
KNOBS = ("max_workers", "concurrency_limit", "batch_size", "processes")


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


# ---------------------------------------------------------------- pools


@dataclass(frozen=True)
class PoolFigures:
    """An executor over the window. Times are means per call, in seconds."""

    label: str
    threads: bool  # a thread pool (else a process pool or other executor)
    workers: int | None  # max_workers
    calls: int
    span_s: float  # time the calls covered (first submitted -> last ended)
    wait_s: float | None  # queue wait (None: not measurable, e.g. process pools)
    run_s: float | None  # run time in the worker
    latency_s: float  # submitted -> done
    cpu_s: float | None  # CPU time per call (thread pools) or per call from the workers' CPU
    cores: int  # CPUs of the machine
    cpu_wait_s: float | None = None  # per call, time the workers were runnable without a CPU


def pool_advice(f: PoolFigures, *, min_calls: int, max_threads: int) -> list[Recommendation]:
    """Little's law for one executor; see the module docstring."""
    if f.workers is None or f.calls <= 0 or f.span_s <= 0:
        return []
    c = f.workers
    x = f.calls / f.span_s  # throughput, calls/s
    in_system = x * f.latency_s  # L: calls submitted and not done, on average
    if f.run_s is not None and f.wait_s is not None:
        run, wait = f.run_s, f.wait_s
    elif in_system > c * 1.05:  # process pools: all workers busy, the rest queued
        run = min(f.latency_s, c / x)
        wait = f.latency_s - run
    else:
        run, wait = f.latency_s, 0.0
    queue_share = wait / f.latency_s if f.latency_s > 0 else 0.0
    if queue_share < 0.3 or wait < 1e-3:  # the pool is not what holds the calls up
        return [no_change(
            f.label, "max_workers", c, f"calls barely wait for a worker (queue wait {secs(wait)},"
            f" {queue_share:.0%} of each call's time)",
            f"{f.calls} calls in {secs(f.span_s)}, run {secs(run)} each", "Little's law")]
    if f.calls < min_calls:
        return [Recommendation(
            f.label, "max_workers", c, None, "unknown yet",
            f"{f.calls} calls so far, queue wait {secs(wait)} vs run {secs(run)} per call",
            "low", model="Little's law", need=f"at least {min_calls} calls through it "
            f"(seen {f.calls})")]
    busy = x * run  # workers busy on average
    # CPU wanted per call: CPU time, plus the time the workers waited for a CPU (on a busy
    # machine CPU-bound calls stretch as if they waited on I/O; the scheduler knows better).
    # What the GIL serialises is the CPU actually used (used_cores).
    used_cores = x * f.cpu_s if f.cpu_s is not None else None
    cpu_s = f.cpu_s
    if cpu_s is not None and f.cpu_wait_s is not None:
        cpu_s = min(run, cpu_s + f.cpu_wait_s) if run > 0 else cpu_s + f.cpu_wait_s
    cpu_share = (cpu_s / run) if (cpu_s is not None and run > 0) else None
    cpu_cores = x * cpu_s if cpu_s is not None else None  # cores the pool's work wanted
    # The share of a call's run time holding a CPU (for threads: the GIL) against the time
    # it releases it (blocking I/O). Threads: 80 % or more on a CPU is CPU-bound; less is
    # mixed work, where more threads overlap the released part until their CPU fills the
    # GIL's one core. Process workers (a core each): a third makes the work CPU-bound.
    computing = cpu_share is not None and cpu_share >= (0.8 if f.threads else 0.3)
    # A thread pool whose CPU use already fills the GIL's core (85 %+; above ~1.15 cores C
    # code released the GIL) cannot go faster with more threads: processes can.
    gil_bound = (f.threads and used_cores is not None and used_cores <= 1.15
                 and (computing or used_cores >= 0.85))
    cpu_bound = gil_bound or computing
    base = (f"{f.calls} calls in {secs(f.span_s)}: {rate(x)}/s, queue wait {secs(wait)} "
            f"({queue_share:.0%} of each call's time) vs run {secs(run)}; "
            f"{busy:.1f} of {c} workers busy, {in_system:.1f} calls in the pool on average")
    if cpu_share is not None and cpu_cores is not None:
        base += f"; CPU {cpu_share:.0%} of run time ({cpu_cores:.2f} cores)"
        if f.cpu_wait_s is not None and f.cpu_wait_s >= 0.1 * run:
            base += (f", counting {secs(f.cpu_wait_s)} per call spent waiting for a CPU "
                     "(a busy machine)")
    if not cpu_bound and cpu_s is None:
        # CPU use unknown (a process pool not sampled while busy): cap at the cores, as if
        # CPU-bound, and say why.
        suggested = min(f.cores, max(1, math.ceil(in_system)))
        gain = min(suggested, in_system) / max(busy, 1e-9)
        if suggested <= c or gain < 1.2:
            return [no_change(f.label, "max_workers", c, f"already about one worker per core "
                              f"({c} for {f.cores} cores); more would add little", base,
                              "Little's law")]
        return [Recommendation(
            f.label, "max_workers", c, suggested,
            f"about {gain:.1f}x the calls per second ({rate(x)}/s -> ~{rate(x * gain)}/s)",
            f"{base}. Whether the work is CPU-bound is not known yet (its workers' CPU was not "
            f"sampled), so no more than one worker per core ({f.cores}) is suggested.",
            "low", gain, "Little's law")]
    if not cpu_bound:
        wanted = math.ceil(in_system * 1.1)
        caps = [wanted]
        why = f"about {in_system:.0f} calls wait or run at once"
        if f.threads:
            caps.append(max_threads)
            if used_cores is not None and used_cores > 0:
                gil_cap = math.floor(c / used_cores + 1e-9)
                if gil_cap < wanted:
                    why = (f"beyond {gil_cap} threads their CPU use ({used_cores:.2f} cores "
                           "now) would reach the GIL's one core")
                caps.append(gil_cap)
        suggested = max(min(caps), 1)
        gain = min(suggested, in_system) / max(busy, 1e-9)
        if used_cores is not None and used_cores > 0 and f.threads:
            gain = min(gain, 0.9 / used_cores)  # the GIL's core caps what threads can add
        if cpu_share is not None and cpu_share >= 0.2:
            gain = 1 + (gain - 1) * 0.75  # mixed work: gains fell short of Little's law
        if suggested <= c * 1.2 or gain < 1.2:
            return [no_change(f.label, "max_workers", c, f"{c} workers are about what the calls "
                              f"need ({why}); more would add little", base, "Little's law")]
        confidence = "high" if f.calls >= 4 * min_calls and (cpu_share or 0) < 0.2 else "medium"
        return [Recommendation(
            f.label, "max_workers", c, suggested,
            f"about {gain:.1f}x the calls per second ({rate(x)}/s -> ~{rate(x * gain)}/s), "
            f"queue wait per call from {secs(wait)} to near zero",
            f"{base}. The work is " + (
                f"I/O-bound (CPU {0 if cpu_share is None else cpu_share:.0%} of run time)"
                if cpu_share is None or cpu_share < 0.2 else
                f"mixed ({cpu_share:.0%} of the run time on a CPU, the rest blocked)")
            + f", so more workers run more calls at once; {why}.",
            confidence, gain, "Little's law")]
    # CPU-bound: never more workers than cores
    if f.threads and gil_bound:
        procs = min(f.cores, max(1, math.ceil(in_system)))
        gain = min(procs, in_system) / max(cpu_cores or 1.0, 0.1)
        if run > 0 and cpu_s:  # each process also blocks for the part not on a CPU
            gain = min(gain, min(procs / run, f.cores / cpu_s) / x)
        if cpu_share is not None and cpu_share < 0.8:
            gain = 1 + (gain - 1) * 0.75  # mixed work: gains fell short of the model
        if procs < 2 or gain < 1.3:
            return [no_change(f.label, "max_workers", c, "the threads' CPU use "
                              f"({used_cores or 0:.2f} cores) fills the GIL's one core: more "
                              "threads cannot add throughput, and a process pool would gain "
                              f"little on {f.cores} cores", base, "Little's law + GIL")]
        return [Recommendation(
            f.label, "processes", 1, procs,
            f"up to {gain:.1f}x the calls per second ({rate(x)}/s -> ~{rate(x * gain)}/s) "
            f"with a ProcessPoolExecutor(max_workers={procs})",
            f"{base}. The work is CPU-bound Python: the pool's threads share one GIL "
            f"({cpu_cores:.2f} cores of CPU wanted), so more threads cannot add throughput; a "
            f"process pool with one worker per core ({f.cores} cores) can.",
            "medium", gain, "Little's law + GIL")]
    suggested = min(f.cores, max(1, math.ceil(in_system)))
    gain = min(suggested, in_system) / max(busy, 1e-9)
    if suggested <= c or gain < 1.2:
        return [no_change(f.label, "max_workers", c, f"the work is CPU-bound and {c} workers "
                          f"already use the cores ({f.cores}) it can", base, "Little's law")]
    return [Recommendation(
        f.label, "max_workers", c, suggested,
        f"about {gain:.1f}x the calls per second ({rate(x)}/s -> ~{rate(x * gain)}/s)",
        f"{base}. The work is CPU-bound, so at most one worker per core ({f.cores}) helps.",
        "medium", gain, "Little's law")]


# ---------------------------------------------------------------- concurrency limits


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
FIT_R2 = 0.8  # a fit explaining less than this is not acted on
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


# ---------------------------------------------------------------- batches


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


# ---------------------------------------------------------------- the loop


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
