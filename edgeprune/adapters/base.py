"""The adapter contract: everything edgeprune needs to know about a model family.

Core modules never name a family's classes; they ask the adapter. An adapter is stateless: every method takes the
model. A pruned model carries its plan as ``model.edgeprune_plan`` (a :class:`~edgeprune.plan.HeadPlan` in
original head indices, with an FFN part in original block indices when FFN blocks were removed), so layouts, masks
and further pruning are always expressed in original indices.

Two structures are prunable per layer:

* attention heads: masked by a pre-hook on the attention output projection, removed by slicing q/k/v rows and
  output-projection columns;
* FFN blocks (``block_size`` consecutive intermediate neurons): masked by a pre-hook on the FFN output projection
  (its input is the activated intermediate), removed by slicing the FFN input projection's rows and the output
  projection's columns. A layer left with no FFN block contributes only the output projection's bias.
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
    #: Whether ONNX Runtime's offline BERT optimizer fuses this family's attention (``graph = "fused"``). Families
    #: with relative-position or rotary terms in the scores (DeBERTa, MPNet, ModernBERT) are not matched by its
    #: Attention pattern; they ship the plain graph (ORT still fuses MatMul/LayerNorm/Gelu at session load).
    ort_attention_fusion: bool = True

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
    def _ffn_width_config(self, config) -> int:
        """FFN intermediate width of an unpruned layer (``intermediate_size`` / ``hidden_dim``)."""

    @abstractmethod
    def _ffn_in(self, layer: nn.Module) -> nn.Linear | None:
        """The FFN input projection (hidden -> intermediate; None for a layer without FFN blocks)."""

    @abstractmethod
    def _ffn_out(self, layer: nn.Module) -> nn.Linear | None:
        """The FFN output projection (intermediate -> hidden; None for a layer without FFN blocks)."""

    @abstractmethod
    def _prune_ffn_layer(self, layer: nn.Module, keep_neurons: list[int], config) -> None:
        """Keep only the intermediate neurons at ``keep_neurons`` (current positions); [] = no FFN at all."""

    @abstractmethod
    def embed(self, model: nn.Module, input_ids, attention_mask, token_type_ids=None):
        """Embeddings and the mask every layer takes: ``(hidden (B, S, D), layer_mask (B, 1, 1, S) additive)``."""

    @abstractmethod
    def classify(self, model: nn.Module, hidden: torch.Tensor, layer_mask=None) -> torch.Tensor:
        """Logits from the last layer's hidden states (pooler / pre-classifier + classifier).

        ``layer_mask`` is what :meth:`embed` returned; heads that pool over the real tokens (ModernBERT's
        ``classifier_pooling="mean"``) need it, first-token heads ignore it.
        """

    def unsupported_reason(self, config) -> str | None:
        """Why a config of this family cannot be pruned by this adapter (None = it can)."""
        return None

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

    # ---- per-layer projections (read-only access, e.g. for edgeprune.recovery.scale) ----------------------------------
    def attention_output(self, model: nn.Module, i: int) -> nn.Linear | None:
        """Layer ``i``'s attention output projection: its input is the concatenated heads (None with 0 heads)."""
        return self._out_proj(self.layers(model)[i])

    def ffn_input(self, model: nn.Module, i: int) -> nn.Linear | None:
        """Layer ``i``'s FFN input projection: its input is the attention sublayer's output (None without FFN)."""
        return self._ffn_in(self.layers(model)[i])

    def ffn_output(self, model: nn.Module, i: int) -> nn.Linear | None:
        """Layer ``i``'s FFN output projection: its input is the activated intermediate (None without FFN)."""
        return self._ffn_out(self.layers(model)[i])

    def ffn_residual(self, model: nn.Module, i: int) -> nn.Module | None:
        """A module of layer ``i`` whose first input is the FFN sublayer's residual stream.

        Post-LayerNorm families (BERT, DeBERTa, MPNet) add the FFN output to the FFN input itself, so this is the
        FFN input projection; pre-LayerNorm families (ModernBERT) override it with the norm in front of the FFN.
        """
        return self.ffn_input(model, i)

    # ---- FFN geometry --------------------------------------------------------------------------------------------
    def ffn_sizes(self, model: nn.Module) -> tuple[int, ...]:
        """FFN intermediate width of every layer of the *unpruned* model."""
        return (self._ffn_width_config(model.config),) * len(self.layers(model))

    def ffn_num_blocks(self, model: nn.Module, block_size: int) -> tuple[int, ...]:
        """FFN blocks per layer of the unpruned model for ``block_size``.

        Raises:
            PlanError: the intermediate width is not a multiple of ``block_size``.
        """
        out = []
        for layer, width in enumerate(self.ffn_sizes(model)):
            if block_size <= 0 or width % block_size:
                raise PlanError(
                    f"layer {layer}: FFN width {width} is not divisible by the block size {block_size}"
                )
            out.append(width // block_size)
        return tuple(out)

    def full_plan(self, model: nn.Module, block_size: int | None = None) -> HeadPlan:
        """The plan keeping every head (and, with ``block_size``, every FFN block) of the unpruned model."""
        plan = HeadPlan.full(self.layout(model).heads_per_layer)
        if block_size is None:
            return plan
        return plan.with_ffn(block_size, self.ffn_num_blocks(model, block_size))

    def _current_ffn(self, model: nn.Module, block_size: int) -> tuple[tuple[int, ...], ...]:
        """Currently kept FFN blocks per layer, in original indices of ``block_size``-wide blocks.

        Raises:
            PlanError: the model was FFN-pruned with another block size (its blocks cannot be re-cut).
        """
        current = self.current_plan(model)
        if current.has_ffn and current.ffn_block_size != block_size:
            if current.ffn_num_removed:
                raise PlanError(
                    f"the model's FFN was pruned in blocks of {current.ffn_block_size} neurons; a plan with blocks "
                    f"of {block_size} cannot be applied to it"
                )
            current = current.heads_only()
        if current.has_ffn:
            return current.ffn_kept
        return tuple(tuple(range(n)) for n in self.ffn_num_blocks(model, block_size))

    def _check_ffn_fits(self, model: nn.Module, plan: HeadPlan) -> None:
        expected = self.ffn_num_blocks(model, plan.ffn_block_size)
        if tuple(plan.ffn_num_blocks) != expected:
            raise PlanError(
                f"FFN plan has blocks per layer {list(plan.ffn_num_blocks)} of {plan.ffn_block_size} neurons but the "
                f"model has {list(expected)}"
            )

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
        eager and SDPA attention on both transformers lines (``head_mask`` is ignored in 5.x). A plan with an FFN
        part masks its FFN blocks too (see :meth:`mask_ffn`), so masking a plan and pruning it agree.
        """
        if isinstance(mask, HeadPlan) and mask.has_ffn:
            with self._mask_heads(model, mask.heads_only()), self.mask_ffn(model, mask):
                yield
            return
        with self._mask_heads(model, mask):
            yield

    @contextlib.contextmanager
    def _mask_heads(self, model: nn.Module, mask) -> Iterator[None]:
        current = self.current_plan(model)
        if isinstance(mask, HeadPlan):
            mask.check_fits(self.layout(model))
            rows = []
            for layer, kept in enumerate(current.kept):
                rows.append([1.0 if h in mask.kept[layer] else 0.0 for h in kept])
            width = max((len(r) for r in rows), default=0)
            mask = torch.tensor([r + [0.0] * (width - len(r)) for r in rows])
        layers = self.layers(model)
        with _scale_slices([self._out_proj(layer) for layer in layers], [len(k) for k in current.kept], mask,
                           self.head_size(model), "head"):
            yield

    @contextlib.contextmanager
    def mask_ffn(self, model: nn.Module, mask, *, block_size: int | None = None) -> Iterator[None]:
        """Zero FFN blocks during forward passes inside the ``with`` block (combinable with :meth:`mask_heads`).

        Args:
            model: the model (pruned or not).
            mask: a :class:`HeadPlan` with an FFN part (original block indices), or a float tensor
                ``(layers, max_blocks)`` over the model's *current* FFN blocks (1 keep, 0 drop; may require grad).
            block_size: neurons per block for a tensor mask on a model that has no FFN plan yet (default:
                intermediate width // mask columns). A model already FFN-pruned uses its own block size.

        The hooks scale each block's slice of the input to the FFN output projection (the activated intermediate),
        which is exactly what removing the block's neurons does.
        """
        current = self.current_plan(model)
        if isinstance(mask, HeadPlan):
            if not mask.has_ffn:
                raise PlanError("mask_ffn needs a plan with an FFN part (HeadPlan.with_ffn)")
            self._check_ffn_fits(model, mask)
            bs = mask.ffn_block_size
            now = self._current_ffn(model, bs)
            rows = [[1.0 if b in mask.ffn_kept[i] else 0.0 for b in kept] for i, kept in enumerate(now)]
            width = max((len(r) for r in rows), default=0)
            mask = torch.tensor([r + [0.0] * (width - len(r)) for r in rows])
        else:
            if current.has_ffn:
                bs = current.ffn_block_size
            elif block_size is not None:
                bs = int(block_size)
            else:
                width = self.ffn_sizes(model)[0]
                if mask.shape[-1] <= 0 or width % mask.shape[-1]:
                    raise PlanError(f"FFN mask has {mask.shape[-1]} columns, which do not divide the width {width}")
                bs = width // mask.shape[-1]
            now = self._current_ffn(model, bs)
        layers = self.layers(model)
        with _scale_slices([self._ffn_out(layer) for layer in layers], [len(k) for k in now], mask, bs, "FFN"):
            yield

    def prune_ffn_(self, model: nn.Module, plan: HeadPlan) -> nn.Module:
        """Physically remove the FFN blocks ``plan`` drops (original block indices), in place; heads untouched.

        Works on unpruned and already FFN-pruned models (the plan must keep a subset of the current blocks, in the
        same block size). A layer left with no block keeps only the FFN output bias (+ residual + LayerNorm).
        The model's stored plan gets the FFN part of ``plan``.
        """
        if not plan.has_ffn:
            return model
        now = self._validate_ffn(model, plan)
        bs = plan.ffn_block_size
        for i, layer in enumerate(self.layers(model)):
            have, want = now[i], plan.ffn_kept[i]
            if list(have) == list(want):
                continue
            keep = [have.index(b) * bs + j for b in want for j in range(bs)]
            self._prune_ffn_layer(layer, keep, model.config)
        current = self.current_plan(model)
        setattr(model, PLAN_ATTR, current.with_ffn(bs, plan.ffn_num_blocks, plan.ffn_kept))
        return model

    def _validate_ffn(self, model: nn.Module, plan: HeadPlan) -> tuple[tuple[int, ...], ...]:
        """Check that ``plan``'s FFN part fits the model and keeps a subset of its blocks; return the current ones."""
        self._check_ffn_fits(model, plan)
        now = self._current_ffn(model, plan.ffn_block_size)
        for i, (have, want) in enumerate(zip(now, plan.ffn_kept)):
            gone = set(want) - set(have)
            if gone:
                raise PlanError(f"layer {i}: FFN block(s) {sorted(gone)} were already removed from this model")
        return now

    def check_plan(self, model: nn.Module, plan: HeadPlan) -> None:
        """Raise :class:`PlanError` unless ``plan`` fits the model: same head layout and, for an FFN part, a block
        size dividing the FFN width, matching block counts and only blocks the model still has."""
        plan.check_fits(self.layout(model))
        if plan.has_ffn:
            self._validate_ffn(model, plan)

    def prune_heads_(self, model: nn.Module, plan: HeadPlan) -> nn.Module:
        """Physically remove the heads ``plan`` drops (original indices), in place; also its FFN blocks if the plan
        has an FFN part (:meth:`prune_ffn_`).

        Works on unpruned and already-pruned models (the new plan must keep a subset of the current heads).
        Layers left with 0 heads become bias + residual + LayerNorm. The plan is stored as ``model.edgeprune_plan``
        (a plan without an FFN part leaves the model's FFN, and the FFN part of its stored plan, as they are).
        """
        current = self.current_plan(model)
        plan.check_fits(self.layout(model))
        if plan.has_ffn:
            self._validate_ffn(model, plan)  # fail before any surgery, not halfway through
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
        if plan.has_ffn:
            self.prune_ffn_(model, plan)
        elif current.has_ffn:
            plan = plan.with_ffn(current.ffn_block_size, current.ffn_num_blocks, current.ffn_kept)
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
            setattr(model, PLAN_ATTR, plan.select_layers(indices))
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


@contextlib.contextmanager
def _scale_slices(projections: list, counts: list[int], mask: torch.Tensor, width: int, what: str) -> Iterator[None]:
    """Forward pre-hooks scaling unit j's ``width``-wide slice of ``projections[i]``'s input by ``mask[i, j]``.

    Units are heads (slices of the attention output projection's input) or FFN blocks (slices of the FFN output
    projection's input); zeroing a slice is exactly what removing the unit does. Layers with no unit are skipped.
    """
    handles = []
    try:
        for i, (proj, count) in enumerate(zip(projections, counts)):
            if proj is None or count == 0:
                continue
            if i >= mask.shape[0]:
                raise PlanError(f"{what} mask has {mask.shape[0]} rows but the model has {len(counts)} layers")
            if mask.shape[1] < count:
                raise PlanError(f"{what} mask has {mask.shape[1]} columns but layer {i} has {count} units")
            row = mask[i, :count]

            def hook(module, args, row=row):
                scale = row.repeat_interleave(width).to(args[0].dtype)  # (units * width,)
                return (args[0] * scale,) + tuple(args[1:])

            handles.append(proj.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
