"""ONNX export, parity and ORT Attention fusion on tiny pruned models of every family (uneven plans, 0-head layers)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeprune.errors import VerificationError
from edgeprune.plan import HeadPlan
from edgeprune.testing import TINY_FAMILIES, tiny_model

# Uneven plan with a 0-head layer in the middle: kept heads per layer 3, 0, 1, 4.
UNEVEN = HeadPlan((4, 4, 4, 4), ((0, 2, 3), (), (1,), (0, 1, 2, 3)))
# 0-head first and third layers, one head left elsewhere: kept 0, 2, 0, 1.
SPARSE = HeadPlan((4, 4, 4, 4), ((), (1, 2), (), (3,)))


def _fusable(model_type: str) -> bool:
    """Whether ORT's optimizer fuses the family's attention (not DeBERTa/ModernBERT/MPNet: position terms)."""
    from edgeprune.adapters import get_adapter

    return get_adapter(model_type).ort_attention_fusion


def pruned_model(model_type: str, plan: HeadPlan):
    from edgeprune.adapters import get_adapter

    model = tiny_model(model_type)
    adapter = get_adapter(model)
    adapter.prune_heads_(model, plan)
    adapter.make_fusable_(model)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per family: (pruned model, raw ONNX path, fused ONNX path), built once for the module."""
    from edgeprune.onnx.export import export_onnx, optimize_onnx

    cache = {}

    def get(model_type: str, plan: HeadPlan = UNEVEN):
        key = (model_type, plan.kept)
        if key not in cache:
            d = tmp_path_factory.mktemp(f"export-{model_type}")
            model = pruned_model(model_type, plan)
            raw = export_onnx(model, d / "model.onnx")
            expected = plan.kept_counts if _fusable(model_type) else None
            fused = optimize_onnx(raw, d / "model.fused.onnx", expected_heads=expected)
            cache[key] = (model, raw, fused)
        return cache[key]

    return get


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_export_parity_and_fusion(exported, model_type):
    from edgeprune.onnx.export import FP32_ATOL, check_parity, fused_attention_heads

    model, raw, fused = exported(model_type)
    # The raw graph and the fused graph both match PyTorch at batch 1..3, seq 8..64, with padded masks.
    assert check_parity(model, raw) < FP32_ATOL
    assert check_parity(model, fused) < FP32_ATOL
    # One fused Attention per layer that still has heads, each with that layer's kept count (none for families
    # without an ORT attention pattern: their optimised graph keeps the explicit MatMul/Softmax attention).
    assert fused_attention_heads(fused) == ([3, 1, 4] if _fusable(model_type) else [])


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_inputs_and_dynamic_axes(exported, model_type):
    _, raw, _ = exported(model_type)
    graph = onnx.load(str(raw)).graph
    names = [i.name for i in graph.input]
    # Segment ids only where the family has two segment types (BERT, ELECTRA), as optimum exports them.
    expected = ["input_ids", "attention_mask"] + (["token_type_ids"] if model_type in ("bert", "electra") else [])
    assert names == expected
    assert [o.name for o in graph.output] == ["logits"]
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"], f"{inp.name} has a fixed axis"


def test_sparse_plan_two_zero_head_layers(exported):
    from edgeprune.onnx.export import check_parity, fused_attention_heads

    model, _, fused = exported("bert", SPARSE)
    assert fused_attention_heads(fused) == [2, 1]
    assert check_parity(model, fused, shapes=[(2, 5), (4, 33)]) < 1e-4


def test_all_heads_removed_exports(tmp_path):
    from edgeprune.onnx.export import check_parity, export_onnx, fused_attention_heads, optimize_onnx

    plan = HeadPlan((4, 4, 4, 4), ((), (), (), ()))
    model = pruned_model("distilbert", plan)
    fused = optimize_onnx(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "f.onnx", expected_heads=[0, 0, 0, 0])
    assert fused_attention_heads(fused) == []
    assert check_parity(model, fused) < 1e-4


def test_parity_detects_a_different_model(exported):
    from edgeprune.onnx.export import check_parity
    from edgeprune.task.modeling import clone_model

    model, raw, _ = exported("bert")
    other = clone_model(model)
    import torch

    with torch.no_grad():
        other.classifier.weight.add_(0.5)
    with pytest.raises(VerificationError, match="differ"):
        check_parity(other, raw)


def test_fusion_check_reports_missing_and_wrong_heads(exported, tmp_path):
    from edgeprune.onnx.export import check_fusion, optimize_onnx

    _, raw, fused = exported("roberta")
    missing = check_fusion(raw, [3, 0, 1, 4])  # the unoptimised graph has no fused Attention
    assert not missing["ok"] and "no Attention node was fused" in missing["message"]
    assert check_fusion(fused, [3, 0, 1, 4])["ok"]
    # Wrong per-node num_heads always raises, strict or not.
    with pytest.raises(VerificationError, match="differ from the plan"):
        optimize_onnx(raw, tmp_path / "x.onnx", expected_heads=[1, 0, 3, 4], strict=False)
    # A missing fusion (here: the plan claims a fourth attention layer) raises when strict ...
    with pytest.raises(VerificationError):
        optimize_onnx(raw, tmp_path / "y.onnx", expected_heads=[3, 2, 1, 4], strict=True)
    # ... and is a loud warning otherwise.
    with pytest.warns(RuntimeWarning, match="ATTENTION FUSION MISSING"):
        optimize_onnx(raw, tmp_path / "z.onnx", expected_heads=[3, 2, 1, 4], strict=False)


def test_trace_shape_must_avoid_size_one(tmp_path):
    from edgeprune.onnx.export import export_onnx

    with pytest.raises(ValueError, match=">= 2"):
        export_onnx(tiny_model("bert", num_layers=1), tmp_path / "m.onnx", trace_shape=(1, 8))


def test_export_restores_attention_implementation(tmp_path):
    from edgeprune.onnx.export import export_onnx

    model = tiny_model("bert", num_layers=1)
    before = model.config._attn_implementation
    export_onnx(model, tmp_path / "m.onnx")
    assert model.config._attn_implementation == before


def test_onnx_files_and_size(exported):
    from edgeprune.onnx.export import onnx_files, onnx_size_bytes

    _, raw, _ = exported("bert")
    assert onnx_files(raw) == [raw]  # tiny models are one self-contained file
    assert onnx_size_bytes(raw) == raw.stat().st_size


def test_external_data_round_trip(exported, tmp_path):
    """Large models are saved with external data; onnx_files/onnx_size_bytes account for it and ORT runs it."""
    from edgeprune.onnx.export import onnx_files, onnx_size_bytes, ort_session

    _, raw, _ = exported("bert")
    model = onnx.load(str(raw))
    out = tmp_path / "ext.onnx"
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=64)
    files = onnx_files(out)
    assert [f.name for f in files] == ["ext.onnx", "ext.onnx.data"]
    assert onnx_size_bytes(out) == sum(f.stat().st_size for f in files)
    feed = {"input_ids": np.full((1, 4), 7, np.int64), "attention_mask": np.ones((1, 4), np.int64),
            "token_type_ids": np.zeros((1, 4), np.int64)}
    a = ort_session(out).run(["logits"], feed)[0]
    b = ort_session(raw).run(["logits"], feed)[0]
    assert np.array_equal(a, b)
