"""Exact binomial bounds: known values, monotonicity, edge cases and a coverage simulation."""

from __future__ import annotations

import math
import random

import pytest

from edgeprune.certify import stats as bounds
from edgeprune.certify.stats import (
    accuracy_lower_bound,
    binom_cdf,
    binom_sf,
    clopper_pearson_lower,
    clopper_pearson_upper,
    corrected_confidence,
    paired_drop_upper_bound,
)

# Reference values computed with scipy.stats.beta.ppf (Clopper-Pearson via the beta quantile identity),
# kept as literals so the test also runs in the venv without scipy.
CP_CASES = [
    # k, n, upper@95%, lower@95%
    (3, 10, 0.6066242161054123, 0.08726443391415033),
    (20, 1000, 0.028930122851398708, 0.013293005534560481),
    (500, 1000, 0.5264822687643087, 0.47351773123569124),
    (990, 1000, 0.9945648598552932, 0.9830968248794375),
    (1, 2, 0.9746794344808963, 0.02532056551910361),
]


@pytest.mark.parametrize("k,n,upper,lower", CP_CASES)
def test_clopper_pearson_matches_reference(k, n, upper, lower):
    assert clopper_pearson_upper(k, n, 0.95) == pytest.approx(upper, abs=1e-9)
    assert clopper_pearson_lower(k, n, 0.95) == pytest.approx(lower, abs=1e-9)


def test_clopper_pearson_against_scipy_when_available():
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed in this venv")
    rng = random.Random(1)
    for _ in range(30):
        n = rng.randint(1, 3000)
        k = rng.randint(0, n)
        conf = rng.choice([0.8, 0.9, 0.95, 0.99, 0.999])
        want_u = 1.0 if k == n else float(stats.beta.ppf(conf, k + 1, n - k))
        want_l = 0.0 if k == 0 else float(stats.beta.ppf(1 - conf, k, n - k + 1))
        assert clopper_pearson_upper(k, n, conf) == pytest.approx(want_u, abs=1e-8), (k, n, conf)
        assert clopper_pearson_lower(k, n, conf) == pytest.approx(want_l, abs=1e-8), (k, n, conf)
        p = rng.random()
        assert binom_cdf(k, n, p) == pytest.approx(float(stats.binom.cdf(k, n, p)), abs=1e-10)
        assert binom_sf(k, n, p) == pytest.approx(float(stats.binom.sf(k - 1, n, p)), abs=1e-10)


def test_closed_forms_at_the_edges():
    n, conf = 250, 0.9
    alpha = 1 - conf
    assert clopper_pearson_upper(0, n, conf) == pytest.approx(1 - alpha ** (1 / n), rel=1e-12)
    assert clopper_pearson_lower(n, n, conf) == pytest.approx(alpha ** (1 / n), rel=1e-12)
    assert clopper_pearson_upper(n, n, conf) == 1.0
    assert clopper_pearson_lower(0, n, conf) == 0.0
    assert binom_cdf(-1, 5, 0.3) == 0.0 and binom_cdf(5, 5, 0.3) == 1.0
    assert binom_cdf(0, 5, 0.0) == 1.0 and binom_cdf(4, 5, 1.0) == 0.0


def test_bounds_are_monotone():
    n = 400
    uppers = [clopper_pearson_upper(k, n, 0.95) for k in range(0, n + 1, 20)]
    lowers = [clopper_pearson_lower(k, n, 0.95) for k in range(0, n + 1, 20)]
    assert all(a < b for a, b in zip(uppers, uppers[1:]))
    assert all(a < b for a, b in zip(lowers, lowers[1:]))
    # More confidence -> wider bounds.
    assert clopper_pearson_upper(10, n, 0.99) > clopper_pearson_upper(10, n, 0.95) > clopper_pearson_upper(10, n, 0.8)
    # Paired bound: more worse -> larger, more better -> smaller, more data at the same rates -> smaller.
    assert paired_drop_upper_bound(12, 5, 1000, 0.95) > paired_drop_upper_bound(10, 5, 1000, 0.95)
    assert paired_drop_upper_bound(10, 8, 1000, 0.95) < paired_drop_upper_bound(10, 5, 1000, 0.95)
    assert paired_drop_upper_bound(40, 20, 4000, 0.95) < paired_drop_upper_bound(10, 5, 1000, 0.95)
    assert paired_drop_upper_bound(10, 5, 1000, 0.99) > paired_drop_upper_bound(10, 5, 1000, 0.95)


