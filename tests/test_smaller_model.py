"""benchmarks/smaller_model.py: a smoke run on a tiny model and tiny splits (first-k students, a build row)."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def test_smoke_run_scores_and_times_every_student(tiny_task, monkeypatch):
    import benchmarks.recovery_calibration as rc
    import benchmarks.smaller_model as sm

    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: tiny_task)  # bench_setup's module
    args = argparse.Namespace(build=[], layers=[1, 2], epochs=1, seed=0, max_drop=1.0, profile="raspberrypi4",
                              rounds=2, reps=1, real_texts=10, wait=0)
    rec = sm.run(args)
    rows = {r["name"]: r for r in rec["rows"]}
    assert list(rows)[0] == "dense ORT INT8" and rows["dense ORT INT8"]["speedup_vs_dense_int8"] == pytest.approx(1.0)
    one = rows["first 1 of 4 layers, distilled"]
    assert one["distill_steps"] == 3  # 1 epoch over 96 fine-tune + search texts, batch 32: never the certify split
    assert all(0 <= r["accuracy"] <= 1 and r["n_worse"] + r["n_better"] <= 40 for r in rows.values())
    import onnx

    graph = onnx.load(one["path"]).graph
    assert sum(n.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node) < sum(
        n.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul")
        for n in onnx.load(rows["dense ORT INT8"]["path"]).graph.node)  # the student really is smaller
    with pytest.raises(SystemExit, match="has 4 layers"):
        sm.run(argparse.Namespace(**{**vars(args), "layers": [4]}))
    md = sm.markdown(rec)
    assert "| first 2 of 4 layers, distilled |" in md
    json.dumps(rec)
