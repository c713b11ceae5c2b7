"""Retraining-free recovery (edgeprune.recovery.scale): least-squares re-fit of kept head / FFN-neuron scales, folding,
parity with masking and surgery, reconstruction errors, identity, and the bundle integration."""

from __future__ import annotations

import json
import random

import pytest

torch = pytest.importorskip("torch")

from edgeprune.adapters import get_adapter  # noqa: E402
from edgeprune.task.data import TextDataset  # noqa: E402
from edgeprune.errors import DataError, PlanError  # noqa: E402
from edgeprune.task.modeling import clone_model  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402
from edgeprune.recovery.scale import apply_recovery_, fit_recovery, recovery_scales, scale_hooks  # noqa: E402
from edgeprune.testing import TINY_FAMILIES, random_inputs, randomize_biases_  # noqa: E402
from edgeprune.testing import tiny_model as _tiny_model  # noqa: E402

L, H, BS, NB = 4, 4, 8, 8  # tiny models: 4 layers x 4 heads, FFN width 64 = 8 blocks of 8
from test_bundle import WORDS, word_tokenizer  # same word-level tokenizer as the bundle tests
# Removes heads and FFN blocks unevenly, including a layer with no head and a layer with no FFN block.
JOINT = HeadPlan((H,) * L, ((0, 2), (1,), (0, 1, 3), ())).with_ffn(
    BS, (NB,) * L, ((0, 1, 2, 5), (3,), (), (0, 1, 2, 3, 4, 5, 6)))
HEADS_ONLY = HeadPlan((H,) * L, ((0, 1, 3), (2,), (0, 1, 2, 3), (1, 2)))


def tiny_model(model_type: str):
    """Random biases and LayerNorms too, so a fold or surgery that mishandles a bias fails the parity checks."""
    return randomize_biases_(_tiny_model(model_type))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    t = word_tokenizer(tmp_path_factory.mktemp("tok"))
    assert t("good movie")["input_ids"] == [2, 9, 6, 3]
    return t


def dataset(n: int = 96, seed: int = 0) -> TextDataset:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]
    return TextDataset(texts, [rng.randint(0, 1) for _ in texts], source="random words")


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def inputs_for(model):
    inp = random_inputs(batch=3, seq=12, vocab_size=len(WORDS) + 5)
    return inp


# ---- folding, masking and surgery agree -----------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_folded_equals_hooked_and_pruned_equals_masked(tok, model_type):
    model = tiny_model(model_type)
    adapter = get_adapter(model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    rec = fit_recovery(model, tok, dataset(), JOINT, batch_size=16)
    # fitting changes no weight
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())
    assert rec.ffn_scales is not None and not rec.is_identity
    assert all(rec.head_scales[i][h] == 0.0 for i, h in JOINT.removed())
    assert all(0.0 <= s <= rec.max_scale for row in rec.head_scales for s in row)
    inp = inputs_for(model)
    heads, ffn = recovery_scales(rec)
    with scale_hooks(model, heads, ffn):
        hooked = logits(model, inp)
    with adapter.mask_heads(model, JOINT):
        unrecovered = logits(model, inp)
    folded = apply_recovery_(clone_model(model), rec)
    out = logits(folded, inp)
    torch.testing.assert_close(out, hooked, atol=1e-5, rtol=1e-5)
    assert (out - unrecovered).abs().max() > 1e-3  # the scales really changed the pruned model
    with adapter.mask_heads(folded, JOINT):  # removed units are already 0 in the folded model
        torch.testing.assert_close(logits(folded, inp), out, atol=1e-5, rtol=1e-5)
    pruned = adapter.prune_heads_(clone_model(folded), JOINT)
    torch.testing.assert_close(logits(pruned, inp), out, atol=1e-5, rtol=1e-5)
    assert adapter.current_plan(pruned) == JOINT


