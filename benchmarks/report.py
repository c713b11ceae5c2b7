"""Regenerate ``benchmarks/RESULTS.md`` from the recorded results (issue #20), without measuring anything.

Reads the newest JSON of each known benchmark in ``benchmarks/results/`` (``<stem>-<YYYY-MM-DD>.json``, newest by the
date in the file name; run_all writes ``<YYYY-MM-DD>.json``) and writes one Markdown file:

1. **What you get**: per task (the default task; Banking77 when its JSON exists) the shipped edgeprune file against
   dense ORT FP32, dense ORT INT8, optimum's arm64 preset (when measured) and the best hand-made smaller model (the
   first k layers or a uniformly thinned one, distilled; ``smaller_model-<date>.json`` and, for Banking77,
   ``smaller_model-banking77-<date>.json``):
   accuracy on the certify split, certified drop bound, certified or not, p50 speed-up vs dense INT8 and where the
   latency was measured. Several builds (seeds): the median, with the range.
2. **Goals**: each goal of the issues, reached or not, with the measured figure.
3. **What limits it**: only what the JSONs contain (churn of the shipped plans against the discordance a certify
   split of that size can prove, the INT8-vs-FP32 gap, where the build time goes, ...).
3b. **Scale**: a few lines from the newest ``scale`` JSON (BERT-base size, random weights: latency table build time
   and error, search wall time at the default budget, build time, peak memory; ``benchmarks/scale.py``).
4. **One section per benchmark**: command, date, host, versions and its table. The table is the sibling ``.md`` the
   run wrote (it describes the code that ran and keeps the hand-written readings), else the benchmark's own renderer
   called on the JSON, else a short generic table. A benchmark with no JSON says "not run yet" and the command that
   produces it.

``python -m benchmarks.run_all`` (hours: re-measures the peer comparison) writes ``results/run_all-<date>.md`` and
then calls :func:`write_results_md`, so both commands end with the same RESULTS.md.

Usage::

    python -m benchmarks.report [--results benchmarks/results] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

HERE = Path(__file__).resolve().parent
DATE = r"(\d{4}-\d{2}-\d{2})"

# The issues' goals (targets, not measurements).
GOALS = {
    "speedup_vs_dense_int8": 2.0,  # median shipped file vs dense ORT INT8, p50
    "speedup_vs_dense_fp32": 3.5,  # median shipped file vs dense ORT FP32, p50
    "max_drop_pts": 1.0,  # certified drop bound
    "builds": 5,  # "all five default builds ship a pruned certified plan"
    "build_s": 15 * 60,
    "search_s": 5 * 60,
    "speedup_vs_optimum": 2.0,
    "scale_search_s": 30 * 60,  # the search at the default budget on a BERT-base-size model (benchmarks/scale.py)
}


# ---------------------------------------------------------------------------------------------------------------------
# the known benchmarks
# ---------------------------------------------------------------------------------------------------------------------
def _builds_md(rec: dict) -> str:
    from benchmarks.build_summary import markdown

    return markdown(rec["builds"], rec.get("what", "builds"))


def _module_md(module: str, function: str = "markdown") -> Callable[[dict], str]:
    def render(rec: dict) -> str:
        return getattr(importlib.import_module(f"benchmarks.{module}"), function)(rec)

    return render


def _families_md(rec: dict) -> str:
    """families.py writes JSON only: its p50s per family, nothing computed beyond the recorded ratios."""
    lines = [f"{rec.get('what', '')} {rec.get('note', '')}".strip(), "",
             "| family | heads / FFN blocks removed | dense FP32 ms | dense INT8 ms | pruned INT8 ms | pruned INT8 vs "
             "dense FP32 |", "|---|---|---|---|---|---|"]
    for r in rec.get("rows", []):
        p, plan = r["p50_ms"], r["plan"]
        lines.append(f"| {r['family']} | {plan['heads_removed']}/{plan['heads_total']} / {plan['ffn_blocks_removed']}/"
                     f"{plan['ffn_blocks_total']} | {p['dense_fp32']:.1f} | {p['dense_int8']:.1f} | "
                     f"{p['pruned30_int8']:.1f} | {1 / r['ratio_to_fp32']['pruned30_int8']:.2f}x |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Bench:
    """One benchmark's result series in ``benchmarks/results/``.

    Attributes:
        key: name in this module (and in ``latest=`` overrides).
        stem: file name before ``-<date>.json``; ``""`` for run_all's ``<date>.json``.
        module: ``benchmarks.<module>`` writes it; its docstring's Usage block is the command when the JSON has none.
        title: section heading.
        render: the benchmark's own JSON -> Markdown renderer, used when the run left no sibling ``.md``.
        usage: the command when the module's Usage block does not produce this series (a flag of another script).
    """

    key: str
    stem: str
    module: str
    title: str
    render: Optional[Callable[[dict], str]] = None
    usage: str = ""

    def command(self) -> str:
        return f"`{self.usage}`" if self.usage else usage_command(self.module)

    def pattern(self) -> re.Pattern:
        return re.compile(f"^{re.escape(self.stem)}-{DATE}\\.json$" if self.stem else f"^{DATE}\\.json$")

    def sibling_md(self, path: Path, date: str) -> Path:
        return path.with_name(f"run_all-{date}.md") if self.key == "run_all" else path.with_suffix(".md")


BENCHES = (
    Bench("builds", "builds-distill", "build_summary", "Five default builds (default task, --recovery distill)",
          _builds_md),
    Bench("banking77", "banking77", "banking77", "Banking77 through edgeprune build", _module_md("banking77")),
    Bench("smaller_model", "smaller_model", "smaller_model", "The hand-made smaller model (and optimum) vs edgeprune",
          _module_md("smaller_model")),
    Bench("smaller_model_banking77", "smaller_model-banking77", "smaller_model",
          "The hand-made smaller model (and optimum) vs edgeprune on Banking77", _module_md("smaller_model"),
          usage="python -m benchmarks.smaller_model --task banking77 --build OUT [--thin 0.5 0.65]"),
    Bench("certify_fraction", "certify_fraction", "certify_fraction", "Which share of --data should certify",
          _module_md("certify_fraction")),
    Bench("certify_simulation", "certify_simulation", "certify_simulation",
          "Exact paired test and fixed-sequence certification (simulation)"),
    Bench("task_splits", "task_splits", "task_splits", "Fine-tune / search / certify splits of the default task"),
    Bench("recovery_calibration", "recovery_calibration", "recovery_calibration",
          "Recovery calibration (refit, distillation) on one-shot plans", _module_md("recovery_calibration")),
    Bench("recovery_calibration_distill", "recovery_calibration_distill", "recovery_calibration",
          "Distillation only, one-shot plans",
          usage="python -m benchmarks.recovery_calibration --distill-only [--fractions 0.5] [--distill-epochs 2]"),
    Bench("distill_65", "distill-65", "recovery_calibration", "Distillation of the one-shot 65% plan, two losses"),
    Bench("recovery", "recovery", "recovery", "Least-squares recovery (heads-only plans)", _module_md("recovery")),
    Bench("families", "families", "families", "Model families at BERT-base size (latency only)", _families_md),
    Bench("lut_accuracy", "lut_accuracy", "lut_accuracy", "Latency table accuracy (heads)",
          _module_md("lut_accuracy", "to_markdown")),
    Bench("lut_accuracy_ffn", "lut_accuracy-ffn", "lut_accuracy", "Latency table accuracy (heads + FFN)",
          _module_md("lut_accuracy", "to_markdown")),
    Bench("ffn_additivity", "ffn_additivity", "ffn_additivity", "Heads and FFN latency add up per layer"),
    Bench("ffn_block_size", "ffn_block_size", "ffn_block_size", "FFN latency against kept width (block size)",
          _module_md("ffn_block_size")),
    Bench("scale", "scale", "scale", "Scale: BERT-base size, random weights (search, latency table, memory)",
          _module_md("scale")),
    Bench("run_all", "", "run_all", "Full peer run (run_all)", _module_md("run_all", "render_markdown")),
)
BY_KEY = {b.key: b for b in BENCHES}


@dataclass
class Found:
    """The newest result of one benchmark (``rec`` is None when it was not run)."""

    bench: Bench
    path: Optional[Path] = None
    date: Optional[str] = None
    rec: Optional[dict] = None


def find_latest(results: Path, latest: Optional[Mapping[str, Path]] = None) -> dict[str, Found]:
    """The newest JSON of each known benchmark, by the date in its file name; ``latest`` forces a file per key.

    Raises:
        KeyError: a ``latest`` key that is no known benchmark.
    """
    latest = dict(latest or {})
    for key in latest:
        BY_KEY[key]  # noqa: B018 - a typo in a key must not pass silently
    names = sorted(p.name for p in results.glob("*.json")) if results.is_dir() else []
    out: dict[str, Found] = {}
    for b in BENCHES:
        if b.key in latest:
            path = Path(latest[b.key])
            m = re.search(DATE, path.name)
            date = m.group(1) if m else path.stem
        else:
            dated = [(m.group(1), n) for n in names if (m := b.pattern().match(n))]
            if not dated:
                out[b.key] = Found(b)
                continue
            date, name = max(dated)
            path = results / name
        rec = json.loads(path.read_text())
        out[b.key] = Found(b, path, (rec.get("date") if isinstance(rec, dict) else None) or date, rec)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# provenance: command, host, versions
# ---------------------------------------------------------------------------------------------------------------------
def usage_command(module: str) -> str:
    """The command(s) of the module docstring's ``Usage::`` block (else its first ``python ...`` line)."""
    doc = importlib.import_module(f"benchmarks.{module}").__doc__ or ""
    lines = doc.splitlines()
    start = next((i + 1 for i, ln in enumerate(lines) if ln.strip().lower().startswith("usage")), None)
    block: list[str] = []
    if start is not None:
        for ln in lines[start:]:
            if ln.strip() and not ln.startswith(" "):
                break
            if ln.strip():
                block.append(ln)
    if not block:
        block = [m.group(0) for ln in lines if (m := re.search(r"python (-m )?benchmarks[./][\w./]+[^`]*", ln))][:1]
    # One command per entry: a line ending in "\" or followed by a deeper-indented line continues.
    cmds: list[str] = []
    indent = min(len(ln) - len(ln.lstrip()) for ln in block) if block else 0
    for ln in block:
        text = ln.split(" #")[0].strip().rstrip("\\").rstrip()
        if cmds and (len(ln) - len(ln.lstrip()) > indent or cmds[-1].endswith("\x00")):
            cmds[-1] = cmds[-1].removesuffix("\x00") + " " + text
        else:
            cmds.append(text)
        if ln.rstrip().endswith("\\"):
            cmds[-1] += "\x00"
    cmds = [" ".join(c.removesuffix("\x00").split()) for c in cmds]  # "\" in a docstring joins lines itself
    return "; ".join(f"`{c}`" for c in cmds) or f"`python -m benchmarks.{module}`"


