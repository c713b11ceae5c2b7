"""The adapter contract: everything edgeprune needs to know about a model family.

Core modules never name a family's classes; they ask the adapter. An adapter is stateless: every method takes the
model. A pruned model carries its plan as ``model.edgeprune_plan`` (a :class:`~edgeprune.plan.HeadPlan` in
original head indices), so layouts, masks and further pruning are always expressed in original indices.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Iterator

import torch
from torch import nn

from ..errors import PlanError
from ..plan import HeadLayout, HeadPlan
from .modules import slice_linear

PLAN_ATTR = "edgeprune_plan"


class Adapter(ABC):
    """Family-specific access to layers, heads and the classifier of a sequence-classification model."""

    #: ``config.model_type`` values this adapter serves (filled by ``register_adapter``).
    model_types: tuple[str, ...] = ()

    # ---- family specifics (implemented by subclasses) -------------------------------------------------------------
    @abstractmethod
    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The encoder's layer list."""

    @abstractmethod
    def _set_layers(self, model: nn.Module, layers: list[nn.Module]) -> None:
        """Replace the encoder's layer list (and the config's layer count)."""

    @abstractmethod
    def _num_heads_config(self, config) -> int:
        """Heads per layer in the config of an unpruned model."""

    @abstractmethod
    def _out_proj(self, layer: nn.Module) -> nn.Linear | None:
        """The attention output projection whose input is the concatenated heads (None for a 0-head layer)."""

    @abstractmethod
    def _make_layer_fusable(self, layer: nn.Module, config) -> None:
        """Swap the layer's self-attention for a fusable module (idempotent)."""

    @abstractmethod
    def _prune_layer(self, layer: nn.Module, keep_positions: list[int], config) -> None:
        """Keep only the heads at ``keep_positions`` (current positions) in a fusable layer."""

    @abstractmethod
    def embed(self, model: nn.Module, input_ids, attention_mask, token_type_ids=None):
        """Embeddings and the mask every layer takes: ``(hidden (B, S, D), layer_mask (B, 1, 1, S) additive)``."""

    @abstractmethod
    def classify(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the last layer's hidden states (pooler / pre-classifier + classifier)."""

    # ---- shared behaviour ----------------------------------------------------------------------------------------
    def current_plan(self, model: nn.Module) -> HeadPlan:
        """The model's plan in original indices (the full plan for an unpruned model)."""
        plan = getattr(model, PLAN_ATTR, None)
        if plan is not None:
            return plan
        n = self._num_heads_config(model.config)
        return HeadPlan.full([n] * len(self.layers(model)))

    def layout(self, model: nn.Module) -> HeadLayout:
        """Heads per layer of the *unpruned* model, head size and hidden size."""
        n = self._num_heads_config(model.config)
        plan = self.current_plan(model)
        return HeadLayout(tuple(plan.num_heads), model.config.hidden_size // n, model.config.hidden_size)

    def head_size(self, model: nn.Module) -> int:
        return model.config.hidden_size // self._num_heads_config(model.config)

    def make_fusable_(self, model: nn.Module) -> nn.Module:
        """Replace every self-attention by an explicit-reshape module (same weights, same state-dict keys)."""
        for layer in self.layers(model):
            self._make_layer_fusable(layer, model.config)
        return model

    @contextlib.contextmanager
    def mask_heads(self, model: nn.Module, mask) -> Iterator[None]:
        """Zero heads during forward passes inside the ``with`` block.

        Args:
            model: the model (pruned or not).
            mask: a :class:`HeadPlan` in original indices, or a float tensor ``(layers, max_heads)`` over the
                model's *current* heads (1 keep, 0 drop; may require grad, for gradient importance).

        The hooks scale each head's slice of the input to the attention output projection, so they work with
        eager and SDPA attention on both transformers lines (``head_mask`` is ignored in 5.x).
        """
        current = self.current_plan(model)
        if isinstance(mask, HeadPlan):
            mask.check_fits(self.layout(model))
            rows = []
            for layer, kept in enumerate(current.kept):
                rows.append([1.0 if h in mask.kept[layer] else 0.0 for h in kept])
            width = max((len(r) for r in rows), default=0)
            mask = torch.tensor([r + [0.0] * (width - len(r)) for r in rows])
        d = self.head_size(model)
        handles = []
        try:
            for i, layer in enumerate(self.layers(model)):
                proj = self._out_proj(layer)
                count = len(current.kept[i])
                if proj is None or count == 0:
                    continue
                if i >= mask.shape[0]:
                    raise PlanError(f"head mask has {mask.shape[0]} rows but the model has {len(current.kept)} layers")
                row = mask[i, :count]

                def hook(module, args, row=row):
                    scale = row.repeat_interleave(d).to(args[0].dtype)  # (H*d,)
                    return (args[0] * scale,) + tuple(args[1:])

                handles.append(proj.register_forward_pre_hook(hook))
            yield
        finally:
            for h in handles:
                h.remove()

    def prune_heads_(self, model: nn.Module, plan: HeadPlan) -> nn.Module:
        """Physically remove the heads ``plan`` drops (original indices), in place.

        Works on unpruned and already-pruned models (the new plan must keep a subset of the current heads).
        Layers left with 0 heads become bias + residual + LayerNorm. The plan is stored as ``model.edgeprune_plan``.
        """
        current = self.current_plan(model)
        plan.check_fits(self.layout(model))
        self.make_fusable_(model)
        layers = self.layers(model)
        for i, layer in enumerate(layers):
            now, want = current.kept[i], plan.kept[i]
            gone = set(want) - set(now)
            if gone:
                raise PlanError(f"layer {i}: head(s) {sorted(gone)} were already removed from this model")
            if list(now) == list(want):
                continue
            self._prune_layer(layer, [now.index(h) for h in want], model.config)
        setattr(model, PLAN_ATTR, plan)
        return model

    def keep_layers_(self, model: nn.Module, indices: list[int]) -> nn.Module:
        """Truncate the encoder to the given layers (``[]`` leaves embeddings + classifier)."""
        layers = self.layers(model)
        bad = [i for i in indices if not 0 <= i < len(layers)]
        if bad:
            raise PlanError(f"layer(s) {bad} do not exist (the model has layers 0..{len(layers) - 1})")
        plan = self.current_plan(model)
        self._set_layers(model, [layers[i] for i in indices])
        if getattr(model, PLAN_ATTR, None) is not None:
            setattr(
                model,
                PLAN_ATTR,
                HeadPlan(tuple(plan.num_heads[i] for i in indices), tuple(plan.kept[i] for i in indices)),
            )
        return model

    def layer_forward(self, model: nn.Module, i: int, hidden: torch.Tensor, layer_mask) -> torch.Tensor:
        """Run encoder layer ``i`` (call :meth:`make_fusable_` first so every layer accepts ``layer_mask``)."""
        out = self.layers(model)[i](hidden, layer_mask)
        return out[0] if isinstance(out, tuple) else out

    @staticmethod
    def additive_mask(attention_mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """(B, S) 0/1 -> (B, 1, 1, S) additive mask (0 keep, dtype min drop)."""
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    @staticmethod
    def _slice_qkv(linears: list[nn.Linear], keep_positions: list[int], head_size: int) -> list[nn.Linear]:
        index = torch.tensor(
            [p * head_size + j for p in keep_positions for j in range(head_size)], dtype=torch.long
        )
        return [slice_linear(lin, index, 0) for lin in linears]

    @staticmethod
    def _slice_out(linear: nn.Linear, keep_positions: list[int], head_size: int) -> nn.Linear:
        index = torch.tensor(
            [p * head_size + j for p in keep_positions for j in range(head_size)], dtype=torch.long
        )
        return slice_linear(linear, index, 1)
