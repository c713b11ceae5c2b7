"""Benchmark: does retraining-free recovery (edgeprune.recovery.scale) reduce the accuracy drop of pruned plans?

Task: the default task (fine-tuned MiniLM-L6 sentiment classifier, ``edgeprune.task.default.default_task()``).
Plans are chosen on the *search* split and the recovery is fitted on the search split; every accuracy is measured
once per variant on the *certify* split, FP32 PyTorch, paired against the unpruned model's predictions
(``n_worse`` / ``n_better``; drop in points; one-sided 95% exact upper bound from ``bounds.paired_drop_upper_bound``).

Plans (one-shot, lowest importance first):

* heads only, ~25% and ~45% of the 72 heads removed, ranked by Michel importance
  (``importance.head_importance``, per-layer normalised, 1,024 search examples);
* heads + FFN blocks of 128 neurons, the same fraction of heads and of blocks removed (25%, 35%, 50%), each kind
  ranked by its own per-layer-normalised score from ``ffn_importance.joint_importance`` (one gradient pass).

Variants per plan: no recovery; recovery with the teacher target (Kwon's mask tuning) and with the same-input target;
for the 45% heads-only plan also teacher + FFN neurons re-fitted (``fit_ffn=True``). Every fit: 2,048 search examples,
default ridge and clamp. Recovered variants are evaluated as the folded model with the plan masked (equal to the
pruned model: tests/test_recovery.py).

Usage::

    python benchmarks/recovery.py [--examples 2048] [--max-length 128]

Writes ``benchmarks/results/recovery-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 128


def _removed_lowest(scores: dict, fraction: float) -> list:
    k = round(fraction * len(scores))
    return sorted(scores, key=lambda u: scores[u])[:k]


def make_plans(model, tokenizer, search, max_length: int) -> dict:
    """The benchmark's plans (name -> HeadPlan), chosen on the search split."""
    from edgeprune.adapters import get_adapter
    from edgeprune.search.evaluate import MaskedEvaluator
    from edgeprune.search.ffn_importance import joint_importance
    from edgeprune.search.importance import head_importance
    from edgeprune.plan import HeadPlan

    adapter = get_adapter(model)
    ev = MaskedEvaluator(model, tokenizer, search, max_length=max_length, cache_mb=0)
    heads = head_importance(ev, max_examples=1024)
    hs, bs = joint_importance(ev, BLOCK, normalize=True)
    num_heads = adapter.layout(model).heads_per_layer
    num_blocks = adapter.ffn_num_blocks(model, BLOCK)
    plans = {}
    for f in (0.25, 0.45):
        plans[f"heads-{round(100 * f)}%"] = HeadPlan.from_removed(num_heads, _removed_lowest(heads, f))
    for f in (0.25, 0.35, 0.50):
        plan = HeadPlan.from_removed(num_heads, _removed_lowest(hs, f))
        plans[f"heads+ffn-{round(100 * f)}%"] = plan.with_ffn_removed(BLOCK, num_blocks, _removed_lowest(bs, f))
    return plans


def predictions(model, tokenizer, data, plan, max_length: int) -> list[int]:
    from edgeprune.adapters import get_adapter
    from edgeprune.task.predict import torch_predictions

    adapter = get_adapter(model)
    if plan is None:
        return torch_predictions(model, tokenizer, data, max_length=max_length, batch_size=64)
    with adapter.mask_heads(model, plan):
        return torch_predictions(model, tokenizer, data, max_length=max_length, batch_size=64)


def paired(base: list[int], preds: list[int], labels: list[int]) -> dict:
    from edgeprune.certify import stats as bounds

    n = len(labels)
    worse = sum(1 for b, p, y in zip(base, preds, labels) if b == y and p != y)
    better = sum(1 for b, p, y in zip(base, preds, labels) if b != y and p == y)
    return {"n": n, "accuracy": sum(p == y for p, y in zip(preds, labels)) / n, "n_worse": worse,
            "n_better": better, "drop_pts": 100 * (worse - better) / n,
            "drop_ub95_pts": 100 * float(bounds.paired_drop_upper_bound(worse, better, n, 0.95)),
            "agreement_with_base": sum(b == p for b, p in zip(base, preds)) / n}


