"""Exact binomial confidence bounds for accuracy and paired accuracy drops (stdlib ``math``; numpy for the
exact paired bound, imported lazily).

Everything here is *exact* in the Clopper-Pearson sense: the bounds come from inverting exact binomial tail
probabilities (computed in log space), never from a normal approximation, so their coverage is at least the nominal
confidence for every sample size (they are conservative, never anti-conservative).

Conventions:
    * ``confidence`` is the one-sided confidence level in (0, 1), e.g. 0.95; ``alpha = 1 - confidence``.
    * Drops and accuracies are *fractions* (0.01 = one accuracy point).

The paired drop bound (see :func:`paired_drop_upper_bound`) is what makes a one-point promise possible: only the
examples whose prediction changed carry information about the drop, so its width scales with the square root of
the *discordant* rate, not with the accuracy's own variance (DESIGN.md section 6, last bullet).
"""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = [
    "binom_logpmf",
    "binom_cdf",
    "binom_sf",
    "clopper_pearson_upper",
    "clopper_pearson_lower",
    "accuracy_lower_bound",
    "paired_drop_upper_bound",
    "paired_drop_p_value",
    "corrected_confidence",
]

_BISECT_TOL = 1e-12
_BISECT_MAX_ITER = 200


def _check_counts(k: int, n: int) -> None:
    if not isinstance(n, int) or not isinstance(k, int):
        raise TypeError(f"counts must be integers, got k={k!r}, n={n!r}")
    if n <= 0:
        raise ValueError(f"need at least one trial (n={n}): a bound on an empty split is meaningless")
    if not 0 <= k <= n:
        raise ValueError(f"count k={k} outside 0..n={n}")


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def binom_logpmf(k: int, n: int, p: float) -> float:
    """log P(X = k) for X ~ Binomial(n, p), exact (lgamma), with the p in {0, 1} limits handled.

    Args:
        k: number of successes, 0 <= k <= n.
        n: number of trials, n >= 0.
        p: success probability in [0, 1].

    Returns:
        The natural log of the probability (``-inf`` when it is 0).
    """
    if not 0 <= k <= n:
        return -math.inf
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    log_choose = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return log_choose + k * math.log(p) + (n - k) * math.log1p(-p)