def test_paired_bound_edge_cases():
    # m = 0: the smallest drop the split cannot rule out, from the worse-side CP bound at alpha/2.
    assert paired_drop_upper_bound(0, 0, 1000, 0.95, method="split") == pytest.approx(1 - 0.025 ** (1 / 1000), rel=1e-12)
    assert 0 < paired_drop_upper_bound(0, 0, 1000, 0.95) < 0.005
    # All discordant pairs in the candidate's favour: the bound is negative (the candidate is better).
    assert paired_drop_upper_bound(0, 100, 1000, 0.95) < 0
    assert paired_drop_upper_bound(1000, 0, 1000, 0.95) == 1.0
    with pytest.raises(ValueError):
        paired_drop_upper_bound(0, 0, 0, 0.95)
    with pytest.raises(ValueError):
        paired_drop_upper_bound(6, 5, 10, 0.95)
    with pytest.raises(ValueError):
        paired_drop_upper_bound(-1, 0, 10, 0.95)
    with pytest.raises(ValueError):
        paired_drop_upper_bound(1, 0, 10, 1.0)
    with pytest.raises(ValueError):
        clopper_pearson_upper(0, 0, 0.95)
    with pytest.raises(ValueError):
        accuracy_lower_bound(11, 10, 0.95)


def test_paired_bound_is_the_documented_bonferroni_split():
    got = paired_drop_upper_bound(20, 10, 1000, 0.95, method="split")
    want = clopper_pearson_upper(20, 1000, 0.975) - clopper_pearson_lower(10, 1000, 0.975)
    assert got == pytest.approx(want, abs=1e-15)
    # The numbers quoted in the docstring: ~2.6 points here, vs 1.9 for the (invalid at small n) normal approx.
    assert 0.025 < got < 0.027


def test_accuracy_lower_bound_and_correction():
    assert accuracy_lower_bound(900, 1000, 0.95) == pytest.approx(clopper_pearson_lower(900, 1000, 0.95))
    assert 0.88 < accuracy_lower_bound(900, 1000, 0.95) < 0.9
    assert corrected_confidence(0.95, 1) == pytest.approx(0.95)
    assert corrected_confidence(0.95, 5) == pytest.approx(0.99)
    with pytest.raises(ValueError):
        corrected_confidence(0.95, 0)
    with pytest.raises(ValueError):
        corrected_confidence(0.95, 2.5)


def _trinomial(rng: random.Random, n: int, p_w: float, p_b: float) -> tuple[int, int]:
    worse = better = 0
    for _ in range(n):
        u = rng.random()
        if u < p_w:
            worse += 1
        elif u < p_w + p_b:
            better += 1
    return worse, better


# The exact method's Monte Carlo runs only where its enumerated coverage test below does not reach (run time); the
# balanced and many-discordant cases of "exact" are covered there exactly.
@pytest.mark.parametrize(
    "p_w,p_b,method",
    [
        (0.02, 0.02, "split"),  # zero true drop, 4% discordant
        (0.03, 0.01, "split"),  # two-point drop
        (0.03, 0.01, "exact"),
        (0.005, 0.0, "split"),  # rare, one-sided changes: small counts, where approximations fail
        (0.005, 0.0, "exact"),
        (0.10, 0.08, "split"),  # many discordant pairs
    ],
)
def test_paired_bound_coverage_by_simulation(p_w, p_b, method):
    """The bound must cover the true drop p_w - p_b in at least `confidence` of simulated experiments."""
    rng = random.Random(12345)
    n, trials, confidence = 300, 2000 if method == "split" else 400, 0.9
    true_drop = p_w - p_b
    covered = 0
    for _ in range(trials):
        worse, better = _trinomial(rng, n, p_w, p_b)
        covered += paired_drop_upper_bound(worse, better, n, confidence, method=method) >= true_drop
    rate = covered / trials
    # Monte Carlo slack: 3 standard errors of a proportion at the nominal level.
    slack = 3 * math.sqrt(confidence * (1 - confidence) / trials)
    assert rate >= confidence - slack, f"coverage {rate:.3f} < {confidence} - {slack:.3f}"


