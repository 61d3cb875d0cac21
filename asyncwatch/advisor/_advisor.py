"""The advisor: measures pools, limits, batches and the loop; turns them into recommendations.

Wiring (``Watch`` owns one ``Advisor``):

* probes installed by ``start()`` and removed by ``stop()``: ``run_in_executor``
  (``_executors``), semaphores through the primitive tracker's semaphore wrappers (``_limits``),
  ``asyncio.gather`` (``_batches``); nothing on the loops themselves (``_loopload`` reads
  them from this module's thread);
* a sampler thread (``asyncwatch-advisor``) that every ``sample_s`` reads the cumulative
  counters into short rings (loops, process CPU, process-pool workers' CPU, limit snapshots),
  in between peeks at each loop thread's stack about every ``PEEK_S`` (whether the loop
  waits in its selector), and every ``advisor_interval_s`` evaluates the advice, logs what
  changed and keeps it for the ``asyncwatch.advisor.*`` gauges;
* ``advise()`` samples and evaluates on demand.

The deciding is in the models, pure functions (``_pool_model``, ``_limit_model``,
``_batch_model``, ``_loop_model``); this module only gathers the figures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._core import names as n
from .._core.config import Config
from .._core.faults import Faults
from .._core.points import Point
from .._core.stacks import own_switches
from ._batches import Batch, BatchProbe, BatchSite, batch_decorator
from ._gates import GateProbe
from ._limits import LimitProbe, LimitStats
from ._loopload import PEEK_S, SAMPLES, LoopLoad
from ._queues import QueueProbe

if TYPE_CHECKING:  # the models load when the advice is first evaluated, not at start
    from ._batch_model import BatchFigures
    from ._limit_model import LimitFigures
    from ._loop_model import LoopFigures
    from ._pool_model import PoolFigures
    from ._recommendation import Recommendation

logger = logging.getLogger("asyncwatch")

clock = time.perf_counter
THREAD_NAME = "asyncwatch-advisor"
MIN_CALLS = 50  # executor calls in the window before a pool is judged
MIN_DONE = 20  # completions at a concurrency level before it counts as a USL point
MIN_BATCHES = 10  # batches at a site before its size is judged
PER_SIZE_KEPT = 64  # batches of a size no longer in a site's ring that count in its fit
MAX_WORKERS_READ = 256  # workers per pool whose scheduler figures are read each sample
_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


def _runqueue_wait_s(path: str) -> float | None:
    """Seconds a thread or process has spent runnable, waiting for a CPU (None: unknown)."""
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _lag_counts_of(loops: Any) -> Any:
    """Read a loop's lag histogram counts from the blocked-loop detector's monitor, if any."""
    if loops is None:
        return None

    def counts(loop: asyncio.AbstractEventLoop) -> dict[int, int] | None:
        monitor = loops.monitor_of(loop)
        # (sparse: only the buckets hit, a copy taken under the GIL)
        return None if monitor is None else monitor.lag.bins.copy()

    return counts


class Advisor:
    """See the module docstring."""

    def __init__(
        self, config: Config, faults: Faults, primitives: Any, loops: Any = None
    ) -> None:
        from ._executors import ExecutorProbe

        self.config = config
        self.faults = faults
        self.primitives = primitives
        self.window_s = config.advisor_window_s
        self.sample_s = min(1.0, self.window_s / 20)
        self.peek_s = min(PEEK_S, self.sample_s)
        self.executors = ExecutorProbe(faults)
        self.limits = LimitProbe()
        self.gates = GateProbe()
        self.queues = QueueProbe(faults)
        self.batches = BatchProbe(faults, gather=config.advisor_gather)
        # As many load samples as one window holds (each keeps the lag histogram's counts).
        per_window = self.window_s / self.sample_s
        keep = int(per_window) + 4 if per_window < SAMPLES else SAMPLES
        self.load = LoopLoad(faults, _lag_counts_of(loops), keep=keep)
        # The loop watch's look on the watchdog's behalf (``LoopWatch.look_for_watchdog``),
        # taken each time this thread has the GIL back.
        self._look = getattr(loops, "look_for_watchdog", None)
        self.active = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._limit_snaps: dict[str, deque[tuple[float, LimitStats]]] = {}
        self._limit_seen: dict[str, float] = {}
        self._child_cpu: dict[int, deque[tuple[float, float]]] = {}
        self._pid_cpu: dict[int, dict[int, float]] = {}  # pool -> pid -> CPU seconds
        self._rq_wait: dict[int, deque[tuple[float, float]]] = {}  # pool -> (t, workers' wait)
        self._task_wait: dict[int, dict[int, float]] = {}  # pool -> worker id -> wait seconds
        self._procs: dict[int, Any] = {}
        self.last: tuple[Recommendation, ...] = ()
        self._logged: dict[tuple[str, str], tuple[int | None, str | None]] = {}
        self.started = clock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Install the probes and start the sampler thread."""
        self.active = True
        self.started = clock()
        self.executors.install()
        self.batches.install()
        if self.config.advisor_queues:
            self.queues.install()
        self.limits.active = True
        self.gates.active = True
        self.primitives.track_semaphore = self.limits.track_for
        self.load.start()
        self._start_thread()

    def stop(self) -> None:
        """Remove every probe and stop the thread (joined). Idempotent."""
        self.active = False
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.executors.uninstall()
        self.batches.uninstall()
        self.queues.uninstall()
        self.limits.active = False
        self.gates.active = False
        self.primitives.track_semaphore = None
        self.load.stop()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """A loop was instrumented: measure its load."""
        self.load.attach(loop)
        if self.active and self._thread is None:
            self._start_thread()

    def after_fork(self) -> None:
        """In a forked child: start from zero with a thread of its own."""
        self._lock = threading.RLock()
        self.executors.reset()
        self.limits.reset()
        self.gates.reset()
        self.queues.reset()
        self.batches.reset()
        self.load.reset()
        self._limit_snaps = {}
        self._limit_seen = {}
        self._child_cpu = {}
        self._pid_cpu = {}
        self._rq_wait = {}
        self._task_wait = {}
        self._procs = {}
        self.last = ()
        self._logged = {}
        # No thread is started inside an at-fork handler (that can deadlock the child): the
        # child's sampler starts with its first new event loop (attach).
        self._thread = None

    def _start_thread(self) -> None:
        self._stop = threading.Event()
        thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        stop = self._stop
        next_eval = clock() + self.config.advisor_interval_s
        # Scheduling on the real clock (``clock`` may be a test's virtual one): a sample every
        # sample_s, and between samples a peek at each loop thread's stack every peek_s or so
        # (jittered: a fixed period could keep step with a periodic task of the app).
        jitter = random.Random()
        next_sample = time.monotonic() + self.sample_s
        peeking = True
        look = self._look
        while True:
            wait = next_sample - time.monotonic()
            if peeking:
                wait = min(wait, self.peek_s * jitter.uniform(0.5, 1.5))
            switched = own_switches() if look is not None else None
            if stop.wait(max(0.0, wait)):
                return
            try:
                if look is not None:
                    # First, before anything here can let go of the GIL: after a call that
                    # held it, this thread may be the one to get it first (see
                    # ``LoopMonitor.look_for_watchdog``).
                    look(switched)
                peeking = self.load.peek()
                if time.monotonic() < next_sample:
                    continue
                next_sample = time.monotonic() + self.sample_s
                self.sample()
                if clock() >= next_eval:
                    next_eval = clock() + self.config.advisor_interval_s
                    self.log_changes(self.advise(sample=False))
            except Exception as exc:
                if self.faults.report("advisor", exc):
                    return

    # ------------------------------------------------------------------ sampling

    def sample(self) -> None:
        """Read the cumulative counters into the rings (any thread)."""
        with self._lock:
            now = clock()
            self.load.sample()
            keep = int(self.window_s / self.sample_s) + 4
            for stats in self.limits.limits():
                ring = self._limit_snaps.get(stats.label)
                if ring is None:
                    ring = self._limit_snaps[stats.label] = deque(maxlen=keep)
                    self._limit_seen[stats.label] = now
                ring.append((now, stats))
            self._sample_children(now, keep)
            self._sample_runqueue(now, keep)

    def _sample_children(self, now: float, keep: int) -> None:
        pools = [s for s in self.executors.executors() if not s.threads]
        if not pools:
            return
        import psutil

        for stats in pools:
            known = self._pid_cpu.setdefault(id(stats), {})
            for pid in stats.worker_pids():
                proc = self._procs.get(pid)
                try:
                    if proc is None:
                        proc = self._procs[pid] = psutil.Process(pid)
                    times = proc.cpu_times()
                    known[pid] = times.user + times.system
                except psutil.Error:
                    self._procs.pop(pid, None)  # exited: its last reading stays in the total
            ring = self._child_cpu.get(id(stats))
            if ring is None:
                # Workers start with the pool's first call: count their CPU from there.
                ring = self._child_cpu[id(stats)] = deque([(stats.first_seen, 0.0)], maxlen=keep)
            ring.append((now, sum(known.values())))
            if len(known) > 1024:
                known.clear()
                ring.clear()
        if len(self._procs) > 4096:
            self._procs.clear()

    def _sample_runqueue(self, now: float, keep: int) -> None:
        """Time each pool's workers spent runnable but waiting for a CPU (Linux schedstat).

        On a busy machine CPU-bound calls take longer than their CPU time, like calls that
        wait on I/O; the time spent waiting *for a CPU* tells the two apart.
        """
        if not _SCHEDSTAT:
            return
        for stats in self.executors.executors():
            if stats.threads:
                paths = [f"/proc/self/task/{tid}/schedstat" for tid in stats.worker_tids()]
            else:
                paths = [f"/proc/{pid}/schedstat" for pid in stats.worker_pids()]
            known = self._task_wait.setdefault(id(stats), {})
            for path in paths[:MAX_WORKERS_READ]:
                waited = _runqueue_wait_s(path)
                if waited is not None:
                    known[hash(path)] = waited  # a worker gone keeps its last reading
            if not known:
                continue
            ring = self._rq_wait.get(id(stats))
            if ring is None:
                ring = self._rq_wait[id(stats)] = deque(maxlen=keep)
                if not stats.threads:  # process workers start with the pool's first call
                    ring.append((stats.first_seen, 0.0))
            ring.append((now, sum(known.values())))
            if len(known) > 4 * MAX_WORKERS_READ:
                known.clear()
                ring.clear()

    # ------------------------------------------------------------------ figures

    def pool_figures(self, now: float) -> list[PoolFigures]:
        """Each live executor over the window."""
        from ._pool_model import PoolFigures

        out = []
        since = now - self.window_s
        for stats in self.executors.executors():
            rows = [r for r in stats.recent() if r[2] >= since]
            if not rows:
                continue
            count = len(rows)
            first = min(r[0] for r in rows)
            last = max(r[2] for r in rows)
            latency = sum(r[2] - r[0] for r in rows) / count
            wait = run = cpu = None
            if stats.threads:
                # Thread pools record the start of the run and its CPU on every call.
                wait = sum((r[1] or r[0]) - r[0] for r in rows) / count
                run = sum(r[2] - (r[1] or r[0]) for r in rows) / count
                cpu = sum(r[3] or 0.0 for r in rows) / count
            else:
                cpu = self._per_call(self._child_cpu.get(id(stats)), first, last, count)
            cpu_wait = self._per_call(self._rq_wait.get(id(stats)), first, last, count)
            out.append(PoolFigures(
                stats.label, stats.threads, stats.max_workers(), count, last - first, wait,
                run, latency, cpu, self.load.cores, cpu_wait))
        return out

    def _per_call(
        self, samples: Iterable[tuple[float, float]] | None, first: float, last: float,
        count: int,
    ) -> float | None:
        """A cumulative figure sampled over time, per call between ``first`` and ``last``."""
        ring = list(samples or ())
        inside = [s for s in ring if first - self.sample_s <= s[0] <= last + self.sample_s]
        if len(inside) < 2 and ring and ring[0][0] >= first - self.sample_s:
            inside = ring[:1] + [s for s in ring[1:] if s[0] >= last]
        if len(inside) < 2:
            return None
        used = inside[-1][1] - inside[0][1]
        return max(0.0, used) / count

    def limit_figures(self, now: float) -> list[LimitFigures]:
        """Each concurrency limit: cumulative levels, window pressure."""
        out: list[LimitFigures] = []
        since = now - self.window_s
        with self._lock:
            snaps = {k: list(v) for k, v in self._limit_snaps.items()}
            seen = dict(self._limit_seen)
        for label, ring in snaps.items():
            if not ring:
                continue
            latest = ring[-1][1]
            base: LimitStats | None = None
            if seen.get(label, now) < since:
                older = [s for t, s in ring if t <= since] or [ring[0][1]]
                base = older[-1]
            figures = _limit_window(label, latest, base)
            if figures is not None:
                out.append(figures)
        return out

    def batch_figures(self) -> list[BatchFigures]:
        """Each batch site's recent batches, and (as their mean) batches of the sizes it ran
        before them: a run at each size a "need" names adds a point to the fit."""
        from ._batch_model import BatchFigures

        default = self.config.advisor_batch_budget_s
        out = []
        for site in self.batches.sites():
            recent = tuple((s, d) for s, d, _ in site.recent())
            in_ring = {s for s, _ in recent}
            older = tuple(
                (size, total / count)
                for size, (count, total) in list(site.by_size.items())
                if size not in in_ring and count > 0
                for _ in range(min(int(count), PER_SIZE_KEPT))
            )
            out.append(BatchFigures(site.label, site.explicit, older + recent,
                                    site.budget_s if site.budget_s is not None else default))
        return out

    def loop_figures(self) -> list[LoopFigures]:
        """Each loop's load over the window."""
        from ._loop_model import LoopFigures

        proc = self.load.process_window(self.window_s)
        cores_used, machine = proc if proc is not None else (None, None)
        return [
            LoopFigures(w.label, w.seconds, w.busy, w.cpu, w.lag_p99_s, self.load.cores,
                        machine, cores_used)
            for w in self.load.windows(self.window_s)
        ]

    # ------------------------------------------------------------------ advice

    def advise(self, *, sample: bool = True) -> list[Recommendation]:
        """For each knob watched: changes first (largest expected gain first), then the data
        still needed, then the knobs to leave as they are (with the reason)."""
        from ._batch_model import batch_advice
        from ._limit_model import limit_advice
        from ._loop_model import loop_advice
        from ._pool_model import pool_advice

        if sample:
            self.sample()
        now = clock()
        recs: list[Recommendation] = []
        steps: list[tuple[str, Callable[[], Iterable[Recommendation]]]] = [
            ("pools", lambda: (r for f in self.pool_figures(now) for r in pool_advice(
                f, min_calls=MIN_CALLS, max_threads=self.config.advisor_max_threads))),
            ("limits", lambda: (r for f in self.limit_figures(now) for r in limit_advice(
                f, min_done=MIN_DONE, max_limit=self.config.advisor_max_threads * 8))),
            ("batches", lambda: (r for f in self.batch_figures() for r in batch_advice(
                f, min_batches=MIN_BATCHES))),
            ("loops", lambda: (r for f in self.loop_figures() for r in loop_advice(
                f, min_seconds=min(10.0, self.window_s / 2)))),
        ]
        for name, step in steps:
            try:
                recs.extend(step())
            except Exception as exc:
                self.faults.report(f"advisor:{name}", exc)
        order = {"advice": 0, "need_data": 1, "no_change": 2}
        recs.sort(key=lambda r: (order[r.kind], -(r.gain or 0.0), r.target))
        self.last = tuple(recs)
        return recs

    def log_changes(self, recs: list[Recommendation]) -> None:
        """Log each recommendation that is new or changed, and those withdrawn."""
        now: dict[tuple[str, str], tuple[int | None, str | None]] = {}
        for rec in recs:
            key = (rec.target, rec.knob)
            now[key] = (rec.suggested, rec.need)
            if self._logged.get(key) == now[key]:
                continue
            if rec.suggested is None:
                logger.debug("asyncwatch advice: %s", rec)
            else:
                logger.info("asyncwatch advice: %s. Evidence: %s", rec, rec.evidence)
        for key, (suggested, _) in self._logged.items():
            if key not in now and suggested is not None:
                logger.info("asyncwatch advice withdrawn: %s: %s (no longer needed)", *key)
        self._logged = now

    def points(self) -> Iterable[Point]:
        """The resources the advisor watches (semaphores, pools, gates: in use, waiting, wait
        time, per site), and gauges of the last evaluated advice (suggested, current,
        expected gain)."""
        start = 0
        for stats in self.limits.limits():
            attrs = {n.RESOURCE: stats.label}
            yield n.SEMAPHORE_IN_USE, attrs, max(0, stats.in_use), start
            limit = stats.current_limit()
            if limit is not None:
                yield n.SEMAPHORE_LIMIT, attrs, limit, start
            yield n.SEMAPHORE_WAITS, attrs, stats.waits, start
            yield n.SEMAPHORE_WAIT_TIME, attrs, stats.waiter_s, start
            yield n.SEMAPHORE_FAILED, attrs, stats.failures, start
        for pool in self.executors.executors():
            attrs = {n.RESOURCE: pool.label}
            ended = pool.ended
            if pool.threads:
                started = pool.started
                yield n.POOL_IN_USE, attrs, max(0, started - ended), start
                yield n.POOL_QUEUED, attrs, max(0, pool.submitted - started), start
                yield n.POOL_WAIT_TIME, attrs, pool.wait_s, start
            else:
                yield n.POOL_IN_USE, attrs, max(0, pool.submitted - ended), start
            workers = pool.max_workers()
            if workers is not None:
                yield n.POOL_WORKERS, attrs, workers, start
        yield from self.gates.points()
        yield from self.queues.points()
        for rec in self.last:
            if rec.suggested is None:
                continue
            attrs = {n.ADVICE_TARGET: rec.target, n.ADVICE_KNOB: rec.knob}
            yield n.ADVICE_SUGGESTED, attrs, rec.suggested, start
            if rec.current is not None:
                yield n.ADVICE_CURRENT, attrs, rec.current, start
            if rec.gain is not None:
                yield n.ADVICE_GAIN, attrs, rec.gain, start

    # ------------------------------------------------------------------ explicit API

    def batch_site(self, name: str, budget_s: float | None) -> BatchSite | None:
        """The site of ``asyncwatch.batch(name)``."""
        if not self.active:
            return None
        return self.batches.site(("batch", name), lambda: f"batch '{name}'", True, budget_s)


