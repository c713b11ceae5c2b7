"""edgeprune against its peers, side by side in one run: ``python -m benchmarks.run_all``.

Writes ``<out>/results/<date>.json``, ``<out>/results/<date>.png`` and ``<out>/RESULTS.md`` (``--out`` defaults to
this folder). Two parts:

1. **Default task** (the fine-tuned MiniLM-L6 sentiment classifier of :func:`edgeprune.default_task.default_task`),
   at the raspberrypi4 profile's settings (batch, seq_len, INT8 preset; threads clipped to this host's cores):
   dense PyTorch FP32, dense ORT FP32, dense ORT INT8 (ORT's own ``quantize_dynamic``, default settings), dense
   edgeprune INT8 (fusion + the profile's preset, no head removed), Michel greedy + INT8, one-shot + INT8, edgeprune
   A* + INT8 (random + INT8 with ``--random``). Per row: observed accuracy and certified drop bound of the *file*
   on the certify split (``edgeprune.bundle.onnx_predictions`` + ``edgeprune.bundle.certify``, paired against the
   unpruned PyTorch model, exactly as a bundle is certified), heads removed, p50 latency and its paired ratio to
   dense ORT FP32 from one alternating run (``edgeprune.measure.measure_alternating``), file size, session RSS
   (``edgeprune.measure.measure_memory``), search wall time and evaluations, FLOPs and roofline efficiency, LUT
   prediction (``edgeprune.latency.predict``) against the measurement.
2. **BERT-base size** (12 x 12 heads, hidden 768, FFN 3072, random weights): latency only (random weights have no
   accuracy to keep): the dense rows and one pruned INT8 model with the A* plan's share of heads removed, spread
   evenly over the layers.

Plus the machine's FP32 and INT8 GEMM throughput (the roofline ceiling) and ORT's profiler breakdown of the dense
INT8 and final INT8 models into attention / FFN / embeddings+classifier / other.

Searches (``edgeprune.search``): the masked evaluator, importance scores and latency table are built once and shared
by every algorithm (the same objects ``edgeprune.searching.run_search`` builds). A* seeds itself with the Michel
greedy path (``SearchConfig.seed_with_greedy``); the benchmark runs greedy first and hands its evaluations to A*'s
problem, so A*'s greedy seed replays them instead of paying for them twice. A*'s reported cost (wall time and
evaluations) includes the greedy seed, as a stand-alone A* run would.

Options: ``--quick`` (tiny random model + synthetic data, < 1 minute: plumbing only, numbers meaningless),
``--skip-bert-base``, ``--max-evals N``, ``--out DIR``; see ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

HERE = Path(__file__).resolve().parent

GOALS = {
    "speedup_vs_ort_fp32": 2.5,
    "speedup_vs_ort_int8": 1.25,
    "max_certified_drop_pts": 1.0,
    "astar_heads_share": 0.40,
}

TABLE_HEADER = ("| row | heads removed | accuracy | drop (pts) | flips worse/better | certified bound (pts) | "
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
    from edgeprune.data import TextDataset
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
    from edgeprune.default_task import TaskSpec, cache_root, default_task

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
def run_searches(model_dir: Path, search_data: Any, lut_path: Path, prof: Any, args: argparse.Namespace,
                 log: _Log) -> dict[str, Any]:
    """Greedy, one-shot, A* (and random) on one shared evaluator; returns per algorithm the result and its cost."""
    import torch

    from edgeprune.evaluate import MaskedEvaluator
    from edgeprune.importance import head_importance, make_rescorer
    from edgeprune.modeling import load_model
    from edgeprune.search import Correction, SearchConfig
    from edgeprune.search.astar import run_astar
    from edgeprune.search.baselines import run_baseline
    from edgeprune.search.core import Problem
    from edgeprune.searching import resolve_latency

    model, tok = load_model(model_dir)
    n = args.search_examples
    data = search_data if not n or n >= len(search_data) else search_data.head(n)
    t0 = time.monotonic()
    # torch intra-op threads of the masked evaluator. 1 by default: on this shared 2-core host (load ~6.5) a pass
    # over 300 MiniLM examples took 1.7-2.7 s with 1 thread and 14-20 s with 2 (spinning OpenMP workers preempted).
    thr = args.search_threads or None
    evaluator = MaskedEvaluator(model, tok, data, batch_size=32, max_length=prof.seq_len, threads=thr)
    base_s = time.monotonic() - t0
    layout = evaluator.layout
    lat_fn, source = resolve_latency(layout, layout.hidden_size, prof.seq_len, latency_table=lut_path)
    t1 = time.monotonic()
    m_imp = args.importance_examples
    if m_imp and m_imp < len(data):
        # Importance is only the order in which heads are tried (accept/reject uses the bound on the whole split);
        # a gradient pass costs ~3 forward passes, so score on a prefix of the search split (as
        # benchmarks/export_default_task.py does) and re-score there too.
        imp_model, _ = load_model(model_dir, with_tokenizer=False)
        scorer = MaskedEvaluator(imp_model, tok, data.head(m_imp), batch_size=32, max_length=prof.seq_len,
                                 threads=thr)
    else:
        scorer = evaluator
    importance = head_importance(scorer)
    imp_s = time.monotonic() - t1
    log(f"search setup: base pass {base_s:.0f}s on {len(data)} examples, importance {imp_s:.0f}s on "
        f"{scorer.n} examples")
    allowance = {"worse": 0, "better": 0, "n": len(data)}
    if args.int8_aware:
        # As `edgeprune build` (BuildConfig.int8_aware): the dense model quantized with the profile's preset flips
        # some search-split predictions by itself; adding those counts to every candidate keeps room for them.
        from edgeprune.bundle import build_model_files, onnx_predictions, torch_predictions
        from edgeprune.plan import HeadPlan

        t2 = time.monotonic()
        dense, _ = load_model(model_dir, with_tokenizer=False)
        full = HeadPlan.from_removed(layout.heads_per_layer, [])
        _, int8, _ = build_model_files(dense, full, prof.quant, Path(args.work or tempfile.mkdtemp()) / "allowance")
        base_p = torch_predictions(dense, tok, data, max_length=prof.seq_len)
        q_p = onnx_predictions(int8, tok, data, max_length=prof.seq_len)
        allowance["worse"] = sum(1 for b, q, y in zip(base_p, q_p, data.labels) if b == y and q != y)
        allowance["better"] = sum(1 for b, q, y in zip(base_p, q_p, data.labels) if b != y and q == y)
        allowance["seconds"] = round(time.monotonic() - t2, 1)
        log(f"search: INT8 allowance {allowance['worse']} worse / {allowance['better']} better on the search split")
    config = SearchConfig(max_drop_pts=args.max_drop, confidence=args.confidence,
                          correction=Correction(args.correction), max_evaluations=args.max_evals,
                          max_seconds=args.search_seconds, batch_size=4, seed=0,
                          rescore_every=args.rescore_every, offset_worse=allowance["worse"],
                          offset_better=allowance["better"])
    # A* gets its own wall-time cap (counting its greedy seed); the evaluation budget is the same for all.
    astar_config = dataclasses.replace(config, max_seconds=args.astar_seconds)
    common = {"setup_s": {"tokenise_and_base_pass": round(base_s, 1), "importance": round(imp_s, 1)},
              "n": len(data), "importance_n": scorer.n, "int8_allowance": allowance, "base_accuracy": evaluator.base_accuracy, "latency_source": source,
              "config": config.to_dict(), "astar_max_seconds": args.astar_seconds,
              "torch_threads": torch.get_num_threads()}
    out: dict[str, Any] = {"common": common}

    def problem(cfg: SearchConfig = config) -> Problem:
        return Problem(evaluator, lat_fn, importance, layout, cfg, rescore=make_rescorer(scorer))

    algos = ["greedy", "oneshot", "astar"] + (["random"] if args.random else [])
    greedy_problem = None
    greedy_cost = (0.0, 0)
    for alg in algos:
        cap = args.astar_seconds if alg == "astar" else args.search_seconds
        log(f"search: {alg} (max {args.max_evals} evaluations, {cap or 'no'} s cap)")
        t = time.monotonic()
        if alg == "astar":
            p = problem(astar_config)
            if greedy_problem is not None:
                # Hand greedy's evaluations and re-scorings to A*'s problem: its greedy seed (identical, deterministic
                # decisions) replays them from the cache. The budget counts them, as in a stand-alone A* run.
                p.cache.update(greedy_problem.cache)
                p._importance_cache.update(greedy_problem._importance_cache)
                p.evaluations = greedy_problem.evaluations
                p.t0 -= greedy_cost[0]  # the time budget and wall time count the greedy seed too
            res = run_astar(p)
            wall = time.monotonic() - t + greedy_cost[0]  # == res.wall_time_s
            evals = p.evaluations
        else:
            p = problem()
            res = run_baseline(p, alg)
            wall = time.monotonic() - t
            evals = p.evaluations
            if alg == "greedy":
                greedy_problem, greedy_cost = p, (wall, p.evaluations)
        out[alg] = {"plan": res.plan.to_dict(), "heads_removed": res.heads_removed,
                    "wall_s": round(wall, 1), "evaluations": evals, "nodes_expanded": res.nodes_expanded,
                    "stopped_by": res.stopped_by, "search_split_drop_pts": res.drop_pts,
                    "search_split_drop_bound_pts": res.drop_bound_pts, "predicted_latency_ms": res.latency_ms,
                    "notes": list(res.notes),
                    "frontier": [{"latency_ms": f.latency_ms, "drop_bound_pts": f.drop_bound_pts,
                                  "heads_removed": f.heads_removed} for f in res.frontier],
                    "note": "includes the greedy seed (replayed from the greedy run's cache)" if alg == "astar"
                    else ""}
        if args.work:  # a crash later in the benchmark must not cost the searches again
            (Path(args.work) / "searches.json").write_text(json.dumps(out, indent=2, default=str))
        log(f"search: {alg} removed {res.heads_removed} heads (search-split bound {res.drop_bound_pts:.2f} pts, "
            f"{evals} evaluations, {wall:.0f}s, stopped by {res.stopped_by})")
    del evaluator, model
    return out


# ---------------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------------
def _dense_rows(files: dict, heads) -> list[dict[str, Any]]:
    """The four dense rows every table starts with (ORT FP32, ORT INT8, preset unfused, edgeprune fused INT8)."""
    return [
        {"key": "ort_fp32", "name": "dense ORT FP32", "precision": "fp32", "path": files["ort_fp32"][0],
         "kept_counts": list(heads)},
        {"key": "ort_int8", "name": "dense ORT INT8 (ORT quantize_dynamic, defaults)", "precision": "int8",
         "path": files["ort_int8"][0], "kept_counts": list(heads)},
        {"key": "preset_unfused", "name": "dense INT8, profile preset on the unfused graph (quantize_onnx)",
         "precision": "int8", "path": files["preset_unfused"][0], "kept_counts": list(heads)},
        {"key": "ep_int8", "name": "dense edgeprune INT8 (fused + profile preset)", "precision": "int8",
         "path": files["ep_int8"][0], "kept_counts": list(heads)},
    ]


def dense_files(model: Any, prof: Any, work: Path) -> dict[str, tuple[Path, dict]]:
    """Dense ORT FP32 (plain export), ORT INT8 (ORT's own quantize_dynamic) and edgeprune INT8 (fused + preset)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgeprune.adapters import get_adapter
    from edgeprune.bundle import build_model_files
    from edgeprune.export import export_onnx
    from edgeprune.modeling import clone_model
    from edgeprune.plan import HeadPlan

    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(clone_model(model), work / "dense_fp32.onnx")
    int8 = work / "dense_int8.onnx"
    # What a user does without edgeprune: ORT dynamic quantization of the exported graph with its defaults (the same
    # baseline `edgeprune build` measures).
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    # The profile's preset on the *unfused* graph: separates what fusion costs or gains from what the preset does.
    from edgeprune.quantize import quantize_onnx

    pc = quantize_onnx(fp32, work / "dense_int8_preset_unfused.onnx", **prof.quant.kwargs())
    layout = get_adapter(model).layout(model)
    full = HeadPlan.from_removed(layout.heads_per_layer, [])
    _, ep, checks = build_model_files(model, full, prof.quant, work / "ep_dense")
    return {"ort_fp32": (Path(fp32), {}), "ort_int8": (int8, {}), "preset_unfused": (Path(pc), {}),
            "ep_int8": (Path(ep), checks)}


def optimum_arm64(fp32: Path, model: Any, work: Path) -> dict[str, Any]:
    """optimum's arm64 dynamic preset, only where the optional extra is importable (it is not in the dev venv)."""
    try:
        from optimum.onnxruntime import ORTQuantizer  # noqa: F401
        from optimum.onnxruntime.configuration import AutoQuantizationConfig  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        return {"status": "not installed", "detail": f"{type(exc).__name__}: {exc}"[:200]}
    try:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        src = work / "optimum-src"
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy2(fp32, src / "model.onnx")
        model.config.save_pretrained(src)
        q = ORTQuantizer.from_pretrained(str(src), file_name="model.onnx")
        out = work / "optimum-arm64"
        q.quantize(save_dir=str(out), quantization_config=AutoQuantizationConfig.arm64(is_static=False,
                                                                                         per_channel=True))
        files = sorted(out.glob("*.onnx"))
        return {"status": "ok", "path": str(files[0])} if files else {"status": "failed", "detail": "no file"}
    except Exception as exc:  # noqa: BLE001 - optional baseline: record the failure, keep benchmarking
        return {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"[:300]}


# ---------------------------------------------------------------------------------------------------------------------
# measuring a set of rows
# ---------------------------------------------------------------------------------------------------------------------
def measure_rows(rows: list[dict[str, Any]], prof: Any, *, rounds: int, reps: int, processes: int, gemm: dict,
                 arch: dict, log: _Log) -> dict[str, Any]:
    """Latency (one alternating run, first row = the reference), file size, memory and roofline of ONNX rows."""
    from benchmarks.bench_tools import encoder_flops
    from edgeprune.measure import file_size_bytes, measure_alternating, measure_memory

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
                           batch=prof.batch)
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
def bench_task(args: argparse.Namespace, prof: Any, work: Path, gemm: dict, log: _Log) -> dict[str, Any]:
    from benchmarks.bench_tools import ort_breakdown
    from edgeprune.bundle import build_model_files, certify, onnx_predictions, torch_predictions
    from edgeprune.latency import build_lut, predict, save_lut
    from edgeprune.measure import effective_threads
    from edgeprune.modeling import clone_model, load_model
    from edgeprune.plan import HeadPlan

    task = quick_task(work) if args.quick else default_task_ready(args.wait_task, log)
    base, tok = load_model(task["model_dir"])
    arch = _arch(base)
    threads, _ = effective_threads(prof)
    seq = prof.seq_len

    t = time.monotonic()
    lut_path = work / "lut.json"
    if args.work and lut_path.is_file():
        from edgeprune.latency import load_lut

        log(f"LUT: reusing {lut_path} (delete it to measure again)")
        lut = load_lut(lut_path)
    else:
        log("LUT: building the latency table of the default model at the profile's settings")
        lut = build_lut(clone_model(base), prof, rounds=args.lut_rounds, reps=args.lut_reps)
        save_lut(lut, lut_path)
    lut_s = lut.get("method", {}).get("total_seconds", time.monotonic() - t)

    cached = work / "searches.json"
    if args.work and cached.is_file():
        searches = json.loads(cached.read_text())
        log(f"search: reusing {cached} (delete it to search again)")
    else:
        searches = run_searches(task["model_dir"], task["search"], lut_path, prof, args, log)

    log("export: dense ORT FP32 / ORT INT8 / edgeprune INT8 and one INT8 bundle model per searched plan")
    files = dense_files(base, prof, work / "dense")
    heads = arch["heads_per_layer"]
    rows: list[dict[str, Any]] = _dense_rows(files, heads)
    rows[-1].update({"checks": files["ep_int8"][1], "ep_chain": True})
    names = {"greedy": "Michel greedy + INT8", "oneshot": "one-shot top-k + INT8", "astar": "edgeprune A* + INT8",
             "random": "random + INT8"}
    for alg in ("greedy", "oneshot", "astar", "random"):
        if alg not in searches:
            continue
        s = searches[alg]
        plan = HeadPlan.from_dict(s["plan"])
        _, final, checks = build_model_files(base, plan, prof.quant, work / alg)
        rows.append({"key": alg, "name": names[alg], "precision": "int8", "path": Path(final),
                     "kept_counts": list(plan.kept_counts), "kept_per_layer": [list(k) for k in plan.kept],
                     "checks": checks, "ep_chain": True,
                     "search": {k: v for k, v in s.items() if k != "plan"}})
    opt = optimum_arm64(files["ort_fp32"][0], base, work)
    if opt["status"] == "ok":
        rows.insert(2, {"key": "optimum_int8", "name": "dense ORT INT8 (optimum arm64 preset)", "precision": "int8",
                        "path": Path(opt["path"]), "kept_counts": list(heads)})
    for r in rows:
        r["heads_total"] = sum(heads)
        r["heads_removed"] = sum(heads) - sum(r["kept_counts"])
        r["runtime"] = "onnxruntime"

    log(f"certify: every file on the certify split ({len(task['certify'])} examples), paired against PyTorch")
    base_preds = torch_predictions(base, tok, task["certify"], max_length=seq)
    labels = task["certify"].labels
    src = str(getattr(task["certify"], "source", "certify split"))

    def cert(preds: list[int]) -> dict[str, Any]:
        c = certify(base_preds, preds, labels, max_drop=args.max_drop / 100.0, confidence=args.confidence,
                    looks=1, data_source=src)
        return {"accuracy": c.accuracy, "base_accuracy": c.base_accuracy, "drop_pts": 100 * c.drop,
                "drop_bound_pts": 100 * c.drop_upper_bound, "certified": c.passed, "n": c.n,
                "n_worse": c.n_worse, "n_better": c.n_better, "confidence": c.confidence}

    for r in rows:
        r["accuracy"] = cert(onnx_predictions(r["path"], tok, task["certify"], max_length=seq, threads=threads))

    meas = measure_rows(rows, prof, rounds=args.rounds, reps=args.reps, processes=args.memory_processes,
                        gemm=gemm, arch=arch, log=log)
    log("latency: dense PyTorch FP32 against dense ORT FP32")
    trow = torch_row(clone_model(base), rows[0]["path"], rows[0], prof, threads, max(5, args.rounds // 2),
                     args.reps, arch, gemm, _model_bytes(task["model_dir"]))
    trow["accuracy"] = cert(base_preds)
    rows.insert(0, trow)

    # LUT accuracy: the LUT describes the edgeprune chain (fused + preset INT8), so only those files are compared.
    lut_acc = []
    for r in rows:
        if r.get("ep_chain") and r.get("latency"):
            p = predict(lut, r["kept_counts"])
            pc = predict(lut, r["kept_counts"], calibrated=True)
            m = r["latency"]["p50_ms"]
            r["lut"] = {"predicted_ms": p, "predicted_calibrated_ms": pc, "error_pct": 100 * (p - m) / m,
                        "calibrated_error_pct": 100 * (pc - m) / m}
            lut_acc.append({"row": r["key"], "kept_counts": r["kept_counts"], "measured_p50_ms": m, **r["lut"]})

    final_key = "astar" if any(r["key"] == "astar" for r in rows) else rows[-1]["key"]
    log("ORT profiler breakdown: dense ORT INT8, dense edgeprune INT8, final")
    breakdown = {}
    for key in ("ort_int8", "ep_int8", final_key):
        r = next(x for x in rows if x["key"] == key)
        breakdown[key] = ort_breakdown(r["path"], threads=threads, batch=prof.batch, seq_len=seq,
                                       runs=args.profile_runs)

    for r in rows:
        r["path"] = str(r["path"]) if r.get("path") else None
        r.pop("ep_chain", None)
    s_common = searches["common"]
    return {
        "task": task["info"], "architecture": arch, "rows": rows, "measurement": meas["alternating"],
        "lut": {"seconds": round(lut_s, 1), "rest_ms": lut["rest_ms"],
                "calibration_factor": lut.get("calibration_factor"),
                "full_model_ms": lut.get("full_model_ms"), "full_model_predicted_ms": lut.get("full_model_predicted_ms"),
                "per_layer_fit": [l["fit"] for l in lut["layers"]], "settings": lut["settings"],
                "provenance": lut["provenance"]},
        "lut_accuracy": lut_acc, "breakdown": breakdown, "final_row": final_key,
        "search_setup": {k: v for k, v in s_common.items()},
        "optimum_arm64": opt,
    }


# ---------------------------------------------------------------------------------------------------------------------
# part 2: BERT-base size, latency only
# ---------------------------------------------------------------------------------------------------------------------
def bench_bert_base(args: argparse.Namespace, prof: Any, work: Path, gemm: dict, removed_share: float,
                    log: _Log) -> dict[str, Any]:
    from benchmarks.bench_tools import ort_breakdown
    from edgeprune.bundle import build_model_files
    from edgeprune.measure import effective_threads
    from edgeprune.modeling import clone_model

    log("BERT-base: building the random 12x12/768 model and its files")
    model = bert_base_model(args.quick)
    arch = _arch(model)
    threads, _ = effective_threads(prof)
    files = dense_files(model, prof, work / "bert-base")
    heads = arch["heads_per_layer"]
    n_remove = int(round(removed_share * sum(heads)))
    plan = _even_plan(heads, n_remove)
    _, pruned, checks = build_model_files(model, plan, prof.quant, work / "bert-base" / "pruned")
    rows = _dense_rows(files, heads) + [
        {"key": "pruned_int8", "name": f"edgeprune INT8, {n_remove}/{sum(heads)} heads removed (even)",
         "precision": "int8", "path": Path(pruned), "kept_counts": list(plan.kept_counts)},
    ]
    for r in rows:
        r["heads_total"] = sum(heads)
        r["heads_removed"] = sum(heads) - sum(r["kept_counts"])
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
def evaluate_goals(part: dict[str, Any], max_drop: float) -> list[dict[str, Any]]:
    rows = {r["key"]: r for r in part["rows"]}
    fin = rows.get(part["final_row"])
    goals = []
    if fin is None:
        return goals
    cert = fin["accuracy"]["drop_bound_pts"]
    sp = fin["latency"]["speedup_vs_ort_fp32"]
    goals.append({"goal": f"final vs dense ORT FP32 >= {GOALS['speedup_vs_ort_fp32']}x at <= {max_drop} pt "
                          "certified drop", "value": f"{sp:.2f}x at {cert:.2f} pts certified",
                  "reached": bool(sp >= GOALS["speedup_vs_ort_fp32"] and cert <= max_drop)})
    int8 = rows["ort_int8"]["latency"]["rounds_ms"]
    sp8 = _paired_speedup(int8, fin["latency"]["rounds_ms"])
    goals.append({"goal": f"final vs dense ORT INT8 >= {GOALS['speedup_vs_ort_int8']}x",
                  "value": f"{sp8:.2f}x (paired rounds)", "reached": bool(sp8 >= GOALS["speedup_vs_ort_int8"])})
    g = rows.get("greedy")
    a = rows.get("astar")
    if g and a:
        more = a["heads_removed"] > g["heads_removed"]
        sp_ag = _paired_speedup(g["latency"]["rounds_ms"], a["latency"]["rounds_ms"])
        faster = sp_ag > 1.0
        goals.append({"goal": "A* removes more heads than greedy at the same bound, at lower measured latency",
                      "value": f"A* {a['heads_removed']} vs greedy {g['heads_removed']} heads; greedy/A* latency "
                               f"{sp_ag:.3f}x (paired); certified bounds A* {a['accuracy']['drop_bound_pts']:.2f} / "
                               f"greedy {g['accuracy']['drop_bound_pts']:.2f} pts",
                      "reached": bool(more and faster)})
    if a:
        share = a["heads_removed"] / a["heads_total"]
        obs = a["accuracy"]["drop_pts"]
        goals.append({"goal": f"A* removes >= {GOALS['astar_heads_share']:.0%} of heads at <= {max_drop} pt observed "
                              "drop (certify split)",
                      "value": f"{share:.1%} ({a['heads_removed']}/{a['heads_total']}) at {obs:.2f} pts observed",
                      "reached": bool(share >= GOALS["astar_heads_share"] and obs <= max_drop)})
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
         "on the certify split and paired against the unpruned PyTorch model; the bound is the one-sided "
         f"{st['confidence']:.0%} paired upper bound on the drop (`edgeprune.bundle.certify`, one look per row: "
         "rows are comparisons, not one shipping decision). ✓ = bound within "
         f"{st['max_drop_pts']} pt.", ""]
    task = res.get("default_task")
    if task:
        L += [f"## {task['task']['name']}", "",
              f"Search split {task['search_setup']['n']} examples (base accuracy "
              f"{100 * task['search_setup']['base_accuracy']:.2f}%), certify split {task['task']['certify_n']}; "
              f"bound {st['max_drop_pts']} pt at {st['confidence']:.0%}, correction `{st['correction']}`, "
              f"budget {st['max_evals']} evaluations"
              + (f", {st['search_seconds']} s per algorithm" if st.get("search_seconds") else "")
              + f". Search setup (shared by all algorithms): base pass "
              f"{task['search_setup']['setup_s']['tokenise_and_base_pass']} s, importance "
              f"{task['search_setup']['setup_s']['importance']} s.", "",
              TABLE_HEADER, "|" + "---|" * 13]
        L += [_row_md(r) for r in task["rows"]]
        opt = task["optimum_arm64"]
        L += ["", f"optimum arm64 preset: {opt['status']}"
              + (f" ({opt.get('detail', '')})" if opt["status"] != "ok" else ""), ""]
        L += ["### Goals (what was reached)", "", "| goal | measured | reached |", "|---|---|---|"]
        L += [f"| {g['goal']} | {g['value']} | {'yes' if g['reached'] else 'NO'} |" for g in res["goals"]]
        L += ["", "### Plans", ""]
        for r in task["rows"]:
            if r.get("search"):
                s = r["search"]
                L.append(f"- {r['name']}: kept heads per layer {r['kept_counts']}; search-split drop "
                         f"{s['search_split_drop_pts']:.2f} pts (bound {s['search_split_drop_bound_pts']:.2f}); "
                         f"{s['evaluations']} evaluations, {s['nodes_expanded']} nodes, {s['wall_s']:.0f} s, "
                         f"stopped by {s['stopped_by']}. {s['note']}")
        L += ["", "### LUT accuracy (edgeprune.latency.predict vs measured p50)", "",
              f"LUT built in {task['lut']['seconds']} s on this host at the profile's settings; rest "
              f"{task['lut']['rest_ms']:.3f} ms, calibration factor {_f(task['lut']['calibration_factor'], '{:.3f}')}.",
              "", "| plan | kept heads | predicted ms | calibrated ms | measured p50 ms | error | calibrated error |",
              "|---|---|---|---|---|---|---|"]
        for a in task["lut_accuracy"]:
            L.append(f"| {a['row']} | {sum(a['kept_counts'])} | {a['predicted_ms']:.2f} | "
                     f"{a['predicted_calibrated_ms']:.2f} | {a['measured_p50_ms']:.2f} | {a['error_pct']:+.1f}% | "
                     f"{a['calibrated_error_pct']:+.1f}% |")
        L += ["", "### Where the time goes (ORT profiler, shares of kernel time)", ""] + _breakdown_md(task["breakdown"])
    bb = res.get("bert_base")
    if bb:
        a = bb["architecture"]
        L += ["", f"## BERT-base size ({a['layers']} x {a['heads_per_layer'][0]} heads, hidden {a['hidden']}, FFN "
              f"{a['intermediate']}, random weights): latency only"
              + (" (--quick: a small stand-in)" if res["quick"] else ""), "",
              TABLE_HEADER, "|" + "---|" * 13]
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
    """Plain statements computed from the measurements (no hopes): what bounds the speed-up of head removal."""
    out = []
    for part, label in (("default_task", "default task"), ("bert_base", "BERT-base")):
        p = res.get(part)
        if not p:
            continue
        rows = {r["key"]: r for r in p["rows"]}
        bd = p["breakdown"]
        ep = bd.get("ep_int8")
        if ep:
            att, ffn = ep["shares"]["attention"], ep["shares"]["ffn"]
            ceiling = 1.0 / max(1e-9, 1.0 - att)
            out.append(f"{label}: in the dense edgeprune INT8 model attention is {100 * att:.0f}% of kernel time and "
                       f"the FFN {100 * ffn:.0f}% (embeddings+classifier {100 * ep['shares']['embeddings+classifier']:.0f}%, "
                       f"other {100 * ep['shares']['other']:.0f}%): removing *every* head can at most give "
                       f"{ceiling:.2f}x over that model; the FFN, untouched by head pruning, sets the floor.")
        if "ort_int8" in rows and "ep_int8" in rows:
            lat = {k: rows[k]["latency"]["rounds_ms"] for k in ("ort_int8", "ep_int8", "preset_unfused")
                   if k in rows}
            msg = (f"{label}: dense INT8 chains, paired speed-ups: plain ORT quantize_dynamic over edgeprune fused+preset "
                   f"{_paired_speedup(lat['ep_int8'], lat['ort_int8']):.2f}x")
            if "preset_unfused" in lat:
                msg += (f"; plain over preset-unfused {_paired_speedup(lat['preset_unfused'], lat['ort_int8']):.2f}x, "
                        f"preset-unfused over fused {_paired_speedup(lat['ep_int8'], lat['preset_unfused']):.2f}x")
            out.append(msg + " (> 1: the first is faster).")
        if ep:
            others = {op: ms for op, ms in ep["op_types"].items()
                      if op in ("SkipLayerNormalization", "LayerNormalization", "DynamicQuantizeLinear")}
            if others:
                top = max(others, key=others.get)
                out.append(f"{label}: in the fused INT8 model {top} alone takes {others[top]:.2f} ms of "
                           f"{ep['kernel_ms_per_run']:.2f} ms kernel time ({100 * others[top] / ep['kernel_ms_per_run']:.0f}%)"
                           " per run: glue that head pruning does not shrink.")
        if ep and rows.get("ep_int8", {}).get("accuracy"):
            a = rows["ep_int8"]["accuracy"]
            out.append(f"{label}: INT8 quantization alone (no head removed) flips {a['n_worse']} predictions to wrong "
                       f"and {a['n_better']} to right out of {a['n']} (observed drop {a['drop_pts']:.2f} pts); the "
                       f"paired bound on that is already {a['drop_bound_pts']:.2f} pts"
                       + (f" > {res['settings']['max_drop_pts']} pt, so no INT8 file can be certified at this bound "
                          "with this certify split: the search's bound (on the FP32 masked model) does not see the "
                          "quantization flips." if a["drop_bound_pts"] > res["settings"]["max_drop_pts"] else "."))
        fin_key = p.get("final_row", "pruned_int8")
        fin = rows.get(fin_key)
        if fin and "ort_fp32" in rows and "ort_int8" in rows and "ep_int8" in rows:
            q = rows["ep_int8"]["latency"]["speedup_vs_ort_fp32"]
            f = fin["latency"]["speedup_vs_ort_fp32"]
            out.append(f"{label}: of the final {f:.2f}x over dense ORT FP32, INT8 + fusion alone give {q:.2f}x "
                       f"and head removal ({fin['heads_removed']}/{fin['heads_total']} heads) the remaining "
                       f"{f / q:.2f}x.")
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
                    "(default 60; 8 with --quick)")
    ap.add_argument("--search-seconds", type=float, default=None,
                    help="wall-time cap per algorithm (default none; makes results machine dependent)")
    ap.add_argument("--astar-seconds", type=float, default=None,
                    help="A*'s wall-time cap, its greedy seed included (default: --search-seconds + 480)")
    ap.add_argument("--search-examples", type=int, default=0, help="use the first N search-split examples (0 = all)")
    ap.add_argument("--importance-examples", type=int, default=None,
                    help="score/re-score head importance on the first N search examples (default 500; 0 = all)")
    ap.add_argument("--search-threads", type=int, default=1,
                    help="torch threads of the search's evaluator (default 1; 0 = edgeprune's default, the "
                         "physical cores)")
    ap.add_argument("--int8-aware", action=argparse.BooleanOptionalAction, default=True,
                    help="add the dense INT8 model's search-split flips to every candidate (as `edgeprune build`)")
    ap.add_argument("--rescore-every", type=int, default=4,
                    help="greedy re-scores importance every N removals (the build's default 4; Michel: 1)")
    ap.add_argument("--random", action="store_true", help="also run the random baseline")
    ap.add_argument("--out", default=str(HERE), help="writes OUT/results/<date>.json|.png and OUT/RESULTS.md")
    ap.add_argument("--work", default=None, help="keep intermediate files here (default: a temporary folder)")
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--max-drop", type=float, default=1.0, help="accuracy bound in points")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--correction", default="none", choices=["none", "bonferroni"],
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
    args.max_evals = args.max_evals or (8 if q else 60)
    if args.astar_seconds is None and args.search_seconds is not None:
        args.astar_seconds = args.search_seconds + 480
    if args.importance_examples is None:
        args.importance_examples = 0 if q else 500
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
    from edgeprune import device_runner as dr
    from edgeprune.measure import effective_threads, measured_on
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
                     "search_threads": args.search_threads or "physical cores",
                     "int8_aware": args.int8_aware, "rescore_every": args.rescore_every,
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
    (out / "RESULTS.md").write_text(render_markdown(res))
    log(f"wrote {json_path}, {out / 'RESULTS.md'}, {out / 'results' / (date + '.png')}")
    return res


if __name__ == "__main__":
    main()
