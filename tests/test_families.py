"""Family details of DeBERTa-v2/v3, ModernBERT and MPNet; ALBERT's refusal; LUT sub-models and a tiny end-to-end
build per family. (The generic contract, FFN, export, INT8/.ort and save/load tests run every family through
``TINY_FAMILIES``.)"""

from __future__ import annotations

import json
import random
import time

import pytest

torch = pytest.importorskip("torch")

from conftest import sdpa_supported  # noqa: E402
from edgeprune.adapters import get_adapter  # noqa: E402
from edgeprune.errors import UnsupportedModelError  # noqa: E402
from edgeprune.task.modeling import clone_model, count_parameters, prune_and_verify_  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402
from edgeprune.testing import random_inputs, randomize_biases_, tiny_model  # noqa: E402

NEW = ["deberta-v2", "modernbert", "mpnet"]
L, H, D, BS = 4, 4, 32, 16  # FFN width 64 = 4 blocks of 16
d = D // H
# 0-head layer (1), 0-block layer (2), a non-prefix kept set (3: heads 1, 3), uneven everywhere.
PLAN = HeadPlan((H,) * L, ((0, 2, 3), (), (2,), (1, 3))).with_ffn(BS, (4,) * L, ((0, 3), (1, 2), (), (0, 1, 2, 3)))
HEADS_ONLY = HeadPlan((H,) * L, ((3,), (0, 1, 2, 3), (), (0, 2)))


def _model(family, overrides=None, impl=None, **kw):
    return randomize_biases_(tiny_model(family, num_layers=L, num_heads=H, hidden=D, overrides=overrides,
                                        attn_implementation=impl, **kw))


def _inputs(seq=24):
    return random_inputs(batch=3, seq=seq, vocab_size=128)


def _fusable_equals_hf(model, inputs):
    with torch.no_grad():
        ref = model(**inputs).logits
        get_adapter(model).make_fusable_(model)
        got = model(**inputs).logits
    return float((ref - got).abs().max())


def _prune_checks(model, plan, inputs):
    """pruned == masked (atol 1e-5) and masking really changed the logits."""
    adapter = get_adapter(model)
    with torch.no_grad():
        unmasked = model(**inputs).logits
        with adapter.mask_heads(model, plan):
            masked = model(**inputs).logits
    assert not torch.allclose(masked, unmasked, atol=1e-4)
    assert prune_and_verify_(model, plan, inputs=inputs, atol=1e-5) <= 1e-5
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, masked, atol=1e-5)


# ---- DeBERTa-v2/v3 --------------------------------------------------------------------------------------------------
DEBERTA_VARIANTS = {
    "v3_shared_keys_c2p_p2c": {},
    "separate_position_projections": {"share_att_key": False},
    "c2p_only": {"pos_att_type": ["c2p"], "share_att_key": False},
    "p2c_only": {"pos_att_type": ["p2c"]},
    "no_relative_attention": {"relative_attention": False, "position_biased_input": True},
    "linear_positions_no_norm": {"position_buckets": -1, "norm_rel_ebd": "none"},
}


@pytest.mark.parametrize("variant", sorted(DEBERTA_VARIANTS))
def test_deberta_variants_match_hf_and_prune(variant):
    """Disentangled attention for each combination of position terms: the replacement equals HF's
    DisentangledSelfAttention (so the scale sqrt(d * (1 + #terms)) and the c2p/p2c gathers are right), and
    surgery equals masking, including the position projections of separate-key models."""
    over = DEBERTA_VARIANTS[variant]
    model = _model("deberta-v2", over)
    inputs = _inputs(seq=40)  # > 2 * 8: relative distances reach the log-bucket range
    assert _fusable_equals_hf(model, inputs) <= 1e-5
    before = count_parameters(model)
    _prune_checks(model, PLAN, inputs)
    sa = get_adapter(model).layers(model)[0].attention.self
    proj = 2 if (not sa.share_att_key and sa.relative_attention) else 0
    pos = [n for n in ("pos_key_proj", "pos_query_proj") if hasattr(sa, n)]
    assert len(pos) == (len(sa.pos_att_type) if proj else 0)
    for name in pos:  # the position projections lose the removed heads' rows, like q/k/v
        assert getattr(sa, name).out_features == 3 * d
    per_head = (3 + len(pos)) * (D * d + d) + d * D
    per_block = BS * (D + 1) + BS * D
    assert before - count_parameters(model) == per_head * PLAN.num_removed + per_block * PLAN.ffn_num_removed


