"""Benchmark (issue #20, "Scale"): edgeprune's own stages on a BERT-base-size model (12 layers x 12 heads, hidden
768, FFN 3072), random weights (only time and memory are measured, not accuracy).

Goal: the search at ``edgeprune build``'s default budget takes <= 30 min at BERT-base size on this 2-core host.

What it measures, each with the product's own code (nothing re-implemented):

1. **Model and data.** A ``BertForSequenceClassification`` of the given size with random weights (seeded, 2 labels,
   vocabulary 30522 so the default task's tokenizer, the uncased MiniLM-L6 WordPiece of
   :func:`edgeprune.task.default.default_task`, works), saved with safetensors together with that tokenizer. The
   data CSV: ``--rows`` of the default task's sentences (sampled with ``--seed``), labelled with the random model's
   own predictions (:class:`edgeprune.search.evaluate.MaskedEvaluator`, the search's engine) with a fraction
   ``--flip`` of them flipped, so the unpruned model is right on ~95% and a plan's flips count as worse or better
   as on a real task. *Why this labelling*: a random BERT predicts (almost) one class for every text (measured and
   recorded: ``task.prediction_counts``), so labels independent of the model would make the accuracy meaningless,
   while the model's own predictions make the promise testable. What it implies for the search: a model that
   predicts one class for every text is expected to keep doing so after removals (checked on 96 sentences with
   half the heads masked: no prediction changed), so candidates stay within the promise, no evaluation stops early
   and the search spends its whole budget on full passes -- the cost side of a real search (the five default-task
   builds of ``builds-distill-2026-12-01`` had no early stops either), not its accuracy side. The record shows
   what happened (``build.search.early_rejection``, the shipped plan).
   The default ``--rows 5283`` gives the build a 40% search split of 2,113 sentences, the default task's size.
2. **Latency table** (issue: build time, prediction error, peak memory): exactly what ``edgeprune build`` builds
   when ``--latency-table`` is not given (``build_lut(clone_model(model), profile, ffn=...)`` with the table's
   default rounds: heads and FFN axes for the default ``--structures heads+ffn``), timed, with the process's peak
   RSS during it (kernel VmHWM, reset before). Its prediction error: ``--plans`` random joint plans (10-70% of the
   heads and 10-80% of the FFN blocks removed, :func:`benchmarks.lut_accuracy.random_joint_plans`) compiled like the
   bundle and measured side by side with the unpruned model (:func:`edgeprune.latency.measure.measure_alternating`,
   paired rounds; :func:`benchmarks.lut_accuracy.measure_plans`), against ``predict(lut, plan)``.
3. **The build**: ``edgeprune build`` as a subprocess on that model and CSV, at the default search budget and
   pricing (``--max-evals`` = the build's default, candidates priced after the least-squares refit), reusing the
   table of step 2 (``--build-lut`` lets the build measure its own). Search wall time, per-stage times and the
   search's own record are read from the build's ``report.json`` / ``plan.json``, not timed here. Peak memory of
   the whole build: the largest process's peak RSS from the kernel (``getrusage(RUSAGE_CHILDREN)`` in a thin
   wrapper process, so nothing else this benchmark ran is counted) and the sum over the process tree sampled every
   0.5 s (psutil), against the baseline of a fresh interpreter that only imports the build's libraries.

Choices that differ from a plain ``edgeprune build`` (and why):

* ``--search-seconds 0`` (no wall-time cap) by default: the build's default cap (600 s) would stop a BERT-base
  search by time and the figure would be the cap, not the cost of the budget. The evaluations a capped build
  would have reached are estimated from the journal's growth (``search.evaluations_within_default_cap``).
* ``--recovery refit`` by default: the search prices candidates with the refit under both ``refit`` and
  ``distill`` (the build's default), so the search measured is the default one. ``--recovery distill`` adds the
  distillation of the searched plan (2 epochs over the search split: roughly 8 min on 2 cores, scaled from the
  default task's ~4 min by compute and data size, not measured) and its certification, and gives the search the
  1.5-point slack.

Latencies are measured on this host with the profile's settings (raspberrypi4 by default), not on a Raspberry Pi.

Usage::

    python -m benchmarks.scale [--out DIR] [--recovery refit] [--skip-build] [build arguments]

``--help`` lists the rest (``--rows``, ``--max-evals``, ``--search-seconds``, ``--build-lut``, ``--plans``, the model
size ``--layers --heads --hidden --ffn``); arguments it does not know go to ``edgeprune build`` unchanged. Writes
``benchmarks/results/scale-<date>.json`` and ``.md`` (``--name`` changes the stem, ``--results`` the folder).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

#: BERT-base: the size the goal is about (``--layers --heads --hidden --ffn`` default to it).
BERT_BASE = {"layers": 12, "heads": 12, "hidden": 768, "ffn": 3072}
#: The goal: the search at the build's default budget within 30 minutes at BERT-base size.
SEARCH_GOAL_S = 30 * 60
#: 40% of 5,283 rows = 2,113: the build's search split is then as large as the default task's.
DEFAULT_ROWS = 5283
#: Vocabulary of the default task's tokenizer (uncased WordPiece, as bert-base-uncased).
DEFAULT_VOCAB = 30522
#: What the benchmark's build sets unless told otherwise (see the module docstring for why).
DEFAULT_RECOVERY = "refit"
DEFAULT_SEARCH_SECONDS = 0.0
SAMPLE_S = 0.5

# A thin parent for the build: its RUSAGE_CHILDREN peak is the build's (and its children's) alone. Written as one
# line so `ps` shows the command; argv: usage file, then the build command.
_WRAPPER = ("import json, resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
            "ru = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "open(sys.argv[1], 'w').write(json.dumps({'exit_code': rc, 'maxrss_kib': ru.ru_maxrss, "
            "'user_s': ru.ru_utime, 'sys_s': ru.ru_stime}))")
# What the baseline interpreter imports: the libraries a build loads before it reads a model.
_BASELINE_IMPORTS = "import torch, transformers, onnxruntime, edgeprune.pipeline, edgeprune.search.evaluate"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# 1. model and data
# ---------------------------------------------------------------------------------------------------------------------
def make_model(layers: int, heads: int, hidden: int, ffn: int, *, vocab_size: int = DEFAULT_VOCAB, seed: int = 0,
               max_positions: int = 512) -> Any:
    """A randomly initialised ``BertForSequenceClassification`` (2 labels, eval mode) of the given size.

    transformers' own initialisation (``initializer_range`` 0.02, as a BERT checkpoint before pre-training); the
    labels are named like the default task's (negative / positive).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=max_positions, num_labels=2,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    return BertForSequenceClassification(cfg).eval()


