"""The ``edgeprune`` command line: a thin typer app.

Commands only parse arguments, call one library function and turn :class:`EdgepruneError` into a message and an
exit code. Heavy imports (torch, onnxruntime) happen inside command bodies so ``edgeprune --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .certify.policy import DEFAULT_SEQUENCE_PLANS, DISTILL_SEQUENCE_PLANS
from .config import DEFAULT_SEARCH as _S
from .errors import EXIT_INTERNAL, EdgepruneError, Interrupted, reset_names, use_cli_names

app = typer.Typer(
    name="edgeprune",
    help="Prune attention heads of BERT-family classifiers and ship INT8 ONNX models for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _cli_names(ctx: typer.Context) -> None:
    # Messages name options as the command line spells them (--label-column, not label_column) while a command
    # runs; Python callers of the library get argument names.
    token = use_cli_names()
    ctx.call_on_close(lambda: reset_names(token))


def _check_out(path: Path, *, folder: bool) -> None:
    """Refuse an --out that cannot be created before any work (nothing is left behind)."""
    from .output.folder import check_out_path

    check_out_path(path, "out", want_dir=folder)


# Shared option aliases (one place, reused by every command).
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model folder or Hugging Face hub id.")]
ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Device profile name (see `edgeprune profiles`) or a .toml path.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output path.")]


@app.command()
def version() -> None:
    """Print the edgeprune version and the versions of its main dependencies."""
    from . import __version__

    typer.echo(f"edgeprune {__version__}")


@app.command()
def prune(
    model: ModelOpt,
    plan: Annotated[Path, typer.Option(help="plan.json with 'num_heads' and 'kept_heads'.")],
    out: OutOpt,
) -> None:
    """Physically remove the heads a plan drops, check parity against masking, and save the smaller model."""
    from .task.modeling import prune_and_save

    _check_out(out, folder=True)
    result = prune_and_save(model, plan, out)
    typer.echo(
        f"saved pruned model to {result['out']}: removed {result['heads_removed']} of {result['heads_total']} heads, "
        f"parameters {result['params_before']:,} -> {result['params_after']:,}, max |logit diff| vs masked "
        f"{result['max_abs_diff']:.2e}"
    )


@app.command("demo-model")
def demo_model(
    cache_dir: Annotated[
        Optional[Path], typer.Option(help="Cache folder (default: $EDGEPRUNE_CACHE or ~/.cache/edgeprune).")
    ] = None,
    rebuild: Annotated[bool, typer.Option(help="Fine-tune again even if a valid cached model exists.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the fine-tuning progress bar.")] = True,
) -> None:
    """Prepare the embedded default task (MiniLM fine-tuned on Rotten Tomatoes sentences) and show where it lives."""
    from .task.default import default_task

    task = default_task(cache_dir, rebuild=rebuild, progress=progress)
    sizes = task.split_sizes
    typer.echo(f"default model: {task.model_dir} ({'fine-tuned now' if task.built else 'reused from the cache'})")
    max_len = task.manifest.get("spec", {}).get("max_seq_len")
    typer.echo(
        f"accuracy at the fine-tuning length ({max_len} tokens): search {task.accuracy['search']:.2%} "
        f"({sizes['search']} sentences), certify {task.accuracy['certify']:.2%} ({sizes['certify']} sentences); "
        "a build measures the baseline again at the profile's seq_len"
    )
    typer.echo(
        f"splits (seed {task.split_seed}): fine-tune {sizes['finetune']}, search {sizes['search']}, "
        f"certify {sizes['certify']}"
    )
    typer.echo(f"fine-tune wall time: {task.finetune_seconds / 60:.1f} min ({task.finetune_seconds:.0f} s)")
    typer.echo(
        f"cache: {task.cache_dir}: default task {task.footprint_bytes() / 2**20:.0f} MiB "
        f"(model folder {task.model_size_bytes() / 2**20:.0f} MiB); whole cache {task.cache_size_bytes() / 2**20:.0f} MiB"
    )


@app.command()
def export(
    model: ModelOpt,
    plan: Annotated[Path, typer.Option(help="plan.json to ship (from `edgeprune search`).")],
    profile: ProfileOpt,
    out: OutOpt,
    data: Annotated[Optional[Path], typer.Option(help="Certify split (CSV/TSV/JSONL); without it the bundle is not certified.")] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Text column of --data (auto-detected).")] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(help="Second-text column of --data for pair tasks.")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column of --data (auto-detected).")] = None,
    frontier: Annotated[Optional[Path], typer.Option(help="JSON list of less compressed plans certified before --plan, least compressed first (fixed-sequence testing: each at the full confidence, stop at the first failure, ship the most compressed that passed).")] = None,
    max_drop: Annotated[float, typer.Option(help="Allowed accuracy drop vs the unpruned model, in points.")] = 1.0,
    confidence: Annotated[float, typer.Option(help="Confidence of the one-sided bound.")] = 0.95,
    force: Annotated[bool, typer.Option(help="Ship even if no plan meets the bound (marked NOT CERTIFIED, non-zero exit).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
) -> None:
    """Prune, export to ONNX, fuse, quantize to INT8, convert to .ort and certify: write a deployable bundle."""
    from .output.bundle import run_export, summary_lines

    _check_out(out, folder=True)
    result = run_export(model, plan, profile, out, data=data, text_column=text_column,
                        text_pair_column=text_pair_column, label_column=label_column, frontier_path=frontier,
                        max_drop_pts=max_drop, confidence=confidence, force=force, overwrite=overwrite)
    for line in summary_lines(result):
        typer.echo(line)
    if result.forced:
        banner = "#" * 78
        typer.secho(f"{banner}\n###  NOT CERTIFIED: THIS BUNDLE BREAKS THE ACCURACY BOUND (shipped with --force)  ###\n"
                    f"{banner}", fg=typer.colors.RED, bold=True, err=True)
        raise typer.Exit(code=3)


@app.command("verify-arm")
def verify_arm(
    model: Annotated[Path, typer.Argument(help="Bundle folder (runs its model.onnx) or an .onnx/.ort file.")],
    profile: ProfileOpt = "raspberrypi4",
    reference: Annotated[Optional[Path], typer.Option(help="FP32 .onnx to compare with (default: the bundle's FP32 model, else one rebuilt from its source model + plan, else the model itself on this host).")] = None,
    source_model: Annotated[Optional[str], typer.Option(help="Model folder to rebuild the FP32 reference from (default: the bundle's recorded model_source, if it exists here).")] = None,
    qemu_cpu: Annotated[Optional[str], typer.Option("--qemu-cpu", help="Override the profile's QEMU CPU model (cortex-a72, cortex-a76, neoverse-n1; never max).")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Sequence length of the test inputs (default: the profile's).")] = None,
    batch: Annotated[int, typer.Option(help="Rows per test feed (the last row is half padded).")] = 2,
    num_batches: Annotated[int, typer.Option(help="Number of random test feeds (when no sentences are used).")] = 2,
    texts: Annotated[Optional[Path], typer.Option(help="Text file, one sentence per line, tokenised with the bundle's tokenizer (default: built-in sentences when the bundle has a tokenizer, else random token ids).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the model on aarch64 onnxruntime under qemu-user with the profile's CPU and compare with FP32 here."""
    from .onnx.arm import verify_arm as _verify_arm
    from .errors import VerificationError

    result = _verify_arm(model, profile, reference=reference, source_model=source_model, qemu_cpu=qemu_cpu,
                         seq_len=seq_len, batch=batch, num_batches=num_batches,
                         texts=[t for t in texts.read_text().splitlines() if t.strip()] if texts else None)
    e2e = None
    if model.is_dir() and (model / "model.e2e.onnx").is_file():  # the string-in model too (edgeprune.onnx.e2e)
        from edgeprune.onnx.e2e import verify_arm_e2e

        e2e = verify_arm_e2e(model, profile, qemu_cpu=qemu_cpu)
    if json_out:
        import json

        typer.echo(json.dumps({**result.to_dict(), "e2e": e2e}, indent=2))
    else:
        for line in result.summary_lines() + (e2e["lines"] if e2e else []):
            typer.echo(line)
    if not result.passed:
        raise VerificationError(f"ARM outputs of {result.model} are outside the tolerance on {result.qemu_cpu}")
    if e2e is not None and not e2e["passed"]:
        raise VerificationError(f"the e2e model of {model} differs on emulated {e2e['qemu_cpu']}")


