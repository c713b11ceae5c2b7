"""DeBERTa-v2/v3 adapter (``model_type`` ``deberta-v2``): disentangled attention.

``deberta.encoder.layer[i].attention.{self.query_proj|key_proj|value_proj[|pos_key_proj|pos_query_proj],
output.dense|LayerNorm}``, ``intermediate.dense``, ``output.dense|LayerNorm``: BERT's layout (post-LayerNorm), so the
FFN surgery and the 0-head / 0-block replacements are BERT's. What differs is the attention score:

    score = (q k^T + c2p + p2c) / sqrt(d * (1 + #position terms))

* ``c2p`` (content -> position): ``q`` against the *position keys* of the shared relative embeddings, gathered by the
  bucketed relative distance; ``p2c`` (position -> content): ``k`` against the *position queries*. ``pos_att_type``
  says which terms exist; the scale counts them (``scale_factor`` = 1 + number of terms) and uses the head size
  ``d``, which pruning never changes (only the number of heads shrinks).
* The position keys/queries are projected per head: with ``share_att_key`` by the content ``key_proj`` /
  ``query_proj`` themselves, otherwise by ``pos_key_proj`` / ``pos_query_proj``. Removing a head therefore slices
  the rows of every one of these projections that exists; the relative embedding table (``encoder.rel_embeddings``,
  shared by all layers, of hidden width) is untouched.

The relative positions, the (optionally LayerNorm-ed) relative embeddings and the pairwise 0/1 mask are computed once
per batch by :meth:`DebertaV2Adapter.embed` (as the HF encoder does) and handed to every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import register_adapter
from .bert import BertFamilyAdapter
from .modules import BiasResidualNorm


@dataclass
class DebertaLayerInputs:
    """What every DeBERTa layer takes besides the hidden states (the adapter's ``layer_mask``)."""

    mask: torch.Tensor  # (B, 1, S, S) 0/1: query i may attend to key j
    relative_pos: torch.Tensor | None  # (1, S, S) bucketed relative distance, None without relative attention
    rel_embeddings: torch.Tensor | None  # (2 * span, D) relative embeddings (after norm_rel_ebd)


class FusableDisentangledAttention(nn.Module):
    """Drop-in for ``DisentangledSelfAttention`` with explicit ``view(B, S, H, d)`` reshapes and any head count.

    Keeps the original Linear objects under the original names (same state-dict keys); returns ``(context, None)``.
    """

    def __init__(self, old: nn.Module, num_heads: int):
        super().__init__()
        self.query_proj, self.key_proj, self.value_proj = old.query_proj, old.key_proj, old.value_proj
        self.num_attention_heads = num_heads
        self.attention_head_size = old.attention_head_size
        self.all_head_size = num_heads * old.attention_head_size
        self.share_att_key = old.share_att_key
        self.pos_att_type = list(old.pos_att_type)
        self.relative_attention = old.relative_attention
        if self.relative_attention:
            self.pos_ebd_size = old.pos_ebd_size
            self.pos_dropout = old.pos_dropout
            if not self.share_att_key:
                if "c2p" in self.pos_att_type:
                    self.pos_key_proj = old.pos_key_proj
                if "p2c" in self.pos_att_type:
                    self.pos_query_proj = old.pos_query_proj
        self.dropout = old.dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.size(0), x.size(1)
        return x.view(b, s, self.num_attention_heads, self.attention_head_size).transpose(1, 2)  # (B, H, S, d)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False, query_states=None,
                relative_pos=None, rel_embeddings=None, **kwargs):
        b, s = hidden_states.size(0), hidden_states.size(1)
        q = self._heads(self.query_proj(hidden_states))  # (B, H, S, d)
        k = self._heads(self.key_proj(hidden_states))
        v = self._heads(self.value_proj(hidden_states))
        # The scale depends on the head size and on how many score terms are added (content + each position term).
        scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        scale = torch.sqrt(torch.tensor(self.attention_head_size * scale_factor, dtype=torch.float)).to(q.dtype)
        scores = torch.matmul(q, k.transpose(-1, -2) / scale)  # (B, H, S, S)
        if self.relative_attention and rel_embeddings is not None:
            scores = scores + self._position_scores(q, k, relative_pos, self.pos_dropout(rel_embeddings), scale)
        if attention_mask is not None:
            if attention_mask.dim() == 2:  # (B, S) padding mask, as the HF encoder expands it
                m = attention_mask[:, None, None, :]
                attention_mask = m * m.squeeze(-2).unsqueeze(-1)  # (B, 1, S, S)
            scores = scores.masked_fill(~attention_mask.bool(), torch.finfo(q.dtype).min)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).transpose(1, 2).contiguous()  # (B, S, H, d)
        return context.view(b, s, self.all_head_size), None

    def _position_scores(self, q, k, relative_pos, rel_embeddings, scale):
        span = self.pos_ebd_size
        rel = rel_embeddings[: span * 2, :]  # (2A, D)
        h, d = self.num_attention_heads, self.attention_head_size
        s = q.size(-2)
        relative_pos = relative_pos.to(torch.long).reshape(s, s)  # (S, S): query i - key j, bucketed
        out = 0
        if "c2p" in self.pos_att_type:
            proj = self.key_proj if self.share_att_key else self.pos_key_proj
            pos_k = proj(rel).view(span * 2, h, d).transpose(0, 1)  # (H, 2A, d)
            c2p = torch.matmul(q, pos_k.transpose(-1, -2))  # (B, H, S, 2A)
            idx = torch.clamp(relative_pos + span, 0, span * 2 - 1)  # (S, S)
            out = out + torch.gather(c2p, -1, idx.expand(q.size(0), h, s, s)) / scale
        if "p2c" in self.pos_att_type:
            proj = self.query_proj if self.share_att_key else self.pos_query_proj
            pos_q = proj(rel).view(span * 2, h, d).transpose(0, 1)  # (H, 2A, d)
            p2c = torch.matmul(k, pos_q.transpose(-1, -2))  # (B, H, S, 2A)
            idx = torch.clamp(-relative_pos + span, 0, span * 2 - 1)  # (S, S)
            out = out + torch.gather(p2c, -1, idx.expand(q.size(0), h, s, s)).transpose(-1, -2) / scale
        return out