# ---------------------------------------------------------------- public helpers


def make_batch(
    running: Callable[[], Advisor | None],
    name: str,
    size: int | Callable[..., int],
    budget_s: float | None,
) -> Any:
    """``asyncwatch.batch``: a context manager (``size`` a number) or a decorator (callable).

    ``running`` finds the running advisor (None when asyncwatch or its advisor is off); a
    decorator asks it at each call, as the app may install asyncwatch after decorating.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("asyncwatch.batch: name must be a non-empty string")
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(
            budget_s, int | float) or not budget_s > 0):
        raise ValueError("asyncwatch.batch: budget_s must be a positive number of seconds")
    if callable(size):

        def site_of() -> BatchSite | None:
            advisor = running()
            return advisor.batch_site(name, budget_s) if advisor is not None else None

        return batch_decorator(site_of, size)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("asyncwatch.batch: size must be a whole number >= 0, or a callable")
    advisor = running()
    site = advisor.batch_site(name, budget_s) if advisor is not None and size > 0 else None
    return Batch(site, size)


def render(recs: list[Recommendation], *, evidence: bool = True) -> str:
    """Recommendations as text for the console and logs: plain words first (what was seen,
    what to do), then the figures, then the model's own terms."""
    if not recs:
        return "no recommendations: nothing watched has had traffic yet"
    lines = []
    for rec in recs:
        head = (f"{rec.knob}: no change" if rec.kind == "no_change" else
                f"{rec.knob}: not enough data yet" if rec.kind == "need_data" else
                f"{rec.knob}: {'?' if rec.current is None else rec.current} -> {rec.suggested}"
                f"   [{rec.confidence} confidence]")
        lines.append(f"* {rec.target}\n    {head}\n    {rec.summary}")
        if evidence and rec.evidence:
            lines.append(f"    evidence: {rec.evidence}")
        if evidence and rec.detail:
            lines.append(f"    detail ({rec.model}): {rec.detail}")
    return "\n".join(lines)


