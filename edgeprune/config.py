"""Settings shared by the commands: one set of search settings used by ``edgeprune build``, ``edgeprune search``
and the benchmarks, so the three search alike unless told otherwise. Pure Python (no torch/onnxruntime)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from edgeprune.errors import EdgepruneError, arg

ALGORITHMS = ("astar", "greedy", "oneshot", "random")
STRUCTURES = ("heads", "heads+ffn")
CORRECTIONS = ("none", "bonferroni")
#: How the search prices a candidate: ``none`` = masked (the units zeroed, nothing re-fitted); ``refit`` = after the
#: full least-squares weight refit the shipped file gets (edgeprune.recovery.refit; docs/search.md).
SEARCH_PRICING = ("none", "refit")
#: Neurons per FFN block (or the largest divisor of the FFN widths below it): benchmarks/ffn_block_size.py.
DEFAULT_FFN_BLOCK_SIZE = 128


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs (everything but the accuracy promise, the data and the latency model).

    Attributes:
        algorithm: ``astar`` or a baseline (``greedy`` = Michel et al. 2019, ``oneshot``, ``random``).
        structures: ``heads`` or ``heads+ffn`` (heads and FFN neuron blocks in one search; docs/search.md).
        ffn_block_size: neurons per FFN block for ``heads+ffn`` (None = 128 or the largest divisor below it).
        max_evaluations: budget in evaluations of the search split. The count, not time, is the budget, so the
            search does not depend on machine speed (80 take ~4.5 min on this project's 2-core host).
        max_seconds: wall-time safety cap (None = none); hitting it makes the result depend on machine speed.
        correction: multiple-comparison correction of the search bound (``none`` or ``bonferroni`` over the
            budget; docs/search.md).
        int8_aware: add the dense model's flips in its shipped form (INT8 file) on the search split to every
            candidate's counts, so the search keeps room for quantization (needs a device profile).
        credit_improvement: False = no credit for an observed net accuracy gain of a pruned candidate.
        rescore_every: greedy (and A*'s greedy seed) re-score importance every this many removals.
        importance_examples: examples per importance (gradient) pass; None = the whole search split.
        branching: A* successors per node.
        batch_size: candidates per evaluator call.
        eval_batch_size: examples per forward pass.
        seed: seed of the random baseline.
        pricing: how candidates are priced: ``none`` (masked) or ``refit`` (after the least-squares weight refit of
            :mod:`edgeprune.recovery.refit`, the recovery the shipped file gets; ~2-3 s more per candidate).
        step_units: units removed per search move (greedy step / A* successor window; ``SearchConfig``).
        fit_examples: search-split texts each candidate's refit fits on (``pricing="refit"``).
    """

    algorithm: str = "astar"
    structures: str = "heads+ffn"
    ffn_block_size: Optional[int] = None
    max_evaluations: int = 40
    max_seconds: Optional[float] = 600.0
    correction: str = "none"
    int8_aware: bool = True
    credit_improvement: bool = False
    rescore_every: int = 8
    importance_examples: Optional[int] = 512
    branching: int = 6
    batch_size: int = 4
    eval_batch_size: int = 32
    seed: int = 0
    pricing: str = "refit"
    step_units: int = 4
    fit_examples: int = 256

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise EdgepruneError(f"unknown {arg('algorithm')} {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.structures not in STRUCTURES:
            raise EdgepruneError(f"unknown {arg('structures')} {self.structures!r}; choose one of {', '.join(STRUCTURES)}")
        if self.ffn_block_size is not None and (self.structures != "heads+ffn" or self.ffn_block_size <= 0):
            raise EdgepruneError("--ffn-block-size must be a positive number of neurons and needs "
                                 "--structures heads+ffn")
        if self.correction not in CORRECTIONS:
            raise EdgepruneError(f"unknown correction {self.correction!r}; choose one of {', '.join(CORRECTIONS)}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise EdgepruneError(f"--search-seconds must be > 0, got {self.max_seconds}")
        if self.max_evaluations < 1:
            raise EdgepruneError(f"max_evaluations must be >= 1, got {self.max_evaluations}")
        if self.pricing not in SEARCH_PRICING:
            raise EdgepruneError(f"unknown search pricing {self.pricing!r}; choose one of {', '.join(SEARCH_PRICING)}")
        for name in ("rescore_every", "branching", "batch_size", "eval_batch_size", "step_units", "fit_examples"):
            if getattr(self, name) < 1:
                raise EdgepruneError(f"{name} must be >= 1, got {getattr(self, name)}")

    def replace(self, **changes: Any) -> "SearchSettings":
        """A copy with some settings changed (unknown names are refused)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise EdgepruneError(f"unknown search settings: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The defaults every command starts from.
DEFAULT_SEARCH = SearchSettings()
