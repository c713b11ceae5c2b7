"""Head-pruning search: A* and the baselines (Michel greedy, one-shot top-k, random).

Pure: imports neither torch nor onnxruntime and does no I/O except the optional journal. The model enters only
through an evaluator object (``evaluate(states) -> list[EvalResult]``), a latency function and importance scores,
so every algorithm can be unit-tested on synthetic cost functions in milliseconds. See docs/search.md.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence

from ..plan import HeadLayout, UnitSpace
from .astar import astar_path, run_astar
from .baselines import greedy_path, oneshot_path, random_path, run_baseline
from .core import (
    BudgetExhausted,
    Correction,
    EvalResult,
    Evaluator,
    FrontierPoint,
    Head,
    LatencyFn,
    Problem,
    Progress,
    RescoreFn,
    SearchConfig,
    SearchError,
    SearchResult,
)
from .journal import Journal, JournalError, state_key

ALGORITHMS = ("astar", "greedy", "oneshot", "random")

__all__ = [
    "ALGORITHMS",
    "BudgetExhausted",
    "Correction",
    "EvalResult",
    "Evaluator",
    "FrontierPoint",
    "Journal",
    "JournalError",
    "Problem",
    "Progress",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "astar_path",
    "greedy_path",
    "oneshot_path",
    "random_path",
    "search",
    "state_key",
]


def search(
    evaluator: Evaluator,
    latency: LatencyFn,
    importance: Mapping[Head, float],
    layout: UnitSpace | HeadLayout | Sequence[int],
    config: SearchConfig,
    algorithm: str = "astar",
    *,
    rescore: Optional[RescoreFn] = None,
    journal: Optional[str | os.PathLike] = None,
    resume: bool = False,
    fingerprint: Optional[dict] = None,
    on_progress: Optional[Callable[[Progress], None]] = None,
) -> SearchResult:
    """Find the fastest head plan whose search-split drop bound is within ``config.max_drop_pts``.

    Args:
        evaluator: batched candidate evaluator (see :class:`Evaluator`).
        latency: kept heads per layer -> predicted latency (ms); for a joint space
            ``latency(kept_heads_per_layer, kept_ffn_blocks_per_layer)``.
        importance: per-unit importance (lower is removed first): (layer, head), and in a joint space also the
            FFN-block units (see :class:`~edgeprune.plan.UnitSpace`).
        layout: the units: heads per layer, a :class:`HeadLayout`, or a :class:`UnitSpace` (heads + FFN blocks).
        config: bound, budgets and knobs.
        algorithm: "astar", "greedy", "oneshot" or "random".
        rescore: optional importance re-scoring callback for the current state (used by greedy and A*'s greedy
            seed; journaled).
        journal: optional JSONL journal path recording every evaluation.
        resume: replay the journal's results instead of re-evaluating (same result as an uninterrupted run).
        fingerprint: extra JSON-able identity of the search (model, data...) stored in and checked against the
            journal; the layout, algorithm and config are always included.
        on_progress: callback receiving a :class:`Progress` after each batch/expansion.

    Returns:
        The :class:`SearchResult`.

    Raises:
        SearchError: unknown algorithm or inconsistent inputs.
        JournalError: resuming a journal of a different search.
    """
    if algorithm not in ALGORITHMS:
        raise SearchError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    space = UnitSpace.of(layout)
    jr = None
    if journal is not None:
        fp = {"layout": list(space.heads_per_layer), "algorithm": algorithm, "config": config.to_dict(),
              **({"space": space.to_dict()} if space.has_ffn else {}), **(fingerprint or {})}
        jr = Journal(journal, fp, resume=resume)
    try:
        problem = Problem(evaluator, latency, importance, space, config, journal=jr, rescore=rescore,
                          on_progress=on_progress)
        if algorithm == "astar":
            return run_astar(problem)
        return run_baseline(problem, algorithm)
    finally:
        if jr is not None:
            jr.close()