def _log_tail(k_from: int, k_to: int, n: int, p: float) -> float:
    """log of sum_{i=k_from}^{k_to} P(X = i), summed with the pmf ratio recurrence (one lgamma per call)."""
    if k_from > k_to:
        return -math.inf
    if p <= 0.0 or p >= 1.0:  # all mass on 0 or on n
        atom = 0 if p <= 0.0 else n
        return 0.0 if k_from <= atom <= k_to else -math.inf
    log_odds = math.log(p) - math.log1p(-p)
    term = binom_logpmf(k_from, n, p)
    terms = [term]
    for i in range(k_from, k_to):
        # pmf(i + 1) / pmf(i) = (n - i) / (i + 1) * p / (1 - p)
        term += math.log(n - i) - math.log(i + 1) + log_odds
        terms.append(term)
    return _logsumexp(terms)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly in log space.

    Args:
        k: upper end (inclusive); values < 0 give 0 and values >= n give 1.
        n: number of trials.
        p: success probability in [0, 1].

    Returns:
        The cumulative probability.
    """
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    # Sum the shorter side for speed; both sides are exact sums, the subtraction only loses precision when the
    # result is close to 1, where bisection does not need it.
    if k <= n // 2:
        return min(1.0, math.exp(_log_tail(0, k, n, p)))
    return max(0.0, 1.0 - math.exp(_log_tail(k + 1, n, n, p)))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p).

    Args:
        k: lower end (inclusive).
        n: number of trials.
        p: success probability in [0, 1].

    Returns:
        The upper-tail probability.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if k > n // 2:
        return min(1.0, math.exp(_log_tail(k, n, n, p)))
    return max(0.0, 1.0 - math.exp(_log_tail(0, k - 1, n, p)))


def _bisect_decreasing(f, target: float) -> float:
    """Largest p in [0, 1] with f(p) >= target for f decreasing in p (bisection to 1e-12)."""
    lo, hi = 0.0, 1.0
    for _ in range(_BISECT_MAX_ITER):
        mid = 0.5 * (lo + hi)
        if f(mid) >= target:
            lo = mid
        else:
            hi = mid
        if hi - lo < _BISECT_TOL:
            break
    return hi  # the conservative end: f(hi) < target by construction (or hi = 1)


def _bisect_increasing(f, target: float) -> float:
    """Smallest p in [0, 1] with f(p) >= target for f increasing in p."""
    lo, hi = 0.0, 1.0
    for _ in range(_BISECT_MAX_ITER):
        mid = 0.5 * (lo + hi)
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid
        if hi - lo < _BISECT_TOL:
            break
    return lo  # conservative end for a lower bound


@lru_cache(maxsize=65536)
def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial proportion.

    The bound is the p_u with P(X <= k; n, p_u) = 1 - confidence; P(p <= p_u) >= confidence for every true p.

    Args:
        k: observed successes, 0 <= k <= n.
        n: trials, n >= 1.
        confidence: one-sided confidence level in (0, 1).

    Returns:
        The upper bound in [0, 1] (1.0 when k == n; ``1 - alpha**(1/n)`` when k == 0).

    Raises:
        ValueError: n < 1, k outside 0..n, or confidence outside (0, 1).
    """
    _check_counts(k, n)
    alpha = _check_confidence(confidence)
    if k == n:
        return 1.0
    if k == 0:
        return -math.expm1(math.log(alpha) / n)  # closed form: (1 - p)^n = alpha
    return _bisect_decreasing(lambda p: binom_cdf(k, n, p), alpha)


@lru_cache(maxsize=65536)
def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound on a binomial proportion.

    The bound is the p_l with P(X >= k; n, p_l) = 1 - confidence.

    Args:
        k: observed successes, 0 <= k <= n.
        n: trials, n >= 1.
        confidence: one-sided confidence level in (0, 1).

    Returns:
        The lower bound in [0, 1] (0.0 when k == 0; ``alpha**(1/n)`` when k == n).

    Raises:
        ValueError: n < 1, k outside 0..n, or confidence outside (0, 1).
    """
    _check_counts(k, n)
    alpha = _check_confidence(confidence)
    if k == 0:
        return 0.0
    if k == n:
        return math.exp(math.log(alpha) / n)
    return _bisect_increasing(lambda p: binom_sf(k, n, p), alpha)


def accuracy_lower_bound(correct: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower confidence bound on an accuracy.

    Args:
        correct: number of correctly classified examples.
        n: number of examples (>= 1).
        confidence: one-sided confidence level in (0, 1), e.g. 0.95.

    Returns:
        A fraction a_l with P(true accuracy >= a_l) >= confidence.

    Raises:
        ValueError: n < 1, correct outside 0..n, or confidence outside (0, 1).
    """
    return clopper_pearson_lower(int(correct), int(n), float(confidence))


