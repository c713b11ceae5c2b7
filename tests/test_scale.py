"""benchmarks/scale.py end to end at a tiny size (2 layers x 2 heads, hidden 32): the record's figures are real
measurements that agree with the files the stages wrote, and benchmarks/report.py renders its section and goal."""

from __future__ import annotations

import copy
import csv
import json
import random
import statistics
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("psutil")

from benchmarks import report, scale  # noqa: E402
from edgeprune.testing import tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow  # one tiny run of the whole benchmark, a build subprocess included (~30-50 s)

WORDS = "the a movie film plot actor story good bad great awful fun boring love hate best worst funny dull".split()
ROWS, MAX_EVALS, PLANS = 240, 4, 2
ARGV = ["--layers", "2", "--heads", "2", "--hidden", "32", "--ffn", "64", "--vocab", "128", "--rows", str(ROWS),
        "--lut-rounds", "3", "--lut-reps", "1", "--plans", str(PLANS), "--plan-rounds", "5",
        "--max-evals", str(MAX_EVALS), "--date", "2026-01-01",
        # passed through to the build: a 144-row certify split cannot certify a 1-point promise (pre-flight exit 2)
        "--max-drop", "60", "--certify-plans", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run of the whole benchmark (~30 s): its record and its work folder."""
    root = tmp_path_factory.mktemp("scale")
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(ROWS)]
    opts, extra = scale.parser().parse_known_args(["--out", str(root / "work"), *ARGV])
    rec = scale.run(opts, tokenizer=tiny_tokenizer(root / "tok"), texts=texts, texts_source="tiny random-word texts",
                    extra=extra, command="python -m benchmarks.scale " + " ".join(ARGV),
                    build_log=root / "build.log")
    return rec, root / "work"


def test_model_and_labels_are_what_the_record_says(run):
    from edgeprune.search.evaluate import MaskedEvaluator
    from edgeprune.task.data import TextDataset
    from edgeprune.task.modeling import load_model

    rec, work = run
    model, tok = load_model(work / "model")
    assert rec["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.hidden_size,
            model.config.intermediate_size) == (2, 2, 32, 64)
    assert rec["task"]["safetensors"] and (work / "model" / rec["task"]["safetensors"][0]).is_file()
    with open(work / "data.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [int(r["label"]) for r in rows]
    preds = MaskedEvaluator(model, tok, TextDataset([r["text"] for r in rows], labels), max_length=128,
                            cache_mb=0).predict().tolist()
    # Labels are the saved model's own predictions with exactly the recorded number flipped.
    flipped = sum(p != y for p, y in zip(preds, labels))
    assert len(rows) == ROWS and flipped == rec["task"]["flipped"] == round(0.05 * ROWS)
    assert rec["task"]["unpruned_accuracy"] == pytest.approx(1 - flipped / ROWS)
    assert rec["task"]["prediction_counts"] == {str(c): preds.count(c) for c in (0, 1)}
    assert rec["task"]["label_seconds"] > 0


def test_latency_table_and_its_error_are_measured(run):
    from edgeprune.latency.table import has_ffn_axis, load_lut, predict

    rec, work = run
    lut_rec, err = rec["lut"], rec["lut_error"]
    lut = load_lut(work / "lut.json")
    assert lut_rec["ffn_axis"] and has_ffn_axis(lut)  # the table `edgeprune build` builds by default
    assert lut["method"]["rounds"] == lut_rec["rounds"] == 3 and not lut_rec["builds_default_rounds"]
    assert 0 < lut_rec["export_s"] < lut_rec["build_s"] and lut_rec["measure_s"] > 0
    assert lut_rec["peak_rss_mib"] >= lut_rec["rss_before_mib"] > 0
    assert "not on a Raspberry Pi 4" in rec["measured_on"] and "not on a Raspberry Pi 4" in rec["where"]
    assert len(err["plans"]) == PLANS
    for p in err["plans"]:
        # the prediction is the table's for that plan, the error is computed from the two figures recorded
        assert p["predicted_ms"] == pytest.approx(predict(lut, p["kept_counts"], ffn_widths=p["ffn_widths"]))
        assert p["measured_ms"] > 0 and p["full_model_measured_ms"] > 0
        assert p["error"] == pytest.approx((p["predicted_ms"] - p["measured_ms"]) / p["measured_ms"])
        assert p["error_anchored"] == pytest.approx(
            (p["predicted_ms"] * p["full_model_measured_ms"] / predict(lut, [2, 2]) - p["measured_ms"])
            / p["measured_ms"])
        assert sum(p["kept_counts"]) < 4 or sum(p["ffn_widths"]) < 128  # a pruned plan, not the unpruned model
    assert err["error"]["median_abs"] == pytest.approx(statistics.median(abs(p["error"]) for p in err["plans"]))
    assert err["error"]["max_abs"] == pytest.approx(max(abs(p["error"]) for p in err["plans"]))
    assert (work / "plans" / "plan00.onnx").is_file() and err["measure_s"] > 0


def test_build_figures_come_from_its_report_and_memory_from_the_kernel(run):
    rec, work = run
    b = rec["build"]
    assert b["exit_code"] == 0, b.get("log_tail")
    report_json = json.loads((work / "build" / "report.json").read_text())
    plan_json = json.loads((work / "build" / "plan.json").read_text())
    s = b["search"]
    assert s["wall_s"] == report_json["search"]["wall_s"] == report_json["timing"]["stages_s"]["search"] > 0
    assert b["stages_s"] == report_json["timing"]["stages_s"] and b["wall_s"] == report_json["wall_s"] > 0
    assert 0 < s["evaluations"] <= s["max_evaluations"] == MAX_EVALS
    assert s["max_seconds"] is None and s["pricing"]["kind"] == "refit"  # no cap, the default refit pricing
    assert s["per_evaluation_s"] == pytest.approx(s["wall_s"] / s["evaluations"])
    assert s["search_loop_s"] == plan_json["search"]["wall_time_s"]
    assert s["journal_timeline"][-1][1] == s["evaluations"]  # every evaluation seen in the journal as it grew
    assert s["evaluations_within_default_cap"] == s["evaluations"]  # a tiny search is far below the 600 s cap
    assert "--latency-table" in b["command"] and b["lut_reused"] and report_json["settings"]["recovery"] == "refit"
    assert report_json["settings"]["latency_table"] == rec["lut"]["path"]
    mem = b["memory"]
    assert mem["samples"] > 0 and mem["peak_rss_tree_sampled_mib"] > 0
    # the build loads a model and runs ONNX Runtime on top of the libraries: above the import-only baseline
    assert mem["max_rss_largest_process_mib"] > mem["baseline_mib"] > 0
    assert mem["peak_rss_mib"] == max(mem["max_rss_largest_process_mib"], mem["peak_rss_tree_sampled_mib"])
    assert mem["above_baseline_mib"] == pytest.approx(mem["peak_rss_mib"] - mem["baseline_mib"])
    assert b["cpu_s"]["user"] > 0 and b["timed_wall_s"] >= b["wall_s"]
    assert rec["goal"]["reached"] is None and "not BERT-base size" in rec["goal"]["measured"]


def test_a_build_without_report_still_gives_its_search(run, tmp_path):
    import shutil

    rec, work = run
    out = tmp_path / "build"
    shutil.copytree(work / "build", out)
    (out / "report.json").unlink()  # as when a build stops after its search (e.g. certification fails, exit 3)
    b = rec["build"]
    got = scale.read_build(out, b["search"]["journal_timeline"], max_evals=MAX_EVALS, search_seconds=0.0)
    search_stage = json.loads((out / ".edgeprune" / "search.json").read_text())["plan"]["search"]
    assert got["error"] == "the build wrote no report.json" and "shipped" not in got
    assert got["search"]["wall_s"] == search_stage["pipeline_wall_s"] > 0
    assert got["search"]["evaluations"] == b["search"]["evaluations"] and got["search"]["max_evaluations"] == MAX_EVALS
    assert set(got["stages_s"]) >= {"task", "preflight", "lut", "search"} and got["stages_s"]["search"] > 0
    measured_here = ("command", "exit_code", "out", "recovery", "lut_reused", "timed_wall_s", "cpu_s", "memory")
    incomplete = {**rec, "build": {**{k: b[k] for k in measured_here}, **got}}
    assert scale.search_goal(incomplete)["measured"].startswith(f"{got['search']['wall_s']:.0f} s for")
    assert "stopped after its search" in scale.markdown(incomplete)


def test_search_goal_is_judged_only_at_bert_base_size(run):
    rec = copy.deepcopy(run[0])
    rec["model"].update(scale.BERT_BASE)
    s = rec["build"]["search"]
    s.update(wall_s=scale.SEARCH_GOAL_S - 1, stopped_by="evaluations")
    assert scale.search_goal(rec)["reached"] is True
    s["wall_s"] = scale.SEARCH_GOAL_S + 1
    assert scale.search_goal(rec)["reached"] is False
    s.update(stopped_by="time", max_seconds=600.0)  # the build's default cap stopped it: the budget was not spent
    assert scale.search_goal(rec)["reached"] is None
    s["max_seconds"] = 2 * scale.SEARCH_GOAL_S  # a cap beyond the goal stopped it: slower than the goal
    assert scale.search_goal(rec)["reached"] is False
    assert scale.search_goal({**rec, "build": {"skipped": True}})["reached"] is None


def test_report_renders_the_scale_section_and_goal(run, tmp_path):
    from benchmarks.bench_tools import write_results

    rec = run[0]
    results = tmp_path / "results"
    md = report.render(results)  # no scale JSON yet: the goal is not measured, the section gives the command
    assert "| BERT-base | search <= 30 min at BERT-base size (default budget) | BERT-base scale run: not run yet" in md
    assert "produced by `python -m benchmarks.scale" in md.split("## Scale (BERT-base size")[1].split("\n## ")[0]
    write_results("scale", rec, scale.markdown(rec), results=results)
    md = report.render(results)
    section = md.split("## Scale (BERT-base size, random weights)")[1].split("\n## ")[0]
    assert "From `scale-2026-01-01.json`" in section
    assert f"built in {rec['lut']['build_s']:.0f} s" in section
    assert f"{rec['build']['search']['evaluations']} evaluations, stopped by evaluations" in section
    assert f"peak RSS {rec['build']['memory']['peak_rss_mib']:.0f} MiB" in section
    goal = next(ln for ln in md.splitlines() if ln.startswith("| BERT-base |"))
    assert goal.endswith("| not measured |") and "not BERT-base size" in goal and "scale-2026-01-01.json" in goal
    bench = md.split("### Scale: BERT-base size, random weights")[1]
    assert f"- Command: `{rec['command']}`" in bench and "| table prediction error" in bench
    # A newer BERT-base-size record within the goal: the goal row follows it.
    big = copy.deepcopy(rec)
    big["model"].update(scale.BERT_BASE)
    big["date"] = "2026-01-02"
    big["build"]["search"].update(wall_s=600.0, evaluations=40, max_evaluations=40)
    write_results("scale", big, scale.markdown(big), results=results)
    goal = next(ln for ln in report.render(results).splitlines() if ln.startswith("| BERT-base |"))
    assert "10.0 min for 40 of 40 evaluations" in goal and goal.endswith("| yes |")


def test_build_command_and_defaults():
    from edgeprune.config import DEFAULT_SEARCH

    opts, extra = scale.parser().parse_known_args(["--max-drop", "2"])
    assert (opts.layers, opts.heads, opts.hidden, opts.ffn) == (12, 12, 768, 3072)
    assert opts.max_evals == DEFAULT_SEARCH.max_evaluations and opts.recovery == "refit"
    assert opts.search_seconds == 0 and extra == ["--max-drop", "2"]
    cmd = scale.build_command(Path("m"), Path("d.csv"), Path("o"), "raspberrypi4", max_evals=40, recovery="refit",
                              search_seconds=0, latency_table=Path("lut.json"), extra=extra)
    assert cmd[1:4] == ["-m", "edgeprune.cli", "build"]
    assert " ".join(cmd[4:]) == ("--profile raspberrypi4 --model m --data d.csv --out o --max-evals 40 --recovery refit "
                                 "--search-seconds 0 --latency-table lut.json --max-drop 2")
    assert scale.evaluations_within([[0.0, 1], [300.0, 5], [700.0, 9]], 600.0) == 5
    assert scale.evaluations_within([], 600.0) is None and scale.evaluations_within([[0.0, 1]], None) is None


def test_lut_accuracy_run_one_still_works_on_the_shared_functions(tmp_path, monkeypatch):
    # scale.py reuses lut_accuracy's plan compilation, measurement and error functions; its own run goes through
    # them too (a tiny model in place of MiniLM, results in tmp_path).
    from benchmarks import lut_accuracy
    from edgeprune.testing import tiny_model

    monkeypatch.setattr(lut_accuracy, "RESULTS", tmp_path)
    monkeypatch.setitem(lut_accuracy.MODELS, "tiny", lambda: tiny_model("bert", num_layers=1, num_heads=2, hidden=32))
    run = lut_accuracy.run_one("tiny", "int8", "raspberrypi4", 2, 3, 1, None, 0, lambda m: None, plan_rounds=5,
                               chunk=1, ffn_block=32)
    assert len(run["plans"]) == 2 and all(p["ffn_widths"] and p["measured_ms"] > 0 for p in run["plans"])
    assert run["error"]["max_abs"] == pytest.approx(max(abs(p["error"]) for p in run["plans"]))
    assert run["full_model_measured_with_plans_ms"] == pytest.approx(
        statistics.median(p["full_model_measured_ms"] for p in run["plans"]))
    assert "| tiny | int8 |" in lut_accuracy.to_markdown({"date": "d", "measured_on": run["measured_on"],
                                                          "host": {"cpu_model": "c", "arch": "a", "logical_cores": 2,
                                                                   "ort_version": "o", "loadavg": [0]},
                                                          "runs": [run]})
    assert [p.name for p in tmp_path.glob("lut-tiny-int8-raspberrypi4-*t-ffn.json")]
