"""Shared machinery of every search algorithm: the problem (evaluation cache, bound, latency, budgets, journal) and
the result type. Pure: no torch, no onnxruntime; the only I/O is the optional :class:`~.journal.Journal`.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

from ..certify.stats import corrected_confidence, paired_drop_upper_bound
from ..errors import EdgepruneError
from ..plan import HeadLayout, HeadPlan, UnitSpace
from .journal import Journal, state_key

Head = tuple[int, int]  # a search unit (layer, index): a head, or an FFN block in a joint space (plan.UnitSpace)
State = frozenset  # frozenset[Head]: the removed units
Key = tuple  # state_key(state): sorted tuple of removed heads, the canonical id of a state


class SearchError(EdgepruneError):
    """The search was configured inconsistently (bad bound, empty layout, evaluator returned garbage)."""


@dataclass(frozen=True)
class EvalResult:
    """Paired outcome of one candidate against the unpruned model on the search split.

    Attributes:
        n_worse: examples the base model got right and the candidate got wrong.
        n_better: examples the base model got wrong and the candidate got right.
        n: examples evaluated.
        proxy: a cheap closeness score to the base model, lower is closer (e.g. mean KL of the outputs). It only
            orders ties; accept/reject decisions use the bound.
    """

    n_worse: int
    n_better: int
    n: int
    proxy: float = 0.0

    @property
    def drop(self) -> float:
        """Observed accuracy drop on the split, as a fraction."""
        return (self.n_worse - self.n_better) / self.n


class Evaluator(Protocol):
    """What the search needs from the evaluation engine (edgeprune.search.evaluate.MaskedEvaluator implements it)."""

    def evaluate(self, states: Sequence[State]) -> list[EvalResult]:
        """Evaluate several candidates (sets of removed heads) in one pass; results in the same order."""
        ...


# kept heads per layer -> predicted ms; in a joint space (UnitSpace with FFN blocks) it is called as
# latency(kept_heads_per_layer, kept_ffn_blocks_per_layer).
LatencyFn = Callable[..., float]
RescoreFn = Callable[[State], Mapping[Head, float]]  # current removed set -> importance of the remaining heads


class Correction(str, enum.Enum):
    """How the search-split bound accounts for comparing many candidates on the same split.

    NONE: each candidate's bound is computed at the user's confidence. Selecting the best of many candidates then
        makes the selected bound optimistic (DESIGN.md section 9: an evaluation-driven greedy overfitted its split);
        the certify split has to catch it.
    BONFERRONI: every bound is computed at ``1 - alpha / max_evaluations`` (the evaluation budget, fixed before the
        search looks at any result), so all the bounds the search can ever compute hold simultaneously with
        probability >= confidence, and the selected plan's search-split bound stays valid after selection.
    """

    NONE = "none"
    BONFERRONI = "bonferroni"


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a search's result (the journal fingerprint is built from it).

    Attributes:
        max_drop_pts: the accuracy bound, in accuracy *percentage points* (1.0 = one point); a candidate is
            acceptable when its upper confidence bound on the paired drop is at most this.
        confidence: one-sided confidence of that bound, in (0, 1).
        correction: multiple-comparison correction of the bound on the search split (see :class:`Correction`).
        max_evaluations: budget of candidate evaluations (journal replays count, so a resumed search is identical).
        max_expansions: budget of A* node expansions.
        max_seconds: wall-time budget (None = unlimited). Hitting it makes the result depend on machine speed.
        branching: A* expands at most this many successors per node: the least important remaining heads.
        batch_size: candidates sent to the evaluator per call.
        resolution_pts: A* orders nodes by the bound rounded *up* to this quantum; ties go to lower latency.
            None (default) = ``max_drop_pts``: every acceptable state then has the same cost level, so A* expands
            acceptable states fastest-first (the user's objective) and backtracks where greedy stops. 0 = the exact
            bound: A* then returns, for every latency tau, the plan with the smallest bound (an exact Pareto sweep),
            at the price of exploring breadth-first in the bound. See docs/search.md.
        seed_with_greedy: A* first runs the greedy baseline in the same problem and keeps its plan as incumbent,
            so A* is never worse than greedy at the same bound.
        seed: seed of the random baseline (the other algorithms are deterministic without it).
        offset_worse, offset_better: paired counts added to every pruned candidate's before bounding: the
            discordance the shipped file adds beyond the masked FP32 evaluation (the pipeline measures the dense
            INT8 model's flips on the search split). 0 = bound the FP32 evaluation alone.
        rescore_every: greedy re-scores importance after every this many removals (1 = after each, as Michel et
            al.; larger values save an importance pass, ~3 evaluations' worth of compute, per skipped step).
        step_units: units removed per move: a greedy step removes the ``step_units`` least important remaining
            units, an A* successor adds a window of ``step_units`` consecutive units of the importance order (the
            ``branching`` windows starting at the first ``branching`` remaining units). 1 = one unit per move (the
            original formulation). Larger steps reach deep plans within an evaluation budget: a 65% plan of the
            default model's 144 units needs 94 one-unit moves, more than the default 80 evaluations.
        bound_scale: bound each candidate as if its rates had been observed on a split ``bound_scale`` times as
            large (counts and n scaled, rounded): the search then accepts what the *certify* split (of that
            relative size) is expected to certify, instead of what its own smaller split can. 1 = the search
            split's own bound. Only the certification's test on the certify split carries the promise.
        credit_improvement: False = a candidate's "better" flips count at most as many as its "worse" flips, so
            the search never takes an observed net *gain* of a pruned model as evidence (it is selection noise:
            on the default task the search's picks showed -0.14 to -0.66 points on the search split and +0.47 to
            +0.85 on the certify split). More conservative than the exact bound, so still a valid bound.
    """

    max_drop_pts: float
    confidence: float = 0.95
    correction: Correction = Correction.BONFERRONI
    max_evaluations: int = 300
    max_expansions: int = 100_000
    max_seconds: Optional[float] = None
    branching: int = 6
    batch_size: int = 4
    resolution_pts: Optional[float] = None
    seed_with_greedy: bool = True
    seed: int = 0
    rescore_every: int = 1
    offset_worse: int = 0
    offset_better: int = 0
    credit_improvement: bool = True
    step_units: int = 1
    bound_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.max_drop_pts >= 0 and math.isfinite(self.max_drop_pts)):
            raise SearchError(f"max_drop_pts must be a finite number of points >= 0, got {self.max_drop_pts}")
        if not 0 < self.confidence < 1:
            raise SearchError(f"confidence must be in (0, 1), got {self.confidence}")
        object.__setattr__(self, "correction", Correction(self.correction))
        if self.offset_worse < 0 or self.offset_better < 0:
            raise SearchError("offset_worse and offset_better must be >= 0")
        for name in ("max_evaluations", "max_expansions", "branching", "batch_size", "rescore_every", "step_units"):
            if int(getattr(self, name)) < 1:
                raise SearchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.bound_scale > 0 and math.isfinite(self.bound_scale)):
            raise SearchError(f"bound_scale must be a finite number > 0, got {self.bound_scale}")
        if self.resolution_pts is not None and self.resolution_pts < 0:
            raise SearchError(f"resolution_pts must be >= 0 or None, got {self.resolution_pts}")

    @property
    def cost_resolution(self) -> float:
        """The A* cost quantum actually used (``resolution_pts``, defaulting to ``max_drop_pts``)."""
        return self.max_drop_pts if self.resolution_pts is None else float(self.resolution_pts)

    @property
    def bound_confidence(self) -> float:
        """Per-candidate confidence actually used for the search-split bound."""
        if self.correction is Correction.NONE:
            return self.confidence
        return corrected_confidence(self.confidence, self.max_evaluations)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["correction"] = self.correction.value
        return d


