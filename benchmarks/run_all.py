"""edgeprune against its peers, side by side in one run: ``python -m benchmarks.run_all``.

Writes ``<out>/results/<date>.json``, ``<out>/results/<date>.png`` and its Markdown ``<out>/results/run_all-<date>.md``,
then regenerates ``<out>/RESULTS.md`` from every benchmark's newest result with :mod:`benchmarks.report` (this run in
its "Full peer run" section; ``--out`` defaults to this folder). Two parts:

1. **Default task** (the fine-tuned MiniLM-L6 sentiment classifier of :func:`edgeprune.task.default.default_task`),
   at the raspberrypi4 profile's settings (batch, seq_len, INT8 preset and graph; threads clipped to this host's
   cores): dense PyTorch FP32, dense ORT FP32, dense ORT INT8 (ORT's own ``quantize_dynamic``, default settings), the
   profile's preset on the stock export, dense edgeprune INT8 (``onnx.compile.compile_plan`` with the profile: the
   shipped chain, whatever ``quant.graph`` the profile names), Michel greedy + INT8, one-shot + INT8, edgeprune A*
   heads + INT8, edgeprune A* heads+FFN + INT8 and the same plan with recovery (``export_bundle(recovery_data=...)``,
   least-squares rescaling fitted on the search split) + INT8 (random + INT8 with ``--random``), and optimum's arm64
   preset on the stock export (``benchmarks.optimum_peer``: run in the transformers 4.57 environment as a subprocess,
   its versions recorded; the row is left out, with the reason, when that environment is missing). Per row: observed
   accuracy and certified drop bound of the *file* on the certify split (``edgeprune.task.predict.onnx_predictions`` +
   ``edgeprune.certify.core.certify`` at the build's per-look confidence, paired against the unpruned PyTorch model),
   heads and FFN blocks removed, p50 latency and its paired ratio to dense ORT FP32 from one alternating run
   (``edgeprune.latency.measure.measure_alternating``), file size, session RSS (``edgeprune.latency.measure.measure_memory``),
   search wall time and evaluations, FLOPs and roofline efficiency, LUT prediction (``edgeprune.latency.table.predict``,
   with the FFN widths of joint plans) against the measurement.
2. **BERT-base size** (12 x 12 heads, hidden 768, FFN 3072, random weights): latency only (random weights have no
   accuracy to keep): the dense rows and one pruned INT8 model with the A* plan's share of heads removed, spread
   evenly over the layers.

Plus the machine's FP32 and INT8 GEMM throughput (the roofline ceiling) and ORT's profiler breakdown of the dense
INT8, the heads-only A* and the heads+FFN A* models into attention / FFN / embeddings+classifier / other.

Searches: each algorithm is one ``edgeprune.search.run.run_search`` call with the arguments ``edgeprune build`` passes
(``pipeline._stage_search``): certification's test level (``certify.policy.search_confidence``), the
dense shipped-INT8 file's search-split predictions as ``shipped_predictions`` (int8-aware offsets), rescore every 4,
importance on 512 examples, 80 evaluations (600 s safety cap) per algorithm (A* pays for its own greedy seed), the LUT with its
FFN axis (``build_lut(..., ffn=True)``; the heads-only searches read the same table), FFN blocks of 128 neurons.
Goals: issue #9's on the heads-only A* row, issue #10's on the best certified heads+FFN row.

Options: ``--quick`` (tiny random model + synthetic data, < 1 minute: plumbing only, numbers meaningless),
``--skip-bert-base``, ``--max-evals N``, ``--search-seconds S``, ``--out DIR``; see ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from benchmarks.optimum_peer import versions_text
from edgeprune.config import DEFAULT_SEARCH

HERE = Path(__file__).resolve().parent

GOALS = {
    # issue #9 (heads-only A* row)
    "speedup_vs_ort_fp32": 2.5,
    "speedup_vs_ort_int8": 1.25,
    "max_certified_drop_pts": 1.0,
    "astar_heads_share": 0.40,
    # issue #10 (best certified heads+FFN row)
    "joint_speedup_vs_ort_fp32": 2.5,
    "joint_speedup_vs_ort_int8": 1.5,
}

TABLE_HEADER = ("| row | heads removed | FFN blocks removed | accuracy | drop (pts) | flips worse/better | certified bound (pts) | "
                "p50 ms (p10-p90) | "
                "x vs ORT FP32 | file MB | session RSS MiB | search s / evals | GFLOP/s | roofline eff. |")


# ---------------------------------------------------------------------------------------------------------------------
# small utilities
# ---------------------------------------------------------------------------------------------------------------------
class _Log:
    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.monotonic()
        self.quiet = quiet
        self.loads: list[dict[str, Any]] = []

    def __call__(self, msg: str) -> None:
        load = [round(x, 2) for x in os.getloadavg()]
        self.loads.append({"t_s": round(time.monotonic() - self.t0, 1), "stage": msg[:80], "loadavg": load})
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s load {load[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def _files(compiled):
    """(pruned model, shipped-form file, checks) of a :class:`~edgeprune.onnx.compile.Compiled`."""
    return compiled.model, compiled.onnx, compiled.checks


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("edgeprune", "torch", "transformers", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _paired_speedup(ref: Sequence[float], other: Sequence[float]) -> float:
    """Median over rounds of ref/other (both timed in the same rounds): robust to load drift."""
    return statistics.median(a / b for a, b in zip(ref, other))


def _pct(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _even_plan(heads_per_layer: Sequence[int], n_remove: int):
    """A plan removing ``n_remove`` heads spread evenly over the layers (the last heads of each layer)."""
    from edgeprune.plan import HeadPlan

    per = [0] * len(heads_per_layer)
    for i in range(n_remove):
        per[i % len(per)] += 1
    removed = [(layer, h) for layer, n in enumerate(heads_per_layer) for h in range(n - min(per[layer], n), n)]
    return HeadPlan.from_removed(tuple(heads_per_layer), removed)


# ---------------------------------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------------------------------
_WORDS = ("the a movie film plot actor story good bad great awful fun boring love hate best worst funny dull and but "
          "not very really is was it this").split()


def quick_task(work: Path) -> dict[str, Any]:
    """A tiny random BERT (2 layers x 4 heads, hidden 32) and 240 synthetic sentences: plumbing only."""
    from edgeprune.task.data import TextDataset
    from edgeprune.testing import tiny_model, tiny_tokenizer

    model = tiny_model("bert", num_layers=2, num_heads=4, hidden=32)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    folder = work / "tiny-model"
    model.save_pretrained(folder)
    tiny_tokenizer(folder)
    rng = random.Random(0)
    texts = [" ".join(rng.choices(_WORDS, k=rng.randint(3, 12))) for _ in range(240)]
    labels = [int(rng.random() < 0.5) for _ in texts]
    search = TextDataset(texts[:120], labels[:120], source="synthetic (quick) [search]")
    certify = TextDataset(texts[120:], labels[120:], source="synthetic (quick) [certify]")
    return {"model_dir": folder, "search": search, "certify": certify,
            "info": {"name": "tiny random BERT 2x4 (quick)", "search_n": 120, "certify_n": 120}}


def default_task_ready(wait_minutes: float, log: _Log) -> dict[str, Any]:
    """The default task, waiting (polling) for a fine-tune in progress instead of starting one."""
    from edgeprune.task.default import TaskSpec, cache_root, default_task

    final = cache_root() / TaskSpec().cache_name()
    deadline = time.monotonic() + 60 * wait_minutes
    while not (final / "manifest.json").is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"the default task is not ready in {final} after {wait_minutes} min; run "
                             "`edgeprune demo-model` first (this benchmark never starts a fine-tune itself)")
        log(f"waiting for the default task in {final} ...")
        time.sleep(30)
    task = default_task(progress=False)
    return {"model_dir": task.model_dir, "search": task.search, "certify": task.certify,
            "info": {"name": "default task: all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes sentences",
                     "model_dir": str(task.model_dir), "finetune_accuracy": task.accuracy,
                     "splits": task.split_sizes, "split_seed": task.split_seed,
                     "search_n": len(task.search), "certify_n": len(task.certify)}}


def bert_base_model(quick: bool):
    """Random BERT-base-size classifier (12 x 12, 768, 3072); a small stand-in with ``quick``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    if quick:
        cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                         vocab_size=1000, max_position_embeddings=128, num_labels=2)
    else:
        cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         num_labels=2)
    return BertForSequenceClassification(cfg).eval()


# ---------------------------------------------------------------------------------------------------------------------
# searches
# ---------------------------------------------------------------------------------------------------------------------
# Search runs: (row key, algorithm, structures). The heads-only rows are session 1's; ``astar_ffn`` is the joint
# search of issue #10 (its plan is shipped twice: as searched, and with recovery folded in).
SEARCH_RUNS = (("greedy", "greedy", "heads"), ("oneshot", "oneshot", "heads"), ("astar", "astar", "heads"),
               ("astar_ffn", "astar", "heads+ffn"))


