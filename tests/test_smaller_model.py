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
    import benchmarks.smaller_model as sm

    base = {**vars(sm.parser().parse_args([])), "layers": [1, 2], "epochs": 1, "rounds": 2, "reps": 1,
            "real_texts": 10, "wait": 0}
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


# ---- the uniformly thinned students ----------------------------------------------------------------------------------
BLOCK = 16  # the tiny models' FFN is 64 wide: 4 blocks of 16 per layer (4 layers x 4 heads)


def test_uniform_plan_keeps_the_largest_norms_and_the_same_count_in_every_layer():
    import torch
    from test_recovery import tiny_model

    import benchmarks.smaller_model as sm
    from edgeprune.adapters import get_adapter

    model = tiny_model("bert")
    adapter = get_adapter(model)
    d = adapter.head_size(model)
    with torch.no_grad():  # plant the answer: layer 0's head 1 and layer 2's FFN block 3 silent, head 3 loud
        adapter.attention_output(model, 0).weight[:, 1 * d:2 * d] = 0.0
        adapter.attention_output(model, 0).weight[:, 3 * d:4 * d] *= 50.0
        adapter.ffn_output(model, 2).weight[:, 3 * BLOCK:4 * BLOCK] = 0.0
    heads, blocks = sm.magnitude_scores(model, BLOCK)
    assert len(heads) == 16 and len(blocks) == 16 and heads[(0, 1)] == 0.0 and blocks[(2, 3)] == 0.0
    plan = sm.uniform_plan((heads, blocks), (4,) * 4, (4,) * 4, BLOCK, 0.5, 0.25)
    assert plan.kept_counts == (2, 2, 2, 2) and plan.ffn_kept_counts == (3, 3, 3, 3)
    assert 1 not in plan.kept[0] and 3 in plan.kept[0] and 3 not in plan.ffn_kept[2]
    for layer in range(4):  # every kept unit outscores every removed one of its layer
        gone_h = [heads[(layer, h)] for h in range(4) if h not in plan.kept[layer]]
        gone_b = [blocks[(layer, b)] for b in range(4) if b not in plan.ffn_kept[layer]]
        assert min(heads[(layer, h)] for h in plan.kept[layer]) >= max(gone_h)
        assert min(blocks[(layer, b)] for b in plan.ffn_kept[layer]) >= max(gone_b)
    pruned = adapter.prune_heads_(model, plan)
    with pytest.raises(ValueError, match="unpruned"):
        sm.magnitude_scores(pruned, BLOCK)


def test_matched_fractions_reproduce_a_builds_unit_count():
    import benchmarks.smaller_model as sm

    def report(heads_removed, blocks_removed, ffn=True):
        return {"heads": {"removed": heads_removed, "total": 72},
                "ffn": {"blocks_removed": blocks_removed, "blocks_total": 72, "block_size": 128} if ffn else None}

    # 36 heads + 24 blocks of 6 layers x 12: 6 heads and 4 blocks per layer, exactly the build's totals
    fh, fb, bs = sm.shipped_fractions(report(36, 24))
    assert (6 * sm.per_layer_removed(fh, 12), 6 * sm.per_layer_removed(fb, 12), bs) == (36, 24, 128)
    # d-s0's 46 + 38 do not divide by 6: the nearest uniform counts, 8 + 6 per layer (48 + 36, the same 84 units)
    fh, fb, _ = sm.shipped_fractions(report(46, 38))
    assert (sm.per_layer_removed(fh, 12), sm.per_layer_removed(fb, 12)) == (8, 6)
    assert sm.per_layer_removed(7 / 12, 12) == 7 and sm.per_layer_removed(0.5, 12) == 6
    assert sm.shipped_fractions(report(24, 0, ffn=False)) == (24 / 72, 0.0, None)  # a heads-only build
    specs = sm.thin_specs([0.5], [("dense-build", report(0, 0)), ("b", report(36, 24))], 128)
    assert [s["matched_to"] for s in specs] == [[], [{"build": "b", "heads_removed": 36, "ffn_blocks_removed": 24}]]


def _fake_build(folder: Path, onnx_path: Path, *, heads_removed: int, blocks_removed: int, settings: dict,
                certify_n: int = 40, block: int = BLOCK) -> Path:
    """A finished build folder as smaller_model reads it: report.json (shipped plan, accuracy, settings, splits) and
    bundle/model.onnx (here the dense INT8 file: only its timing is read)."""
    import shutil

    (folder / "bundle").mkdir(parents=True)
    shutil.copy(onnx_path, folder / "bundle" / "model.onnx")
    report = {"accuracy": {"final": 0.5, "drop_upper_bound_pts": 0.9, "certified": True},
              "heads": {"removed": heads_removed, "total": 16},
              "ffn": {"blocks_removed": blocks_removed, "blocks_total": 16, "block_size": block},
              "recovery": {"recovery": "distill"}, "settings": settings, "data": {"certify": {"size": certify_n}}}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def _dense_int8(model, folder: Path) -> Path:
    from edgeprune.adapters import get_adapter
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.profiles import load_profile

    return compile_plan(model, get_adapter(model).full_plan(model), load_profile("raspberrypi4").quant, folder).onnx


