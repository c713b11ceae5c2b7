"""DistilBERT adapter: ``distilbert.transformer.layer[i].attention.{q_lin,k_lin,v_lin,out_lin}``, ``n_heads``."""

from __future__ import annotations

import torch
from torch import nn

from . import register_adapter
from .base import Adapter
from .modules import BiasOnlyAttention, BiasOnlyFFN, FusableDistilAttention, slice_linear


@register_adapter("distilbert")
class DistilBertAdapter(Adapter):
    """DistilBERT: the attention module includes the output projection; the block adds residual + LayerNorm."""

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.transformer.layer

    def _set_layers(self, model: nn.Module, layers: list[nn.Module]) -> None:
        model.base_model.transformer.layer = nn.ModuleList(layers)
        model.base_model.transformer.n_layers = len(layers)
        model.config.n_layers = len(layers)

    def _num_heads_config(self, config) -> int:
        return config.n_heads

    def _out_proj(self, layer: nn.Module) -> nn.Linear | None:
        if isinstance(layer.attention, BiasOnlyAttention):
            return None
        return layer.attention.out_lin

    def _make_layer_fusable(self, layer: nn.Module, config) -> None:
        attn = layer.attention
        if isinstance(attn, (FusableDistilAttention, BiasOnlyAttention)):
            return
        d = config.dim // config.n_heads
        layer.attention = FusableDistilAttention(
            attn.q_lin, attn.k_lin, attn.v_lin, attn.out_lin, attn.q_lin.out_features // d, d, config.attention_dropout
        ).train(attn.training)  # a new module starts in training mode: keep dropout off in eval

    def _prune_layer(self, layer: nn.Module, keep_positions: list[int], config) -> None:
        attn = layer.attention
        d = attn.attention_head_size
        if not keep_positions:
            layer.attention = BiasOnlyAttention(attn.out_lin.bias).train(attn.training)
            return
        attn.q_lin, attn.k_lin, attn.v_lin = self._slice_qkv([attn.q_lin, attn.k_lin, attn.v_lin], keep_positions, d)
        attn.out_lin = self._slice_out(attn.out_lin, keep_positions, d)
        attn.n_heads = len(keep_positions)
        attn.dim = len(keep_positions) * d

    def _ffn_width_config(self, config) -> int:
        return config.hidden_dim

    def _ffn_in(self, layer: nn.Module) -> nn.Linear | None:
        return None if isinstance(layer.ffn, BiasOnlyFFN) else layer.ffn.lin1

    def _ffn_out(self, layer: nn.Module) -> nn.Linear | None:
        return None if isinstance(layer.ffn, BiasOnlyFFN) else layer.ffn.lin2

    def _prune_ffn_layer(self, layer: nn.Module, keep_neurons: list[int], config) -> None:
        ffn = layer.ffn
        if not keep_neurons:
            # FFN: dropout(lin2(act(lin1(x)))); with no neurons lin2(.) == bias. The block adds the residual and
            # applies output_layer_norm.
            layer.ffn = BiasOnlyFFN(ffn.lin2.bias, config.dropout).train(ffn.training)
            return
        index = torch.tensor(keep_neurons, dtype=torch.long)
        ffn.lin1 = slice_linear(ffn.lin1, index, 0)
        ffn.lin2 = slice_linear(ffn.lin2, index, 1)

    def embed(self, model: nn.Module, input_ids, attention_mask, token_type_ids=None):
        hidden = model.base_model.embeddings(input_ids)
        return hidden, self.additive_mask(attention_mask, hidden.dtype)

    def classify(self, model: nn.Module, hidden: torch.Tensor, layer_mask=None) -> torch.Tensor:
        pooled = hidden[:, 0]  # (B, D): the [CLS] token
        pooled = model.dropout(nn.functional.relu(model.pre_classifier(pooled)))
        return model.classifier(pooled)