def default_task_inputs(rows: int, seed: int) -> tuple[Any, list[str], str]:
    """The default task's tokenizer and ``rows`` of its sentences (all splits pooled, sampled with ``seed``).

    Prepares the default task if it is not cached yet (:func:`edgeprune.task.default.default_task`).

    Returns:
        ``(tokenizer, texts, description of the source)``.
    """
    from transformers import AutoTokenizer

    from edgeprune.task.default import default_task

    task = default_task(progress=True)
    pool = [t for name in ("finetune", "search", "certify") for t in task.splits[name].texts]
    if rows > len(pool):
        raise ValueError(f"--rows {rows}: the default task has {len(pool)} sentences")
    texts = [pool[i] for i in random.Random(seed).sample(range(len(pool)), rows)]
    tok = AutoTokenizer.from_pretrained(str(task.model_dir))
    return tok, texts, (f"{rows} of the default task's {len(pool)} Rotten Tomatoes sentences (all splits, sampled "
                        f"with seed {seed}); tokenizer of {task.model_dir}")


def write_task(model: Any, tokenizer: Any, texts: Sequence[str], folder: Path, *, flip: float, seed: int,
               max_length: int = 128) -> dict[str, Any]:
    """Save the model (safetensors) and tokenizer to ``folder/model`` and the labelled CSV ``folder/data.csv``.

    Labels are the model's own argmax (the search's evaluator, no masking) with ``round(flip * n)`` of them, chosen
    with ``seed``, set to the other class.

    Returns:
        The task record: paths, rows, prediction and label counts, flips, seconds spent labelling.
    """
    from edgeprune.search.evaluate import MaskedEvaluator
    from edgeprune.task.data import TextDataset

    folder = Path(folder)
    model_dir = folder / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    t0 = time.perf_counter()
    ev = MaskedEvaluator(model, tokenizer, TextDataset(list(texts), [0] * len(texts)), batch_size=32,
                         max_length=max_length, cache_mb=0)
    preds = [int(p) for p in ev.predict()]
    label_s = time.perf_counter() - t0
    labels = list(preds)
    flipped = random.Random(seed).sample(range(len(labels)), round(flip * len(labels)))
    for i in flipped:
        labels[i] = 1 - labels[i]
    data = folder / "data.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return {
        "model_dir": str(model_dir), "data": str(data), "rows": len(texts), "flip_fraction": flip,
        "flipped": len(flipped), "prediction_counts": {str(c): preds.count(c) for c in (0, 1)},
        "label_counts": {str(c): labels.count(c) for c in (0, 1)},
        "unpruned_accuracy": sum(p == y for p, y in zip(preds, labels)) / len(labels),
        "label_seconds": round(label_s, 2), "label_max_length": max_length,
        "safetensors": sorted(p.name for p in model_dir.glob("*.safetensors")),
    }


# ---------------------------------------------------------------------------------------------------------------------
# 2. latency table: build time, peak memory, prediction error
# ---------------------------------------------------------------------------------------------------------------------
def _status_mib(key: str) -> Optional[float]:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), in MiB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_lut(model_dir: Path, profile: str, out: Path, *, rounds: int, reps: int,
                log_fn: Callable[[str], None] = log) -> tuple[dict, dict[str, Any]]:
    """Build the latency table as ``edgeprune build`` does without ``--latency-table``, timed, saved to ``out``.

    Returns:
        ``(lut, record)``: record with ``build_s`` (timed here), the table's own ``export_s`` / ``measure_s``, the
        process's RSS before and its peak during the build (MiB), axes, rounds and where it was measured.
    """
    from edgeprune.config import DEFAULT_SEARCH
    from edgeprune.latency.table import DEFAULT_REPS, DEFAULT_ROUNDS, build_lut, save_lut
    from edgeprune.task.modeling import clone_model, load_model

    model, _ = load_model(str(model_dir), with_tokenizer=False)
    ffn = DEFAULT_SEARCH.structures == "heads+ffn"  # the pipeline's rule for the default --structures
    hwm = _reset_peak()
    rss_before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    lut = build_lut(clone_model(model), profile, ffn=ffn, rounds=rounds, reps=reps, log_fn=log_fn)
    build_s = time.perf_counter() - t0
    # The kernel's RSS counters are approximate (per-CPU batches), so VmHWM can read ~0.1 MiB below a VmRSS read
    # taken right after the reset (tests/test_scale.py saw 624.27 < 624.39 twice in session 8); the peak of the
    # table build is at least the RSS it started from.
    peak = _status_mib("VmHWM") if hwm else None
    if peak is not None and rss_before is not None:
        peak = max(peak, rss_before)
    save_lut(lut, out)
    method, prov = lut.get("method") or {}, lut.get("provenance") or {}
    return lut, {
        "path": str(out), "build_s": round(build_s, 2), "export_s": method.get("export_seconds"),
        "measure_s": method.get("measure_seconds"), "ffn_axis": ffn, "rounds": rounds, "reps": reps,
        "builds_default_rounds": (rounds, reps) == (DEFAULT_ROUNDS, DEFAULT_REPS),
        "threads": (lut.get("settings") or {}).get("threads"), "seq_len": (lut.get("settings") or {}).get("seq_len"),
        "ffn_widths": [row["widths"] for row in lut["ffn"]["layers"]] if ffn else None,
        "rss_before_mib": rss_before, "peak_rss_mib": peak,
        "peak_rss_note": "this benchmark's process, kernel VmHWM reset just before build_lut: the loaded model, its "
                         "clone and the sub-model export/measurement" if hwm else "VmHWM reset not available",
        "full_model_ms": lut.get("full_model_ms"), "rest_ms": lut.get("rest_ms"),
        "calibration_factor": lut.get("calibration_factor"), "where": prov.get("where"),
        "measured_on": prov.get("measured_on"), "loadavg": prov.get("loadavg"),
        "threads_note": (lut.get("settings") or {}).get("threads_note"),
    }


