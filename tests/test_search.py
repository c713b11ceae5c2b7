"""The pure search on synthetic cost functions (no torch; milliseconds)."""

from __future__ import annotations

import itertools
import json
import random
import sys

import pytest

from edgeprune.certify.stats import paired_drop_upper_bound
from edgeprune.plan import HeadPlan
from edgeprune.search import (
    ALGORITHMS,
    EvalResult,
    JournalError,
    Problem,
    SearchConfig,
    SearchError,
    astar_path,
    search,
    state_key,
)


class Synthetic:
    """A made-up model: per-head damage plus random pairwise interactions (so greedy can be wrong)."""

    def __init__(self, heads_per_layer, seed, n=2000, scale=0.01, pairs=30):
        rng = random.Random(seed)
        self.heads = [(l, h) for l, k in enumerate(heads_per_layer) for h in range(k)]
        self.damage = {x: rng.random() ** 3 * scale for x in self.heads}
        self.pair = {}
        for _ in range(pairs):
            a, b = rng.sample(self.heads, 2)
            self.pair[(a, b)] = rng.uniform(-0.4, 0.6) * scale
        # Importance is a noisy view of the damage, like a gradient proxy.
        self.importance = {x: v + rng.gauss(0, 0.2 * scale) for x, v in self.damage.items()}
        self.n = n
        self.calls: list[tuple] = []

    def counts(self, state) -> EvalResult:
        s = set(state)
        d = sum(self.damage[x] for x in s) + sum(v for (a, b), v in self.pair.items() if a in s and b in s)
        d = max(d, 0.0)
        nb = round(self.n * 0.01 * len(s) / len(self.heads))
        nw = min(round(self.n * d) + nb, self.n - nb)
        return EvalResult(nw, nb, self.n, d)

    def evaluate(self, states):
        out = []
        for s in states:
            self.calls.append(state_key(s))
            out.append(self.counts(s))
        return out


def linear_latency(kc):
    # Per-layer base + per-head cost; an emptied layer saves an extra bit (bias + residual + LayerNorm only).
    # Binary fractions only, so sums are exact and ties between plans are real ties.
    return 5.0 + sum(3.0 + 0.25 * k - (0.5 if k == 0 else 0.0) for k in kc)


def ucb_pts(r: EvalResult, conf: float) -> float:
    return 100.0 * paired_drop_upper_bound(r.n_worse, r.n_better, r.n, conf)


def brute_force(model: Synthetic, layout, max_drop_pts, conf):
    """Min bottleneck path cost g*(R) for every subset (DP by size) and the fastest feasible latency."""
    heads = model.heads
    g: dict[tuple, float] = {}
    for size in range(len(heads) + 1):
        for combo in itertools.combinations(heads, size):
            key = tuple(sorted(combo))
            own = ucb_pts(model.counts(key), conf)
            if size == 0:
                g[key] = 0.0  # the unpruned model is the reference: drop exactly 0
            else:
                best_parent = min(g[tuple(x for x in key if x != drop)] for drop in key)
                g[key] = max(own, best_parent)

    def lat(key):
        kc = list(layout)
        for l, _ in key:
            kc[l] -= 1
        return linear_latency(tuple(kc))

    feasible = [k for k, v in g.items() if v <= max_drop_pts]
    best = min(lat(k) for k in feasible)
    return g, lat, best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_astar_matches_brute_force_on_small_instances(seed):
    layout = (3, 3, 3)
    model = Synthetic(layout, seed, n=500, scale=0.03, pairs=8)
    max_drop = 4.0
    g_star, lat, best = brute_force(model, layout, max_drop, 0.95)
    # Exact mode (resolution 0, full branching): every goal of the tau sweep has the minimal bottleneck bound
    # among all plans at least that fast, and the last goal is the fastest feasible plan.
    cfg = SearchConfig(max_drop_pts=max_drop, correction="none", max_evaluations=10_000, branching=9,
                       resolution_pts=0.0, seed_with_greedy=False)
    problem = Problem(model, linear_latency, model.importance, layout, cfg)
    stopped, goals = astar_path(problem)
    assert stopped == "exhausted"
    assert goals, "A* found no goal at all"
    for latency, g, key in goals:
        want = min(v for k, v in g_star.items() if lat(k) <= latency)
        assert g == pytest.approx(want, abs=1e-12), (latency, key)
    assert goals[-1][0] == pytest.approx(best)
    assert problem.latency(problem.best_key) == pytest.approx(best)
    # Default mode (one cost level): same fastest feasible plan when the search runs to exhaustion.
    cfg2 = SearchConfig(max_drop_pts=max_drop, correction="none", max_evaluations=10_000, branching=9)
    res = search(Synthetic(layout, seed, n=500, scale=0.03, pairs=8), linear_latency, model.importance, layout, cfg2)
    assert res.stopped_by == "exhausted"
    assert res.latency_ms == pytest.approx(best)
    assert g_star[res.removed] <= max_drop