def test_thinned_students_are_refitted_on_the_search_split_distilled_and_matched(tiny_task, monkeypatch, tmp_path):
    """--thin 0.5 and a student per build: refit (on the search split only), pruned, distilled like the first-k
    students, compiled, scored and timed; two builds with the same counts share one student, and a build whose
    counts equal --thin 0.5's shares that row."""
    import benchmarks.recovery_calibration as rc
    import benchmarks.smaller_model as sm
    import edgeprune.recovery.refit as refit

    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: tiny_task)
    fitted: list = []
    real_refit = refit.refit_plan

    def spy(model, tok, dataset, plan, config=None, **kw):
        fitted.append((list(dataset.texts), plan, config))
        return real_refit(model, tok, dataset, plan, config, **kw)

    monkeypatch.setattr(refit, "refit_plan", spy)
    dense = _dense_int8(tiny_task.model, tmp_path / "dense")
    default = {"model": None, "data": None}
    b1 = _fake_build(tmp_path / "b1", dense, heads_removed=8, blocks_removed=4, settings=default)
    b2 = _fake_build(tmp_path / "b2", dense, heads_removed=8, blocks_removed=4, settings=default)
    b3 = _fake_build(tmp_path / "b3", dense, heads_removed=8, blocks_removed=8, settings=default)
    rec = sm.run(_args(layers=[1], thin=[0.5], ffn_block_size=BLOCK, optimum=False, build=[str(b1), str(b2), str(b3)]))
    thinned = [r for r in rec["rows"] if r["kind"] == "thinned"]
    assert len(thinned) == 2 and len(fitted) == 2  # 0.5 = b3's counts; b1 = b2
    half, matched = thinned
    assert half["thin"] == [0.5] and [m["build"] for m in half["matched_to"]] == ["b3"]
    assert [m["build"] for m in matched["matched_to"]] == ["b1", "b2"] and matched["thin"] == []
    assert half["heads_removed_per_layer"] == [2] * 4 and half["ffn_blocks_removed_per_layer"] == [2] * 4
    assert matched["heads_removed_per_layer"] == [2] * 4 and matched["ffn_blocks_removed_per_layer"] == [1] * 4
    assert (matched["heads_removed"], matched["ffn_blocks_removed"]) == (8, 4)  # = b1's shipped counts
    heads, blocks = sm.magnitude_scores(tiny_task.model, BLOCK)
    expected = sm.uniform_plan((heads, blocks), (4,) * 4, (4,) * 4, BLOCK, 0.5, 0.25)
    assert matched["plan"] == expected.to_dict()
    for texts, plan, config in fitted:  # the build's refit: on the search split (never certify), its fit size
        assert texts == list(tiny_task.search.texts) and config.max_examples == rec["refit_examples"] == 1024
    assert {p.to_dict()["ffn"]["block_size"] for _, p, _ in fitted} == {BLOCK}
    first = next(r for r in rec["rows"] if r["kind"] == "smaller")
    for row in thinned:
        assert row["recovery"]["start"] == "the full least-squares refit"
        assert row["recovery"]["refit"]["fitted_sublayers"] > 0 and row["recovery"]["surgery_max_abs_diff"] < 1e-3
        assert row["distill_steps"] == first["distill_steps"] == 3  # the same distillation as the first-k students
        assert 0 <= row["accuracy"] <= 1 and row["n_worse"] + row["n_better"] <= 40
        assert row["p50_ms"] > 0 and row["speedup_vs_dense_int8"] > 0 and row["real_speedup_vs_dense_int8"] > 0
        assert row["path"] not in (first["path"], str(dense))
    md = sm.markdown(rec)
    assert f"| {matched['name']} | 8 + 4 |" in md and "uniformly thinned to b1's, b2's unit count" in md
    assert "b1 removed 8 + 4, its thinned student 8 + 4" in md and "uniformly thinned 50% = to b3's unit count" in md
    assert "--thin 0.5" in rec["command"] and f"--ffn-block-size {BLOCK}" in rec["command"]
    json.dumps(rec)
    # --no-thin-match: only the --thin students
    rec = sm.run(_args(layers=[], thin=[0.5], ffn_block_size=BLOCK, optimum=False, build=[str(b1)],
                       thin_match=False, real_texts=2, rounds=1))
    assert [r["thin"] for r in rec["rows"] if r["kind"] == "thinned"] == [[0.5]]
    assert "--no-thin-match" in rec["command"]


