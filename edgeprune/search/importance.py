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

from edgeprune.search.evaluate import MaskedEvaluator

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
    gates = torch.ones(ev.num_layers, ev.max_heads)
    for l, h in removed:
        gates[l, h] = 0.0
    batches = ev.batches
    if max_examples is not None and max_examples < ev.n:
        stride = max(1, round(ev.n / max(max_examples, 1)))
        batches = ev.batches[::stride]
    (total,), used = gate_gradients(ev, gates, batches=batches, target=target)
    scores = total / used
    if normalize:
        scores = normalise_rows(scores)
    out: dict[Head, float] = {}
    for l, n_heads in enumerate(ev.layout.heads_per_layer):
        for h in range(n_heads):
            out[(l, h)] = float("inf") if (l, h) in removed else float(scores[l, h])
    return out


def normalise_rows(scores: torch.Tensor) -> torch.Tensor:
    """Divide each layer's (row's) scores by their L2 norm, as Michel et al. do before comparing layers."""
    return scores / scores.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-20)


def gate_gradients(evaluator: MaskedEvaluator, head_gates: torch.Tensor, *, block_gates: torch.Tensor | None = None,
                   block_size: int | None = None, batches=None, target: str = "labels"):
    """Accumulated |d loss / d gate| per batch for head gates (and FFN-block gates), one backward pass per batch.

    Args:
        evaluator: the engine holding the model and the tokenised split.
        head_gates: ``(layers, max_heads)`` gate values (0 for removed heads).
        block_gates: optional ``(layers, max_blocks)`` FFN-block gates (needs ``block_size``).
        block_size: neurons per FFN block.
        batches: the evaluator's batches to use (default: all).
        target: "labels" (cross-entropy against the gold labels) or "base" (against the unpruned predictions).

    Returns:
        ``(totals, examples)``: a tuple with the summed absolute gradients of each gate tensor given, and the
        number of examples they were accumulated over. The gradient is summed per batch before taking the absolute
        value (per-example gradients would cost one backward pass per example).
    """
    import contextlib

    ev = evaluator
    model, adapter = ev.model, ev.adapter
    batches = ev.batches if batches is None else batches
    gates = [head_gates.detach().clone().requires_grad_(True)]
    if block_gates is not None:
        gates.append(block_gates.detach().clone().requires_grad_(True))
    totals = [torch.zeros_like(g) for g in gates]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the gates need gradients: saves the weight-gradient memory and time
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            stack.enter_context(adapter.mask_heads(model, gates[0]))
            if block_gates is not None:
                stack.enter_context(adapter.mask_ffn(model, gates[1], block_size=block_size))
            for b in batches:
                hidden, layer_mask = ev._embed(b)
                for i in range(ev.num_layers):
                    hidden = adapter.layer_forward(model, i, hidden, layer_mask)
                logits = adapter.classify(model, hidden, layer_mask)
                y = b.labels if target == "labels" else ev.base_pred[b.index]
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
                for total, grad in zip(totals, torch.autograd.grad(loss, gates)):
                    total += grad.abs()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return tuple(totals), sum(len(b.index) for b in batches)


def make_rescorer(evaluator: MaskedEvaluator, **kwargs) -> Callable[[frozenset], dict[Head, float]]:
    """A ``rescore(state)`` callback for the search (greedy re-scoring), bound to ``evaluator``."""

    def rescore(state: frozenset) -> dict[Head, float]:
        return head_importance(evaluator, frozenset(state), **kwargs)

    return rescore


__all__ = ["gate_gradients", "head_importance", "make_rescorer", "normalise_rows"]