def _limit_window(label: str, latest: LimitStats, base: LimitStats | None) -> LimitFigures | None:
    """A limit's figures between two snapshots (``base`` None: since it was first seen).

    Semaphore holds are timed on a sample: mean hold time and the concurrency a hold sees
    come from the sampled holds, completions and waits from every hold.
    """
    from ._limit_model import LimitFigures

    def delta(field: str) -> float:
        value: float = getattr(latest, field)
        return value - getattr(base, field) if base is not None else value

    done = int(delta("done"))
    sampled, sampled_s, area = delta("sampled"), delta("sampled_s"), delta("sampled_area")
    if sampled <= 0 or sampled_s <= 0:  # no timed hold in the window: take them all
        sampled, sampled_s, area = latest.sampled, latest.sampled_s, latest.sampled_area
    if done <= 0 or sampled <= 0 or sampled_s <= 0:
        return None
    holders = max(1.0, area / sampled_s)  # mean concurrency a hold sees
    holder_s = done * sampled_s / sampled  # Little's law: completions x mean hold
    active = holder_s / holders
    scale = latest.done / latest.sampled  # sampled holds per level, scaled to every completion
    levels = tuple(
        (lvl, latest.hold_time.get(lvl, 0.0) * scale, round(latest.holds[lvl] * scale))
        for lvl in sorted(latest.holds)
    )
    failed = tuple((lvl, round(count * scale)) for lvl, count in sorted(latest.failed.items()))
    return LimitFigures(
        label, latest.current_limit(), levels, active, holders, delta("waiter_s") / active,
        done, latest.max_level, failed,
    )
