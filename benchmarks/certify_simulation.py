"""Benchmark (pure statistics, no model): the tighter exact paired test and fixed-sequence certification (issue #15).

Three parts, all written to ``benchmarks/results/certify_simulation-<date>.json`` and ``.md``:

1. **Widths**: the default exact test (Berger-Boos, Tango's score statistic) vs the pre-#15 exact test (Berger-Boos,
   Wald statistic), the normal approximation and the Bonferroni split, on typical INT8 counts (n = 2113), at 95%
   and at 98.33% (Bonferroni over 3 looks).
2. **The issue's table**: the largest discordant count D that certifies <= 1.0 point at 95% (one look) for
   n = 1000 / 2113 / 4226 and observed drop 0 / 0.3 / 0.5 points, for both exact tests; plus the Bonferroni-3 row.
3. **Frontier simulation**: a 10-plan nested frontier (discordance 47 -> 300 of 2113, i.e. 2.2% -> 14.2%; true
   drop 0 -> 2 points in equal steps), a search split and a certify split of the same size n (2113 and 4226),
   independent. Two certification procedures, both at 95% family-wise:

   * **fixed sequence**: the order is the frontier from the dense INT8 plan (index 0) to the most compressed,
     skipping plans whose search-split point estimate exceeds max_drop (frozen before the certify split is read);
     each test at 95%; ship the last plan passed before the first failure.
   * **Bonferroni-3** (today's build): the search picks the most compressed plan whose search-split exact bound
     passes at 98.33%; fallbacks are the fastest plan with predicted pass probability >= 0.75
     (``P ~ Phi((max_drop - b) / (s sqrt 2))``, b the search bound, s its standard error) and the dense plan; the
     first of the three to pass on the certify split at 98.33% ships.

   Reported: P(ship nothing pruned) (the dense INT8 plan or nothing ships), realised error (the shipped plan's true
   drop > max_drop), mean shipped index. Certification decisions use the exact test through
   ``certify.sequence.max_worse_table`` (one exact p-value per discordant count).

Usage::

    nice -n 10 python benchmarks/certify_simulation.py [--trials 20000] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeprune.certify.stats import corrected_confidence, paired_drop_upper_bound  # noqa: E402
from edgeprune.certify.sequence import max_discordance, max_worse_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
Z95 = 1.6448536269514722


def _normal(x: int, y: int, n: int, conf: float) -> float:
    from statistics import NormalDist

    z = NormalDist().inv_cdf(conf)
    d = (x - y) / n
    return d + z * math.sqrt(max((x + y) / n - d * d, 0.0) / n)


def widths(quick: bool) -> list[dict]:
    rows = []
    counts = [(24, 23), (29, 28), (40, 20), (80, 30), (10, 12)] if not quick else [(24, 23), (10, 12)]
    for conf in (0.95, corrected_confidence(0.95, 3)):
        for x, y in counts:
            n = 2113
            t0 = time.perf_counter()
            score = paired_drop_upper_bound(x, y, n, conf)
            t_score = time.perf_counter() - t0
            t0 = time.perf_counter()
            wald = paired_drop_upper_bound(x, y, n, conf, method="wald")
            t_wald = time.perf_counter() - t0
            rows.append({
                "n": n, "n_worse": x, "n_better": y, "confidence": conf,
                "score_pts": 100 * score, "wald_pts": 100 * wald, "normal_pts": 100 * _normal(x, y, n, conf),
                "split_pts": 100 * paired_drop_upper_bound(x, y, n, conf, method="split"),
                "change_pts": 100 * (score - wald), "seconds_score": t_score, "seconds_wald": t_wald,
            })
    return rows


def _max_d_wald(n: int, max_drop: float, conf: float, obs: float) -> int | None:
    """The same edge as certify.sequence.max_discordance for the Wald-statistic test (bisection on bounds)."""
    k = round(obs * n)

    def ok(d: int) -> bool:
        return paired_drop_upper_bound((d + k) // 2, (d - k) // 2, n, conf, method="wald") <= max_drop + 1e-12

    if not ok(abs(k)):
        return None
    lo = (max_discordance(n, max_drop, conf, obs) - abs(k)) // 2  # start near the score test's edge
    while lo > 0 and not ok(abs(k) + 2 * lo):
        lo = max(0, lo - max(1, lo // 10))
    hi = lo + 1
    while ok(abs(k) + 2 * hi):
        lo, hi = hi, hi + max(1, hi // 10)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(abs(k) + 2 * mid):
            lo = mid
        else:
            hi = mid
    return abs(k) + 2 * lo


def issue_table(quick: bool) -> list[dict]:
    rows = []
    ns = (1000, 2113, 4226) if not quick else (1000,)
    for conf, label in ((0.95, "95% one look"), (corrected_confidence(0.95, 3), "98.33% Bonferroni-3")):
        for n in ns:
            if label.startswith("98") and n != 2113 and not quick:
                continue
            row = {"n": n, "confidence": label}
            for obs in (0.0, 0.003, 0.005):
                z = {0.95: Z95}.get(conf, 2.1280452)
                row[f"normal_{obs * 100:g}"] = int(n * n * (0.01 - obs) ** 2 / z ** 2 + n * obs ** 2)
                row[f"score_{obs * 100:g}"] = max_discordance(n, 0.01, conf, obs)
                row[f"wald_{obs * 100:g}"] = _max_d_wald(n, 0.01, conf, obs)
            rows.append(row)
    return rows


def _frontier(shape: str, n_ref: int = 2113, plans: int = 10):
    """Discordance 47 -> 300 (of 2113) and true drop 0 -> 2 points over 10 plans.

    ``linear``: both in equal steps. ``geometric``: discordance in equal ratios (the first prunings add few flips),
    the drop proportional to the discordance added over the dense plan's.
    """
    if shape == "linear":
        q = np.linspace(47 / n_ref, 300 / n_ref, plans)
        d = np.linspace(0.0, 0.02, plans)
    elif shape == "geometric":
        q = np.geomspace(47 / n_ref, 300 / n_ref, plans)
        d = 0.02 * (q - q[0]) / (q[-1] - q[0])
    else:
        raise ValueError(shape)
    return q, d


def _nested(rng, n: int, trials: int, q, d):
    w, b = (q + d) / 2, (q - d) / 2
    assert (np.diff(w) >= 0).all() and (np.diff(b) >= 0).all(), "flip sets must be nested"
    edges = np.concatenate([[0.0], w, 1.0 - b[::-1], [1.0]])
    cells = rng.multinomial(n, np.diff(edges), size=trials)
    k = len(w)
    x = np.cumsum(cells[:, :k], axis=1)
    y = np.cumsum(cells[:, k + 1:][:, ::-1], axis=1)
    return x, y


class _Table:
    def __init__(self, n: int, conf: float, m_min: int, m_max: int):
        self.m_min = m_min
        t0 = time.perf_counter()
        self.t = np.asarray(max_worse_table(n, 0.01, conf, m_max, m_min=m_min))
        self.seconds = time.perf_counter() - t0

    def passes(self, x, y):
        m = x + y
        if (m < self.m_min).any() or (m - self.m_min >= len(self.t)).any():
            raise RuntimeError("simulated discordance outside the table; widen it")
        return x <= self.t[m - self.m_min]


def simulate(n: int, trials: int, shape: str, seed: int = 0) -> dict:
    q, d = _frontier(shape)
    plans = len(q)
    rng = np.random.default_rng(seed)
    xs, ys = _nested(rng, n, trials, q, d)  # search split
    xc, yc = _nested(rng, n, trials, q, d)  # certify split
    m_all = np.concatenate([xs + ys, xc + yc]).ravel()
    m_min, m_max = int(m_all.min()), int(m_all.max())
    conf, conf3 = 0.95, corrected_confidence(0.95, 3)
    t95, t983 = _Table(n, conf, m_min, m_max), _Table(n, conf3, m_min, m_max)
    bad = d > 0.01 + 1e-12
    rows = np.arange(trials)

    # Fixed sequence.
    keep = (xs - ys) / n <= 0.01  # frozen order: skip plans whose search estimate already exceeds max_drop
    keep[:, 0] = True  # the dense INT8 plan is always first
    passed = t95.passes(xc, yc)
    shipped_fs = np.full(trials, -1)
    failed = np.zeros(trials, bool)
    for j in range(plans):
        test_now = keep[:, j] & ~failed
        ok = passed[:, j] & test_now
        shipped_fs = np.where(ok, j, shipped_fs)
        failed |= test_now & ~passed[:, j]
    fails = keep & ~passed
    tests_run = (keep & ((np.cumsum(fails, axis=1) - fails) == 0)).sum(axis=1)

    # Bonferroni-3.
    search_ok = t983.passes(xs, ys)
    pick = np.where(search_ok.any(axis=1), plans - 1 - np.argmax(search_ok[:, ::-1], axis=1), 0)
    from statistics import NormalDist

    z3 = NormalDist().inv_cdf(conf3)
    ds = (xs - ys) / n
    se = np.sqrt(np.maximum((xs + ys) / n - ds ** 2, 1.0 / n) / n)
    b = ds + z3 * se
    p_pass = np.vectorize(lambda v: NormalDist().cdf(v))((0.01 - b) / (se * math.sqrt(2)))
    good = p_pass >= 0.75
    mid = np.where(good.any(axis=1), plans - 1 - np.argmax(good[:, ::-1], axis=1), 0)
    mid = np.minimum(mid, pick)
    cert3 = t983.passes(xc, yc)
    shipped_b3 = np.full(trials, -1)
    for cand in (np.zeros(trials, int), mid, pick):  # reversed priority: the last assignment wins
        shipped_b3 = np.where(cert3[rows, cand], cand, shipped_b3)

    def summary(shipped):
        err = np.where(shipped >= 0, bad[np.maximum(shipped, 0)], False)
        se_err = math.sqrt(max(err.mean() * (1 - err.mean()), 1e-12) / trials)
        return {
            "p_ship_nothing_pruned": float((shipped <= 0).mean()),
            "p_ship_nothing": float((shipped < 0).mean()),
            "realised_error": float(err.mean()),
            "realised_error_se": se_err,
            "mean_shipped_index": float(np.maximum(shipped, 0).mean()),
            "shipped_index_histogram": np.bincount(shipped + 1, minlength=plans + 1).tolist(),
        }

    return {
        "n": n, "trials": trials, "seed": seed, "frontier_shape": shape,
        "frontier": {"discordance_rate": q.tolist(), "true_drop_pts": (100 * d).tolist()},
        "fixed_sequence": {**summary(shipped_fs), "mean_tests_run": float(tests_run.mean())},
        "bonferroni_3": {**summary(shipped_b3), "p_pick_is_dense": float((pick == 0).mean())},
        "table_seconds": {"95": t95.seconds, "98.33": t983.seconds},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20000)
    ap.add_argument("--quick", action="store_true", help="small run (smoke test)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    record = {
        "date": dt.date.today().isoformat(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "widths": widths(args.quick),
        "issue_table_max_discordance_1pt": issue_table(args.quick),
        "simulation": [simulate(n, args.trials if not args.quick else 2000, shape)
                       for shape in ("linear", "geometric") for n in ((2113, 4226) if not args.quick else (2113,))],
    }
    record["seconds"] = time.perf_counter() - t0
    md = ["# certify_simulation", "", "## Widths (points), n = 2113", "",
          "| worse/better | conf | score (default) | Wald (pre-#15) | change | normal | split |", "|---|---|---|---|---|---|---|"]
    for r in record["widths"]:
        md.append(f"| {r['n_worse']}/{r['n_better']} | {r['confidence']:.4f} | {r['score_pts']:.3f} | {r['wald_pts']:.3f} "
                  f"| {r['change_pts']:+.3f} | {r['normal_pts']:.3f} | {r['split_pts']:.3f} |")
    md += ["", "## Largest D certifying <= 1.0 point (normal / score / Wald)", "",
           "| n | confidence | drop 0 | 0.3 pts | 0.5 pts |", "|---|---|---|---|---|"]
    for r in record["issue_table_max_discordance_1pt"]:
        cells = [f"{r[f'normal_{o}']} / {r[f'score_{o}']} / {r[f'wald_{o}']}" for o in ("0", "0.3", "0.5")]
        md.append(f"| {r['n']} | {r['confidence']} | " + " | ".join(cells) + " |")
    md += ["", "## 10-plan frontier simulation", "",
           "| frontier | n | procedure | P(ship nothing pruned) | realised error | mean shipped index |",
           "|---|---|---|---|---|---|"]
    for s in record["simulation"]:
        for key in ("fixed_sequence", "bonferroni_3"):
            v = s[key]
            md.append(f"| {s['frontier_shape']} | {s['n']} | {key} | {100 * v['p_ship_nothing_pruned']:.1f}% | "
                      f"{100 * v['realised_error']:.2f}% ± {100 * v['realised_error_se']:.2f} | {v['mean_shipped_index']:.2f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"certify_simulation-{record['date']}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {stem}.json ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
