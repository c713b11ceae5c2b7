"""Report rendering: required keys, Markdown, plot."""

from __future__ import annotations

import copy

import pytest

from edgeprune.output.report import REQUIRED_KEYS, check_report, get_dotted, plot_pareto, render_markdown, write_report


def sample_report() -> dict:
    lat = {"p50": 10.0, "p90": 11.0, "p99": 12.5}
    return {
        "profile": {"name": "raspberrypi4"},
        "model": {"family": "bert", "name": "tiny", "layers": 2, "heads_per_layer": [4, 4]},
        "heads": {"total": 8, "removed": 3, "kept_per_layer": [[0, 1, 2], [1, 3]]},
        "accuracy": {"baseline": 0.83, "final": 0.825, "drop_upper_bound_pts": 0.9, "max_drop_pts": 1.0,
                     "confidence": 0.95, "certify_examples": 2000},
        "latency_ms": {"dense_fp32": lat, "dense_int8": {k: v / 1.6 for k, v in lat.items()},
                       "final": {k: v / 2.5 for k, v in lat.items()}, "predicted_final": 4.1,
                       "measured_on": "measured on this host with raspberrypi4 settings, not on a Raspberry Pi 4"},
        "memory": {"dense_fp32_file_bytes": 90_000_000, "final_file_bytes": 20_000_000, "final_rss_bytes": 60_000_000},
        "search": {"algorithm": "astar", "evaluations": 120, "wall_s": 95.0},
        "versions": {"edgeprune": "0.1.0"},
    }


def test_required_keys_checked():
    report = sample_report()
    check_report(report)
    for key in ("accuracy.final", "latency_ms.final.p99", "versions"):
        broken = copy.deepcopy(report)
        parent, _, leaf = key.rpartition(".")
        del (get_dotted(broken, parent) if parent else broken)[leaf]
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            check_report(broken)
    assert len(REQUIRED_KEYS) == len(set(REQUIRED_KEYS))


def test_markdown_and_files(tmp_path):
    report = sample_report()
    md = render_markdown(report)
    assert "**3 of 8 attention heads removed**" in md
    assert "2.50x" in md and "1.60x" in md  # fp32/final and fp32/int8 p50 ratios
    assert "not on a Raspberry Pi 4" in md
    js, mdp = write_report(report, tmp_path)
    assert js.is_file() and mdp.read_text() == md


def test_pareto_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_pareto(tmp_path / "p.png", [{"latency_ms": 5, "drop_pts": 0.2}, {"latency_ms": 4, "drop_pts": 0.8}],
                       {"latency_ms": 4, "drop_pts": 0.8}, {"greedy": [{"latency_ms": 4.5, "drop_pts": 0.9}]}, 1.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