@pytest.mark.parametrize("seed", range(6))
def test_astar_never_worse_than_greedy(seed):
    layout = (12,) * 6
    conf = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=200)
    greedy = search(Synthetic(layout, seed), linear_latency, Synthetic(layout, seed).importance, layout, conf, "greedy")
    astar = search(Synthetic(layout, seed), linear_latency, Synthetic(layout, seed).importance, layout, conf, "astar")
    assert astar.latency_ms <= greedy.latency_ms + 1e-12
    assert astar.drop_bound_pts <= 2.0 and greedy.drop_bound_pts <= 2.0
    assert astar.evaluations <= 200


def test_astar_beats_greedy_somewhere():
    """Not a guarantee, but on these interacting instances the backtracking must pay off at least once."""
    layout = (12,) * 6
    wins = 0
    for seed in range(6):
        conf = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=200)
        g = search(Synthetic(layout, seed), linear_latency, Synthetic(layout, seed).importance, layout, conf, "greedy")
        a = search(Synthetic(layout, seed), linear_latency, Synthetic(layout, seed).importance, layout, conf, "astar")
        wins += a.latency_ms < g.latency_ms
    assert wins >= 3


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_returns_an_acceptable_plan(algorithm):
    layout = (4, 4, 4, 4)
    model = Synthetic(layout, 5, scale=0.01)
    cfg = SearchConfig(max_drop_pts=1.5, correction="none", max_evaluations=100, seed=3)
    res = search(model, linear_latency, model.importance, layout, cfg, algorithm)
    assert res.algorithm == algorithm
    assert res.drop_bound_pts <= 1.5
    assert res.heads_removed == len(res.removed) == res.plan.num_removed
    assert res.latency_ms == pytest.approx(linear_latency(res.plan.kept_counts))
    assert res.drop_bound_pts == pytest.approx(ucb_pts(model.counts(res.removed), 0.95))
    # The frontier is Pareto: latency increases while the bound strictly decreases.
    lats = [p.latency_ms for p in res.frontier]
    bds = [p.drop_bound_pts for p in res.frontier]
    assert lats == sorted(lats) and all(a > b for a, b in zip(bds, bds[1:]))
    d = json.loads(json.dumps(res.to_dict()))
    assert HeadPlan.from_dict(d) == res.plan
    assert d["search"]["evaluations"] == res.evaluations and d["search"]["seed"] == 3


def test_budgets_stop_the_search():
    layout = (12,) * 6
    model = Synthetic(layout, 0)
    cfg = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=25)
    res = search(model, linear_latency, model.importance, layout, cfg, "astar")
    assert res.stopped_by == "evaluations"
    assert res.evaluations == 25 and len(model.calls) == 25
    cfg = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=1000, max_expansions=7,
                       seed_with_greedy=False)
    res = search(Synthetic(layout, 0), linear_latency, model.importance, layout, cfg, "astar")
    assert res.stopped_by == "expansions" and res.nodes_expanded == 7
    ticks = iter(range(10**6))
    cfg = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=1000, max_seconds=30)
    prob = Problem(Synthetic(layout, 0), linear_latency, model.importance, layout, cfg, clock=lambda: next(ticks))
    stopped, _ = astar_path(prob)
    assert stopped == "time" and prob.evaluations < 1000