@contextlib.contextmanager
def _search_threads(n: int):
    """Pin the masked evaluator's torch threads to ``n`` (0 = leave edgeprune's choice, as `edgeprune build`).

    ``run_search`` takes no thread count: its evaluator uses ``edgeprune.search.evaluate.free_cores()`` (physical cores not
    already busy by the load average). Patching that one function is the only way to pin it without a library change.
    """
    if not n:
        yield
        return
    from unittest import mock

    with mock.patch("edgeprune.search.evaluate.free_cores", return_value=int(n)):
        yield


def search_data_of(search_data: Any, args: argparse.Namespace) -> Any:
    """The search split as the searches use it (its first ``--search-examples`` examples, or all)."""
    n = args.search_examples
    return search_data if not n or n >= len(search_data) else search_data.head(n)


def search_settings_of(args: argparse.Namespace):
    """The benchmark's search settings: `edgeprune build`'s (edgeprune.config.DEFAULT_SEARCH) with its options."""
    return DEFAULT_SEARCH.replace(correction=args.correction, max_evaluations=args.max_evals, seed=0,
                                  rescore_every=args.rescore_every,
                                  importance_examples=args.importance_examples or None)


def run_searches(model_dir: Path, search_data: Any, lut_path: Path, prof: Any, args: argparse.Namespace,
                 log: _Log, shipped_predictions: Optional[Sequence[int]] = None,
                 cached: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Every search of the benchmark through ``edgeprune.search.run.run_search``, configured as `edgeprune build` does.

    Same call as ``edgeprune.pipeline._stage_search``: the certification's per-look confidence
    (``certify.policy.search_confidence``), the dense shipped-INT8 model's search-split
    predictions as ``shipped_predictions`` (int8-aware offsets), ``rescore_every``, ``importance_examples``, the
    wall-time cap, the LUT (with its FFN axis for the joint search). Each algorithm runs stand-alone (its own
    evaluator and importance pass, A* pays for its own greedy seed), exactly as a build would run it.

    Args:
        shipped_predictions: the dense INT8 file's predictions on the search data (``None`` = not int8-aware).
        cached: results of an earlier run (``--work``): algorithms found there are not searched again.

    Returns:
        ``{"common": {...}, key: {...} for each run}``; ``key["plan"]`` is the plan dict (``HeadPlan.from_dict``).
    """
    from edgeprune.certify.policy import search_confidence
    from edgeprune.search.run import run_search

    data = search_data_of(search_data, args)
    search_conf = search_confidence(args.confidence)
    settings = search_settings_of(args)
    # run_search applies certification's level itself (certify.policy.search_confidence).
    common_kw = dict(profile=prof, latency_table=lut_path, max_drop_pts=args.max_drop, confidence=args.confidence,
                     max_length=prof.seq_len, shipped_predictions=shipped_predictions)
    common = {"model_dir": str(model_dir), "n": len(data), "max_drop_pts": args.max_drop,
              "family_confidence": args.confidence, "search_confidence": search_conf,
              "int8_aware": shipped_predictions is not None, "importance_n": args.importance_examples or "all",
              "rescore_every": args.rescore_every, "max_evaluations": args.max_evals,
              "max_seconds": args.search_seconds, "astar_max_seconds": args.astar_seconds,
              "correction": args.correction, "ffn_block_size": args.ffn_block_size, "credit_improvement": False,
              "search_threads": args.search_threads or "edgeprune default",
              "how": "edgeprune.search.run.run_search per algorithm, with `edgeprune build`'s arguments"}
    if cached and cached.get("common") != json.loads(json.dumps(common)):
        log("search: the cached searches were made with other settings; searching again")
        cached = None
    out: dict[str, Any] = {**(cached or {}), "common": common}
    runs = list(SEARCH_RUNS) + ([("random", "random", "heads")] if args.random else [])
    for key, alg, structures in runs:
        if key in out:
            log(f"search: {key} reused from the cache")
            continue
        joint = structures == "heads+ffn"
        cap = args.astar_seconds if alg == "astar" else args.search_seconds
        log(f"search: {key} ({alg}, {structures}; max {args.max_evals} evaluations, {cap or 'no'} s cap, "
            f"confidence {search_conf:.4f})")
        t = time.monotonic()
        with _search_threads(args.search_threads):
            res = run_search(str(model_dir), data, settings=settings.replace(
                algorithm=alg, structures=structures, ffn_block_size=args.ffn_block_size if joint else None,
                max_seconds=cap, int8_aware=shipped_predictions is not None), **common_kw)
        wall = time.monotonic() - t
        info = res.info
        out[key] = {"algorithm": alg, "structures": structures, "plan": res.plan.to_dict(),
                    "heads_removed": res.heads_removed,
                    "ffn_blocks_removed": res.ffn_blocks_removed if res.plan.has_ffn else 0,
                    "wall_s": round(wall, 1), "search_wall_s": round(res.wall_time_s, 1),
                    "setup_s": {k: round(v, 1) for k, v in info.get("timing_s", {}).items()},
                    "evaluations": res.evaluations, "nodes_expanded": res.nodes_expanded,
                    "stopped_by": res.stopped_by, "search_split_drop_pts": res.drop_pts,
                    "search_split_drop_bound_pts": res.drop_bound_pts, "predicted_latency_ms": res.latency_ms,
                    "base_predicted_latency_ms": res.base_latency_ms,
                    "base_accuracy": info.get("data", {}).get("base_accuracy"),
                    "shipped_model_flips": info.get("shipped_model_flips"),
                    "offsets": {"worse": res.config.offset_worse, "better": res.config.offset_better},
                    "latency_source": {k: v for k, v in info.get("latency_source", {}).items() if k != "provenance"},
                    "torch_threads": _torch_threads(),
                    "notes": list(res.notes),
                    "frontier": [f.to_dict() for f in res.frontier],
                    "note": "A* includes its own greedy seed" if alg == "astar" else ""}
        if args.work:  # a crash later in the benchmark must not cost the searches again
            (Path(args.work) / "searches.json").write_text(json.dumps(out, indent=2, default=str))
        ffn = f" and {out[key]['ffn_blocks_removed']} FFN blocks" if joint else ""
        log(f"search: {key} removed {res.heads_removed} heads{ffn} (search-split bound {res.drop_bound_pts:.2f} pts, "
            f"{res.evaluations} evaluations, {wall:.0f}s, stopped by {res.stopped_by})")
    return out


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------------
def _dense_rows(files: dict, heads, graph: str = "plain") -> list[dict[str, Any]]:
    """The four dense rows every table starts with (ORT FP32, ORT INT8, preset on the stock export, edgeprune INT8).

    ``graph`` is the profile's ``quant.graph`` (what ``onnx.compile.compile_plan`` shipped for the edgeprune row).
    """
    return [
        {"key": "ort_fp32", "name": "dense ORT FP32", "precision": "fp32", "path": files["ort_fp32"][0],
         "kept_counts": list(heads)},
        {"key": "ort_int8", "name": "dense ORT INT8 (ORT quantize_dynamic, defaults)", "precision": "int8",
         "path": files["ort_int8"][0], "kept_counts": list(heads)},
        {"key": "preset_unfused", "name": "dense INT8, profile preset on the stock export (quantize_onnx, no surgery)",
         "precision": "int8", "path": files["preset_unfused"][0], "kept_counts": list(heads)},
        {"key": "ep_int8", "name": f"dense edgeprune INT8 ({graph} graph + profile preset)", "precision": "int8",
         "path": files["ep_int8"][0], "kept_counts": list(heads), "graph": graph},
    ]


def dense_files(model: Any, prof: Any, work: Path) -> dict[str, tuple[Path, dict]]:
    """Dense ORT FP32 (plain export), ORT INT8 (ORT's own quantize_dynamic), the profile's preset on the stock export,
    and edgeprune INT8 (``onnx.compile.compile_plan`` with the profile's preset: the shipped chain, whatever graph
    the profile's ``quant.graph`` asks for)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgeprune.adapters import get_adapter
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.onnx.export import export_onnx
    from edgeprune.task.modeling import clone_model
    from edgeprune.plan import HeadPlan

    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(clone_model(model), work / "dense_fp32.onnx")
    int8 = work / "dense_int8.onnx"
    # What a user does without edgeprune: ORT dynamic quantization of the exported graph with its defaults (the same
    # baseline `edgeprune build` measures).
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    # The profile's preset on the stock export (no edgeprune surgery or make_fusable_, no offline fusion): separates
    # what edgeprune's chain costs or gains from what the preset does.
    from edgeprune.onnx.quantize import quantize_onnx

    pc = quantize_onnx(fp32, work / "dense_int8_preset_unfused.onnx", prof.quant)
    layout = get_adapter(model).layout(model)
    full = HeadPlan.from_removed(layout.heads_per_layer, [])
    _, ep, checks = _files(compile_plan(model, full, prof.quant, work / "ep_dense"))
    return {"ort_fp32": (Path(fp32), {}), "ort_int8": (int8, {}), "preset_unfused": (Path(pc), {}),
            "ep_int8": (Path(ep), checks)}


def optimum_arm64(fp32: Path, model: Any, work: Path) -> dict[str, Any]:
    """optimum's arm64 dynamic preset (``ORTQuantizer`` + ``AutoQuantizationConfig.arm64(is_static=False,
    per_channel=True)``) on the stock FP32 export, run in the transformers 4.57 environment as a subprocess
    (``benchmarks.optimum_peer.quantize_with_optimum``: optimum does not install next to transformers 5.x; the
    interpreter comes from ``$EDGEPRUNE_OPTIMUM_PYTHON`` or ``.venv-tf457``). Returns its result dict (status ``ok``
    with the file and that environment's versions, or ``not available`` / ``failed`` with the reason)."""
    from benchmarks.optimum_peer import quantize_with_optimum

    return quantize_with_optimum(fp32, model, work / "optimum-arm64")


# ---------------------------------------------------------------------------------------------------------------------
# measuring a set of rows
# ---------------------------------------------------------------------------------------------------------------------
def measure_rows(rows: list[dict[str, Any]], prof: Any, *, rounds: int, reps: int, processes: int, gemm: dict,
                 arch: dict, log: _Log) -> dict[str, Any]:
    """Latency (one alternating run, first row = the reference), file size, memory and roofline of ONNX rows."""
    from benchmarks.bench_tools import encoder_flops
    from edgeprune.latency.measure import file_size_bytes, measure_alternating, measure_memory

    onnx_rows = [r for r in rows if r.get("path")]
    log(f"latency: {len(onnx_rows)} models alternating, {rounds} rounds x best of {reps}")
    alt = measure_alternating([r["path"] for r in onnx_rows], prof, rounds=rounds, reps=reps)
    ref = alt.rounds_ms[0]
    for r, med, spread, rr in zip(onnx_rows, alt.median_ms, alt.spread_ms, alt.rounds_ms):
        r["latency"] = {"p50_ms": med, "p10_ms": _pct(rr, 10), "p90_ms": _pct(rr, 90), "spread_ms": spread,
                        "speedup_vs_ort_fp32": _paired_speedup(ref, rr), "rounds_ms": [round(x, 4) for x in rr]}
        r["file_bytes"] = file_size_bytes(r["path"])["total_bytes"]
    for r in onnx_rows:
        log(f"memory: {r['key']} ({processes} fresh processes)")
        m = measure_memory(r["path"], prof, processes=processes)
        r["memory"] = {"session_mib": m.session_mib, "peak_mib": m.peak_mib, "baseline_mib": m.baseline_mib,
                       "processes": m.processes}
    for r in rows:
        fl = encoder_flops(r["kept_counts"], head_size=arch["head_size"], hidden=arch["hidden"],
                           intermediate=arch["intermediate"], seq_len=prof.seq_len, num_labels=arch["num_labels"],
                           batch=prof.batch, ffn_widths=r.get("ffn_widths"))
        r["flops"] = fl
        lat = r.get("latency")
        if lat:
            gf = fl["total"] / (lat["p50_ms"] * 1e-3) / 1e9
            peak = gemm["int8" if r["precision"] == "int8" else "fp32"]["gflops"]
            r["roofline"] = {"gflops_per_s": gf, "ceiling_gflops_per_s": peak,
                             "ceiling": f"{r['precision']} GEMM (onnxruntime, this host, best of sizes {gemm['sizes']})",
                             "efficiency_pct": 100.0 * gf / peak}
    return {"alternating": {"rounds": rounds, "reps": reps, "block": alt.block, "threads": alt.threads,
                            "threads_note": alt.threads_note, "batch": alt.batch, "seq_len": alt.seq_len,
                            "measured_on": alt.measured_on, "where": alt.where, "order": [r["key"] for r in onnx_rows]}}


def torch_row(model: Any, ref_path: Path, ref_row: dict, prof: Any, threads: int, rounds: int, reps: int,
              arch: dict, gemm: dict, model_bytes: Optional[int]) -> dict[str, Any]:
    """The dense PyTorch FP32 row, timed round by round against the dense ORT FP32 session."""
    from benchmarks.bench_tools import encoder_flops, torch_vs_ort

    tv = torch_vs_ort(model, ref_path, threads=threads, batch=prof.batch, seq_len=prof.seq_len, rounds=rounds,
                      reps=reps)
    heads = arch["heads_per_layer"]
    row = {"key": "torch_fp32", "name": "dense PyTorch FP32 (eager)", "precision": "fp32", "runtime": "pytorch",
           "heads_removed": 0, "heads_total": sum(heads), "kept_counts": list(heads), "file_bytes": model_bytes}
    speed = 1.0 / tv["ratio_torch_over_ort"]
    row["latency"] = {"p50_ms": tv["torch_p50_ms"], "p10_ms": _pct(tv["torch_ms"], 10),
                      "p90_ms": _pct(tv["torch_ms"], 90),
                      "spread_ms": _pct(tv["torch_ms"], 90) - _pct(tv["torch_ms"], 10),
                      "speedup_vs_ort_fp32": speed, "rounds_ms": [round(x, 4) for x in tv["torch_ms"]],
                      "paired_with": "dense ORT FP32 in its own alternating run (PyTorch is not an ORT session)",
                      "ort_fp32_p50_ms_in_that_run": tv["ort_p50_ms"]}
    row["memory"] = None
    fl = encoder_flops(heads, head_size=arch["head_size"], hidden=arch["hidden"], intermediate=arch["intermediate"],
                       seq_len=prof.seq_len, num_labels=arch["num_labels"], batch=prof.batch)
    gf = fl["total"] / (tv["torch_p50_ms"] * 1e-3) / 1e9
    row["flops"] = fl
    row["roofline"] = {"gflops_per_s": gf, "ceiling_gflops_per_s": gemm["fp32"]["gflops"],
                       "ceiling": f"fp32 GEMM (onnxruntime, this host, best of sizes {gemm['sizes']})",
                       "efficiency_pct": 100.0 * gf / gemm["fp32"]["gflops"]}
    return row


def _arch(model: Any) -> dict[str, Any]:
    from edgeprune.adapters import get_adapter

    layout = get_adapter(model).layout(model)
    return {"heads_per_layer": list(layout.heads_per_layer), "head_size": layout.head_size,
            "hidden": layout.hidden_size, "intermediate": int(model.config.intermediate_size),
            "num_labels": int(model.config.num_labels), "layers": layout.num_layers,
            "model_type": model.config.model_type}


def _model_bytes(folder: Optional[Path]) -> Optional[int]:
    if folder is None:
        return None
    files = list(Path(folder).glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


# ---------------------------------------------------------------------------------------------------------------------
# part 1: the default task
# ---------------------------------------------------------------------------------------------------------------------
# Rows of a joint (heads + FFN blocks) plan: the searched plan as is, and with recovery folded in before export.
JOINT_ROWS = ("astar_ffn", "astar_ffn_rec")
ROW_NAMES = {"greedy": "Michel greedy + INT8", "oneshot": "one-shot top-k + INT8", "astar": "edgeprune A* heads + INT8",
             "random": "random + INT8", "astar_ffn": "edgeprune A* heads+FFN + INT8",
             "astar_ffn_rec": "edgeprune A* heads+FFN + recovery + INT8"}


def _plan_row(key: str, plan: Any, path: Path, checks: dict, search: dict) -> dict[str, Any]:
    """A table row for one searched plan's INT8 file (edgeprune chain)."""
    return {"key": key, "name": ROW_NAMES[key], "precision": "int8", "path": Path(path),
            "kept_counts": list(plan.kept_counts), "kept_per_layer": [list(k) for k in plan.kept],
            "ffn_widths": list(plan.ffn_kept_widths) if plan.has_ffn else None,
            "ffn_blocks_removed": plan.ffn_num_removed if plan.has_ffn else 0,
            "ffn_kept_blocks_per_layer": [len(k) for k in plan.ffn_kept] if plan.has_ffn else None,
            "checks": checks, "ep_chain": True, "search": search}


def _structure_totals(rows: list[dict[str, Any]], arch: dict[str, Any], block: int) -> None:
    """Heads and FFN-block counts of every row (the FFN blocks of ``block`` neurons, as the joint search counts)."""
    heads = arch["heads_per_layer"]
    per_layer = arch["intermediate"] // block if block and arch["intermediate"] % block == 0 else None
    for r in rows:
        r["heads_total"] = sum(heads)
        r["heads_removed"] = sum(heads) - sum(r["kept_counts"])
        r.setdefault("ffn_widths", None)
        r.setdefault("ffn_blocks_removed", 0)
        r["ffn_block_size"] = block
        r["ffn_blocks_total"] = None if per_layer is None else per_layer * arch["layers"]


def bench_task(args: argparse.Namespace, prof: Any, work: Path, gemm: dict, log: _Log) -> dict[str, Any]:
    from benchmarks.bench_tools import ort_breakdown
    from edgeprune.certify.core import certify
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.output.bundle import export_bundle
    from edgeprune.task.predict import onnx_predictions, torch_predictions
    from edgeprune.latency.table import build_lut, has_ffn_axis, load_lut, predict, save_lut
    from edgeprune.latency.measure import effective_threads
    from edgeprune.task.modeling import clone_model, load_model
    from edgeprune.plan import HeadPlan

    task = quick_task(work) if args.quick else default_task_ready(args.wait_task, log)
    base, tok = load_model(task["model_dir"])
    arch = _arch(base)
    threads, _ = effective_threads(prof)
    seq = prof.seq_len
    graph = str(getattr(prof.quant, "graph", "plain"))

    t = time.monotonic()
    lut_path = work / "lut.json"
    lut = load_lut(lut_path) if args.work and lut_path.is_file() else None
    if lut is not None and has_ffn_axis(lut):
        log(f"LUT: reusing {lut_path} (delete it to measure again)")
    else:
        # The joint search needs the FFN axis (as `edgeprune build --structures heads+ffn`); the heads-only
        # searches read the same table (its heads axis is unchanged by the FFN section).
        log("LUT: building the latency table (heads + FFN axis) of the default model at the profile's settings")
        lut = build_lut(clone_model(base), prof, rounds=args.lut_rounds, reps=args.lut_reps, ffn=True)
        save_lut(lut, lut_path)
    lut_s = lut.get("method", {}).get("total_seconds", time.monotonic() - t)

    log(f"export: dense ORT FP32 / ORT INT8 / edgeprune INT8 ({graph} graph, the profile's quant.graph)")
    files = dense_files(base, prof, work / "dense")
    heads = arch["heads_per_layer"]
    search_data = search_data_of(task["search"], args)
    shipped = None
    if args.int8_aware:
        # `edgeprune build` (search.run.shipped_dense_predictions): the dense model through build_model_files with the
        # profile's preset, predicted on the search split; run_search turns its flips into symmetric offsets.
        log("search: dense edgeprune INT8 predictions on the search split (int8-aware offsets)")
        shipped = onnx_predictions(files["ep_int8"][0], tok, search_data, max_length=seq)

    cache_file = work / "searches.json"
    cached = json.loads(cache_file.read_text()) if args.work and cache_file.is_file() else None
    searches = run_searches(task["model_dir"], task["search"], lut_path, prof, args, log,
                            shipped_predictions=shipped, cached=cached)

    log("export: one INT8 model per searched plan (onnx.compile.compile_plan; recovery row via export_bundle)")
    rows: list[dict[str, Any]] = _dense_rows(files, heads, graph)
    rows[-1].update({"checks": files["ep_int8"][1], "ep_chain": True})
    for key in ("greedy", "oneshot", "astar", "random", "astar_ffn"):
        if key not in searches:
            continue
        s = searches[key]
        plan = HeadPlan.from_dict(s["plan"])
        _, final, checks = _files(compile_plan(base, plan, prof.quant, work / key))
        rows.append(_plan_row(key, plan, final, checks, {k: v for k, v in s.items() if k != "plan"}))
        if key == "astar_ffn":
            # The product's recovery path: export_bundle(recovery_data=search split) fits the least-squares
            # rescaling (edgeprune.recovery.scale, default teacher target) on a copy of the unpruned model, folds it in,
            # then runs the same compile_plan chain. Certification is left to this benchmark (cert() below).
            log(f"recovery: fitting on {min(len(search_data), args.recovery_examples)} search-split examples "
                "and exporting through export_bundle")
            t_rec = time.monotonic()
            br = export_bundle(task["model_dir"], plan, prof, work / "astar_ffn_rec", certify_data=None,
                               recovery_data=search_data, recovery_examples=args.recovery_examples, overwrite=True)
            row = _plan_row("astar_ffn_rec", plan, Path(br.out_dir) / "model.onnx", br.checks,
                            {**{k: v for k, v in s.items() if k not in ("plan", "frontier")},
                             "note": "the astar_ffn search (same plan), recovery folded in before export"})
            row["recovery"] = br.recovery
            row["recovery_export_s"] = round(time.monotonic() - t_rec, 1)
            rows.append(row)
    opt = optimum_arm64(files["ort_fp32"][0], base, work)
    if opt["status"] == "ok":
        rows.insert(2, {"key": "optimum_int8", "name": "dense ORT INT8 (optimum arm64 preset)", "precision": "int8",
                        "path": Path(opt["path"]), "kept_counts": list(heads), "versions": opt["versions"]})
    _structure_totals(rows, arch, args.ffn_block_size)
    for r in rows:
        r["runtime"] = "onnxruntime"

    looks = 1  # fixed-sequence certification: each test at the full confidence
    log(f"certify: every file on the certify split ({len(task['certify'])} examples), paired against PyTorch, "
        f"at the build's test level ({args.confidence:.0%}, one test each)")
    base_preds = torch_predictions(base, tok, task["certify"], max_length=seq)
    labels = task["certify"].labels
    src = str(getattr(task["certify"], "source", "certify split"))

    def cert(preds: list[int]) -> dict[str, Any]:
        # As `edgeprune build` tests each plan of its sequence: at the full confidence (fixed-sequence testing).
        c = certify(base_preds, preds, labels, max_drop=args.max_drop / 100.0, confidence=args.confidence,
                    looks=looks, data_source=src)
        one = certify(base_preds, preds, labels, max_drop=args.max_drop / 100.0, confidence=args.confidence,
                      looks=1, data_source=src)
        return {"accuracy": c.accuracy, "base_accuracy": c.base_accuracy, "drop_pts": 100 * c.drop,
                "drop_bound_pts": 100 * c.drop_upper_bound, "certified": c.passed, "n": c.n,
                "n_worse": c.n_worse, "n_better": c.n_better, "confidence": c.confidence,
                "per_look_confidence": c.per_look_confidence, "looks": looks,
                "drop_bound_1look_pts": 100 * one.drop_upper_bound, "certified_1look": one.passed}

    for r in rows:
        r["accuracy"] = cert(onnx_predictions(r["path"], tok, task["certify"], max_length=seq, threads=threads))

    meas = measure_rows(rows, prof, rounds=args.rounds, reps=args.reps, processes=args.memory_processes,
                        gemm=gemm, arch=arch, log=log)
    log("latency: dense PyTorch FP32 against dense ORT FP32")
    trow = torch_row(clone_model(base), rows[0]["path"], rows[0], prof, threads, max(5, args.rounds // 2),
                     args.reps, arch, gemm, _model_bytes(task["model_dir"]))
    trow["accuracy"] = cert(base_preds)
    _structure_totals([trow], arch, args.ffn_block_size)
    rows.insert(0, trow)

    # LUT accuracy: the LUT describes the edgeprune chain (compile_plan + preset), so only those files count.
    lut_acc = []
    for r in rows:
        if r.get("ep_chain") and r.get("latency"):
            kw = {"ffn_widths": r["ffn_widths"]} if r.get("ffn_widths") else {}
            p = predict(lut, r["kept_counts"], **kw)
            pc = predict(lut, r["kept_counts"], calibrated=True, **kw)
            m = r["latency"]["p50_ms"]
            r["lut"] = {"predicted_ms": p, "predicted_calibrated_ms": pc, "error_pct": 100 * (p - m) / m,
                        "calibrated_error_pct": 100 * (pc - m) / m}
            lut_acc.append({"row": r["key"], "kept_counts": r["kept_counts"], "ffn_widths": r.get("ffn_widths"),
                            "measured_p50_ms": m, **r["lut"]})

    heads_rows = [r["key"] for r in rows if r.get("search") and r["key"] not in JOINT_ROWS]
    final_key = "astar" if "astar" in heads_rows else (heads_rows[-1] if heads_rows else rows[-1]["key"])
    prof_keys = ["ort_int8", "ep_int8", final_key] + [k for k in ("astar_ffn",) if any(r["key"] == k for r in rows)]
    log(f"ORT profiler breakdown: {', '.join(prof_keys)}")
    breakdown = {}
    for key in dict.fromkeys(prof_keys):
        r = next(x for x in rows if x["key"] == key)
        breakdown[key] = ort_breakdown(r["path"], threads=threads, batch=prof.batch, seq_len=seq,
                                       runs=args.profile_runs)

    for r in rows:
        r["path"] = str(r["path"]) if r.get("path") else None
        r.pop("ep_chain", None)
    setup = dict(searches["common"])
    first = next((searches[k] for k, _, _ in SEARCH_RUNS if k in searches), {})
    setup["base_accuracy"] = first.get("base_accuracy")
    setup["shipped_model_flips"] = first.get("shipped_model_flips")
    setup["offsets"] = first.get("offsets")
    setup["setup_s"] = {k: searches[k].get("setup_s") for k, _, _ in SEARCH_RUNS if k in searches}
    return {
        "task": task["info"], "architecture": arch, "rows": rows, "measurement": meas["alternating"],
        "lut": {"seconds": round(lut_s, 1), "rest_ms": lut["rest_ms"],
                "calibration_factor": lut.get("calibration_factor"), "ffn_axis": has_ffn_axis(lut),
                "full_model_ms": lut.get("full_model_ms"), "full_model_predicted_ms": lut.get("full_model_predicted_ms"),
                "per_layer_fit": [l["fit"] for l in lut["layers"]], "settings": lut["settings"],
                "provenance": lut["provenance"]},
        "lut_accuracy": lut_acc, "breakdown": breakdown, "final_row": final_key,
        "joint_rows": [k for k in JOINT_ROWS if any(r["key"] == k for r in rows)],
        "graph": graph, "search_setup": setup,
        "optimum_arm64": opt,
    }


# ---------------------------------------------------------------------------------------------------------------------
# part 2: BERT-base size, latency only
# ---------------------------------------------------------------------------------------------------------------------
def bench_bert_base(args: argparse.Namespace, prof: Any, work: Path, gemm: dict, removed_share: float,
                    log: _Log) -> dict[str, Any]:
    from benchmarks.bench_tools import ort_breakdown
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.latency.measure import effective_threads
    from edgeprune.task.modeling import clone_model

    log("BERT-base: building the random 12x12/768 model and its files")
    model = bert_base_model(args.quick)
    arch = _arch(model)
    threads, _ = effective_threads(prof)
    files = dense_files(model, prof, work / "bert-base")
    heads = arch["heads_per_layer"]
    n_remove = int(round(removed_share * sum(heads)))
    plan = _even_plan(heads, n_remove)
    _, pruned, checks = _files(compile_plan(model, plan, prof.quant, work / "bert-base" / "pruned"))
    rows = _dense_rows(files, heads, str(getattr(prof.quant, "graph", "plain"))) + [
        {"key": "pruned_int8", "name": f"edgeprune INT8, {n_remove}/{sum(heads)} heads removed (even)",
         "precision": "int8", "path": Path(pruned), "kept_counts": list(plan.kept_counts)},
    ]
    _structure_totals(rows, arch, args.ffn_block_size)
    for r in rows:
        r["runtime"] = "onnxruntime"
        r["accuracy"] = None
    rounds = max(4, args.rounds // 2)
    reps = max(1, min(args.reps, 3))
    meas = measure_rows(rows, prof, rounds=rounds, reps=reps, processes=max(1, args.memory_processes - 1),
                        gemm=gemm, arch=arch, log=log)
    log("BERT-base: PyTorch against ORT FP32")
    rows.insert(0, torch_row(clone_model(model), rows[0]["path"], rows[0], prof, threads, max(4, rounds // 2),
                             reps, arch, gemm, None))
    rows[0]["accuracy"] = None
    _structure_totals(rows[:1], arch, args.ffn_block_size)
    breakdown = {}
    for key in ("ort_int8", "ep_int8", "pruned_int8"):
        r = next(x for x in rows if x["key"] == key)
        breakdown[key] = ort_breakdown(r["path"], threads=threads, batch=prof.batch, seq_len=prof.seq_len,
                                       runs=max(3, args.profile_runs // 2))
    for r in rows:
        r["path"] = str(r["path"]) if r.get("path") else None
    return {"architecture": arch, "rows": rows, "measurement": meas["alternating"], "breakdown": breakdown,
            "pruned_plan": {"removed_share": removed_share, "kept_counts": list(plan.kept_counts),
                            "how": "the A* plan's share of heads on the default task, removed evenly per layer"},
            "note": "random weights: latency, size and memory only (no accuracy to keep)"}


# ---------------------------------------------------------------------------------------------------------------------
# goals, report, plot
# ---------------------------------------------------------------------------------------------------------------------
def best_joint_row(part: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Issue #10's row: the fastest *certified* heads+FFN row, else (nothing certified) the lowest-bound one."""
    rows = [r for r in part["rows"] if r["key"] in part.get("joint_rows", ()) and r.get("latency")
            and r.get("accuracy")]
    if not rows:
        return None
    ok = [r for r in rows if r["accuracy"]["certified"]]
    if ok:
        return max(ok, key=lambda r: r["latency"]["speedup_vs_ort_fp32"])
    return min(rows, key=lambda r: r["accuracy"]["drop_bound_pts"])


def evaluate_goals(part: dict[str, Any], max_drop: float) -> list[dict[str, Any]]:
    """Issue #9's goals on the heads-only A* row and issue #10's on the best certified heads+FFN row."""
    rows = {r["key"]: r for r in part["rows"]}
    fin = rows.get(part["final_row"])
    goals: list[dict[str, Any]] = []
    if fin is None:
        return goals
    int8 = rows["ort_int8"]["latency"]["rounds_ms"]
    cert = fin["accuracy"]["drop_bound_pts"]
    sp = fin["latency"]["speedup_vs_ort_fp32"]
    goals.append({"issue": "#9", "row": fin["key"],
                  "goal": f"#9: {fin['name']} vs dense ORT FP32 >= {GOALS['speedup_vs_ort_fp32']}x at <= {max_drop} "
                          "pt certified drop", "value": f"{sp:.2f}x at {cert:.2f} pts certified",
                  "reached": bool(sp >= GOALS["speedup_vs_ort_fp32"] and fin["accuracy"]["certified"])})
    sp8 = _paired_speedup(int8, fin["latency"]["rounds_ms"])
    goals.append({"issue": "#9", "row": fin["key"],
                  "goal": f"#9: {fin['name']} vs dense ORT INT8 >= {GOALS['speedup_vs_ort_int8']}x",
                  "value": f"{sp8:.2f}x (paired rounds)", "reached": bool(sp8 >= GOALS["speedup_vs_ort_int8"])})
    g = rows.get("greedy")
    a = rows.get("astar")
    if g and a:
        more = a["heads_removed"] > g["heads_removed"]
        sp_ag = _paired_speedup(g["latency"]["rounds_ms"], a["latency"]["rounds_ms"])
        faster = sp_ag > 1.0
        goals.append({"issue": "#9", "row": "astar",
                      "goal": "#9: A* removes more heads than greedy at the same bound, at lower measured latency",
                      "value": f"A* {a['heads_removed']} vs greedy {g['heads_removed']} heads; greedy/A* latency "
                               f"{sp_ag:.3f}x (paired); certified bounds A* {a['accuracy']['drop_bound_pts']:.2f} / "
                               f"greedy {g['accuracy']['drop_bound_pts']:.2f} pts",
                      "reached": bool(more and faster)})
    if a:
        share = a["heads_removed"] / a["heads_total"]
        obs = a["accuracy"]["drop_pts"]
        goals.append({"issue": "#9", "row": "astar",
                      "goal": f"#9: A* removes >= {GOALS['astar_heads_share']:.0%} of heads at <= {max_drop} pt "
                              "observed drop (certify split)",
                      "value": f"{share:.1%} ({a['heads_removed']}/{a['heads_total']}) at {obs:.2f} pts observed",
                      "reached": bool(share >= GOALS["astar_heads_share"] and obs <= max_drop)})
    j = best_joint_row(part)
    if j is not None:
        jc = j["accuracy"]["drop_bound_pts"]
        jok = bool(j["accuracy"]["certified"])
        which = "best certified heads+FFN row" if jok else "no heads+FFN row certified; lowest bound"
        jsp = j["latency"]["speedup_vs_ort_fp32"]
        goals.append({"issue": "#10", "row": j["key"],
                      "goal": f"#10: best certified heads+FFN row vs dense ORT FP32 >= "
                              f"{GOALS['joint_speedup_vs_ort_fp32']}x at <= {max_drop} pt certified drop",
                      "value": f"{j['name']} ({which}): {jsp:.2f}x at {jc:.2f} pts certified",
                      "reached": bool(jok and jsp >= GOALS["joint_speedup_vs_ort_fp32"])})
        jsp8 = _paired_speedup(int8, j["latency"]["rounds_ms"])
        goals.append({"issue": "#10", "row": j["key"],
                      "goal": f"#10: best certified heads+FFN row vs dense ORT INT8 >= "
                              f"{GOALS['joint_speedup_vs_ort_int8']}x at <= {max_drop} pt certified drop",
                      "value": f"{j['name']} ({which}): {jsp8:.2f}x (paired rounds) at {jc:.2f} pts certified",
                      "reached": bool(jok and jsp8 >= GOALS["joint_speedup_vs_ort_int8"])})
    return goals


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _row_md(r: dict[str, Any]) -> str:
    acc = r.get("accuracy")
    lat = r.get("latency") or {}
    mem = r.get("memory")
    s = r.get("search")
    roof = r.get("roofline") or {}
    return "| " + " | ".join([
        r["name"],
        f"{r['heads_removed']}/{r['heads_total']}",
        (f"{r.get('ffn_blocks_removed', 0)}/{r['ffn_blocks_total']}" if r.get("ffn_blocks_total") else "n/a"),
        _f(acc and 100 * acc["accuracy"], "{:.2f}%"),
        _f(acc and acc["drop_pts"]),
        f"{acc['n_worse']}/{acc['n_better']}" if acc else "n/a",
        _f(acc and acc["drop_bound_pts"]) + ("" if not acc else (" ✓" if acc["certified"] else " ✗")),
        f"{lat['p50_ms']:.2f} ({lat['p10_ms']:.2f}-{lat['p90_ms']:.2f})" if lat else "n/a",
        _f(lat.get("speedup_vs_ort_fp32"), "{:.2f}x"),
        _f(r.get("file_bytes") and r["file_bytes"] / 1e6, "{:.1f}"),
        _f(mem and mem["session_mib"], "{:.1f}"),
        f"{s['wall_s']:.0f} / {s['evaluations']}" if s else "-",
        _f(roof.get("gflops_per_s"), "{:.1f}"),
        _f(roof.get("efficiency_pct"), "{:.1f}%"),
    ]) + " |"


def _scale_range(r: Optional[dict[str, float]]) -> str:
    return "n/a" if not r else f"{r['min']:.2f}-{r['max']:.2f} (mean {r['mean']:.2f})"


def _breakdown_md(bd: dict[str, Any]) -> list[str]:
    from benchmarks.bench_tools import GROUPS

    lines = ["| model | " + " | ".join(GROUPS) + " | kernel ms/run | wall ms/run |",
             "|---|" + "---|" * (len(GROUPS) + 2)]
    for key, b in bd.items():
        lines.append(f"| {key} | " + " | ".join(f"{100 * b['shares'][g]:.1f}%" for g in GROUPS)
                     + f" | {b['kernel_ms_per_run']:.2f} | {b['wall_ms_per_run']:.2f} |")
    return lines


def render_markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    st = res["settings"]
    L = [f"# edgeprune benchmarks ({res['date']})", "",
         f"Command: `{res['command']}`" + ("  **(--quick: tiny random model, plumbing only)**" if res["quick"] else ""),
         "",
         f"Host: {env['host'].get('cpu_model')} ({env['host'].get('arch')}, {env['host'].get('logical_cores')} "
         f"cores), shared with other jobs: load average {env['loadavg_start'][0]:.1f} at the start, "
         f"{env['loadavg_end'][0]:.1f} at the end (max {env['loadavg_max_1min']:.1f} over the stages). "
         f"Profile {st['profile']} settings: batch {st['batch']}, seq_len {st['seq_len']}, threads {st['threads']}"
         f"{' (' + st['threads_note'] + ')' if st.get('threads_note') else ''}, INT8 preset {st['quant']}. "
         f"{env['measured_on']}.", "",
         "Latency: every ONNX row of a table in one alternating run (`measure_alternating`: shuffled order per "
         "round, a round's value is the best of its reps, p50 = median over rounds; p10-p90 is the spread over "
         "rounds). `x vs ORT FP32` is the median of per-round ratios (paired in time). Accuracy: each file is run "
         "on the certify split and paired against the unpruned PyTorch model; the bound is the one-sided paired "
         f"upper bound on the drop (`edgeprune.certify.core.certify`) at the level `edgeprune build` tests each plan of "
         f"its certification sequence ({st['confidence']:.0%}, fixed-sequence testing), so ✓ means the file passes "
         f"such a test. ✓ = bound within {st['max_drop_pts']} pt.", ""]
    task = res.get("default_task")
    if task:
        ss = task["search_setup"]
        flips = ss.get("shipped_model_flips")
        L += [f"## {task['task']['name']}", "",
              f"Search split {ss['n']} examples (base accuracy {_f(ss.get('base_accuracy') and 100 * ss['base_accuracy'], '{:.2f}%')}), "
              f"certify split {task['task']['certify_n']}. Every search is `edgeprune.search.run.run_search` called "
              f"as `edgeprune build` calls it: bound {st['max_drop_pts']} pt at the per-look confidence "
              f"{ss['search_confidence']:.4f} (the level of certification's tests), correction "
              f"`{st['correction']}`, budget {st['max_evals']} evaluations"
              + (f", {st['search_seconds']} s per algorithm (A* {st['astar_seconds']} s, its greedy seed included)"
                 if st.get("search_seconds") else "")
              + f", importance on {ss['importance_n']} examples, re-scoring every {ss['rescore_every']} removals, "
              + (f"int8-aware (the dense {task.get('graph', 'plain')}-graph INT8 file flips {flips['worse']} worse / "
                 f"{flips['better']} better on the search split: offsets {ss['offsets']['worse']}/"
                 f"{ss['offsets']['better']})" if flips else "not int8-aware")
              + f"; the LUT {'has' if task['lut'].get('ffn_axis') else 'LACKS'} the FFN axis, FFN blocks of "
              f"{ss['ffn_block_size']} neurons. Each algorithm runs stand-alone (own evaluator and importance pass; "
              "`search s` is the whole run_search call). The heads+FFN + recovery row ships the same plan as the "
              "heads+FFN row with `export_bundle(recovery_data=search split, recovery_examples="
              f"{st.get('recovery_examples')})` (least-squares rescaling, teacher target).", "",
              TABLE_HEADER, "|" + "---|" * 14]
        L += [_row_md(r) for r in task["rows"]]
        opt = task["optimum_arm64"]
        L += ["", f"optimum arm64 preset: {opt['status']}"
              + (f" ({opt.get('detail', '')[:300]})" if opt["status"] != "ok" else
                 f": `ORTQuantizer` + `AutoQuantizationConfig.arm64(is_static=False, per_channel=True)` on the stock "
                 f"FP32 export, quantized in `{opt.get('python')}` ({versions_text(opt)}), a subprocess of the "
                 "transformers 4.57 environment; scored and timed in this run's environment"), ""]
        L += ["### Goals (what was reached)", "", "| goal | measured | reached |", "|---|---|---|"]
        L += [f"| {g['goal']} | {g['value']} | {'yes' if g['reached'] else 'NO'} |" for g in res["goals"]]
        L += ["", "### Plans", ""]
        for r in task["rows"]:
            if r.get("search"):
                s = r["search"]
                ffn = (f", kept FFN blocks per layer {r['ffn_kept_blocks_per_layer']} (widths {r['ffn_widths']})"
                       if r.get("ffn_widths") else "")
                rec = r.get("recovery")
                if rec:
                    L.append(f"- {r['name']}: the plan above; recovery fitted on {rec.get('examples')} examples "
                             f"({rec.get('tokens')} tokens) in {rec.get('seconds')} s, target {rec.get('target')}, "
                             f"head scales {_scale_range(rec.get('head_scale_range'))}, FFN scales "
                             f"{_scale_range(rec.get('ffn_scale_range'))}.")
                    continue
                L.append(f"- {r['name']}: kept heads per layer {r['kept_counts']}{ffn}; search-split drop "
                         f"{s['search_split_drop_pts']:.2f} pts (bound {s['search_split_drop_bound_pts']:.2f}); "
                         f"{s['evaluations']} evaluations, {s['nodes_expanded']} nodes, {s['wall_s']:.0f} s, "
                         f"stopped by {s['stopped_by']}. {s['note']}")
        L += ["", "### LUT accuracy (edgeprune.latency.table.predict vs measured p50)", "",
              f"LUT built in {task['lut']['seconds']} s on this host at the profile's settings; rest "
              f"{task['lut']['rest_ms']:.3f} ms, calibration factor {_f(task['lut']['calibration_factor'], '{:.3f}')}.",
              "", "| plan | kept heads | kept FFN neurons | predicted ms | calibrated ms | measured p50 ms | error | "
              "calibrated error |", "|---|---|---|---|---|---|---|---|"]
        full_ffn = task["architecture"]["intermediate"] * task["architecture"]["layers"]
        for a in task["lut_accuracy"]:
            L.append(f"| {a['row']} | {sum(a['kept_counts'])} | "
                     f"{sum(a['ffn_widths']) if a.get('ffn_widths') else full_ffn} | {a['predicted_ms']:.2f} | "
                     f"{a['predicted_calibrated_ms']:.2f} | {a['measured_p50_ms']:.2f} | {a['error_pct']:+.1f}% | "
                     f"{a['calibrated_error_pct']:+.1f}% |")
        L += ["", "### Where the time goes (ORT profiler, shares of kernel time)", ""] + _breakdown_md(task["breakdown"])
    bb = res.get("bert_base")
    if bb:
        a = bb["architecture"]
        L += ["", f"## BERT-base size ({a['layers']} x {a['heads_per_layer'][0]} heads, hidden {a['hidden']}, FFN "
              f"{a['intermediate']}, random weights): latency only"
              + (" (--quick: a small stand-in)" if res["quick"] else ""), "",
              TABLE_HEADER, "|" + "---|" * 14]
        L += [_row_md(r) for r in bb["rows"]]
        L += ["", f"Pruned row: {bb['pruned_plan']['how']} (kept {bb['pruned_plan']['kept_counts']}).", "",
              "### Where the time goes (ORT profiler)", ""] + _breakdown_md(bb["breakdown"])
    g = res["gemm"]
    L += ["", "## Roofline ceiling (onnxruntime GEMM on this host)", "",
          "| n | FP32 p50 ms | FP32 GFLOP/s (p50 / best round) | INT8 p50 ms | INT8 GOP/s (p50 / best round) |",
          "|---|---|---|---|---|"]
    for b in g["by_size"]:
        L.append(f"| {b['n']} | {b['fp32']['p50_ms']:.2f} | {b['fp32']['gflops']:.0f} / {b['fp32']['best_gflops']:.0f} | "
                 f"{b['int8']['p50_ms']:.2f} | {b['int8']['gflops']:.0f} / {b['int8']['best_gflops']:.0f} |")
    L += ["", f"Ceiling used (best round of the best size, {g['threads']} threads): FP32 {g['fp32']['gflops']:.0f} "
          f"GFLOP/s (n={g['fp32']['n']}), dynamic INT8 {g['int8']['gflops']:.0f} GOP/s (n={g['int8']['n']}, ops "
          f"{', '.join(sorted(set(g['int8_graph_ops'])))}); INT8/FP32 {g['int8_speedup']:.2f}x. Model FLOPs are "
          "counted from the architecture (Q/K/V/output projections of the kept heads, attention matmuls, FFN, "
          "pooler+classifier; 2 per multiply-add) at the profile's seq_len; efficiency = model FLOP/s at p50 / the "
          "ceiling of the row's precision (PyTorch rows against the ORT FP32 ceiling: PyTorch's own GEMMs can "
          "exceed it)."]
    if res.get("analysis"):
        L += ["", "## What limits the speed-up", ""] + [f"- {x}" for x in res["analysis"]]
    L += ["", f"Raw data: `results/{res['date']}.json`; plot: `results/{res['date']}.png`. Wall time "
          f"{res['wall_s']:.0f} s.", ""]
    return "\n".join(L)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.bench_tools import GROUPS

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    ax = axes[0]
    task = res.get("default_task")
    if task:
        for r in task["rows"]:
            if r.get("latency") and r.get("accuracy"):
                ax.scatter(r["latency"]["p50_ms"], r["accuracy"]["drop_bound_pts"], s=40)
                ax.annotate(r["key"], (r["latency"]["p50_ms"], r["accuracy"]["drop_bound_pts"]), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
        ax.axhline(res["settings"]["max_drop_pts"], ls="--", c="grey", lw=1)
        ax.set_xlabel("p50 latency (ms)")
        ax.set_ylabel("certified drop bound (pts, certify split)")
        ax.set_title("default task: latency vs certified drop")
    ax = axes[1]
    labels, vals, colors = [], [], []
    for part, c in (("default_task", "tab:blue"), ("bert_base", "tab:orange")):
        p = res.get(part)
        if not p:
            continue
        for r in p["rows"]:
            if r.get("latency"):
                labels.append(f"{'MiniLM' if part == 'default_task' else 'BERT-base'}: {r['key']}")
                vals.append(r["latency"]["speedup_vs_ort_fp32"])
                colors.append(c)
    ax.barh(range(len(vals)), vals, color=colors)
    ax.set_yticks(range(len(vals)), labels, fontsize=7)
    ax.axvline(1.0, c="k", lw=0.8)
    ax.axvline(GOALS["speedup_vs_ort_fp32"], c="red", ls="--", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up vs dense ORT FP32 (paired p50)")
    ax.set_title("speed-up")
    ax = axes[2]
    bars = []
    for part in ("default_task", "bert_base"):
        p = res.get(part)
        if p:
            for key, b in p["breakdown"].items():
                bars.append((f"{'MiniLM' if part == 'default_task' else 'BERT-base'}: {key}", b["shares"]))
    left = [0.0] * len(bars)
    for g in GROUPS:
        v = [100 * s[g] for _, s in bars]
        ax.barh(range(len(bars)), v, left=left, label=g)
        left = [a + b for a, b in zip(left, v)]
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of ORT kernel time")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("where the time goes")
    fig.suptitle(f"edgeprune benchmarks {res['date']}" + (" (--quick)" if res["quick"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def analysis(res: dict[str, Any]) -> list[str]:
    """Plain statements computed from the measurements (no hopes): what bounds the speed-up of pruning."""
    out = []
    for part, label in (("default_task", "default task"), ("bert_base", "BERT-base")):
        p = res.get(part)
        if not p:
            continue
        rows = {r["key"]: r for r in p["rows"]}
        bd = p["breakdown"]
        ep = bd.get("ep_int8")
        graph = rows.get("ep_int8", {}).get("graph", "plain")
        if ep:
            att, ffn = ep["shares"]["attention"], ep["shares"]["ffn"]
            ceiling = 1.0 / max(1e-9, 1.0 - att)
            out.append(f"{label}: in the dense edgeprune INT8 model attention is {100 * att:.0f}% of kernel time and "
                       f"the FFN {100 * ffn:.0f}% (embeddings+classifier {100 * ep['shares']['embeddings+classifier']:.0f}%, "
                       f"other {100 * ep['shares']['other']:.0f}%): removing *every* head can at most give "
                       f"{ceiling:.2f}x over that model; removing heads and FFN blocks together at most "
                       f"{1.0 / max(1e-9, 1.0 - att - ffn):.2f}x (the glue and embeddings stay).")
        if "ort_int8" in rows and "ep_int8" in rows:
            lat = {k: rows[k]["latency"]["rounds_ms"] for k in ("ort_int8", "ep_int8", "preset_unfused")
                   if k in rows}
            msg = (f"{label}: dense INT8 chains, paired speed-ups: plain ORT quantize_dynamic over edgeprune "
                   f"{graph} graph + preset {_paired_speedup(lat['ep_int8'], lat['ort_int8']):.2f}x")
            if "preset_unfused" in lat:
                msg += (f"; plain over preset on the stock export "
                        f"{_paired_speedup(lat['preset_unfused'], lat['ort_int8']):.2f}x, preset on the stock export "
                        f"over edgeprune {_paired_speedup(lat['ep_int8'], lat['preset_unfused']):.2f}x")
            out.append(msg + " (> 1: the first is faster).")
        if ep:
            others = {op: ms for op, ms in ep["op_types"].items()
                      if op in ("SkipLayerNormalization", "LayerNormalization", "DynamicQuantizeLinear")}
            if others:
                top = max(others, key=others.get)
                out.append(f"{label}: in the dense edgeprune INT8 model ({graph} graph) {top} alone takes "
                           f"{others[top]:.2f} ms of {ep['kernel_ms_per_run']:.2f} ms kernel time "
                           f"({100 * others[top] / ep['kernel_ms_per_run']:.0f}%) per run: glue that pruning does "
                           "not shrink.")
        if ep and rows.get("ep_int8", {}).get("accuracy"):
            a = rows["ep_int8"]["accuracy"]
            out.append(f"{label}: INT8 quantization alone (no head removed) flips {a['n_worse']} predictions to wrong "
                       f"and {a['n_better']} to right out of {a['n']} (observed drop {a['drop_pts']:.2f} pts); the "
                       f"paired bound on that is already {a['drop_bound_pts']:.2f} pts"
                       + (f" > {res['settings']['max_drop_pts']} pt, so no INT8 file can be certified at this bound "
                          "with this certify split." if a["drop_bound_pts"] > res["settings"]["max_drop_pts"] else "."))
        finals = [p.get("final_row", "pruned_int8")]
        if part == "default_task":
            j = best_joint_row(p)
            if j is not None:
                finals.append(j["key"])
        for fin_key in finals:
            fin = rows.get(fin_key)
            if fin and "ort_fp32" in rows and "ep_int8" in rows:
                q = rows["ep_int8"]["latency"]["speedup_vs_ort_fp32"]
                f = fin["latency"]["speedup_vs_ort_fp32"]
                what = f"{fin['heads_removed']}/{fin['heads_total']} heads"
                if fin.get("ffn_blocks_removed"):
                    what += f", {fin['ffn_blocks_removed']}/{fin['ffn_blocks_total']} FFN blocks"
                out.append(f"{label}: of {fin['name']}'s {f:.2f}x over dense ORT FP32, the edgeprune INT8 chain "
                           f"alone gives {q:.2f}x and pruning ({what}) the remaining {f / q:.2f}x.")
        rec, plain = rows.get("astar_ffn_rec"), rows.get("astar_ffn")
        if rec and plain and rec.get("accuracy") and plain.get("accuracy"):
            out.append(f"{label}: recovery on the heads+FFN plan moves the certify-split drop from "
                       f"{plain['accuracy']['drop_pts']:.2f} to {rec['accuracy']['drop_pts']:.2f} pts observed "
                       f"(bound {plain['accuracy']['drop_bound_pts']:.2f} -> {rec['accuracy']['drop_bound_pts']:.2f}), "
                       f"latency ratio {_paired_speedup(plain['latency']['rounds_ms'], rec['latency']['rounds_ms']):.3f}x "
                       "(same graph shape: expected ~1).")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model + tiny data (< 1 min): plumbing smoke run")
    ap.add_argument("--skip-bert-base", action="store_true", help="skip the BERT-base-size latency part")
    ap.add_argument("--skip-task", action="store_true", help="skip the default-task part (BERT-base + roofline only)")
    ap.add_argument("--max-evals", type=int, default=None, help="search evaluation budget per algorithm "
                    "(default 80 as `edgeprune build`; 8 with --quick)")
    ap.add_argument("--search-seconds", type=float, default=DEFAULT_SEARCH.max_seconds,
                    help="wall-time safety cap per algorithm (default 600 as `edgeprune build`; 0 = none)")
    ap.add_argument("--astar-seconds", type=float, default=None,
                    help="A*'s wall-time cap, its greedy seed included (default: --search-seconds)")
    ap.add_argument("--search-examples", type=int, default=0, help="use the first N search-split examples (0 = all)")
    ap.add_argument("--importance-examples", type=int, default=None,
                    help="examples per importance pass (default 512 as `edgeprune build`; 0 = all)")
    ap.add_argument("--search-threads", type=int, default=0,
                    help="torch threads of the search's evaluator (default 0 = edgeprune's choice, the free "
                         "physical cores, as `edgeprune build`)")
    ap.add_argument("--ffn-block-size", type=int, default=None,
                    help="FFN neurons per block of the heads+FFN search (default 128 as `edgeprune build`; 16 with "
                         "--quick)")
    ap.add_argument("--recovery-examples", type=int, default=1024,
                    help="search-split examples the recovery row's least-squares fit uses (default 1024)")
    ap.add_argument("--int8-aware", action=argparse.BooleanOptionalAction, default=DEFAULT_SEARCH.int8_aware,
                    help="add the dense shipped-INT8 model's search-split flips to every candidate, as "
                         "`edgeprune build` (run_search's shipped_predictions)")
    ap.add_argument("--rescore-every", type=int, default=DEFAULT_SEARCH.rescore_every,
                    help="greedy re-scores importance every N removals (the build's default 4; Michel: 1)")
    ap.add_argument("--random", action="store_true", help="also run the random baseline")
    ap.add_argument("--out", default=str(HERE), help="writes OUT/results/<date>.json|.png, OUT/results/run_all-<date>.md "
                    "and regenerates OUT/RESULTS.md")
    ap.add_argument("--work", default=None, help="keep intermediate files here (default: a temporary folder)")
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--max-drop", type=float, default=1.0, help="accuracy bound in points")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--correction", default=DEFAULT_SEARCH.correction, choices=["none", "bonferroni"],
                    help="search-split multiple-comparison correction (the build's default is none: the certify "
                         "split carries the promise)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating latency rounds (default 25; 4 quick)")
    ap.add_argument("--reps", type=int, default=None, help="runs per model per round (default 5; 2 quick)")
    ap.add_argument("--memory-processes", type=int, default=None, help="fresh processes per memory figure")
    ap.add_argument("--gemm-sizes", default=None, help="GEMM sizes for the roofline ceiling (default 512,1024,2048)")
    ap.add_argument("--wait-task", type=float, default=60.0, help="minutes to wait for a default task in progress")
    ap.add_argument("--date", default=None, help="result file stem (default: today, UTC)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    q = args.quick
    args.max_evals = args.max_evals or (8 if q else DEFAULT_SEARCH.max_evaluations)
    args.search_seconds = args.search_seconds or None  # 0 = no cap
    if args.astar_seconds is None:
        args.astar_seconds = args.search_seconds
    args.astar_seconds = args.astar_seconds or None
    if args.importance_examples is None:
        args.importance_examples = 0 if q else DEFAULT_SEARCH.importance_examples
    args.ffn_block_size = args.ffn_block_size or (16 if q else 128)
    if args.ffn_block_size <= 0 or args.recovery_examples <= 0:
        ap.error("--ffn-block-size and --recovery-examples must be positive")
    args.rounds = args.rounds or (4 if q else 25)
    args.reps = args.reps or (2 if q else 5)
    args.memory_processes = args.memory_processes or (1 if q else 3)
    args.gemm_sizes = [int(x) for x in (args.gemm_sizes or ("128,256" if q else "512,1024,2048")).split(",")]
    args.lut_rounds, args.lut_reps = (3, 2) if q else (15, 5)
    args.profile_runs = 5 if q else 20
    if q:
        args.max_drop = max(args.max_drop, 60.0)  # a random tiny model: a loose bound, the plumbing is under test
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the benchmarks; returns the result dict (also written to disk)."""
    args = parse_args(argv)
    log = _Log(args.quiet)
    t0 = time.monotonic()
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    from benchmarks.bench_tools import gemm_ceiling
    from edgeprune.latency import device_runner as dr
    from edgeprune.latency.measure import effective_threads, measured_on
    from edgeprune.profiles import load_profile

    prof = load_profile(args.profile)
    threads, note = effective_threads(prof)
    date = args.date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="edgeprune-bench-")
        work = Path(tmp.name)
    load_start = list(os.getloadavg())
    res: dict[str, Any] = {
        "date": date, "quick": args.quick,
        "command": "python -m benchmarks.run_all " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"profile": prof.name, "threads": threads, "threads_requested": prof.threads,
                     "threads_note": note, "batch": prof.batch, "seq_len": prof.seq_len,
                     "quant": prof.quant.short(), "max_drop_pts": args.max_drop, "confidence": args.confidence,
                     "correction": args.correction, "max_evals": args.max_evals,
                     "search_seconds": args.search_seconds, "astar_seconds": args.astar_seconds, "search_examples": args.search_examples or "all",
                     "importance_examples": args.importance_examples or "all",
                     "search_threads": args.search_threads or "edgeprune default (free cores)",
                     "int8_aware": args.int8_aware, "rescore_every": args.rescore_every,
                     "ffn_block_size": args.ffn_block_size,
                     "recovery_examples": args.recovery_examples,
                     "rounds": args.rounds, "reps": args.reps, "memory_processes": args.memory_processes,
                     "gemm_sizes": args.gemm_sizes},
        "goals_targets": GOALS,
    }
    try:
        log(f"roofline: GEMM {args.gemm_sizes} FP32 vs dynamic INT8 with onnxruntime, {threads} threads")
        gemm = gemm_ceiling(args.gemm_sizes, threads=threads, rounds=max(5, args.rounds // 2), reps=3, work=work)
        res["gemm"] = gemm
        if not args.skip_task:
            res["default_task"] = bench_task(args, prof, work, gemm, log)
            res["goals"] = evaluate_goals(res["default_task"], args.max_drop)
        else:
            res["goals"] = []
        if not args.skip_bert_base:
            share = 0.4
            t = res.get("default_task")
            if t:
                fin = next(r for r in t["rows"] if r["key"] == t["final_row"])
                share = fin["heads_removed"] / fin["heads_total"]
            res["bert_base"] = bench_bert_base(args, prof, work, gemm, share, log)
    finally:
        if tmp is not None:
            tmp.cleanup()
    load_end = list(os.getloadavg())
    res["environment"] = {
        "host": dr.host_info(), "versions": _versions(), "measured_on": measured_on(prof)[1],
        "loadavg_start": load_start, "loadavg_end": load_end,
        "loadavg_max_1min": max([x["loadavg"][0] for x in log.loads] + [load_start[0], load_end[0]]),
        "loadavg_by_stage": log.loads,
    }
    res["analysis"] = analysis(res)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    json_path = out / "results" / f"{date}.json"
    json_path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    try:
        plot(res, out / "results" / f"{date}.png")
    except ImportError as exc:  # matplotlib is optional (not in every environment)
        res["plot"] = f"not written: {exc}"
        json_path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    md_path = out / "results" / f"run_all-{date}.md"
    md_path.write_text(render_markdown(res))
    from benchmarks.report import write_results_md

    # RESULTS.md leads with the builds' summary and links every benchmark; this run is its peer-run section.
    write_results_md(out / "results", out / "RESULTS.md", latest={"run_all": json_path})
    log(f"wrote {json_path}, {md_path}, {out / 'results' / (date + '.png')}; regenerated {out / 'RESULTS.md'}")
    return res


if __name__ == "__main__":
    main()
