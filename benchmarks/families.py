"""Latency of a BERT-base-size random model per family: dense FP32, dense INT8, 30% of heads and FFN blocks removed.

Usage::

    nice -n 10 python -m benchmarks.families [--families deberta-v2 modernbert mpnet] [--rounds 9] [--reps 3]

Per family a random sequence classifier of 12 layers x 12 heads, hidden 768, with the family's own base FFN width
(3072; ModernBERT-base: 1152, gated) and base position settings is exported like the latency table's sub-models
(profile ``raspberrypi4``: plain graph, dynamic INT8 S8 per-channel), then the three files are timed *alternating*
in one process at the profile's batch 1 / seq 128 with its threads clipped to this host's cores
(:func:`edgeprune.measure.measure_alternating`: medians of the rounds, each round the best of ``reps`` runs).
The 30% plan removes ``round(0.3 * 144)`` heads and 30% of the 128-neuron FFN blocks, spread evenly over the layers
(which ones does not matter for latency). Numbers are from this host, not from a Raspberry Pi. Writes
``benchmarks/results/families-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

BASE = {  # the family's base-size structure (everything else as in edgeprune.testing.TINY_CONFIGS)
    "bert": {"intermediate_size": 3072},
    "deberta-v2": {"intermediate_size": 3072, "position_buckets": 256, "max_position_embeddings": 512},
    # layer_types as well: 5.x derives them from global_attn_every_n_layers only when the config is created
    "modernbert": {"intermediate_size": 1152, "local_attention": 128, "global_attn_every_n_layers": 3,
                   "layer_types": ["sliding_attention" if i % 3 else "full_attention" for i in range(12)]},
    "mpnet": {"intermediate_size": 3072},
}
BLOCK = 128


def _plan(heads: int, layers: int, blocks: int, share: float, seed: int = 0):
    from edgeprune.plan import HeadPlan

    rng = random.Random(seed)
    n_h, n_b = round(share * heads * layers), round(share * blocks * layers)
    # even spread: layer i loses n // layers or one more, the indices themselves at random
    drop_h = [n_h // layers + (i < n_h % layers) for i in range(layers)]
    drop_b = [n_b // layers + (i < n_b % layers) for i in range(layers)]
    kept = [sorted(rng.sample(range(heads), heads - k)) for k in drop_h]
    kept_b = [sorted(rng.sample(range(blocks), blocks - k)) for k in drop_b]
    return HeadPlan((heads,) * layers, tuple(map(tuple, kept))).with_ffn(BLOCK, (blocks,) * layers, kept_b)


def run_family(family: str, work: Path, rounds: int, reps: int) -> dict:
    import torch

    from edgeprune.adapters import get_adapter
    from edgeprune.latency.table import compile_submodel
    from edgeprune.latency.measure import measure_alternating
    from edgeprune.profiles import load_profile
    from edgeprune.testing import tiny_model

    prof = load_profile("raspberrypi4")
    int8_preset = prof.quant.for_precision("int8")
    torch.manual_seed(0)
    model = tiny_model(family, num_layers=12, num_heads=12, hidden=768, overrides=BASE[family])
    adapter = get_adapter(model)
    width = adapter.ffn_sizes(model)[0]
    plan = _plan(12, 12, width // BLOCK, 0.3)
    t0 = time.perf_counter()
    with torch.no_grad():
        fp32 = compile_submodel(model, None, prof.quant.for_precision("fp32"), work / f"{family}-fp32.onnx", work)
        int8 = compile_submodel(model, None, int8_preset, work / f"{family}-int8.onnx", work)
        p30 = compile_submodel(model, plan, int8_preset, work / f"{family}-pruned30-int8.onnx", work)
    export_s = time.perf_counter() - t0
    res = measure_alternating([fp32, int8, p30], prof, rounds=rounds, reps=reps)
    return {
        "family": family, "layers": 12, "heads": 12, "hidden": 768, "ffn_width": width,
        "plan": {"heads_removed": plan.num_removed, "heads_total": 144, "ffn_blocks_removed": plan.ffn_num_removed,
                 "ffn_blocks_total": sum(plan.ffn_num_blocks), "block_size": BLOCK},
        "p50_ms": dict(zip(("dense_fp32", "dense_int8", "pruned30_int8"), res.median_ms)),
        "spread_p10_p90_ms": dict(zip(("dense_fp32", "dense_int8", "pruned30_int8"), res.spread_ms)),
        "ratio_to_fp32": dict(zip(("dense_fp32", "dense_int8", "pruned30_int8"), res.ratio_to_first)),
        "threads": res.threads, "threads_note": res.threads_note, "batch": res.batch, "seq_len": res.seq_len,
        "measured_on": res.measured_on, "export_s": round(export_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=["deberta-v2", "modernbert", "mpnet"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import onnxruntime
    import torch
    import transformers

    torch.set_num_threads(1)
    rows = []
    for family in args.families:
        with tempfile.TemporaryDirectory(prefix="edgeprune-families-") as tmp:
            row = run_family(family, Path(tmp), args.rounds, args.reps)
        print(json.dumps(row["p50_ms"]), family, flush=True)
        rows.append(row)
    out = Path(args.out or Path(__file__).parent / "results" / f"families-{time.strftime('%Y-%m-%d')}.json")
    out.write_text(json.dumps({
        "what": __doc__.split("\n")[0], "rounds": args.rounds, "reps": args.reps,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "note": "measured on a shared 2-core host (other jobs running), alternating the three files in one process",
        "rows": rows,
    }, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
