"""benchmarks/report.py: RESULTS.md from a folder of result JSONs (fake ones here, and the real folder once).

(tests/test_report.py is the build report's, edgeprune.output.report.)
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from benchmarks import report

RESULTS = Path(report.__file__).resolve().parent / "results"

# Five fake default builds: the medians the lead table must show are computed from these lists, not typed in.
SPEED_INT8 = [1.5, 2.5, 2.1, 2.2, 1.8]
SPEED_FP32 = [3.0, 4.0, 3.6, 3.8, 3.5]
BOUNDS = [0.5, 0.9, 0.7, 0.8, 0.6]
FINAL_ACC = [0.851, 0.846, 0.848, 0.853, 0.849]
WALL_S = [800.0, 950.0, 880.0, 700.0, 890.0]
SEARCH_S = [200.0, 320.0, 290.0, 250.0, 280.0]


def _build(i: int, *, vs_int8=None, shipped="plan-2", certified=True) -> dict:
    vs_int8 = SPEED_INT8[i] if vs_int8 is None else vs_int8
    return {
        "out": f"/fake/b{i}", "seed": i, "recovery": "distill", "shipped": shipped, "heads_removed": 40,
        "ffn_blocks_removed": 30, "certified": certified, "drop_upper_bound_pts": BOUNDS[i],
        "accuracy": {"baseline": 0.85, "final": FINAL_ACC[i], "certify_examples": 1000},
        "sequence": [
            {"name": "dense", "heads_removed": 0, "ffn_blocks_removed": 0, "n_worse": 10, "n_better": 9,
             "accuracy": 0.849, "drop_upper_bound_pts": 0.55, "passed": True, "search_split_drop_pts": None},
            {"name": "plan-2", "heads_removed": 40, "ffn_blocks_removed": 30, "n_worse": 30, "n_better": 28 + i,
             "accuracy": FINAL_ACC[i], "drop_upper_bound_pts": BOUNDS[i], "passed": True,
             "search_split_drop_pts": 0.4}],
        "tested": 2, "order_length": 2, "stop_reason": "every plan of the frozen order passed",
        "p50_ms": {"dense_fp32": 20.0, "dense_int8": 10.0, "final": 10.0 / vs_int8},
        "final_vs_dense_int8": vs_int8, "final_vs_dense_fp32": SPEED_FP32[i],
        "real_lengths_final_vs_dense_int8": None, "predicted_final_ms": None,
        "measured_on": "measured on FAKE-CPU (x86_64, 2 cores) with raspberrypi4 settings, not on a Raspberry Pi 4",
        "search": {"evaluations": 40, "pricing": {"refit_seconds": 50.0 + i}},
        "stages_s": {"search": SEARCH_S[i], "export": 300.0}, "build_wall_s": WALL_S[i],
    }


def _write(folder: Path, name: str, rec: dict) -> Path:
    path = folder / name
    path.write_text(json.dumps(rec))
    return path


def _smaller(k3_bound: float = 1.2) -> dict:
    def row(name, kind, acc, bound, cert, speed, **kw):
        return {"name": name, "kind": kind, "accuracy": acc, "bound_pts": bound, "certified": cert,
                "bound_note": "one look, 95%", "p50_ms": 10.0 / speed, "speedup_vs_dense_int8": speed,
                "real_p50_ms": 3.0, "real_speedup_vs_dense_int8": speed, **kw}

    versions = {"optimum": "9.9-fake", "optimum-onnx": "0.1-fake", "transformers": "4.57.6", "onnxruntime": "1.32.0"}
    return {
        "benchmark": "smaller_model", "date": "2026-12-05", "host": "fakehost", "machine": "x86_64",
        "measured_on": "this host (not the profile's device)", "profile": "raspberrypi4", "ort_threads": 2,
        "seq_len": 128, "batch": 1, "real_length_tokens": {"p50": 26.0}, "certify_n": 1000, "max_drop_pts": 1.0,
        "base_fp32_accuracy": 0.85, "distill_n": 4000, "distill_config": {"epochs": 2}, "torch": "2.13.0+cpu",
        "transformers": "5.24.0", "onnxruntime": "1.32.0", "command": "python -m benchmarks.smaller_model --fake",
        "optimum": {"status": "ok", "python": "/fake/python", "versions": versions},
        "rows": [row("dense ORT INT8", "dense", 0.849, 0.55, True, 1.0),
                 row("optimum arm64 preset (dense)", "optimum", 0.848, 0.5, True, 1.05),
                 row("edgeprune build b0", "edgeprune", 0.851, 0.6, True, 1.8),
                 row("edgeprune build b1", "edgeprune", 0.846, 0.8, True, 1.7),
                 row("first 3 of 6 layers, distilled", "smaller", 0.845, k3_bound, k3_bound <= 1.0, 2.0, layers=3),
                 row("first 4 of 6 layers, distilled", "smaller", 0.856, -0.1, True, 1.4, layers=4)],
    }


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    res.mkdir()
    _write(res, "builds-distill-2026-12-05.json", {"what": "fake builds", "builds": [_build(i) for i in range(5)]})
    # An older series of the same benchmark: must be ignored (newest date in the file name wins).
    _write(res, "builds-distill-2026-11-01.json", {"what": "old", "builds": [_build(0, vs_int8=9.0)]})
    _write(res, "certify_simulation-2026-12-05.json", {"date": "2026-12-05", "machine": "fake", "python": "3.11.7",
                                                         "issue_table_max_discordance_1pt": [
                                                             {"n": 1000, "confidence": "95% one look", "score_0": 34,
                                                              "score_0.3": 13, "score_0.5": None}]})
    _write(res, "stray-notes.json", {"what": "a one-off record"})
    return res


def _line(md: str, start: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.startswith(start)]
    assert lines, f"no line starting with {start!r}"
    return lines[0]


def _mr(xs, fmt) -> str:
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))} to {fmt(max(xs))})"


def test_lead_table_shows_the_medians_of_the_newest_builds(folder):
    md = report.render(folder)
    lead = md.split("## Goals")[0]
    row = _line(lead, "| **edgeprune, shipped file** |")
    assert f"**{_mr(SPEED_INT8, lambda v: f'{v:.2f}x')}**" in row  # 2.10x (1.50x to 2.50x)
    assert _mr(BOUNDS, lambda v: f"{v:.2f}") in row
    assert _mr(FINAL_ACC, lambda v: f"{100 * v:.2f}%") in row
    assert "pruned and certified in 5 of 5" in row and "median of 5 builds" in row
    assert "9.00x" not in md  # the older builds-distill file is not read
    assert f"edgeprune vs dense FP32: {_mr(SPEED_FP32, lambda v: f'{v:.2f}x')}" in lead
    # dense rows from the builds' own fields: FP32 at dense_int8/dense_fp32 p50 = 0.5x, INT8 its first test
    assert "0.50x (all 5)" in _line(lead, "| dense ORT FP32 |")
    assert "0.55 (all 5)" in _line(lead, "| dense ORT INT8 |")
    assert "FAKE-CPU (x86_64, 2 cores)" in lead  # where latency was measured comes from the JSON


def test_goals_reached_with_the_data_and_not_without(folder):
    goals = {g["goal"]: g for g in report.goals(report.find_latest(folder))}
    int8 = next(g for k, g in goals.items() if k.startswith("shipped vs dense ORT INT8"))
    fp32 = next(g for k, g in goals.items() if k.startswith("shipped vs dense ORT FP32"))
    five = next(g for k, g in goals.items() if k.startswith("all 5 default builds"))
    build = next(g for k, g in goals.items() if k.startswith("build <="))
    search = next(g for k, g in goals.items() if k.startswith("search <="))
    assert statistics.median(SPEED_INT8) >= 2.0 and statistics.median(SPEED_FP32) >= 3.5  # the fixture's premise
    assert int8["reached"] is fp32["reached"] is five["reached"] is build["reached"] is search["reached"] is True
    assert "| default | shipped vs dense ORT INT8 >= 2.0x at <= 1.0 pt certified |" in report.render(folder)

    # Slower builds, one shipping dense, longer build and search: the same goals flip.
    builds = [_build(i, vs_int8=1.9 if i == 2 else None) for i in range(4)] + [_build(4, shipped="dense")]
    for b, wall, search_s in zip(builds, (950, 960, 880, 970, 700), (310, 320, 290, 330, 280)):
        b["build_wall_s"], b["stages_s"]["search"] = float(wall), float(search_s)
    _write(folder, "builds-distill-2026-12-06.json", {"what": "slower", "builds": builds})
    goals = {g["goal"]: g for g in report.goals(report.find_latest(folder))}
    assert statistics.median([b["final_vs_dense_int8"] for b in builds]) < 2.0
    assert next(g for k, g in goals.items() if k.startswith("shipped vs dense ORT INT8"))["reached"] is False
    assert next(g for k, g in goals.items() if k.startswith("all 5 default builds"))["reached"] is False
    assert next(g for k, g in goals.items() if k.startswith("build <="))["reached"] is False
    assert next(g for k, g in goals.items() if k.startswith("search <="))["reached"] is False
    md = report.render(folder)
    assert "4 of 5 builds | NO |" in md


def test_missing_benchmarks_say_not_run_with_their_command(folder):
    md = report.render(folder)
    assert re.search(r"Banking77 through edgeprune build: not run yet \(`banking77-<date>.json` absent\); produced by "
                     r"`python -m benchmarks\.banking77 --out ", md)
    assert "not run yet (`smaller_model-<date>.json` absent); produced by `python -m benchmarks.smaller_model --build" \
        in md
    goals = report.goals(report.find_latest(folder))
    assert {g["reached"] for g in goals if "smaller model" in g["goal"] or "optimum" in g["goal"]} == {None}
    assert "| not measured |" in md
    # run_all absent too: its own file name pattern and command
    assert "not run yet (`<date>.json` absent); produced by `python -m benchmarks.run_all`" in md
    # the one-off record is listed, not dropped
    assert "`results/stray-notes.json`: a one-off record" in md


def test_smaller_model_and_optimum_rows_and_goals(folder):
    _write(folder, "smaller_model-2026-12-05.json", _smaller())
    md = report.render(folder)
    lead = md.split("## Goals")[0]
    assert "| 1.40x | `smaller_model-2026-12-05.json` |" in _line(lead, "| best hand-made smaller model: first 4 of 6")
    assert "| 1.05x |" in _line(lead, "| optimum arm64 preset (dense) |")
    goals = {g["goal"]: g for g in report.goals(report.find_latest(folder))}
    matched = next(g for k, g in goals.items() if "matched certified bound" in k)
    equal = next(g for k, g in goals.items() if "equal latency" in k)
    opt = next(g for k, g in goals.items() if "optimum" in k)
    assert matched["reached"] is True and equal["reached"] is True  # 1.75x > 1.40x; the 2.00x student: bound 1.2
    assert opt["reached"] is False and opt["measured"].startswith(f"{statistics.median([1.8 / 1.05, 1.7 / 1.05]):.2f}x")
    # the benchmark's own renderer is used when the run left no .md (its optimum sentence names the versions)
    assert "quantized in `/fake/python` (optimum 9.9-fake" in md

    # A student as fast as edgeprune and with a tighter bound: edgeprune no longer wins at equal latency.
    _write(folder, "smaller_model-2026-12-06.json", _smaller(k3_bound=0.5))
    goals = {g["goal"]: g for g in report.goals(report.find_latest(folder))}
    assert next(g for k, g in goals.items() if "equal latency" in k)["reached"] is False
    assert next(g for k, g in goals.items() if "matched certified bound" in k)["reached"] is False  # 2.00x certified
    # and the best hand-made model of the lead table is now the fastest certified one, not the tightest
    assert "| 2.00x |" in _line(report.render(folder), "| best hand-made smaller model: first 3 of 6 layers")


def test_banking77_smaller_model_rows_sit_under_banking77_not_the_default_task(folder):
    """smaller_model-banking77-<date>.json is its own series: the default task keeps reading smaller_model-<date>,
    the Banking77 lead table gets the optimum and hand-made rows (a uniformly thinned student counts as hand-made),
    and the goals are the Banking77 task's."""
    from benchmarks.smaller_model import results_name

    rec = {"benchmark": "banking77", "date": "2026-12-05", "host": "fakehost", "machine": "x86_64",
           "command": "edgeprune build --fake", "exit_code": 0,
           "summary": {"task": {"base_model": "fake-minilm"}, "split": {"search": 1632, "certify": 1000},
                       "build": _build(0, vs_int8=1.3)}}
    _write(folder, "banking77-2026-12-05.json", rec)
    md = report.render(folder)
    bank = md.split("### Banking77 intents")[1].split("## Goals")[0]
    assert "not run yet (`smaller_model-banking77-<date>.json` absent); produced by `python -m " \
           "benchmarks.smaller_model --task banking77 --build OUT" in bank
    bk = _smaller()
    bk["task"], bk["date"] = "banking77", "2026-12-06"
    bk["rows"] = [r for r in bk["rows"] if r["kind"] != "smaller"] + [
        {**bk["rows"][-1], "name": "uniformly thinned to b0's unit count: 7/12 heads + 6/12 FFN blocks removed per "
                                   "layer, refit + distilled", "kind": "thinned", "speedup_vs_dense_int8": 1.6}]
    _write(folder, f"{results_name('banking77')}-2026-12-06.json", bk)
    found = report.find_latest(folder)
    assert found["smaller_model"].rec is None and found["smaller_model_banking77"].date == "2026-12-06"
    _write(folder, f"{results_name('default')}-2026-12-05.json", _smaller())
    found = report.find_latest(folder)
    assert found["smaller_model"].path.name == "smaller_model-2026-12-05.json"
    md = report.render(folder)
    default, bank = md.split("## Goals")[0].split("### Banking77 intents")
    assert "| best hand-made smaller model: first 4 of 6" in default and "uniformly thinned" not in default
    assert "| 1.60x | `smaller_model-banking77-2026-12-06.json` |" in _line(
        bank, "| best hand-made smaller model: uniformly thinned to b0's unit count")
    assert "| 1.05x |" in _line(bank, "| optimum arm64 preset (dense) |")
    goals = [g for g in report.goals(found) if g["task"] == "Banking77" and "smaller model" in g["goal"]]
    matched = next(g for g in goals if "matched certified bound" in g["goal"])
    assert matched["reached"] is True and "uniformly thinned to b0's unit count" in matched["measured"]  # 1.75 > 1.6
    assert "### The hand-made smaller model (and optimum) vs edgeprune on Banking77 (2026-12-06)" in md


