"""Benchmark (issue #20): the hand-made smaller models a user could build in twenty lines, against edgeprune.

"Would I do better by just keeping the first k layers and distilling?" For each k, the task's fine-tuned model is
cut to its first k encoder layers (``Adapter.keep_layers_``, the DistilBERT-style initialisation) and distilled from
the unpruned model with exactly the build's distillation (``recovery.distill.distill_`` with the build's defaults:
KL at T = 2 + 0.5 CE, AdamW peak 1e-4 with linear warm-up and decay, batch 32, 64 tokens, 2 epochs over the data the
task's build distils on, never the certify split). Each student is compiled with the product's chain
(``onnx.compile.compile_plan``, the profile's INT8 preset) and scored like a build's plan: the INT8 file's accuracy
on the certify split, paired against the unpruned FP32 model, one look at 95% (``certify.core.certify``).

"Or by thinning every layer alike, without your search?" The uniformly thinned students: every layer keeps the same
number of attention heads and of FFN blocks (``--ffn-block-size`` neurons; default the build's, 128 for MiniLM),
chosen by weight magnitude, no data and no search: a head's output reaches the residual stream only through its
columns of the attention output projection, a block's only through its columns of the FFN output projection, so
each unit is scored by the L2 norm of those columns (:func:`magnitude_scores`, through the adapter's
``attention_output`` / ``ffn_output``) and each layer keeps its largest. ``--thin F`` removes ``F x heads`` heads and
``F x blocks`` FFN blocks of every layer (rounded half up: :func:`per_layer_removed`). For each ``--build`` a student
thinned to the build's unit count is added (``--no-thin-match`` leaves it out): the shares of heads and of FFN blocks
the build's *shipped* plan removed (report.json; ``plan.json`` is the searched plan, which a build does not always
ship), each applied per layer with the same rounding (:func:`shipped_fractions`), so the totals match the build's
whenever its counts divide by the layer count and are the nearest uniform ones otherwise (the row records both).
Builds with the same counts share one row. Latency is measured side by side, so the table shows whether the counts
matched the speed. Each thinned plan is recovered as a build recovers its distilled plan
(``recovery.chain.Recoverer``): the full least-squares weight refit (``recovery.refit.refit_plan``) on the search
split (the build's ``recovery_examples`` texts, at the profile's length up to 128), the surgery checked against
masking (``task.modeling.prune_and_verify_``), then the same distillation as the first-k students (same
``DistillConfig``, same teacher logits, same data); compiled and scored like every row.

Tasks (``--task``):

* ``default``: the embedded default task; distillation on its fine-tune + search splits (what its builds distil on),
  the refit on its search split, scores on its certify split.
* ``banking77``: the cached Banking77 task (:func:`edgeprune.task.banking77.banking77_task`: MiniLM fine-tuned on
  the 9,003 training queries, fine-tuned once if the cache has none), split exactly as its build splits
  ``dev_test.csv`` (:func:`edgeprune.pipeline.split_user_data` with the ``--build`` folders' seed and certify
  fraction, which must agree; without a build ``--seed`` and the build's default fraction); the refit and the
  distillation on that search split (what a Banking77 build distils on), scores on that certify split (77 labels).

A ``--build`` of another task than ``--task`` is refused (its bound is certified on other data).

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

    python -m benchmarks.smaller_model --build /path/to/build [--build ...] [--layers 3 4] [--thin 0.5 0.65] \
        [--no-thin-match] [--ffn-block-size 128] [--epochs 2] [--no-optimum] \
        [--optimum-python /path/to/.venv-tf457/bin/python]
    python -m benchmarks.smaller_model --task banking77 --build /path/to/banking77-build [the same options]

Writes ``benchmarks/results/smaller_model-<date>.json`` and ``.md`` (``smaller_model-banking77-<date>`` with
``--task banking77``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from benchmarks.optimum_peer import quantize_with_optimum, versions_text
from benchmarks.recovery_calibration import bench_setup, log

OPTIMUM_ROW = "optimum arm64 preset (dense)"
TASKS = ("default", "banking77")


def task_title(task: str, num_labels: Optional[int] = None) -> str:
    """How the results name a task (with its label count when known)."""
    if task == "default":
        return "Default task (MiniLM sentiment)"
    if task == "banking77":
        return f"Banking77 ({num_labels} intents)" if num_labels else "Banking77"
    return task


def results_name(task: str) -> str:
    """Stem of the results files: ``smaller_model`` for the default task (the name benchmarks/report.py has always
    read), ``smaller_model-<task>`` otherwise."""
    return "smaller_model" if task == "default" else f"smaller_model-{task}"


# ---------------------------------------------------------------------------------------------------------------------
# the task: which model, which splits
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskData:
    """The splits one comparison reads.

    Attributes:
        name: ``--task``.
        search: fit texts of the refit (the build's search split).
        certify: the split every row is scored on.
        distill: distillation texts (what the task's build distils on; never the certify split).
        info: where the splits come from (for the results file).
    """

    name: str
    search: Any
    certify: Any
    distill: Any
    info: dict


def load_task(name: str) -> Any:
    """The task object ``bench_setup`` loads the model of: None = the default task (``bench_setup`` waits for it),
    else the cached Banking77 task (fine-tuned once if absent)."""
    if name == "default":
        return None
    from edgeprune.task.banking77 import banking77_task

    task = banking77_task(progress=True)
    log(f"Banking77 task in {task.folder} ({'fine-tuned now' if task.built else 'reused from the cache'})")
    return task


def read_build(out: Path) -> dict[str, Any]:
    """A build folder's report.json (what it shipped, its settings and its splits)."""
    return json.loads((Path(out) / "report.json").read_text())


def check_build_task(out: Path, report: dict[str, Any], task_name: str, task: Any) -> None:
    """Refuse a build of another task: its certified bound is on other data than the students' scores.

    Args:
        out: the build folder (for the message).
        report: its report.json.
        task_name: ``--task``.
        task: the task object (``model_dir``, ``data_csv``); unused for the default task.

    Raises:
        SystemExit: the build's ``--model`` / ``--data`` are not the task's.
    """
    settings = report.get("settings") or {}
    model, data = settings.get("model"), settings.get("data")
    if task_name == "default":
        if model is not None:
            raise SystemExit(f"--build {out}: a build of {model}, not of the default task (give --task)")
        return
    same = model is not None and data is not None and Path(model).resolve() == Path(task.model_dir).resolve() \
        and Path(data).resolve() == Path(task.data_csv).resolve()
    if not same:
        raise SystemExit(f"--build {out}: a build of --model {model or '(default task)'} --data {data}, not of the "
                         f"{task_name} task ({task.model_dir}, {task.data_csv})")


SPLIT_SETTINGS = ("seed", "certify_fraction", "certify_data", "text_column", "text_pair_column", "label_column")


def split_config(task: Any, reports: Sequence[dict[str, Any]], seed: int) -> Any:
    """The build settings that decide how a user-data task is split: the builds' (they must agree), else a build's
    defaults with ``seed``.

    Raises:
        SystemExit: the builds split the data differently.
    """
    from edgeprune.pipeline import BuildConfig

    chosen = [{k: (r.get("settings") or {}).get(k) for k in SPLIT_SETTINGS} for r in reports]
    if any(c != chosen[0] for c in chosen[1:]):
        raise SystemExit(f"the --build folders split --data differently ({chosen}): give builds of one split")
    kw = {k: v for k, v in (chosen[0] if chosen else {"seed": seed}).items() if v is not None}
    return BuildConfig(model=str(task.model_dir), data=str(task.data_csv), **kw)


def task_data(name: str, task: Any, model: Any, reports: Sequence[dict[str, Any]], seed: int) -> TaskData:
    """The search, certify and distillation splits of ``--task`` (module docstring).

    Raises:
        SystemExit: a Banking77 build's certify split is not the one reproduced here.
    """
    from edgeprune.recovery.distill import task_distill_data

    if name == "default":
        return TaskData(name, task.search, task.certify, task_distill_data(task),
                        {"splits": "the default task's fixed fine-tune / search / certify splits",
                         "distill": "fine-tune + search splits"})
    from edgeprune.pipeline import split_user_data

    cfg = split_config(task, reports, seed)
    search, certify, info = split_user_data(cfg, dict(model.config.label2id))
    for r in reports:
        n = ((r.get("data") or {}).get("certify") or {}).get("size")
        if n != len(certify):
            raise SystemExit(f"a build's certify split has {n} examples, the split reproduced here {len(certify)}")
    return TaskData(name, search, certify, search,
                    {"splits": f"the build's split of {cfg.data}", "split": info, "model_dir": str(task.model_dir),
                     "distill": "the build's search split"})


# ---------------------------------------------------------------------------------------------------------------------
# uniform thinning by weight magnitude
# ---------------------------------------------------------------------------------------------------------------------
def magnitude_scores(model: Any, block_size: int) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float]]:
    """Per head and per FFN block of an unpruned model, the L2 norm of its columns of the projection that reads it.

    A head's output enters the residual stream only through its ``head_size`` input columns of the attention output
    projection, an FFN block's only through its ``block_size`` columns of the FFN output projection: the
    weight-magnitude criterion a user reaches for first (no data, no gradients).

    Args:
        model: an unpruned sequence-classification model of a registered family.
        block_size: neurons per FFN block.

    Returns:
        ``(heads, blocks)``: ``{(layer, head): norm}`` and ``{(layer, block): norm}``.

    Raises:
        ValueError: the model is already pruned.
    """
    from edgeprune.adapters import get_adapter

    adapter = get_adapter(model)
    if not adapter.current_plan(model).is_full:
        raise ValueError("magnitude_scores needs the unpruned model")
    d, heads, blocks = adapter.head_size(model), {}, {}
    for i, n in enumerate(adapter.layout(model).heads_per_layer):
        w = adapter.attention_output(model, i).weight.detach()  # (hidden, n * d): the concatenated heads' columns
        heads.update({(i, h): float(w[:, h * d:(h + 1) * d].norm()) for h in range(n)})
    for i, n in enumerate(adapter.ffn_num_blocks(model, block_size)):
        w = adapter.ffn_output(model, i).weight.detach()  # (hidden, intermediate)
        blocks.update({(i, b): float(w[:, b * block_size:(b + 1) * block_size].norm()) for b in range(n)})
    return heads, blocks


