"""Summarise finished ``edgeprune build`` folders into one JSON + Markdown result (issues #15/#16: five default
builds, what shipped, how far certification went, paired latency ratios, wall times).

    python -m benchmarks.build_summary OUT1 OUT2 ... --name builds-refit-2026-12-01 --note "..."

Reads only what the builds wrote (report.json, plan.json); latencies are the builds' own alternating
measurements (paired within each build), measured where the report says.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summarise(out: Path) -> dict:
    r = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    cert, acc, lat = r["certification"], r["accuracy"], r["latency_ms"]
    s = plan["search"]
    tests = cert.get("tests") or []
    seq = [{k: t.get(k) for k in ("name", "heads_removed", "ffn_blocks_removed", "n_worse", "n_better", "accuracy",
                                  "drop_upper_bound_pts", "passed")} for t in tests]
    order = {o["name"]: o for o in cert.get("order") or []}
    for t in seq:  # the search's (refit-priced) estimate next to the certified figure: the surrogate's error
        o = order.get(t["name"]) or {}
        t["search_split_drop_pts"] = o.get("search_split_drop_pts")
        t["predicted_latency_ms"] = o.get("predicted_latency_ms")
    real = lat.get("real_lengths") or {}
    return {
        "out": str(out), "seed": r["settings"].get("seed"), "recovery": r["settings"].get("recovery"),
        "shipped": cert.get("shipped"), "heads_removed": r["heads"]["removed"],
        "ffn_blocks_removed": (r.get("ffn") or {}).get("blocks_removed", 0),
        "units_removed_share": (r["heads"]["removed"] + (r.get("ffn") or {}).get("blocks_removed", 0))
        / (r["heads"]["total"] + (r.get("ffn") or {}).get("blocks_total", 0)),
        "certified": acc["certified"], "drop_upper_bound_pts": acc["drop_upper_bound_pts"],
        "accuracy": {"baseline": acc["baseline"], "final": acc["final"], "certify_examples": acc["certify_examples"]},
        "sequence": seq, "tested": len(seq), "order_length": len(order), "stop_reason": cert.get("stop_reason"),
        "p50_ms": {k: lat[k]["p50"] for k in ("dense_fp32", "dense_int8", "final")},
        "final_vs_dense_int8": lat["ratios_p50"]["dense_int8/final"],
        "final_vs_dense_fp32": lat["ratios_p50"]["dense_fp32/final"],
        "real_lengths_final_vs_dense_int8": real.get("ratio_dense_int8/final"),
        "predicted_final_ms": lat.get("predicted_final"), "measured_on": lat.get("measured_on"),
        "search": {"evaluations": s.get("evaluations"), "stopped_by": s.get("stopped_by"),
                   "early_rejection": s.get("early_rejection"), "pricing": s.get("pricing"),
                   "bound_scale": (s.get("config") or {}).get("bound_scale")},
        "stages_s": (r.get("timing") or {}).get("stages_s"), "build_wall_s": r.get("wall_s"),
    }


def markdown(rows: list[dict], note: str) -> str:
    lines = [f"# {note}", "", "| seed | shipped | heads / FFN blocks removed | bound (pts) | tested / order | vs dense INT8 "
             "(p50) | vs dense FP32 | real lengths vs INT8 | build wall (s) | search (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for b in rows:
        lines.append(f"| {b['seed']} | {b['shipped']} | {b['heads_removed']} / {b['ffn_blocks_removed']} | "
                     f"{b['drop_upper_bound_pts']:.2f} | {b['tested']} / {b['order_length']} | "
                     f"{b['final_vs_dense_int8']:.2f}x | {b['final_vs_dense_fp32']:.2f}x | "
                     f"{(b['real_lengths_final_vs_dense_int8'] or float('nan')):.2f}x | {b['build_wall_s']:.0f} | "
                     f"{(b['stages_s'] or {}).get('search', float('nan')):.0f} |")
    if rows:
        lines += ["", f"Median vs dense INT8: {statistics.median(b['final_vs_dense_int8'] for b in rows):.2f}x; "
                      f"vs dense FP32: {statistics.median(b['final_vs_dense_fp32'] for b in rows):.2f}x; pruned plan "
                      f"certified in {sum(1 for b in rows if b['certified'] and b['shipped'] != 'dense')} of "
                      f"{len(rows)}.", "", "Sequences (name: removed heads/blocks, worse/better, bound, search-split "
                      "estimate):", ""]
        for b in rows:
            lines.append(f"- seed {b['seed']}: " + "; ".join(
                f"{t['name']} {t['heads_removed']}/{t['ffn_blocks_removed']} {t['n_worse']}/{t['n_better']} "
                f"{t['drop_upper_bound_pts']:.2f} {'pass' if t['passed'] else 'FAIL'}"
                + (f" (search {t['search_split_drop_pts']:.2f})" if t.get("search_split_drop_pts") is not None else "")
                for t in b["sequence"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outs", nargs="+")
    ap.add_argument("--name", required=True)
    ap.add_argument("--note", default="default builds")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    rows = [summarise(Path(o)) for o in args.outs]
    res = Path(args.results)
    (res / f"{args.name}.json").write_text(json.dumps({"what": args.note, "builds": rows}, indent=1) + "\n")
    (res / f"{args.name}.md").write_text(markdown(rows, args.note))
    print(markdown(rows, args.note))


if __name__ == "__main__":
    main()
