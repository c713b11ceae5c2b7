"""Measurement helpers of ``python -m benchmarks.run_all`` that the package does not have (and should not have).

Everything that *is* in the package (search, export, quantization, certification, ORT latency, memory, LUT) is
imported from it, not re-implemented: this module only adds what a benchmark needs on top.

* :func:`encoder_flops` - FLOPs of one inference counted from the architecture (per kept head).
* :func:`gemm_throughput` - this machine's FP32 and dynamic-INT8 GEMM throughput with onnxruntime (the roofline).
* :func:`torch_vs_ort` - PyTorch eager latency, paired round by round with an ORT session.
* :func:`ort_breakdown` - ORT's own profiler, node times grouped into attention / FFN / embeddings+classifier /
  other.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

GROUPS = ("attention", "ffn", "embeddings+classifier", "other")

# Operator types whose whole cost is one group, whatever the node is called (fused nodes lose the module path).
_ATTENTION_OPS = {"Attention", "QAttention", "MultiHeadAttention", "Softmax", "FusedMatMul"}
_FFN_OPS = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Erf"}
_EMBED_OPS = {"EmbedLayerNormalization", "QEmbedLayerNormalization"}
# LayerNorm, residual adds, activation (de)quantization, casts and shape/mask arithmetic: the glue between blocks.
_OTHER_OPS = {"LayerNormalization", "SkipLayerNormalization", "DynamicQuantizeLinear", "DequantizeLinear",
              "QuantizeLinear", "Cast", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Range", "Slice",
              "Expand", "Where", "Equal", "And", "GreaterOrEqual", "Flatten", "ConstantOfShape"}


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------------
def encoder_flops(kept_heads: Sequence[int], *, head_size: int, hidden: int, intermediate: int, seq_len: int,
                  num_labels: int = 2, batch: int = 1,
                  ffn_widths: Optional[Sequence[int]] = None) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of one forward pass of a BERT-family classifier with ``kept_heads`` per layer.

    Per layer with ``k`` kept heads of width ``d`` (``A = k * d``), hidden ``D``, FFN width ``I``, sequence ``S``:
    Q/K/V projections ``2*S*D*3A``, attention scores ``2*S*S*A``, attention-weighted values ``2*S*S*A``, output
    projection ``2*S*A*D``, FFN ``2*S*D*I * 2``. Pooler ``2*D*D`` and classifier ``2*D*C`` once. Embedding lookups,
    LayerNorm, softmax, GELU and biases are elementwise (O(S*D)) and left out: they are memory traffic, not GEMM.

    Args:
        ffn_widths: kept FFN neurons per layer (a plan with an FFN part); ``None`` = every layer at ``intermediate``.

    Returns:
        ``{"total", "attention_proj", "attention_matmul", "ffn", "head"}`` in FLOPs (times ``batch``).
    """
    s, dm = float(seq_len), float(hidden)
    widths = [intermediate] * len(kept_heads) if ffn_widths is None else list(ffn_widths)
    if len(widths) != len(kept_heads):
        raise ValueError(f"ffn_widths covers {len(widths)} layers, kept_heads {len(kept_heads)}")
    proj = mat = ffn = 0.0
    for k, inter in zip(kept_heads, widths):
        a = float(k) * head_size
        proj += 2 * s * dm * 3 * a + 2 * s * a * dm
        mat += 2 * s * s * a * 2
        ffn += 2 * s * dm * float(inter) * 2
    head = 2 * dm * dm + 2 * dm * num_labels
    out = {"attention_proj": proj, "attention_matmul": mat, "ffn": ffn, "head": head}
    out = {k: v * batch for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------------------------------------
# GEMM throughput (roofline ceiling)
# ---------------------------------------------------------------------------------------------------------------------
def _matmul_model(n: int, path: Path, seed: int = 0) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), "B")
    node = helper.make_node("MatMul", ["A", "B"], ["Y"], name="gemm")
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def gemm_ceiling(sizes: Sequence[int] = (512, 1024, 2048), *, threads: int = 1, rounds: int = 7, reps: int = 3,
                 seed: int = 0, work: Optional[Path] = None) -> dict[str, Any]:
    """The roofline ceiling: :func:`gemm_throughput` at several sizes; per precision the best size's best round.

    A ceiling is what the library *can* reach on this machine, so the fastest round (least disturbed by other jobs)
    of the best size is used; the medians are kept too.

    Returns:
        ``{"fp32": {"gflops", "n", "median_gflops"}, "int8": {...}, "by_size": [gemm_throughput results]}``.
    """
    runs = [gemm_throughput(n, threads=threads, rounds=rounds, reps=reps, seed=seed, work=work) for n in sizes]
    out: dict[str, Any] = {"threads": threads, "sizes": list(sizes), "by_size": runs,
                           "method": "per precision: max over sizes of the fastest round's throughput"}
    for prec in ("fp32", "int8"):
        best = max(runs, key=lambda r: r[prec]["best_gflops"])
        out[prec] = {"gflops": best[prec]["best_gflops"], "n": best["n"],
                     "median_gflops": best[prec]["gflops"], "p50_ms": best[prec]["p50_ms"]}
    out["int8_speedup"] = out["int8"]["gflops"] / out["fp32"]["gflops"]
    out["int8_graph_ops"] = runs[-1]["int8_graph_ops"]
    return out


