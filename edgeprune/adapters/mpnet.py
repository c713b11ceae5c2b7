"""MPNet adapter (``model_type`` ``mpnet``, e.g. all-mpnet-base-v2): relative position bias shared across layers.

``mpnet.encoder.layer[i].attention.{attn.{q,k,v,o}, LayerNorm}``, ``intermediate.dense``, ``output.dense|LayerNorm``
(post-LayerNorm, BERT's FFN). The output projection ``o`` sits inside ``attn``. The relative position bias is one
``Embedding(num_buckets, H)`` in the *encoder* (``relative_attention_bias``), computed once per batch as
``(B, H, S, S)`` and added to every layer's scores: head ``h`` of every layer reads channel ``h``. A pruned layer
keeps its own original head indices (``head_index``) and selects those channels, so the shared table is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import register_adapter
from .bert import BertFamilyAdapter
from .modules import additive_mask


@dataclass
class MPNetLayerInputs:
    """What every MPNet layer takes besides the hidden states (the adapter's ``layer_mask``)."""

    mask: torch.Tensor  # (B, 1, 1, S) additive
    position_bias: torch.Tensor  # (B, H, S, S) over the original heads, shared by all layers


class FusableMPNetSelfAttention(nn.Module):
    """Drop-in for ``MPNetSelfAttention`` (q/k/v/o) with explicit reshapes; returns ``(output,)`` like HF.

    ``head_index`` holds the original indices of the kept heads (a non-persistent buffer: it is rebuilt from the
    plan on load), used to pick their channels of the shared position bias.
    """

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear, head_index: list[int],
                 head_size: int, dropout: nn.Module):
        super().__init__()
        self.q, self.k, self.v, self.o = q, k, v, o
        self.register_buffer("head_index", torch.tensor(head_index, dtype=torch.long), persistent=False)
        self.num_attention_heads = len(head_index)
        self.attention_head_size = head_size
        self.all_head_size = len(head_index) * head_size
        self.dropout = dropout

    def forward(self, hidden_states, attention_mask=None, *args, position_bias=None, **kwargs):
        if position_bias is None and args:
            # 5.x calls attn(hidden, mask, position_bias); 4.57 attn(hidden, mask, head_mask, position_bias).
            position_bias = args[-1]
        b, s = hidden_states.size(0), hidden_states.size(1)
        h, d = self.num_attention_heads, self.attention_head_size
        q = self.q(hidden_states).view(b, s, h, d).transpose(1, 2)  # (B, H, S, d)
        k = self.k(hidden_states).view(b, s, h, d).transpose(1, 2)
        v = self.v(hidden_states).view(b, s, h, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / (d**0.5)  # (B, H, S, S)
        if position_bias is not None:
            scores = scores + position_bias.index_select(1, self.head_index)  # this layer's heads' channels
        add = additive_mask(attention_mask, scores)
        if add is not None:
            scores = scores + add
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).transpose(1, 2).contiguous().view(b, s, h * d)  # (B, S, H*d)
        return (self.o(context),)


class MPNetNoHeads(nn.Module):
    """An MPNet ``attn`` with zero heads: its output is ``o``'s bias (``MPNetAttention`` adds the residual and
    applies its LayerNorm)."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.num_attention_heads = 0

    def forward(self, hidden_states, *args, **kwargs):
        return (self.bias.expand_as(hidden_states),)


@register_adapter("mpnet")
class MPNetAdapter(BertFamilyAdapter):
    """MPNet: BERT's FFN, attention output projection inside ``attn``, a shared relative position bias."""

    ort_attention_fusion = False

    def _out_proj(self, layer: nn.Module) -> nn.Linear | None:
        attn = layer.attention.attn
        return None if isinstance(attn, MPNetNoHeads) else attn.o

    def _make_layer_fusable(self, layer: nn.Module, config) -> None:
        old = layer.attention.attn
        if isinstance(old, (FusableMPNetSelfAttention, MPNetNoHeads)):
            return
        d = old.attention_head_size
        heads = old.q.out_features // d
        layer.attention.attn = FusableMPNetSelfAttention(
            old.q, old.k, old.v, old.o, list(range(heads)), d, old.dropout
        ).train(old.training)

    def _prune_layer(self, layer: nn.Module, keep_positions: list[int], config) -> None:
        attn = layer.attention.attn
        d = attn.attention_head_size
        if not keep_positions:
            layer.attention.attn = MPNetNoHeads(attn.o.bias).train(attn.training)
            return
        attn.q, attn.k, attn.v = self._slice_qkv([attn.q, attn.k, attn.v], keep_positions, d)
        attn.o = self._slice_out(attn.o, keep_positions, d)
        attn.head_index = attn.head_index[torch.tensor(keep_positions, dtype=torch.long)]
        attn.num_attention_heads = len(keep_positions)
        attn.all_head_size = len(keep_positions) * d

    def embed(self, model: nn.Module, input_ids, attention_mask, token_type_ids=None):
        base = model.base_model
        hidden = base.embeddings(input_ids=input_ids)
        bias = base.encoder.compute_position_bias(hidden)  # (B, H, S, S), as MPNetEncoder computes it
        return hidden, MPNetLayerInputs(self.additive_mask(attention_mask, hidden.dtype), bias)

    def layer_forward(self, model: nn.Module, i: int, hidden: torch.Tensor, layer_mask) -> torch.Tensor:
        m = layer_mask
        out = self.layers(model)[i](hidden, attention_mask=m.mask, position_bias=m.position_bias)
        return out[0] if isinstance(out, tuple) else out

    def classify(self, model: nn.Module, hidden: torch.Tensor, layer_mask=None) -> torch.Tensor:
        return model.classifier(hidden)  # MPNetClassificationHead reads the first token itself