def per_layer_removed(fraction: float, units: int) -> int:
    """Units of a layer that a thinning fraction removes: ``fraction x units`` rounded half up (0.5 of 12 -> 6)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a thinning fraction is in [0, 1], got {fraction}")
    return math.floor(fraction * units + 0.5 + 1e-9)  # the epsilon: 7/12 * 12 must not round to 6


def uniform_plan(scores: tuple[dict, dict], num_heads: Sequence[int], num_blocks: Sequence[int], block_size: int,
                 heads_fraction: float, blocks_fraction: float) -> Any:
    """The plan removing, in every layer, ``per_layer_removed`` of its heads and of its FFN blocks, lowest score
    first (ties: lower index first).

    Args:
        scores: :func:`magnitude_scores` ``(heads, blocks)``.
        num_heads, num_blocks: heads and FFN blocks per layer of the unpruned model.
        block_size: neurons per FFN block.
        heads_fraction, blocks_fraction: the shares removed per layer.

    Returns:
        A :class:`edgeprune.plan.HeadPlan` with an FFN part.
    """
    from edgeprune.plan import HeadPlan

    def lowest(score: dict, counts: Sequence[int], fraction: float) -> list[tuple[int, int]]:
        out = []
        for layer, n in enumerate(counts):
            ranked = sorted(range(n), key=lambda u: (score[(layer, u)], u))
            out += [(layer, u) for u in ranked[:per_layer_removed(fraction, n)]]
        return out

    heads, blocks = scores
    plan = HeadPlan.from_removed(num_heads, lowest(heads, num_heads, heads_fraction))
    return plan.with_ffn_removed(block_size, num_blocks, lowest(blocks, num_blocks, blocks_fraction))


def shipped_fractions(report: dict[str, Any]) -> tuple[float, float, Optional[int]]:
    """The shares of heads and of FFN blocks a build's shipped plan removed (report.json), and its FFN block size
    (None for a heads-only build: it removed no FFN block)."""
    heads, ffn = report["heads"], report.get("ffn") or {}
    blocks = ffn["blocks_removed"] / ffn["blocks_total"] if ffn else 0.0
    return heads["removed"] / heads["total"], blocks, ffn.get("block_size")


def thin_specs(fractions: Sequence[float], matches: Sequence[tuple[str, dict[str, Any]]],
               default_block: int) -> list[dict[str, Any]]:
    """The thinned students to make: one per ``--thin`` fraction and one per build to match (``(name, report)``);
    a build that shipped the unpruned model has nothing to match and is left out."""
    specs = [{"heads_fraction": f, "blocks_fraction": f, "block_size": default_block, "thin": [f], "matched_to": []}
             for f in fractions]
    for name, report in matches:
        fh, fb, bs = shipped_fractions(report)
        if fh == 0 and fb == 0:
            log(f"build {name} shipped the unpruned model: no thinned student matches it")
            continue
        specs.append({"heads_fraction": fh, "blocks_fraction": fb, "block_size": bs or default_block, "thin": [],
                      "matched_to": [{"build": name, "heads_removed": report["heads"]["removed"],
                                      "ffn_blocks_removed": (report.get("ffn") or {}).get("blocks_removed", 0)}]})
    return specs


def thin_name(spec: dict[str, Any], plan: Any) -> str:
    """Row name: what the student was thinned to and what it removes per layer."""
    what = [f"{100 * f:g}%" for f in spec["thin"]]
    if spec["matched_to"]:
        what.append("to " + ", ".join(f"{m['build']}'s" for m in spec["matched_to"]) + " unit count")
    heads, blocks = plan.num_heads[0], plan.ffn_num_blocks[0]
    return (f"uniformly thinned {' = '.join(what)}: {heads - plan.kept_counts[0]}/{heads} heads + "
            f"{blocks - plan.ffn_kept_counts[0]}/{blocks} FFN blocks removed per layer, refit + distilled")


def thinned_student(model: Any, tok: Any, fit_data: Any, plan: Any, *, fit_examples: int,
                    max_length: int) -> tuple[Any, dict[str, Any]]:
    """The plan's student before distillation, as a build makes its distilled plan's (``Recoverer``): the full
    least-squares refit of the unpruned model (the unpruned weights for a family the refit refuses), physically
    pruned and checked against masking.

    Returns:
        ``(student, record)``: the pruned model and what was done (start, refit summary, surgery difference).
    """
    from edgeprune.recovery.refit import RefitConfig, refit_plan, unsupported_reason
    from edgeprune.task.modeling import clone_model, prune_and_verify_

    why, refit = unsupported_reason(model), None
    if why:
        student, start = clone_model(model), f"the unpruned weights (no refit: {why})"
    else:
        student, rec = refit_plan(model, tok, fit_data, plan,
                                  RefitConfig(max_examples=fit_examples, max_length=min(max_length, 128)))
        start, refit = "the full least-squares refit", rec.to_dict()
        refit.pop("sublayers", None)
    surgery = prune_and_verify_(student, plan)
    return student, {"start": start, "refit": refit, "surgery_max_abs_diff": surgery}


# ---------------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------------
def _build_row(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """What an edgeprune build folder shipped (report.json) and its INT8 file."""
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
    from edgeprune.pipeline import BuildConfig
    from edgeprune.recovery.distill import DistillConfig, distill_, teacher_logits
    from edgeprune.search.run import default_block_size
    from edgeprune.task.modeling import clone_model
    from edgeprune.task.predict import onnx_predictions, torch_predictions

    t_all = time.monotonic()
    builds = [(Path(b), read_build(Path(b))) for b in args.build]
    loaded = load_task(args.task)
    for out, report in builds:
        check_build_task(out, report, args.task, loaded)
    task, prof, threads, model, tok = bench_setup(args, torch_cores="physical", task=loaded)
    data = task_data(args.task, task, model, [r for _, r in builds], args.seed)
    cert, labels, seq = data.certify, list(data.certify.labels), prof.seq_len
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
    rows += [_build_row(out, report) for out, report in builds]

    cfg = DistillConfig(epochs=args.epochs, seed=args.seed)
    t = time.monotonic()
    logits = teacher_logits(model, tok, data.distill, max_length=cfg.max_length)
    log(f"teacher logits on {len(data.distill)} distillation texts in {time.monotonic() - t:.0f} s")

    def distil(student: Any, label: str) -> Any:
        return distill_(student, None, tok, data.distill, cfg, teacher_logits_=logits,
                        progress=lambda i: (i["step"] % 100 == 0) and log(f"{label}: step {i['step']}/"
                                                                         f"{i['total_steps']}"))

    def add_student(student: Any, row: dict[str, Any], folder: str, label: str) -> None:
        res = distil(student, label)
        path = compile_plan(student, None, prof.quant, work / folder).onnx
        row.update({"path": str(path), "distill_steps": res.steps, "distill_s": round(res.seconds, 1), **score(path)})
        log(f"{row['name']}: INT8 {100 * row['accuracy']:.2f}% bound {row['bound_pts']:.2f} "
            f"({row['n_worse']} worse / {row['n_better']} better, {res.seconds:.0f} s)")
        rows.append(row)

    layers = len(adapter.layers(model))
    for k in args.layers:
        if not 1 <= k < layers:
            raise SystemExit(f"--layers {k}: the model has {layers} layers")
        student = adapter.keep_layers_(clone_model(model), list(range(k)))
        add_student(student, {"name": f"first {k} of {layers} layers, distilled", "kind": "smaller", "layers": k,
                              "layers_total": layers}, f"first-{k}", f"first {k} layers")

    block = args.ffn_block_size or default_block_size(adapter.ffn_sizes(model))
    fit_examples = BuildConfig.recovery_examples  # the build's recovery fit size (BuildConfig's default)
    specs = thin_specs(args.thin, [(out.name, r) for out, r in builds] if args.thin_match else [], block)
    scores: dict[int, tuple[dict, dict]] = {}
    thinned: dict[str, dict[str, Any]] = {}  # plan (JSON) -> row spec: builds with equal counts share one student
    for spec in specs:
        bs = spec["block_size"]
        if bs not in scores:
            scores[bs] = magnitude_scores(model, bs)
        plan = uniform_plan(scores[bs], adapter.layout(model).heads_per_layer, adapter.ffn_num_blocks(model, bs), bs,
                            spec["heads_fraction"], spec["blocks_fraction"])
        if plan.is_full:
            raise SystemExit(f"--thin {spec['thin'] or spec['matched_to']}: removes nothing from a layer of "
                             f"{plan.num_heads[0]} heads and {plan.ffn_num_blocks[0]} FFN blocks")
        key = json.dumps(plan.to_dict(), sort_keys=True)
        if key in thinned:
            thinned[key]["thin"] += spec["thin"]
            thinned[key]["matched_to"] += spec["matched_to"]
        else:
            thinned[key] = {**spec, "plan": plan}
    for i, spec in enumerate(thinned.values()):
        plan = spec["plan"]
        student, rec = thinned_student(model, tok, data.search, plan, fit_examples=fit_examples, max_length=seq)
        row = {"name": thin_name(spec, plan), "kind": "thinned", "thin": spec["thin"],
               "matched_to": spec["matched_to"], "heads_fraction": spec["heads_fraction"],
               "blocks_fraction": spec["blocks_fraction"], "ffn_block_size": plan.ffn_block_size,
               "heads_removed": plan.num_removed, "ffn_blocks_removed": plan.ffn_num_removed,
               "heads_removed_per_layer": [n - k for n, k in zip(plan.num_heads, plan.kept_counts)],
               "ffn_blocks_removed_per_layer": [n - k for n, k in zip(plan.ffn_num_blocks, plan.ffn_kept_counts)],
               "plan": plan.to_dict(), "selection": "largest L2 norm of the unit's output-projection columns",
               "recovery": rec}
        add_student(student, row, f"thinned-{i}", f"thinned {i}")

    log("latency: every INT8 file side by side, alternating")
    alt = measure_alternating([r["path"] for r in rows], prof, rounds=args.rounds, reps=args.reps)
    real = measure_real_lengths([r["path"] for r in rows], prof, tok, list(cert.texts), max_texts=args.real_texts)
    for r, ms, ratio, rl, rr in zip(rows, alt.median_ms, alt.ratio_to_first, real.latency_ms,
                                    real.ratio_p50_to_first):
        r.update({"p50_ms": ms, "speedup_vs_dense_int8": 1.0 / ratio, "real_p50_ms": rl["p50"],
                  "real_speedup_vs_dense_int8": 1.0 / rr})
    import onnxruntime
    import transformers

    return {"benchmark": "smaller_model", "task": args.task, "task_data": data.info,
            "date": dt.date.today().isoformat(), "host": platform.node(),
            "machine": platform.machine(), "measured_on": "this host (not the profile's device)",
            "profile": prof.name, "ort_threads": threads, "seq_len": alt.seq_len, "batch": alt.batch,
            "real_length_tokens": real.tokens, "certify_n": len(labels), "max_drop_pts": args.max_drop,
            "num_labels": int(model.config.num_labels),
            "base_fp32_accuracy": sum(p == y for p, y in zip(base, labels)) / len(labels),
            "distill_n": len(data.distill), "distill_config": cfg.to_dict(), "refit_examples": fit_examples,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__, "optimum": optimum, "rows": rows,
            "command": command_line(args), "total_s": round(time.monotonic() - t_all, 1)}


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (the options that change rows)."""
    parts = ([] if args.task == "default" else [f"--task {args.task}"]) + [f"--build {b}" for b in args.build]
    parts += ["--layers", *map(str, args.layers)]
    if args.thin:
        parts += ["--thin", *(f"{f:g}" for f in args.thin)]
    if not args.thin_match:
        parts.append("--no-thin-match")
    if args.ffn_block_size:
        parts.append(f"--ffn-block-size {args.ffn_block_size}")
    parts += [f"--epochs {args.epochs}"] + ([] if args.optimum else ["--no-optimum"])
    return "python -m benchmarks.smaller_model " + " ".join(parts)


