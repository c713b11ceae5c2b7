"""Head importance (Michel, Levy and Neubig 2019, "Are Sixteen Heads Really Better than One?").

Each head gets a gate xi_h (1 = kept) multiplying its output; the importance is the expected absolute gradient of
the loss with respect to the gate, ``I_h = E |d L / d xi_h|``, accumulated over the split. The gates are the
adapter's mask tensor (``mask_heads`` accepts a tensor that requires grad). Removed heads keep gate 0, so the
scores of the remaining heads are *re-scored* for the current state (what Michel's iterative pruning does).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .evaluate import MaskedEvaluator

Head = tuple[int, int]


def head_importance(evaluator: MaskedEvaluator, removed: frozenset = frozenset(), *, normalize: bool = True,
                    target: str = "labels", max_examples: int | None = None) -> dict[Head, float]:
    """Michel importance of every head with the heads in ``removed`` masked.

    Args:
        evaluator: the engine holding the model and the tokenised split (its batches are reused).
        removed: heads (layer, head) already removed (gate 0).
        normalize: divide each layer's scores by their L2 norm, as Michel et al. do before comparing layers.
        target: "labels" (cross-entropy against the gold labels, as in the paper) or "base" (against the unpruned
            model's predictions: needs no labels and measures faithfulness to the base model).
        max_examples: use about this many examples (every k-th length-sorted batch, so all lengths are represented)
            instead of the whole split: a gradient pass costs ~3 evaluations, and the ranking is stable long before
            the whole split is seen. None = all.

    Returns:
        Score per (layer, head), lower = less important. Removed heads get +inf (never chosen again).

    The gradient is summed per batch before taking the absolute value (|sum| rather than sum of |per example|):
    per-example gradients would cost one backward pass per example.
    """
    ev = evaluator
    model, adapter = ev.model, ev.adapter
    gates = torch.ones(ev.num_layers, ev.max_heads)
    for l, h in removed:
        gates[l, h] = 0.0
    gates.requires_grad_(True)
    total = torch.zeros(ev.num_layers, ev.max_heads)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the gates need gradients: saves the weight-gradient memory and time
    batches = ev.batches
    if max_examples is not None and max_examples < ev.n:
        stride = max(1, round(ev.n / max(max_examples, 1)))
        batches = ev.batches[::stride]
    used = sum(len(b.index) for b in batches)
    try:
        with torch.enable_grad(), adapter.mask_heads(model, gates):
            for bi, b in enumerate(batches):
                hidden, layer_mask = ev._embed(b)
                for i in range(ev.num_layers):
                    hidden = adapter.layer_forward(model, i, hidden, layer_mask)
                logits = adapter.classify(model, hidden)
                y = b.labels if target == "labels" else ev.base_pred[b.index]
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, gates)
                total += grad.abs()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    scores = total / used
    if normalize:
        norms = scores.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-20)
        scores = scores / norms
    out: dict[Head, float] = {}
    for l, n_heads in enumerate(ev.layout.heads_per_layer):
        for h in range(n_heads):
            out[(l, h)] = float("inf") if (l, h) in removed else float(scores[l, h])
    return out


def make_rescorer(evaluator: MaskedEvaluator, **kwargs) -> Callable[[frozenset], dict[Head, float]]:
    """A ``rescore(state)`` callback for the search (greedy re-scoring), bound to ``evaluator``."""

    def rescore(state: frozenset) -> dict[Head, float]:
        return head_importance(evaluator, frozenset(state), **kwargs)

    return rescore


__all__ = ["head_importance", "make_rescorer"]
