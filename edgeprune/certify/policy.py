"""Which plans certification tests, in which order, and at what level the search must accept plans for them.

Everything here is decided before the certify split is read: the searched plan, then the fallbacks picked from the
search's frontier by their predicted chance to pass (:func:`pass_probability`), then the unpruned model quantized
as shipped. Certification looks at each at the Bonferroni-corrected level over that fixed number of looks, and the
search accepts plans by that same per-look test (:func:`search_confidence`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from edgeprune.certify import stats


def search_confidence(confidence: float, fallbacks: int) -> float:
    """The per-look confidence certification will use for ``1 + fallbacks`` planned looks; the search accepts plans
    at this level, not the laxer family-wise one (which made it pick plans certification then rejected:
    docs/search.md, "What certification can promise")."""
    return float(stats.corrected_confidence(confidence, 1 + fallbacks))


def int8_allowance(base_correct: Sequence[bool], shipped_correct: Sequence[bool]) -> dict[str, int]:
    """Discordance of the dense model in its shipped form (INT8 file) against the FP32 model on the search split,
    and the offsets every search candidate's counts get for it.

    The flips are added symmetrically (half to "worse", half to "better"): they widen the final bound whichever way
    they go, but their net effect is noise around zero for the default preset (measured on the default task: +0.05
    pt on the certify split, -0.85 pt on the search split); taking the search split's lucky net gain at face value
    let the search spend room that certification then did not have.

    Returns:
        ``{"worse", "better", "n", "offset_worse", "offset_better"}``.
    """
    if len(base_correct) != len(shipped_correct):
        raise ValueError(f"{len(shipped_correct)} shipped predictions for {len(base_correct)} search examples")
    worse = sum(1 for b, s in zip(base_correct, shipped_correct) if b and not s)
    better = sum(1 for b, s in zip(base_correct, shipped_correct) if s and not b)
    discordant = worse + better
    return {"worse": worse, "better": better, "n": len(base_correct),
            "offset_worse": (discordant + 1) // 2, "offset_better": discordant // 2}


def pass_probability(point: dict, max_drop_pts: float, z_search: float, n_ratio: float = 1.0) -> float:
    """Predicted chance that a frontier plan's certification passes, from its search-split numbers alone.

    The search bound is ``b = d + z * s`` (observed drop d, standard error s of the paired difference, both in
    points), so ``s = (b - d) / z``. Certification computes the same kind of bound on an independent split of
    ``n_certify = n_search / n_ratio`` examples at the same per-look level; it passes when the certify drop lands
    below ``max_drop - z * s_c``. With both drops centred on the true drop, that happens with probability
    ``Phi((max_drop - b) / (s * sqrt(1 + n_ratio)))`` (normal approximation, ``s_c = s * sqrt(n_ratio)``). Selection
    on the search split makes the real chance lower for the search's own pick; the fallbacks use this only to
    *rank* plans, not as a promise.
    """
    import math
    from statistics import NormalDist

    b, d = float(point["drop_bound_pts"]), float(point["drop_pts"])
    if b <= 0.0:
        return 1.0  # the unpruned reference: nothing to lose on the search split
    s = max((b - d) / max(z_search, 1e-9), 1e-9)
    z_gap = (max_drop_pts - b) + z_search * s * (1.0 - math.sqrt(n_ratio))
    return NormalDist().cdf(z_gap / (s * math.sqrt(1.0 + n_ratio)))


def frontier_fallbacks(plan_json: dict, k: int, max_drop_pts: float) -> list:
    """Certification fallbacks, fixed before the certify split is seen (so Bonferroni over the looks is valid).

    The search's pick is its fastest acceptable plan, the one most exposed to the winner's curse of selecting on
    the search split: its predicted chance to certify is about one half (measured: picks at 0.09 and -0.14 points on
    the search split certified at 0.94 and 0.47). Its frontier neighbours are nearly as aggressive and fail together
    (three neighbouring plans, 17-19 heads removed, all at 1.8-2.1 pts). So the ``k - 1`` middle fallbacks are the
    fastest frontier plans whose predicted pass probability (:func:`pass_probability`) reaches targets spread
    evenly between one half and one (0.75 for the default single middle fallback), and the last fallback removes
    nothing: the dense model quantized as shipped, which certifies whenever quantization alone keeps the bound.
    """
    from statistics import NormalDist

    from edgeprune.plan import HeadPlan

    if k <= 0:
        return []

    def units(p: dict) -> tuple:
        return tuple(sorted(map(tuple, p.get("removed", [])))), tuple(sorted(map(tuple, p.get("ffn_removed", []))))

    search = plan_json.get("search", {})
    level = float(search.get("bound", {}).get("per_candidate_confidence", 0.95))
    z = NormalDist().inv_cdf(min(max(level, 0.5 + 1e-9), 1 - 1e-12))
    chosen = units(plan_json)
    pts = [p for p in search.get("frontier", [])
           if p["drop_bound_pts"] <= max_drop_pts and any(units(p)) and units(p) != chosen]
    pts.sort(key=lambda p: (p["latency_ms"], p["drop_bound_pts"]))  # most aggressive first
    picks: list[dict] = []
    for j in range(1, k):  # k - 1 middle plans, then the unpruned plan
        target = 0.5 + 0.5 * j / k
        for p in pts:
            if p not in picks and pass_probability(p, max_drop_pts, z) >= target:
                picks.append(p)
                break
    ffn = plan_json.get("ffn")
    plans = []
    for p in picks:
        plan = HeadPlan.from_removed(plan_json["num_heads"], [tuple(h) for h in p["removed"]])
        if ffn is not None:  # a joint search's frontier point: keep its FFN part
            plan = plan.with_ffn_removed(ffn["block_size"], ffn["num_blocks"],
                                         [tuple(b) for b in p.get("ffn_removed", [])])
        plans.append(plan)
    if any(chosen):
        plans.append(HeadPlan.full(plan_json["num_heads"]))
    return plans
