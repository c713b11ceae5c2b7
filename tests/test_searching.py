"""run_search orchestration and the `edgeprune search` command on a tiny saved model."""

from __future__ import annotations

import json
import random

import pytest

from edgeprune.errors import EdgepruneError

pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from edgeprune.cli import app  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402
from edgeprune.search.run import analytic_latency, run_search  # noqa: E402
from edgeprune.testing import tiny_model, tiny_tokenizer  # noqa: E402

WORDS = "the a movie film good bad great awful fun boring love hate not very plot actor".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tiny_model("bert", seed=0).save_pretrained(d)
    tiny_tokenizer(d)
    rng = random.Random(0)
    rows = ["text,label"] + [f"{' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))},{rng.randint(0, 1)}"
                             for _ in range(48)]
    (d / "search.csv").write_text("\n".join(rows) + "\n")
    return d


def test_analytic_latency_is_monotone_and_labelled():
    lat = analytic_latency((12,) * 6, 384, 64)
    full, fewer = lat((12,) * 6), lat((12, 12, 12, 12, 12, 6))
    assert full > fewer > lat((0,) * 6) > 0


def test_search_command_writes_a_plan_and_resumes(tiny_dir, tmp_path):
    out = tmp_path / "plan.json"
    common = ["search", "--model", str(tiny_dir), "--data", str(tiny_dir / "search.csv"), "--max-drop", "40",
              "--confidence", "0.8", "--correction", "none", "--max-evals", "12", "--algorithm", "astar"]
    res = CliRunner().invoke(app, common + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    plan = json.loads(out.read_text())
    hp = HeadPlan.from_dict(plan)
    assert hp.num_heads == (4, 4, 4, 4)
    s = plan["search"]
    assert s["latency_source"]["kind"] == "analytic-proxy" and "NOT milliseconds" in s["latency_source"]["unit"]
    assert s["evaluations"] <= 12 and s["search_split_drop_bound_pts"] <= 40
    assert s["data"]["n"] == 48 and "torch" in s["versions"]
    assert plan["heads_removed"] == hp.num_removed
    journal = tmp_path / "plan.json.journal.jsonl"
    assert journal.exists()
    # Resume from the complete journal: no fresh evaluation, same plan.
    out2 = tmp_path / "plan2.json"
    res2 = CliRunner().invoke(app, common + ["--out", str(out2), "--journal", str(journal), "--resume"])
    assert res2.exit_code == 0, res2.output
    plan2 = json.loads(out2.read_text())
    assert plan2["kept_heads"] == plan["kept_heads"]
    assert plan2["search"]["evaluations_replayed"] == plan2["search"]["evaluations"]


def test_run_search_baselines_agree_on_the_contract(tiny_dir):
    for algorithm in ("oneshot", "random"):
        r = run_search(str(tiny_dir), str(tiny_dir / "search.csv"), max_drop_pts=40, confidence=0.8,
                       correction="none", max_evaluations=10, algorithm=algorithm, structures="heads",
                       latency=lambda kc: float(sum(kc)))
        assert r.algorithm == algorithm and r.drop_bound_pts <= 40
        assert r.latency_ms == float(sum(r.plan.kept_counts))
        assert r.info["latency_source"]["kind"] == "callable"


def test_unknown_algorithm_is_a_user_error(tiny_dir, tmp_path):
    res = CliRunner().invoke(app, ["search", "--model", str(tiny_dir), "--data", str(tiny_dir / "search.csv"),
                                   "--out", str(tmp_path / "p.json"), "--algorithm", "beam"])
    assert isinstance(res.exception, EdgepruneError) and res.exception.exit_code == 2
    assert "beam" in str(res.exception)


def test_search_command_joint_structures(tiny_dir, tmp_path):
    """--structures heads+ffn: heads and FFN blocks in one search; the plan loads and carries both parts."""
    out = tmp_path / "joint.json"
    res = CliRunner().invoke(app, ["search", "--model", str(tiny_dir), "--data", str(tiny_dir / "search.csv"),
                                   "--max-drop", "40", "--confidence", "0.8", "--correction", "none",
                                   "--max-evals", "16", "--structures", "heads+ffn", "--ffn-block-size", "4",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    plan = json.loads(out.read_text())
    hp = HeadPlan.from_dict(plan)
    assert hp.has_ffn and hp.ffn_block_size == 4
    s = plan["search"]
    assert s["structures"] == "heads+ffn" and s["space"]["ffn_block_size"] == 4
    assert plan["ffn_blocks_removed"] == hp.ffn_num_removed and plan["heads_removed"] == hp.num_removed
    assert hp.num_removed + hp.ffn_num_removed >= 1, "a 40-point bound leaves room to remove something"
    # The analytic proxy prices FFN width: fewer blocks, lower latency.
    lat = analytic_latency((4,) * 4, 32, 64, (9,) * 4)
    assert lat((4,) * 4, (9,) * 4) > lat((4,) * 4, (9, 9, 9, 3)) > lat((4,) * 4, (0,) * 4)


def test_joint_options_are_checked(tiny_dir, tmp_path):
    common = ["search", "--model", str(tiny_dir), "--data", str(tiny_dir / "search.csv"), "--out",
              str(tmp_path / "p.json")]
    res = CliRunner().invoke(app, common + ["--structures", "ffn"])
    assert res.exit_code != 0 and "structures" in str(res.exception or res.output)
    res = CliRunner().invoke(app, common + ["--structures", "heads", "--ffn-block-size", "4"])
    assert res.exit_code != 0 and "heads+ffn" in str(res.exception or res.output)
    res = CliRunner().invoke(app, common + ["--structures", "heads+ffn", "--ffn-block-size", "5"])
    assert res.exit_code != 0 and "divisible" in str(res.exception or res.output)


@pytest.mark.parametrize("max_drop,stops", [(10.0, True), (40.0, False)])
def test_early_rejection_changes_no_result_and_saves_batches(tiny_dir, monkeypatch, max_drop, stops):
    """A candidate stopped once its partial 'worse' count makes its bound fail for sure: same plan, same frontier."""
    from edgeprune.search.core import Problem

    kw = dict(max_drop_pts=max_drop, confidence=0.8, max_evaluations=24, structures="heads", int8_aware=False,
              eval_batch_size=8, latency=lambda kc: float(sum(kc)), pricing="none", step_units=1, rescore_every=4)
    fast = run_search(str(tiny_dir), str(tiny_dir / "search.csv"), **kw)
    monkeypatch.setattr(Problem, "reject_worse_threshold", lambda self: None)
    full = run_search(str(tiny_dir), str(tiny_dir / "search.csv"), **kw)
    assert fast.plan == full.plan and fast.drop_bound_pts == pytest.approx(full.drop_bound_pts)
    assert [round(p["drop_bound_pts"], 9) for p in fast.to_dict()["search"]["frontier"]] == \
        [round(p["drop_bound_pts"], 9) for p in full.to_dict()["search"]["frontier"]]
    er, none = fast.info["early_rejection"], full.info["early_rejection"]
    assert none["candidates_stopped"] == 0 and none["candidate_batches_skipped"] == 0
    # At 10 points candidates cross the threshold part-way (measured: 3 stopped); at 40 none can.
    assert (er["candidates_stopped"] > 0) is stops
    if stops:
        assert er["candidate_batches_skipped"] > 0 and er["candidate_batches_run"] < none["candidate_batches_run"]
    assert er["batches_per_evaluation"] == 6


def test_early_rejection_threshold_is_sound():
    """Any raw worse count above the threshold fails the bound even with the most favourable 'better' count."""
    from edgeprune.certify.stats import paired_drop_upper_bound
    from edgeprune.search.core import EvalResult, Problem, SearchConfig

    class _Eval:
        def evaluate(self, states, reject_worse=None):
            return [EvalResult(0, 0, 400, 0.0) for _ in states]

    from edgeprune.plan import HeadLayout

    layout = HeadLayout((2,), 4, 8)
    cfg = SearchConfig(max_drop_pts=3.0, confidence=0.9, correction="none", credit_improvement=False,
                       offset_worse=2, offset_better=2)
    prob = Problem(_Eval(), lambda kc: float(sum(kc)), {(0, 0): 1.0, (0, 1): 2.0}, layout, cfg)
    prob.evaluate([frozenset()])
    t = prob.reject_worse_threshold()
    assert t is not None and t >= 0
    w = t + 1 + cfg.offset_worse  # bounded counts of a candidate just past the threshold, best case B = W
    assert 100 * paired_drop_upper_bound(w, w, 400, 0.9) > 3.0
    w = t + cfg.offset_worse  # at the threshold it can still pass
    assert 100 * paired_drop_upper_bound(w, w, 400, 0.9) <= 3.0