def test_states_are_evaluated_once():
    layout = (4, 4, 4)
    model = Synthetic(layout, 1, scale=0.005)
    cfg = SearchConfig(max_drop_pts=3.0, correction="none", max_evaluations=5000, branching=12)
    res = search(model, linear_latency, model.importance, layout, cfg, "astar")
    assert res.stopped_by == "exhausted"
    assert len(model.calls) == len(set(model.calls)) == res.evaluations
    # Different orders of removal reach the same state: without the closed set and the cache this would explode.
    assert res.evaluations < 2 ** 12


def test_deterministic_for_a_seed():
    layout = (12,) * 6
    imp = Synthetic(layout, 4).importance
    cfg = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=120, seed=11)
    for algorithm in ("astar", "random"):
        a = search(Synthetic(layout, 4), linear_latency, imp, layout, cfg, algorithm).to_dict()
        b = search(Synthetic(layout, 4), linear_latency, imp, layout, cfg, algorithm).to_dict()
        for d in (a, b):
            d["search"].pop("wall_time_s")
        assert a == b
    other = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=120, seed=12)
    r1 = search(Synthetic(layout, 4), linear_latency, imp, layout, cfg, "random")
    r2 = search(Synthetic(layout, 4), linear_latency, imp, layout, other, "random")
    assert r1.removed != r2.removed


class Interrupt(Exception):
    pass


class Flaky(Synthetic):
    """Dies (like a killed process) after `limit` fresh evaluations."""

    def __init__(self, *args, limit, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit = limit

    def evaluate(self, states):
        if len(self.calls) + len(states) > self.limit:
            raise Interrupt()
        return super().evaluate(states)


def _rescorer(model):
    # Re-scoring: importance of the remaining heads given the current state (interactions shift it).
    def rescore(state):
        return {x: model.importance[x] + sum(v for (a, b), v in model.pair.items() if b == x and a in state)
                for x in model.heads}
    return rescore


@pytest.mark.parametrize("algorithm", ["astar", "greedy"])
def test_resume_gives_the_same_result(tmp_path, algorithm):
    layout = (12,) * 6
    base = Synthetic(layout, 2)
    cfg = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=150, seed=5)
    fp = {"model": "synthetic-2"}
    full = search(Synthetic(layout, 2), linear_latency, base.importance, layout, cfg, algorithm,
                  rescore=_rescorer(base), journal=tmp_path / "full.jsonl", fingerprint=fp)
    journal = tmp_path / "run.jsonl"
    with pytest.raises(Interrupt):
        search(Flaky(layout, 2, limit=17), linear_latency, base.importance, layout, cfg, algorithm,
               rescore=_rescorer(base), journal=journal, fingerprint=fp)
    lines = journal.read_text().splitlines()
    assert sum('"kind":"eval"' in x for x in lines) >= 10
    # Simulate a kill in the middle of a write: a truncated last line must be ignored.
    journal.write_text("\n".join(lines) + '\n{"kind":"eval","state":[[0,')
    fresh = Synthetic(layout, 2)
    resumed = search(fresh, linear_latency, base.importance, layout, cfg, algorithm, rescore=_rescorer(base),
                     journal=journal, resume=True, fingerprint=fp)
    assert resumed.evaluations_replayed >= 10
    assert len(fresh.calls) == full.evaluations - resumed.evaluations_replayed
    a, b = full.to_dict(), resumed.to_dict()
    for d in (a, b):
        d["search"].pop("wall_time_s")
        d["search"].pop("evaluations_replayed")
    assert a == b
    # A journal of another search is refused.
    with pytest.raises(JournalError):
        search(Synthetic(layout, 2), linear_latency, base.importance, layout, cfg, algorithm,
               journal=journal, resume=True, fingerprint={"model": "something-else"})


def test_bonferroni_correction_is_more_cautious():
    layout = (12,) * 6
    model = Synthetic(layout, 0)
    loose = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=100)
    strict = SearchConfig(max_drop_pts=2.0, correction="bonferroni", max_evaluations=100)
    assert strict.bound_confidence == pytest.approx(1 - 0.05 / 100)
    a = search(Synthetic(layout, 0), linear_latency, model.importance, layout, loose, "greedy")
    b = search(Synthetic(layout, 0), linear_latency, model.importance, layout, strict, "greedy")
    assert b.heads_removed < a.heads_removed
    assert b.to_dict()["search"]["bound"]["per_candidate_confidence"] == pytest.approx(0.9995)