def measure_lut_error(model_dir: Path, lut: dict, profile: str, work: Path, *, plans: int, plan_rounds: int,
                      reps: int, seed: int) -> dict[str, Any]:
    """Predicted vs measured latency of ``plans`` random joint plans (FFN blocks of the build's default size).

    The plans and the unpruned model are compiled like the bundle and measured in one alternation (the unpruned
    model is each plan's anchor), with :mod:`benchmarks.lut_accuracy`'s functions; the errors are theirs.

    Returns:
        ``{"plans": rows, "error": ..., "error_anchored": ..., "error_ratio": ..., ...}``.
    """
    from benchmarks.lut_accuracy import compile_plans, error_summary, measure_plans, plan_errors, random_joint_plans
    from edgeprune.adapters import get_adapter
    from edgeprune.plan import HeadPlan
    from edgeprune.profiles import load_profile
    from edgeprune.search.run import default_block_size
    from edgeprune.task.modeling import load_model

    prof = load_profile(profile)
    model, _ = load_model(str(model_dir), with_tokenizer=False)
    adapter = get_adapter(model)
    heads = list(adapter.layout(model).heads_per_layer)
    ffn_sizes = [int(w) for w in adapter.ffn_sizes(model)]
    block = default_block_size(ffn_sizes)
    plan_list = [HeadPlan.full(heads)] + random_joint_plans(heads, ffn_sizes, block, plans, seed)
    plan_dir = Path(work) / "plans"
    shutil.rmtree(plan_dir, ignore_errors=True)  # compile_plans reuses files it finds: never an earlier run's
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeprune-scale-", dir=work) as tmp:
        paths = compile_plans(model, plan_list, prof.quant.for_precision(None), plan_dir, Path(tmp))
    compile_s = time.perf_counter() - t0
    del model
    t0 = time.perf_counter()
    meas = measure_plans(paths, prof, rounds=plan_rounds, reps=reps, threads=None, seed=seed, chunk=max(1, plans))
    measure_s = time.perf_counter() - t0
    rows = plan_errors(lut, plan_list, meas)
    return {
        "plans": rows, "ffn_block": block, "plan_rounds": plan_rounds, "reps": reps, "seed": seed,
        "round_value": "best of reps; median over rounds", "threads": meas["threads"], "seq_len": meas["seq_len"],
        "batch": meas["batch"], "compile_s": round(compile_s, 2), "measure_s": round(measure_s, 2),
        "error": error_summary(rows, "error"), "error_anchored": error_summary(rows, "error_anchored"),
        "error_ratio": error_summary(rows, "error_ratio"),
        "full_model_lut_ms": lut.get("full_model_ms"),
        "full_model_measured_with_plans_ms": meas["full_ms"][0] if meas["full_ms"] else None,
        "measured_on": meas["measured_on"], "threads_note": meas["threads_note"],
    }


# ---------------------------------------------------------------------------------------------------------------------
# 3. the build as a subprocess: search time, stages, peak memory
# ---------------------------------------------------------------------------------------------------------------------
def build_command(model_dir: Path, data: Path, out: Path, profile: str, *, max_evals: int, recovery: str,
                  search_seconds: float, latency_table: Optional[Path], extra: Sequence[str] = ()) -> list[str]:
    """The ``edgeprune build`` command line (this interpreter); ``extra`` appended unchanged."""
    cmd = [sys.executable, "-m", "edgeprune.cli", "build", "--profile", profile, "--model", str(model_dir),
           "--data", str(data), "--out", str(out), "--max-evals", str(max_evals), "--recovery", recovery,
           "--search-seconds", f"{search_seconds:g}"]
    if latency_table is not None:
        cmd += ["--latency-table", str(latency_table)]
    return cmd + list(extra)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _count_evals(journal: Path) -> int:
    """Evaluation records in a search journal (a half-written last line is skipped, as the journal does)."""
    n = 0
    try:
        text = journal.read_text(encoding="utf-8")
    except OSError:
        return 0
    for line in text.splitlines():
        try:
            n += json.loads(line).get("kind") == "eval"
        except (ValueError, AttributeError):
            continue
    return n