def _removed(row: dict[str, Any]) -> str:
    """The table's "removed" cell."""
    if row.get("layers") is not None:
        total = row.get("layers_total")
        return f"{total - row['layers']} of {total} layers" if total else "the last layers"
    if row.get("heads_removed") is None:
        return "none"
    return f"{row['heads_removed']} + {row.get('ffn_blocks_removed') or 0}"


def markdown(r: dict[str, Any]) -> str:
    task = r.get("task", "default")
    split = (r.get("task_data") or {}).get("split") or {}
    where = (f" (the build's split of dev + test: seed {split.get('seed')}, certify fraction "
             f"{split.get('certify_fraction')})" if split else "")
    distill_on = (r.get("task_data") or {}).get("distill", "fine-tune + search splits")
    name = task_title(task, r.get("num_labels"))
    title = "" if task == "default" else f" on {name}"
    lines = [f"# The hand-made smaller model vs edgeprune{title} ({r['date']})", "",
             f"{name}, certify split n = {r['certify_n']}{where}, unpruned FP32 "
             f"{100 * r['base_fp32_accuracy']:.2f}%. INT8 files timed side by side on {r['measured_on']} at the "
             f"{r['profile']} settings ({r['ort_threads']} ORT threads, batch {r['batch']}, {r['seq_len']} tokens) and "
             f"at the certify texts' real lengths (median {r['real_length_tokens'].get('p50')} tokens). Students: the "
             "first k layers, and the uniformly thinned models (every layer keeps the same number of heads and FFN "
             "blocks, those with the largest output-projection weight norms, then the build's least-squares refit), "
             f"distilled with the build's distillation ({r['distill_config']['epochs']} epochs over "
             f"{r['distill_n']} texts: {distill_on}). Command: `{r['command']}`.", "",
             f"| model | removed (heads + FFN blocks) | INT8 accuracy | drop bound (pts) | certified at "
             f"{r['max_drop_pts']:g} | p50 ms | vs dense INT8 | real-length vs dense INT8 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['name']} | {_removed(row)} | {100 * row['accuracy']:.2f}% | {row['bound_pts']:.2f} "
                     f"({row['bound_note']}) | {'yes' if row['certified'] else 'no'} | {row['p50_ms']:.2f} | "
                     f"{row['speedup_vs_dense_int8']:.2f}x | {row['real_speedup_vs_dense_int8']:.2f}x |")
    matched = [(m, row) for row in r["rows"] for m in row.get("matched_to") or []]
    if matched:
        lines += ["", "Thinned to a build's unit count (per layer the build's shares of removed heads and FFN blocks, "
                      "rounded): " + "; ".join(
                          f"{m['build']} removed {m['heads_removed']} + {m['ffn_blocks_removed']}, its thinned "
                          f"student {row['heads_removed']} + {row['ffn_blocks_removed']}" for m, row in matched) + "."]
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