def test_bad_inputs_are_rejected():
    with pytest.raises(SearchError):
        SearchConfig(max_drop_pts=-1)
    with pytest.raises(SearchError):
        SearchConfig(max_drop_pts=1, confidence=1.0)
    with pytest.raises(ValueError):
        SearchConfig(max_drop_pts=1, correction="holm")
    model = Synthetic((2, 2), 0)
    with pytest.raises(SearchError):
        search(model, linear_latency, {(0, 0): 1.0}, (2, 2), SearchConfig(max_drop_pts=1))
    with pytest.raises(SearchError):
        search(model, linear_latency, model.importance, (2, 2), SearchConfig(max_drop_pts=1), "beam")


def test_search_package_is_pure():
    """Importing and running the search must not load torch or onnxruntime (fresh interpreter)."""
    import subprocess

    code = (
        "import sys, edgeprune.search as s, edgeprune.certify.stats\n"
        "r = s.search(type('E', (), {'evaluate': lambda self, st: [s.EvalResult(0, 0, 1000) for _ in st]})(),"
        " lambda kc: float(sum(kc)), {(0, 0): 0.0, (0, 1): 1.0}, (2,), s.SearchConfig(max_drop_pts=5.0, correction='none'))\n"
        "assert r.heads_removed >= 1, r\n"
        "bad = [m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_greedy_rescore_every_k_removals():
    layout = (6,) * 3
    model = Synthetic(layout, 3)
    seen = []

    def counting(state):
        seen.append(len(state))
        return _rescorer(model)(state)

    cfg = SearchConfig(max_drop_pts=5.0, correction="none", max_evaluations=100, rescore_every=3)
    result = search(model, linear_latency, model.importance, layout, cfg, "greedy", rescore=counting)
    assert result.heads_removed >= 4
    assert seen and all(k % 3 == 0 for k in seen)  # re-scored only at 0, 3, 6, ... removals
    assert len(seen) == result.heads_removed // 3 + 1


def test_offsets_make_the_search_keep_room_for_quantization():
    layout = (12,) * 6
    plain = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=150)
    roomy = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=150, offset_worse=15, offset_better=10)
    a = search(Synthetic(layout, 2), linear_latency, Synthetic(layout, 2).importance, layout, plain, "astar")
    b = search(Synthetic(layout, 2), linear_latency, Synthetic(layout, 2).importance, layout, roomy, "astar")
    assert b.heads_removed < a.heads_removed
    assert b.drop_bound_pts <= 2.0
    with pytest.raises(SearchError):
        SearchConfig(max_drop_pts=1.0, offset_worse=-1)


def test_prefix_search_offers_feasible_probes_past_an_infeasible_one():
    layout = (6,) * 3

    class Bumpy(Synthetic):
        # only k <= 3 or k == 14 removals fit the bound (non-monotone); the first probes are k = 4, 9, 14, 18
        def counts(self, state):
            k = len(state)
            ok = k <= 3 or k == 14
            return EvalResult(0 if ok else 200, 0, self.n, 0.0)

    model = Bumpy(layout, 0)
    cfg = SearchConfig(max_drop_pts=1.0, correction="none", max_evaluations=50, batch_size=4)
    result = search(model, linear_latency, model.importance, layout, cfg, "oneshot")
    assert result.heads_removed == 14  # offered although the k = 4 and k = 9 probes failed
    assert result.drop_bound_pts <= 1.0


