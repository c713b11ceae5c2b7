"""The build report: ``report.json`` (machine-readable), ``report.md`` (a person reads it in a minute) and
``pareto.png`` (accuracy vs latency).

The JSON schema is documented in README.md ("The report"); :data:`REQUIRED_KEYS` lists the dotted keys every
report has, and :func:`check_report` enforces them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Dotted keys every report.json has (README.md documents their meaning).
REQUIRED_KEYS: tuple[str, ...] = (
    "profile.name",
    "model.family", "model.layers", "model.heads_per_layer",
    "heads.total", "heads.removed", "heads.kept_per_layer",
    "accuracy.baseline", "accuracy.final", "accuracy.drop_upper_bound_pts", "accuracy.max_drop_pts",
    "accuracy.confidence", "accuracy.certify_examples",
    "latency_ms.dense_fp32.p50", "latency_ms.dense_fp32.p90", "latency_ms.dense_fp32.p99",
    "latency_ms.dense_int8.p50", "latency_ms.dense_int8.p90", "latency_ms.dense_int8.p99",
    "latency_ms.final.p50", "latency_ms.final.p90", "latency_ms.final.p99",
    "latency_ms.predicted_final", "latency_ms.measured_on",
    "memory.dense_fp32_file_bytes", "memory.final_file_bytes", "memory.final_rss_bytes",
    "search.algorithm", "search.evaluations", "search.wall_s",
    "versions",
)


def get_dotted(data: dict, key: str) -> Any:
    """``get_dotted({"a": {"b": 1}}, "a.b") == 1``; raises KeyError naming the missing part."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def check_report(report: dict) -> None:
    """Raise ValueError listing every required key that is missing."""
    missing = []
    for key in REQUIRED_KEYS:
        try:
            get_dotted(report, key)
        except KeyError:
            missing.append(key)
    if missing:
        raise ValueError(f"report is missing keys: {', '.join(missing)}")


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def _ffn_phrase(report: dict) -> str:
    ffn = report.get("ffn")
    if not ffn:
        return ""
    return (f" and **{ffn['blocks_removed']} of {ffn['blocks_total']} FFN blocks** of {ffn['block_size']} neurons "
            f"({100 * ffn['blocks_removed'] / max(ffn['blocks_total'], 1):.0f}%)")


def _certification_lines(report: dict) -> list[str]:
    """The certification sequence as a table: each tested plan, its counts and bound, pass/fail, the shipped one."""
    c = report.get("certification") or {}
    tests = c.get("tests") or []
    if not tests:
        return []
    lines = ["## Certification", "",
             f"Fixed-sequence testing on the certify split: the unpruned model (quantized as it ships) first, then "
             f"the search's frontier from the least to the most compressed plan, each tested at "
             f"{100 * report['accuracy']['confidence']:.0f}%; the sequence stops at the first failure and the most "
             f"compressed plan that passed ships. Order frozen before the certify split was read: "
             f"{', '.join(o['name'] for o in c.get('order', []))}.", "",
             "| plan | heads removed | FFN blocks removed | worse / better | accuracy | drop bound (pts) | result |",
             "|---|---|---|---|---|---|---|"]
    for t in tests:
        shipped = " (shipped)" if t["name"] == c.get("shipped") else ""
        result = ("pass" if t["passed"] else "FAIL") + shipped + (" (reused)" if t.get("reused") else "")
        lines.append(f"| {t['name']} | {t['heads_removed']} | {t['ffn_blocks_removed']} | {t['n_worse']} / "
                     f"{t['n_better']} | {100 * t['accuracy']:.2f}% | {t['drop_upper_bound_pts']:.2f} | {result} |")
    lines += ["", f"Stopped: {c.get('stop_reason')}.", ""]
    if c.get("earlier_builds_on_certify_split"):
        lines += [f"This certify split was already used by {c['earlier_builds_on_certify_split']} earlier build(s): "
                  "the confidence holds for one build only.", ""]
    return lines


def _real_length_lines(real: dict | None) -> list[str]:
    """One line: the final file and dense INT8 at batch 1 on real texts at their tokenized lengths (no padding)."""
    if not real:
        return []
    fin, int8, tok = real["final"], real["dense_int8"], real["tokens"]
    line = (f"At real input lengths (batch 1, no padding; {real['texts']['used']} certify texts, "
            f"{tok['p50']:.0f} / {tok['p90']:.0f} tokens p50 / p90): edgeprune {_ms(fin['p50'])} / {_ms(fin['p90'])} "
            f"ms p50 / p90 vs dense INT8 {_ms(int8['p50'])} / {_ms(int8['p90'])} ms "
            f"({real['ratio_dense_int8/final']:.2f}x, paired), alternated, {real['measured_on']}.")
    return [line, ""]


