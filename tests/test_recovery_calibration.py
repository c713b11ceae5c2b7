"""benchmarks/recovery_calibration.py: a smoke run on a tiny model and tiny splits (every method, every column)."""

from __future__ import annotations

import argparse
import json
import types

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from test_bundle import word_tokenizer  # noqa: E402
from test_recovery import dataset, tiny_model  # noqa: E402


def test_smoke_run_writes_every_column(tmp_path, monkeypatch):
    import benchmarks.recovery_calibration as rc

    model, tok = tiny_model("bert"), word_tokenizer(tmp_path / "tok")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")

    class Task:  # the certify split is only read by the scoring, never by distillation (see test_distill.py)
        model_dir, finetune, search, certify = tmp_path / "model", dataset(48, 1), dataset(48, 2), dataset(40, 3)

    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: Task())
    monkeypatch.setattr(rc, "BLOCK", 8)  # tiny FFN width 64
    args = argparse.Namespace(fractions=[0.5], profile="raspberrypi4", max_length=32, fit_examples=48,
                              importance_examples=48, distill_epochs=1, distill_seconds=None, control=True, schedule="linear",
                              ce_weight=0.5, temperature=2.0,
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