def command_of(f: Found) -> str:
    rec = f.rec or {}
    if rec.get("command"):
        return f"`{rec['command']}`"
    if rec.get("commands"):
        return "; ".join(f"`{c}`" for c in rec["commands"])
    return f.bench.command() + " (the module's usage; the run did not record its command)"


def host_of(rec: dict) -> str:
    """Where the benchmark ran, from its own fields (host name, machine, CPU, measured_on)."""
    parts: list[str] = []
    env_host = (rec.get("environment") or {}).get("host")
    for h in (rec.get("host"), env_host):
        if isinstance(h, str) and h:
            parts.append(h)
        elif isinstance(h, dict):
            cpu = h.get("cpu_model") or h.get("processor")
            arch = h.get("arch") or h.get("machine")
            cores = h.get("logical_cores")
            parts.append(", ".join(str(x) for x in (cpu, arch, f"{cores} cores" if cores else None) if x))
    if isinstance(rec.get("machine"), str):
        parts.append(rec["machine"])
    if rec.get("cpus"):
        parts.append(f"{rec['cpus']} CPUs")
    measured = rec.get("measured_on") or (rec.get("environment") or {}).get("measured_on")
    builds = rec.get("builds") or ([rec["summary"]["build"]] if isinstance(rec.get("summary"), dict) else [])
    measured = measured or next((b.get("measured_on") for b in builds if b.get("measured_on")), None)
    if measured:
        parts.append(str(measured))
    parts = [p for p in parts if p]
    return "; ".join(dict.fromkeys(parts)) or "not recorded"