# ---- reconstruction errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
@pytest.mark.parametrize("target", ["teacher", "same_input"])
def test_error_after_fit_not_above_before(tok, model_type, target):
    rec = fit_recovery(tiny_model(model_type), tok, dataset(), JOINT, target=target, batch_size=16)
    parts = [(s["layer"], kind, s[kind]) for s in rec.layers for kind in ("heads", "ffn") if s[kind]]
    # every kept part is fitted: layers 0-2 have heads, layers 0, 1, 3 have FFN neurons
    assert [(layer, kind) for layer, kind, _ in parts] == [(0, "heads"), (0, "ffn"), (1, "heads"), (1, "ffn"),
                                                          (2, "heads"), (3, "ffn")]
    for layer, kind, p in parts:
        assert p["error_after"] <= p["error_before"] * (1 + 1e-9) + 1e-12, (layer, kind, p)
        assert p["unknowns"] == (len(JOINT.kept[layer]) if kind == "heads" else len(JOINT.ffn_kept[layer]) * BS)
    # non-trivial: on this plan the fit clearly improves the reconstruction somewhere (here: the FFN of layer 3)
    assert min(p["relative_after"] / p["relative_before"] for _, _, p in parts if p["relative_before"] > 0) < 0.9
    assert rec.examples == 96 and rec.tokens > 96 * 4


def test_recorded_error_equals_direct_computation(tok):
    """Layer 0 (same input for both models): the recorded errors equal the squared output differences of the
    projections, measured with forward hooks, over the real tokens."""
    model = tiny_model("bert")
    adapter = get_adapter(model)
    data = dataset()
    rec = fit_recovery(model, tok, data, JOINT, target="same_input", batch_size=16, max_length=64)
    heads, ffn = recovery_scales(rec)
    enc = tok(list(data.texts), padding=True, truncation=True, max_length=64, return_tensors="pt")
    real = enc["attention_mask"].bool()
    outs = {}

    def grab(name):
        def hook(mod, args, out):
            outs[name] = out
        return hook

    def run(h, f, name, proj):
        handle = proj.register_forward_hook(grab(name))
        try:
            with torch.no_grad(), scale_hooks(model, h, f):
                model(**enc)
        finally:
            handle.remove()

    attn, ffn_out = adapter.attention_output(model, 0), adapter.ffn_output(model, 0)
    ones_h = torch.ones_like(heads)
    run(ones_h, None, "attn_full", attn)
    run(heads, None, "attn_fit", attn)
    err = ((outs["attn_fit"] - outs["attn_full"])[real] ** 2).sum() / int(real.sum())
    assert float(err) == pytest.approx(rec.layers[0]["heads"]["error_after"], rel=1e-3)
    unit = torch.zeros_like(heads)
    unit[0, list(JOINT.kept[0])] = 1.0
    run(unit, None, "attn_before", attn)
    err = ((outs["attn_before"] - outs["attn_full"])[real] ** 2).sum() / int(real.sum())
    assert float(err) == pytest.approx(rec.layers[0]["heads"]["error_before"], rel=1e-3)
    # FFN of layer 0, on the output of the recovered attention
    run(heads, None, "ffn_full", ffn_out)
    run(heads, ffn, "ffn_fit", ffn_out)
    err = ((outs["ffn_fit"] - outs["ffn_full"])[real] ** 2).sum() / int(real.sum())
    assert float(err) == pytest.approx(rec.layers[0]["ffn"]["error_after"], rel=1e-3)


