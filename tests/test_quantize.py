"""INT8 quantization and ORT-format conversion of fused, pruned tiny models of every family."""

from __future__ import annotations

import numpy as np
import dataclasses

import pytest

from edgeprune.profiles import QuantPreset

from edgeprune.plan import HeadPlan
from edgeprune.testing import TINY_FAMILIES, tiny_model

UNEVEN = HeadPlan((4, 4, 4, 4), ((0, 2, 3), (), (1,), (0, 1, 2, 3)))


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """Per family: (pruned model, fused FP32 ONNX path, scratch dir), built once for the module."""
    from edgeprune.adapters import get_adapter
    from edgeprune.onnx.export import export_onnx, optimize_onnx

    cache = {}

    def get(model_type: str):
        if model_type not in cache:
            d = tmp_path_factory.mktemp(f"quant-{model_type}")
            model = tiny_model(model_type)
            adapter = get_adapter(model)
            adapter.prune_heads_(model, UNEVEN)
            adapter.make_fusable_(model)
            expected = UNEVEN.kept_counts if adapter.ort_attention_fusion else None
            path = optimize_onnx(export_onnx(model, d / "raw.onnx"), d / "fused.onnx", expected_heads=expected)
            cache[model_type] = (model, path, d)
        return cache[model_type]

    return get


def _initializer_bytes(path) -> int:
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_dynamic_int8_runs_within_tolerance(fused, model_type):
    from edgeprune.onnx.export import check_parity, onnx_size_bytes
    from edgeprune.onnx.quantize import INT8_LOGIT_ATOL, count_quantizable, count_quantized, quantize_onnx

    model, path, d = fused(model_type)
    q = quantize_onnx(path, d / "int8.onnx")  # default preset: dynamic, S8, per-channel
    counts = count_quantized(q)
    # Every layer that still has heads keeps its fused attention, now as QAttention; every weight MatMul is INT8.
    # Families without an ORT attention pattern have q/k/v (Wqkv) as plain weight MatMuls, quantized too.
    from edgeprune.adapters import get_adapter

    if get_adapter(model_type).ort_attention_fusion:
        assert counts.get("QAttention") == 3
    else:
        assert "QAttention" not in counts and counts.get("MatMulInteger", 0) >= 3 * 2
    assert sum(counts.values()) >= count_quantizable(path)
    # INT8 runs at all shapes and stays within the documented tolerance of PyTorch FP32.
    assert check_parity(model, q, atol=INT8_LOGIT_ATOL) < INT8_LOGIT_ATOL
    if get_adapter(model_type).ort_attention_fusion:
        assert onnx_size_bytes(q) < 0.75 * onnx_size_bytes(path)
    else:
        # The tiny graphs of these families are mostly nodes (relative positions, rotary, window masks), not
        # weights, so compare the weights themselves: INT8 weight MatMuls are a quarter of their FP32 size.
        assert _initializer_bytes(q) < 0.6 * _initializer_bytes(path)


@pytest.mark.parametrize("weight_type,per_channel", [("u8", False), ("s8", False)])
def test_other_dynamic_presets(fused, weight_type, per_channel):
    from edgeprune.onnx.export import check_parity
    from edgeprune.onnx.quantize import INT8_LOGIT_ATOL, count_quantized, quantize_onnx

    model, path, d = fused("bert")
    preset = dataclasses.replace(QuantPreset.default_int8(), weight_type=weight_type, per_channel=per_channel)
    q = quantize_onnx(path, d / f"int8-{weight_type}-{per_channel}.onnx", preset)
    assert count_quantized(q).get("QAttention") == 3
    assert check_parity(model, q, atol=INT8_LOGIT_ATOL) < INT8_LOGIT_ATOL


def test_static_qdq_option(fused):
    from edgeprune.onnx.export import random_feeds, check_parity, input_names_for
    from edgeprune.onnx.quantize import count_quantized, quantize_qdq

    model, path, d = fused("distilbert")
    feeds = [random_feeds(model.config, input_names_for(model), 4, 16, seed=i) for i in range(4)]
    q = quantize_qdq(path, d / "qdq.onnx", feeds)
    counts = count_quantized(q)
    assert counts.get("QDQ:Attention") == 3 and counts.get("QDQ:MatMul", 0) >= 8
    # Static QDQ is coarser than dynamic (calibrated on 4 random batches); it must still run and stay bounded.
    assert check_parity(model, q, atol=0.5) < 0.5


def test_quantize_rejects_bad_arguments(fused):
    from edgeprune.onnx.quantize import quantize_onnx, quantize_qdq

    _, path, d = fused("bert")
    with pytest.raises(ValueError, match="weight_type"):
        quantize_onnx(path, d / "x.onnx", dataclasses.replace(QuantPreset.default_int8(), weight_type="s4"))
    with pytest.raises(ValueError, match="dynamic preset"):
        quantize_onnx(path, d / "x.onnx", QuantPreset.default_int8().for_precision("fp32"))
    with pytest.raises(ValueError, match="calibration"):
        quantize_qdq(path, d / "x.onnx", [])


def test_ort_format_loads_and_matches(fused):
    from edgeprune.onnx.export import random_feeds, input_names_for, ort_session
    from edgeprune.onnx.ort_format import to_ort_format
    from edgeprune.onnx.quantize import quantize_onnx

    model, path, d = fused("roberta")
    q = quantize_onnx(path, d / "model.onnx")
    out = to_ort_format(q, d / "ort")
    assert out["ort"].name == "model.ort" and out["ort"].stat().st_size > 0
    ops = out["required_operators"].read_text()
    # The reduced-build config names the contrib INT8 kernels the model needs.
    assert "com.microsoft" in ops and "QAttention" in ops
    feed = random_feeds(model.config, input_names_for(model), 2, 9)
    a = ort_session(out["ort"]).run(["logits"], feed)[0]
    b = ort_session(q).run(["logits"], feed)[0]
    assert a.shape == (2, 2)
    assert np.max(np.abs(a - b)) < 1e-3
    # The tool's side files never land next to the input.
    assert sorted(p.name for p in d.iterdir() if p.suffix == ".ort") == []


def test_int8_keeps_inputs_when_all_heads_removed(tmp_path):
    from edgeprune.adapters import get_adapter
    from edgeprune.onnx.export import export_onnx, graph_input_names, optimize_onnx
    from edgeprune.onnx.quantize import quantize_onnx

    model = tiny_model("bert", num_layers=2)
    get_adapter(model).prune_heads_(model, HeadPlan((4, 4), ((), ())))
    f = optimize_onnx(export_onnx(model, tmp_path / "m.onnx"), tmp_path / "f.onnx", expected_heads=[0, 0])
    q = quantize_onnx(f, tmp_path / "q.onnx")
    # The mask is unused but kept, so every bundle has the same signature for the app that feeds it.
    assert graph_input_names(q) == ["input_ids", "attention_mask", "token_type_ids"]
