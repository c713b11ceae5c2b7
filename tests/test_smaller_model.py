"""benchmarks/smaller_model.py: a smoke run on a tiny model and tiny splits (first-k students, a build row)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

FAKE_VERSIONS = {"optimum": "9.9.9-fake", "optimum-onnx": "0.0.1-fake", "transformers": "4.57.6", "onnxruntime": "1"}


def _args(**kw):
    base = {"build": [], "layers": [1, 2], "epochs": 1, "seed": 0, "max_drop": 1.0, "profile": "raspberrypi4",
            "rounds": 2, "reps": 1, "real_texts": 10, "wait": 0, "optimum": True, "optimum_python": None}
    return argparse.Namespace(**{**base, **kw})


def _fake_optimum(calls):
    """Stands in for the subprocess (tests/test_optimum_peer.py runs the real one): checks what the benchmark hands
    over (an FP32 file with no integer ops, the dense model's config) and quantizes with ORT's quantize_dynamic."""
    def fake(fp32, config_dir_or_model, out_dir, python=None):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        ops = {n.op_type for n in onnx.load(str(fp32)).graph.node}
        assert "MatMul" in ops and "MatMulInteger" not in ops and "DynamicQuantizeLinear" not in ops
        calls.append({"fp32": Path(fp32), "layers": config_dir_or_model.config.num_hidden_layers, "python": python})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        out = Path(out_dir) / "model_quantized.onnx"
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
        return {"status": "ok", "path": str(out), "versions": FAKE_VERSIONS, "python": "/fake/tf457/python"}
    return fake


def test_smoke_run_scores_and_times_every_student(tiny_task, monkeypatch):
    import benchmarks.recovery_calibration as rc
    import benchmarks.smaller_model as sm

    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: tiny_task)  # bench_setup's module
    calls: list = []
    monkeypatch.setattr(sm, "quantize_with_optimum", _fake_optimum(calls))
    args = _args(optimum_python="/some/python")
    rec = sm.run(args)
    rows = {r["name"]: r for r in rec["rows"]}
    assert list(rows)[:2] == ["dense ORT INT8", sm.OPTIMUM_ROW]
    assert rows["dense ORT INT8"]["speedup_vs_dense_int8"] == pytest.approx(1.0)
    # the optimum row: the dense model's stock FP32 export went in, --optimum-python was forwarded, and the INT8 file
    # that came out was certified and timed like every other row
    assert len(calls) == 1 and calls[0]["layers"] == 4 and calls[0]["python"] == "/some/python"
    opt = rows[sm.OPTIMUM_ROW]
    assert opt["kind"] == "optimum" and opt["versions"] == FAKE_VERSIONS and opt["path"] != rows["dense ORT INT8"]["path"]
    assert {"accuracy", "bound_pts", "certified", "n_worse", "speedup_vs_dense_int8", "real_speedup_vs_dense_int8"} \
        <= set(opt) and opt["speedup_vs_dense_int8"] > 0 and opt["n_worse"] + opt["n_better"] <= 40
    one = rows["first 1 of 4 layers, distilled"]
    assert one["distill_steps"] == 3  # 1 epoch over 96 fine-tune + search texts, batch 32: never the certify split
    assert all(0 <= r["accuracy"] <= 1 and r["n_worse"] + r["n_better"] <= 40 for r in rows.values())
    import onnx

    graph = onnx.load(one["path"]).graph
    assert sum(n.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node) < sum(
        n.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul")
        for n in onnx.load(rows["dense ORT INT8"]["path"]).graph.node)  # the student really is smaller
    with pytest.raises(SystemExit, match="has 4 layers"):
        sm.run(argparse.Namespace(**{**vars(args), "layers": [4], "optimum": False}))
    md = sm.markdown(rec)
    assert "| first 2 of 4 layers, distilled |" in md and f"| {sm.OPTIMUM_ROW} |" in md
    assert "optimum 9.9.9-fake, optimum-onnx 0.0.1-fake, transformers 4.57.6" in md  # the optimum env's versions
    assert f"onnxruntime {rec['onnxruntime']}" in md and "--no-optimum" not in rec["command"]
    json.dumps(rec)


def test_optimum_row_left_out_or_reported(tiny_task, monkeypatch):
    """--no-optimum never calls optimum; an unavailable optimum is no row, but its reason is in the report."""
    import benchmarks.recovery_calibration as rc
    import benchmarks.smaller_model as sm

    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: tiny_task)

    def never(*a, **k):
        raise AssertionError("--no-optimum must not run optimum")

    monkeypatch.setattr(sm, "quantize_with_optimum", never)
    rec = sm.run(_args(layers=[], optimum=False))
    assert [r["name"] for r in rec["rows"]] == ["dense ORT INT8"] and rec["command"].endswith("--no-optimum")
    assert "skipped (--no-optimum)" in sm.markdown(rec)
    monkeypatch.setattr(sm, "quantize_with_optimum", lambda *a, **k: {"status": "not available",
                                                                       "detail": "no interpreter with optimum: tried X"})
    rec = sm.run(_args(layers=[]))
    assert [r["name"] for r in rec["rows"]] == ["dense ORT INT8"] and rec["optimum"]["status"] == "not available"
    assert f"{sm.OPTIMUM_ROW}: not available (no interpreter with optimum: tried X)" in sm.markdown(rec)
