"""Fixed-sequence certification and the certify split's pre-flight arithmetic (edgeprune.certify.sequence)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeprune.certify.stats import paired_drop_upper_bound
from edgeprune.certify import sequence as seqmod
from edgeprune.certify.sequence import (
    FixedSequence,
    SequenceStopped,
    certify_fraction_needed,
    certify_n_needed,
    dense_copy_counts,
    fixed_sequence_certify,
    max_discordance,
    max_worse_table,
    preflight,
)

N = 2113


# -- the procedure --------------------------------------------------------------------------------------------------

def test_fixed_sequence_stops_at_the_first_failure():
    tests = [(24, 23), (30, 24), (40, 20), (30, 25)]  # the third fails (1.6 points); the fourth would pass
    res = fixed_sequence_certify(tests, N, 0.01, 0.95, names=["dense", "a", "b", "c"])
    assert [t.name for t in res.tests] == ["dense", "a", "b"]  # c is never looked at
    assert [t.passed for t in res.tests] == [True, True, False]
    assert res.stopped_at == 2 and res.last_passed == 1 and res.certified == ("dense", "a")
    assert "'b'" in res.stop_reason and "failed" in res.stop_reason
    for t, (x, y) in zip(res.tests, tests):
        assert t.bound == pytest.approx(paired_drop_upper_bound(x, y, N, 0.95), abs=0)
        assert t.passed == (t.bound <= 0.01)
    record = res.to_dict()
    assert record["order"] == ["dense", "a", "b", "c"] and record["last_passed_name"] == "a"
    json.dumps(record)  # JSON-ready for edgeprune.json


def test_fixed_sequence_all_pass_and_first_fails():
    res = fixed_sequence_certify([(24, 23), (26, 24)], N, 0.01, 0.95)
    assert res.stopped_at is None and res.last_passed == 1 and "every plan" in res.stop_reason
    res = fixed_sequence_certify([(60, 20), (24, 23)], N, 0.01, 0.95)
    assert res.stopped_at == 0 and res.last_passed is None and res.certified == ()
    res = fixed_sequence_certify([], N, 0.01, 0.95)
    assert res.tests == () and res.last_passed is None and "empty" in res.stop_reason
    with pytest.raises(ValueError):
        fixed_sequence_certify([(1, 1)], N, 1.5, 0.95)  # max_drop is a fraction (at most 1 = 100 points), not points


def test_lazy_sequence_refuses_after_a_failure_and_follows_the_frozen_order():
    calls = []

    def fake_bound(x, y, n, conf):
        calls.append((x, y, n, conf))
        return (x - y) / n

    seq = FixedSequence(0.01, 0.95, order=["dense", "p1", "p2", "p3"], bound=fake_bound)
    assert seq.next_name == "dense"
    with pytest.raises(ValueError, match="comes next"):
        seq.test("p1", 0, 0, 100)
    assert seq.test("dense", 1, 1, 100) == (0.0, True)
    assert seq.next_name == "p1"
    bound, ok = seq.test("p1", 3, 1, 100)
    assert bound == pytest.approx(0.02) and not ok and seq.stopped
    assert all(c[3] == 0.95 for c in calls)  # every test at the full confidence
    with pytest.raises(SequenceStopped):
        seq.test("p2", 0, 0, 100)
    assert seq.next_name is None and seq.last_passed_name == "dense"
    rec = seq.to_dict()
    assert rec["stopped_at"] == 1 and rec["certified"] == ["dense"]


def test_resumed_sequence_reuses_recorded_results_without_recomputing():
    seq = FixedSequence(0.01, 0.95, order=["dense", "p1", "p2"])
    seq.test("dense", 24, 23, N)
    rec = json.loads(json.dumps(seq.to_dict()))

    def no_bound(*a):
        raise AssertionError("a resumed sequence must not recompute recorded tests")

    again = FixedSequence.from_dict(rec, bound=no_bound)
    assert not again.stopped and again.next_name == "p1" and again.tests[0].reused
    assert again.tests[0].bound == seq.tests[0].bound
    # A stopped record stays stopped.
    seq.test("p1", 60, 10, N)
    stopped = FixedSequence.from_dict(json.loads(json.dumps(seq.to_dict())), bound=no_bound)
    assert stopped.stopped and stopped.last_passed_name == "dense"
    with pytest.raises(SequenceStopped):
        stopped.test("p2", 0, 0, N)
    # Without an order, names are free but unique; stop() ends it.
    free = FixedSequence(0.01, 0.95, bound=lambda x, y, n, c: 0.0)
    free.test("a", 0, 0, 10)
    with pytest.raises(ValueError, match="already tested"):
        free.test("a", 0, 0, 10)
    free.stop("out of time")
    with pytest.raises(SequenceStopped, match="out of time"):
        free.test("b", 0, 0, 10)


# -- certification region -----------------------------------------------------------------------------------------

def test_max_worse_table_is_the_certification_decision():
    n, max_drop, conf = 400, 0.03, 0.9
    table = max_worse_table(n, max_drop, conf, 40, m_min=10)
    assert len(table) == 31 and all(b - a in (0, 1) for a, b in zip(table, table[1:]))
    for m in (10, 17, 25, 40):
        x = table[m - 10]
        if x >= 0:
            assert paired_drop_upper_bound(x, m - x, n, conf) <= max_drop
        if x + 1 <= m:
            assert paired_drop_upper_bound(x + 1, m - x - 1, n, conf) > max_drop
    assert table == max_worse_table(n, max_drop, conf, 40)[10:]  # the walk from 0 agrees with the bisection at 10


def test_max_discordance_is_the_edge():
    for obs in (0.0, 0.003):
        d = max_discordance(N, 0.01, 0.95, obs)
        k = round(obs * N)
        assert paired_drop_upper_bound((d + k) // 2, (d - k) // 2, N, 0.95) <= 0.01
        assert paired_drop_upper_bound((d + 2 + k) // 2, (d + 2 - k) // 2, N, 0.95) > 0.01
    assert max_discordance(1000, 0.01, 0.95, 0.005) is None  # the table: "none" at n = 1000, 0.5 points
    # Tighter than the Wald-statistic test the table was computed with (160 / 78 / 29 at n = 2113).
    assert max_discordance(N, 0.01, 0.95, 0.0) >= 160
    assert max_discordance(N, 0.01, 0.95, 0.005) > 29


# -- simulation: family-wise error -----------------------------------------------------------------------------------

def _nested_counts(rng, n, trials, w, b, bump=None):
    """Counts of nested plans: plan j is worse on u < w[j] and better on u >= 1 - b[j] (w, b non-decreasing), so
    each plan's flips include the previous plan's. ``bump = (j, e)``: plan j is also worse on an extra cell of
    width e that no other plan shares (a middle plan worse than the later ones)."""
    w, b = np.asarray(w, float), np.asarray(b, float)
    e = 0.0 if bump is None else bump[1]
    edges = np.concatenate([[0.0], w, [w[-1] + e], 1.0 - b[::-1], [1.0]])
    p = np.diff(edges)
    assert (p >= -1e-15).all()
    cells = rng.multinomial(n, np.clip(p, 0, None) / np.clip(p, 0, None).sum(), size=trials)
    k = len(w)
    worse_cells, better_cells = cells[:, :k], cells[:, k + 2:][:, ::-1]  # better cell j: [1 - b[j], 1 - b[j-1])
    x = np.cumsum(worse_cells, axis=1)
    y = np.cumsum(better_cells, axis=1)
    if bump is not None:
        x[:, bump[0]] += cells[:, k]
    return x, y


def _certified(x, y, table, m_min):
    m = x + y
    idx = np.clip(m - m_min, 0, len(table) - 1)
    assert (m >= m_min).all() and (m - m_min < len(table)).all(), "simulated counts outside the table"
    return x <= np.asarray(table)[idx]


def _fixed_sequence_error(passed, bad):
    # The procedure certifies plans 0..s-1 where s is the first failure; an error is a certified bad plan.
    reached = np.cumprod(passed, axis=1).astype(bool)
    return (reached & bad[None, :]).any(axis=1).mean()


N_SIM, MAX_DROP, CONF, TRIALS = 400, 0.03, 0.9, 20000
ALPHA = 1 - CONF
SLACK = 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)


@pytest.fixture(scope="module")
def table():
    return max_worse_table(N_SIM, MAX_DROP, CONF, 150, m_min=0)


def test_fwer_worst_case_every_plan_at_the_bound(table):
    rng = np.random.default_rng(0)
    q = np.linspace(0.05, 0.22, 6)  # discordance grows along the frontier; every true drop equals max_drop
    w, b = (q + MAX_DROP) / 2, (q - MAX_DROP) / 2
    x, y = _nested_counts(rng, N_SIM, TRIALS, w, b)
    passed = _certified(x, y, table, 0)
    bad = np.ones(6, bool)
    fwer = _fixed_sequence_error(passed, bad)
    assert fwer <= ALPHA + SLACK, fwer
    assert fwer > 0.3 * ALPHA, fwer  # the test is not vacuous: it spends a good part of its alpha
    # The same tests without the stopping rule (ship the most compressed plan that passes) break the promise.
    naive = passed.any(axis=1).mean()
    assert naive > ALPHA + SLACK, naive


def test_fwer_nested_frontier_crossing_the_bound(table):
    rng = np.random.default_rng(1)
    q = np.linspace(0.04, 0.25, 8)
    d = np.linspace(0.0, 2 * MAX_DROP, 8)  # plans 0..3 within the promise, 4..7 beyond (4 at exactly 1.14 m)
    x, y = _nested_counts(rng, N_SIM, TRIALS, (q + d) / 2, (q - d) / 2)
    passed = _certified(x, y, table, 0)
    fwer = _fixed_sequence_error(passed, d >= MAX_DROP)
    assert fwer <= ALPHA + SLACK, fwer
    assert passed[:, 0].mean() > 0.5  # it has power on the good plans


def test_fwer_bump_mid_frontier(table):
    rng = np.random.default_rng(2)
    q = np.linspace(0.04, 0.20, 7)
    d = np.array([0.0, 0.005, 0.01, 0.01, 0.015, 0.02, 0.025])  # all within the promise ...
    bump_extra = MAX_DROP - d[2]  # ... except plan 2, pushed to exactly the bound by flips nobody else has
    x, y = _nested_counts(rng, N_SIM, TRIALS, (q + d) / 2, (q - d) / 2, bump=(2, bump_extra))
    passed = _certified(x, y, table, 0)
    bad = np.zeros(7, bool)
    bad[2] = True
    fwer = _fixed_sequence_error(passed, bad)
    assert fwer <= ALPHA + SLACK, fwer
    # Everything after the bump is reached only through it: the later good plans are certified only as often as
    # the bad one passes.
    reached = np.cumprod(passed, axis=1).astype(bool)
    assert reached[:, 3:].mean() <= fwer + 1e-12


def test_table_decisions_match_the_lazy_sequence(table):
    rng = np.random.default_rng(3)
    seq_fails = 0
    for _ in range(12):
        m = int(rng.integers(5, 60))
        x = int(np.clip(table[m] + rng.integers(-1, 2), 0, m))
        seq = FixedSequence(MAX_DROP, CONF)
        _, ok = seq.test("p", x, m - x, N_SIM)
        assert ok == (x <= table[m]), (x, m)
        seq_fails += not ok
    assert 0 < seq_fails < 12


# -- pre-flight -----------------------------------------------------------------------------------------------------

INT8_RATE, INT8_DROP_PTS = 47 / 2113, 0.05  # the default task's dense INT8 file vs FP32 on the search split


def test_preflight_fails_on_a_300_row_dataset():
    n_certify = int(300 * 0.35)
    pf = preflight(n_certify, 1.0, 0.95, INT8_RATE, INT8_DROP_PTS)
    assert pf["status"] == "fail" and not pf["dense_int8_certifiable"]
    assert pf["dense_int8_bound_pts"] > 1.0 and pf["room_for_pruning_pts"] < 0
    assert f"with {n_certify} certify examples even an exact copy of the dense INT8 model" in pf["message"]
    assert "--certify-fraction" in pf["message"]
    need = pf["certify_n_needed_for_dense_copy"]
    assert need is not None and need > n_certify
    assert certify_fraction_needed(300, 1.0, 0.95, INT8_RATE, INT8_DROP_PTS) is None
    json.dumps(pf)


def test_preflight_passes_on_a_large_dataset():
    n_rows = 8000
    pf = preflight(int(n_rows * 0.35), 1.0, 0.95, INT8_RATE, INT8_DROP_PTS)
    assert pf["status"] == "ok" and pf["dense_int8_certifiable"]
    assert pf["room_for_pruning_pts"] > 0.25 and pf["room_for_pruning_discordance"] > 60
    x, y = pf["dense_int8_expected_counts"]["n_worse"], pf["dense_int8_expected_counts"]["n_better"]
    assert x + y == pytest.approx(INT8_RATE * pf["n_certify"], abs=1.5)
    assert pf["max_discordance_at_zero_drop"] >= pf["max_discordance_at_dense_drop"] > x + y
    frac = certify_fraction_needed(n_rows, 1.0, 0.95, INT8_RATE, INT8_DROP_PTS)
    assert frac is not None and frac * n_rows == pf["certify_n_needed_for_dense_copy"] < pf["n_certify"]


def test_preflight_warns_when_little_room_is_left():
    pf = preflight(870, 1.0, 0.95, INT8_RATE, INT8_DROP_PTS)
    assert pf["status"] == "warn" and 0 <= pf["room_for_pruning_pts"] < 0.25
    pf = preflight(870, 1.0, 0.95, 0.06, 0.3)  # a noisier INT8 file: cannot be certified at 870
    assert pf["status"] == "fail"
    assert "can be certified only to" in pf["message"] and f"{pf['dense_int8_bound_pts']:.1f} points" in pf["message"]


def test_certify_n_needed_is_the_edge():
    need = certify_n_needed(1.0, 0.95, INT8_RATE, INT8_DROP_PTS, room_pts=0.3)
    for n, want in ((need, True), (int(need * 0.9), False)):
        x, y = dense_copy_counts(n, INT8_RATE, INT8_DROP_PTS / 100)
        assert (paired_drop_upper_bound(x, y, n, 0.95) <= 0.007) == want, n
    assert certify_n_needed(1.0, 0.95, 0.05, 1.2) is None  # its drop alone exceeds the promise
    assert dense_copy_counts(2113, 47 / 2113, 1 / 2113) == (24, 23)


def test_module_is_light():
    lines = [ln.strip() for ln in open(seqmod.__file__, encoding="utf-8") if ln.strip().startswith(("import", "from"))]
    assert lines and not any(w in ln for ln in lines for w in ("torch", "onnxruntime", "scipy"))