def gemm_throughput(n: int = 1024, *, threads: int = 1, rounds: int = 7, reps: int = 3, seed: int = 0,
                    work: Optional[Path] = None) -> dict[str, Any]:
    """FP32 vs dynamic-INT8 GEMM throughput of onnxruntime on this machine (one ``n x n x n`` MatMul).

    The FP32 graph is a single MatMul with a constant weight; the INT8 graph is ORT's own ``quantize_dynamic`` of it
    (S8 weights, which ORT runs as DynamicQuantizeMatMul: activation quantization included, as in the models). Both
    are timed alternately (best of ``reps`` per round, median over rounds), with the same threads as the models.

    Returns:
        ``{"n", "threads", "fp32": {...}, "int8": {...}}`` each with ``p50_ms``, ``gflops`` (at p50), ``best_gflops``
        (at the fastest round) and the round values.
    """
    import numpy as np
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgeprune.latency import device_runner as dr

    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgeprune-gemm-")
        work = Path(tmp.name)
    try:
        fp32 = _matmul_model(n, Path(work) / f"gemm{n}_fp32.onnx", seed)
        int8 = Path(work) / f"gemm{n}_int8.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        sessions = [dr.make_session(p, threads, allow_spinning=False) for p in (fp32, int8)]
        a = np.random.default_rng(seed + 1).standard_normal((n, n)).astype(np.float32)
        per = dr.alternate(sessions, [{"A": a}, {"A": a}], rounds=rounds, reps=reps, warmup=2, seed=seed)
        ops = [n.op_type for n in __import__("onnx").load(str(int8)).graph.node]
    finally:
        if tmp is not None:
            tmp.cleanup()
    flops = 2.0 * n ** 3
    out: dict[str, Any] = {"n": n, "threads": threads, "flops": flops, "int8_graph_ops": ops,
                           "method": f"alternating rounds={rounds}, best of reps={reps} per round, median over rounds"}
    for name, r in zip(("fp32", "int8"), per):
        p50 = statistics.median(r)
        out[name] = {"p50_ms": p50, "gflops": flops / (p50 * 1e-3) / 1e9,
                     "best_gflops": flops / (min(r) * 1e-3) / 1e9, "rounds_ms": [round(x, 4) for x in r]}
    out["int8_speedup"] = out["fp32"]["p50_ms"] / out["int8"]["p50_ms"]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch latency, paired with an ORT session
# ---------------------------------------------------------------------------------------------------------------------
def torch_vs_ort(model: Any, onnx_path: Path, *, threads: int, batch: int, seq_len: int, rounds: int = 9,
                 reps: int = 3, seed: int = 0) -> dict[str, Any]:
    """Eager PyTorch FP32 latency of ``model`` against an ORT session of ``onnx_path``, round by round.

    ``measure_alternating`` only knows ORT sessions; PyTorch runs here in the same shuffled-round schedule as the
    reference ORT model, with the same inputs (``device_runner.synth_inputs``), threads and value per round (best of
    ``reps``), so the ratio is paired in time like the ORT rows.

    Returns:
        ``{"torch_ms", "ort_ms"}`` round values, their medians and ``ratio_torch_over_ort`` (median of per-round
        ratios).
    """
    import torch

    from edgeprune.latency import device_runner as dr
    from edgeprune.latency.measure import onnx_vocab_size

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    sess = dr.make_session(onnx_path, threads, allow_spinning=False)
    feeds = dr.synth_inputs(sess, batch, seq_len, vocab_size=onnx_vocab_size(onnx_path), seed=seed)
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    tin = {k: torch.from_numpy(v) for k, v in feeds.items() if k in accepted}
    model.eval()

    def run_torch() -> None:
        with torch.inference_mode():
            model(**tin)

    def run_ort() -> None:
        sess.run(None, feeds)

    fns = [run_torch, run_ort]
    for f in fns:
        for _ in range(2):
            f()
    per: list[list[float]] = [[], []]
    rng = random.Random(seed)
    order = [0, 1]
    for _ in range(rounds):
        rng.shuffle(order)
        for j in order:
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter_ns()
                fns[j]()
                best = min(best, (time.perf_counter_ns() - t0) / 1e6)
            per[j].append(best)
    torch.set_num_threads(before)
    ratio = statistics.median(a / b for a, b in zip(*per))
    return {"torch_ms": per[0], "ort_ms": per[1], "torch_p50_ms": statistics.median(per[0]),
            "ort_p50_ms": statistics.median(per[1]), "ratio_torch_over_ort": ratio, "threads": threads}


