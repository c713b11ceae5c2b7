"""Full least-squares weight refit (edgeprune.recovery.refit): exact when nothing is pruned, strictly lower reconstruction
error when something is, surgery parity afterwards, the user's model untouched, and the INT8 simulation vs ORT."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from edgeprune.adapters import get_adapter  # noqa: E402
from edgeprune.errors import DataError, PlanError  # noqa: E402
from edgeprune.task.modeling import clone_model, prune_and_verify_  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402
from edgeprune.recovery.refit import (RefitConfig, fake_quant_activation, fake_quant_weight, fold_plan_,  # noqa: E402
                             refit_plan, simulate_int8)
from edgeprune.testing import TINY_FAMILIES  # noqa: E402

# The refit solves post-LayerNorm, biased projections; ModernBERT is refused (tested below).
REFIT_FAMILIES = [f for f in TINY_FAMILIES if f != "modernbert"]
from test_recovery import BS, H, HEADS_ONLY, JOINT, L, NB, dataset, tiny_model, tok  # noqa: E402,F401

FULL = HeadPlan.full((H,) * L).with_ffn(BS, (NB,) * L)
TOP_ONLY = HeadPlan((H,) * L, ((0, 1, 2, 3),) * 3 + ((1, 3),)).with_ffn(
    BS, (NB,) * L, (tuple(range(NB)),) * 3 + ((0, 2, 4),))


def _logits(model, tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def _sublayer_outputs(model, tok, texts):
    """Per layer, the pre-LayerNorm outputs of both sublayers minus their residual (= the output projections'
    outputs), on real tokens, from an ordinary forward pass (independent of the refit's own bookkeeping)."""
    adapter = get_adapter(model)
    outs: dict = {}
    handles = []
    for i in range(L):
        for part, proj in (("attention", adapter.attention_output(model, i)), ("ffn", adapter.ffn_output(model, i))):
            handles.append(proj.register_forward_hook(lambda m, a, o, key=(i, part): outs.__setitem__(key, o)))
    enc = tok(texts, padding=True, return_tensors="pt")
    try:
        with torch.no_grad():
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    real = enc["attention_mask"].bool()
    return {k: v[real] for k, v in outs.items()}


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_nothing_pruned_reproduces_exactly(tok, model_type):
    """With nothing removed, every sublayer is solved (skip_intact=False) and the solution is the current weights:
    zero reconstruction error, same sublayer outputs and logits. Families the solve cannot handle are refused."""
    from edgeprune.errors import PlanError
    from edgeprune.recovery.refit import unsupported_reason

    model = tiny_model(model_type)
    if unsupported_reason(model):
        assert model_type == "modernbert"  # the one family refused today (pre-LayerNorm, bias-free linears)
        with pytest.raises(PlanError, match="does not support"):
            refit_plan(model, tok, dataset(), FULL)
        return
    texts = dataset(40, seed=3).texts
    folded, rec = refit_plan(model, tok, dataset(), FULL, RefitConfig(skip_intact=False, batch_size=16))
    assert [s["status"] for s in rec.sublayers] == ["fitted"] * (2 * L)
    assert all(s["relative_after"] < 1e-6 for s in rec.sublayers)
    ref, got = _sublayer_outputs(model, tok, texts), _sublayer_outputs(folded, tok, texts)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(folded, tok, texts), _logits(model, tok, texts), atol=1e-4, rtol=1e-4)
    # skip_intact (default) does no data pass at all and returns the weights bit for bit
    same, rec2 = refit_plan(model, tok, dataset(), FULL)
    assert rec2.examples == 0 and rec2.sublayers == []
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in model.state_dict().items())


def test_intact_sublayers_are_left_alone(tok):
    model = tiny_model("bert")
    folded, rec = refit_plan(model, tok, dataset(), TOP_ONLY)
    status = [(s["layer"], s["part"], s["status"]) for s in rec.sublayers]
    assert status[:6] == [(i, p, "intact") for i in range(3) for p in ("attention", "ffn")]
    assert [s for _, _, s in status[6:]] == ["fitted", "fitted"]
    ad = get_adapter(model)
    for i in range(3):
        assert torch.equal(ad.attention_output(model, i).weight, ad.attention_output(folded, i).weight)
        assert torch.equal(ad.ffn_output(model, i).bias, ad.ffn_output(folded, i).bias)