def run_measured(cmd: Sequence[str], *, journal: Optional[Path] = None, log_path: Optional[Path] = None,
                 sample_s: float = SAMPLE_S) -> dict[str, Any]:
    """Run ``cmd`` under the wrapper; its peak memory, CPU time and (with ``journal``) the search's progress.

    Returns:
        ``exit_code``, ``wall_s`` (timed here), ``max_rss_largest_process_mib`` (kernel: the largest of the
        command's processes, children included), ``peak_rss_tree_sampled_mib`` (sum over the process tree, sampled
        every ``sample_s``), ``user_s`` / ``sys_s`` and ``journal_timeline``: ``[seconds since the journal appeared,
        evaluations]`` at each change.
    """
    import psutil

    with tempfile.TemporaryDirectory(prefix="edgeprune-scale-") as tmp, \
            (open(log_path, "w") if log_path is not None else contextlib.nullcontext()) as out:
        usage = Path(tmp) / "usage.json"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(usage), *cmd], cwd=ROOT, env=_child_env(),
                                stdout=out, stderr=subprocess.STDOUT if out is not None else None)
        tree_peak, samples, timeline, j0, last, j_size = 0, 0, [], None, -1, -1
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            total = 0
            try:
                for p in [root] + root.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        total += p.memory_info().rss
            except psutil.NoSuchProcess:  # the wrapper ended between poll() and here
                pass
            tree_peak, samples = max(tree_peak, total), samples + 1
            if journal is not None:
                with contextlib.suppress(OSError):
                    size = journal.stat().st_size  # OSError until the search creates it
                    now = time.perf_counter()
                    j0 = now if j0 is None else j0
                    if size != j_size:
                        j_size, n = size, _count_evals(journal)
                        if n != last:
                            timeline.append([round(now - j0, 1), n])
                            last = n
            time.sleep(sample_s)
        wall = time.perf_counter() - t0
        rec = json.loads(usage.read_text()) if usage.is_file() else {"exit_code": proc.returncode}
    return {
        "exit_code": rec.get("exit_code"), "wall_s": round(wall, 2),
        "max_rss_largest_process_mib": rec["maxrss_kib"] / 1024 if "maxrss_kib" in rec else None,
        "peak_rss_tree_sampled_mib": tree_peak / 2**20, "samples": samples, "sample_s": sample_s,
        "user_s": rec.get("user_s"), "sys_s": rec.get("sys_s"), "journal_timeline": timeline,
    }


def memory_baseline() -> dict[str, Any]:
    """Peak RSS of a fresh interpreter that only imports the build's libraries, measured like the build."""
    rec = run_measured([sys.executable, "-c", _BASELINE_IMPORTS], sample_s=0.1)
    if rec["exit_code"] != 0:
        raise RuntimeError(f"the baseline interpreter failed ({rec['exit_code']}): {_BASELINE_IMPORTS}")
    return {"imports": _BASELINE_IMPORTS, "max_rss_mib": rec["max_rss_largest_process_mib"],
            "peak_rss_tree_sampled_mib": rec["peak_rss_tree_sampled_mib"]}


def evaluations_within(timeline: Sequence[Sequence[float]], seconds: Optional[float]) -> Optional[int]:
    """Evaluations the journal held ``seconds`` after it appeared (None without a timeline or a cap)."""
    if not timeline or seconds is None:
        return None
    return max([int(n) for t, n in timeline if t <= seconds], default=0)


def run_build(model_dir: Path, data: Path, out: Path, profile: str, *, max_evals: int, recovery: str,
              search_seconds: float, latency_table: Optional[Path], extra: Sequence[str] = (),
              log_path: Optional[Path] = None) -> dict[str, Any]:
    """``edgeprune build`` as a subprocess, measured; the figures the build recorded itself are read back.

    Returns:
        The build record: command, exit code, CPU time, peak memory, wall time timed here, and
        :func:`read_build`'s figures (the build's own wall time, stages, search, shipped plan).
    """
    if out.exists():  # this benchmark's own build folder from an earlier run
        shutil.rmtree(out)
    cmd = build_command(model_dir, data, out, profile, max_evals=max_evals, recovery=recovery,
                        search_seconds=search_seconds, latency_table=latency_table, extra=extra)
    log("running: " + shlex.join(cmd))
    meas = run_measured(cmd, journal=out / ".edgeprune" / "search.journal.jsonl", log_path=log_path)
    rec: dict[str, Any] = {"command": shlex.join(["edgeprune", *cmd[3:]]), "exit_code": meas["exit_code"],
                           "out": str(out), "recovery": recovery, "lut_reused": latency_table is not None,
                           "timed_wall_s": meas["wall_s"], "cpu_s": {"user": meas["user_s"], "sys": meas["sys_s"]},
                           "memory": {k: meas[k] for k in ("max_rss_largest_process_mib", "peak_rss_tree_sampled_mib",
                                                           "samples", "sample_s")}}
    rec.update(read_build(out, meas["journal_timeline"], max_evals=max_evals, search_seconds=search_seconds,
                          log_path=log_path))
    return rec


