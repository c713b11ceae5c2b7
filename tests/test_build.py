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
    assert 0.0 <= acc["final"] <= 1.0 and acc["certify_examples"] == 120
    # certified means: the shipped file's bound is within the promise (checked, not assumed, at this loose bound)
    assert acc["certified"] == (acc["drop_upper_bound_pts"] <= acc["max_drop_pts"] + 1e-9)
    flips = acc["search_int8_allowance"]  # the dense INT8 model's flips on the search split, added to the search
    assert flips["n"] == 119 and flips["worse"] >= 0 and flips["better"] >= 0, (flips, report["data"]["search"], report["data"]["certify"])
    for name in ("dense_fp32", "dense_int8", "final"):
        lat = report["latency_ms"][name]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert "measured on" in report["latency_ms"]["measured_on"]
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
    assert "3 of 8 heads removed" in result.output and "not on a Raspberry Pi 4" in result.output
    bad = CliRunner().invoke(app, ["build", "--max-drop", "-2", "--out", str(tmp_path / "o2")])
    assert isinstance(bad.exception, EdgepruneError) and bad.exception.exit_code == 2  # main() maps it to exit 2
    assert "--max-drop" in str(bad.exception)


def _frontier(n_points, removed_of, sd=0.35, z=2.13):
    # Plans removing more have a larger drop; bound = drop + z * sd (points), as the search computes it.
    return [{"latency_ms": 10.0 - i, "drop_pts": 0.15 * i - 0.6, "drop_bound_pts": 0.15 * i - 0.6 + z * sd,
             **removed_of(i)} for i in range(n_points)]


def test_certification_fallbacks_target_pass_probability_and_end_unpruned():
    from edgeprune.certify.policy import frontier_fallbacks, pass_probability
    from edgeprune.plan import HeadPlan

    frontier = _frontier(9, lambda i: {"removed": [[0, h] for h in range(i)]})
    frontier[0]["drop_pts"] = frontier[0]["drop_bound_pts"] = 0.0  # the unpruned root
    plan_json = {"num_heads": [8, 8], "removed": [[0, h] for h in range(5)],
                 "search": {"frontier": frontier, "bound": {"per_candidate_confidence": 0.9833}}}
    plans = frontier_fallbacks(plan_json, 2, max_drop_pts=1.0)
    assert len(plans) == 2 and plans[-1] == HeadPlan.full([8, 8])  # finally: the dense model as shipped
    mid = plans[0]
    assert 0 < mid.num_removed < 5
    probs = {i: pass_probability(p, 1.0, 2.13) for i, p in enumerate(frontier)}
    assert probs[mid.num_removed] >= 0.75 > probs[mid.num_removed + 1]  # the fastest plan reaching the target
    # Three fallbacks: two middle plans (targets 2/3 and 5/6), the safer one removing less, then the unpruned plan.
    three = frontier_fallbacks(plan_json, 3, max_drop_pts=1.0)
    assert len(three) == 3 and three[0].num_removed > three[1].num_removed > 0 and three[2].is_full
    assert frontier_fallbacks(plan_json, 0, 1.0) == []
    assert frontier_fallbacks(dict(plan_json, removed=[]), 2, 1.0)[-1] != HeadPlan.full([8, 8])


def test_pass_probability_formula():
    """Phi((max_drop - bound) / (s * sqrt(2))) for equal splits: one half at the limit, monotone, exact at the root."""
    import math
    from statistics import NormalDist

    from edgeprune.certify.policy import pass_probability

    z = 2.128
    at_limit = {"drop_pts": 1.0 - z * 0.4, "drop_bound_pts": 1.0}
    assert pass_probability(at_limit, 1.0, z) == 0.5
    p = {"drop_pts": -0.2, "drop_bound_pts": -0.2 + z * 0.4}
    assert pass_probability(p, 1.0, z) == NormalDist().cdf((1.0 - p["drop_bound_pts"]) / (0.4 * math.sqrt(2)))
    safer = {"drop_pts": -0.4, "drop_bound_pts": -0.4 + z * 0.4}
    assert pass_probability(safer, 1.0, z) > pass_probability(p, 1.0, z) > pass_probability(at_limit, 1.0, z)
    # A certify split 4x the search split: certification's own width shrinks, so the chance rises.
    assert pass_probability(p, 1.0, z, n_ratio=0.25) > pass_probability(p, 1.0, z)
    assert pass_probability({"drop_pts": 0.0, "drop_bound_pts": 0.0}, 1.0, z) == 1.0


def test_fallbacks_of_a_joint_search_keep_their_ffn_part():
    from edgeprune.certify.policy import frontier_fallbacks
    from edgeprune.plan import HeadPlan

    frontier = _frontier(9, lambda i: {"removed": [[0, h] for h in range(i // 2)],
                                       "ffn_removed": [[1, b] for b in range(i - i // 2)]})
    plan_json = {"num_heads": [8, 8], "removed": [[0, h] for h in range(4)],
                 "ffn": {"block_size": 4, "num_blocks": [6, 6], "kept_blocks": [list(range(6)), [4, 5]]},
                 "ffn_removed": [[1, b] for b in range(4)], "search": {"frontier": frontier}}
    plans = frontier_fallbacks(plan_json, 2, max_drop_pts=1.0)
    mid = plans[0]
    assert mid.has_ffn and mid.ffn_num_removed > 0 and 0 < mid.num_removed + mid.ffn_num_removed < 8
    assert plans[-1] == HeadPlan.full([8, 8]) and plans[-1].is_full


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
