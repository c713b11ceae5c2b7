"""The masked-evaluation engine and Michel importance on tiny models (edgeprune.testing)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from edgeprune.task.data import TextDataset  # noqa: E402
from edgeprune.search.evaluate import MaskedEvaluator  # noqa: E402
from edgeprune.search.importance import head_importance, make_rescorer  # noqa: E402
from edgeprune.search import EvalResult, SearchConfig, search  # noqa: E402
from edgeprune.testing import tiny_model, tiny_tokenizer  # noqa: E402

WORDS = "the a movie film good bad great awful fun boring love hate not very plot actor".split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def dataset(n=40, seed=0, pairs=False):
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 18))) for _ in range(n)]
    other = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(n)] if pairs else None
    return TextDataset(texts, [rng.randint(0, 1) for _ in range(n)], text_pairs=other)


STATES = [
    frozenset(),
    frozenset({(3, 1)}),
    frozenset({(3, 1), (3, 2)}),
    frozenset({(2, 0), (3, 1)}),
    frozenset({(0, 0), (2, 3)}),
    frozenset({(1, h) for h in range(4)}),  # an emptied layer
    frozenset({(l, h) for l in range(4) for h in range(4)}),  # every head
]


def paired(ev, pred):
    correct = pred == ev.labels
    return int((ev.base_correct & ~correct).sum()), int((~ev.base_correct & correct).sum())


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta", "deberta-v2", "modernbert", "mpnet"])
def test_engine_equals_plain_masked_forward(tok, family):
    """Cached, prefix-shared, batched evaluation == a plain full forward with the heads masked."""
    ev = MaskedEvaluator(tiny_model(family), tok, dataset(pairs=family == "bert"), batch_size=8)
    assert ev.cached_layers == {0, 1, 2, 3}
    results = ev.evaluate(STATES)
    assert results[0] == EvalResult(0, 0, 40, 0.0)
    from edgeprune.plan import HeadPlan

    for state, res in zip(STATES, results):
        pred = ev.predict(state)
        assert (res.n_worse, res.n_better) == paired(ev, pred), state
        # The proxy (mean KL to the base outputs) against a plain masked forward: this has signal even when a
        # tiny random model's argmax never flips.
        kl = 0.0
        with torch.inference_mode():
            for b in ev.batches:
                base = torch.log_softmax(ev.model(**b.inputs).logits, -1)
                with ev.adapter.mask_heads(ev.model, HeadPlan.from_removed((4,) * 4, state)):
                    cand = torch.log_softmax(ev.model(**b.inputs).logits, -1)
                kl += float((base.exp() * (base - cand)).sum())
        assert res.proxy == pytest.approx(kl / ev.n, rel=1e-3, abs=1e-7), state
    assert sum(r.proxy for r in results) > 1e-4, "masking changed nothing: the test has no signal"
    # Order and grouping do not matter: one by one == all at once.
    singles = [ev.evaluate([s])[0] for s in reversed(STATES)][::-1]
    for a, b in zip(singles, results):
        assert (a.n_worse, a.n_better) == (b.n_worse, b.n_better)
        assert a.proxy == pytest.approx(b.proxy, rel=1e-4, abs=1e-7)


def test_caching_path_equals_non_caching_path(tok):
    data = dataset(n=37, seed=3)  # not a multiple of the batch size
    cached = MaskedEvaluator(tiny_model("bert", seed=1), tok, data, batch_size=8)
    plain = MaskedEvaluator(tiny_model("bert", seed=1), tok, data, batch_size=8, cache_mb=0)
    partial = MaskedEvaluator(tiny_model("bert", seed=1), tok, data, batch_size=8, cache_mb=1e-3)
    assert plain.cached_layers == set()
    a, b = cached.evaluate(STATES), plain.evaluate(STATES)
    for x, y in zip(a, b):
        assert (x.n_worse, x.n_better, x.n) == (y.n_worse, y.n_better, y.n)
        assert x.proxy == pytest.approx(y.proxy, rel=1e-4, abs=1e-7)
    assert partial.evaluate(STATES[1:3]) == [EvalResult(r.n_worse, r.n_better, r.n, partial.evaluate([s])[0].proxy)
                                             for s, r in zip(STATES[1:3], a[1:3])]
    assert torch.equal(cached.base_pred, plain.base_pred)
    # Base predictions agree with the unmodified model's forward.
    with torch.inference_mode():
        for b in plain.batches:
            assert torch.equal(plain.model(**b.inputs).logits.argmax(-1), plain.base_pred[b.index])


def test_bad_states_and_empty_data(tok):
    ev = MaskedEvaluator(tiny_model("bert"), tok, dataset(n=5), batch_size=4)
    from edgeprune.errors import DataError

    with pytest.raises(DataError):
        ev.evaluate([frozenset({(9, 0)})])
    with pytest.raises(DataError):
        MaskedEvaluator(tiny_model("bert"), tok, TextDataset([], []))
    with pytest.raises(DataError):
        MaskedEvaluator(tiny_model("bert"), tok, TextDataset(["good"], [5]))


def test_importance_matches_finite_differences(tok):
    """|dL/d gate| from the engine == a central finite difference of the summed loss (one batch)."""
    data = dataset(n=12, seed=5)
    ev = MaskedEvaluator(tiny_model("bert", seed=2).double(), tok, data, batch_size=64)
    scores = head_importance(ev, normalize=False)
    model, adapter = ev.model, ev.adapter
    b = ev.batches[0]

    def loss(gates):
        with torch.inference_mode(), adapter.mask_heads(model, gates):
            logits = model(**b.inputs).logits
            return float(torch.nn.functional.cross_entropy(logits, b.labels, reduction="sum"))

    eps = 1e-5
    for head in [(0, 1), (2, 3), (3, 0)]:
        up = torch.ones(4, 4, dtype=torch.float64)
        down = up.clone()
        up[head] += eps
        down[head] -= eps
        fd = abs(loss(up) - loss(down)) / (2 * eps) / ev.n
        assert scores[head] == pytest.approx(fd, rel=1e-4, abs=1e-9), head
    # Re-scoring with removed heads: those get +inf, the others change.
    removed = frozenset({(1, 0), (1, 1)})
    again = head_importance(ev, removed, normalize=False)
    assert again[(1, 0)] == float("inf") and again[(1, 1)] == float("inf")
    assert again[(1, 2)] != pytest.approx(scores[(1, 2)])


def test_search_end_to_end_on_a_tiny_model(tok, tmp_path):
    ev = MaskedEvaluator(tiny_model("bert", seed=0), tok, dataset(n=60, seed=1), batch_size=16)
    imp = head_importance(ev)
    cfg = SearchConfig(max_drop_pts=30.0, correction="none", confidence=0.8, max_evaluations=40, batch_size=4)
    res = search(ev, lambda kc: 1.0 + sum(kc), imp, ev.layout, cfg, "greedy", rescore=make_rescorer(ev),
                 journal=tmp_path / "j.jsonl")
    assert res.drop_bound_pts <= 30.0
    pred = ev.predict(frozenset(res.removed))
    assert (res.n_worse, res.n_better) == paired(ev, pred)
    assert '"kind":"importance"' in (tmp_path / "j.jsonl").read_text()


def test_importance_on_a_subset_of_the_split(tok):
    from edgeprune.search.importance import head_importance

    ev = MaskedEvaluator(tiny_model("bert"), tok, dataset(n=40), batch_size=4)
    full = head_importance(ev)
    part = head_importance(ev, max_examples=ev.n // 2)
    assert set(full) == set(part)
    assert all(v >= 0 for v in part.values())
    assert part != full  # really computed on fewer examples


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2", "modernbert", "mpnet"])
def test_joint_engine_equals_pruned_model(tok, family):
    """Heads + FFN blocks: the cached engine == a plain masked forward == the physically pruned model."""
    from edgeprune.adapters import get_adapter
    from edgeprune.search.ffn_importance import unit_importance

    model = tiny_model(family)
    data = dataset(n=32, seed=3)
    ev = MaskedEvaluator(model, tok, data, batch_size=8, ffn_block_size=8)
    space = ev.space
    assert space.has_ffn and space.units_per_layer()[0] == 4 + space.ffn_blocks_per_layer[0]
    blocks = [space.block_unit(l, b) for l, b in [(0, 1), (2, 0), (2, 3), (3, 2)]]
    states = [frozenset(blocks), frozenset(blocks + [(1, 0), (2, 1)]),
              frozenset(space.block_unit(1, b) for b in range(space.ffn_blocks_per_layer[1]))]
    results = ev.evaluate(states)
    for state, res in zip(states, results):
        pred = ev.predict(state)
        assert (res.n_worse, res.n_better) == paired(ev, pred), state
        assert res.proxy > 0  # removing blocks changes the outputs
        pruned = tiny_model(family)
        adapter = get_adapter(pruned)
        plan = space.plan(state)
        adapter.prune_heads_(pruned, plan)
        adapter.prune_ffn_(pruned, plan)
        pruned.eval()
        with torch.inference_mode():
            for b in ev.batches:
                assert torch.equal(pruned(**b.inputs).logits.argmax(-1), pred[b.index])
    scores = unit_importance(ev, states[0])
    assert set(scores) == set(space.all_units())
    assert all(scores[u] == float("inf") for u in states[0])
    assert all(0 <= v < float("inf") for u, v in scores.items() if u not in states[0])
    with pytest.raises(Exception, match="unit"):
        ev.evaluate([frozenset({(0, space.units_per_layer()[0])})])


def test_free_cores_counts_other_processes_only(monkeypatch):
    import psutil

    from edgeprune.search import evaluate

    class Fake:
        def __init__(self, pid, pct):
            self.pid, self.pct = pid, pct

        def cpu_percent(self, interval=None):
            return self.pct

    me = psutil.Process()
    monkeypatch.setattr(evaluate, "physical_cores", lambda: 4)
    others = [Fake(10**7 + 1, 100.0), Fake(10**7 + 2, 60.0), Fake(me.pid, 400.0)]  # our own 400% is ignored
    monkeypatch.setattr(psutil, "process_iter", lambda: iter(others))
    assert evaluate.free_cores(sample_s=0) == 2  # 4 cores - 1.6 busy elsewhere, rounded
    others[:2] = [Fake(10**7 + 1, 390.0)]
    assert evaluate.free_cores(sample_s=0) == 1  # never below one