def test_banking77_lead_table_sibling_md_and_limits(folder):
    rec = {"benchmark": "banking77", "date": "2026-12-05", "host": "fakehost", "machine": "x86_64",
           "command": "edgeprune build --profile raspberrypi4 --model M --data D --out O", "exit_code": 0,
           "summary": {"task": {"base_model": "fake-minilm"}, "split": {"search": 1632, "certify": 1000},
                       "build": {**_build(0, vs_int8=1.3), "build_wall_s": 1200.0}}}
    _write(folder, "banking77-2026-12-05.json", rec)
    (folder / "banking77-2026-12-05.md").write_text("# Banking77 through `edgeprune build`\n\nSIBLING-BODY\n\n## Sub\n")
    md = report.render(folder)
    bank = md.split("### Banking77 intents")[1].split("## Goals")[0]
    assert "**1.30x**" in _line(bank, "| **edgeprune, shipped file** |") and "one build" in bank
    assert "| Banking77 | build <= 15 min | 20.0 min; 0 of 1 within | NO |" in md
    section = md.split("### Banking77 through edgeprune build (2026-12-05)")[1]
    assert "SIBLING-BODY" in section and "#### Sub" in section and "# Banking77 through" not in section
    assert "- Command: `edgeprune build --profile raspberrypi4 --model M --data D --out O`" in section
    # churn against the certify simulation's allowed discordance at the same certify size
    limits = md.split("## What limits it")[1].split("## Benchmarks")[0]
    discordant = [30 + 28 + i for i in range(5)]
    assert f"on {statistics.median(discordant)} ({min(discordant)} to {max(discordant)}) of 1000" in limits
    assert "34 at observed drop 0, 13 at 0.3 pts" in limits
    assert "refit pricing took 52 s (50 s to 54 s)" in limits


