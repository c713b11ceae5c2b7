"""Certified bundle on the default task: one-shot Michel plans, exported and certified on the certify split.

Usage (after ``edgeprune demo-model`` has built the fine-tuned model)::

    python benchmarks/export_default_task.py [--remove 29 --fallback 18,8] [--importance-examples 600]

Head importance comes from ``edgeprune.search.importance.head_importance`` on the first N examples of the *search* split
(never the certify split). The plan removing ``--remove`` least important heads is exported with the fallback plans
as its frontier (Bonferroni over all of them), bound ``--max-drop`` points at ``--confidence``, profile
raspberrypi4, seq 64. Writes ``benchmarks/results/export_default_task.json`` and leaves the bundle in
``--out`` (default: a temporary folder that is removed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--remove", type=int, default=29)
    ap.add_argument("--fallback", default="18,8")
    ap.add_argument("--importance-examples", type=int, default=600)
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--profile", default="raspberrypi4")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "export_default_task.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from edgeprune.output.bundle import export_bundle
    from edgeprune.task.default import default_task
    from edgeprune.errors import CertificationError
    from edgeprune.search.evaluate import MaskedEvaluator
    from edgeprune.search.importance import head_importance
    from edgeprune.task.modeling import load_model
    from edgeprune.plan import HeadPlan

    task = default_task()
    t0 = time.time()
    model, tok = load_model(task.model_dir)
    scorer_model, _ = load_model(task.model_dir, with_tokenizer=False)
    ev = MaskedEvaluator(scorer_model, tok, task.search.head(args.importance_examples), max_length=args.seq,
                         threads=1)
    scores = head_importance(ev)
    order = sorted(scores, key=scores.get)  # least important first
    layout = ev.layout
    counts = [args.remove] + [int(x) for x in args.fallback.split(",") if x]
    plans = [HeadPlan.from_removed(layout.heads_per_layer, order[:k]) for k in counts]
    t_imp = time.time() - t0
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "bundle"
    record = {"model_dir": str(task.model_dir), "certify_n": len(task.certify), "removed_candidates": counts,
              "kept_heads": [list(p.kept_counts) for p in plans], "importance_seconds": round(t_imp, 1),
              "max_drop_pts": args.max_drop, "confidence": args.confidence, "profile": args.profile,
              "seq": args.seq}
    t1 = time.time()
    try:
        res = export_bundle(model, plans[0], args.profile, out, tokenizer=tok, certify_data=task.certify,
                            max_drop_pts=args.max_drop, confidence=args.confidence, frontier=plans[1:],
                            max_length=args.seq, overwrite=True)
        record.update(outcome="certified", plan_index=res.plan_index, shipped_kept_heads=list(res.plan.kept_counts),
                      certification=res.certification.to_dict(), attempts=res.attempts,
                      checks={k: v for k, v in res.checks.items()})
    except CertificationError as exc:
        record.update(outcome="not certified", message=str(exc))
    record["export_seconds"] = round(time.time() - t1, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    if not args.out:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