@dataclass(frozen=True)
class FrontierPoint:
    """One non-dominated (latency, drop bound) point among everything evaluated."""

    latency_ms: float
    drop_bound_pts: float
    drop_pts: float
    heads_removed: int
    removed: tuple[Head, ...]  # removed heads (layer, head)
    ffn_removed: Optional[tuple[tuple[int, int], ...]] = None  # removed FFN blocks (layer, block); None = heads only

    def to_dict(self) -> dict[str, Any]:
        d = {"latency_ms": self.latency_ms, "drop_bound_pts": self.drop_bound_pts, "drop_pts": self.drop_pts,
             "heads_removed": self.heads_removed, "removed": [list(h) for h in self.removed]}
        if self.ffn_removed is not None:
            d["ffn_blocks_removed"] = len(self.ffn_removed)
            d["ffn_removed"] = [list(b) for b in self.ffn_removed]
        return d


@dataclass
class SearchResult:
    """What a search returns (and what ``plan.json`` stores via :meth:`to_dict`)."""

    algorithm: str
    plan: HeadPlan
    removed: tuple[Head, ...]  # the removed units (heads, and FFN blocks in a joint space; see plan.UnitSpace)
    drop_pts: float
    drop_bound_pts: float
    n_worse: int
    n_better: int
    n: int
    latency_ms: float
    base_latency_ms: float
    frontier: list[FrontierPoint]
    nodes_expanded: int
    evaluations: int
    evaluations_replayed: int
    wall_time_s: float
    seed: int
    stopped_by: str
    config: SearchConfig
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # provenance added by the caller (model, data, latency source)
    space: Optional[UnitSpace] = None  # None = heads only

    @property
    def heads_removed(self) -> int:
        return self.plan.num_removed

    @property
    def ffn_blocks_removed(self) -> int:
        return self.plan.ffn_num_removed

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict; its ``num_heads``/``kept_heads`` keys make it loadable by ``HeadPlan.from_dict``."""
        d: dict[str, Any] = dict(self.plan.to_dict())
        d.update(
            {
                "heads_removed": self.heads_removed,
                "heads_total": sum(self.plan.num_heads),
                "removed": [list(h) for h in self.plan.removed()],
                **({"ffn_blocks_removed": self.ffn_blocks_removed,
                    "ffn_blocks_total": sum(self.plan.ffn_num_blocks),
                    "ffn_removed": [list(b) for b in self.plan.ffn_removed()]} if self.plan.has_ffn else {}),
                "search": {
                    "algorithm": self.algorithm,
                    "structures": "heads+ffn" if self.plan.has_ffn else "heads",
                    "space": (self.space or UnitSpace(self.plan.num_heads)).to_dict(),
                    "search_split_drop_pts": self.drop_pts,
                    "search_split_drop_bound_pts": self.drop_bound_pts,
                    "bound": {
                        "method": "paired exact unconditional (Berger-Boos, edgeprune.certify.stats.paired_drop_upper_bound)",
                        "max_drop_pts": self.config.max_drop_pts,
                        "confidence": self.config.confidence,
                        "correction": self.config.correction.value,
                        "per_candidate_confidence": self.config.bound_confidence,
                    },
                    "n_worse": self.n_worse,
                    "n_better": self.n_better,
                    "n": self.n,
                    "predicted_latency_ms": self.latency_ms,
                    "base_predicted_latency_ms": self.base_latency_ms,
                    "frontier": [p.to_dict() for p in self.frontier],
                    "nodes_expanded": self.nodes_expanded,
                    "evaluations": self.evaluations,
                    "evaluations_replayed": self.evaluations_replayed,
                    "wall_time_s": self.wall_time_s,
                    "seed": self.seed,
                    "stopped_by": self.stopped_by,
                    "config": self.config.to_dict(),
                    "notes": list(self.notes),
                    **self.info,
                },
            }
        )
        return d


class BudgetExhausted(Exception):
    """Raised inside a search when a budget runs out; the driver catches it and returns the best plan so far."""

    def __init__(self, which: str) -> None:
        super().__init__(which)
        self.which = which


@dataclass
class Progress:
    """Snapshot passed to the progress callback after every evaluation batch and expansion."""

    phase: str
    nodes_expanded: int
    evaluations: int
    max_evaluations: int
    best_removed: int
    best_latency_ms: float
    best_bound_pts: float


class Problem:
    """One search problem: the cache of evaluated states, budgets, bound, latency and incumbent.

    Every algorithm goes through :meth:`evaluate`, so the cache deduplicates evaluations across algorithms that
    share a problem (A* reuses the greedy seed's evaluations) and the journal records every result.

    Args:
        evaluator: object with ``evaluate(states) -> list[EvalResult]``.
        latency: kept heads per layer -> predicted latency in ms.
        importance: importance score per (layer, head); lower = less important = removed first.
        layout: the units to search over: a :class:`~edgeprune.plan.UnitSpace` (heads, or heads + FFN blocks), a
            :class:`HeadLayout` or a sequence of heads per layer (heads only).
        config: the search configuration.
        journal: optional journal; results found in it are replayed instead of evaluated.
        rescore: optional callback recomputing importance for the current state (greedy re-scoring).
        on_progress: optional callback receiving a :class:`Progress`.
        clock: time source (injectable for tests).
    """

    def __init__(
        self,
        evaluator: Evaluator,
        latency: LatencyFn,
        importance: Mapping[Head, float],
        layout: UnitSpace | HeadLayout | Sequence[int],
        config: SearchConfig,
        journal: Optional[Journal] = None,
        rescore: Optional[RescoreFn] = None,
        on_progress: Optional[Callable[[Progress], None]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            self.space = UnitSpace.of(layout)
        except EdgepruneError as exc:
            raise SearchError(f"bad head layout {layout}: {exc}") from exc
        self.heads_per_layer = self.space.heads_per_layer
        # Every unit: heads, then (joint space) FFN blocks; ``all_heads`` is the historical name.
        self.all_heads: list[Head] = self.space.all_units()
        missing = [x for x in self.all_heads if x not in importance]
        if missing:
            raise SearchError(f"importance scores missing for units {missing[:5]}{'...' if len(missing) > 5 else ''}")
        self.importance = {x: float(importance[x]) for x in self.all_heads}
        # Static order: least important first; ties by (layer, head) so the order is total and deterministic.
        self.order: list[Head] = sorted(self.all_heads, key=lambda x: (self.importance[x], x))
        self.rank = {x: i for i, x in enumerate(self.order)}
        self.evaluator = evaluator
        self._latency_fn = latency
        self.config = config
        self.journal = journal
        self.rescore = rescore
        self.on_progress = on_progress
        self.clock = clock
        self.t0 = clock()
        self.cache: dict[Key, EvalResult] = {}
        self._latency_cache: dict[tuple, float] = {}
        self._importance_cache: dict[Key, dict[Head, float]] = {}
        self.evaluations = 0  # logical: fresh + replayed (replays count so a resumed search makes the same moves)
        self.replayed = 0
        self.expansions = 0
        self.phase = "search"
        self.best_key: Key = ()
        self.best_bound: Optional[float] = None
        self.notes: list[str] = []
        self.greedy_path: list[Key] = []  # accepted greedy states, root excluded (A* seeds its open list with them)
        self._conf = config.bound_confidence
        self._reject_at: Optional[int] = None

    # ---- budgets ------------------------------------------------------------------------------------------------
    def check_time(self) -> None:
        if self.config.max_seconds is not None and self.clock() - self.t0 >= self.config.max_seconds:
            raise BudgetExhausted("time")

    def count_expansion(self) -> None:
        if self.expansions >= self.config.max_expansions:
            raise BudgetExhausted("expansions")
        self.expansions += 1
        self.check_time()

    # ---- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, states: Iterable[State]) -> list[EvalResult]:
        """Evaluate states (cached, journaled, budgeted), in batches of ``config.batch_size``.

        Raises:
            BudgetExhausted: the evaluation budget or the wall time ran out; states evaluated before that are cached.
        """
        keys: list[Key] = []
        for s in states:
            k = state_key(s)
            if k not in keys:
                keys.append(k)
        todo = [k for k in keys if k not in self.cache]
        for start in range(0, len(todo), self.config.batch_size):
            self.check_time()
            chunk = todo[start:start + self.config.batch_size]
            room = self.config.max_evaluations - self.evaluations
            if room <= 0:
                raise BudgetExhausted("evaluations")
            cut = chunk[:room]
            fresh = [k for k in cut if self.journal is None or k not in self.journal.evals]
            if fresh:
                results = list(self._evaluate_fresh([frozenset(k) for k in fresh]))
                if len(results) != len(fresh):
                    raise SearchError(f"evaluator returned {len(results)} results for {len(fresh)} states")
                for k, r in zip(fresh, results):
                    r = EvalResult(int(r.n_worse), int(r.n_better), int(r.n), float(r.proxy))
                    if r.n <= 0 or r.n_worse < 0 or r.n_better < 0 or r.n_worse + r.n_better > r.n:
                        raise SearchError(f"evaluator returned impossible counts {r} for state {k}")
                    self.cache[k] = r
                    if self.journal is not None:
                        self.journal.add_eval(frozenset(k), r.n_worse, r.n_better, r.n, r.proxy)
                if self.journal is not None:
                    self.journal.flush()
            for k in cut:
                if k not in self.cache:  # replayed from the journal
                    rec = self.journal.evals[k]  # type: ignore[union-attr]
                    self.cache[k] = EvalResult(rec["n_worse"], rec["n_better"], rec["n"], rec["proxy"])
                    self.replayed += 1
            self.evaluations += len(cut)
            self._report()
            if len(cut) < len(chunk):
                raise BudgetExhausted("evaluations")
        return [self.cache[k] for k in keys]

    def _evaluate_fresh(self, states: list) -> list:
        """The evaluator's results, with early rejection where it is sound and the evaluator supports it."""
        threshold = self.reject_worse_threshold()
        if threshold is not None and self._supports_rejection():
            return self.evaluator.evaluate(states, reject_worse=threshold)
        return self.evaluator.evaluate(states)

    def _supports_rejection(self) -> bool:
        import inspect

        try:
            return "reject_worse" in inspect.signature(self.evaluator.evaluate).parameters
        except (TypeError, ValueError):
            return False

    def reject_worse_threshold(self) -> Optional[int]:
        """Largest raw "worse" count a candidate can have and still pass its bound, when that is known for sure.

        With no credit for an observed gain (``credit_improvement=False``) a candidate's bounded counts are
        ``W = worse + offset_worse`` and ``B <= W``; the bound grows with W and falls with B, so the best it can get
        is ``bound(W, W)``, which passes iff ``2 W <= D0`` (D0: the largest discordance certifiable at zero drop,
        :func:`edgeprune.certify.sequence.max_discordance`). A candidate past ``D0 // 2 - offset_worse`` worse
        predictions on part of the split therefore fails whatever the rest gives: the evaluator may stop it there
        (the certify split is independent, so this costs the search at most some compute, never the guarantee).
        Known once the root's ``n`` is; ``None`` otherwise.
        """
        if self.config.credit_improvement or not self.cache or self.config.max_drop_pts >= 100.0:
            return None
        if self._reject_at is None:
            from edgeprune.certify.sequence import max_discordance

            k = self.config.bound_scale
            n = next(iter(self.cache.values())).n
            d0 = max_discordance(round(n * k), self.config.max_drop_pts / 100.0, self._conf, 0.0)
            # the bound of W worse (scaled: round(W k)) passes at best iff 2 round(W k) <= d0
            self._reject_at = -1 if d0 is None else int((d0 // 2 + 0.5) / k) - self.config.offset_worse
        return self._reject_at

    def result_of(self, state: State | Key) -> EvalResult:
        return self.cache[state_key(state)]

    def bound_pts(self, state: State | Key) -> float:
        """Upper confidence bound on the drop of an evaluated state, in points (per-candidate corrected level)."""
        r = self.result_of(state)
        if r.n_worse == r.n_better == 0 and not state:
            return 0.0  # the unpruned model is the reference itself: its drop is exactly 0, not just bounded
        # Discordance the shipped file will add on top of the masked FP32 evaluation (e.g. INT8 flips of the dense
        # model, measured once on the same split): approximately additive when the two sources of flips are
        # independent, so the search keeps room for them instead of accepting plans certification must reject.
        worse = min(r.n_worse + self.config.offset_worse, r.n)
        better = min(r.n_better + self.config.offset_better, r.n - worse)
        if not self.config.credit_improvement:
            better = min(better, worse)
        k = self.config.bound_scale
        if k != 1.0:  # the bound the same rates would get on a split k times as large (the certify split)
            return 100.0 * paired_drop_upper_bound(round(worse * k), round(better * k), round(r.n * k), self._conf)
        return 100.0 * paired_drop_upper_bound(worse, better, r.n, self._conf)

    def latency(self, state: State | Key) -> float:
        kc, kb = self.space.kept_counts(state)
        if (kc, kb) not in self._latency_cache:
            ms = self._latency_fn(kc) if kb is None else self._latency_fn(kc, kb)
            self._latency_cache[(kc, kb)] = float(ms)
        return self._latency_cache[(kc, kb)]

    def importance_for(self, state: State) -> dict[Head, float]:
        """Importance of the heads for ``state``: the rescore callback (journaled) or the static scores."""
        if self.rescore is None:
            return self.importance
        k = state_key(state)
        if k not in self._importance_cache:
            if self.journal is not None and k in self.journal.importance:
                scores = self.journal.importance[k]
            else:
                self.check_time()
                scores = {x: float(v) for x, v in self.rescore(frozenset(k)).items()}
                if self.journal is not None:
                    self.journal.add_importance(frozenset(k), scores)
                    self.journal.flush()
            self._importance_cache[k] = scores
        return self._importance_cache[k]

    # ---- incumbent ----------------------------------------------------------------------------------------------
    def offer(self, state: State | Key, bound_pts: Optional[float] = None) -> bool:
        """Propose an acceptable state as answer; keeps the fastest (ties: smaller bound, then smaller key)."""
        k = state_key(state)
        b = self.bound_pts(k) if bound_pts is None else bound_pts
        if b > self.config.max_drop_pts:
            return False
        cand = (self.latency(k), b, k)
        if self.best_bound is None or cand < (self.latency(self.best_key), self.best_bound, self.best_key):
            self.best_key, self.best_bound = k, b
            self._report()
            return True
        return False

    def _report(self) -> None:
        if self.on_progress is None:
            return
        self.on_progress(
            Progress(
                phase=self.phase,
                nodes_expanded=self.expansions,
                evaluations=self.evaluations,
                max_evaluations=self.config.max_evaluations,
                best_removed=len(self.best_key),
                best_latency_ms=self.latency(self.best_key),
                best_bound_pts=self.best_bound if self.best_bound is not None else float("nan"),
            )
        )

    # ---- result -------------------------------------------------------------------------------------------------
    def frontier(self) -> list[FrontierPoint]:
        """Pareto frontier (lower latency, lower drop bound) of every evaluated state, fastest first."""
        pts = [(self.latency(k), self.bound_pts(k), k) for k in self.cache]
        out: list[FrontierPoint] = []
        best_bound = math.inf
        # From the fastest state to the slowest: a state is non-dominated when its bound is strictly below the
        # bound of every faster-or-equal state (at equal latency the sort visits the smallest bound first).
        for lat, b, k in sorted(pts):
            if b < best_bound:
                best_bound = b
                heads, blocks = self.space.split(k)
                out.append(FrontierPoint(lat, b, 100.0 * self.cache[k].drop, len(heads), tuple(heads),
                                         tuple(blocks) if self.space.has_ffn else None))
        return out

    def result(self, algorithm: str, stopped_by: str) -> SearchResult:
        k = self.best_key
        r = self.cache.get(k)
        if r is None:
            raise SearchError("the search stopped before evaluating even the unpruned model (budget too small)")
        return SearchResult(
            algorithm=algorithm,
            plan=self.space.plan(k),
            removed=k,
            drop_pts=100.0 * r.drop,
            drop_bound_pts=self.bound_pts(k),
            n_worse=r.n_worse,
            n_better=r.n_better,
            n=r.n,
            latency_ms=self.latency(k),
            base_latency_ms=self.latency(()),
            frontier=self.frontier(),
            nodes_expanded=self.expansions,
            evaluations=self.evaluations,
            evaluations_replayed=self.replayed,
            wall_time_s=self.clock() - self.t0,
            seed=self.config.seed,
            stopped_by=stopped_by,
            config=self.config,
            notes=list(self.notes),
            space=self.space,
        )