def _exact_coverage(n, p_w, p_b, confidence, method):
    """P(bound >= p_w - p_b), summed exactly over the trinomial, not simulated.

    The bound is increasing in n_worse at fixed n_better and decreasing in n_better, so the non-covering counts
    are {x <= X(y)} with X(y) non-decreasing in y: a walk finds X(y) for every y with ~2 bounds per y.
    """
    true_drop = p_w - p_b

    def logpmf(x, y):
        return (math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(y + 1) - math.lgamma(n - x - y + 1)
                + x * math.log(p_w) + y * math.log(p_b) + (n - x - y) * math.log1p(-p_w - p_b))

    y_max = min(n, int(n * p_b + 9 * math.sqrt(n * p_b) + 10))
    miss, x_top, bounds_computed = 0.0, -1, 0
    for y in range(0, y_max + 1):
        while x_top + 1 + y <= n and paired_drop_upper_bound(x_top + 1, y, n, confidence, method=method) < true_drop:
            x_top += 1
            bounds_computed += 1
        bounds_computed += 1
        miss += sum(math.exp(logpmf(x, y)) for x in range(0, x_top + 1))
    return 1.0 - miss, bounds_computed


def test_paired_bound_exact_coverage_score_vs_wald():
    """Exact (enumerated) coverage: both exact tests are valid; the score version is the less conservative one."""
    confidence = 0.9
    score, _ = _exact_coverage(80, 0.05, 0.04, confidence, "exact")
    wald, _ = _exact_coverage(80, 0.05, 0.04, confidence, "wald")
    assert confidence <= score <= wald, (score, wald)
    # Few, mostly one-sided flips: the nuisance near the boundary of its range, where the Wald tail peaks.
    rare, _ = _exact_coverage(300, 0.004, 0.001, confidence, "exact")
    assert rare >= confidence, rare


def test_accuracy_bound_coverage_by_simulation():
    rng = random.Random(7)
    n, trials, confidence, p = 200, 2000, 0.9, 0.83
    covered = sum(
        accuracy_lower_bound(sum(rng.random() < p for _ in range(n)), n, confidence) <= p for _ in range(trials)
    )
    assert covered / trials >= confidence - 3 * math.sqrt(confidence * (1 - confidence) / trials)


def test_module_is_light():
    # numpy only inside the exact paired bound (imported lazily); never scipy, torch or onnxruntime.
    src = open(bounds.__file__, encoding="utf-8").read()
    assert "import scipy" not in src and "import torch" not in src and "onnxruntime" not in src
    assert "\nimport numpy" not in src


def test_exact_paired_bound_is_tighter_where_it_matters():
    # An INT8 model vs its FP32 source on the default task's certify split: 29 worse / 28 better of 2113.
    exact = paired_drop_upper_bound(29, 28, 2113, 0.95)
    split = paired_drop_upper_bound(29, 28, 2113, 0.95, method="split")
    assert 0.006 < exact < 0.007 < 0.010 < split
    # Never below the observed drop, monotone in the counts and in the confidence.
    assert paired_drop_upper_bound(40, 10, 2113, 0.95) > 30 / 2113
    assert paired_drop_upper_bound(30, 10, 2113, 0.95) > paired_drop_upper_bound(25, 10, 2113, 0.95)
    assert paired_drop_upper_bound(25, 12, 2113, 0.99) > paired_drop_upper_bound(25, 12, 2113, 0.95)
    with pytest.raises(ValueError, match="unknown method"):
        paired_drop_upper_bound(1, 1, 10, 0.95, method="normal")


