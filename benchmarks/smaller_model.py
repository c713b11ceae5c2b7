"""Benchmark (issue #20): the hand-made smaller model a user could build in twenty lines, against edgeprune.

"Would I do better by just keeping the first k layers and distilling?" For each k, the default task's fine-tuned
model is cut to its first k encoder layers (``Adapter.keep_layers_``, the DistilBERT-style initialisation) and
distilled from the unpruned model with exactly the build's distillation (``recovery.distill.distill_`` with the
build's defaults: KL at T = 2 + 0.5 CE, AdamW peak 1e-4 with linear warm-up and decay, batch 32, 64 tokens, 2
epochs over the fine-tune + search splits, never the certify split). Each student is compiled with the product's
chain (``onnx.compile.compile_plan``, the profile's INT8 preset) and scored like a build's plan: the INT8 file's
accuracy on the certify split, paired against the unpruned FP32 model, one look at 95% (``certify.core.certify``).

Peer row (issue #20): optimum's ``ORTQuantizer`` with ``AutoQuantizationConfig.arm64(is_static=False,
per_channel=True)`` on the stock FP32 export of the dense model (``onnx.export.export_onnx``, no edgeprune graph
preparation), run in the transformers 4.57 environment as a subprocess (``benchmarks.optimum_peer``: optimum does
not install next to transformers 5.x); scored and timed like every other row here, in this environment's
onnxruntime. The versions of both environments are recorded. ``--no-optimum`` leaves the row out; an unavailable
or failing optimum is reported, not fatal.

Latency: dense ORT INT8, the optimum file, the shipped file of each given edgeprune build folder (``--build OUT``,
its ``bundle/model.onnx``) and every student, timed side by side (``latency.measure.measure_alternating``, the
profile's threads, batch and sequence length; p50 ratio to dense INT8) and at the certify texts' real lengths
(``measure_real_lengths``, batch 1, no padding). Measured on this host, not on the profile's device.

Usage::

    python -m benchmarks.smaller_model --build /path/to/build [--build ...] [--layers 3 4] [--epochs 2] \
        [--no-optimum] [--optimum-python /path/to/.venv-tf457/bin/python]

Writes ``benchmarks/results/smaller_model-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.optimum_peer import quantize_with_optimum, versions_text
from benchmarks.recovery_calibration import bench_setup, log

OPTIMUM_ROW = "optimum arm64 preset (dense)"


def _build_row(out: Path) -> dict[str, Any]:
    """What an edgeprune build folder shipped (report.json) and its INT8 file."""
    report = json.loads((out / "report.json").read_text())
    acc, heads, ffn = report["accuracy"], report.get("heads") or {}, report.get("ffn") or {}
    return {"name": f"edgeprune build {out.name}", "kind": "edgeprune", "path": str(out / "bundle" / "model.onnx"),
            "accuracy": acc["final"], "bound_pts": acc["drop_upper_bound_pts"], "certified": acc["certified"],
            "bound_note": "the build's fixed-sequence certificate",
            "heads_removed": heads.get("removed"), "ffn_blocks_removed": ffn.get("blocks_removed"),
            "recovery": (report.get("recovery") or {}).get("recovery")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edgeprune.adapters import get_adapter
    from edgeprune.certify.core import certify
    from edgeprune.latency.measure import measure_alternating, measure_real_lengths
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.onnx.export import export_onnx
    from edgeprune.recovery.distill import DistillConfig, distill_, task_distill_data, teacher_logits
    from edgeprune.task.modeling import clone_model
    from edgeprune.task.predict import onnx_predictions, torch_predictions

    t_all = time.monotonic()
    task, prof, threads, model, tok = bench_setup(args, torch_cores="physical")
    cert, labels, seq = task.certify, list(task.certify.labels), prof.seq_len
    work = Path(tempfile.mkdtemp(prefix="smaller-model-"))
    base = torch_predictions(model, tok, cert, max_length=seq, batch_size=64)

    def score(path: Path) -> dict[str, Any]:
        c = certify(base, onnx_predictions(path, tok, cert, max_length=seq, threads=threads), labels,
                    max_drop=args.max_drop / 100, confidence=0.95, looks=1)
        return {"accuracy": c.accuracy, "bound_pts": 100 * c.drop_upper_bound, "n_worse": c.n_worse,
                "n_better": c.n_better, "certified": c.drop_upper_bound <= args.max_drop / 100 + 1e-12,
                "bound_note": "one look, 95%"}

    adapter = get_adapter(model)
    dense = compile_plan(model, adapter.full_plan(model), prof.quant, work / "dense").onnx
    rows = [{"name": "dense ORT INT8", "kind": "dense", "path": str(dense), **score(dense)}]
    optimum: dict[str, Any] = {"status": "skipped (--no-optimum)"}
    if args.optimum:
        # The stock export (as run_all's peer rows): optimum's preset on what a user exports, config.json beside it.
        fp32 = export_onnx(clone_model(model), work / "dense-fp32" / "model.onnx")
        optimum = quantize_with_optimum(fp32, model, work / "optimum-arm64", python=args.optimum_python)
        if optimum["status"] == "ok":
            rows.append({"name": OPTIMUM_ROW, "kind": "optimum", "path": optimum["path"],
                         "versions": optimum["versions"], **score(Path(optimum["path"]))})
            log(f"{OPTIMUM_ROW} ({versions_text(optimum)}): INT8 {100 * rows[-1]['accuracy']:.2f}% "
                f"bound {rows[-1]['bound_pts']:.2f}")
        else:
            log(f"{OPTIMUM_ROW}: {optimum['status']}: {optimum.get('detail', '')[:300]}")
    rows += [_build_row(Path(b)) for b in args.build]

    data = task_distill_data(task)
    cfg = DistillConfig(epochs=args.epochs, seed=args.seed)
    t = time.monotonic()
    logits = teacher_logits(model, tok, data, max_length=cfg.max_length)
    log(f"teacher logits on {len(data)} distillation texts in {time.monotonic() - t:.0f} s")
    layers = len(adapter.layers(model))
    for k in args.layers:
        if not 1 <= k < layers:
            raise SystemExit(f"--layers {k}: the model has {layers} layers")
        student = adapter.keep_layers_(clone_model(model), list(range(k)))
        res = distill_(student, None, tok, data, cfg, teacher_logits_=logits,
                       progress=lambda i, k=k: (i["step"] % 100 == 0) and log(f"first {k} layers: step "
                                                                            f"{i['step']}/{i['total_steps']}"))
        path = compile_plan(student, None, prof.quant, work / f"first-{k}").onnx
        row = {"name": f"first {k} of {layers} layers, distilled", "kind": "smaller", "layers": k,
               "path": str(path), "distill_steps": res.steps, "distill_s": round(res.seconds, 1), **score(path)}
        log(f"{row['name']}: INT8 {100 * row['accuracy']:.2f}% bound {row['bound_pts']:.2f} "
            f"({row['n_worse']} worse / {row['n_better']} better, {res.seconds:.0f} s)")
        rows.append(row)
    log("latency: every INT8 file side by side, alternating")
    alt = measure_alternating([r["path"] for r in rows], prof, rounds=args.rounds, reps=args.reps)
    real = measure_real_lengths([r["path"] for r in rows], prof, tok, list(cert.texts), max_texts=args.real_texts)
    for r, ms, ratio, rl, rr in zip(rows, alt.median_ms, alt.ratio_to_first, real.latency_ms,
                                    real.ratio_p50_to_first):
        r.update({"p50_ms": ms, "speedup_vs_dense_int8": 1.0 / ratio, "real_p50_ms": rl["p50"],
                  "real_speedup_vs_dense_int8": 1.0 / rr})
    import onnxruntime
    import transformers

    return {"benchmark": "smaller_model", "date": dt.date.today().isoformat(), "host": platform.node(),
            "machine": platform.machine(), "measured_on": "this host (not the profile's device)",
            "profile": prof.name, "ort_threads": threads, "seq_len": alt.seq_len, "batch": alt.batch,
            "real_length_tokens": real.tokens, "certify_n": len(labels), "max_drop_pts": args.max_drop,
            "base_fp32_accuracy": sum(p == y for p, y in zip(base, labels)) / len(labels),
            "distill_n": len(data), "distill_config": cfg.to_dict(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__, "optimum": optimum,
            "rows": rows,
            "command": "python -m benchmarks.smaller_model " + " ".join(
                [f"--build {b}" for b in args.build] + ["--layers"] + [str(k) for k in args.layers]
                + [f"--epochs {args.epochs}"] + ([] if args.optimum else ["--no-optimum"])),
            "total_s": round(time.monotonic() - t_all, 1)}


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# The hand-made smaller model vs edgeprune ({r['date']})", "",
             f"Default task, certify split n = {r['certify_n']}, unpruned FP32 {100 * r['base_fp32_accuracy']:.2f}%. "
             f"INT8 files timed side by side on {r['measured_on']} at the {r['profile']} settings ({r['ort_threads']} "
             f"ORT threads, batch {r['batch']}, {r['seq_len']} tokens) and at the certify texts' real lengths "
             f"(median {r['real_length_tokens'].get('p50')} tokens). Students: the first k layers, distilled with the "
             f"build's distillation ({r['distill_config']['epochs']} epochs over {r['distill_n']} texts). Command: "
             f"`{r['command']}`.", "",
             f"| model | INT8 accuracy | drop bound (pts) | certified at {r['max_drop_pts']:g} | p50 ms | vs dense INT8 "
             "| real-length vs dense INT8 |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['name']} | {100 * row['accuracy']:.2f}% | {row['bound_pts']:.2f} ({row['bound_note']}) "
                     f"| {'yes' if row['certified'] else 'no'} | {row['p50_ms']:.2f} | "
                     f"{row['speedup_vs_dense_int8']:.2f}x | {row['real_speedup_vs_dense_int8']:.2f}x |")
    opt = r.get("optimum") or {"status": "not run"}
    lines.append("")
    if opt["status"] == "ok":
        lines.append(f"{OPTIMUM_ROW}: optimum's `ORTQuantizer` with `AutoQuantizationConfig.arm64(is_static=False, "
                     f"per_channel=True)` on the stock FP32 export, quantized in `{opt['python']}` "
                     f"({versions_text(opt)}); scored and timed here with onnxruntime {r['onnxruntime']} "
                     f"(transformers {r['transformers']}, torch {r['torch']}).")
    else:
        lines.append(f"{OPTIMUM_ROW}: {opt['status']}" + (f" ({opt['detail'][:300]})" if opt.get("detail") else "")
                     + f". Other rows: onnxruntime {r['onnxruntime']}, transformers {r['transformers']}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="append", default=[], help="an edgeprune build folder to compare with")
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-drop", type=float, default=1.0, help="points")
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--real-texts", type=int, default=300)
    ap.add_argument("--wait", type=float, default=30.0, help="minutes to wait for the default task")
    ap.add_argument("--no-optimum", dest="optimum", action="store_false",
                    help="leave out the optimum arm64 preset row (run in the transformers 4.57 environment)")
    ap.add_argument("--optimum-python", default=None,
                    help="the interpreter with optimum (default: $EDGEPRUNE_OPTIMUM_PYTHON, then .venv-tf457)")
    args = ap.parse_args(argv)
    from benchmarks.bench_tools import write_results

    record = run(args)
    md = markdown(record)
    write_results("smaller_model", record, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
