"""The pool model (``pool_advice``): an executor's ``max_workers`` by Little's law.

Calls in the pool on average L = (queue wait + run time) x throughput; workers busy = run
time x throughput. More workers help only while calls queue (queue wait is a large share of
their time) and the work is not CPU-bound; then about L workers remove the queue. Thread
pools share one GIL: their CPU use (cores) must stay under ~0.7 of one core, which caps the
threads worth adding; CPU-bound Python work in a thread pool is pointed at a process pool
instead (at most one worker per core). CPU-bound workers are never suggested beyond the
number of cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._recommendation import Recommendation, no_change, rate, secs

CPU_POOL_CORES = 0.25  # a pool's calls using this many cores in all count as CPU-bound


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
