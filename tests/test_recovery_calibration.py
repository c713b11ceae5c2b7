"""benchmarks/recovery_calibration.py: a smoke run on a tiny model and tiny splits (every method, every column)."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def test_smoke_run_writes_every_column(tiny_task, monkeypatch):
    import benchmarks.recovery_calibration as rc

    # bench_setup (recovery_calibration) waits for the task; the certify split is only read by the scoring, never by
    # distillation (see test_distill.py)
    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: tiny_task)
    monkeypatch.setattr(rc, "BLOCK", 8)  # tiny FFN width 64
    args = argparse.Namespace(fractions=[0.5], profile="raspberrypi4", max_length=32, fit_examples=48,
                              importance_examples=48, distill_epochs=1, distill_seconds=None, control=True, schedule="linear",
                              ce_weight=0.5, temperature=2.0, hidden_weight=0.0, int8_aware=False, seed=0,
                              rounds=2, reps=1, wait=0)
    rec = rc.run(args)
    row = rec["rows"][0]
    assert set(row["methods"]) == {k for k, _ in rc.METHODS}
    assert row["heads_kept"] == 8 and row["blocks_kept"] == 16
    assert row["methods"]["distill"]["distill"]["examples"] == 96  # fine-tune + search, not certify
    assert all(0 <= m["int8_accuracy"] <= 1 and "fp32_accuracy" in m for m in row["methods"].values())
    assert row["speedup_vs_dense_int8"] > 0 and rec["control"] is not None
    md = rc.markdown(rec)
    assert "| 50% | 8/16, 16/32 |" in md
    json.dumps(rec)


def test_bench_setup_serves_every_benchmark(tiny_task, monkeypatch):
    """One setup for recovery_calibration.run / run_distill_only (free cores) and smaller_model.run (physical)."""
    import torch

    import benchmarks.recovery_calibration as rc
    import edgeprune.search.evaluate as ev

    waited, threads = [], []
    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: waited.append(minutes) or tiny_task)
    monkeypatch.setattr(ev, "free_cores", lambda: 11)
    monkeypatch.setattr(ev, "physical_cores", lambda: 22)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    args = argparse.Namespace(wait=7.5, profile="raspberrypi4")
    s = rc.bench_setup(args)
    task, prof, n, model, tok = s  # unpacks as the callers do
    assert waited == [7.5] and task is tiny_task and prof.name == "raspberrypi4" and n == s.threads >= 1
    assert not model.training and model.config.num_hidden_layers == 4 and tok("good movie")["input_ids"] == [2, 9, 6, 3]
    assert threads == [11]
    rc.bench_setup(args, torch_cores="physical")
    assert threads == [11, 22]