def _fraction(text: str) -> float:
    f = float(text)
    if not 0.0 < f < 1.0:
        raise argparse.ArgumentTypeError(f"a thinning fraction is in (0, 1), got {text}")
    return f


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=TASKS, default="default", help="the task (module docstring)")
    ap.add_argument("--build", action="append", default=[],
                    help="an edgeprune build folder (a build of --task) to compare with")
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 4], help="first-k-layers students (k values)")
    ap.add_argument("--thin", type=_fraction, nargs="+", default=[],
                    help="uniformly thinned students: the fraction of heads and FFN blocks removed in every layer")
    ap.add_argument("--no-thin-match", dest="thin_match", action="store_false",
                    help="no student thinned to each --build's unit count")
    ap.add_argument("--ffn-block-size", type=int, default=None,
                    help="neurons per FFN block of the --thin students (default: the build's, 128 for MiniLM)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="distillation seed (and the Banking77 split's without --build)")
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
    return ap


def main(argv: Optional[Sequence[str]] = None, *, write: Callable[[str, dict, str], Path] | None = None) -> int:
    """Run, write the results (``bench_tools.write_results`` unless ``write`` is given) and print the table."""
    args = parser().parse_args(argv)
    if write is None:
        from benchmarks.bench_tools import write_results as write

    record = run(args)
    md = markdown(record)
    write(results_name(args.task), record, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
