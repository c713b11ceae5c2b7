"""Exit codes through the real `edgeprune` entry point (``edgeprune.cli:main``; CliRunner bypasses it), the
surgery check on the path that ships the model, and the search settings `build` and `search` share."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

from test_build import tiny_task  # noqa: E402,F401  (the tiny model + data fixture of the build tests)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeprune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_bad_input_exits_2_with_a_one_line_message(tmp_path):
    res = _cli(["build", "--profile", "no-such-device", "--out", str(tmp_path / "o")], tmp_path)
    assert res.returncode == 2, res.stderr
    assert "no-such-device" in res.stderr and "Traceback" not in res.stderr
    res = _cli(["search", "--model", "x", "--data", "y", "--out", str(tmp_path / "p.json"), "--structures", "ffn"],
               tmp_path)
    assert res.returncode == 2 and "--structures" in res.stderr, res.stderr


def test_a_surgery_bug_on_the_shipped_path_stops_the_build_with_exit_4_and_no_bundle(tiny_task, tmp_path):
    out = tmp_path / "out"
    # A deliberate bug: prune_heads_ keeps the wrong heads (each kept index shifted by one). ONNX-vs-PyTorch parity
    # cannot see it (both sides are the wrongly pruned model); only pruned == masked can.
    res = _run(f"""
        import sys
        from edgeprune.adapters.base import Adapter
        from edgeprune.plan import HeadPlan
        original = Adapter.prune_heads_
        def buggy(self, model, plan):
            wrong = HeadPlan(plan.num_heads, tuple(tuple(sorted((h + 1) % n for h in kept))
                                                   for n, kept in zip(plan.num_heads, plan.kept)))
            return original(self, model, wrong)
        Adapter.prune_heads_ = buggy
        from edgeprune.cli import main
        sys.argv = ["edgeprune", "build", "--profile", "x86-64", "--model", {str(tiny_task / "model")!r},
                    "--data", {str(tiny_task / "data.csv")!r}, "--out", {str(out)!r}, "--max-drop", "100",
                    "--max-evals", "12", "--structures", "heads", "--no-recovery"]
        main()
    """, tmp_path)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "pruned logits differ from the masked model" in res.stderr
    assert not (out / "bundle").exists()


def test_search_and_build_share_their_search_defaults():
    import inspect

    from edgeprune import cli
    from edgeprune.config import DEFAULT_SEARCH
    from edgeprune.pipeline import BuildConfig

    assert BuildConfig(profile="x86-64").search_settings() == DEFAULT_SEARCH
    params = inspect.signature(cli.search_cmd).parameters
    defaults = {name: p.default for name, p in params.items()}
    from_cli = cli.search_settings(
        algorithm=defaults["algorithm"], max_evaluations=defaults["max_evals"],
        max_seconds=defaults["max_seconds"] or None, correction=defaults["correction"],
        int8_aware=defaults["int8_aware"], seed=defaults["seed"],
        structures=defaults["structures"], ffn_block_size=defaults["ffn_block_size"])
    assert from_cli == DEFAULT_SEARCH
    assert defaults["profile"] == inspect.signature(cli.build).parameters["profile"].default
    # ... and the benchmark searches as the build does unless told otherwise.
    from benchmarks.run_all import parse_args, search_settings_of

    assert search_settings_of(parse_args([])) == DEFAULT_SEARCH
    assert search_settings_of(parse_args(["--max-evals", "7"])) == DEFAULT_SEARCH.replace(max_evaluations=7)