# ---------------------------------------------------------------------------------------------------------------------
# ORT profile breakdown
# ---------------------------------------------------------------------------------------------------------------------
def classify_node(name: str, op: str) -> str:
    """Group of one executed ORT node: ``attention``, ``ffn``, ``embeddings+classifier`` or ``other``.

    Operator types decide first (fused nodes such as ``Attention_0_quant`` lose the module path); then the module
    path kept in TorchScript node names (``/bert/encoder/layer.0/intermediate/dense/MatMul_quant``).
    """
    if op in _ATTENTION_OPS:
        return "attention"
    if op in _FFN_OPS:
        return "ffn"
    if op in _EMBED_OPS:
        return "embeddings+classifier"
    low = name.lower()
    if op in _OTHER_OPS and not ("/embeddings/" in low or "/pooler/" in low or "/classifier" in low):
        return "other"
    if "/attention/self/" in low or "/attention/output/dense" in low:
        return "attention"
    if "/intermediate/" in low or ("/output/dense" in low and "/attention/" not in low):
        return "ffn"
    if "embeddings" in low or "/pooler/" in low or "classifier" in low or "pre_classifier" in low:
        return "embeddings+classifier"
    return "other"


def ort_breakdown(onnx_path: Path, *, threads: int, batch: int, seq_len: int, runs: int = 20, warmup: int = 3,
                  seed: int = 0) -> dict[str, Any]:
    """Where an ORT session spends its time: profiler node times grouped by :func:`classify_node`.

    Uses ``SessionOptions.enable_profiling`` on a session set up like the measurements (threads, no spinning,
    ORT_ENABLE_ALL). Only the timed runs' ``*_kernel_time`` events count (warm-up runs are cut by their timestamps).

    Returns:
        ``{"shares": {group: fraction}, "ms_per_run": {group: ms}, "kernel_ms_per_run", "wall_ms_per_run",
        "top_nodes": [...], "op_types": {op: ms}}``.
    """
    import onnxruntime as ort

    from edgeprune.latency import device_runner as dr
    from edgeprune.latency.measure import onnx_vocab_size

    with tempfile.TemporaryDirectory(prefix="edgeprune-prof-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        feeds = dr.synth_inputs(sess, batch, seq_len, vocab_size=onnx_vocab_size(onnx_path), seed=seed)
        for _ in range(warmup):
            sess.run(None, feeds)
        t_start_ns = sess.get_profiling_start_time_ns()
        t_warm = (time.perf_counter_ns(), time.time_ns())
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            sess.run(None, feeds)
            walls.append((time.perf_counter_ns() - t0) / 1e6)
        events = json.loads(Path(sess.end_profiling()).read_text())
    # Event "ts" is microseconds since the profiling start; the timed runs began at t_warm.
    cut_us = (t_warm[1] - t_start_ns) / 1e3
    runs_ev = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs_ev) >= runs:
        cut_us = sorted(e["ts"] for e in runs_ev)[-runs]  # robust to clock differences: last `runs` runs
    # Per node, the median of its per-run times: one preempted kernel on a shared machine (a 4 ms stall in a 0.03 ms
    # node was seen) must not be read as that block's cost.
    per_node_runs: dict[tuple[str, str], list[float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < cut_us:
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "")
        per_node_runs.setdefault((node, op), []).append(e["dur"] / 1e3)
    ms: dict[str, float] = {g: 0.0 for g in GROUPS}
    per_node: dict[str, float] = {}
    per_op: dict[str, float] = {}
    for (node, op), durs in per_node_runs.items():
        # A node runs once per run; pad missing runs with 0 so nodes that ran only sometimes are not inflated.
        durs = durs + [0.0] * max(0, runs - len(durs))
        med = statistics.median(durs) * len(durs) / runs if len(durs) > runs else statistics.median(durs)
        ms[classify_node(node, op)] += med
        per_node[f"{op} {node}"] = med
        per_op[op] = per_op.get(op, 0.0) + med
    total = sum(ms.values())
    return {
        "shares": {g: (v / total if total else 0.0) for g, v in ms.items()},
        "ms_per_run": ms,
        "kernel_ms_per_run": total,
        "wall_ms_per_run": statistics.median(walls),
        "runs": runs,
        "method": "ORT profiler; per node the median over the timed runs; shares of the summed kernel times",
        "top_nodes": [{"node": k, "ms_per_run": v} for k, v in sorted(per_node.items(), key=lambda kv: -kv[1])[:8]],
        "op_types": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
    }


__all__ = ["GROUPS", "classify_node", "encoder_flops", "gemm_ceiling", "gemm_throughput", "ort_breakdown", "torch_vs_ort"]


def write_results(name: str, record: dict, markdown: str, results: Optional[Path] = None) -> Path:
    """Write ``<results>/<name>-<record['date']>.json`` and ``.md``; returns the stem.

    Args:
        results: the folder (default ``benchmarks/results``; tests pass their own, never the repository's).
    """
    results = Path(results) if results is not None else Path(__file__).resolve().parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"{name}-{record['date']}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown + "\n")
    return stem