def versions_of(rec: dict) -> dict[str, str]:
    """Library versions wherever the benchmark recorded them."""
    out: dict[str, str] = {}
    names = ("python", "edgeprune", "torch", "transformers", "onnx", "onnxruntime", "numpy")
    for src in (rec, rec.get("setup") or {}, rec.get("host") if isinstance(rec.get("host"), dict) else {}):
        for k in names:
            if isinstance(src.get(k), str):
                out[k] = src[k]
        if isinstance(src.get("ort_version"), str):
            out["onnxruntime"] = src["ort_version"]
    for src in (rec.get("versions"), (rec.get("environment") or {}).get("versions")):
        if isinstance(src, dict):
            out.update({k: str(v) for k, v in src.items() if isinstance(v, (str, int, float))})
    opt = rec.get("optimum") if isinstance(rec.get("optimum"), dict) else {}
    if opt.get("status") == "ok" and isinstance(opt.get("versions"), dict):
        out.update({f"{k} (optimum env)": str(v) for k, v in opt["versions"].items()})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# numbers: medians over builds
# ---------------------------------------------------------------------------------------------------------------------
def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def _mr(xs: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``median (min-max)``, or the one value."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    if len(xs) == 1 or min(xs) == max(xs):
        return fmt(xs[0]) + ("" if len(xs) == 1 else f" (all {len(xs)})")
    return f"{fmt(_med(xs))} ({fmt(min(xs))} to {fmt(max(xs))})"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _pts(x: float) -> str:
    return f"{x:.2f}"


def _x(x: float) -> str:
    return f"{x:.2f}x"


def _dense_test(b: dict) -> Optional[dict]:
    return next((t for t in b.get("sequence") or [] if t.get("name") == "dense"), None)


def _shipped_test(b: dict) -> Optional[dict]:
    return next((t for t in b.get("sequence") or [] if t.get("name") == b.get("shipped")), None)


def pruned_certified(b: dict) -> bool:
    return bool(b.get("certified")) and b.get("shipped") not in (None, "dense")


def build_figures(builds: Sequence[dict]) -> dict[str, Any]:
    """Medians and ranges of a list of ``build_summary.summarise`` rows (one per seed)."""
    dense = [_dense_test(b) for b in builds]
    return {
        "n": len(builds),
        "seeds": [b.get("seed") for b in builds],
        "final_accuracy": [b["accuracy"]["final"] for b in builds],
        "baseline_accuracy": [b["accuracy"]["baseline"] for b in builds],
        "certify_n": [b["accuracy"].get("certify_examples") for b in builds],
        "bound": [b["drop_upper_bound_pts"] for b in builds],
        "pruned_certified": sum(pruned_certified(b) for b in builds),
        "vs_int8": [b["final_vs_dense_int8"] for b in builds],
        "vs_fp32": [b["final_vs_dense_fp32"] for b in builds],
        "fp32_vs_int8": [b["p50_ms"]["dense_int8"] / b["p50_ms"]["dense_fp32"] for b in builds],
        "int8_vs_fp32": [b["p50_ms"]["dense_fp32"] / b["p50_ms"]["dense_int8"] for b in builds],
        "dense_int8_accuracy": [d["accuracy"] for d in dense if d],
        "dense_int8_bound": [d["drop_upper_bound_pts"] for d in dense if d],
        "dense_int8_passed": [bool(d["passed"]) for d in dense if d],
        "dense_int8_flips": [(d["n_worse"], d["n_better"]) for d in dense if d],
        "real_vs_int8": [b.get("real_lengths_final_vs_dense_int8") for b in builds
                         if b.get("real_lengths_final_vs_dense_int8") is not None],
        "build_s": [b["build_wall_s"] for b in builds if b.get("build_wall_s") is not None],
        "build_s_by_plans": {k: [b["build_wall_s"] for b in builds if b.get("order_length") == k
                                 and b.get("build_wall_s") is not None]
                             for k in sorted({b.get("order_length") for b in builds if b.get("order_length")})},
        "stages_s": [b.get("stages_s") or {} for b in builds],
        "measured_on": sorted({b.get("measured_on") for b in builds if b.get("measured_on")}),
    }


#: Row kinds of smaller_model's hand-made models: the first k layers, and the uniformly thinned ones.
HAND_MADE = ("smaller", "thinned")


def best_smaller(rows: Sequence[dict]) -> Optional[dict]:
    """The best hand-made model: the fastest certified one, else the one with the lowest bound."""
    small = [r for r in rows if r.get("kind") in HAND_MADE]
    cert = [r for r in small if r.get("certified")]
    if cert:
        return max(cert, key=lambda r: r["speedup_vs_dense_int8"])
    return min(small, key=lambda r: r["bound_pts"]) if small else None


# ---------------------------------------------------------------------------------------------------------------------
# 1. what you get
# ---------------------------------------------------------------------------------------------------------------------
LEAD_HEADER = ["| model | accuracy (certify split) | certified drop bound (pts) | certified | p50 vs dense ORT INT8 "
               "| from |", "|---|---|---|---|---|---|"]


def _not_run(f: Found, what: str = "") -> str:
    name = f"{f.bench.stem}-<date>.json" if f.bench.stem else "<date>.json"
    return f"{what or f.bench.title}: not run yet (`{name}` absent); produced by {f.bench.command()}"


def _lead_rows(builds: Sequence[dict], source: str) -> tuple[list[str], dict[str, Any]]:
    g = build_figures(builds)
    n = g["n"]
    many = f"median of {n} builds (seeds {', '.join(str(s) for s in g['seeds'])}; range in parentheses), " if n > 1 \
        else "one build, "
    rows = [
        f"| **edgeprune, shipped file** | {_mr(g['final_accuracy'], _pct)} | {_mr(g['bound'], _pts)} | "
        f"{'yes' if g['pruned_certified'] == n else 'no'}, pruned and certified in {g['pruned_certified']} of {n} | "
        f"**{_mr(g['vs_int8'], _x)}** | {many}`{source}` |",
        f"| dense ORT FP32 | {_mr(g['baseline_accuracy'], _pct)} | the reference the bounds are against | - | "
        f"{_mr(g['fp32_vs_int8'], _x)} | accuracy: the unpruned FP32 model (the builds' baseline); speed: ratio of "
        "the builds' p50s |",
    ]
    if g["dense_int8_accuracy"]:
        passed = sum(g["dense_int8_passed"])
        rows.append(f"| dense ORT INT8 | {_mr(g['dense_int8_accuracy'], _pct)} | {_mr(g['dense_int8_bound'], _pts)} | "
                    f"{'yes' if passed == len(g['dense_int8_passed']) else 'no'} ({passed} of "
                    f"{len(g['dense_int8_passed'])}) | 1.00x | the builds' first certification test |")
    return rows, g


def _peer_rows(sm: Found) -> tuple[list[str], list[str]]:
    """optimum and the best hand-made model from smaller_model's side-by-side run; and notes."""
    rows, notes = [], []
    if sm.rec is None:
        notes.append(_not_run(sm, "Optimum arm64 and the hand-made smaller model"))
        return rows, notes
    rec, src = sm.rec, sm.path.name
    opt = next((r for r in rec["rows"] if r.get("kind") == "optimum"), None)
    if opt:
        rows.append(f"| optimum arm64 preset (dense) | {_pct(opt['accuracy'])} | {_pts(opt['bound_pts'])} "
                    f"({opt.get('bound_note', '')}) | {'yes' if opt['certified'] else 'no'} | "
                    f"{_x(opt['speedup_vs_dense_int8'])} | `{src}` |")
    else:
        status = (rec.get("optimum") or {}).get("status", "not recorded by this run")
        notes.append(f"optimum arm64 preset: not in `{src}` ({status}); {sm.bench.command()} adds it where the "
                     "transformers 4.57 environment exists.")
    best = best_smaller(rec["rows"])
    if best:
        rows.append(f"| best hand-made smaller model: {best['name']} | {_pct(best['accuracy'])} | "
                    f"{_pts(best['bound_pts'])} ({best.get('bound_note', '')}) | "
                    f"{'yes' if best['certified'] else 'no'} | {_x(best['speedup_vs_dense_int8'])} | `{src}` |")
        fastest = max((r for r in rec["rows"] if r.get("kind") in HAND_MADE), key=lambda r: r["speedup_vs_dense_int8"])
        if fastest is not best:
            notes.append(f"The fastest hand-made model, {fastest['name']}, runs at "
                         f"{_x(fastest['speedup_vs_dense_int8'])} with bound {_pts(fastest['bound_pts'])} pts: "
                         f"{'certified' if fastest['certified'] else 'not certified'}.")
    ep = [r for r in rec["rows"] if r.get("kind") == "edgeprune"]
    if ep:
        notes.append(f"In that run's side-by-side timing (`{src}`) the edgeprune builds measured "
                     + ", ".join(f"{r['name'].removeprefix('edgeprune build ')} {_x(r['speedup_vs_dense_int8'])}"
                                 for r in ep) + " vs dense INT8 (the peers' rows above are from that run).")
    where = f"`{src}`: host {host_of(rec)}"
    if rec.get("profile"):
        where += (f", {rec['profile']} settings ({rec.get('ort_threads')} ORT threads, batch {rec.get('batch')}, "
                  f"{rec.get('seq_len')} tokens)")
    notes.append(f"Latency of the peer rows measured on {where}.")
    return rows, notes


def lead_section(found: dict[str, Found]) -> list[str]:
    lines = ["## What you get", ""]
    b, sm, bk = found["builds"], found["smaller_model"], found["banking77"]
    lines += ["### Default task: all-MiniLM-L6-v2 sentiment on Rotten Tomatoes snippets", ""]
    if b.rec is None:
        lines += [_not_run(b), ""]
    else:
        rows, g = _lead_rows(b.rec["builds"], b.path.name)
        peer, notes = _peer_rows(sm)
        lines += LEAD_HEADER + rows + peer + [""]
        lines.append(f"Certify split: {', '.join(str(n) for n in sorted(set(g['certify_n'])))} examples; bound = "
                     "one-sided upper bound on the accuracy drop against the unpruned FP32 model (the build's "
                     f"fixed-sequence certificate for edgeprune). edgeprune vs dense FP32: {_mr(g['vs_fp32'], _x)}. "
                     f"Latency of the build rows: {'; '.join(g['measured_on']) or 'not recorded'} (each build's own "
                     "alternating measurement).")
        lines += [""] + [f"- {n}" for n in notes] + [""]
    lines += ["### Banking77 intents (77 classes, short queries)", ""]
    if bk.rec is None:
        lines += [_not_run(bk), ""]
    else:
        s = bk.rec["summary"]
        rows, g = _lead_rows([s["build"]], bk.path.name)
        base = (s.get("task") or {}).get("base_model")
        smb = found["smaller_model_banking77"]
        peer, notes = _peer_rows(smb)
        lines += LEAD_HEADER + rows + peer + [""]
        lines.append(f"Base model {base or 'not recorded'}, certify split {s['split'].get('certify')} queries. "
                     f"edgeprune vs dense FP32: {_mr(g['vs_fp32'], _x)}. Latency: "
                     f"{'; '.join(g['measured_on']) or 'not recorded'}.")
        lines += [""] + [f"- {n}" for n in notes] + [""]
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# 2. goals
# ---------------------------------------------------------------------------------------------------------------------
def _goal(task: str, goal: str, measured: str, reached: Optional[bool]) -> dict[str, Any]:
    return {"task": task, "goal": goal, "measured": measured, "reached": reached}


def _build_goals(task: str, builds: Sequence[dict], all_five: bool) -> list[dict[str, Any]]:
    g = build_figures(builds)
    n, lim = g["n"], GOALS["max_drop_pts"]
    cert_all = g["pruned_certified"] == n
    many = "median" if n > 1 else "one build"
    cert = f"pruned + certified {g['pruned_certified']}/{n}, bounds {_mr(g['bound'], _pts)} pts"
    out = [
        _goal(task, f"shipped vs dense ORT INT8 >= {GOALS['speedup_vs_dense_int8']:.1f}x at <= {lim:.1f} pt certified",
              f"{_mr(g['vs_int8'], _x)} ({many}); {cert}",
              _med(g["vs_int8"]) >= GOALS["speedup_vs_dense_int8"] and cert_all and _med(g["bound"]) <= lim),
        _goal(task, f"shipped vs dense ORT FP32 >= {GOALS['speedup_vs_dense_fp32']:.1f}x at <= {lim:.1f} pt certified",
              f"{_mr(g['vs_fp32'], _x)} ({many}); {cert}",
              _med(g["vs_fp32"]) >= GOALS["speedup_vs_dense_fp32"] and cert_all and _med(g["bound"]) <= lim),
    ]
    if all_five:
        out.append(_goal(task, f"all {GOALS['builds']} default builds ship a pruned, certified plan",
                         f"{g['pruned_certified']} of {n} builds", n >= GOALS["builds"] and cert_all))
    else:
        out.append(_goal(task, "the build ships a pruned, certified plan", f"{g['pruned_certified']} of {n}", cert_all))
    if g["build_s"]:
        within = sum(s <= GOALS["build_s"] for s in g["build_s"])
        out.append(_goal(task, f"build <= {GOALS['build_s'] / 60:g} min",
                         f"{_mr([s / 60 for s in g['build_s']], lambda v: f'{v:.1f} min')}; {within} of "
                         f"{len(g['build_s'])} within" + _by_plans(g), _med(g["build_s"]) <= GOALS["build_s"]))
    return out


def _by_plans(g: dict[str, Any]) -> str:
    """The build times split by the length of the certification sequence, when the builds differ in it."""
    groups = {k: v for k, v in (g.get("build_s_by_plans") or {}).items() if v}
    if len(groups) < 2:
        return ""
    return "; by plans tested: " + ", ".join(f"{k}: {_med(v) / 60:.1f} min (n={len(v)})" for k, v in groups.items())


def _smaller_goals(rec: dict, task: str = "default") -> list[dict[str, Any]]:
    rows = rec["rows"]
    ep = [r for r in rows if r.get("kind") == "edgeprune"]
    small = [r for r in rows if r.get("kind") in HAND_MADE]
    if not ep or not small:
        return []
    sp, bound = _med([r["speedup_vs_dense_int8"] for r in ep]), _med([r["bound_pts"] for r in ep])
    eptext = f"edgeprune {_x(sp)} at bound {_pts(bound)} ({'median of ' + str(len(ep)) if len(ep) > 1 else 'one'})"
    out = []
    cert = [r for r in small if r["certified"]]
    if cert:
        best = max(cert, key=lambda r: r["speedup_vs_dense_int8"])
        out.append(_goal(task, "edgeprune beats the hand-made smaller model at matched certified bound "
                         "(faster than the fastest certified one)",
                         f"{eptext}; {best['name']} {_x(best['speedup_vs_dense_int8'])} at {_pts(best['bound_pts'])}",
                         sp > best["speedup_vs_dense_int8"]))
    else:
        out.append(_goal(task, "edgeprune beats the hand-made smaller model at matched certified bound",
                         f"{eptext}; no hand-made model certified", all(r["certified"] for r in ep)))
    fast = [r for r in small if r["speedup_vs_dense_int8"] >= sp]
    if fast:
        out.append(_goal(task, "edgeprune beats the hand-made smaller model at equal latency (every one at least "
                         "as fast has a higher bound)",
                         f"{eptext}; " + ", ".join(f"{r['name']} {_x(r['speedup_vs_dense_int8'])} at "
                                                   f"{_pts(r['bound_pts'])}" for r in fast),
                         all(r["bound_pts"] > bound for r in fast)))
    else:
        out.append(_goal(task, "edgeprune beats the hand-made smaller model at equal latency",
                         f"{eptext}; no hand-made model as fast", None))
    opt = next((r for r in rows if r.get("kind") == "optimum"), None)
    if opt:
        ratio = _med([r["speedup_vs_dense_int8"] / opt["speedup_vs_dense_int8"] for r in ep])
        out.append(_goal(task, f"shipped vs optimum arm64 preset >= {GOALS['speedup_vs_optimum']:.1f}x",
                         f"{_x(ratio)} (p50, same run; optimum bound {_pts(opt['bound_pts'])})",
                         ratio >= GOALS["speedup_vs_optimum"]))
    return out


def goals(found: dict[str, Found]) -> list[dict[str, Any]]:
    """Every goal with its measured figure; ``reached`` None = not measured."""
    out: list[dict[str, Any]] = []
    b, sm, bk = found["builds"], found["smaller_model"], found["banking77"]
    if b.rec is not None:
        out += _build_goals("default", b.rec["builds"], all_five=True)
        search = [s["search"] for s in build_figures(b.rec["builds"])["stages_s"] if "search" in s]
        if search:
            out.append(_goal("default", f"search <= {GOALS['search_s'] / 60:g} min",
                             f"{_mr([s / 60 for s in search], lambda v: f'{v:.1f} min')}",
                             _med(search) <= GOALS["search_s"]))
    else:
        out.append(_goal("default", "default builds (speed-up, certification, build and search time)",
                         _not_run(b, "builds"), None))
    if sm.rec is not None:
        out += _smaller_goals(sm.rec)
    else:
        out.append(_goal("default", "edgeprune beats the hand-made smaller model", _not_run(sm, "smaller_model"), None))
    if not any("optimum" in g["goal"] and g["task"] == "default" for g in out):
        out.append(_goal("default", f"shipped vs optimum arm64 preset >= {GOALS['speedup_vs_optimum']:.1f}x",
                         "not measured yet: `python -m benchmarks.smaller_model --build OUT` with the transformers "
                         "4.57 environment", None))
    if bk.rec is not None:
        out += _build_goals("Banking77", [bk.rec["summary"]["build"]], all_five=False)
    smb = found["smaller_model_banking77"]
    if smb.rec is not None:
        out += _smaller_goals(smb.rec, "Banking77")
    out.append(_scale_goal(found["scale"]))
    return out


def _scale_goal(f: Found) -> dict[str, Any]:
    """The BERT-base search-time goal, judged by :func:`benchmarks.scale.search_goal` from the newest scale JSON."""
    from benchmarks.scale import search_goal

    target = GOALS["scale_search_s"]
    if f.rec is None:
        return _goal("BERT-base", f"search <= {target / 60:g} min at BERT-base size (default budget)",
                     _not_run(f, "BERT-base scale run"), None)
    g = search_goal(f.rec, target)
    return _goal("BERT-base", g["goal"], f"{g['measured']} (`{f.path.name}`)", g["reached"])


def goals_section(found: dict[str, Found]) -> list[str]:
    lines = ["## Goals", "", "| task | goal | measured | reached |", "|---|---|---|---|"]
    for g in goals(found):
        mark = {True: "yes", False: "NO", None: "not measured"}[g["reached"]]
        lines.append(f"| {g['task']} | {g['goal']} | {g['measured']} | {mark} |")
    return lines + [""]


# ---------------------------------------------------------------------------------------------------------------------
# 3. what limits it
# ---------------------------------------------------------------------------------------------------------------------
def _allowed_discordance(sim: Optional[dict], n: int) -> Optional[dict]:
    rows = (sim or {}).get("issue_table_max_discordance_1pt") or []
    return next((r for r in rows if r.get("n") == n and str(r.get("confidence", "")).startswith("95%")), None)


def _build_limits(task: str, builds: Sequence[dict], sim: Found) -> list[str]:
    g = build_figures(builds)
    out = []
    shipped = [(b, _shipped_test(b)) for b in builds]
    shipped = [(b, t) for b, t in shipped if t]
    if shipped:
        n = builds[0]["accuracy"]["certify_examples"]
        d = [t["n_worse"] + t["n_better"] for _, t in shipped]
        obs = [100 * (t["n_worse"] - t["n_better"]) / n for _, t in shipped]
        flips = ", ".join(f"{t['n_worse']}/{t['n_better']}" for _, t in shipped)
        line = (f"{task}: churn. The shipped plans disagree with the FP32 model on {_mr(d, lambda v: f'{v:g}')} of {n} "
                f"certify examples (worse/better: {flips}; "
                f"observed drop {_mr(obs, _pts)} pts).")
        allowed = _allowed_discordance(sim.rec, n)
        if allowed:
            line += (f" The most discordant pairs that still certify <= 1 pt at n = {n} (95%, one look, score test; "
                     f"`{sim.path.name}`): {allowed.get('score_0')} at observed drop 0, {allowed.get('score_0.3')} at "
                     f"0.3 pts, {allowed.get('score_0.5')} at 0.5 pts.")
        elif sim.rec is None:
            line += " (The allowed count at this size comes from `python -m benchmarks.certify_simulation`: not run.)"
        out.append(line)
        failed = [(b, t) for b in builds for t in b.get("sequence") or [] if t.get("passed") is False]
        if failed:
            out.append(f"{task}: {len(failed)} of {len(builds)} certification sequences stopped at a failed test: "
                       + "; ".join(f"seed {b.get('seed')} {t['name']} ({t['heads_removed']} heads / "
                                   f"{t['ffn_blocks_removed']} FFN blocks removed, {t['n_worse']}/{t['n_better']}, "
                                   f"bound {_pts(t['drop_upper_bound_pts'])})" for b, t in failed) + ".")
    if g["dense_int8_bound"]:
        flips = g["dense_int8_flips"]
        out.append(f"{task}: the INT8 vs FP32 gap. Dense INT8 alone is {_mr(g['int8_vs_fp32'], _x)} faster than dense "
                   f"FP32 (p50) and already spends a bound of {_mr(g['dense_int8_bound'], _pts)} pts of the "
                   f"{GOALS['max_drop_pts']:.1f} pt promise ({flips[0][0]} worse / {flips[0][1]} better"
                   + (" in every build" if len(set(flips)) == 1 else ", first build") + "); the shipped file vs dense "
                   f"FP32 is {_mr(g['vs_fp32'], _x)}, of which {_mr(g['vs_int8'], _x)} over dense INT8 is pruning's.")
    if g["real_vs_int8"]:
        out.append(f"{task}: at the certify texts' real lengths (batch 1, no padding) the shipped file is "
                   f"{_mr(g['real_vs_int8'], _x)} faster than dense INT8, against {_mr(g['vs_int8'], _x)} at the "
                   "profile's padded length.")
    pred = [(b["predicted_final_ms"], b["p50_ms"]["final"]) for b in builds if b.get("predicted_final_ms")]
    if pred:
        out.append(f"{task}: the latency table predicted {_mr([p for p, _ in pred], lambda v: f'{v:.2f} ms')} for the "
                   f"shipped plans; the builds measured {_mr([m for _, m in pred], lambda v: f'{v:.2f} ms')} "
                   f"(measured / predicted {_mr([m / p for p, m in pred], _x)}).")
    stages = [s for s in g["stages_s"] if s]
    if stages and g["build_s"]:
        keys = [k for k in stages[0] if all(k in s for s in stages)]
        total = _med(g["build_s"])
        med = {k: _med([s[k] for s in stages]) for k in keys}
        parts = ", ".join(f"{k} {v:.0f} s ({100 * v / total:.0f}%)"
                          for k, v in sorted(med.items(), key=lambda kv: -kv[1]) if v >= 1)
        refit = [((b.get("search") or {}).get("pricing") or {}).get("refit_seconds") for b in builds]
        refit = [r for r in refit if r is not None]
        line = (f"{task}: build time {total:.0f} s (median), by stage (medians): {parts}. The export stage holds the "
                "recovery (distillation), compile and the certification sequence.")
        if refit:
            line += f" The search's refit pricing took {_mr(refit, lambda v: f'{v:.0f} s')} of the search."
        out.append(line)
    return out


def limits_section(found: dict[str, Found]) -> list[str]:
    lines = ["## What limits it", "", "Only what the result files contain.", ""]
    items: list[str] = []
    b, bk, sim, ra = found["builds"], found["banking77"], found["certify_simulation"], found["run_all"]
    if b.rec is not None:
        items += _build_limits("default task", b.rec["builds"], sim)
    if bk.rec is not None:
        items += _build_limits("Banking77", [bk.rec["summary"]["build"]], sim)
    lines += [f"- {x}" for x in items] or ["- no build results yet."]
    if ra.rec is not None and ra.rec.get("analysis"):
        lines += ["", f"From the full peer run of {ra.date} (`{ra.path.name}`, run_all's own analysis of its profiler "
                      "and latency measurements; older code than the builds above):", ""]
        lines += [f"- {x}" for x in ra.rec["analysis"]]
    return lines + [""]


# ---------------------------------------------------------------------------------------------------------------------
# 3b. scale
# ---------------------------------------------------------------------------------------------------------------------
def scale_section(found: dict[str, Found]) -> list[str]:
    """A short summary of the newest scale run (BERT-base size); the full table is in its benchmark section."""
    f = found["scale"]
    lines = ["## Scale (BERT-base size, random weights)", ""]
    if f.rec is None:
        return lines + [_not_run(f), ""]
    from benchmarks.scale import summary_lines

    try:
        items = summary_lines(f.rec)
    except (KeyError, TypeError, ValueError) as exc:  # an older JSON layout than the summary reads
        items = [f"`{f.path.name}` has an older layout than `benchmarks.scale` summarises ({exc!r}); see the JSON."]
    return lines + [f"From `{f.path.name}` ({f.date}):", ""] + [f"- {x}" for x in items] + [""]


# ---------------------------------------------------------------------------------------------------------------------
# 4. one section per benchmark
# ---------------------------------------------------------------------------------------------------------------------
def _demote(md: str, levels: int = 2) -> str:
    """Headings two levels down (an embedded file's ``#`` becomes ``###``); code blocks left alone."""
    out, code = [], False
    for ln in md.strip().splitlines():
        if ln.startswith("```"):
            code = not code
        out.append("#" * levels + ln if not code and re.match(r"^#{1,4} ", ln) else ln)
    return "\n".join(out)


def body_of(f: Found, link_base: Path) -> str:
    """The benchmark's table: its sibling .md, else its renderer, else a pointer to the JSON."""
    md = f.bench.sibling_md(f.path, f.date)
    if md.is_file():
        text = md.read_text()
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        if first.startswith("# "):  # the section already has a heading
            text = text.lstrip()[len(first):]
        return f"From `{_rel(md, link_base)}`:\n\n" + _demote(text)
    if f.bench.render is not None:
        try:
            return _demote(f.bench.render(f.rec))
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # an older JSON layout than the renderer's
            return f"(`{f.path.name}` has an older layout than `benchmarks.{f.bench.module}` renders: {exc!r}; " \
                   "see the JSON.)"
    return f"No table: see `{_rel(f.path, link_base)}`."


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def bench_section(f: Found, link_base: Path) -> list[str]:
    title = f.bench.title + (f" ({f.date})" if f.date else "")
    lines = [f"### {title}", ""]
    if f.rec is None:
        return lines + [_not_run(f), ""]
    vers = versions_of(f.rec)
    lines += [f"- Command: {command_of(f)}", f"- Date: {f.date}; file `{_rel(f.path, link_base)}`",
              f"- Host: {host_of(f.rec)}",
              "- Versions: " + (", ".join(f"{k} {v}" for k, v in vers.items()) if vers else "not recorded"), ""]
    return lines + [body_of(f, link_base), ""]


def render(results: Path, *, latest: Optional[Mapping[str, Path]] = None, link_base: Optional[Path] = None) -> str:
    """RESULTS.md from the newest result of each benchmark in ``results``.

    Args:
        results: the results folder (``benchmarks/results``).
        latest: benchmark key -> JSON path to use instead of the newest by date (run_all passes the run it just
            wrote, whatever its ``--date``).
        link_base: folder the links are relative to (the one RESULTS.md sits in; default ``results``' parent).

    Returns:
        The Markdown text.
    """
    results = Path(results)
    link_base = Path(link_base) if link_base is not None else results.parent
    found = find_latest(results, latest)
    dates = sorted(f.date for f in found.values() if f.date)
    lines = ["# edgeprune benchmark results", "",
             f"Generated by `python -m benchmarks.report` from the newest result of each benchmark in "
             f"`{_rel(results, link_base)}/` (newest {dates[-1] if dates else 'none'}); nothing here is measured by "
             "the report itself. `python -m benchmarks.run_all` re-measures the full peer comparison (hours) and "
             "regenerates this file the same way. Accuracy is on each task's certify split; latency on the host "
             "named in each table at the raspberrypi4 profile's settings, not on a Raspberry Pi.", ""]
    lines += lead_section(found) + goals_section(found) + limits_section(found) + scale_section(found)
    lines += ["## Benchmarks", ""]
    for b in BENCHES:
        if b.key != "run_all":
            lines += bench_section(found[b.key], link_base)
    ra = found["run_all"]
    lines += [f"## Full peer run (run_all{', ' + ra.date if ra.date else ''})", "",
              "edgeprune against dense PyTorch/ORT FP32 and INT8, Michel greedy, one-shot top-k and its own A* "
              "searches, side by side in one run, with the roofline and the ORT profiler breakdown.", ""]
    lines += bench_section(ra, link_base)[2:]
    used = {f.path.name for f in found.values() if f.path is not None}
    other = sorted(p.name for p in results.glob("*.json") if p.name not in used) if results.is_dir() else []
    if other:
        lines += ["## Other recorded results", "", "Older runs and one-off records, not summarised above:", ""]
        lines += [f"- `{_rel(results / n, link_base)}`" + (f": {_what(results / n)}" if _what(results / n) else "")
                  for n in other]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _what(path: Path) -> str:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    what = rec.get("what") if isinstance(rec, dict) else None
    return (what[:160] + ("..." if len(what) > 160 else "")) if isinstance(what, str) else ""


def write_results_md(results: Path = HERE / "results", out: Path = HERE / "RESULTS.md", *,
                     latest: Optional[Mapping[str, Path]] = None) -> Path:
    """Render :func:`render` into ``out``; returns ``out``."""
    out = Path(out)
    out.write_text(render(results, latest=latest, link_base=out.parent))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=HERE / "results", help="the results folder")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    print(write_results_md(args.results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
