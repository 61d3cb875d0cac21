"""Small least-squares fits for the advisor (pure Python: at most three parameters).

* ``nnls3``: weighted least squares ``y ~ p0*f0(x) + p1*f1(x) + p2*f2(x)`` with every
  parameter >= 0, solved exactly by trying each set of parameters held at zero (8 cases).
* ``fit_usl``: the Universal Scalability Law (Gunther), throughput at concurrency N
  ``X(N) = lam*N / (1 + sigma*(N-1) + kappa*N*(N-1))``, fitted in its linear form
  ``N/X = 1/lam + (sigma/lam)*(N-1) + (kappa/lam)*N*(N-1)``.
* ``fit_batch``: time of a batch of n items ``T(n) = a + b*n + c*n^2`` (per-batch overhead,
  per-item cost, and a growth term for costs that rise with the batch, e.g. memory).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when singular."""
    size = len(rhs)
    a = [[*row[:], rhs[i]] for i, row in enumerate(matrix)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-300:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(size):
            if r != col:
                factor = a[r][col] / a[col][col]
                if factor:
                    for k in range(col, size + 1):
                        a[r][k] -= factor * a[col][k]
    return [a[i][size] / a[i][i] for i in range(size)]


def nnls3(
    xs: Sequence[float],
    ys: Sequence[float],
    weights: Sequence[float],
    basis: Sequence[Callable[[float], float]],
    required: Sequence[bool] = (),
) -> tuple[list[float], float] | None:
    """Non-negative weighted least squares over ``basis`` (up to 3 functions).

    ``required[i]`` keeps parameter i out of the held-at-zero cases (it may still come out
    zero if the data say so, in which case the case is discarded). Returns (params, weighted
    sum of squared residuals), or None if no case fits.
    """
    k = len(basis)
    rows = [[f(x) for f in basis] for x in xs]
    cases: list[tuple[int, float, list[float]]] = []  # (free parameters, sse, params)
    for free in itertools.product((True, False), repeat=k):
        if any(req and not f for req, f in zip(required, free, strict=False)):
            continue
        idx = [i for i in range(k) if free[i]]
        if not idx:
            continue
        ata = [[sum(w * r[i] * r[j] for r, w in zip(rows, weights, strict=True)) for j in idx]
               for i in idx]
        aty = [sum(w * r[i] * y for r, y, w in zip(rows, ys, weights, strict=True)) for i in idx]
        sol = _solve(ata, aty)
        if sol is None or any(v < 0 or not math.isfinite(v) for v in sol):
            continue
        params = [0.0] * k
        for i, v in zip(idx, sol, strict=True):
            params[i] = v
        sse = sum(
            w * (y - sum(p * v for p, v in zip(params, r, strict=True))) ** 2
            for r, y, w in zip(rows, ys, weights, strict=True)
        )
        cases.append((len(idx), sse, params))
    if not cases:
        return None
    # A term that lowers the residual only at round-off level is no evidence for it: the
    # fewest parameters within that of the best fit win. (Round-off differs by version:
    # 3.12's compensated sum() left a 1e-18 growth term in an exactly linear batch fit.)
    scale = sum(w * y * y for y, w in zip(ys, weights, strict=True))
    floor = min(c[1] for c in cases) + 1e-12 * scale
    _, sse, params = min((c for c in cases if c[1] <= floor), key=lambda c: (c[0], c[1]))
    return params, sse


def r_squared(ys: Sequence[float], predicted: Sequence[float], weights: Sequence[float]) -> float:
    """Weighted coefficient of determination (1 = perfect; <= 0 = no better than the mean)."""
    total = sum(weights)
    if total <= 0:
        return 0.0
    mean = sum(w * y for y, w in zip(ys, weights, strict=True)) / total
    ss_tot = sum(w * (y - mean) ** 2 for y, w in zip(ys, weights, strict=True))
    ss_res = sum(w * (y - p) ** 2 for y, p, w in zip(ys, predicted, weights, strict=True))
    if ss_tot <= 0:
        return 1.0 if ss_res <= 1e-12 * max(1.0, total) else 0.0
    return 1.0 - ss_res / ss_tot


@dataclass(frozen=True)
class USLFit:
    """Universal Scalability Law parameters: lam (throughput of one), sigma (contention),
    kappa (crosstalk/coherency)."""

    lam: float
    sigma: float
    kappa: float
    r2: float

    def throughput(self, n: float) -> float:
        """Predicted throughput (completions/s) at concurrency ``n``."""
        return self.lam * n / (1 + self.sigma * (n - 1) + self.kappa * n * (n - 1))

    @property
    def peak(self) -> float:
        """Concurrency of the highest throughput (inf when throughput never falls)."""
        if self.kappa <= 0:
            return math.inf
        return math.sqrt(max(0.0, 1 - self.sigma) / self.kappa)


def fit_usl(levels: Sequence[float], throughputs: Sequence[float],
            weights: Sequence[float]) -> USLFit | None:
    """Fit the USL to (concurrency, throughput) points; None if it cannot be fitted."""
    pts = [(n, x, w) for n, x, w in zip(levels, throughputs, weights, strict=True)
           if n > 0 and x > 0 and w > 0]
    if len(pts) < 3:
        return None
    ns = [p[0] for p in pts]
    ys = [p[0] / p[1] for p in pts]  # N / X: time per completion per unit of concurrency
    ws = [p[2] / (y * y) for p, y in zip(pts, ys, strict=True)]  # relative errors
    result = nnls3(ns, ys, ws, (lambda n: 1.0, lambda n: n - 1.0, lambda n: n * (n - 1.0)),
                   required=(True,))
    if result is None or result[0][0] <= 0:
        return None
    a, b, c = result[0]
    fit = USLFit(lam=1 / a, sigma=b / a, kappa=c / a, r2=0.0)
    predicted = [fit.throughput(n) for n in ns]
    r2 = r_squared([p[1] for p in pts], predicted, [p[2] for p in pts])
    return USLFit(fit.lam, fit.sigma, fit.kappa, r2)


@dataclass(frozen=True)
class BatchFit:
    """``T(n) = overhead + per_item*n + growth*n^2`` (seconds)."""

    overhead: float
    per_item: float
    growth: float
    r2: float

    def duration(self, n: float) -> float:
        """Predicted seconds for a batch of ``n``."""
        return self.overhead + self.per_item * n + self.growth * n * n

    def throughput(self, n: float) -> float:
        """Predicted items per second at batch size ``n`` (batches back to back)."""
        t = self.duration(n)
        return n / t if t > 0 else math.inf

    def best_size(self, budget_s: float | None, n_max: float) -> float:
        """The size with the most items per second, kept under ``budget_s`` per batch.

        With no growth term throughput rises forever towards 1/per_item: take the smallest
        size that reaches 90 % of it (``9*overhead/per_item``), then cap by the budget and
        ``n_max``.
        """
        if self.growth > 0:
            best = math.sqrt(self.overhead / self.growth)
        elif self.per_item > 0:
            best = 9 * self.overhead / self.per_item
        else:
            best = n_max
        if budget_s is not None:
            best = min(best, self.largest_within(budget_s))
        return max(1.0, min(best, n_max))

    def largest_within(self, budget_s: float) -> float:
        """The largest size whose predicted duration is within ``budget_s`` (0 if none)."""
        a, b, c = self.overhead - budget_s, self.per_item, self.growth
        if a > 0:
            return 0.0
        if c > 0:  # the positive root, in the form that does not cancel when c is tiny
            return 0.0 if a == 0 else -2 * a / (b + math.sqrt(b * b - 4 * c * a))
        if b > 0:
            return -a / b
        return math.inf


def fit_batch(sizes: Sequence[float], durations: Sequence[float],
              weights: Sequence[float] | None = None) -> BatchFit | None:
    """Fit batch durations against sizes; None with fewer than 3 distinct sizes."""
    if len(set(sizes)) < 3:
        return None
    ws = list(weights) if weights is not None else [1.0] * len(sizes)
    result = nnls3(sizes, durations, ws, (lambda n: 1.0, lambda n: n, lambda n: n * n))
    if result is None:
        return None
    a, b, c = result[0]
    fit = BatchFit(a, b, c, 0.0)
    r2 = r_squared(durations, [fit.duration(n) for n in sizes], ws)
    return BatchFit(a, b, c, r2)