def read_build(out: Path, timeline: Sequence[Sequence[float]], *, max_evals: int, search_seconds: float,
               log_path: Optional[Path] = None) -> dict[str, Any]:
    """What a build folder recorded about itself: stages, the search, the shipped plan (see :func:`run_build`).

    Without ``report.json`` (the build stopped after its search, e.g. in certification) the search is read from the
    build's state folder (``.edgeprune/search.json``, which holds plan.json's search record and the stage's wall
    time) and the stage times from ``.edgeprune/sessions.json``; ``error`` then says why there is no report.

    Args:
        timeline: the journal's growth while the build ran (:func:`run_measured`).
        max_evals, search_seconds: what the build was given (for a build that left no report).
        log_path: the build's log, whose tail is kept when the build failed.
    """
    from edgeprune.config import DEFAULT_SEARCH

    rec: dict[str, Any] = {}
    report_path, state = out / "report.json", out / ".edgeprune"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    # plan.json's search section is the search's own record; the build's state folder keeps it (and the per-stage
    # times) when the build stopped after its search, e.g. in certification, so the search is measured anyway.
    search_stage = state / "search.json"
    plan_search: dict[str, Any] = {}
    if search_stage.is_file():
        plan_search = (json.loads(search_stage.read_text()).get("plan") or {}).get("search") or {}
    if report is None:
        rec["error"] = "the build wrote no report.json"
        if log_path is not None:
            rec["log_tail"] = Path(log_path).read_text(errors="replace").splitlines()[-15:]
        sessions = []
        if (state / "sessions.json").is_file():
            sessions = json.loads((state / "sessions.json").read_text()).get("sessions", [])
        stages: dict[str, float] = {}
        for sess in sessions:  # summed over the build's processes, as its report would
            for k, v in (sess.get("stages_s") or {}).items():
                stages[k] = stages.get(k, 0.0) + float(v)
        rec["stages_s"] = stages or None
        if not plan_search:
            return rec
        # the search stage's wall time as the pipeline recorded it (report.json sums it over processes)
        s = {"wall_s": plan_search.get("pipeline_wall_s"), "evaluations": plan_search.get("evaluations"),
             "max_evaluations": max_evals, "stopped_by": plan_search.get("stopped_by"),
             "max_seconds": search_seconds or None, "nodes_expanded": plan_search.get("nodes_expanded")}
        rec["search_from"] = str(search_stage)
    else:
        s = report.get("search") or {}
        rec["search_from"] = "report.json"
    evals = s.get("evaluations")
    cap = DEFAULT_SEARCH.max_seconds
    rec["search"] = {
        "wall_s": s.get("wall_s"), "evaluations": evals, "max_evaluations": s.get("max_evaluations"),
        "stopped_by": s.get("stopped_by"), "max_seconds": s.get("max_seconds"),
        "nodes_expanded": s.get("nodes_expanded"), "search_loop_s": plan_search.get("wall_time_s"),
        "per_evaluation_s": (s["wall_s"] / evals) if s.get("wall_s") and evals else None,
        "pricing": plan_search.get("pricing"), "early_rejection": plan_search.get("early_rejection"),
        "default_cap_s": cap, "evaluations_within_default_cap": evaluations_within(timeline, cap),
        "journal_timeline": [list(x) for x in timeline],
    }
    if report is None:
        return rec
    acc, timing, heads, ffn = (report.get(k) or {} for k in ("accuracy", "timing", "heads", "ffn"))
    lat = report.get("latency_ms") or {}
    rec.update({
        "wall_s": report.get("wall_s"), "stages_s": timing.get("stages_s"), "processes": timing.get("processes"),
        "shipped": {"name": (report.get("certification") or {}).get("shipped"),
                    "heads_removed": heads.get("removed"), "heads_total": heads.get("total"),
                    "ffn_blocks_removed": ffn.get("blocks_removed", 0), "ffn_blocks_total": ffn.get("blocks_total", 0),
                    "certified": acc.get("certified"), "drop_upper_bound_pts": acc.get("drop_upper_bound_pts"),
                    "certify_examples": acc.get("certify_examples")},
        "search_split": ((report.get("data") or {}).get("search") or {}).get("size"),
        "latency_measured_on": lat.get("measured_on"),
        "p50_ms": {k: (lat.get(k) or {}).get("p50") for k in ("dense_fp32", "dense_int8", "final")},
    })
    return rec


# ---------------------------------------------------------------------------------------------------------------------
# the goal and the record
# ---------------------------------------------------------------------------------------------------------------------
def is_bert_base(model: dict[str, Any]) -> bool:
    """Whether the record's model is BERT-base size (the size the goal is about)."""
    return all(model.get(k) == v for k, v in BERT_BASE.items())


def search_goal(rec: dict[str, Any], target_s: float = SEARCH_GOAL_S) -> dict[str, Any]:
    """The goal "search <= 30 min at BERT-base" from a scale record: ``{"goal", "measured", "reached"}``.

    ``reached`` is None (not measured) when the build was skipped or failed before its report, when the model is
    not BERT-base size, or when a wall-time cap at or below the target stopped the search before its budget; a cap
    above the target that stopped it means the search took longer than the target (False).
    """
    goal = f"search <= {target_s / 60:g} min at BERT-base size (default budget)"
    m = rec.get("model") or {}
    size = f"{m.get('layers')} x {m.get('heads')} heads, hidden {m.get('hidden')}, FFN {m.get('ffn')}"
    b = rec.get("build") or {}
    s = b.get("search") or {}
    if b.get("skipped"):
        return {"goal": goal, "measured": "not measured (--skip-build)", "reached": None}
    if s.get("wall_s") is None:
        return {"goal": goal, "measured": f"not measured: {b.get('error', 'no search time recorded')}",
                "reached": None}
    text = (f"{_dur(s['wall_s'])} for {s.get('evaluations')} of {s.get('max_evaluations')} evaluations "
            f"(stopped by {s.get('stopped_by')})")
    if not is_bert_base(m):
        return {"goal": goal, "measured": f"{text} at {size}: not BERT-base size", "reached": None}
    if s.get("stopped_by") == "time":
        cap = s.get("max_seconds")
        if cap is not None and cap > target_s:
            return {"goal": goal, "measured": text + f"; the {cap:g} s cap stopped it", "reached": False}
        return {"goal": goal, "measured": text + f"; the {cap} s cap stopped it before its budget", "reached": None}
    return {"goal": goal, "measured": text, "reached": s["wall_s"] <= target_s}