def test_deberta_scale_counts_the_position_terms():
    """Dropping a position term from the scale (a plausible bug) breaks parity with HF: the check has teeth."""
    from edgeprune.adapters import deberta_v2

    model = _model("deberta-v2")
    inputs = _inputs()
    with torch.no_grad():
        ref = model(**inputs).logits
    get_adapter(model).make_fusable_(model)
    for layer in get_adapter(model).layers(model):
        layer.attention.self.pos_att_type = ["c2p"]  # the scale now counts 2 terms, and p2c is skipped
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, ref, atol=1e-3)
    assert deberta_v2.FusableDisentangledAttention  # the module under test


def test_deberta_with_convolution_is_refused_with_the_reason():
    from edgeprune.testing import tiny_config

    with pytest.raises(UnsupportedModelError, match="convolution"):
        get_adapter(tiny_config("deberta-v2", overrides={"conv_kernel_size": 3}))


# ---- ModernBERT -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("over", [{}, {"classifier_pooling": "cls"},
                                  {"attention_bias": True, "mlp_bias": True, "norm_bias": True}],
                         ids=["mean_no_bias", "cls", "biased"])
def test_modernbert_matches_hf_and_prunes(impl, over):
    """Padded-path replacement == HF (eager and SDPA; transformers 4.57 unpads only with flash-attention 2, which
    needs a GPU, so CPU and ONNX always run this path), and surgery == masking with 0-head and 0-block layers."""
    if impl == "sdpa" and not sdpa_supported("modernbert"):
        pytest.skip("ModernBERT has no SDPA attention in this transformers version")
    model = _model("modernbert", over, impl)
    assert model.config._attn_implementation == impl  # never flash_attention_2 (unpadded) on CPU
    inputs = _inputs(seq=40)
    assert _fusable_equals_hf(model, inputs) <= 1e-5
    _prune_checks(model, PLAN, inputs)
    adapter = get_adapter(model)
    for i, layer in enumerate(adapter.layers(model)):
        kept = len(PLAN.ffn_kept[i]) * BS
        if kept:  # gated FFN: the input projection keeps the input half and the gate half of each neuron
            assert layer.mlp.Wi.out_features == 2 * kept and layer.mlp.Wo.in_features == kept
        if PLAN.kept[i]:  # fused Wqkv keeps q, k and v rows of each kept head
            assert layer.attn.Wqkv.out_features == 3 * d * len(PLAN.kept[i])
    if over.get("attention_bias"):  # a 0-head / 0-block layer keeps its output bias
        assert adapter.layers(model)[1].attn.bias is not None and adapter.layers(model)[2].mlp.bias is not None


def test_modernbert_local_and_global_layers():
    """Layers alternate global / local (global_attn_every_n_layers = 2); the local window (+-4) really masks."""
    model = _model("modernbert")
    adapter = get_adapter(model)
    inputs = _inputs(seq=30)
    adapter.make_fusable_(model)
    assert [layer.attn.window for layer in adapter.layers(model)] == [None, 4, None, 4]

    def layerwise():  # the evaluator's path: only the padding mask comes in, the module applies the window
        hidden, mask = adapter.embed(model, inputs["input_ids"], inputs["attention_mask"])
        for i in range(L):
            hidden = adapter.layer_forward(model, i, hidden, mask)
        return adapter.classify(model, hidden, mask)

    with torch.no_grad():
        ref = model(**inputs).logits
        assert torch.allclose(layerwise(), ref, atol=1e-5)
        adapter.layers(model)[1].attn.window = None  # treat the local layer as global: the output changes
        assert not torch.allclose(layerwise(), ref, atol=1e-4)
        adapter.layers(model)[1].attn.window = 4
    # keep_layers_ (latency sub-models) keeps each layer's type, in the config too (5.x builds masks per type).
    sub = adapter.keep_layers_(clone_model(model), [1])
    assert sub.config.num_hidden_layers == 1 and adapter.layers(sub)[0].attn.window == 4
    if getattr(sub.config, "layer_types", None) is not None:
        assert sub.config.layer_types == ["sliding_attention"]


