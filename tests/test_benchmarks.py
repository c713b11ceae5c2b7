"""benchmarks.run_all: FLOP counting, profiler grouping, and a --quick smoke run writing JSON, Markdown and plot."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks.bench_tools import classify_node, encoder_flops  # noqa: E402


def test_encoder_flops_counts_heads_attention_and_ffn():
    # One layer, hidden 8, 2 heads of 4, FFN 16, seq 3, 2 labels, every term by hand.
    full = encoder_flops([2], head_size=4, hidden=8, intermediate=16, seq_len=3, num_labels=2)
    assert full["attention_proj"] == 2 * 3 * 8 * 3 * 8 + 2 * 3 * 8 * 8
    assert full["attention_matmul"] == 2 * 3 * 3 * 8 * 2
    assert full["ffn"] == 2 * 3 * 8 * 16 * 2
    assert full["head"] == 2 * 8 * 8 + 2 * 8 * 2
    assert full["total"] == sum(v for k, v in full.items() if k != "total")
    # Removing every head leaves the FFN and the classifier head; batch scales everything.
    none = encoder_flops([0], head_size=4, hidden=8, intermediate=16, seq_len=3)
    assert none["attention_proj"] == none["attention_matmul"] == 0 and none["ffn"] == full["ffn"]
    assert encoder_flops([2], head_size=4, hidden=8, intermediate=16, seq_len=3, batch=2)["total"] == 2 * full["total"]


@pytest.mark.parametrize(
    ("name", "op", "group"),
    [
        ("Attention_0_quant", "QAttention", "attention"),
        ("/model/bert/encoder/layer.0/attention/self/query/MatMul_quant", "MatMulIntegerToFloat", "attention"),
        ("/model/bert/encoder/layer.0/attention/output/dense/MatMul_quant", "DynamicQuantizeMatMul", "attention"),
        ("/model/bert/encoder/layer.0/intermediate/dense/MatMul_quant", "DynamicQuantizeMatMul", "ffn"),
        ("/model/bert/encoder/layer.3/output/dense/MatMul_quant", "DynamicQuantizeMatMul", "ffn"),
        ("Gelu_AddBias_0", "BiasGelu", "ffn"),
        ("EmbedLayerNormalization_0_quant", "QEmbedLayerNormalization", "embeddings+classifier"),
        ("/model/bert/embeddings/word_embeddings/Gather", "Gather", "embeddings+classifier"),
        ("/model/classifier/Gemm_MatMul_quant", "DynamicQuantizeMatMul", "embeddings+classifier"),
        ("SkipLayerNorm_AddBias_1", "SkipLayerNormalization", "other"),
        ("/model/bert/encoder/layer.0/attention/output/LayerNorm/LayerNormalization", "LayerNormalization", "other"),
        ("x_QuantizeLinear", "DynamicQuantizeLinear", "other"),
    ],
)
def test_classify_node(name, op, group):
    assert classify_node(name, op) == group


def test_quick_run_writes_json_markdown_and_plot(tmp_path):
    from benchmarks import run_all

    res = run_all.main(["--quick", "--out", str(tmp_path), "--date", "smoke", "--quiet"])
    data = json.loads((tmp_path / "results" / "smoke.json").read_text())
    for key in ("date", "settings", "environment", "gemm", "default_task", "bert_base", "goals", "analysis"):
        assert key in data, key
    assert data["environment"]["loadavg_start"] and data["environment"]["loadavg_by_stage"]
    assert data["gemm"]["fp32"]["gflops"] > 0 and data["gemm"]["int8"]["gflops"] > 0
    rows = {r["key"]: r for r in data["default_task"]["rows"]}
    for key in ("torch_fp32", "ort_fp32", "ort_int8", "ep_int8", "greedy", "oneshot", "astar"):
        assert key in rows, key
    for key in ("ort_fp32", "ort_int8", "ep_int8", "greedy", "oneshot", "astar"):
        r = rows[key]
        assert r["latency"]["p50_ms"] > 0 and r["file_bytes"] > 0 and r["memory"]["session_mib"] > 0
        assert 0.0 <= r["accuracy"]["accuracy"] <= 1.0 and "drop_bound_pts" in r["accuracy"]
        assert r["roofline"]["efficiency_pct"] > 0
    assert rows["ort_fp32"]["latency"]["speedup_vs_ort_fp32"] == pytest.approx(1.0)
    assert rows["astar"]["heads_removed"] >= rows["greedy"]["heads_removed"]  # A* is seeded with greedy's path
    assert rows["astar"]["search"]["evaluations"] <= data["settings"]["max_evals"]
    assert {a["row"] for a in data["default_task"]["lut_accuracy"]} >= {"ep_int8", "astar"}
    shares = data["default_task"]["breakdown"]["astar"]["shares"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert data["default_task"]["optimum_arm64"]["status"] in ("ok", "not installed", "failed")
    assert {r["key"] for r in data["bert_base"]["rows"]} >= {"torch_fp32", "ort_fp32", "ort_int8", "pruned_int8"}
    assert len(data["goals"]) == 4 and all(isinstance(g["reached"], bool) for g in data["goals"])
    md = (tmp_path / "RESULTS.md").read_text()
    assert run_all.TABLE_HEADER in md and "| edgeprune A* + INT8 |" in md and "### Goals" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert data["plot"].startswith("not written")
    else:
        assert (tmp_path / "results" / "smoke.png").stat().st_size > 10_000
    assert res["date"] == "smoke"