def _dur(seconds: float) -> str:
    """``12.3 min`` from a minute up, else ``42 s``."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _f(x: Optional[float], fmt: str = ".1f", unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{fmt}}{unit}"


def summary_lines(rec: dict[str, Any]) -> list[str]:
    """A few sentences of a scale record, for benchmarks/report.py's short Scale section."""
    m, lut, err, b = rec["model"], rec["lut"], rec.get("lut_error"), rec.get("build") or {}
    size = (f"{m['layers']} layers x {m['heads']} heads, hidden {m['hidden']}, FFN {m['ffn']}"
            + ("" if is_bert_base(m) else " (not BERT-base size)"))
    out = [f"Model: {size}, random weights, {m['parameters']:,} parameters; {rec['where']}."]
    line = (f"Latency table ({'heads + FFN' if lut['ffn_axis'] else 'heads'}, as `edgeprune build` measures it): "
            f"built in {_dur(lut['build_s'])} (export {_f(lut['export_s'], '.0f')} s, measuring "
            f"{_f(lut['measure_s'], '.0f')} s), peak RSS {_f(lut['peak_rss_mib'], '.0f')} MiB")
    if err:
        line += (f"; prediction error over {len(err['plans'])} random joint plans (median / max |error|): raw "
                 f"{_pct(err['error']['median_abs'])} / {_pct(err['error']['max_abs'])}, anchored to the unpruned "
                 f"model measured with them {_pct(err['error_anchored']['median_abs'])} / "
                 f"{_pct(err['error_anchored']['max_abs'])}")
    out.append(line + ".")
    if b.get("skipped"):
        out.append("Build: not run (--skip-build).")
    elif b.get("search"):
        s, mem = b["search"], b["memory"]
        cap = s.get("evaluations_within_default_cap")
        out.append(f"Search at the default budget ({s['max_evaluations']} evaluations, "
                   f"{(s.get('pricing') or {}).get('kind', 'masked')} pricing, search split {b.get('search_split')}): "
                   f"{_dur(s['wall_s'])} for {s['evaluations']} evaluations, stopped by "
                   f"{s['stopped_by']} ({_f(s['per_evaluation_s'])} s each)"
                   + (f"; the build's default {s['default_cap_s']:g} s cap would have stopped it after about {cap}"
                      if cap is not None and cap < (s["evaluations"] or 0) else "") + ".")
        whole = (f"{_dur(b['wall_s'])}" if b.get("wall_s") is not None
                 else f"stopped after its search ({b.get('error')})")
        out.append(f"Whole build ({b['recovery']} recovery, {'the table above reused' if b['lut_reused'] else 'own table'}"
                   f"): {whole}; peak RSS {mem['peak_rss_mib']:.0f} MiB "
                   f"({mem['above_baseline_mib']:.0f} MiB above the {mem['baseline_mib']:.0f} MiB of the libraries "
                   f"alone); exit code {b['exit_code']}.")
    else:
        out.append(f"Build: failed ({b.get('error')}).")
    return out