def render_markdown(report: dict) -> str:
    """A short Markdown summary of a report dict."""
    acc, lat, mem, heads = report["accuracy"], report["latency_ms"], report["memory"], report["heads"]
    fp32, int8, final = lat["dense_fp32"], lat["dense_int8"], lat["final"]

    def ratio(a: dict, b: dict) -> str:
        return f"{a['p50'] / b['p50']:.2f}x" if a.get("p50") and b.get("p50") else "n/a"

    lines = [
        f"# edgeprune report: {report['model'].get('name', report['model']['family'])} on {report['profile']['name']}",
        "",
        f"**{heads['removed']} of {heads['total']} attention heads removed** "
        f"({100 * heads['removed'] / max(heads['total'], 1):.0f}%){_ffn_phrase(report)}, INT8. "
        f"Accuracy on {acc['certify_examples']} held-out examples: {100 * acc['baseline']:.2f}% -> "
        f"{100 * acc['final']:.2f}%; certified drop <= {acc['drop_upper_bound_pts']:.2f} points at "
        f"{100 * acc['confidence']:.0f}% confidence (your bound: {acc['max_drop_pts']:.2f}).",
        "",
        *_certification_lines(report),
        "## Latency (ms)",
        "",
        f"Where: {lat['measured_on'][:1].upper() + lat['measured_on'][1:]}.",
        "",
        "| model | p50 | p90 | p99 | speed-up vs dense FP32 (p50) |",
        "|---|---|---|---|---|",
        f"| dense FP32 ONNX | {_ms(fp32['p50'])} | {_ms(fp32['p90'])} | {_ms(fp32['p99'])} | 1.00x |",
        f"| dense INT8 ONNX (plain ORT dynamic quantization) | {_ms(int8['p50'])} | {_ms(int8['p90'])} | "
        f"{_ms(int8['p99'])} | {ratio(fp32, int8)} |",
        f"| **edgeprune (pruned INT8)** | {_ms(final['p50'])} | {_ms(final['p90'])} | {_ms(final['p99'])} | "
        f"{ratio(fp32, final)} |",
        "",
        f"Final vs dense INT8: {ratio(int8, final)} (p50). LUT-predicted latency of the final model: "
        f"{_ms(lat['predicted_final'])} ms ({lat.get('predicted_source', 'latency table')}).",
        "",
        *_real_length_lines(lat.get("real_lengths")),
        "## Size and memory",
        "",
        "| | bytes |",
        "|---|---|",
        f"| dense FP32 file | {_mib(mem['dense_fp32_file_bytes'])} |",
        f"| final file | {_mib(mem['final_file_bytes'])} |",
        f"| final session RSS (after creation, minus baseline, plus run peak) | {_mib(mem['final_rss_bytes'])} |",
        "",
        "## Kept per layer" if report.get("ffn") else "## Heads kept per layer",
        "",
        "| layer | " + " | ".join(str(i) for i in range(len(heads["kept_per_layer"]))) + " |",
        "|---|" + "---|" * len(heads["kept_per_layer"]),
        "| kept | " + " | ".join(str(len(k)) for k in heads["kept_per_layer"]) + " |",
        *([f"| FFN width kept (of {report['ffn']['full_width']}) | "
           + " | ".join(str(w) for w in report["ffn"]["kept_widths"]) + " |"] if report.get("ffn") else []),
        "",
        "## Search",
        "",
        f"{report['search']['algorithm']}: {report['search']['evaluations']} evaluations, "
        f"{report['search']['wall_s']:.0f} s.",
    ]
    if report.get("e2e") is not None:
        from edgeprune.onnx.e2e import report_lines

        lines += ["", "## Text in, label out (model.e2e.onnx)", "", *report_lines(report["e2e"])]
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    lines += ["", "Files: `bundle/model.onnx` (INT8), `bundle/model.ort`, `plan.json`, `report.json`, `pareto.png`.", ""]
    return "\n".join(lines)


def plot_pareto(path: str | Path, frontier: list[dict], chosen: dict, baselines: dict[str, list[dict]] | None = None,
                max_drop_pts: float | None = None, sequence: list[dict] | None = None) -> Path | None:
    """Accuracy drop vs predicted latency: the frontier, the baselines, the certification sequence's tested plans
    (passed / failed) and the shipped model (the star).

    Points are dicts with ``latency_ms`` and ``drop_pts``. Returns None when matplotlib is unavailable.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if frontier:
        pts = sorted(frontier, key=lambda p: p["latency_ms"])
        ax.plot([p["latency_ms"] for p in pts], [p["drop_pts"] for p in pts], "o-", label="A* frontier", ms=4)
    for name, pts in (baselines or {}).items():
        if pts:
            pts = sorted(pts, key=lambda p: p["latency_ms"])
            ax.plot([p["latency_ms"] for p in pts], [p["drop_pts"] for p in pts], "x--", label=name, ms=5, alpha=0.8)
    for passed, marker, color, label in ((True, "s", "green", "certified (passed)"),
                                         (False, "X", "black", "failed certification")):
        pts = [p for p in (sequence or []) if bool(p.get("passed")) is passed and p.get("latency_ms") is not None]
        if pts:
            ax.plot([p["latency_ms"] for p in pts], [p["drop_pts"] for p in pts], marker, color=color, ms=8,
                    mfc="none", mew=1.5, label=label, ls="none")
    ax.plot([chosen["latency_ms"]], [chosen["drop_pts"]], "*", color="crimson", ms=14, label="shipped")
    if max_drop_pts is not None:
        ax.axhline(max_drop_pts, color="grey", lw=1, ls=":", label=f"max drop {max_drop_pts:g} pts")
    ax.set_xlabel("predicted latency (ms, latency table)")
    ax.set_ylabel("accuracy drop, upper bound (points, search split)")
    ax.set_title("accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Check and write ``report.json`` and ``report.md`` into ``out_dir``."""
    check_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return out / "report.json", out / "report.md"
