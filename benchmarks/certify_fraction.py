"""Benchmark (pure statistics, no model): which share of a user's ``--data`` should certify (issue #15).

A build splits ``--data`` (N labelled examples) into a search split of (1 - f) N and a certify split of f N
(``--certify-fraction f``). The search only ranks plans, but it also decides how far the frozen sequence reaches;
the certify split's size decides how much discordance a plan may have and still pass. This simulation plays the
build's procedure on a model frontier for several N and f and reports what ships:

* **frontier**: the 10-plan nested frontier of ``benchmarks/certify_simulation.py`` (discordance 2.2% -> 14.2% of
  the examples, true drop 0 -> 2 points; ``linear`` and ``geometric`` shapes). Rates, not counts: the same frontier
  at every N. Plan 0 is the dense INT8 file (2.2% of its predictions differ from the FP32 model's on the default task).
* **search**: each plan's worse/better counts on the search split; the searched plan is the most compressed one
  whose exact 95% bound passes ``--max-drop`` 1 point *at the certify split's size* (counts scaled by
  certify n / search n, ``SearchConfig.bound_scale``, as ``edgeprune build`` does).
* **certification**: fixed sequence on the certify split (``certify.policy.certification_sequence``): the dense plan,
  then the plans up to the searched one whose search estimate is within the promise, each at 95%, stopping at the
  first failure; the last plan passed ships.

Reported per (N, f): mean shipped index (how far down the frontier the shipped plan is: the compression a user
gets), P(ship nothing pruned), and the realised error (the shipped plan's true drop > 1 point; must stay <= 5%).

Usage::

    python -m benchmarks.certify_fraction [--trials 20000] [--quick]

Writes ``benchmarks/results/certify_fraction-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import time
from typing import Any

import numpy as np

from benchmarks.certify_simulation import _frontier, _nested, _Table

FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SIZES = (2000, 4000)  # the exact tables grow fast with the certify size (~250 s at n = 4,226 here)


def simulate(total: int, fraction: float, trials: int, shape: str, seed: int = 0) -> dict[str, Any]:
    q, d = _frontier(shape)
    plans = len(q)
    nc = int(round(fraction * total))
    ns = total - nc
    rng = np.random.default_rng(seed)
    xs, ys = _nested(rng, ns, trials, q, d)  # search split counts
    xc, yc = _nested(rng, nc, trials, q, d)  # certify split counts
    scale = nc / ns
    xs_s, ys_s = np.rint(xs * scale).astype(int), np.rint(ys * scale).astype(int)
    m_all = np.concatenate([xs_s + ys_s, xc + yc]).ravel()
    table = _Table(nc, 0.95, int(m_all.min()), int(m_all.max()))
    search_ok = table.passes(xs_s, ys_s)
    search_ok[:, 0] = True  # the unpruned plan is always acceptable to the search (its own reference)
    searched = plans - 1 - np.argmax(search_ok[:, ::-1], axis=1)
    idx = np.arange(plans)[None, :]
    keep = (idx <= searched[:, None]) & (((xs - ys) / ns <= 0.01) | (idx == searched[:, None]))
    keep[:, 0] = True
    passed = table.passes(xc, yc)
    shipped = np.full(trials, -1)
    failed = np.zeros(trials, bool)
    for j in range(plans):
        test_now = keep[:, j] & ~failed
        shipped = np.where(passed[:, j] & test_now, j, shipped)
        failed |= test_now & ~passed[:, j]
    bad = d > 0.01 + 1e-12
    err = np.where(shipped >= 0, bad[np.maximum(shipped, 0)], False)
    return {
        "total": total, "fraction": fraction, "certify_n": nc, "search_n": ns, "trials": trials, "shape": shape,
        "mean_shipped_index": float(np.maximum(shipped, 0).mean()),
        "mean_searched_index": float(searched.mean()),
        "p_ship_nothing_pruned": float((shipped <= 0).mean()),
        "realised_error": float(err.mean()),
        "realised_error_se": math.sqrt(max(err.mean() * (1 - err.mean()), 1e-12) / trials),
    }


def run(trials: int, sizes=SIZES, fractions=FRACTIONS, shapes=("geometric", "linear")) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = [simulate(n, f, trials, s, seed=k) for s in shapes for n in sizes for k, f in enumerate(fractions)]
    best = {}
    for s in shapes:
        for n in sizes:
            cand = [r for r in rows if r["shape"] == s and r["total"] == n]
            best[f"{s}/{n}"] = max(cand, key=lambda r: r["mean_shipped_index"])["fraction"]
    q, d = _frontier("linear")
    return {"benchmark": "certify_fraction", "date": dt.date.today().isoformat(), "machine": platform.platform(),
            "max_drop_pts": 1.0, "confidence": 0.95, "frontier_discordance_range": [float(q[0]), float(q[-1])],
            "frontier_true_drop_pts_range": [0.0, float(100 * d[-1])], "rows": rows,
            "best_fraction": best, "seconds": round(time.perf_counter() - t0, 1)}


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# Which share of --data should certify ({r['date']})", "",
             "Pure statistics: the 10-plan frontier of `benchmarks/certify_simulation.py` (discordance 2.2% -> 14.2%, "
             "true drop 0 -> 2 points), the build's search (bound at the certify split's size) and fixed-sequence "
             "certification at 95%, max drop 1 point. Cell: mean shipped frontier index (0 = dense INT8, 9 = the "
             "most compressed) / P(nothing pruned ships) / realised error.", ""]
    sizes = sorted({x["total"] for x in r["rows"]})
    fractions = sorted({x["fraction"] for x in r["rows"]})
    for shape in sorted({x["shape"] for x in r["rows"]}):
        lines += [f"## {shape} frontier", "", "| N | " + " | ".join(f"f = {f:g}" for f in fractions) + " | best |",
                  "|---|" + "---|" * (len(fractions) + 1)]
        for n in sizes:
            cells = []
            for f in fractions:
                x = next(y for y in r["rows"] if y["shape"] == shape and y["total"] == n and y["fraction"] == f)
                cells.append(f"{x['mean_shipped_index']:.2f} / {100 * x['p_ship_nothing_pruned']:.0f}% / "
                             f"{100 * x['realised_error']:.1f}%")
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {r['best_fraction'][f'{shape}/{n}']:g} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20000)
    ap.add_argument("--quick", action="store_true", help="small run (smoke test)")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="rows N of --data")
    ap.add_argument("--shapes", nargs="+", default=["geometric", "linear"], choices=["geometric", "linear"])
    args = ap.parse_args(argv)
    from benchmarks.bench_tools import write_results

    shapes = tuple(args.shapes)
    record = run(2000 if args.quick else args.trials, sizes=(2000,) if args.quick else tuple(args.sizes),
                 shapes=shapes)
    md = markdown(record)
    write_results("certify_fraction" + ("-quick" if args.quick else ""), record, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