def markdown(rec: dict[str, Any]) -> str:
    """The result file's Markdown (also what benchmarks/report.py shows when the run left no .md)."""
    m, t, lut, err, b = rec["model"], rec["task"], rec["lut"], rec.get("lut_error"), rec.get("build") or {}
    goal = search_goal(rec)
    lines = [f"# Scale: BERT-family classifier at {m['layers']} x {m['heads']} heads, hidden {m['hidden']}, FFN "
             f"{m['ffn']} ({rec['date']})", "",
             f"Command: `{rec['command']}`", "",
             f"Where: {rec['where']}", "",
             f"Model: random weights (seed {m['seed']}), {m['parameters']:,} parameters, vocabulary "
             f"{m['vocab_size']}{'' if is_bert_base(m) else ' (NOT BERT-base size)'}. Data: {t['source']}; labels = "
             f"the random model's predictions ({t['prediction_counts']['0']} / {t['prediction_counts']['1']} texts "
             f"predicted negative / positive) with {t['flipped']} ({_pct(t['flip_fraction'])}) flipped: the "
             f"unpruned model is right on {_pct(t['unpruned_accuracy'])} (labelling took {t['label_seconds']:.0f} s).",
             "", "| measured | figure |", "|---|---|",
             f"| latency table build ({'heads + FFN axes' if lut['ffn_axis'] else 'heads'}, {lut['rounds']} rounds x "
             f"best of {lut['reps']}, {lut['threads']} threads) | {lut['build_s']:.0f} s (export "
             f"{_f(lut['export_s'], '.0f')} s, measuring {_f(lut['measure_s'], '.0f')} s) |",
             f"| peak RSS during the table build (this process) | {_f(lut['peak_rss_mib'], '.0f')} MiB (before: "
             f"{_f(lut['rss_before_mib'], '.0f')} MiB) |"]
    if err:
        lines.append(f"| table prediction error, {len(err['plans'])} random joint plans (median / max abs) | raw "
                     f"{_pct(err['error']['median_abs'])} / {_pct(err['error']['max_abs'])}; anchored "
                     f"{_pct(err['error_anchored']['median_abs'])} / {_pct(err['error_anchored']['max_abs'])}; ratio "
                     f"{_pct(err['error_ratio']['median_abs'])} / {_pct(err['error_ratio']['max_abs'])} |")
    if b.get("skipped"):
        lines.append("| the build (search time, stages, peak memory) | not run (--skip-build) |")
    elif b.get("search"):
        s, mem = b["search"], b["memory"]
        lines += [
            f"| search wall time (the build's `search.wall_s`) | **{_dur(s['wall_s'])}** for "
            f"{s['evaluations']} / {s['max_evaluations']} evaluations, stopped by {s['stopped_by']} "
            f"({_f(s['per_evaluation_s'])} s per evaluation; refit pricing "
            f"{_f((s.get('pricing') or {}).get('refit_seconds'), '.0f')} s) |",
            f"| evaluations within the build's default {s['default_cap_s']:g} s cap (journal growth) | "
            f"{_f(s['evaluations_within_default_cap'], 'd')} |",
            (f"| build wall time ({b['recovery']} recovery, table "
             f"{'reused' if b['lut_reused'] else 'measured by the build'}) | "
             + (f"{_dur(b['wall_s'])}: " if b.get("wall_s") is not None else
                f"stopped after its search: {b.get('error')} (exit code {b['exit_code']}); ")
             + ", ".join(f"{k} {v:.0f} s" for k, v in (b.get("stages_s") or {}).items()) + " |"),
            f"| peak RSS of the build | largest process {_f(mem['max_rss_largest_process_mib'], '.0f')} MiB (kernel); "
            f"process tree {mem['peak_rss_tree_sampled_mib']:.0f} MiB (sampled every {mem['sample_s']} s); "
            f"{mem['above_baseline_mib']:.0f} MiB above a fresh interpreter with the libraries imported "
            f"({mem['baseline_mib']:.0f} MiB) |",
            f"| CPU time of the build | user {_f(b['cpu_s']['user'], '.0f')} s, sys {_f(b['cpu_s']['sys'], '.0f')} s |"]
        sh = b.get("shipped")
        if sh:
            lines.append(f"| shipped | {sh['name']}: {sh['heads_removed']} / {sh['heads_total']} heads, "
                         f"{sh['ffn_blocks_removed']} / {sh['ffn_blocks_total']} FFN blocks removed; certified "
                         f"{sh['certified']} (bound {_f(sh['drop_upper_bound_pts'], '.2f')} pts, "
                         f"{sh['certify_examples']} certify rows; search split {b['search_split']}) |")
    else:
        lines.append(f"| the build | FAILED: {b.get('error')} (exit code {b.get('exit_code')}) |")
    mark = {True: "yes", False: "NO", None: "not measured"}[goal["reached"]]
    lines += ["", f"Goal: {goal['goal']}: {goal['measured']} -> **{mark}**.", ""]
    if err:
        total_heads = m["layers"] * m["heads"]
        lines += ["| plan | heads kept | FFN neurons kept | measured ms (p90-p10) | predicted ms | error | anchored | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for j, p in enumerate(err["plans"]):
            lines.append(f"| {j} | {sum(p['kept_counts'])} / {total_heads} | {sum(p['ffn_widths'] or [])} / "
                         f"{m['layers'] * m['ffn']} | {p['measured_ms']:.2f} "
                         f"({p['measured_spread_ms']:.2f}) | {p['predicted_ms']:.2f} | {p['error']:+.1%} | "
                         f"{p['error_anchored']:+.1%} | {p['error_ratio']:+.1%} |")
        lines += ["", "Errors are (predicted - measured) / measured; *anchored* scales the table by the unpruned model "
                      "measured in the same alternation as the plans (removes load drift between the table's period "
                      "and the plans'); *ratio* compares the plan / unpruned ratios (what the search ranks by)."]
    return "\n".join(lines) + "\n"


def run(opts: argparse.Namespace, *, tokenizer: Any, texts: Sequence[str], texts_source: str,
        extra: Sequence[str] = (), command: str = "", build_log: Optional[Path] = None) -> dict[str, Any]:
    """Everything the benchmark measures, in ``opts.out`` (a work folder): the record (see the module docstring).

    Args:
        opts: the parsed options (:func:`parser`).
        tokenizer, texts, texts_source: the tokenizer saved with the model, the texts to label and where they came
            from (the default task's in :func:`main`; tests pass tiny ones).
        extra: build arguments passed through unchanged.
        command: the command line recorded.
        build_log: write the build's output there instead of this terminal.
    """
    from edgeprune.latency.device_runner import host_info
    from edgeprune.profiles import load_profile
    from edgeprune.versions import versions

    work = Path(opts.out)
    work.mkdir(parents=True, exist_ok=True)
    prof = load_profile(opts.profile)
    t_start = time.perf_counter()
    model = make_model(opts.layers, opts.heads, opts.hidden, opts.ffn, vocab_size=opts.vocab, seed=opts.seed)
    size = {"layers": opts.layers, "heads": opts.heads, "hidden": opts.hidden, "ffn": opts.ffn,
            "vocab_size": opts.vocab, "seed": opts.seed, "parameters": sum(p.numel() for p in model.parameters()),
            "init": "transformers' BertForSequenceClassification initialisation (initializer_range 0.02)"}
    log(f"model: {opts.layers} x {opts.heads} heads, hidden {opts.hidden}, FFN {opts.ffn}, "
        f"{size['parameters']:,} parameters; labelling {len(texts)} texts")
    task = write_task(model, tokenizer, texts, work, flip=opts.flip, seed=opts.seed,
                      max_length=prof.inference.seq_len)
    task["source"] = texts_source
    del model
    log(f"task: predictions {task['prediction_counts']}, {task['flipped']} labels flipped ({task['label_seconds']} s)")
    lut_path = work / "lut.json"
    lut, lut_rec = measure_lut(Path(task["model_dir"]), opts.profile, lut_path, rounds=opts.lut_rounds,
                               reps=opts.lut_reps)
    log(f"latency table: {lut_rec['build_s']:.0f} s (export {lut_rec['export_s']} s), peak RSS "
        f"{_f(lut_rec['peak_rss_mib'], '.0f')} MiB")
    err = None
    if opts.plans > 0:
        err = measure_lut_error(Path(task["model_dir"]), lut, opts.profile, work, plans=opts.plans,
                                plan_rounds=opts.plan_rounds, reps=opts.lut_reps, seed=opts.seed)
        log(f"table error over {opts.plans} plans: median |raw| {_pct(err['error']['median_abs'])}, anchored "
            f"{_pct(err['error_anchored']['median_abs'])}")
    if opts.skip_build:
        build: dict[str, Any] = {"skipped": True}
    else:
        baseline = memory_baseline()
        build = run_build(Path(task["model_dir"]), Path(task["data"]), work / "build", opts.profile,
                          max_evals=opts.max_evals, recovery=opts.recovery, search_seconds=opts.search_seconds,
                          latency_table=None if opts.build_lut else lut_path, extra=extra, log_path=build_log)
        mem = build["memory"]
        peak = max(x for x in (mem["max_rss_largest_process_mib"], mem["peak_rss_tree_sampled_mib"]) if x is not None)
        mem.update(baseline_mib=baseline["max_rss_mib"], baseline=baseline, peak_rss_mib=peak,
                   above_baseline_mib=peak - baseline["max_rss_mib"])
        if build.get("search"):
            log(f"build: search {build['search']['wall_s']:.0f} s ({build['search']['evaluations']} evaluations, "
                f"stopped by {build['search']['stopped_by']}), build {build['wall_s']:.0f} s, peak RSS {peak:.0f} MiB")
        else:
            log(f"build: {build.get('error')}")
    where_lut = lut_rec.get("measured_on") or lut_rec.get("where")
    rec = {
        "benchmark": "scale", "date": opts.date or dt.date.today().isoformat(), "command": command,
        "host": host_info(), "versions": versions(), "profile": opts.profile,
        "measured_on": (err or {}).get("measured_on") or where_lut,
        "where": (f"this host ({host_info()['cpu_model']}), {opts.profile} settings, not on "
                  f"{prof.display_name}: the latency table, the plans and the build's latencies were measured with "
                  "ONNX Runtime here; the search's evaluations are PyTorch on this host"),
        "model": size, "task": task, "lut": lut_rec, "lut_error": err, "build": build,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "build_extra_args": list(extra), "total_s": round(time.perf_counter() - t_start, 1),
    }
    rec["goal"] = search_goal(rec)
    return rec


def parser() -> argparse.ArgumentParser:
    from edgeprune.config import DEFAULT_SEARCH
    from edgeprune.latency.table import DEFAULT_REPS, DEFAULT_ROUNDS
    from edgeprune.recovery.chain import RECOVERIES

    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0],
                                 allow_abbrev=False,
                                 epilog="Arguments not listed here are passed to `edgeprune build` unchanged.")
    ap.add_argument("--out", type=Path, default=None,
                    help="work folder (model, data.csv, lut.json, plans/, build/); default: a temporary folder, "
                         "removed at the end")
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--layers", type=int, default=BERT_BASE["layers"])
    ap.add_argument("--heads", type=int, default=BERT_BASE["heads"])
    ap.add_argument("--hidden", type=int, default=BERT_BASE["hidden"])
    ap.add_argument("--ffn", type=int, default=BERT_BASE["ffn"], help="FFN (intermediate) width")
    ap.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of the data CSV (the build takes 40%% as "
                                                                    "its search split)")
    ap.add_argument("--flip", type=float, default=0.05, help="share of the labels set against the model's prediction")
    ap.add_argument("--seed", type=int, default=0, help="model weights, text sample, flips, plans")
    ap.add_argument("--max-evals", type=int, default=DEFAULT_SEARCH.max_evaluations,
                    help="the build's search budget (default: edgeprune build's)")
    ap.add_argument("--search-seconds", type=float, default=DEFAULT_SEARCH_SECONDS,
                    help=f"the build's search wall-time cap (default 0 = none; edgeprune build's is "
                         f"{DEFAULT_SEARCH.max_seconds:g})")
    ap.add_argument("--recovery", choices=list(RECOVERIES), default=DEFAULT_RECOVERY,
                    help="the build's --recovery (default refit: the default search pricing without distillation)")
    ap.add_argument("--skip-build", action="store_true", help="only the model, the table and its error")
    ap.add_argument("--build-lut", action="store_true",
                    help="let the build measure its own latency table instead of reusing the one measured here")
    ap.add_argument("--plans", type=int, default=5, help="random plans for the table's prediction error (0 = none)")
    ap.add_argument("--plan-rounds", type=int, default=31, help="alternating rounds of the plan measurement")
    ap.add_argument("--lut-rounds", type=int, default=DEFAULT_ROUNDS, help="table rounds (default: the build's)")
    ap.add_argument("--lut-reps", type=int, default=DEFAULT_REPS, help="table reps per round (default: the build's)")
    ap.add_argument("--name", default="scale", help="results file stem (before the date)")
    ap.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--date", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, extra = parser().parse_known_args(argv)
    from benchmarks.bench_tools import write_results

    tok, texts, source = default_task_inputs(opts.rows, opts.seed)
    tmp = None
    if opts.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgeprune-scale-")
        opts.out = Path(tmp.name)
    try:
        rec = run(opts, tokenizer=tok, texts=texts, texts_source=source, extra=extra,
                  command=shlex.join(["python", "-m", "benchmarks.scale", *argv]))
    finally:
        if tmp is not None:
            tmp.cleanup()
    md = markdown(rec)
    stem = write_results(opts.name, rec, md, results=opts.results)
    print(md)
    log(f"wrote {stem}.json and .md")
    return 0 if (rec["build"].get("skipped") or rec["build"].get("exit_code") == 0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