def paired_drop_upper_bound(n_worse: int, n_better: int, n: int, confidence: float, *, method: str = "exact") -> float:
    """One-sided upper confidence bound on accuracy(base) - accuracy(candidate) from paired outcomes.

    Every example falls in one of three cells: the candidate is *worse* (base right, candidate wrong), *better*
    (base wrong, candidate right) or *unchanged*. With p_w, p_b the population rates of the first two cells, the
    drop is exactly ``p_w - p_b``. All methods are valid for the population drop at every n and every
    (p_w, p_b); coverage is checked by simulation in tests/test_bounds.py.

    ``method="exact"`` (default): the exact unconditional test of Berger & Boos (1994) of Tango's (1998) score
    statistic ``(D - n*d0) / sqrt(n (2 p_b~ + d0 - d0^2))`` (D = n_worse - n_better, p_b~ the maximum-likelihood
    "better" rate under the hypothesised drop d0). Its p-value is the largest P(T <= observed) over the nuisance
    q = p_w + p_b (the discordant rate), taken over a 1 - gamma confidence interval for q (gamma = alpha/50) and
    increased by gamma; the bound is the largest d0 that is not rejected at level alpha. Because the score
    statistic is standardised by the *null* variance, its tail barely moves with q and the supremum costs little:
    on n = 2113 with 24 worse / 23 better (an INT8 model vs its FP32 source) it gives 0.60 points (normal
    approximation 0.58, the Wald version below 0.63, the Bonferroni split 0.99); at 98.33% (Bonferroni over 3)
    0.77 vs 0.83 for the Wald version.

    ``method="wald"``: the same exact construction with the studentized (Wald) statistic
    ``(D - n*d0) / sqrt(m - D^2/n)`` (m = n_worse + n_better), the default before issue #15. Equally valid, but
    its tail peaks at the smallest flip rate of the nuisance interval, so it is wider at small counts (0.37 vs 0.29
    points for 10 worse / 12 better of 2113). With very few discordant examples (n = 300, 5 / 1) it is the
    slightly narrower of the two (3.06 vs 3.10 points).

    ``method="split"``: ``CP_upper(n_worse; 1 - alpha/2) - CP_lower(n_better; 1 - alpha/2)`` (Clopper-Pearson,
    union bound). Simpler and valid, but it adds the two widths instead of combining their variances; it is
    tighter only when there are (almost) no discordant examples.

    Args:
        n_worse: examples the base model got right and the candidate got wrong.
        n_better: examples the base model got wrong and the candidate got right.
        n: number of examples (>= 1), including the unchanged ones.
        confidence: one-sided confidence level in (0, 1).
        method: "exact" (Berger-Boos, score statistic), "wald" (Berger-Boos, Wald statistic) or "split"
            (Bonferroni split of Clopper-Pearson bounds).

    Returns:
        The bound as a fraction in [-1, 1] (0.01 = one accuracy point).

    Raises:
        ValueError: n < 1, negative counts, n_worse + n_better > n, confidence outside (0, 1), unknown method.
    """
    n_worse, n_better, n = int(n_worse), int(n_better), int(n)
    if n <= 0:
        raise ValueError(f"need at least one paired example (n={n})")
    if n_worse < 0 or n_better < 0 or n_worse + n_better > n:
        raise ValueError(f"invalid paired counts: n_worse={n_worse}, n_better={n_better}, n={n}")
    alpha = _check_confidence(confidence)
    if method == "split":
        half = 1.0 - alpha / 2.0
        return clopper_pearson_upper(n_worse, n, half) - clopper_pearson_lower(n_better, n, half)
    if method == "wald":
        return _berger_boos_upper(n_worse, n_better, n, alpha)
    if method != "exact":
        raise ValueError(f"unknown method {method!r}; choose 'exact', 'wald' or 'split'")
    return _score_exact_upper(n_worse, n_better, n, alpha)


#: Share of alpha spent on the nuisance confidence interval (Berger & Boos suggest a small gamma, e.g. 0.001).
BERGER_BOOS_GAMMA_SHARE = 1 / 50
#: Points of the nuisance grid (endpoints included); the tail probability is smooth and unimodal in q.
_BB_GRID = 7
_BB_ITER = 18


@lru_cache(maxsize=8)
def _log_factorials(n: int):
    import numpy as np

    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def _studentized(d, m, n: int, delta: float):
    """Wald statistic of the paired drop: (D - n*delta) / sqrt(m - D^2/n), floored to avoid a zero scale."""
    import numpy as np

    return (d - n * delta) / np.sqrt(np.maximum(m - d * d / n, 0.5))


