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
    drop is exactly ``p_w - p_b``. Both methods are valid for the population drop at every n and every
    (p_w, p_b); coverage is checked by simulation in tests/test_bounds.py.

    ``method="exact"`` (default): the exact unconditional test of Berger & Boos (1994). For a hypothesised drop d0
    the p-value of the statistic D = n_worse - n_better is the largest P(D <= observed) over the nuisance
    q = p_w + p_b (the discordant rate), taken over a 1 - gamma confidence interval for q (gamma = alpha/50) and
    increased by gamma; the bound is the largest d0 that is not rejected at level alpha. Its width follows the
    standard error of the paired difference, sqrt(q/n), like McNemar's test, but it is exact and unconditional.
    On n = 2113 with 29 worse / 28 better (an INT8 model vs its FP32 source) it gives 0.70 points where the
    Bonferroni split below gives 1.11: the difference between certifying a one-point promise and not.

    ``method="split"``: ``CP_upper(n_worse; 1 - alpha/2) - CP_lower(n_better; 1 - alpha/2)`` (Clopper-Pearson,
    union bound). Simpler and valid, but it adds the two widths instead of combining their variances; it is
    tighter only when there are (almost) no discordant examples.

    Args:
        n_worse: examples the base model got right and the candidate got wrong.
        n_better: examples the base model got wrong and the candidate got right.
        n: number of examples (>= 1), including the unchanged ones.
        confidence: one-sided confidence level in (0, 1).
        method: "exact" (Berger-Boos) or "split" (Bonferroni split of Clopper-Pearson bounds).

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
    if method != "exact":
        raise ValueError(f"unknown method {method!r}; choose 'exact' or 'split'")
    return _berger_boos_upper(n_worse, n_better, n, alpha)


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


def _paired_tail(t_obs: float, n: int, delta: float, q: float, lf) -> float:
    """P(T <= t_obs) for the studentized statistic T when the paired counts are
    Multinomial(n; (q+delta)/2, (q-delta)/2, 1-q); T is computed from (n_worse, n_better) cell by cell."""
    import numpy as np

    if q <= 0.0:  # every example unchanged: D = m = 0
        return 1.0 if _studentized(0.0, 0.0, n, delta) <= t_obs else 0.0
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
    hit = feasible & (_studentized(2 * kk - mm, mm, n, delta) <= t_obs)
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