def test_joint_space_searches_heads_and_ffn_blocks_together():
    """A UnitSpace with FFN blocks: the search removes both kinds, the latency sees both, the plan carries both."""
    from edgeprune.plan import UnitSpace

    space = UnitSpace((3, 3), (4, 4), 64)
    model = Synthetic(space.units_per_layer(), seed=5, scale=0.004)
    model.heads = space.all_units()
    calls = []

    def latency(kc, kb):
        calls.append((kc, kb))
        return 1.0 + sum(0.25 * k for k in kc) + sum(0.5 * b for b in kb)

    cfg = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=200)
    res = search(model, latency, model.importance, space, cfg, "astar")
    heads, blocks = space.split(res.removed)
    assert res.plan.has_ffn and res.plan.ffn_block_size == 64
    assert res.plan.removed() == heads and res.plan.ffn_removed() == blocks
    assert res.heads_removed == len(heads) and res.ffn_blocks_removed == len(blocks)
    assert blocks, "blocks are cheaper to remove per ms here: the search must use them"
    assert all(len(c) == 2 and len(c[0]) == len(c[1]) == 2 for c in calls)
    assert res.latency_ms == latency(*space.kept_counts(res.removed))
    d = res.to_dict()
    assert HeadPlan.from_dict(d) == res.plan
    assert d["search"]["structures"] == "heads+ffn" and d["ffn_removed"] == [list(b) for b in blocks]
    assert all("ffn_removed" in p for p in d["search"]["frontier"])
    assert space.units_of(res.plan) == sorted(res.removed)
    # Never worse than greedy in the joint space either.
    g = search(model, latency, model.importance, space, cfg, "greedy")
    assert res.latency_ms <= g.latency_ms


def test_unit_space_round_trips_and_rejects_bad_units():
    from edgeprune.plan import PlanError, UnitSpace

    space = UnitSpace((2, 2), (3, 3), 8)
    assert space.all_units()[:5] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    assert space.split([(0, 1), (1, 4), (0, 2)]) == ([(0, 1)], [(0, 0), (1, 2)])
    plan = space.plan([(0, 1), (1, 4)])
    assert plan.kept == ((0,), (0, 1)) and plan.ffn_kept == ((0, 1, 2), (0, 1))
    assert space.kept_counts([(0, 1), (1, 4)]) == ((1, 2), (3, 2))
    with pytest.raises(PlanError):
        space.split([(1, 5)])
    with pytest.raises(PlanError):
        UnitSpace((2, 2), (3,), 8)
    heads_only = UnitSpace.of([2, 2])
    assert not heads_only.has_ffn and heads_only.plan([(1, 0)]) == HeadPlan.from_removed([2, 2], [(1, 0)])


def test_no_credit_for_an_observed_improvement():
    """credit_improvement=False: better flips count at most as many as worse ones (selection noise is no evidence)."""

    class Lucky:
        def evaluate(self, states):
            return [EvalResult(0, 0, 1000) if not s else EvalResult(10, 30, 1000) for s in states]

    imp = {(0, 0): 1.0, (0, 1): 2.0}
    base = dict(max_drop_pts=5.0, correction="none", max_evaluations=10)
    trusting = Problem(Lucky(), lambda kc: float(sum(kc)), imp, [2], SearchConfig(**base))
    strict = Problem(Lucky(), lambda kc: float(sum(kc)), imp, [2], SearchConfig(**base, credit_improvement=False))
    for p in (trusting, strict):
        p.evaluate([frozenset({(0, 0)})])
    assert strict.bound_pts(((0, 0),)) == pytest.approx(ucb_pts(EvalResult(10, 10, 1000), 0.95))
    assert strict.bound_pts(((0, 0),)) > trusting.bound_pts(((0, 0),))
    assert trusting.bound_pts(((0, 0),)) == pytest.approx(ucb_pts(EvalResult(10, 30, 1000), 0.95))


