"""Benchmark: the default task's split fractions (issue #15) - teacher accuracy vs fine-tune share, and what the
certify size buys a 1.0-point promise.

For each fine-tune / search / certify choice (``TaskSpec(fractions=...)``; everything else at the defaults) the
teacher is fine-tuned with the product's own ``edgeprune.task.default.default_task`` (one at a time; a verified
cached teacher is reused) and scored on

* the **common held-out set**: the certify split of the shipped (0.6, 0.2, 0.2) task, i.e. the last 20% of each
  class in the split's hash order. ``split_indices`` cuts fine-tune = first part, certify = last part, so this set
  is inside the certify split of every choice with a certify share >= 0.2 and no teacher was fine-tuned on it (the
  script checks this on the sentence ids). Accuracy with a two-sided 95% Wilson interval, and the paired
  difference to the (0.6, 0.2, 0.2) teacher (two-sided 95% normal interval on the paired difference);
* its own search and certify splits (reference only; the own certify accuracy is not comparable across rows:
  different example sets).

What the certify size buys (pure statistics, ``edgeprune.certify.sequence``): at that certify n, for a 1.0-point
promise at 95% (one fixed-sequence test), the largest discordance D = n_worse + n_better a plan may have at an
observed drop of 0 and of 0.3 points (``max_discordance``), and the ``preflight`` of the dense INT8 file with the
rates measured for the shipped teacher (24 worse / 23 better of 2113, benchmarks/results/recovery_calibration-
2026-12-01.json): the points and discordant examples left for pruning.

Usage::

    nice -n 10 python -m benchmarks.task_splits --cache-dir /tmp/splits-cache \
        [--reuse-default ~/.cache/edgeprune/default-task] [--fractions 0.6,0.2,0.2 0.5,0.2,0.3 0.4,0.2,0.4]

``--cache-dir`` must hold (or be able to fetch) ``downloads/vaderSentiment-3.3.2.tar.gz``; each non-default
teacher is cached there as ``custom-task-<digest>``. ``--reuse-default`` reads an existing default-task folder
(verified against its manifest, never written) instead of fine-tuning the (0.6, 0.2, 0.2) teacher again.

Writes ``benchmarks/results/task_splits-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_FRACTIONS = ("0.6,0.2,0.2", "0.5,0.2,0.3", "0.4,0.2,0.4")
PROMISE_PTS = 1.0
CONFIDENCE = 0.95
# The shipped teacher's dense INT8 file vs its FP32 model on the certify split (recovery_calibration-2026-12-01).
DENSE_INT8_COUNTS = (24, 23, 2113)
Z975 = 1.959963984540054


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wilson(k: int, n: int, z: float = Z975) -> tuple[float, float]:
    """Two-sided Wilson score interval for a proportion k / n."""
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def predict(model_dir: Path, texts: list[str], max_len: int, batch_size: int = 64) -> list[int]:
    """Argmax predictions of the FP32 PyTorch teacher (edgeprune.task.predict.torch_predictions)."""
    from edgeprune.task.data import TextDataset
    from edgeprune.task.modeling import load_model
    from edgeprune.task.predict import torch_predictions

    model, tok = load_model(model_dir)
    return [int(p) for p in torch_predictions(model, tok, TextDataset(list(texts), [0] * len(texts)),
                                              max_length=max_len, batch_size=batch_size)]


def teacher(fractions: tuple[float, float, float], cache_dir: Path, reuse_default: Path | None) -> dict[str, Any]:
    """Fine-tune (or reuse) the teacher of ``fractions``; its folder, splits, manifest and how it was obtained."""
    from edgeprune.task.default import TaskSpec, default_task

    spec = TaskSpec(fractions=fractions)
    t0 = time.perf_counter()
    if spec.is_default and reuse_default is not None:
        # default_task verifies the cached folder (every file against its manifest) and reuses it when valid
        task = default_task(cache_dir=reuse_default.parent, spec=spec, progress=False)
        return {"spec": spec, "model_dir": task.model_dir, "data": task.data, "manifest": task.manifest,
                "obtained": f"reused {task.model_dir} (verified against its manifest)" if not task.built
                else "fine-tuned by this run", "call_seconds": time.perf_counter() - t0}
    task = default_task(cache_dir=cache_dir, spec=spec, progress=False)
    return {"spec": spec, "model_dir": task.model_dir, "data": task.data, "manifest": task.manifest,
            "obtained": "fine-tuned by this run" if task.built else f"reused the verified cache {task.model_dir}",
            "call_seconds": time.perf_counter() - t0}


def certify_room(n: int) -> dict[str, Any]:
    from edgeprune.certify.sequence import max_discordance, preflight

    x, y, m = DENSE_INT8_COUNTS
    pre = preflight(n, PROMISE_PTS, CONFIDENCE, (x + y) / m, 100.0 * (x - y) / m)
    d0 = max_discordance(n, PROMISE_PTS / 100, CONFIDENCE, 0.0)
    d3 = max_discordance(n, PROMISE_PTS / 100, CONFIDENCE, 0.003)
    return {
        "n_certify": n,
        "max_discordance_drop0": d0, "max_discordance_drop0_pct": None if d0 is None else 100.0 * d0 / n,
        "max_discordance_drop0.3": d3, "max_discordance_drop0.3_pct": None if d3 is None else 100.0 * d3 / n,
        "preflight_dense_int8": {k: pre[k] for k in ("status", "dense_int8_expected_counts", "dense_int8_bound_pts",
                                                     "room_for_pruning_pts", "room_for_pruning_discordance",
                                                     "max_discordance_at_dense_drop")},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, required=True, help="cache root for the teachers (holds downloads/)")
    ap.add_argument("--reuse-default", type=Path, default=None,
                    help="an existing default-task folder to reuse read-only for (0.6, 0.2, 0.2)")
    ap.add_argument("--fractions", nargs="+", default=list(DEFAULT_FRACTIONS),
                    help="fine-tune,search,certify shares, one choice per argument")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for scoring (fine-tuning uses all cores)")
    args = ap.parse_args(argv)

    import torch

    from edgeprune.task.default import TaskSpec, load_default_splits
    from edgeprune.versions import versions

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    choices = [tuple(float(v) for v in f.split(",")) for f in args.fractions]
    ref = load_default_splits(args.cache_dir, spec=TaskSpec(), progress=False)
    held = ref.certify
    held_ids = set(ref.ids["certify"])
    log(f"common held-out set: the (0.6, 0.2, 0.2) certify split, {len(held)} sentences")

    rows: list[dict[str, Any]] = []
    ref_correct: list[bool] | None = None
    for fr in choices:
        log(f"teacher {fr}: preparing (a fine-tune takes minutes) ...")
        t = teacher(fr, args.cache_dir, args.reuse_default)
        data, spec, man = t["data"], t["spec"], t["manifest"]
        overlap = {k: len(held_ids & set(data.ids[k])) for k in ("finetune", "search")}
        inside_certify = len(held_ids & set(data.ids["certify"]))
        if overlap["finetune"] or overlap["search"] or inside_certify != len(held_ids):
            raise SystemExit(f"{fr}: the held-out set is not inside this choice's certify split ({overlap}, "
                             f"{inside_certify} of {len(held_ids)} in certify)")
        log(f"teacher {fr}: {t['obtained']}; scoring ...")
        t0 = time.perf_counter()
        acc: dict[str, Any] = {}
        correct_held: list[bool] = []
        for name, ds in (("held_out", held), ("search", data.search), ("certify", data.certify)):
            pred = predict(t["model_dir"], list(ds.texts), spec.max_seq_len)
            correct = [p == y for p, y in zip(pred, ds.labels)]
            k, n = sum(correct), len(correct)
            lo, hi = wilson(k, n)
            acc[name] = {"correct": k, "n": n, "accuracy_pct": 100.0 * k / n, "wilson95_pct": [100 * lo, 100 * hi]}
            if name == "held_out":
                correct_held = correct
        score_s = time.perf_counter() - t0
        if ref_correct is None and spec.is_default:
            ref_correct = correct_held
        paired = None
        if ref_correct is not None and not spec.is_default:
            n = len(held)
            better = sum(c and not r for c, r in zip(correct_held, ref_correct))
            worse = sum(r and not c for c, r in zip(correct_held, ref_correct))
            d = (better - worse) / n
            se = math.sqrt(max((better + worse) / n - d * d, 0.0) / n)
            paired = {"better": better, "worse": worse, "diff_pts": 100 * d,
                      "ci95_pts": [100 * (d - Z975 * se), 100 * (d + Z975 * se)]}
        train = man["training"]
        row = {
            "fractions": list(fr), "sizes": dict(data.sizes), "obtained": t["obtained"],
            "model_dir": str(t["model_dir"]), "finetune_seconds": train["seconds"], "finetune_steps": train["steps"],
            "seconds_per_step": train["seconds"] / max(train["steps"], 1), "finetune_threads": train.get("threads"),
            "finetune_created_utc": man.get("created_utc"), "final_loss_ema": train.get("final_loss_ema"),
            "manifest_accuracy": man["accuracy"], "accuracy": acc, "vs_default_teacher_on_held_out": paired,
            "certify": certify_room(data.sizes["certify"]), "score_seconds": round(score_s, 1),
        }
        rows.append(row)
        a = acc["held_out"]
        log(f"teacher {fr}: held-out {a['accuracy_pct']:.2f}% [{a['wilson95_pct'][0]:.2f}, {a['wilson95_pct'][1]:.2f}]"
            f", search {acc['search']['accuracy_pct']:.2f}%, certify {acc['certify']['accuracy_pct']:.2f}%"
            f", max D {row['certify']['max_discordance_drop0']} / {row['certify']['max_discordance_drop0.3']}")

    x, y, m = DENSE_INT8_COUNTS
    record = {
        "benchmark": "task_splits", "date": dt.date.today().isoformat(), "host": platform.node(),
        "machine": platform.platform(), "cpus": torch.get_num_threads(), "versions": versions(),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.task_splits", *sys.argv[1:]]),
        "held_out": {"definition": "certify split of TaskSpec() = last 20% of each class in sha256 hash order",
                     "n": len(held), "ids_sha256": ref.ids_sha256["certify"]},
        "promise_pts": PROMISE_PTS, "confidence": CONFIDENCE,
        "dense_int8_counts_for_preflight": {"n_worse": x, "n_better": y, "n": m,
                                            "source": "benchmarks/results/recovery_calibration-2026-12-01.json"},
        "rows": rows, "total_seconds": round(time.perf_counter() - t_all, 1),
    }

    md = [f"# Default-task split fractions (issue #15), {record['date']}", "",
          f"MiniLM-L6 sentiment teacher (`edgeprune.task.default`, all other TaskSpec fields at their defaults), "
          f"one fine-tune per choice (seed 0). Held-out = the (0.6, 0.2, 0.2) certify split ({len(held)} sentences, "
          f"the last 20% of each class), inside every choice's certify split and in no fine-tune split. "
          f"Accuracy with a two-sided 95% Wilson interval; paired difference vs the (0.6, 0.2, 0.2) teacher on the "
          f"same sentences with a two-sided 95% normal interval. Certify columns: {PROMISE_PTS:.1f}-point promise at "
          f"{100 * CONFIDENCE:g}%, one fixed-sequence test, exact paired test (`certify.sequence.max_discordance`); "
          f"room = `preflight` of a dense INT8 file with the shipped teacher's measured rates ({x} worse / {y} better "
          f"of {m}).", "",
          "| fractions (ft/search/cert) | fine-tune n | held-out acc % [95% Wilson] | vs 0.6 teacher, pts [95%] "
          "| own search acc % | own certify acc % (n) | fine-tune s (steps, s/step) | max D @ drop 0 | max D @ 0.3 pts "
          "| dense INT8 bound / room pts |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, c, p = r["accuracy"], r["certify"], r["vs_default_teacher_on_held_out"]
        h = a["held_out"]
        vs = "reference" if p is None else (f"{p['diff_pts']:+.2f} [{p['ci95_pts'][0]:+.2f}, {p['ci95_pts'][1]:+.2f}]"
                                            f" ({p['better']} better / {p['worse']} worse)")
        pre = c["preflight_dense_int8"]

        def dcell(key: str) -> str:
            v = c[key]
            return "none" if v is None else f"{v} ({c[key + '_pct']:.2f}%)"

        md.append(
            f"| {'/'.join(f'{v:g}' for v in r['fractions'])} | {r['sizes']['finetune']} "
            f"| {h['accuracy_pct']:.2f} [{h['wilson95_pct'][0]:.2f}, {h['wilson95_pct'][1]:.2f}] | {vs} "
            f"| {a['search']['accuracy_pct']:.2f} | {a['certify']['accuracy_pct']:.2f} ({a['certify']['n']}) "
            f"| {r['finetune_seconds']:.0f} ({r['finetune_steps']}, {r['seconds_per_step']:.2f}) "
            f"| {dcell('max_discordance_drop0')} | {dcell('max_discordance_drop0.3')} "
            f"| {pre['dense_int8_bound_pts']:.2f} / {pre['room_for_pruning_pts']:.2f} |")
    md += ["", "Sources of each teacher: " + "; ".join(
        f"{'/'.join(f'{v:g}' for v in r['fractions'])}: {r['obtained']} (fine-tuned {r['finetune_created_utc']})"
        for r in rows) + ".",
           "Fine-tune seconds are wall time on a shared 2-core host (another engineer's work ran alongside), so "
           "compare them with care; steps scale with the fine-tune size (2 epochs, batch 32).",
           "", f"Host {record['host']} ({record['machine']}), torch {record['versions']['torch']}, transformers "
           f"{record['versions']['transformers']}; total {record['total_seconds']:.0f} s. Command: "
           f"`{record['command']}`."]
    from benchmarks.bench_tools import write_results

    stem = write_results("task_splits", record, "\n".join(md))
    print("\n".join(md))
    log(f"wrote {stem}.json and .md ({record['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