# ---- identity, heads-only plans, errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("plan", [HeadPlan.full((H,) * L), HeadPlan.full((H,) * L).with_ffn(BS, (NB,) * L)])
def test_full_plan_is_identity(tok, plan):
    model = tiny_model("roberta")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = fit_recovery(model, tok, dataset(), plan)
    assert rec.is_identity and rec.layers == [] and rec.examples == 0
    apply_recovery_(model, rec)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_heads_only_plan(tok):
    model = tiny_model("electra")
    rec = fit_recovery(model, tok, dataset(), HEADS_ONLY, batch_size=16)
    assert rec.ffn_scales is None and all(s["ffn"] is None for s in rec.layers)
    assert rec.to_dict()["ffn_fitted"] is False
    inp = inputs_for(model)
    folded = apply_recovery_(clone_model(model), rec)
    w2 = [get_adapter(m).ffn_output(m, 0).weight for m in (model, folded)]
    assert torch.equal(w2[0], w2[1])  # FFN untouched
    pruned = get_adapter(folded).prune_heads_(clone_model(folded), HEADS_ONLY)
    torch.testing.assert_close(logits(pruned, inp), logits(folded, inp), atol=1e-5, rtol=1e-5)
    both = fit_recovery(model, tok, dataset(), HEADS_ONLY, batch_size=16, fit_ffn=True)
    assert both.ffn_scales is not None and len(both.ffn_scales[0]) == NB * BS
    assert all(s["ffn"]["unknowns"] == NB * BS for s in both.layers)
    json.dumps(both.to_dict(include_scales=True))  # JSON-ready


def test_errors(tok):
    model = tiny_model("bert")
    with pytest.raises(DataError, match="target"):
        fit_recovery(model, tok, dataset(), JOINT, target="nope")
    with pytest.raises(DataError, match="non-empty"):
        fit_recovery(model, tok, TextDataset([], []), JOINT)
    with pytest.raises(PlanError):
        fit_recovery(model, tok, dataset(), HeadPlan.full((H,) * 3))
    rec = fit_recovery(model, tok, dataset(32), HEADS_ONLY)
    pruned = get_adapter(model).prune_heads_(clone_model(model), HEADS_ONLY)
    with pytest.raises(PlanError, match="unpruned"):
        apply_recovery_(pruned, rec)
    with pytest.raises(PlanError, match="unpruned"):
        fit_recovery(pruned, tok, dataset(), HEADS_ONLY)


def test_max_examples_subsamples(tok):
    rec = fit_recovery(tiny_model("bert"), tok, dataset(200), HEADS_ONLY, max_examples=50)
    assert rec.examples == 50


# ---- bundle integration -------------------------------------------------------------------------------------------
def test_export_bundle_with_recovery(tmp_path, tok):
    from edgeprune.output.bundle import export_bundle
    from edgeprune.task.predict import torch_predictions

    model = tiny_model("roberta")  # predicts both classes on these texts
    before = {k: v.clone() for k, v in model.state_dict().items()}
    certify_texts = dataset(80, seed=1).texts
    base = torch_predictions(model, tok, TextDataset(certify_texts, [0] * 80), max_length=32)
    # labels = the original model's predictions: base accuracy must be exactly 1 if certification pairs against it
    certify_data = TextDataset(certify_texts, base, source="constructed")
    out = tmp_path / "bundle"
    res = export_bundle(model, JOINT, None, out, tokenizer=tok, certify_data=certify_data, max_drop_pts=100,
                        recovery_data=dataset(96), recovery_examples=64, max_length=32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched
    meta = json.loads((out / "edgeprune.json").read_text())
    assert meta["recovery_applied"] is True and meta["attempts"][0]["recovery_applied"] is True
    assert meta["recovery"]["examples"] == 64 and len(meta["recovery"]["layers"]) == L
    assert meta["recovery"]["target"] == res.recovery["target"]
    assert "recovery" not in meta["checks"]
    cert = res.certification
    assert cert.base_accuracy == 1.0
    # the folded (recovered) model predicts differently from the original somewhere, so the check above has teeth
    folded = apply_recovery_(clone_model(model), fit_recovery(clone_model(model), tok, dataset(96), JOINT,
                                                              max_examples=64, max_length=32))
    with get_adapter(folded).mask_heads(folded, JOINT):
        folded_preds = torch_predictions(folded, tok, certify_data, max_length=32)
    assert folded_preds != base
    assert cert.n_better == 0 and cert.n_worse > 0
    # without recovery_data nothing is recorded as applied
    out2 = tmp_path / "plain"
    export_bundle(model, JOINT, None, out2, tokenizer=tok, max_length=32)
    meta2 = json.loads((out2 / "edgeprune.json").read_text())
    assert meta2["recovery_applied"] is False and meta2["recovery"] is None