def test_run_all_section_follows_the_given_run(folder, tmp_path):
    run = {"date": "2026-11-20", "command": "python -m benchmarks.run_all --fake",
           "environment": {"host": {"cpu_model": "FAKE-CPU", "arch": "x86_64", "logical_cores": 2},
                           "versions": {"onnxruntime": "1.32.0"}},
           "analysis": ["default task: FAKE-ANALYSIS-LINE"]}
    _write(folder, "2026-11-20.json", run)
    (folder / "run_all-2026-11-20.md").write_text("# edgeprune benchmarks (2026-11-20)\n\nFAKE-RUN-ALL-TABLE\n")
    smoke = _write(folder, "smoke.json", {**run, "date": "smoke", "analysis": ["SMOKE-LINE"]})
    (folder / "run_all-smoke.md").write_text("# smoke\n\nSMOKE-TABLE\n")
    md = report.render(folder)
    assert "## Full peer run (run_all, 2026-11-20)" in md and "FAKE-RUN-ALL-TABLE" in md
    assert "- default task: FAKE-ANALYSIS-LINE" in md and "FAKE-CPU, x86_64, 2 cores" in md
    out = report.write_results_md(folder, tmp_path / "RESULTS.md", latest={"run_all": smoke})
    md = out.read_text()
    assert "## Full peer run (run_all, smoke)" in md and "SMOKE-TABLE" in md and "FAKE-RUN-ALL-TABLE" not in md
    assert "`results/run_all-smoke.md`" in md
    with pytest.raises(KeyError):
        report.find_latest(folder, latest={"run-all": smoke})


