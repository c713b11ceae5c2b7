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


def test_distill_only_takes_build_plans_and_several_seeds(tiny_task, monkeypatch, tmp_path):
    """``--distill-only --plan OUT --seeds 0 1``: a build's plan.json, one refit, one distillation per seed (the
    seeds give different students), every row carrying its plan, seed and paired counts; the command is recorded."""
    import benchmarks.recovery_calibration as rc
    from edgeprune.adapters import get_adapter

    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: tiny_task)
    adapter = get_adapter(tiny_task.model)
    full = adapter.full_plan(tiny_task.model)
    kept = [list(k)[1:] for k in full.kept]  # one head removed per layer
    plan = {"num_heads": list(full.num_heads), "kept_heads": kept}
    build = tmp_path / "build-a"
    build.mkdir()
    (build / "plan.json").write_text(json.dumps(plan))
    args = argparse.Namespace(fractions=[0.5], profile="raspberrypi4", max_length=32, fit_examples=48,
                              importance_examples=48, distill_epochs=1, schedule="linear", ce_weight=0.5,
                              temperature=2.0, hidden_weight=0.0, int8_aware=False, seed=0, wait=0,
                              plan=[str(build)], seeds=[0, 1])
    rec = rc.run_distill_only(args)
    assert [(r["plan"], r["seed"]) for r in rec["rows"]] == [("build-a", 0), ("build-a", 1)]
    assert all(r["heads_removed"] == len(kept) and r["ffn_blocks_removed"] == 0 for r in rec["rows"])
    assert all(r["int8_n_worse"] + r["int8_n_better"] <= 40 for r in rec["rows"])
    assert all(r["distill"]["examples"] == 96 for r in rec["rows"])  # fine-tune + search, never certify
    assert rec["rows"][0]["distill"]["last_loss"] != rec["rows"][1]["distill"]["last_loss"]
    assert "--plan" in rec["command"] and "--seeds 0 1" in rec["command"]
    json.dumps(rec)


def test_load_plans_refuses_missing_and_duplicate_names(tmp_path):
    import benchmarks.recovery_calibration as rc

    with pytest.raises(SystemExit, match="no plan.json"):
        rc.load_plans([str(tmp_path / "nowhere")])
    for d in ("a", "b"):
        (tmp_path / d / "x").mkdir(parents=True)
        (tmp_path / d / "x" / "plan.json").write_text(json.dumps({"num_heads": [2], "kept_heads": [[0]]}))
    with pytest.raises(SystemExit, match="second plan named 'x'"):
        rc.load_plans([str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x")])
    assert list(rc.load_plans([str(tmp_path / "a" / "x" / "plan.json")])) == ["x"]


def test_plan_and_seeds_need_distill_only():
    import benchmarks.recovery_calibration as rc

    with pytest.raises(SystemExit):
        rc.main(["--plan", "somewhere"])