@pytest.mark.parametrize("model_type", REFIT_FAMILIES)
def test_refit_strictly_lowers_reconstruction_error(tok, model_type):
    """Every fitted sublayer's error drops (refit's own numbers), and an independent measurement on the fit texts
    agrees: the pruned model's sublayer outputs are closer to the unpruned model's after the refit than before."""
    model = tiny_model(model_type)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    data = dataset(96)
    folded, rec = refit_plan(model, tok, data, JOINT, RefitConfig(batch_size=16))
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())  # the user's model untouched
    fitted = [s for s in rec.sublayers if s["status"] == "fitted"]
    assert len(fitted) == 2 * L  # layer 0 already removes something: nothing is intact
    assert all(s["error_after"] < s["error_before"] for s in fitted)
    # Independent check of the first sublayer (its input is the same for every variant): the refit must reduce
    # the distance to the unpruned model's attention output of layer 0 measured by an ordinary forward pass.
    plain = fold_plan_(clone_model(model), JOINT)
    ref = _sublayer_outputs(model, tok, data.texts)[(0, "attention")]
    before = ((_sublayer_outputs(plain, tok, data.texts)[(0, "attention")] - ref) ** 2).sum(-1).mean()
    after = ((_sublayer_outputs(folded, tok, data.texts)[(0, "attention")] - ref) ** 2).sum(-1).mean()
    assert float(after) < 0.9 * float(before)
    assert float(after) == pytest.approx(fitted[0]["error_after"], rel=1e-3)
    # end to end on the fit texts: closer to the unpruned logits than the plain pruned model
    t = _logits(model, tok, data.texts)
    assert float(((_logits(folded, tok, data.texts) - t) ** 2).mean()) < float(
        ((_logits(plain, tok, data.texts) - t) ** 2).mean())
    json.dumps(rec.to_dict())


@pytest.mark.parametrize("model_type", REFIT_FAMILIES)
def test_surgery_after_refit_equals_masked(tok, model_type):
    model = tiny_model(model_type)
    folded, _ = refit_plan(model, tok, dataset(), JOINT, RefitConfig(batch_size=16))
    texts = dataset(12, seed=5).texts
    with get_adapter(folded).mask_heads(folded, JOINT):  # removed units are already zero: masks change nothing
        masked = _logits(folded, tok, texts)
    torch.testing.assert_close(_logits(folded, tok, texts), masked, atol=1e-6, rtol=1e-6)
    pruned = clone_model(folded)
    assert prune_and_verify_(pruned, JOINT) <= 1e-5
    torch.testing.assert_close(_logits(pruned, tok, texts), masked, atol=1e-5, rtol=1e-5)


def test_heads_only_plan_refits_ffn_too(tok):
    """A heads-only plan leaves every FFN neuron, yet the FFNs above the first removal are refitted (drift)."""
    model = tiny_model("roberta")
    folded, rec = refit_plan(model, tok, dataset(), HEADS_ONLY, RefitConfig(batch_size=16))
    ffn = [s for s in rec.sublayers if s["part"] == "ffn"]
    assert all(s["status"] == "fitted" and s["unknowns"] == NB * BS + 1 for s in ffn)
    prune_and_verify_(clone_model(folded), HEADS_ONLY)


def test_errors(tok):
    model = tiny_model("bert")
    with pytest.raises(DataError):
        refit_plan(model, tok, dataset(0), JOINT)
    with pytest.raises(PlanError):
        refit_plan(model, tok, dataset(), HeadPlan.full((H,) * 3))
    pruned = get_adapter(model).prune_heads_(clone_model(model), HEADS_ONLY)
    with pytest.raises(PlanError, match="unpruned"):
        refit_plan(pruned, tok, dataset(), HEADS_ONLY)
    with pytest.raises(DataError):
        RefitConfig(ridge=-1)
    assert RefitConfig.from_dict(RefitConfig(ridge=0.5).to_dict()) == RefitConfig(ridge=0.5)


def test_max_examples_subsamples(tok):
    _, rec = refit_plan(tiny_model("bert"), tok, dataset(200), JOINT, RefitConfig(max_examples=50))
    assert rec.examples == 50