def test_usage_command_reads_the_docstring():
    assert report.usage_command("smaller_model") == (
        "`python -m benchmarks.smaller_model --build /path/to/build [--build ...] [--layers 3 4] [--thin 0.5 0.65] "
        "[--no-thin-match] [--ffn-block-size 128] [--epochs 2] [--no-optimum] "
        "[--optimum-python /path/to/.venv-tf457/bin/python]`; "
        "`python -m benchmarks.smaller_model --task banking77 --build /path/to/banking77-build [the same options]`")
    assert report.usage_command("run_all") == "`python -m benchmarks.run_all`"
    assert report.usage_command("lut_accuracy").count("`python benchmarks/lut_accuracy.py") == 2


def test_renders_the_real_results_folder():
    md = report.render(RESULTS, link_base=RESULTS.parent)
    newest = max(RESULTS.glob("builds-distill-*.json"), key=lambda p: re.search(r"\d{4}-\d{2}-\d{2}", p.name)[0])
    builds = json.loads(newest.read_text())["builds"]
    row = _line(md, "| **edgeprune, shipped file** |")
    fmt_x = lambda v: f"{v:.2f}x"  # noqa: E731
    assert f"**{_mr([b['final_vs_dense_int8'] for b in builds], fmt_x)}**" in row
    assert _mr([b["drop_upper_bound_pts"] for b in builds], lambda v: f"{v:.2f}") in row
    assert f"`{newest.name}`" in row and f"median of {len(builds)} builds" in row
    assert f"edgeprune vs dense FP32: {_mr([b['final_vs_dense_fp32'] for b in builds], fmt_x)}" in md
    heads = ["## What you get", "## Goals", "## What limits it", "## Benchmarks", "## Full peer run"]
    assert [md.index(h) for h in heads] == sorted(md.index(h) for h in heads)
    assert "## Full peer run (run_all, 2026-11-24)" in md
    for f in report.find_latest(RESULTS).values():  # every recorded benchmark has its section with its command
        if f.rec is not None and f.bench.key != "run_all":
            assert f"### {f.bench.title} ({f.date})" in md
