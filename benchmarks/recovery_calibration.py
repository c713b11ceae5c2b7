"""Benchmark: recovery calibration (issue #16) - what each recovery method buys a pruned plan, as shipped (INT8).

Task: the default task (MiniLM-L6 sentiment classifier, ``edgeprune.task.default``); this script never starts a
fine-tune itself (it waits for the cached task).

Plans: one-shot by gradient importance (``ffn_importance.joint_importance`` on the search split, per-layer
normalised, heads and 128-neuron FFN blocks each ranked by their own score), removing the same share of the 72 heads
and of the 72 FFN blocks: 25%, 50%, 65% by default.

Methods per plan (each exported with the product's own chain, ``onnx.compile.compile_plan`` with the profile's INT8
preset, and scored with ``bundle.onnx_predictions`` on the certify split):

* ``none``: the plan as is;
* ``scale``: today's scale-only refit (``recovery.fit_recovery`` + ``apply_recovery_``, Kwon et al.);
* ``ls``: the full least-squares weight refit (``refit.refit_plan``);
* ``ls_int8``: the same, fitted against the simulated INT8 forward pass (``RefitConfig(int8_aware=True)``);
* ``distill``: the ``ls`` model, physically pruned, then distilled (``distill.distill_``: KL at T = 2 + 0.5 CE,
  AdamW 1e-4, batch 32, seq 64) on the fine-tune + search splits (``distill.task_distill_data``; never certify).

Plus the dense rows: dense INT8, and the *control*: the unpruned model distilled the same way (extra data and
epochs alone), without which "distillation beats the original" cannot be read.

Every accuracy is the INT8 file's on the certify split, paired against the unpruned FP32 PyTorch model
(``bundle.certify``, one look, 95%: the bound is a single-look bound per cell, not a build's corrected one); the
FP32 PyTorch accuracy of each recovered model is reported too (the INT8-vs-FP32 gap). Latency: the INT8 files of
the plans timed side by side with dense INT8 (``measure.measure_alternating``, the profile's threads, batch and
sequence length), p50 ratio. Fit texts for the refits: the search split (no labels used).

Usage::

    nice -n 10 python -m benchmarks.recovery_calibration [--fractions 0.25 0.5 0.65] [--distill-epochs 2]

Writes ``benchmarks/results/recovery_calibration-<date>.json`` and ``.md``.

Several seeds at one searched plan (the seed alone moves a distilled plan's bound by ~0.45 points, so one run per
setting decides nothing)::

    python -m benchmarks.recovery_calibration --distill-only --plan /path/to/build --seeds 0 1 2 \
        --fit-examples 1024 [--int8-aware --ce-weight 0] --out-name distill-46-38-seeds

``--plan`` takes a build folder or its ``plan.json`` (repeatable); the plan is refitted once, then every seed
distils its own copy. Writes ``recovery_calibration_distill-<date>`` (or ``--out-name``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

BLOCK = 128


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for_task(wait_minutes: float):
    """The default task, polling for a fine-tune in progress instead of starting one."""
    from edgeprune.task.default import TaskSpec, cache_root, default_task

    final = cache_root() / TaskSpec().cache_name()
    deadline = time.monotonic() + 60 * wait_minutes
    while not (final / "manifest.json").is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"the default task is not ready in {final} after {wait_minutes} min")
        log(f"waiting for the default task in {final} ...")
        time.sleep(30)
    return default_task(progress=False)


class BenchSetup(NamedTuple):
    """What every default-task benchmark starts from (:func:`bench_setup`); unpacks as a tuple."""

    task: Any  #: the cached default task (``edgeprune.task.default.default_task``), or the one passed in
    prof: Any  #: the loaded device profile
    threads: int  #: ORT intra-op threads (the profile's, clipped to this host: ``effective_threads``)
    model: Any  #: the task's fine-tuned model, in eval mode
    tok: Any  #: its tokenizer


def bench_setup(args: Any, torch_cores: str = "free", task: Any = None) -> BenchSetup:
    """Wait for the default task, load the profile, its ORT threads, set torch's threads and load the model.

    Args:
        args: the benchmark's parsed arguments (reads ``args.wait``, minutes, and ``args.profile``).
        torch_cores: torch's intra-op threads: ``"free"`` (``search.evaluate.free_cores``, the physical cores no
            other process is busy on) or ``"physical"`` (``physical_cores``).
        task: another task to load the model of (anything with a ``model_dir``, e.g. the Banking77 task); None =
            wait for the default task.

    Returns:
        A :class:`BenchSetup` ``(task, prof, threads, model, tok)``.
    """
    import torch

    from edgeprune.latency.measure import effective_threads
    from edgeprune.profiles import load_profile
    from edgeprune.search.evaluate import free_cores, physical_cores
    from edgeprune.task.modeling import load_model

    cores = {"free": free_cores, "physical": physical_cores}[torch_cores]
    task = wait_for_task(args.wait) if task is None else task
    prof = load_profile(args.profile)
    threads, _ = effective_threads(prof)
    torch.set_num_threads(cores())
    model, tok = load_model(task.model_dir)
    model.eval()
    return BenchSetup(task, prof, threads, model, tok)


def oneshot_plans(model, tok, search, fractions, max_length: int, examples: int) -> dict[str, Any]:
    """Plans removing ``fraction`` of the heads and of the FFN blocks, lowest gradient importance first."""
    from edgeprune.adapters import get_adapter
    from edgeprune.search.evaluate import MaskedEvaluator
    from edgeprune.search.ffn_importance import joint_importance
    from edgeprune.plan import HeadPlan

    adapter = get_adapter(model)
    ev = MaskedEvaluator(model, tok, search, max_length=max_length, cache_mb=0)
    hs, bs = joint_importance(ev, BLOCK, normalize=True, max_examples=examples)
    num_heads = adapter.layout(model).heads_per_layer
    num_blocks = adapter.ffn_num_blocks(model, BLOCK)

    def lowest(scores, f):
        return sorted(scores, key=lambda u: scores[u])[:round(f * len(scores))]

    plans = {}
    for f in fractions:
        plan = HeadPlan.from_removed(num_heads, lowest(hs, f))
        plans[f"{round(100 * f)}%"] = plan.with_ffn_removed(BLOCK, num_blocks, lowest(bs, f))
    return plans


def run(args) -> dict[str, Any]:
    import torch

    from edgeprune.adapters import get_adapter
    from edgeprune.certify.core import certify
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.task.predict import onnx_predictions, torch_predictions
    from edgeprune.recovery.distill import DistillConfig, distill_, task_distill_data, teacher_logits
    from edgeprune.latency.measure import measure_alternating
    from edgeprune.task.modeling import clone_model, prune_and_verify_
    from edgeprune.recovery.scale import apply_recovery_, fit_recovery
    from edgeprune.recovery.refit import RefitConfig, refit_plan

    t_all = time.monotonic()
    task, prof, threads, model, tok = bench_setup(args)
    search, certify_split = task.search, task.certify
    labels = list(certify_split.labels)
    seq = args.max_length
    work = Path(tempfile.mkdtemp(prefix="recovery-cal-"))

    t0 = time.monotonic()
    plans = oneshot_plans(model, tok, search, args.fractions, seq, args.importance_examples)
    log(f"plans ranked in {time.monotonic() - t0:.0f} s: {[(k, p.num_removed, p.ffn_num_removed) for k, p in plans.items()]}")
    base_preds = torch_predictions(model, tok, certify_split, max_length=seq, batch_size=64)

    def score(name: str, files_model, plan, fp32_model=None) -> dict[str, Any]:
        t = time.monotonic()
        compiled = compile_plan(files_model, plan, prof.quant, work / name)
        final, checks = compiled.onnx, compiled.checks
        preds = onnx_predictions(final, tok, certify_split, max_length=seq, threads=threads)
        c = certify(base_preds, preds, labels, max_drop=0.01, confidence=0.95, looks=1)
        row = {"int8_accuracy": c.accuracy, "int8_bound_pts": 100 * c.drop_upper_bound, "int8_drop_pts": 100 * c.drop,
               "n_worse": c.n_worse, "n_better": c.n_better,
               "agreement_fp32_base": sum(a == b for a, b in zip(preds, base_preds)) / len(labels),
               "int8_file": str(final), "export_and_score_s": round(time.monotonic() - t, 1),
               "parity_int8_max_abs_diff": checks.get("parity_int8_max_abs_diff")}
        if fp32_model is not None:
            m = fp32_model
            if plan is not None and not get_adapter(m).current_plan(m).num_removed and not plan.is_full:
                m = clone_model(m)
                get_adapter(m).prune_heads_(m, plan)
            p32 = torch_predictions(m, tok, certify_split, max_length=seq, batch_size=64)
            c32 = certify(base_preds, p32, labels, max_drop=0.01, confidence=0.95, looks=1)
            row.update({"fp32_accuracy": c32.accuracy, "fp32_bound_pts": 100 * c32.drop_upper_bound,
                        "int8_vs_fp32_pts": 100 * (c32.accuracy - c.accuracy)})
        log(f"{name}: INT8 {100 * c.accuracy:.2f}% bound {100 * c.drop_upper_bound:.2f}"
            + (f" | FP32 {100 * row['fp32_accuracy']:.2f}%" if "fp32_accuracy" in row else ""))
        return row

    full = get_adapter(model).full_plan(model, BLOCK)
    dense = score("dense", model, full, fp32_model=model)
    distill_data = task_distill_data(task)
    dcfg = DistillConfig(epochs=args.distill_epochs, max_seconds=args.distill_seconds, seed=args.seed,
                         schedule=args.schedule, ce_weight=args.ce_weight, temperature=args.temperature,
                         hidden_weight=args.hidden_weight, int8_aware=args.int8_aware)
    t = time.monotonic()
    logits_t = teacher_logits(model, tok, distill_data, max_length=dcfg.max_length)
    teacher_s = time.monotonic() - t
    log(f"teacher logits on {len(distill_data)} distillation texts in {teacher_s:.0f} s")

    def distill(student, name):
        teacher = model if dcfg.hidden_weight > 0 else None  # the hidden-state term needs the teacher's states
        res = distill_(student, teacher, tok, distill_data, dcfg, teacher_logits_=logits_t,
                       progress=lambda i: (i["step"] % 100 == 0) and log(f"{name}: step {i['step']}/"
                                                                          f"{i['total_steps']} loss {i['loss']:.3f}"))
        return res

    rows = []
    for name, plan in plans.items():
        r: dict[str, Any] = {"plan": name, "heads_kept": sum(plan.kept_counts), "heads_total": sum(plan.num_heads),
                             "blocks_kept": sum(plan.ffn_kept_counts), "blocks_total": sum(plan.ffn_num_blocks),
                             "plan_dict": plan.to_dict(), "methods": {}}
        r["methods"]["none"] = score(f"{name}-none", model, plan, fp32_model=model)
        t = time.monotonic()
        folded = clone_model(model).eval()
        rec = fit_recovery(folded, tok, search, plan, max_examples=args.fit_examples, max_length=seq)
        apply_recovery_(folded, rec)
        fit_s = time.monotonic() - t
        r["methods"]["scale"] = {**score(f"{name}-scale", folded, plan, fp32_model=folded), "fit_s": round(fit_s, 1)}
        del folded
        lsm = None
        for key, aware in (("ls", False), ("ls_int8", True)):
            t = time.monotonic()
            refitted, info = refit_plan(model, tok, search, plan, RefitConfig(max_examples=args.fit_examples,
                                                                               max_length=seq, int8_aware=aware))
            fit_s = time.monotonic() - t
            r["methods"][key] = {**score(f"{name}-{key}", refitted, plan, fp32_model=refitted),
                                 "fit_s": round(fit_s, 1), "fitted_sublayers": info.to_dict()["fitted_sublayers"]}
            if key == "ls":
                lsm = refitted
        student = lsm
        prune_and_verify_(student, plan)
        res = distill(student, name)
        r["methods"]["distill"] = {**score(f"{name}-distill", student, plan, fp32_model=student),
                                   "fit_s": round(res.seconds, 1), "distill": res.to_dict(),
                                   "start": "ls refit"}
        rows.append(r)
        del lsm, student
    control = None
    if args.control:
        student = clone_model(model)
        res = distill(student, "dense-control")
        control = {**score("dense-distilled", student, full, fp32_model=student), "fit_s": round(res.seconds, 1),
                   "distill": res.to_dict()}
    log("latency: plan INT8 files vs dense INT8, alternating")
    paths = [dense["int8_file"]] + [r["methods"]["none"]["int8_file"] for r in rows]
    alt = measure_alternating(paths, prof, rounds=args.rounds, reps=args.reps)
    dense["p50_ms"] = alt.median_ms[0]
    for r, ms, ratio in zip(rows, alt.median_ms[1:], alt.ratio_to_first[1:]):
        r["p50_ms"], r["speedup_vs_dense_int8"] = ms, 1.0 / ratio
    base_acc = sum(p == y for p, y in zip(base_preds, labels)) / len(labels)
    return {
        "benchmark": "recovery_calibration", "date": dt.date.today().isoformat(), "host": platform.node(),
        "machine": platform.machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "profile": prof.name, "ort_threads": threads, "latency_seq_len": alt.seq_len, "latency_batch": alt.batch,
        "model_dir": str(task.model_dir), "search_n": len(search), "certify_n": len(certify_split),
        "distill_n": len(distill_data), "base_fp32_accuracy": base_acc, "max_length": seq,
        "fit_examples": args.fit_examples, "distill_config": dcfg.to_dict(), "teacher_logits_s": round(teacher_s, 1),
        "dense": dense, "control": control, "rows": rows, "latency": alt.to_dict(),
        "total_s": round(time.monotonic() - t_all, 1),
    }


METHODS = (("none", "none"), ("scale", "scale refit"), ("ls", "full LS refit"), ("ls_int8", "LS refit, INT8-aware"),
           ("distill", "LS refit + distillation"))


def markdown(r: dict[str, Any]) -> str:
    d = r["dense"]
    dc = r["distill_config"]
    lines = [
        f"# Recovery calibration on the default task ({r['date']})",
        "",
        f"MiniLM-L6 default task; certify split n = {r['certify_n']}, unpruned FP32 PyTorch {100 * r['base_fp32_accuracy']:.2f}%. "
        f"Each cell: accuracy of the **INT8 file** (`onnx.compile.compile_plan`, profile `{r['profile']}` preset) and its "
        "paired one-sided 95% single-look bound on the drop vs the unpruned FP32 model (points). Plans one-shot by "
        "gradient importance (the same share of the heads and of the FFN blocks of 128 neurons). Refits fitted on "
        f"{r['fit_examples']} search-split texts (no labels); distillation: KL T={dc['temperature']} + {dc['ce_weight']} CE, "
        f"AdamW {dc['lr']}, batch {dc['batch_size']}, seq {dc['max_length']}, {dc['epochs']} epoch(s)"
        + (f" capped at {dc['max_seconds']:.0f} s" if dc.get("max_seconds") else "")
        + f" on fine-tune + search ({r['distill_n']} texts), starting from the LS refit. Host {r['host']}, one run.",
        "",
        f"Dense INT8: {100 * d['int8_accuracy']:.2f}%, bound {d['int8_bound_pts']:.2f}; p50 {d['p50_ms']:.2f} ms "
        f"(batch {r['latency_batch']}, seq {r['latency_seq_len']}, {r['ort_threads']} ORT threads).",
    ]
    if r.get("control"):
        c = r["control"]
        lines.append(f"Control, the unpruned model distilled the same way: INT8 {100 * c['int8_accuracy']:.2f}%, bound "
                     f"{c['int8_bound_pts']:.2f} (FP32 {100 * c['fp32_accuracy']:.2f}%; {c['fit_s']:.0f} s): compare the "
                     "distillation column with this, not with the original.")
    lines += ["", "| removed | heads / blocks kept | INT8 p50 vs dense INT8 | " + " | ".join(n for _, n in METHODS) + " |",
              "|---|---|---|" + "---|" * len(METHODS)]
    for row in r["rows"]:
        cells = []
        for key, _ in METHODS:
            m = row["methods"][key]
            cells.append(f"{100 * m['int8_accuracy']:.2f}%, {m['int8_bound_pts']:.2f}")
        lines.append(f"| {row['plan']} | {row['heads_kept']}/{row['heads_total']}, "
                     f"{row['blocks_kept']}/{row['blocks_total']} | "
                     f"{row['speedup_vs_dense_int8']:.2f}x | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per method (fit or training; export + INT8 scoring excluded):", "",
              "| removed | " + " | ".join(n for k, n in METHODS if k != "none") + " |",
              "|---|" + "---|" * (len(METHODS) - 1)]
    for row in r["rows"]:
        lines.append(f"| {row['plan']} | " + " | ".join(f"{row['methods'][k]['fit_s']:.1f}" for k, _ in METHODS
                                                        if k != "none") + " |")
    lines += ["", "FP32 PyTorch vs INT8 file (accuracy %, FP32 bound; gap = FP32 - INT8 in points):", "",
              "| removed | " + " | ".join(n for _, n in METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    lines.append("| dense | " + f"{100 * d['fp32_accuracy']:.2f} / {100 * d['int8_accuracy']:.2f} "
                 f"(gap {d['int8_vs_fp32_pts']:+.2f})" + " |" * len(METHODS))
    for row in r["rows"]:
        cells = []
        for key, _ in METHODS:
            m = row["methods"][key]
            cells.append(f"{100 * m['fp32_accuracy']:.2f} ({m['fp32_bound_pts']:.2f}) / {100 * m['int8_accuracy']:.2f} "
                         f"(gap {m['int8_vs_fp32_pts']:+.2f})")
        lines.append(f"| {row['plan']} | " + " | ".join(cells) + " |")
    lines += ["", f"Distillation steps per plan: " + ", ".join(
        f"{row['plan']} {row['methods']['distill']['distill']['steps']} ({row['methods']['distill']['distill']['stopped_by']})"
        for row in r["rows"]), f"Total benchmark time {r['total_s'] / 60:.1f} min."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.65])
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--max-length", type=int, default=128, help="evaluation/fit truncation (distillation: 64)")
    ap.add_argument("--fit-examples", type=int, default=2048)
    ap.add_argument("--importance-examples", type=int, default=1024)
    ap.add_argument("--distill-epochs", type=int, default=2)
    ap.add_argument("--schedule", choices=("linear", "constant"), default="linear", help="distillation LR schedule")
    ap.add_argument("--ce-weight", type=float, default=0.5, help="distillation cross-entropy weight (0 = KL only)")
    ap.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    ap.add_argument("--hidden-weight", type=float, default=0.0,
                    help="weight of the layer-wise hidden-state term (DistillConfig.hidden_weight; 0 = off)")
    ap.add_argument("--int8-aware", action="store_true",
                    help="quantization-aware distillation through the simulated INT8 file (DistillConfig.int8_aware)")
    ap.add_argument("--seed", type=int, default=0, help="distillation seed (batch order, dropout)")
    ap.add_argument("--out-name", default=None, help="results file name (default: the benchmark's name)")
    ap.add_argument("--distill-seconds", type=float, default=None, help="time cap per distillation run")
    ap.add_argument("--no-control", dest="control", action="store_false")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--wait", type=float, default=30.0, help="minutes to wait for the default task")
    ap.add_argument("--distill-only", action="store_true",
                    help="only LS refit + uncapped distillation of the given fractions (a follow-up run)")
    ap.add_argument("--plan", action="append", default=[],
                    help="with --distill-only: a build's plan.json (or a build folder) instead of one-shot fractions; "
                         "repeatable")
    ap.add_argument("--augment", type=int, default=0,
                    help="with --distill-only: add this many augmented unlabelled variants of every distillation "
                         "text (edgeprune.recovery.augment; KL term only)")
    ap.add_argument("--teacher-distill", action="store_true",
                    help="with --distill-only: first distil the unpruned model itself on the same texts (the "
                         "distilled-dense control) and distil the pruned plans from it instead of from the "
                         "original; certification still pairs with the original model")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="with --distill-only: distil every plan once per seed (default: --seed only)")
    args = ap.parse_args(argv)
    if (args.plan or args.seeds) and not args.distill_only:
        ap.error("--plan and --seeds belong to --distill-only")
    from benchmarks.bench_tools import write_results

    if args.distill_only:
        record = run_distill_only(args)
        lines = [f"# LS refit + distillation, uncapped ({record['date']})", "",
                 f"Command: `{record['command']}`. Certify split n = {record['certify_n']}, one look at 95% per cell "
                 f"against the unpruned FP32 model; distillation {record['distill_config']['epochs']} epochs over "
                 f"{record['distill_n']} texts.", "",
                 "| plan | seed | steps | seconds | INT8 worse / better | INT8 accuracy, bound | FP32 accuracy, bound |",
                 "|---|---|---|---|---|---|---|"]
        for row in record["rows"]:
            d = row["distill"]
            lines.append(f"| {row['plan']} | {row['seed']} | {d['steps']} | {d['seconds']:.0f} | "
                         f"{row['int8_n_worse']} / {row['int8_n_better']} | {100 * row['int8_accuracy']:.2f}%, "
                         f"{row['int8_bound_pts']:.2f} | {100 * row['fp32_accuracy']:.2f}%, {row['fp32_bound_pts']:.2f} |")
        write_results(args.out_name or "recovery_calibration_distill", record, "\n".join(lines))
        print("\n".join(lines))
        return 0
    record = run(args)

    md = markdown(record)
    write_results("recovery_calibration", record, md)
    print(md)
    return 0



def run_distill_only(args) -> dict[str, Any]:
    """Follow-up: LS refit + an *uncapped* distillation (``--distill-epochs``) for the given fractions only, to
    see what distillation does when the time cap of the main run does not starve it."""
    from edgeprune.certify.core import certify
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.task.predict import onnx_predictions, torch_predictions
    from edgeprune.recovery.distill import distill_, task_distill_data
    from edgeprune.task.modeling import clone_model, prune_and_verify_
    from edgeprune.recovery.refit import RefitConfig, refit_plan

    t_all = time.monotonic()
    task, prof, threads, model, tok = bench_setup(args)
    seq, labels = args.max_length, list(task.certify.labels)
    plan_files = list(getattr(args, "plan", None) or [])
    plans = (load_plans(plan_files) if plan_files
             else oneshot_plans(model, tok, task.search, args.fractions, seq, args.importance_examples))
    seeds = list(getattr(args, "seeds", None) or [args.seed])
    base = torch_predictions(model, tok, task.certify, max_length=seq, batch_size=64)
    data = with_augmented(task_distill_data(task), getattr(args, "augment", 0), tok, exclude=task.certify.texts)
    work = Path(tempfile.mkdtemp(prefix="recovery-cal-d-"))
    rows = []
    teacher, teacher_row = model, None
    if getattr(args, "teacher_distill", False):
        teacher = clone_model(model)
        t0 = time.monotonic()
        res = distill_(teacher, model, tok, data, distill_config(args, seeds[0]), checkpoint_dir=work / "ckpt-teacher")
        c32 = certify(base, torch_predictions(teacher, tok, task.certify, max_length=seq, batch_size=64), labels,
                      max_drop=0.01, confidence=0.95, looks=1)
        teacher_row = {"fp32_accuracy": c32.accuracy, "fp32_bound_pts": 100 * c32.drop_upper_bound,
                       "n_worse": c32.n_worse, "n_better": c32.n_better, "seconds": round(time.monotonic() - t0, 1),
                       "distill": res.to_dict()}
        log(f"distilled teacher: FP32 {100 * c32.accuracy:.2f}% ({c32.n_worse}/{c32.n_better} vs the original)")
    for name, plan in plans.items():
        # The refit is deterministic (fixed threads): one per plan, each seed distils a fresh copy of it.
        refitted, _ = refit_plan(model, tok, task.search, plan, RefitConfig(max_examples=args.fit_examples,
                                                                            max_length=seq))
        prune_and_verify_(refitted, plan)
        for seed in seeds:
            cfg = distill_config(args, seed)
            student = clone_model(refitted)
            res = distill_(student, teacher, tok, data, cfg, checkpoint_dir=work / f"ckpt-{name}-s{seed}",
                           progress=lambda i: (i["step"] % 100 == 0) and log(
                               f"{name} seed {seed}: step {i['step']}/{i['total_steps']} {i['seconds']:.0f} s"))
            final = compile_plan(student, plan, prof.quant, work / f"{name}-s{seed}").onnx
            c = certify(base, onnx_predictions(final, tok, task.certify, max_length=seq, threads=threads), labels,
                        max_drop=0.01, confidence=0.95, looks=1)
            c32 = certify(base, torch_predictions(student, tok, task.certify, max_length=seq, batch_size=64), labels,
                          max_drop=0.01, confidence=0.95, looks=1)
            rows.append({"plan": name, "seed": seed, "heads_removed": plan.num_removed,
                         "ffn_blocks_removed": plan.ffn_num_removed,
                         "int8_accuracy": c.accuracy, "int8_bound_pts": 100 * c.drop_upper_bound,
                         "int8_n_worse": c.n_worse, "int8_n_better": c.n_better,
                         "fp32_accuracy": c32.accuracy, "fp32_bound_pts": 100 * c32.drop_upper_bound,
                         "distill": res.to_dict()})
            log(f"{name} seed {seed}: LS + {res.steps} distillation steps ({res.seconds:.0f} s): INT8 "
                f"{100 * c.accuracy:.2f}% bound {100 * c.drop_upper_bound:.2f} ({c.n_worse}/{c.n_better}) | FP32 "
                f"{100 * c32.accuracy:.2f}%")
    command = "python -m benchmarks.recovery_calibration --distill-only " + " ".join(
        ([f"--plan {p}" for p in plan_files] or ["--fractions"] + [f"{f:g}" for f in args.fractions])
        + ["--seeds"] + [str(s) for s in seeds] + [f"--distill-epochs {args.distill_epochs}",
                                                   f"--ce-weight {args.ce_weight:g}", f"--fit-examples {args.fit_examples}"]
        + (["--int8-aware"] if args.int8_aware else [])
        + ([f"--augment {args.augment}"] if getattr(args, "augment", 0) else [])
        + (["--teacher-distill"] if getattr(args, "teacher_distill", False) else []))
    return {"benchmark": "recovery_calibration_distill", "date": dt.date.today().isoformat(),
            "host": platform.node(), "certify_n": len(labels), "distill_n": len(data),
            "distill_config": distill_config(args, seeds[0]).to_dict(), "seeds": seeds,
            "fit_examples": args.fit_examples, "rows": rows, "command": command, "distilled_teacher": teacher_row,
            "total_s": round(time.monotonic() - t_all, 1)}


def with_augmented(data, copies: int, tok, exclude=()):
    """``data`` plus ``copies`` augmented unlabelled variants of each of its texts (``copies = 0``: ``data``)."""
    from edgeprune.recovery.augment import AugmentConfig, augmented_dataset

    return augmented_dataset(data, AugmentConfig(copies=copies), mask_token=tok.mask_token or "[MASK]",
                             exclude=exclude)


def distill_config(args, seed: int):
    """The distillation settings of a ``--distill-only`` run, for one seed."""
    from edgeprune.recovery.distill import DistillConfig

    return DistillConfig(epochs=args.distill_epochs, seed=seed, schedule=args.schedule, ce_weight=args.ce_weight,
                         temperature=args.temperature, hidden_weight=args.hidden_weight, int8_aware=args.int8_aware)


def load_plans(paths) -> dict[str, Any]:
    """Plans from builds' ``plan.json`` files (or build folders), named after their folder.

    Raises:
        SystemExit: a path without a plan, or two plans with the same name.
    """
    import json

    from edgeprune.plan import HeadPlan

    plans: dict[str, Any] = {}
    for raw in paths:
        path = Path(raw)
        path = path / "plan.json" if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"--plan {raw}: no plan.json there")
        name = path.parent.name if path.name == "plan.json" else path.stem
        if name in plans:
            raise SystemExit(f"--plan {raw}: a second plan named {name!r}")
        plans[name] = HeadPlan.from_dict(json.loads(path.read_text()))
    return plans


if __name__ == "__main__":
    raise SystemExit(main())
