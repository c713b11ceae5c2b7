"""A* over sets of removed heads (formulation and proofs in docs/search.md).

Summary:
    state      R = frozenset of removed (layer, head); start R = {} (the unpruned model)
    successor  R + {x} for the ``branching`` least important heads x not in R (static importance order); with
               ``config.step_units`` = k > 1, R + the window of k consecutive remaining units starting at x
    cost       g(R) = max over the path of UCB(state) = bottleneck of the paired drop bound (points), so g never
               decreases along a path; g(root) = 0 exactly (the reference model). A* orders by g rounded *up* to
               ``config.cost_resolution`` (default max_drop_pts: one level, fastest-first; 0 = exact bound)
    heuristic  h = 0 (admissible and consistent: the drop bound of a goal below R is >= g(R) by construction)
    goal       T(R) <= tau, for every tau at once: with h = 0 and a tau-independent open list, the first popped state
               with T <= tau is a min-cost goal for tau, so lowering tau to just below each new fastest popped state
               and continuing the *same* search sweeps tau over all reachable latencies in one run
    pruning    states with g > max_drop_pts are never expanded (no descendant can get back under the bound)
    evaluation deferred: a successor enters the open list with its parent's g (a lower bound on its own g) and is
               evaluated only when it reaches the top, in batches of up to ``batch_size`` equally ranked successors
    ties       (g_q, predicted latency, evaluated-before-unevaluated, proxy or importance rank, sorted state tuple)
"""

from __future__ import annotations

import heapq
import math
from typing import Sequence

from .baselines import greedy_path
from .core import BudgetExhausted, Key, Problem, SearchResult


def _quantize(g: float, resolution: float) -> float:
    """Round the cost up to the resolution grid (a 1e-9 slack keeps exact multiples on their own step). A cost of 0
    shares the first step with the costs just above it: with the default resolution (the bound) every acceptable
    state is then on one level, the unpruned model's children included, instead of the root's deferred children
    (g = 0, their parent's) being popped, and evaluated, before every deeper acceptable state."""
    if resolution <= 0:
        return g
    return max(1, math.ceil(g / resolution - 1e-9)) * resolution


def astar_path(problem: Problem, seed_paths: Sequence[Sequence[Key]] = ()) -> tuple[str, list[tuple[float, float, Key]]]:
    """Run the A* sweep on ``problem``; offers every goal it proves to the incumbent.

    Args:
        problem: the search problem (cache, budgets, journal, incumbent).
        seed_paths: already evaluated paths (each a list of state keys from the root, one head added per step,
            e.g. the greedy path). Their states enter the open list with their path's bottleneck g, as if A* had
            generated them: this keeps A* exact (they are real paths of the graph) and lets it continue from them.

    Returns:
        (why it stopped: "exhausted" when the open list emptied, which proves optimality for every tau over the
        capped graph, else the budget name; the goals popped in order as (latency, g, state key): the tau sweep).
    """
    cfg = problem.config
    res, limit, b = cfg.cost_resolution, cfg.max_drop_pts, cfg.branching
    goals: list[tuple[float, float, Key]] = []
    closed: set[Key] = set()
    # Heap entries: (g_q, latency, flag, secondary, key, g_exact); flag 0 = evaluated (g_exact is the state's own
    # g), 1 = deferred (g_exact is the parent's g, a lower bound). All fields are plain numbers/tuples: the order is
    # total and deterministic (the key is unique per state, so equal entries are the same state).
    heap: list[tuple] = []
    try:
        problem.evaluate([frozenset()])
        g0 = problem.bound_pts(())
        if g0 > limit:
            problem.notes.append(f"even the unpruned model's drop bound {g0:.3f} pts exceeds max_drop_pts")
            return "exhausted", goals
        heap.append((_quantize(g0, res), problem.latency(()), 0, problem.result_of(()).proxy, (), g0))
        for path in seed_paths:
            g = g0
            for key in path:
                if key not in problem.cache:
                    break
                g = max(g, problem.bound_pts(key))
                if g > limit:
                    break
                heap.append((_quantize(g, res), problem.latency(key), 0, problem.result_of(key).proxy, key, g))
        heapq.heapify(heap)
        best_latency = math.inf
        while heap:
            entry = heapq.heappop(heap)
            g_q, lat, flag, _, key, g = entry
            if key in closed:
                continue
            if flag == 1:
                if key not in problem.cache:
                    # Batch: this entry plus the next deferred entries of the same cost level, in heap order.
                    batch, held = [entry], []
                    while heap and len(batch) < cfg.batch_size and heap[0][0] == g_q:
                        e = heapq.heappop(heap)
                        if e[4] in closed:
                            continue
                        if e[2] == 1 and e[4] not in problem.cache and all(e[4] != x[4] for x in batch):
                            batch.append(e)
                        else:
                            held.append(e)
                            if e[2] == 0:
                                break  # an evaluated entry is next in line: stop speculating
                    for e in held:
                        heapq.heappush(heap, e)
                    try:
                        problem.evaluate([frozenset(e[4]) for e in batch])
                    finally:
                        # Re-queue whatever was evaluated (also when the budget ran out mid-batch).
                        for e in batch:
                            if e[4] in problem.cache:
                                _requeue(problem, heap, e, res, limit)
                else:
                    _requeue(problem, heap, entry, res, limit)
                continue
            # Evaluated entry with the smallest f = g + 0: expand it.
            problem.count_expansion()
            closed.add(key)
            problem.offer(key, problem.bound_pts(key))
            if lat < best_latency:
                best_latency = lat  # a goal for every tau in [lat, previous best): the tau sweep's next point
                goals.append((lat, g, key))
            removed = set(key)
            remaining = [x for x in problem.order if x not in removed]  # least important first
            n_children, step = 0, cfg.step_units
            for j, head in enumerate(remaining):
                if n_children >= b:
                    break
                child = tuple(sorted(removed | set(remaining[j:j + step])))  # a window of `step` units
                if child in closed:
                    continue
                n_children += 1
                heapq.heappush(heap, (g_q, problem.latency(child), 1, problem.rank[head], child, g))
        return "exhausted", goals
    except BudgetExhausted as exc:
        return exc.which, goals


def _requeue(problem: Problem, heap: list, entry: tuple, res: float, limit: float) -> None:
    """Turn a deferred entry into an evaluated one: g = max(parent g, own bound); drop it if over the limit."""
    _, lat, _, _, key, g_parent = entry
    g = max(g_parent, problem.bound_pts(key))
    if g > limit:
        return  # pruned: every descendant has g >= this
    problem.offer(key, problem.bound_pts(key))
    heapq.heappush(heap, (_quantize(g, res), lat, 0, problem.result_of(key).proxy, key, g))


def run_astar(problem: Problem) -> SearchResult:
    """Greedy seed (if configured) then the A* sweep on the same problem; the faster acceptable plan wins.

    Args:
        problem: the search problem.

    Returns:
        The search result (algorithm "astar"); ``stopped_by`` is the A* phase's reason.
    """
    seeds: list[list[Key]] = []
    if problem.config.seed_with_greedy:
        problem.phase = "greedy seed"
        why = greedy_path(problem)
        what = "units" if problem.space.has_ffn else "heads"
        problem.notes.append(f"greedy seed: {len(problem.best_key)} {what} removed (stopped by {why})")
        seeds.append(list(problem.greedy_path))
    problem.phase = "astar"
    stopped_by, goals = astar_path(problem, seeds)
    problem.notes.append(f"A* tau sweep found {len(goals)} goals; stopped by {stopped_by}")
    return problem.result("astar", stopped_by)