def _normal_bound(x, y, n, z=1.6448536269514722):
    d = (x - y) / n
    return d + z * math.sqrt(((x + y) / n - d * d) / n)


@pytest.mark.parametrize("x,y", [(24, 23), (40, 20), (80, 30), (10, 12), (29, 28)])
def test_score_test_is_tighter_than_wald_on_int8_counts(x, y):
    n = 2113
    score = paired_drop_upper_bound(x, y, n, 0.95)
    wald = paired_drop_upper_bound(x, y, n, 0.95, method="wald")
    assert score < wald
    # Never below the (anti-conservative at small counts) normal approximation by more than rounding, and within
    # 0.05 points above it: the exact test costs little over the approximation on these counts.
    assert _normal_bound(x, y, n) - 1e-4 < score < _normal_bound(x, y, n) + 0.0005 + 0.002 * (x + y < 30)


def test_score_statistic_restricted_mle_matches_a_numerical_maximum():
    opt = pytest.importorskip("scipy.optimize", reason="scipy is not installed in this venv")
    n = 500
    for x, y, delta in [(12, 9, 0.01), (3, 0, 0.02), (30, 35, -0.005), (0, 4, 0.001), (20, 20, 0.0)]:
        def nll(p_b):
            p_w = p_b + delta
            return -(x * math.log(p_w) + y * math.log(p_b) + (n - x - y) * math.log1p(-p_w - p_b))
        lo = max(0.0, -delta) + 1e-12
        res = opt.minimize_scalar(nll, bounds=(lo, (1 - delta) / 2 - 1e-9), method="bounded",
                                  options={"xatol": 1e-12})
        var = n * (2 * res.x + delta - delta * delta)
        want = (x - y - n * delta) / math.sqrt(var)
        got = float(bounds._score_statistic(float(x - y), float(x + y), n, delta))
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (x, y, delta)


def test_score_bound_is_the_edge_of_its_acceptance_region():
    # The bisection returns the smallest rejected drop; everything a little below must be accepted.
    n, alpha = 2113, 0.05
    b = paired_drop_upper_bound(24, 23, n, 1 - alpha)
    assert b == bounds._score_exact_upper(24, 23, n, alpha)
    assert paired_drop_upper_bound(24, 23, n, 1 - alpha, method="wald") == bounds._berger_boos_upper(24, 23, n, alpha)
    # Monotone in the counts along a swap (one better becomes worse) and in n at fixed rates.
    seq = [paired_drop_upper_bound(24 + k, 23 - k, n, 0.95) for k in range(0, 12, 3)]
    assert all(a < c for a, c in zip(seq, seq[1:]))
    assert paired_drop_upper_bound(48, 46, 2 * n, 0.95) < b


@pytest.mark.parametrize("x,y,n", [(24, 23, 2113), (5, 1, 300), (0, 0, 1000)])
def test_score_p_value_decreases_in_the_drop_and_matches_the_bound(x, y, n):
    # The bisection assumes p(d0) decreases in d0; the bound is where p crosses alpha.
    b = paired_drop_upper_bound(x, y, n, 0.95)
    grid = [(x - y) / n + (b + 0.01 - (x - y) / n) * i / 24 for i in range(25)]
    ps = [bounds.paired_drop_p_value(x, y, n, d, 0.95) for d in grid]
    assert all(q <= p + 1e-9 for p, q in zip(ps, ps[1:]))
    assert bounds.paired_drop_p_value(x, y, n, b, 0.95) <= 0.05 < bounds.paired_drop_p_value(x, y, n, b - 1e-5, 0.95)
    with pytest.raises(ValueError):
        bounds.paired_drop_p_value(x + 1, n, n, 0.01, 0.95)