# ---- INT8 simulation --------------------------------------------------------------------------------------------
def test_fake_quant_matches_onnxruntime_dynamic_int8(tmp_path):
    """simulate_int8 reproduces ORT's dynamic S8 per-channel MatMul on a Linear (so int8_aware fits what ships)."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    from edgeprune.onnx.quantize import quantize_onnx

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24)
    with torch.no_grad():
        lin.weight[3] *= 8  # uneven channel ranges: per-channel scales matter
    x = torch.randn(5, 48) * 2 + 0.5
    fp32 = tmp_path / "lin.onnx"
    torch.onnx.export(lin, (x,), str(fp32), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}})
    int8 = quantize_onnx(fp32, tmp_path / "lin.int8.onnx")
    import onnxruntime as ort

    got = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad(), simulate_int8([lin]):
        sim = lin(x).numpy()
        plain = torch.nn.functional.linear(x, lin.weight, lin.bias).numpy()
    err_sim, err_plain = np.abs(sim - got).max(), np.abs(plain - got).max()
    assert err_sim < 1e-4 < err_plain  # the simulation is ORT's arithmetic; FP32 is not
    assert torch.equal(fake_quant_weight(fake_quant_weight(lin.weight)), fake_quant_weight(lin.weight))
    assert len(torch.unique(fake_quant_activation(x))) <= 256


def test_int8_aware_refit(tok):
    model = tiny_model("bert")
    plain, _ = refit_plan(model, tok, dataset(), JOINT, RefitConfig(batch_size=16))
    aware, rec = refit_plan(model, tok, dataset(), JOINT, RefitConfig(batch_size=16, int8_aware=True))
    assert rec.config.int8_aware
    fitted = [s for s in rec.sublayers if s["status"] == "fitted"]
    assert all(s["error_after"] < s["error_before"] for s in fitted)
    w = [get_adapter(m).ffn_output(m, 3).weight for m in (plain, aware)]  # layer 3 keeps 7 FFN blocks
    assert not torch.allclose(w[0], w[1])
    prune_and_verify_(clone_model(aware), JOINT)
    # no simulation hook or patched forward is left behind
    lin = get_adapter(aware).ffn_output(aware, 0)
    assert not lin._forward_pre_hooks and "forward" not in lin.__dict__


def test_prepared_fit_cache_gives_the_same_refit(tok):
    """prepare_fit + refit_plan(cache=) (the search's path) == the plain refit, weight for weight."""
    from edgeprune.recovery.refit import prepare_fit

    model = tiny_model("bert")
    data = dataset(48)
    cfg = RefitConfig(max_examples=32, max_length=16, batch_size=8)
    plain, rec_plain = refit_plan(model, tok, data, JOINT, cfg)
    cache = prepare_fit(model, tok, data, cfg)
    cached, rec_cached = refit_plan(model, tok, None, JOINT, cache=cache)
    assert rec_cached.examples == rec_plain.examples == 32 and rec_cached.tokens == rec_plain.tokens
    for (name, a), (_, b) in zip(plain.state_dict().items(), cached.state_dict().items()):
        assert torch.equal(a, b), name
    # the cache is reusable: a second plan from the same cache equals its plain refit too
    again, _ = refit_plan(model, tok, None, HEADS_ONLY, cache=cache)
    ref, _ = refit_plan(model, tok, data, HEADS_ONLY, cfg)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ref.state_dict().values()))


def test_refit_evaluator_prices_candidates_after_the_refit(tok):
    """The search's refit-priced evaluator: its cached, start-at-the-first-modified-layer path gives the counts of a
    plain forward pass of the refitted model, and the refit changes them (it is not the masked evaluation)."""
    from edgeprune.plan import UnitSpace
    from edgeprune.search.evaluate import MaskedEvaluator, RefitEvaluator

    model = tiny_model("bert")
    data = dataset(64, seed=3)
    ev = RefitEvaluator(clone_model(model), tok, data, fit_examples=32, fit_max_length=16, batch_size=8,
                        max_length=16, ffn_block_size=BS)
    masked = MaskedEvaluator(clone_model(model), tok, data, batch_size=8, max_length=16, ffn_block_size=BS)
    space = ev.space
    states = [frozenset(space.units_of(JOINT)), frozenset(space.units_of(HEADS_ONLY)),
              frozenset({(3, 1)}), frozenset()]
    got = ev.evaluate(states)
    assert ev.refits == 3
    for s, r in zip(states, got):
        pred = ev.predict(s)
        correct = pred == ev.labels
        assert r.n_worse == int((ev.base_correct & ~correct).sum()), s
        assert r.n_better == int((~ev.base_correct & correct).sum()), s
    assert got[-1].n_worse == got[-1].n_better == 0
    # the refit moves the candidate back toward the unpruned model: a smaller KL(base || candidate) than masking
    m = masked.evaluate(states[:2])
    assert got[0].proxy < m[0].proxy and got[1].proxy < m[1].proxy