@app.command("profiles")
def profiles_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print the profiles as JSON.")] = False,
) -> None:
    """List the shipped device profiles (name, arch, cores, threads, seq_len, quant preset, QEMU CPU)."""
    from .profiles import format_profiles_table, profiles_table

    if json_out:
        import json

        typer.echo(json.dumps(profiles_table(), indent=2))
    else:
        typer.echo(format_profiles_table())


@app.command()
def measure(
    model: Annotated[Path, typer.Argument(help="An .onnx (external .onnx.data is counted) or .ort file.")],
    profile: ProfileOpt = "raspberrypi4",
    threads: Annotated[Optional[int], typer.Option(help="Override the profile's threads (clipped to this host's cores).")] = None,
    memory: Annotated[bool, typer.Option(help="Also measure memory in fresh processes.")] = True,
    processes: Annotated[int, typer.Option(help="Fresh processes for the memory median.")] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """ONNX Runtime latency (p50/p90/p99, mean, cv), memory and file size at a profile's settings."""
    from .latency.measure import format_measurement, measure_model

    res = measure_model(model, profile, memory=memory, processes=processes, threads=threads)
    if json_out:
        import json

        typer.echo(json.dumps(res, indent=2))
    else:
        typer.echo(format_measurement(res))


@app.command()
def lut(
    model: ModelOpt,
    profile: ProfileOpt = "raspberrypi4",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the latency table JSON.")] = None,
    export_only: Annotated[Optional[Path], typer.Option("--export-only", help="Only write the per-layer ONNX files, manifest and device_runner.py into this folder (measure on the device with `python device_runner.py DIR --out lut.json`).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="int8 or fp32 (default: the profile's quant preset).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Override the profile's threads (clipped to this host's cores).")] = None,
    rounds: Annotated[int, typer.Option(help="Alternating rounds (entries are medians over rounds).")] = 15,
    reps: Annotated[int, typer.Option(help="Runs per sub-model per round.")] = 5,
    num_labels: Annotated[int, typer.Option(help="Labels of the classifier head if the checkpoint has none (latency does not depend on it).")] = 2,
    ffn: Annotated[bool, typer.Option("--ffn/--no-ffn", help="Also measure each layer's FFN by kept width (needed to predict FFN pruning; ~+35% build time).")] = True,
) -> None:
    """Per-layer latency table: ORT latency of each layer with k = 0..H kept heads (and by kept FFN width), plus the rest of the model."""
    from .latency.table import build_lut, export_lut_models, format_lut
    from .task.modeling import load_model

    if out is None and export_only is None:
        raise typer.BadParameter("give --out lut.json (measure here) or --export-only DIR (measure on the device)")
    if out is not None:
        _check_out(out, folder=False)
    m, _ = load_model(model, num_labels=num_labels, with_tokenizer=False)
    if export_only is not None:
        manifest = export_lut_models(m, profile, export_only, precision=precision, rounds=rounds, reps=reps,
                                     ffn=ffn, log_fn=lambda s: typer.echo(s, err=True))
        typer.echo(f"wrote {manifest.parent}: copy the folder to the device and run "
                   f"`python {manifest.parent.name}/device_runner.py {manifest.parent.name} --out lut.json`")
        return
    table = build_lut(m, profile, out=out, precision=precision, threads=threads, rounds=rounds, reps=reps,
                      ffn=ffn, log_fn=lambda s: typer.echo(s, err=True))
    typer.echo(format_lut(table))
    typer.echo(f"wrote {out}")


@app.command("search")
def search_cmd(
    model: ModelOpt,
    data: Annotated[str, typer.Option("--data", "-d", help="Search split: CSV/TSV/JSONL file, dataset folder/name, or 'default'.")],
    out: OutOpt,
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="Device profile (seq_len, its latency table, the INT8 preset of the shipped file); as `build`.")] = "raspberrypi4",
    max_drop: Annotated[float, typer.Option(help="Accuracy bound in percentage points on the drop's upper confidence bound.")] = 1.0,
    confidence: Annotated[float, typer.Option(help="One-sided confidence of the bound.")] = 0.95,
    latency_table: Annotated[Optional[Path], typer.Option(help="Latency LUT JSON from `edgeprune lut` (else the profile's, else a FLOP proxy).")] = None,
    algorithm: Annotated[str, typer.Option(help="astar | greedy | oneshot | random")] = _S.algorithm,
    max_evals: Annotated[int, typer.Option(help="Evaluation budget (passes over the search split).")] = _S.max_evaluations,
    max_seconds: Annotated[Optional[float], typer.Option(help="Wall-time safety cap in seconds (0 = none).")] = _S.max_seconds,
    correction: Annotated[str, typer.Option(help="none | bonferroni (over the evaluation budget)")] = _S.correction,
    int8_aware: Annotated[bool, typer.Option("--int8-aware/--no-int8-aware", help="Keep room for the flips of the dense model in its shipped INT8 form.")] = _S.int8_aware,
    seed: Annotated[int, typer.Option(help="Seed (random baseline).")] = _S.seed,
    journal: Annotated[Optional[Path], typer.Option(help="Evaluation journal (default: <out>.journal.jsonl).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Replay the journal of an interrupted search.")] = False,
    text_column: Annotated[Optional[str], typer.Option(help="Text column of a file dataset.")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column of a file dataset.")] = None,
    structures: Annotated[str, typer.Option(help="heads | heads+ffn (attention heads and FFN neuron blocks in one search).")] = _S.structures,
    ffn_block_size: Annotated[Optional[int], typer.Option(help="Neurons per FFN block with --structures heads+ffn (default 128).")] = _S.ffn_block_size,
) -> None:
    """Search which attention heads (and FFN blocks) to remove, A* or a baseline, under an accuracy bound (the same
    search settings as `edgeprune build` unless told otherwise)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .search.run import run_search, write_plan

    settings = search_settings(algorithm=algorithm, max_evaluations=max_evals, max_seconds=max_seconds or None,
                               correction=correction, int8_aware=int8_aware, seed=seed,
                               structures=structures, ffn_block_size=ffn_block_size)
    _check_out(out, folder=False)
    journal = journal or out.with_name(out.name + ".journal.jsonl")
    try:
        with Progress(TextColumn("[bold]{task.fields[phase]}"), BarColumn(), MofNCompleteColumn(), TextColumn("evals"),
                      TextColumn("nodes {task.fields[nodes]}  best: {task.fields[best]}"), TimeElapsedColumn(),
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("search", total=max_evals, phase="loading", nodes=0, best="-")

            def on_progress(p):
                what = "units" if structures != "heads" else "heads"
                best = f"{p.best_removed} {what} removed, {p.best_latency_ms:.2f}, bound {p.best_bound_pts:.2f} pts"
                bar.update(task, completed=p.evaluations, phase=p.phase, nodes=p.nodes_expanded, best=best)

            result = run_search(model, data, settings=settings, profile=profile, latency_table=latency_table,
                                max_drop_pts=max_drop, confidence=confidence, journal=journal, resume=resume,
                                on_progress=on_progress, text_column=text_column, label_column=label_column)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the evaluations so far are in {journal}: continue with the same command "
                          "plus --resume") from None
    path = write_plan(result, out)
    unit = result.info.get("latency_source", {}).get("unit", "ms")
    ffn = (f" and {result.ffn_blocks_removed}/{sum(result.plan.ffn_num_blocks)} FFN blocks of "
           f"{result.plan.ffn_block_size}" if result.plan.has_ffn else "")
    typer.echo(
        f"{result.algorithm}: removed {result.heads_removed}/{sum(result.plan.num_heads)} heads{ffn}, search-split drop "
        f"{result.drop_pts:.2f} pts (bound {result.drop_bound_pts:.2f} <= {max_drop}), predicted "
        f"{result.base_latency_ms:.2f} -> {result.latency_ms:.2f} {unit}; {result.evaluations} evaluations, "
        f"{result.nodes_expanded} nodes, {result.wall_time_s:.0f} s, stopped by {result.stopped_by}. Wrote {path}"
    )


def search_settings(**options):
    """The search command's settings: the build's defaults (edgeprune.config.DEFAULT_SEARCH) with its options."""
    return _S.replace(**options)


@app.command()
def build(
    profile: ProfileOpt = "raspberrypi4",
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Fine-tuned model folder or hub id (default: the embedded MiniLM sentiment task).")] = None,
    data: Annotated[Optional[str], typer.Option(help="Labelled dataset: CSV, TSV, JSONL (split into search and certify parts).")] = None,
    certify_data: Annotated[Optional[str], typer.Option(help="Separate held-out dataset for certification.")] = None,
    max_drop: Annotated[float, typer.Option(help="Allowed accuracy drop in percentage points (certified).")] = 1.0,
    confidence: Annotated[float, typer.Option(help="Confidence of the certified bound.")] = 0.95,
    latency_table: Annotated[Optional[str], typer.Option(help="Latency table JSON measured on the device (edgeprune lut).")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder.")] = "edgeprune-out",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted build in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished build in --out.")] = False,
    algorithm: Annotated[str, typer.Option(help="astar, greedy, oneshot or random.")] = _S.algorithm,
    max_evals: Annotated[int, typer.Option(help="Search budget: evaluations of the search split (independent of machine speed).")] = _S.max_evaluations,
    search_seconds: Annotated[float, typer.Option(help="Search wall-time safety cap in seconds (0 = none); hitting it makes the result depend on machine speed.")] = _S.max_seconds,
    text_column: Annotated[Optional[str], typer.Option(help="Text column of --data.")] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(help="Second text column (pair tasks).")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column of --data.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for splits and search.")] = _S.seed,
    force: Annotated[bool, typer.Option(help="Write the bundle even if certification fails (exit code stays non-zero).")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickle checkpoints (runs code from the file: trusted files only).")] = False,
    structures: Annotated[str, typer.Option(help="heads+ffn (default: attention heads and FFN neuron blocks) | heads (heads only).")] = _S.structures,
    ffn_block_size: Annotated[Optional[int], typer.Option(help="Neurons per FFN block with --structures heads+ffn (default 128).")] = None,
    certify_fraction: Annotated[float, typer.Option(help="Share of --data that certifies (the rest is the search split); ignored with --certify-data; 0.6 by measurement, docs/certification.md).")] = 0.6,
    certify_plans: Annotated[Optional[int], typer.Option(help=f"Most plans the fixed-sequence certification tests (the unpruned one included; default {DEFAULT_SEQUENCE_PLANS}, {DISTILL_SEQUENCE_PLANS} with --recovery distill).")] = None,
    recovery: Annotated[str, typer.Option(help="What each pruned plan gets before it is certified: distill (default: the least-squares weight refit, then distillation of the searched plan when it lies beyond --max-drop; see docs/recovery.md), refit (the refit alone, no training), scale or none.")] = "distill",
    distill_epochs: Annotated[float, typer.Option(help="Passes over the distillation texts for the distilled plan (--recovery distill).")] = 2.0,
    distill_ce_weight: Annotated[float, typer.Option(help="Weight of the cross-entropy on the gold labels next to the KL term in distillation (0 = KL only).")] = 0.5,
    distill_int8_aware: Annotated[bool, typer.Option("--distill-int8-aware/--distill-float", help="Distil through the simulated INT8 forward pass of the shipped file (quantization-aware), or in float.")] = False,
    distill_data: Annotated[Optional[str], typer.Option(help="Extra in-domain texts for distillation (one per line, or a CSV/TSV/JSONL); never the certify data.")] = None,
    distill_augment: Annotated[int, typer.Option(help="Augmented unlabelled variants per distillation text (words masked, replaced, windowed; KL term only; 0 = none).")] = 0,
    search_slack: Annotated[Optional[float], typer.Option(help="Points the search may lose before distillation, on top of --max-drop (default: 1.5 with --recovery distill, else 0); certification still holds every plan to --max-drop.")] = None,
    no_recovery: Annotated[bool, typer.Option("--no-recovery", help="Same as --recovery none.", hidden=True)] = False,
) -> None:
    """Search, prune, export, quantize, certify and measure: the whole job in one command."""
    from .pipeline import BuildConfig
    from .pipeline import build as run_build

    cfg = BuildConfig(
        profile=profile, model=model, data=data, certify_data=certify_data, max_drop_pts=max_drop,
        confidence=confidence, latency_table=latency_table, out=out, resume=resume, overwrite=overwrite,
        algorithm=algorithm, max_evaluations=max_evals, search_seconds=search_seconds or None,
        text_column=text_column, text_pair_column=text_pair_column,
        label_column=label_column, seed=seed, force=force, allow_pickle=allow_pickle,
        structures=structures, ffn_block_size=ffn_block_size, recovery="none" if no_recovery else recovery,
        certify_fraction=certify_fraction, certify_plans=certify_plans, distill_epochs=distill_epochs,
        distill_ce_weight=distill_ce_weight, distill_int8_aware=distill_int8_aware, distill_data=distill_data, search_slack_pts=search_slack,
        distill_augment=distill_augment,
    )
    try:
        report = run_build(cfg)
    except KeyboardInterrupt as exc:
        raise Interrupted(str(exc) or "interrupted; continue with the same command plus --resume") from None
    acc, lat, heads = report["accuracy"], report["latency_ms"], report["heads"]
    cert = report.get("certification") or {}
    for t in cert.get("tests") or []:
        typer.echo(f"certification {t['name']}: {t['heads_removed']} heads and {t['ffn_blocks_removed']} FFN blocks "
                   f"removed, bound {t['drop_upper_bound_pts']:.2f} pts -> {'pass' if t['passed'] else 'FAIL'}"
                   + ("  <- shipped" if t["name"] == cert.get("shipped") else ""))
    typer.echo(
        f"\n{heads['removed']} of {heads['total']} heads removed{_ffn_summary(report)} | certify accuracy {100 * acc['baseline']:.2f}% -> "
        f"{100 * acc['final']:.2f}% (drop <= {acc['drop_upper_bound_pts']:.2f} pts at {100 * acc['confidence']:.0f}%)\n"
        f"p50 latency: dense FP32 {lat['dense_fp32']['p50']:.2f} ms | dense INT8 {lat['dense_int8']['p50']:.2f} ms | "
        f"final {lat['final']['p50']:.2f} ms ({lat['measured_on']})\n"
        f"wrote {out}/bundle, {out}/report.md, {out}/report.json, {out}/pareto.png"
    )
    settings = lat.get("settings", {})
    if settings.get("threads_requested") not in (None, settings.get("threads")):
        typer.echo(f"threads: {settings.get('threads')} used (profile asks for {settings['threads_requested']}); "
                   f"build time {report['wall_s']:.0f} s over {report.get('timing', {}).get('processes', 1)} "
                   "process(es)")
    if report["warnings"]:
        for w in report["warnings"]:
            typer.secho(f"WARNING: {w}", fg=typer.colors.RED, bold=True, err=True)
    if any("CERTIFICATION FAILED" in w for w in report["warnings"]):
        banner = "#" * 78
        typer.secho(f"{banner}\n###  NOT CERTIFIED: THIS BUNDLE BREAKS THE ACCURACY BOUND (shipped with --force)  ###\n"
                    f"{banner}", fg=typer.colors.RED, bold=True, err=True)
        raise typer.Exit(code=3)


def _ffn_summary(report: dict) -> str:
    ffn = report.get("ffn")
    if not ffn:
        return ""
    return f", {ffn['blocks_removed']} of {ffn['blocks_total']} FFN blocks ({ffn['block_size']} neurons)"


def _crash_file(exc: BaseException) -> Optional[Path]:
    """Write the full traceback (plus version and command line) to a file; None if even that fails."""
    import os
    import tempfile
    import traceback

    from . import __version__

    try:
        fd, path = tempfile.mkstemp(prefix="edgeprune-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"edgeprune {__version__}\ncommand: {' '.join(sys.argv)}\n\n")
            fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return Path(path)
    except OSError:
        return None


def main() -> None:
    """Console-script entry point: runs the app and maps errors to exit codes (README "Commands", docs/errors.md).

    Expected failures print one line on stderr and exit 2 (bad input), 3 (not certified), 4 (self-check failed) or 5
    (the system refused a read or write); Ctrl-C exits 130; anything else is a bug: a short message, the file
    holding the full traceback, exit 70.
    """
    from .output.folder import describe_os_error, is_system_refusal

    use_cli_names()
    try:
        app()
    except Interrupted as exc:
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        sys.exit(exc.exit_code)
    except EdgepruneError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no wall of traceback for the user
        refusal = is_system_refusal(exc)
        if refusal is not None:
            from .errors import EXIT_SYSTEM

            typer.secho(f"error: {describe_os_error(refusal)}", fg=typer.colors.RED, err=True)
            sys.exit(EXIT_SYSTEM)
        path = _crash_file(exc)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        where = f"the full traceback is in {path}" if path else "the traceback could not be written to a file"
        typer.secho(f"internal error: {type(exc).__name__}: {first}\n"
                    f"this is a bug in edgeprune or a library it uses; {where} (please attach it to a bug report)",
                    fg=typer.colors.RED, err=True)
        if path is None:
            import traceback

            traceback.print_exception(type(exc), exc, exc.__traceback__)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    main()
