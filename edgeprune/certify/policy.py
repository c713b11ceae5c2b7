"""Which plans certification tests, in which order, and at what level the search must accept plans for them.

Fixed-sequence testing (Bauer 1991; Learn-then-Test, Angelopoulos et al. 2021; docs/certification.md): the order is
frozen from the search's results alone, before the certify split is read: the unpruned model quantized as shipped
first, then the search's frontier from the least to the most compressed plan. Each is tested at the user's full
confidence; the sequence stops at the first failure and the most compressed plan that passed ships. Any false
certification must pass through the first truly bad plan of the order, whose own test is a valid test at that
level, so the family-wise error stays within ``1 - confidence`` under any dependence between the tests. There is no
Bonferroni split, so the search accepts plans at the full confidence too (:func:`search_confidence`).
"""

from __future__ import annotations

from typing import Sequence



#: Most plans a certification sequence tests (the dense INT8 file included): each costs a recovery fit, a compile
#: and a pass over the certify split (~30-40 s on the default task on this project's 2-core host).
DEFAULT_SEQUENCE_PLANS = 6
#: With distillation: the dense file, the most compressed refitted ladder plan (the fallback) and the distilled
#: plan. Each refitted plan costs ~50 s on the default task here (refit, compile, a pass over the certify split);
#: the ladder is only a fallback, so it is kept short to leave the build's time budget to distillation.
DISTILL_SEQUENCE_PLANS = 3


def search_confidence(confidence: float) -> float:
    """The level each certification test uses, which is the level the search accepts plans at: with fixed-sequence
    testing every test runs at the full ``confidence`` (no Bonferroni split over looks)."""
    return float(confidence)


def certification_sequence(plan_json: dict, max_drop_pts: float, max_plans: int = DEFAULT_SEQUENCE_PLANS, *,
                           ladder_max_pts: float | None = None) -> list:
    """The frozen test order: ``[(name, HeadPlan, frontier point or None), ...]``, least to most compressed.

    The unpruned model (quantized as it ships) comes first; then frontier plans by decreasing predicted latency,
    skipping those whose search-split point estimate already exceeds ``max_drop_pts`` (they would fail, and a failure
    ends the sequence); the searched plan (the most compressed acceptable one) is always last. With more candidates
    than ``max_plans``, the kept ones are spread evenly over the candidates' order (the most compressed always
    kept). Only search-split numbers are read: the order is fixed before the certify split is.

    Args:
        plan_json: the search's plan.json (``num_heads``, ``ffn``, ``removed``/``ffn_removed``, ``search.frontier``).
        max_drop_pts: the promise, in points.
        max_plans: most plans in the sequence, the unpruned one included (>= 1).
        ladder_max_pts: when given, frontier plans before the searched one are skipped unless their search-split
            *bound* is within this (distillation: the ladder holds the plans the refit alone is expected to carry,
            as a refit-only search would have accepted them; only the searched plan, which alone is distilled, may
            lie beyond).

    Returns:
        The sequence; its names are ``dense`` and ``plan-<k>`` (k = frontier rank, 1 = least compressed).
    """
    from edgeprune.plan import HeadPlan

    if max_plans < 1:
        raise ValueError(f"max_plans must be >= 1, got {max_plans}")
    ffn = plan_json.get("ffn")

    def units(p: dict) -> tuple:
        return tuple(sorted(map(tuple, p.get("removed", [])))), tuple(sorted(map(tuple, p.get("ffn_removed", []))))

    def as_plan(p: dict) -> HeadPlan:
        plan = HeadPlan.from_removed(plan_json["num_heads"], [tuple(h) for h in p.get("removed", [])])
        if ffn is not None:
            plan = plan.with_ffn_removed(ffn["block_size"], ffn["num_blocks"],
                                         [tuple(b) for b in p.get("ffn_removed", [])])
        return plan

    chosen = units(plan_json)
    search = plan_json.get("search", {})
    points, seen = [], set()
    for p in sorted(search.get("frontier", []), key=lambda q: (-q["latency_ms"], q["drop_bound_pts"])):
        key = units(p)
        over = float(p["drop_pts"]) > max_drop_pts or (
            ladder_max_pts is not None and float(p["drop_bound_pts"]) > ladder_max_pts)
        if not any(key) or key in seen or key == chosen or over:
            continue
        seen.add(key)
        points.append(p)
    if any(chosen):
        points.append({"removed": plan_json.get("removed", []), "ffn_removed": plan_json.get("ffn_removed", []),
                       "latency_ms": search.get("predicted_latency_ms"),
                       "drop_pts": search.get("search_split_drop_pts"),
                       "drop_bound_pts": search.get("search_split_drop_bound_pts"), "searched": True})
    room = max_plans - 1
    if ladder_max_pts is not None and len(points) > room >= 2 and points[-1].get("searched"):
        # Distillation: the searched plan is kept and the refit ladder before it thinned to its quantiles, its most
        # compressed plan always kept (the fallbacks worth having if the distilled plan fails).
        ladder, k = points[:-1], room - 1
        points = [ladder[round((j + 1) * len(ladder) / k) - 1] for j in range(k)] + points[-1:]
    if len(points) > room:
        if room <= 0:
            points = []
        elif room == 1:
            points = points[-1:]
        else:  # evenly spread over the order, the most compressed (last) always kept
            step = (len(points) - 1) / (room - 1)
            points = [points[round(i * step)] for i in range(room)]
    dense = HeadPlan.full(plan_json["num_heads"])
    if ffn is not None:  # a joint search: the unpruned plan says so (0 of N FFN blocks removed)
        dense = dense.with_ffn_removed(ffn["block_size"], ffn["num_blocks"], [])
    seq = [("dense", dense, None)]
    seq += [(f"plan-{k}", as_plan(p), p) for k, p in enumerate(points, start=1)]
    return seq


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


