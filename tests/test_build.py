"""End-to-end `edgeprune build` on a tiny model and tiny data: every report key, every file, resume, bad input."""

from __future__ import annotations

import json
import random

import pytest

torch = pytest.importorskip("torch")

from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.pipeline import BuildConfig, build  # noqa: E402
from edgeprune.output.report import REQUIRED_KEYS, get_dotted  # noqa: E402
from edgeprune.testing import tiny_model, tiny_tokenizer  # noqa: E402

WORDS = "the a movie film plot actor story good bad great awful fun boring love hate best worst funny dull".split()


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    model = tiny_model("bert", num_layers=2, num_heads=4, hidden=32)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(root / "model")
    tiny_tokenizer(root / "model")
    rng = random.Random(0)
    rows = ["text,label"]
    for _ in range(240):
        words = rng.choices(WORDS, k=rng.randint(3, 9))
        rows.append(f"{' '.join(words)},{'positive' if rng.random() < 0.5 else 'negative'}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def _cfg(root, out, **kw):
    base = dict(profile="x86-64", model=str(root / "model"), data=str(root / "data.csv"), out=str(out),
                # a random tiny model: a loose bound so the plumbing, not the statistics, is under test
                max_drop_pts=60.0, max_evaluations=12, measure_rounds=10)
    base.update(kw)
    return BuildConfig(**base)


def test_build_end_to_end(tiny_task, tmp_path):
    out = tmp_path / "out"
    report = build(_cfg(tiny_task, out), progress=False)
    for key in REQUIRED_KEYS:
        get_dotted(report, key)
    for name in ("report.json", "report.md", "pareto.png", "plan.json", "bundle/model.onnx", "bundle/model.ort",
                 "bundle/config.json", "bundle/edgeprune.json"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["heads"]["removed"] == report["heads"]["removed"]
    assert report["heads"]["total"] == 8
    assert sum(len(k) for k in report["heads"]["kept_per_layer"]) == 8 - report["heads"]["removed"]
    acc = report["accuracy"]
    assert 0.0 <= acc["final"] <= 1.0 and acc["certify_examples"] == 144  # 0.6 of 240 rows
    # certified means: the shipped file's bound is within the promise (checked, not assumed, at this loose bound)
    assert acc["certified"] == (acc["drop_upper_bound_pts"] <= acc["max_drop_pts"] + 1e-9)
    flips = acc["search_int8_allowance"]  # the dense INT8 model's flips on the search split, added to the search
    assert flips["n"] == 96 and flips["worse"] >= 0 and flips["better"] >= 0, (flips, report["data"]["search"], report["data"]["certify"])
    for name in ("dense_fp32", "dense_int8", "final"):
        lat = report["latency_ms"][name]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert "measured on" in report["latency_ms"]["measured_on"]
    real = report["latency_ms"]["real_lengths"]  # batch 1, each certify text at its own length, alternated
    assert real["texts"]["used"] == real["texts"]["total"] == 144 and real["batch"] == 1
    assert real["tokens"]["min"] < real["tokens"]["max"] <= real["max_length"]  # 3-9 words: lengths vary
    assert real["tokens"]["p50"] <= real["tokens"]["p90"]
    for name in ("dense_int8", "final"):
        assert real[name]["n"] == 144 and 0 < real[name]["p50"] <= real[name]["p90"] <= real[name]["p99"]
    assert real["ratio_dense_int8/final"] > 0 and "measured on" in real["measured_on"]
    assert "At real input lengths (batch 1, no padding; 144 certify texts" in (out / "report.md").read_text()
    assert report["memory"]["final_file_bytes"] < report["memory"]["dense_fp32_file_bytes"]
    assert "heads removed" in (out / "report.md").read_text()
    _readme_snippet_runs(out / "bundle")

    # A finished build is not overwritten silently; --resume reuses every stage.
    with pytest.raises(EdgepruneError, match="finished build: pass overwrite=True"):
        build(_cfg(tiny_task, out), progress=False)
    again = build(_cfg(tiny_task, out, resume=True), progress=False)
    assert again["heads"] == report["heads"] and again["latency_ms"]["final"] == report["latency_ms"]["final"]
    with pytest.raises(EdgepruneError, match="other settings"):
        build(_cfg(tiny_task, out, resume=True, max_drop_pts=50.0), progress=False)


def test_bad_inputs_have_clear_errors(tiny_task, tmp_path):
    with pytest.raises(EdgepruneError, match="both model and data"):
        BuildConfig(model=str(tiny_task / "model"))
    with pytest.raises(EdgepruneError, match="accuracy points"):
        _cfg(tiny_task, tmp_path / "o", max_drop_pts=-1)
    with pytest.raises(EdgepruneError, match="unknown algorithm"):
        _cfg(tiny_task, tmp_path / "o", algorithm="dfs")
    with pytest.raises(EdgepruneError, match="no such folder"):
        _cfg(tiny_task, tmp_path / "o", model="./nope")
    with pytest.raises(EdgepruneError, match="profile"):
        build(_cfg(tiny_task, tmp_path / "o", profile="no-such-device"), progress=False)


def _readme_snippet_runs(bundle):
    """The README's 'Using the bundle in an app' example: plain onnxruntime + the bundle's tokenizer."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bundle))
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    id2label = json.loads((bundle / "config.json").read_text())["id2label"]
    enc = tok(["a good movie", "boring plot"], padding=True, truncation=True, max_length=128, return_tensors="np")
    feeds = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    logits = sess.run(None, feeds)[0]
    assert logits.shape == (2, 2)
    assert {id2label[str(int(i))] for i in logits.argmax(-1)} <= {"negative", "positive"}


def test_build_command_forwards_options(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import edgeprune.pipeline as pipeline
    from edgeprune.cli import app
    from test_report import sample_report

    seen = {}

    def fake_build(cfg):
        seen["cfg"] = cfg
        return sample_report() | {"warnings": []}

    monkeypatch.setattr(pipeline, "build", fake_build)
    result = CliRunner().invoke(app, ["build", "--profile", "raspberrypi5", "--max-drop", "0.5", "--confidence", "0.9",
                                      "--out", str(tmp_path / "o"), "--search-seconds", "0", "--max-evals", "7"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.profile, cfg.max_drop_pts, cfg.confidence, cfg.max_evaluations) == ("raspberrypi5", 0.5, 0.9, 7)
    assert cfg.search_seconds is None and cfg.model is None
    assert (cfg.distill_ce_weight, cfg.distill_int8_aware) == (0.5, False)  # the defaults
    again = CliRunner().invoke(app, ["build", "--out", str(tmp_path / "o3"), "--distill-ce-weight", "0",
                                     "--distill-int8-aware", "--search-slack", "2.5"])
    assert again.exit_code == 0, again.output
    assert (seen["cfg"].distill_ce_weight, seen["cfg"].distill_int8_aware, seen["cfg"].search_slack_pts) == (
        0.0, True, 2.5)
    neg = CliRunner().invoke(app, ["build", "--out", str(tmp_path / "o4"), "--distill-ce-weight", "-1"])
    assert isinstance(neg.exception, EdgepruneError) and "--distill-ce-weight" in str(neg.exception)
    assert "3 of 8 heads removed" in result.output and "not on a Raspberry Pi 4" in result.output
    bad = CliRunner().invoke(app, ["build", "--max-drop", "-2", "--out", str(tmp_path / "o2")])
    assert isinstance(bad.exception, EdgepruneError) and bad.exception.exit_code == 2  # main() maps it to exit 2
    assert "--max-drop" in str(bad.exception)


def _frontier(n_points, removed_of, sd=0.35, z=2.13):
    # Plans removing more have a larger drop; bound = drop + z * sd (points), as the search computes it.
    return [{"latency_ms": 10.0 - i, "drop_pts": 0.15 * i - 0.6, "drop_bound_pts": 0.15 * i - 0.6 + z * sd,
             **removed_of(i)} for i in range(n_points)]


def test_certification_sequence_is_least_to_most_compressed_dense_first():
    from edgeprune.certify.policy import certification_sequence
    from edgeprune.plan import HeadPlan

    frontier = _frontier(9, lambda i: {"removed": [[0, h] for h in range(i)]})
    frontier[0]["drop_pts"] = frontier[0]["drop_bound_pts"] = 0.0  # the unpruned root
    frontier[6]["drop_pts"] = 1.5  # its point estimate already breaks the promise: never tested
    plan_json = {"num_heads": [8, 8], "removed": [[0, h] for h in range(8)],
                 "search": {"frontier": frontier, "predicted_latency_ms": 2.0, "search_split_drop_pts": 0.5,
                            "search_split_drop_bound_pts": 0.9}}
    seq = certification_sequence(plan_json, 1.0, max_plans=20)
    names = [n for n, _, _ in seq]
    assert names[0] == "dense" and seq[0][1] == HeadPlan.full([8, 8])
    removed = [p.num_removed for _, p, _ in seq]
    assert removed == sorted(removed) and removed[-1] == 8  # least to most compressed, the searched plan last
    assert 6 not in removed and 0 not in removed[1:]  # the plan above the promise and the root are skipped
    assert seq[-1][2]["searched"] is True
    # Thinned to max_plans, spread over the order, the searched plan kept.
    four = certification_sequence(plan_json, 1.0, max_plans=4)
    assert len(four) == 4 and four[0][0] == "dense" and four[-1][1].num_removed == 8
    assert [p.num_removed for _, p, _ in four] == sorted(p.num_removed for _, p, _ in four)
    assert not any((pt or {}).get("searched") for _, _, pt in certification_sequence(dict(plan_json, removed=[]), 1.0, 4))
    assert [n for n, _, _ in certification_sequence(plan_json, 1.0, max_plans=1)] == ["dense"]
    # Distillation: the search may go beyond the promise (slack), but only the searched plan, which alone is
    # distilled, may lie beyond it; the ladder before it stays within the promise.
    wide = dict(plan_json, search=dict(plan_json["search"], search_split_drop_pts=2.4, search_split_drop_bound_pts=3.1))
    ladder = certification_sequence(wide, 3.5, max_plans=20, ladder_max_pts=1.0)
    bounds = [pt["drop_bound_pts"] for _, _, pt in ladder[1:]]
    assert all(b <= 1.0 for b in bounds[:-1]) and bounds[-1] == 3.1 and ladder[-1][2]["searched"]
    assert any(pt["drop_pts"] <= 1.0 < pt["drop_bound_pts"] for pt in frontier)  # ... by bound, not estimate
    assert len(certification_sequence(wide, 3.5, max_plans=20)) > len(ladder)  # without it: plans up to 3.5
    # thinned (distillation's 4 plans): dense, the ladder's middle and its most compressed plan, the searched one
    short = certification_sequence(wide, 3.5, max_plans=4, ladder_max_pts=1.0)
    assert [p.num_removed for _, p, _ in ladder] == [0, 1, 2, 3, 4, 5, 8]  # bounds 0.30 .. 0.90, then the searched
    assert [p.num_removed for _, p, _ in short] == [0, 2, 5, 8]  # ladder quantiles 1/2 and 2/2 (its last) kept
    three = certification_sequence(wide, 3.5, max_plans=3, ladder_max_pts=1.0)  # the distillation default
    assert [p.num_removed for _, p, _ in three] == [0, 5, 8]  # the most compressed refitted plan is the fallback


def test_certification_sequence_of_a_joint_search_keeps_the_ffn_part():
    from edgeprune.certify.policy import certification_sequence

    frontier = _frontier(9, lambda i: {"removed": [[0, h] for h in range(i // 2)],
                                       "ffn_removed": [[1, b] for b in range(i - i // 2)]})
    plan_json = {"num_heads": [8, 8], "removed": [[0, h] for h in range(4)],
                 "ffn": {"block_size": 4, "num_blocks": [6, 6], "kept_blocks": [list(range(6)), [4, 5]]},
                 "ffn_removed": [[1, b] for b in range(4)], "search": {"frontier": frontier}}
    seq = certification_sequence(plan_json, 1.0, max_plans=4)
    dense = seq[0][1]
    assert dense.has_ffn and dense.is_full  # "0 of 12 FFN blocks removed", not a heads-only report
    assert all(p.has_ffn for _, p, _ in seq) and seq[-1][1].ffn_num_removed == 4


def test_certify_sequence_ships_the_last_pass_and_never_looks_twice():
    from edgeprune.certify.core import certify_sequence
    from edgeprune.errors import CertificationError
    from edgeprune.plan import HeadPlan

    rng = random.Random(1)
    n = 2000
    labels = [rng.randint(0, 1) for _ in range(n)]
    base = list(labels)  # the base model is right everywhere
    flips = [0, 4, 8, 200, 10]  # plan 3 breaks the bound; plan 4 would pass but comes after the failure

    def preds_with(k):
        return [1 - y if i < k else y for i, y in enumerate(labels)]

    plans = [HeadPlan.from_removed([4], [(0, h) for h in range(i)]) for i in range(5)]
    built = []

    def build(index, plan):
        built.append(index)
        return index

    records = []
    result, art = certify_sequence(plans, build, lambda i: preds_with(flips[i]), base, labels, max_drop_pts=1.0,
                                   confidence=0.95, names=[f"p{i}" for i in range(5)], on_record=records.append)
    assert result.shipped_index == 2 and art == 2 and result.certified
    assert [a["name"] for a in result.attempts] == ["p0", "p1", "p2", "p3"]  # stopped at the first failure
    assert not result.attempts[3]["certification"]["passed"] and 4 not in built
    assert result.sequence["stopped_at"] == 3 and len(records) == 4
    # Resumed after the third test: its tests are reused, the shipped file rebuilt without a new look.
    built.clear()
    looks = []

    def counting_predict(i):
        looks.append(i)
        return preds_with(flips[i])

    again, art2 = certify_sequence(plans, build, counting_predict, base, labels, max_drop_pts=1.0, confidence=0.95,
                                   names=[f"p{i}" for i in range(5)], recorded=records[2])
    assert looks == [3] and again.shipped_index == 2 and art2 == 2
    assert [a.get("reused", False) for a in again.attempts] == [True, True, True, False]
    # Nothing certifiable: a clear error naming the unpruned model, unless forced.
    with pytest.raises(CertificationError, match="first plan"):
        certify_sequence(plans, build, lambda i: preds_with(300), base, labels, max_drop_pts=1.0, confidence=0.95)
    forced, _ = certify_sequence(plans, build, lambda i: preds_with(300), base, labels, max_drop_pts=1.0,
                                 confidence=0.95, force=True)
    assert forced.forced and forced.certified is False and forced.shipped_index == 0


def test_preflight_stops_a_300_row_dataset_and_lets_a_large_one_through(tmp_path):
    """Pure arithmetic (edgeprune.certify.sequence.preflight) at the sizes the build would split."""
    from edgeprune.certify.sequence import preflight

    rate, drop = 47 / 2113, 0.05  # the default task's dense INT8 file on its search split
    small = preflight(150, 1.0, 0.95, rate, drop)  # 300 rows, half certify
    assert small["status"] == "fail" and "even an exact copy of the dense INT8 model" in small["message"]
    assert small["certify_n_needed_for_dense_copy"] > 150
    big = preflight(4226, 1.0, 0.95, rate, drop)
    assert big["status"] == "ok" and big["room_for_pruning_pts"] > 0.3 and big["max_discordance_at_zero_drop"] > 400


def test_a_build_on_300_rows_stops_in_the_preflight_with_exit_2(tiny_task, tmp_path):
    rng = random.Random(3)
    rows = ["text,label"] + [f"{' '.join(rng.choices(WORDS, k=rng.randint(3, 9)))},"
                             f"{'positive' if rng.random() < 0.5 else 'negative'}" for _ in range(300)]
    (tmp_path / "small.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    with pytest.raises(EdgepruneError, match="pre-flight: with 180 certify examples even an exact copy") as err:
        build(_cfg(tiny_task, out, data=str(tmp_path / "small.csv"), max_drop_pts=1.0), progress=False)
    assert err.value.exit_code == 2
    assert not (out / "bundle").exists() and not (out / "plan.json").exists()  # stopped before the search


def test_build_joint_structures_end_to_end(tiny_task, tmp_path):
    """--structures heads+ffn: the LUT measures FFN widths, the plan and report carry the FFN part."""
    out = tmp_path / "joint"
    report = build(_cfg(tiny_task, out, structures="heads+ffn", ffn_block_size=8), progress=False)
    for key in REQUIRED_KEYS:
        get_dotted(report, key)
    ffn = report["ffn"]
    assert ffn is not None and ffn["block_size"] == 8 and ffn["blocks_total"] == 2 * (64 // 8)
    assert sum(ffn["kept_widths"]) == (ffn["blocks_total"] - ffn["blocks_removed"]) * 8
    plan = json.loads((out / "plan.json").read_text())
    assert plan["search"]["structures"] == "heads+ffn"
    assert report["search"]["structures"] == "heads+ffn"
    assert report["latency_ms"]["predicted_final"] > 0
    bundle_meta = json.loads((out / "bundle" / "edgeprune.json").read_text())
    assert "ffn" in json.dumps(bundle_meta)
    assert "FFN" in (out / "report.md").read_text()
    with pytest.raises(EdgepruneError, match="structures"):
        _cfg(tiny_task, tmp_path / "o", structures="ffn")
    with pytest.raises(EdgepruneError, match="heads\\+ffn"):
        _cfg(tiny_task, tmp_path / "o", structures="heads", ffn_block_size=8)
    assert BuildConfig().structures == "heads+ffn"  # the default build searches heads and FFN blocks


def test_build_heads_only_end_to_end(tiny_task, tmp_path):
    """--structures heads: no FFN axis anywhere (plan, LUT, bundle, report), heads removed and checked."""
    out = tmp_path / "heads"
    report = build(_cfg(tiny_task, out, structures="heads", max_drop_pts=100.0), progress=False)
    for key in REQUIRED_KEYS:
        get_dotted(report, key)
    assert report["ffn"] is None and report["search"]["structures"] == "heads"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["search"]["structures"] == "heads" and not plan.get("ffn")
    assert report["heads"]["removed"] > 0  # at a 100-point bound the search must remove something
    meta = json.loads((out / "bundle" / "edgeprune.json").read_text())
    assert meta["checks"]["surgery_max_abs_diff"] <= 1e-5  # the shipped path ran pruned == masked
    lut = json.loads((out / "latency_table.json").read_text())
    assert "ffn" not in lut


def test_a_second_build_on_the_same_certify_split_is_told_so(tiny_task, tmp_path, monkeypatch):
    """The ledger of looks: a resumed build is the same build; another build on the same split is warned."""
    monkeypatch.setenv("EDGEPRUNE_CERTIFY_LEDGER", str(tmp_path / "ledger.json"))  # this test's own ledger
    first = build(_cfg(tiny_task, tmp_path / "a", max_drop_pts=100.0, max_evaluations=4), progress=False)
    assert first["certification"]["earlier_builds_on_certify_split"] == 0
    second = build(_cfg(tiny_task, tmp_path / "b", max_drop_pts=100.0, max_evaluations=4), progress=False)
    assert second["certification"]["earlier_builds_on_certify_split"] == 1
    assert any("already used by" in w for w in second["warnings"])
    assert "already used by" in (tmp_path / "b" / "report.md").read_text()