def test_modernbert_recovery_uses_the_pre_layernorm_residual():
    """Pre-LN: the FFN sublayer's residual is mlp_norm's input. The teacher-target FFN error recorded by recovery
    for layer 0 equals the directly measured squared difference of the layer outputs (student with the fitted head
    scales, unscaled kept neurons; teacher unpruned), which only holds with the right residual."""
    from edgeprune.task.data import TextDataset
    from edgeprune.recovery.scale import fit_recovery, recovery_scales, scale_hooks
    from edgeprune.testing import tiny_tokenizer

    model = _model("modernbert")
    adapter = get_adapter(model)
    assert adapter.ffn_residual(model, 1) is adapter.layers(model)[1].mlp_norm
    import tempfile

    tok = tiny_tokenizer(tempfile.mkdtemp())
    rng = random.Random(0)
    words = "the movie good bad great awful fun boring love hate not very".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(48)]
    data = TextDataset(texts, [0] * len(texts))
    plan = HeadPlan((H,) * L, ((1,), (0, 1), (2, 3), (0,))).with_ffn(BS, (4,) * L, ((0, 2), (1,), (3,), (0,)))
    rec = fit_recovery(model, tok, data, plan, target="teacher", batch_size=16, max_length=32)
    heads, _ = recovery_scales(rec)
    width = 4 * BS
    ffn_before = torch.zeros(L, width)
    for i, kept in enumerate(plan.ffn_kept):
        for b in kept:
            ffn_before[i, b * BS:(b + 1) * BS] = 1.0
    enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    enc.pop("token_type_ids", None)
    real = enc["attention_mask"].bool()
    outs = {}
    handle = adapter.layers(model)[0].register_forward_hook(
        lambda m, a, o: outs.__setitem__("y", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            model(**enc)
            teacher = outs["y"]
            with scale_hooks(model, heads, ffn_before):
                model(**enc)
            student = outs["y"]
    finally:
        handle.remove()
    err = float(((student - teacher)[real] ** 2).sum()) / int(real.sum())
    assert err > 0 and err == pytest.approx(rec.layers[0]["ffn"]["error_before"], rel=1e-3)


def test_modernbert_rope_scaling_is_refused():
    from edgeprune.testing import tiny_config

    config = tiny_config("modernbert")
    if isinstance(getattr(config, "rope_parameters", None), dict):
        config.rope_parameters["full_attention"]["rope_type"] = "linear"
    else:
        config.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(UnsupportedModelError, match="rotary scaling"):
        get_adapter(config)


# ---- MPNet ----------------------------------------------------------------------------------------------------------
def test_mpnet_shared_position_bias_follows_the_kept_heads():
    """One relative-position table (buckets x H) serves all layers; each pruned layer reads the channels of its
    own original heads, so the table keeps every head and pruning twice composes."""
    model = _model("mpnet")
    adapter = get_adapter(model)
    inputs = _inputs(seq=40)
    assert _fusable_equals_hf(model, inputs) <= 1e-5
    table = model.base_model.encoder.relative_attention_bias.weight.detach().clone()
    reference = clone_model(model)
    _prune_checks(model, HEADS_ONLY, inputs)
    for layer, kept in zip(adapter.layers(model), HEADS_ONLY.kept):
        if kept:
            assert layer.attention.attn.head_index.tolist() == list(kept)
    assert torch.equal(model.base_model.encoder.relative_attention_bias.weight, table)
    second = HeadPlan((H,) * L, ((3,), (1, 3), (), (2,)))
    _prune_checks(model, second, inputs)
    with torch.no_grad(), get_adapter(reference).mask_heads(reference, second):
        expected = reference(**inputs).logits
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-5)
    # a wrong channel choice would be caught: reading the first heads' channels changes the logits
    adapter.layers(model)[3].attention.attn.head_index = torch.tensor([0])
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, expected, atol=1e-4)