def test_step_units_moves_several_units_at_a_time():
    """step_units = k: greedy removes the k least important units per step (one evaluation per step), A* successors
    add windows of k consecutive units; a budget that one-unit moves exhaust early reaches a deeper plan."""
    layout = (12,) * 6
    model = Synthetic(layout, 5, scale=0.002)
    order = sorted(model.heads, key=lambda x: (model.importance[x], x))
    cfg = SearchConfig(max_drop_pts=50.0, correction="none", max_evaluations=10, step_units=4)
    res = search(Synthetic(layout, 5, scale=0.002), linear_latency, model.importance, layout, cfg, "greedy")
    assert res.heads_removed == 4 * (res.evaluations - 1)  # root + one evaluation per 4-unit step
    assert set(res.removed) == set(order[:res.heads_removed])  # static scores: the least important first
    one = search(Synthetic(layout, 5, scale=0.002), linear_latency, model.importance, layout,
                 SearchConfig(max_drop_pts=50.0, correction="none", max_evaluations=10), "greedy")
    assert one.heads_removed == one.evaluations - 1 < res.heads_removed
    # A*: every evaluated state differs from an evaluated parent by at most 4 units, and some by exactly 4
    seen = Synthetic(layout, 5, scale=0.002)
    a = search(seen, linear_latency, model.importance, layout,
               SearchConfig(max_drop_pts=50.0, correction="none", max_evaluations=40, step_units=4), "astar")
    sizes = {len(k) for k in seen.calls}
    # every move adds a full window of 4 (but near the end of the 72 units, where windows run out of units)
    assert all(s % 4 == 0 for s in sizes if s <= 72 - 4 - cfg.branching) and len(sizes) > 5
    assert a.heads_removed >= res.heads_removed and max(sizes) >= 4 * 9
    with pytest.raises(SearchError):
        SearchConfig(max_drop_pts=1.0, step_units=0)


def test_bound_scale_bounds_as_if_on_a_larger_split():
    """bound_scale = k bounds the candidate's rates as if seen on k times the examples (the certify split), and
    early rejection stops exactly the candidates that scaled bound must fail."""
    layout = (4, 4)

    class Fixed:
        def evaluate(self, states):
            return [EvalResult(0, 0, 1000, 0.0) if not s else EvalResult(30, 10, 1000, 0.1) for s in states]

    imp = {(l, h): float(h) for l in range(2) for h in range(4)}
    p1 = Problem(Fixed(), linear_latency, imp, layout, SearchConfig(max_drop_pts=1.0, correction="none"))
    p2 = Problem(Fixed(), linear_latency, imp, layout,
                 SearchConfig(max_drop_pts=1.0, correction="none", bound_scale=2.0))
    s = frozenset({(0, 0)})
    for p in (p1, p2):
        p.evaluate([frozenset(), s])
    assert p1.bound_pts(s) == pytest.approx(100 * paired_drop_upper_bound(30, 10, 1000, 0.95))
    assert p2.bound_pts(s) == pytest.approx(100 * paired_drop_upper_bound(60, 20, 2000, 0.95))
    assert p2.bound_pts(s) < p1.bound_pts(s)
    no_credit = SearchConfig(max_drop_pts=1.0, correction="none", bound_scale=2.0, credit_improvement=False)
    p3 = Problem(Fixed(), linear_latency, imp, layout, no_credit)
    p3.evaluate([frozenset()])
    t = p3.reject_worse_threshold()
    assert 100 * paired_drop_upper_bound(round(2 * t), round(2 * t), 2000, 0.95) <= 1.0
    assert 100 * paired_drop_upper_bound(round(2 * (t + 1)), round(2 * (t + 1)), 2000, 0.95) > 1.0
    with pytest.raises(SearchError):
        SearchConfig(max_drop_pts=1.0, bound_scale=0)


def test_astar_goes_on_from_deep_acceptable_states_not_from_the_root():
    """Default resolution: every acceptable state shares one cost level, the unpruned model's children (deferred with
    g = 0) included, so after the greedy seed A* spends its evaluations next to the deepest plans (fastest first)
    instead of on one-move plans first (a bug until session 8: 0 rounded to its own level)."""
    layout = (12,) * 6
    cfg = SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=1000)
    greedy = Synthetic(layout, 0)
    search(greedy, linear_latency, greedy.importance, layout, cfg, "greedy")
    n = len(greedy.calls)
    model = Synthetic(layout, 0)
    search(model, linear_latency, model.importance, layout,
           SearchConfig(max_drop_pts=2.0, correction="none", max_evaluations=n + 8), "astar")
    assert model.calls[:n] == greedy.calls
    after = model.calls[n:]
    assert len(after) == 8 and min(len(k) for k in after) > len(layout)
