"""Baselines behind the same problem/result types as A*: Michel et al. 2019 greedy, one-shot top-k, random."""

from __future__ import annotations

import random

from .core import BudgetExhausted, Head, Problem, SearchResult
from .journal import state_key


def greedy_path(problem: Problem) -> str:
    """Michel et al. (2019) iterative pruning, one head (``config.step_units`` units) at a time, re-scored.

    From the unpruned model, repeatedly remove the remaining head with the lowest importance *for the current
    state* (``problem.rescore`` recomputes |d loss / d gate| with the current heads masked; without it, the static
    scores are used), evaluate the new state, and stop at the first state whose drop bound exceeds
    ``max_drop_pts``. Every accepted state is offered as incumbent. One evaluation per step.

    Args:
        problem: the search problem (its cache, budgets and journal are used and updated).

    Returns:
        Why it stopped: "bound" (next removal breaks the bound), "complete" (no head left) or a budget name.
    """
    state: frozenset = frozenset()
    every, step = problem.config.rescore_every, problem.config.step_units
    scores: dict = {}
    scored_at = None
    try:
        problem.evaluate([state])
        problem.offer(state)
        while True:
            if scored_at is None or len(state) - scored_at >= every:  # re-score every `every` removals
                scores, scored_at = problem.importance_for(state), len(state)
            remaining = [x for x in problem.all_heads if x not in state]
            if not remaining:
                return "complete"
            child = state | set(sorted(remaining, key=lambda x: (scores[x], x))[:step])
            problem.evaluate([child])
            problem.expansions += 1  # one greedy step = one node expanded
            if problem.bound_pts(child) > problem.config.max_drop_pts:
                return "bound"
            state = child
            problem.greedy_path.append(state_key(state))
            problem.offer(state)
    except BudgetExhausted as exc:
        return exc.which


def _prefix_search(problem: Problem, order: list[Head]) -> str:
    """Largest k such that removing ``order[:k]`` keeps the bound, by a batched k-ary search.

    Assumes feasibility is monotone in k (true for the expected drop, approximately for its bound); every evaluated
    prefix that meets the bound is offered, so a violation of the assumption can only cost quality, not validity.
    """
    lo, hi = 0, len(order)  # invariant: prefix lo is feasible; every prefix > hi is considered infeasible
    try:
        problem.evaluate([frozenset()])
        problem.offer(frozenset())
        while lo < hi:
            span = hi - lo
            width = min(problem.config.batch_size, span)
            # width probes spread over (lo, hi], always including hi on the first round for the "all fit" case.
            probes = sorted({lo + max(1, round(span * (i + 1) / width)) for i in range(width)})
            states = [frozenset(order[:k]) for k in probes]
            problem.evaluate(states)
            problem.expansions += 1
            new_lo, new_hi = lo, hi
            infeasible_seen = False
            for k, s in zip(probes, states):
                if problem.bound_pts(s) <= problem.config.max_drop_pts:
                    problem.offer(s)  # every feasible probe is offered, even past an infeasible one
                    if not infeasible_seen:
                        new_lo = max(new_lo, k)
                elif not infeasible_seen:
                    infeasible_seen = True  # monotone assumption: refine below the first infeasible probe
                    new_hi = min(new_hi, k - 1)
            if new_hi < new_lo:  # non-monotone evidence: trust the feasible one, stop refining
                return "bound"
            lo, hi = new_lo, new_hi
        return "bound" if lo < len(order) else "complete"
    except BudgetExhausted as exc:
        return exc.which


def oneshot_path(problem: Problem) -> str:
    """One-shot top-k: rank heads once by importance, remove the k least important, largest k within the bound."""
    return _prefix_search(problem, list(problem.order))


def random_path(problem: Problem) -> str:
    """Random baseline: a seeded random head order (``config.seed``), largest prefix within the bound."""
    order = list(problem.all_heads)
    random.Random(problem.config.seed).shuffle(order)
    return _prefix_search(problem, order)


def run_baseline(problem: Problem, algorithm: str) -> SearchResult:
    """Run one baseline ("greedy", "oneshot" or "random") on ``problem`` and build its result."""
    problem.phase = algorithm
    fn = {"greedy": greedy_path, "oneshot": oneshot_path, "random": random_path}[algorithm]
    stopped_by = fn(problem)
    return problem.result(algorithm, stopped_by)


__all__ = ["greedy_path", "oneshot_path", "random_path", "run_baseline", "state_key"]