def run(examples: int, max_length: int) -> dict:
    import torch

    from edgeprune.task.default import default_task
    from edgeprune.search.evaluate import free_cores
    from edgeprune.task.modeling import clone_model, load_model
    from edgeprune.recovery.scale import apply_recovery_, fit_recovery

    task = default_task(progress=False)
    model, tok = load_model(task.model_dir)
    model.eval()
    torch.set_num_threads(free_cores())
    search, certify = task.search, task.certify
    t0 = time.time()
    plans = make_plans(model, tok, search, max_length)
    plan_seconds = time.time() - t0
    base = predictions(model, tok, certify, None, max_length)
    labels = list(certify.labels)
    base_acc = sum(b == y for b, y in zip(base, labels)) / len(labels)
    print(f"plans in {plan_seconds:.0f} s; base certify accuracy {100 * base_acc:.2f}%", file=sys.stderr)
    rows = []
    for name, plan in plans.items():
        variants = [("none", None), ("teacher", dict(target="teacher")), ("same_input", dict(target="same_input"))]
        if name == "heads-45%":  # FFN re-fit on a heads-only plan: once, on the larger plan (time budget)
            variants.append(("teacher+ffn", dict(target="teacher", fit_ffn=True)))
        for vname, kwargs in variants:
            row = {"plan": name, "variant": vname, "heads_removed": plan.num_removed,
                   "ffn_blocks_removed": plan.ffn_num_removed}
            if kwargs is None:
                preds = predictions(model, tok, certify, plan, max_length)
            else:
                folded = clone_model(model)
                rec = fit_recovery(folded, tok, search, plan, max_examples=examples, max_length=max_length,
                                   **kwargs)
                apply_recovery_(folded, rec)
                preds = predictions(folded, tok, certify, plan, max_length)
                summary = rec.to_dict()
                row["fit_seconds"] = summary["seconds"]
                row["fit_examples"], row["fit_tokens"] = summary["examples"], summary["tokens"]
                row["head_scale_range"], row["ffn_scale_range"] = summary["head_scale_range"], summary[
                    "ffn_scale_range"]
                row["layers"] = summary["layers"]
                del folded
            row.update(paired(base, preds, labels))
            rows.append(row)
            print(f"{name:18s} {vname:12s} acc {100 * row['accuracy']:.2f}  drop {row['drop_pts']:+.2f} pts "
                  f"(worse {row['n_worse']}, better {row['n_better']})  fit {row.get('fit_seconds', 0):.0f} s",
                  file=sys.stderr)
    return {
        "benchmark": "recovery", "date": dt.date.today().isoformat(), "host": platform.node(),
        "machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "model_dir": str(task.model_dir), "search_n": len(search), "certify_n": len(certify),
        "base_certify_accuracy": base_acc, "max_length": max_length, "fit_examples": examples,
        "plan_seconds": plan_seconds, "plans": {k: v.to_dict() for k, v in plans.items()}, "rows": rows,
    }


def markdown(r: dict) -> str:
    lines = [
        f"# Retraining-free recovery on the default task ({r['date']})",
        "",
        f"Unpruned MiniLM-L6 sentiment model, certify split n={r['certify_n']} (base accuracy "
        f"{100 * r['base_certify_accuracy']:.2f}%), FP32 PyTorch, paired vs the unpruned model. Plans chosen and "
        f"recovery fitted on the search split ({r['fit_examples']} examples, max length {r['max_length']}). "
        f"Host {r['host']} ({r['machine']}), {r['threads']} torch thread(s). One run.",
        "",
        "| plan | heads removed | FFN blocks removed | recovery | accuracy % | drop pts | worse | better | "
        "95% UB pts | fit s | head scales | FFN scales |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def rng(x):
        return "" if not x else f"{x['min']:.2f}..{x['max']:.2f}"

    for row in r["rows"]:
        lines.append(
            f"| {row['plan']} | {row['heads_removed']}/72 | {row['ffn_blocks_removed']}/72 | {row['variant']} | "
            f"{100 * row['accuracy']:.2f} | {row['drop_pts']:+.2f} | {row['n_worse']} | {row['n_better']} | "
            f"{row['drop_ub95_pts']:.2f} | {row.get('fit_seconds', '')} | {rng(row.get('head_scale_range'))} | "
            f"{rng(row.get('ffn_scale_range'))} |")
    lines += ["", "Per-layer relative reconstruction error (fit data), before -> after, teacher target:", ""]
    for row in r["rows"]:
        if row["variant"] != "teacher":
            continue
        parts = []
        for s in row["layers"]:
            for kind in ("heads", "ffn"):
                p = s[kind]
                if p:
                    parts.append(f"L{s['layer']}{kind[0]} {p['relative_before']:.3f}->{p['relative_after']:.3f}")
        lines.append(f"* {row['plan']}: " + ", ".join(parts))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args(argv)
    record = run(args.examples, args.max_length)
    from benchmarks.bench_tools import write_results

    write_results("recovery", record, markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