def _paired_tail(t_obs: float, n: int, delta: float, q: float, lf, stat=None, tol: float = 0.0) -> float:
    """P(T <= t_obs + tol) for the statistic T (default: the studentized one) when the paired counts are
    Multinomial(n; (q+delta)/2, (q-delta)/2, 1-q); T is computed from (n_worse, n_better) cell by cell."""
    import numpy as np

    stat = _studentized if stat is None else stat
    t_obs = t_obs + tol  # a tolerance only ever adds cells to the tail: the p-value can only grow
    if q <= 0.0:  # every example unchanged: D = m = 0
        return 1.0 if stat(0.0, 0.0, n, delta) <= t_obs else 0.0
    q = min(q, 1.0)
    sd = math.sqrt(n * q * (1.0 - q))
    m_lo = max(0, int(math.floor(n * q - 9 * sd - 6)))
    m_hi = min(n, int(math.ceil(n * q + 9 * sd + 6)))
    ms = np.arange(m_lo, m_hi + 1, dtype=np.float64)
    if q < 1.0:
        logw = lf[n] - lf[ms.astype(int)] - lf[(n - ms).astype(int)] + ms * math.log(q) \
            + (n - ms) * math.log1p(-q)
    else:
        logw = np.where(ms == n, 0.0, -np.inf)
    theta = min(max((q + delta) / (2.0 * q), 0.0), 1.0)  # P(worse | discordant)
    # K | m ~ Bin(m, theta): cells more than 9 standard deviations out carry < 1e-18 of the mass.
    spread = 9.0 * math.sqrt(m_hi * theta * (1.0 - theta)) + 6.0
    k_lo, k_hi = max(0, int(theta * m_lo - spread)), min(m_hi, int(math.ceil(theta * m_hi + spread)))
    ks = np.arange(k_lo, k_hi + 1, dtype=np.float64)
    mm, kk = np.meshgrid(ms, ks, indexing="ij")  # k = n_worse, m - k = n_better
    feasible = kk <= mm
    hit = feasible & (stat(2 * kk - mm, mm, n, delta) <= t_obs)
    if theta <= 0.0 or theta >= 1.0:
        sure = (kk == (mm if theta >= 1.0 else 0))  # all discordant examples are worse (or all better)
        cell = np.where(hit & sure, 1.0, 0.0)
        return float(min(1.0, (np.exp(logw)[:, None] * cell).sum()))
    mi, ki = mm.astype(int), np.minimum(kk, mm).astype(int)
    logp = lf[mi] - lf[ki] - lf[mi - ki] + kk * math.log(theta) + (mm - kk) * math.log1p(-theta)
    prob = np.where(hit, np.exp(np.where(hit, logp + logw[:, None], -np.inf)), 0.0)
    return float(min(1.0, prob.sum()))


