"""BERT-family adapter: bert (MiniLM, bge), roberta, xlm-roberta, electra share module names."""

from __future__ import annotations

import torch
from torch import nn

from . import register_adapter
from .base import Adapter
from .modules import BiasResidualNorm, FfnBiasResidualNorm, FusableSelfAttention, NoIntermediate, slice_linear


@register_adapter("bert", "roberta", "xlm-roberta", "electra")
class BertFamilyAdapter(Adapter):
    """``base.encoder.layer[i].attention.{self.query|key|value, output.dense|LayerNorm}``."""

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.encoder.layer

    def _set_layers(self, model: nn.Module, layers: list[nn.Module]) -> None:
        model.base_model.encoder.layer = nn.ModuleList(layers)
        model.config.num_hidden_layers = len(layers)

    def _num_heads_config(self, config) -> int:
        return config.num_attention_heads

    def _out_proj(self, layer: nn.Module) -> nn.Linear | None:
        if isinstance(layer.attention, BiasResidualNorm):
            return None
        return layer.attention.output.dense

    def _make_layer_fusable(self, layer: nn.Module, config) -> None:
        attn = layer.attention
        if isinstance(attn, BiasResidualNorm) or isinstance(attn.self, FusableSelfAttention):
            return
        old = attn.self
        heads = old.query.out_features // old.attention_head_size
        attn.self = FusableSelfAttention(
            old.query, old.key, old.value, heads, old.attention_head_size, config.attention_probs_dropout_prob
        ).train(old.training)  # a new module starts in training mode: keep dropout off in eval

    def _prune_layer(self, layer: nn.Module, keep_positions: list[int], config) -> None:
        attn = layer.attention
        sa = attn.self
        d = sa.attention_head_size
        if not keep_positions:
            layer.attention = BiasResidualNorm(
                attn.output.dense.bias, attn.output.LayerNorm, config.hidden_dropout_prob
            ).train(attn.training)
            return
        sa.query, sa.key, sa.value = self._slice_qkv([sa.query, sa.key, sa.value], keep_positions, d)
        attn.output.dense = self._slice_out(attn.output.dense, keep_positions, d)
        sa.num_attention_heads = len(keep_positions)
        sa.all_head_size = len(keep_positions) * d

    def _ffn_width_config(self, config) -> int:
        return config.intermediate_size

    def _ffn_in(self, layer: nn.Module) -> nn.Linear | None:
        return None if isinstance(layer.intermediate, NoIntermediate) else layer.intermediate.dense

    def _ffn_out(self, layer: nn.Module) -> nn.Linear | None:
        return None if isinstance(layer.output, FfnBiasResidualNorm) else layer.output.dense

    def _prune_ffn_layer(self, layer: nn.Module, keep_neurons: list[int], config) -> None:
        out = layer.output
        if not keep_neurons:
            # BertOutput: LayerNorm(dropout(dense(h)) + input); with no neurons dense(h) == bias.
            layer.output = FfnBiasResidualNorm(out.dense.bias, out.LayerNorm, config.hidden_dropout_prob).train(
                out.training
            )
            layer.intermediate = NoIntermediate().train(out.training)
            return
        index = torch.tensor(keep_neurons, dtype=torch.long)
        layer.intermediate.dense = slice_linear(layer.intermediate.dense, index, 0)
        out.dense = slice_linear(out.dense, index, 1)

    def embed(self, model: nn.Module, input_ids, attention_mask, token_type_ids=None):
        base = model.base_model
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = base.embeddings(**kwargs)
        if getattr(base, "embeddings_project", None) is not None:  # ELECTRA with embedding_size != hidden_size
            hidden = base.embeddings_project(hidden)
        return hidden, self.additive_mask(attention_mask, hidden.dtype)

    def classify(self, model: nn.Module, hidden: torch.Tensor, layer_mask=None) -> torch.Tensor:
        pooler = getattr(model.base_model, "pooler", None)
        if pooler is not None:  # BertForSequenceClassification: pooler -> dropout -> linear
            return model.classifier(model.dropout(pooler(hidden)))
        return model.classifier(hidden)  # RoBERTa / ELECTRA heads read the first token themselves
