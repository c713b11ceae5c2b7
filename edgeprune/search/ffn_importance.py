"""Gradient importance of FFN neuron blocks (and of heads, in the same backward pass).

Same estimator as :mod:`edgeprune.search.importance` for heads (Michel et al. 2019), applied to FFN blocks: each block of
``block_size`` intermediate neurons gets a gate ``xi_b`` (1 = kept) multiplying its slice of the activated
intermediate (the adapter's :meth:`~edgeprune.adapters.base.Adapter.mask_ffn` accepts a gate tensor that requires
grad); the importance is ``I_b = E |d L / d xi_b|`` over the split. Removed blocks (and removed heads) keep gate 0,
so the remaining ones are re-scored for the current state.

Comparing heads with FFN blocks: both gates scale one structure's additive contribution to the residual stream, so
un-normalised scores (``normalize=False``) are the same first-order estimate (|dL/dxi| ~ loss change of removing the
structure) for both kinds and can be ranked together, e.g. per millisecond the structure saves. Michel's per-layer L2
normalisation (``normalize=True``) is applied per kind and only makes sense within one kind.
"""

from __future__ import annotations

import torch

from edgeprune.errors import PlanError
from edgeprune.search.evaluate import MaskedEvaluator
from edgeprune.search.importance import gate_gradients, normalise_rows

Head = tuple[int, int]
Block = tuple[int, int]


def joint_importance(evaluator: MaskedEvaluator, block_size: int, *, removed_heads: frozenset = frozenset(),
                     removed_blocks: frozenset = frozenset(), normalize: bool = False,
                     target: str = "labels", max_examples: int | None = None
                     ) -> tuple[dict[Head, float], dict[Block, float]]:
    """Gradient importance of every head and every FFN block, with the given ones removed (gate 0).

    Args:
        evaluator: the engine holding the (unpruned) model and the tokenised split.
        block_size: neurons per FFN block (must divide the intermediate width).
        removed_heads: heads (layer, head) already removed.
        removed_blocks: FFN blocks (layer, block) already removed.
        normalize: divide each layer's scores by their L2 norm, per kind (heads, blocks), as Michel et al. do.
        target: "labels" (cross-entropy against the gold labels) or "base" (against the unpruned model's
            predictions; needs no labels).
        max_examples: use about this many examples (every k-th length-sorted batch); None = the whole split.

    Returns:
        ``(head_scores, block_scores)``: lower = less important; removed structures get +inf.

    Raises:
        PlanError: the block size does not divide the FFN width, a removed block does not exist, or the model's FFN
            is already pruned (gates are over the unpruned model's blocks).
    """
    ev = evaluator
    model, adapter = ev.model, ev.adapter
    current = adapter.current_plan(model)
    if current.ffn_num_removed:
        raise PlanError("FFN importance needs a model whose FFN blocks are all present (use masks, not surgery)")
    num_blocks = adapter.ffn_num_blocks(model, block_size)
    bad = [(l, b) for l, b in removed_blocks if not (0 <= l < len(num_blocks) and 0 <= b < num_blocks[l])]
    if bad:
        raise PlanError(f"FFN block(s) {sorted(bad)} do not exist (blocks per layer {list(num_blocks)})")
    head_gates = torch.ones(ev.num_layers, ev.max_heads)
    for l, h in removed_heads:
        head_gates[l, h] = 0.0
    block_gates = torch.ones(ev.num_layers, max(num_blocks))
    for l, b in removed_blocks:
        block_gates[l, b] = 0.0
    batches = ev.batches
    if max_examples is not None and max_examples < ev.n:
        batches = ev.batches[::max(1, round(ev.n / max(max_examples, 1)))]
    (head_total, block_total), used = gate_gradients(ev, head_gates, block_gates=block_gates,
                                                     block_size=block_size, batches=batches, target=target)
    hs, bs = head_total / used, block_total / used
    if normalize:
        hs, bs = normalise_rows(hs), normalise_rows(bs)
    heads = {(l, h): float("inf") if (l, h) in removed_heads else float(hs[l, h])
             for l, n in enumerate(ev.layout.heads_per_layer) for h in range(n)}
    blocks = {(l, k): float("inf") if (l, k) in removed_blocks else float(bs[l, k])
              for l, n in enumerate(num_blocks) for k in range(n)}
    return heads, blocks


def ffn_block_importance(evaluator: MaskedEvaluator, block_size: int, removed: frozenset = frozenset(), *,
                         removed_heads: frozenset = frozenset(), normalize: bool = True,
                         target: str = "labels") -> dict[Block, float]:
    """Gradient importance of every FFN block (``removed`` blocks masked, and ``removed_heads``).

    See :func:`joint_importance` for the arguments; returns the block scores only (+inf for removed blocks).
    """
    return joint_importance(evaluator, block_size, removed_heads=removed_heads, removed_blocks=removed,
                            normalize=normalize, target=target)[1]


def unit_importance(evaluator: MaskedEvaluator, removed: frozenset = frozenset(), *,
                    max_examples: int | None = None, target: str = "labels") -> dict[tuple[int, int], float]:
    """Importance of every unit of the evaluator's joint space (heads and FFN blocks) for the state ``removed``.

    Un-normalised gate gradients, so heads and blocks share one scale (see the module docstring); removed units get
    +inf. The evaluator must have been built with ``ffn_block_size``.
    """
    space = evaluator.space
    if not space.has_ffn:
        raise PlanError("unit_importance needs an evaluator over heads and FFN blocks (ffn_block_size)")
    heads, blocks = space.split(removed)
    hs, bs = joint_importance(evaluator, space.ffn_block_size, removed_heads=frozenset(heads),
                              removed_blocks=frozenset(blocks), normalize=False, target=target,
                              max_examples=max_examples)
    out: dict[tuple[int, int], float] = dict(hs)
    out.update({space.block_unit(l, b): v for (l, b), v in bs.items()})
    return out


__all__ = ["ffn_block_importance", "joint_importance", "unit_importance"]