@lru_cache(maxsize=65536)
def _berger_boos_upper(x: int, y: int, n: int, alpha: float) -> float:
    gamma = alpha * BERGER_BOOS_GAMMA_SHARE
    d, m = x - y, x + y
    lf = _log_factorials(n)
    q_lo = clopper_pearson_lower(m, n, 1.0 - gamma / 2.0) if m > 0 else 0.0
    q_hi = clopper_pearson_upper(m, n, 1.0 - gamma / 2.0)

    def p_value(delta: float) -> float:
        lo = max(q_lo, abs(delta))
        if lo > q_hi:
            return gamma  # no nuisance value in the interval is compatible with this drop
        qs = [lo + (q_hi - lo) * i / (_BB_GRID - 1) for i in range(_BB_GRID)] if q_hi > lo else [lo]
        t_obs = float(_studentized(d, m, n, delta))
        return max(_paired_tail(t_obs, n, delta, q, lf) for q in qs) + gamma

    # p_value decreases in delta (the tail shrinks and the feasible nuisance set shrinks), so bisect between the
    # observed drop (never rejected: the tail there is about 1/2) and q_hi (always rejected: nothing feasible).
    lo, hi = d / n, q_hi
    if p_value(lo) <= alpha:  # cannot happen for alpha < ~0.4; keep the bound honest anyway
        return lo
    for _ in range(_BB_ITER):
        mid = 0.5 * (lo + hi)
        if p_value(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return min(1.0, hi)


def _score_statistic(d, m, n: int, delta: float):
    """Tango's (1998) score statistic of the paired drop: (D - n*delta) / sqrt(n * (2 p_b~ + delta - delta^2)).

    ``p_b~`` is the maximum-likelihood "better" rate *under the hypothesis* p_w - p_b = delta (the root of a
    quadratic, Tango 1998 eq. 3, with x = n_worse, y = n_better): the variance is the null variance of D, not the
    observed one, which is what keeps the statistic's tail nearly the same at every nuisance value.
    """
    import numpy as np

    x = 0.5 * (m + d)
    y = 0.5 * (m - d)
    a = 2.0 * n
    b = -x - y + (2.0 * n - x + y) * delta
    c = -y * delta * (1.0 - delta)
    p_b = (-b + np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
    p_b = np.maximum(p_b, max(0.0, -delta))
    var = n * (2.0 * p_b + delta - delta * delta)
    return (d - n * delta) / np.sqrt(np.maximum(var, 1e-12))


#: Nuisance grid of the score test (endpoints included) and golden-section steps around the grid's maximum.
_SCORE_GRID = 9
_SCORE_REFINE = 6
_SCORE_BISECT_TOL = 1e-7


def _sup_unimodal_refined(f, lo: float, hi: float) -> float:
    """max of f over [lo, hi]: a grid, then golden-section search in the two cells around the grid's best point.

    The tail probabilities maximised here are smooth in the nuisance (polynomials in q); the refinement makes the
    numerical supremum robust to an interior maximum between grid points.
    """
    if not hi > lo:
        return f(lo)
    xs = [lo + (hi - lo) * i / (_SCORE_GRID - 1) for i in range(_SCORE_GRID)]
    vals = [f(q) for q in xs]
    best = max(range(len(xs)), key=vals.__getitem__)
    a, b = xs[max(best - 1, 0)], xs[min(best + 1, len(xs) - 1)]
    top = vals[best]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, e = b - ratio * (b - a), a + ratio * (b - a)
    fc, fe = f(c), f(e)
    top = max(top, fc, fe)
    for _ in range(_SCORE_REFINE):
        if fc >= fe:
            b, e, fe = e, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
            top = max(top, fc)
        else:
            a, c, fc = c, e, fe
            e = a + ratio * (b - a)
            fe = f(e)
            top = max(top, fe)
    return top


def _xlogp(k, p: float):
    """k * log(p) elementwise, with 0 * log(0) = 0 (and -inf where k > 0 and p == 0)."""
    import numpy as np

    if p > 0.0:
        return k * math.log(p)
    return np.where(k > 0, -np.inf, 0.0)


#: Above this many cells the grid is not kept: each tail computes its own window (as the Wald version does).
_GRID_MAX_CELLS = 1_500_000


class _TrinomialGrid:
    """log multinomial coefficients of (n_worse = k, n_better = m - k) for every discordant count m the nuisance
    interval can reach (9 standard deviations beyond it), so that a tail probability at a new (p_w, p_b) costs one
    vectorised exp over a window of the grid instead of recomputing the coefficients and the statistic. Grids
    above ``_GRID_MAX_CELLS`` are not stored (memory): each tail then computes its window's cells itself."""

    def __init__(self, n: int, q_lo: float, q_hi: float):
        self.n = n
        self.lf = _log_factorials(n)
        self.m_lo, self.m_hi = self._m_window(q_lo)[0], self._m_window(q_hi)[1]
        self.full = (self.m_hi - self.m_lo + 1) * (self.m_hi + 1) <= _GRID_MAX_CELLS
        if self.full:
            self.Mf, self.Kf, self.log_coef = self._cells(self.m_lo, self.m_hi, 0, self.m_hi)
        self.hit = None
        self._stat = None

    def _cells(self, m_lo: int, m_hi: int, k_lo: int, k_hi: int):
        import numpy as np

        lf, n = self.lf, self.n
        M, K = np.meshgrid(np.arange(m_lo, m_hi + 1), np.arange(k_lo, k_hi + 1), indexing="ij")
        feasible = K <= M
        ki, ji = np.where(feasible, K, 0), np.where(feasible, M - K, 0)
        # n! / (k! (m-k)! (n-m)!): the multinomial coefficient of k worse, m - k better, n - m unchanged.
        log_coef = np.where(feasible, lf[n] - lf[ki] - lf[ji] - lf[n - M], -np.inf)
        return M.astype(np.float64), K.astype(np.float64), log_coef

    def _m_window(self, q: float) -> tuple[int, int]:
        n = self.n
        sd = math.sqrt(n * q * (1.0 - q)) if 0.0 < q < 1.0 else 0.0
        return max(0, int(math.floor(n * q - 9 * sd - 6))), min(n, int(math.ceil(n * q + 9 * sd + 6)))

    def set_statistic(self, stat, t_obs: float, delta: float) -> None:
        """Mark the cells whose statistic is <= t_obs (they depend on the hypothesised drop, not on the nuisance)."""
        self._stat = (stat, t_obs, delta)
        if self.full:
            self.hit = stat(2.0 * self.Kf - self.Mf, self.Mf, self.n, delta) <= t_obs

    def tail(self, p_w: float, p_b: float) -> float:
        """P(cell is a hit) for counts ~ Multinomial(n; p_w, p_b, 1 - p_w - p_b)."""
        import numpy as np

        n, q = self.n, p_w + p_b
        lo, hi = self._m_window(q)
        lo, hi = max(lo, self.m_lo), min(hi, self.m_hi)
        if hi < lo:
            return 0.0
        theta = p_w / q if q > 0.0 else 0.5
        spread = 9.0 * math.sqrt(hi * theta * (1.0 - theta)) + 6.0
        k_lo = max(0, int(theta * lo - spread))
        k_hi = min(self.m_hi, int(math.ceil(theta * hi + spread)))
        if self.full:
            rows, cols = slice(lo - self.m_lo, hi - self.m_lo + 1), slice(k_lo, k_hi + 1)
            M, K, log_coef, hit = self.Mf[rows, cols], self.Kf[rows, cols], self.log_coef[rows, cols], \
                self.hit[rows, cols]
        else:
            stat, t_obs, delta = self._stat
            M, K, log_coef = self._cells(lo, hi, k_lo, k_hi)
            hit = stat(2.0 * K - M, M, n, delta) <= t_obs
        logp = log_coef + _xlogp(K, p_w) + _xlogp(M - K, p_b) + _xlogp(n - M, 1.0 - q)
        return float(min(1.0, np.exp(np.where(hit, logp, -np.inf)).sum()))


def _score_nuisance_interval(m: int, n: int, gamma: float) -> tuple[float, float]:
    q_lo = clopper_pearson_lower(m, n, 1.0 - gamma / 2.0) if m > 0 else 0.0
    return q_lo, clopper_pearson_upper(m, n, 1.0 - gamma / 2.0)


def _score_p_value(x: int, y: int, n: int, alpha: float, delta: float, grid: "_TrinomialGrid | None" = None) -> float:
    """Berger-Boos p-value of H0: drop >= delta with the score statistic (valid: P(p <= alpha) <= alpha under H0)."""
    gamma = alpha * BERGER_BOOS_GAMMA_SHARE
    d, m = x - y, x + y
    q_lo, q_hi = _score_nuisance_interval(m, n, gamma)
    lo = max(q_lo, abs(delta))
    if lo > q_hi:
        return gamma  # no nuisance value in the interval is compatible with this drop
    grid = _TrinomialGrid(n, q_lo, q_hi) if grid is None else grid
    t_obs = float(_score_statistic(float(d), float(m), n, delta))
    grid.set_statistic(_score_statistic, t_obs + 1e-9 * max(1.0, abs(t_obs)), delta)  # ties count as extreme
    tail = lambda q: grid.tail(0.5 * (q + delta), max(0.0, 0.5 * (q - delta)))  # noqa: E731
    return min(1.0, _sup_unimodal_refined(tail, lo, q_hi)) + gamma


def paired_drop_p_value(n_worse: int, n_better: int, n: int, max_drop: float, confidence: float) -> float:
    """Exact p-value of "the drop is at least ``max_drop``" for the default (score) paired test.

    ``p <= 1 - confidence`` is the same decision as ``paired_drop_upper_bound(...) <= max_drop`` (up to the
    bisection's 1e-7), at about a twentieth of the cost: one p-value instead of a bisection over them. The value
    includes the Berger-Boos gamma, which is a share of ``1 - confidence``; so it is a p-value for that level.
    """
    n_worse, n_better, n = int(n_worse), int(n_better), int(n)
    if n <= 0 or n_worse < 0 or n_better < 0 or n_worse + n_better > n:
        raise ValueError(f"invalid paired counts: n_worse={n_worse}, n_better={n_better}, n={n}")
    return _score_p_value(n_worse, n_better, n, _check_confidence(confidence), float(max_drop))


@lru_cache(maxsize=65536)
def _score_exact_upper(x: int, y: int, n: int, alpha: float) -> float:
    """Exact unconditional upper bound from Tango's score statistic (Berger-Boos over the discordant rate q).

    Same construction as :func:`_berger_boos_upper` (p-value = sup of P(T <= t_obs) over a 1 - gamma interval for
    q, plus gamma; bound = largest drop not rejected), only the statistic differs: with the null variance in the
    denominator the tail hardly depends on q, so the supremum over the nuisance costs almost nothing
    (the Wald statistic's tail peaks at the smallest flip rate of the interval).
    """
    from statistics import NormalDist

    d, m = x - y, x + y
    q_lo, q_hi = _score_nuisance_interval(m, n, alpha * BERGER_BOOS_GAMMA_SHARE)
    grid = _TrinomialGrid(n, q_lo, q_hi)

    def p_value(delta: float) -> float:
        return _score_p_value(x, y, n, alpha, delta, grid)

    lo = d / n
    if p_value(lo) <= alpha:
        return lo
    # Bracket the bound from the normal approximation, then bisect (p_value decreases in the drop).
    z = NormalDist().inv_cdf(1.0 - alpha)
    step = max(z * math.sqrt(max(m / n - (d / n) ** 2, 1.0 / n) / n), 1e-5)
    hi = min(q_hi, lo + step)
    while hi < q_hi and p_value(hi) > alpha:
        lo, hi, step = hi, min(q_hi, hi + step), step * 2.0
    while hi - lo > _SCORE_BISECT_TOL:
        mid = 0.5 * (lo + hi)
        if p_value(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return min(1.0, hi)


def corrected_confidence(confidence: float, looks: int) -> float:
    """Bonferroni-corrected per-look confidence for ``looks`` simultaneous bounds.

    If each of ``looks`` bounds is computed at ``1 - alpha / looks``, all of them hold together with probability at
    least ``1 - alpha``, however the looks were chosen (selection among candidates, repeated certification).

    Args:
        confidence: the family-wise one-sided confidence wanted, in (0, 1).
        looks: number of bounds that will be looked at (>= 1), fixed before looking.

    Returns:
        The per-look confidence ``1 - (1 - confidence) / looks``.

    Raises:
        ValueError: looks < 1 or confidence outside (0, 1).
    """
    alpha = _check_confidence(confidence)
    if int(looks) != looks or looks < 1:
        raise ValueError(f"looks must be a positive integer, got {looks}")
    return 1.0 - alpha / int(looks)