class _PassThroughLayer(nn.Module):
    """Stands in for the layers of an encoder truncated to none (``keep_layers_([])``, the latency table's
    embeddings + classifier model): ``DebertaV2Encoder.forward`` reads its last layer's output and fails with an
    empty layer list. Invisible to the adapter (:meth:`DebertaV2Adapter.layers` skips it)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


@register_adapter("deberta-v2")
class DebertaV2Adapter(BertFamilyAdapter):
    """DeBERTa-v2/v3: BERT's module layout with disentangled self-attention (see the module docstring)."""

    ort_attention_fusion = False

    def unsupported_reason(self, config) -> str | None:
        if int(getattr(config, "conv_kernel_size", 0) or 0) > 0:
            return ("its first layer is followed by a convolution (conv_kernel_size > 0, e.g. deberta-v2-xlarge), "
                    "which edgeprune's per-layer surgery and latency table do not model; DeBERTa-v3 has none")
        return None

    def layers(self, model: nn.Module) -> nn.ModuleList:
        layers = model.base_model.encoder.layer
        if any(isinstance(layer, _PassThroughLayer) for layer in layers):
            return nn.ModuleList([layer for layer in layers if not isinstance(layer, _PassThroughLayer)])
        return layers

    def _set_layers(self, model: nn.Module, layers: list[nn.Module]) -> None:
        model.base_model.encoder.layer = nn.ModuleList(layers or [_PassThroughLayer()])
        model.config.num_hidden_layers = len(layers)

    def head_size(self, model: nn.Module) -> int:
        c = model.config
        return int(getattr(c, "attention_head_size", None) or c.hidden_size // c.num_attention_heads)

    def layout(self, model: nn.Module):
        from ..plan import HeadLayout

        plan = self.current_plan(model)
        return HeadLayout(tuple(plan.num_heads), self.head_size(model), model.config.hidden_size)

    def _make_layer_fusable(self, layer: nn.Module, config) -> None:
        attn = layer.attention
        if isinstance(attn, BiasResidualNorm) or isinstance(attn.self, FusableDisentangledAttention):
            return
        old = attn.self
        heads = old.query_proj.out_features // old.attention_head_size
        attn.self = FusableDisentangledAttention(old, heads).train(old.training)

    def _prune_layer(self, layer: nn.Module, keep_positions: list[int], config) -> None:
        attn = layer.attention
        sa = attn.self
        d = sa.attention_head_size
        if not keep_positions:
            layer.attention = BiasResidualNorm(
                attn.output.dense.bias, attn.output.LayerNorm, config.hidden_dropout_prob
            ).train(attn.training)
            return
        names = ["query_proj", "key_proj", "value_proj"]
        names += [n for n in ("pos_key_proj", "pos_query_proj") if hasattr(sa, n)]
        for name, lin in zip(names, self._slice_qkv([getattr(sa, n) for n in names], keep_positions, d)):
            setattr(sa, name, lin)
        attn.output.dense = self._slice_out(attn.output.dense, keep_positions, d)
        sa.num_attention_heads = len(keep_positions)
        sa.all_head_size = len(keep_positions) * d

    def embed(self, model: nn.Module, input_ids, attention_mask, token_type_ids=None):
        base = model.base_model
        kwargs = {"input_ids": input_ids, "mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = base.embeddings(**kwargs)
        enc = base.encoder
        mask = enc.get_attention_mask(attention_mask)  # (B, 1, S, S) pairwise 0/1, as the HF encoder builds it
        return hidden, DebertaLayerInputs(mask, enc.get_rel_pos(hidden), enc.get_rel_embedding())

    def layer_forward(self, model: nn.Module, i: int, hidden: torch.Tensor, layer_mask) -> torch.Tensor:
        m = layer_mask
        out = self.layers(model)[i](hidden, m.mask, relative_pos=m.relative_pos, rel_embeddings=m.rel_embeddings)
        return out[0] if isinstance(out, tuple) else out

    def classify(self, model: nn.Module, hidden: torch.Tensor, layer_mask=None) -> torch.Tensor:
        return model.classifier(model.dropout(model.pooler(hidden)))  # ContextPooler reads the first token


__all__ = ["DebertaV2Adapter", "DebertaLayerInputs", "FusableDisentangledAttention"]