# ---- --task banking77 ----------------------------------------------------------------------------------------------
def _tiny_multiclass_task(tmp_path: Path, n_labels: int = 5, rows: int = 150):
    """A stand-in for the Banking77 task: a tiny 4-layer BERT with a 5-way head named like intents, and a
    ``dev_test.csv`` of ``rows`` labelled queries, as ``banking77_task`` returns them."""
    import csv
    import random
    import types

    from test_bundle import WORDS, word_tokenizer

    from edgeprune.testing import randomize_biases_, tiny_model

    model = randomize_biases_(tiny_model("bert", num_labels=n_labels))
    model.config.id2label = {i: f"intent_{i}" for i in range(n_labels)}
    model.config.label2id = {f"intent_{i}": i for i in range(n_labels)}
    folder = tmp_path / "banking77-task"
    model.save_pretrained(folder / "model")
    word_tokenizer(folder / "model")
    rng = random.Random(7)
    with open(folder / "dev_test.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["text", "label", "split"])
        for i in range(rows):
            out.writerow([" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))), f"intent_{i % n_labels}",
                          "dev" if i < rows // 3 else "test"])
    return types.SimpleNamespace(folder=folder, model_dir=folder / "model", data_csv=folder / "dev_test.csv",
                                 built=False), model


def test_banking77_scores_on_the_builds_split_and_distils_on_its_search_split(tmp_path, monkeypatch):
    import benchmarks.recovery_calibration as rc
    import benchmarks.smaller_model as sm
    import edgeprune.task.banking77 as b77
    from edgeprune.pipeline import BuildConfig, split_user_data

    task, model = _tiny_multiclass_task(tmp_path)
    monkeypatch.setattr(b77, "banking77_task", lambda **kw: task)

    def never(minutes):
        raise AssertionError("--task banking77 must not wait for the default task")

    monkeypatch.setattr(rc, "wait_for_task", never)
    # the build's split (seed 1, half certifies), which the build's default (seed 0, 0.6) would not reproduce
    cfg = BuildConfig(model=str(task.model_dir), data=str(task.data_csv), seed=1, certify_fraction=0.5)
    search, certify, _ = split_user_data(cfg, dict(model.config.label2id))
    default_split = split_user_data(BuildConfig(model=str(task.model_dir), data=str(task.data_csv)),
                                    dict(model.config.label2id))
    assert len(default_split[1]) != len(certify)
    settings = {"model": str(task.model_dir), "data": str(task.data_csv), "seed": 1, "certify_fraction": 0.5}
    build = _fake_build(tmp_path / "bk-s1", _dense_int8(model, tmp_path / "dense"), heads_removed=4, blocks_removed=8,
                        settings=settings, certify_n=len(certify))
    written: list = []
    argv = ["--task", "banking77", "--build", str(build), "--layers", "2", "--epochs", "1", "--no-optimum",
            "--ffn-block-size", str(BLOCK), "--rounds", "2", "--reps", "1", "--real-texts", "10"]
    assert sm.main(argv, write=lambda name, rec, md: written.append((name, rec, md))) == 0
    (name, rec, md), = written
    assert name == "smaller_model-banking77" and rec["task"] == "banking77" and rec["num_labels"] == 5
    assert rec["certify_n"] == len(certify) and rec["distill_n"] == len(search)
    assert rec["task_data"]["split"]["seed"] == 1 and rec["task_data"]["distill"] == "the build's search split"
    first = next(r for r in rec["rows"] if r["kind"] == "smaller")
    assert first["distill_steps"] == -(-len(search) // 32)  # one epoch over the build's search split
    matched = next(r for r in rec["rows"] if r["kind"] == "thinned")
    assert (matched["heads_removed"], matched["ffn_blocks_removed"]) == (4, 8)
    assert [r["name"] for r in rec["rows"]][:2] == ["dense ORT INT8", "edgeprune build bk-s1"]
    assert all(0 <= r["accuracy"] <= 1 and r["n_worse"] + r["n_better"] <= len(certify) and r["p50_ms"] > 0
               for r in rec["rows"] if r["kind"] != "edgeprune")  # 5 labels scored and timed on every row
    assert md.startswith("# The hand-made smaller model vs edgeprune on Banking77 (5 intents)")
    assert "seed 1, certify fraction 0.5" in md and rec["command"].startswith(
        "python -m benchmarks.smaller_model --task banking77 --build ")
    # builds of two splits, or a build whose certify split is not the one reproduced, are refused
    other_seed = {"settings": {**settings, "seed": 2}, "data": {"certify": {"size": len(certify)}}}
    with pytest.raises(SystemExit, match="split --data differently"):
        sm.split_config(task, [sm.read_build(build), other_seed], 0)
    with pytest.raises(SystemExit, match=f"the split reproduced here {len(certify)}$"):
        sm.task_data("banking77", task, model, [{**other_seed, "settings": settings, "data": {"certify": {"size": 9}}}],
                     0)
    # a build of another task is refused, both ways
    with pytest.raises(SystemExit, match="not of the default task"):
        sm.run(_args(build=[str(build)]))
    other = _fake_build(tmp_path / "default-build", build / "bundle" / "model.onnx", heads_removed=4,
                        blocks_removed=8, settings={"model": None, "data": None})
    with pytest.raises(SystemExit, match="not of the banking77 task"):
        sm.run(_args(task="banking77", build=[str(other)]))