# ---- ALBERT ---------------------------------------------------------------------------------------------------------
def test_albert_is_refused_naming_the_shared_layers():
    from transformers import AlbertConfig

    with pytest.raises(UnsupportedModelError, match="cannot be pruned per layer: ALBERT shares one set"):
        get_adapter(AlbertConfig())
    with pytest.raises(UnsupportedModelError, match="cross-layer parameter sharing"):
        get_adapter("albert")


# ---- latency-table sub-models ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", NEW)
def test_lut_sub_models_export_and_match_torch(family, tmp_path):
    """The per-layer latency table's sub-models (embeddings+classifier, one layer with k heads, one layer with a
    narrower FFN) export and compute what the truncated, pruned PyTorch model computes."""
    from edgeprune.onnx.export import check_parity
    from edgeprune.latency.table import export_lut_models

    model = tiny_model(family, num_layers=2, num_heads=2, hidden=32)
    manifest = json.loads(export_lut_models(model, "raspberrypi4", tmp_path, precision="fp32").read_text())
    files = manifest["files"]
    assert files["layers"] == [[f"layer{i:02d}_k{k:02d}.onnx" for k in range(3)] for i in range(2)]
    adapter = get_adapter(model)
    for i, k in [(0, 0), (1, 1), (1, 2)]:
        sub = adapter.keep_layers_(clone_model(model), [i])
        adapter.prune_heads_(sub, HeadPlan((2,), (tuple(range(k)),)))
        assert check_parity(sub, tmp_path / files["layers"][i][k], shapes=[(1, 8), (2, 17)]) < 1e-4
    rest = adapter.keep_layers_(clone_model(model), [])
    assert check_parity(rest, tmp_path / files["rest"], shapes=[(2, 9)]) < 1e-4
    ffn_files = [f for f in files["ffn"][0] if f]
    assert ffn_files and all((tmp_path / f).is_file() for f in ffn_files)


# ---- tiny end-to-end build ------------------------------------------------------------------------------------------
WORDS = "the a movie film plot actor story good bad great awful fun boring love hate best worst funny dull".split()


@pytest.mark.slow
@pytest.mark.parametrize("family", NEW)
def test_build_end_to_end_per_family(family, tmp_path):
    """`edgeprune build` (heads + FFN blocks, recovery, INT8, .ort, certification, report) on a 2-layer model."""
    from edgeprune.pipeline import BuildConfig, build
    from edgeprune.testing import tiny_tokenizer

    model = tiny_model(family, num_layers=2, num_heads=4, hidden=32)
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer(tmp_path / "model")
    rng = random.Random(0)
    rows = ["text,label"] + [f"{' '.join(rng.choices(WORDS, k=rng.randint(3, 9)))},{rng.randint(0, 1)}"
                             for _ in range(240)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    cfg = BuildConfig(profile="x86-64", model=str(tmp_path / "model"), data=str(tmp_path / "data.csv"),
                      out=str(tmp_path / "out"), max_drop_pts=60.0, max_evaluations=12, measure_rounds=10,
                      ffn_block_size=16)
    t0 = time.perf_counter()
    report = build(cfg, progress=False)
    wall = time.perf_counter() - t0
    out = tmp_path / "out"
    for name in ("report.json", "plan.json", "bundle/model.onnx", "bundle/model.ort", "bundle/edgeprune.json"):
        assert (out / name).is_file(), name
    assert report["model"]["family"] == family and report["heads"]["total"] == 8
    assert report["ffn"] is not None and report["ffn"]["blocks_total"] == 2 * 4
    assert report["accuracy"]["drop_upper_bound_pts"] <= report["accuracy"]["max_drop_pts"]
    meta = json.loads((out / "bundle" / "edgeprune.json").read_text())
    assert meta["checks"]["parity_fp32_max_abs_diff"] < 1e-4
    print(f"BUILD_TIME {family} {wall:.1f}s")  # the docs table's tiny-build times come from here (pytest -s)
