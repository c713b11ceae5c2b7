"""ModernBERT adapter (``model_type`` ``modernbert``): fused Wqkv, rotary, local/global layers, gated FFN, pre-LN.

``model.layers[i]`` = ``attn_norm`` (Identity in layer 0) -> ``attn.{Wqkv, Wo}`` -> residual, ``mlp_norm`` ->
``mlp.{Wi, Wo}`` -> residual; ``model.final_norm`` after the last layer. Family details and how each is handled:

* **Fused Wqkv.** ``Wqkv`` is ``(3 * H * d, D)`` and its output is viewed as ``(B, S, 3, H, d)``: head ``h``'s rows
  are ``t * H * d + h * d + j`` for t = q, k, v. Removing heads keeps those rows of all three parts and the matching
  columns of ``Wo``.
* **Rotary embeddings** act on each head's own ``d`` dimensions with the same frequencies for every head, so they
  are unaffected by which heads remain; the replacement attention computes cos/sin from the layer's inverse
  frequencies (global and local layers have different ``rope_theta``) for positions 0..S-1, as HF does.
* **Alternating local/global attention.** Local (sliding-window) layers let token i see key j only if
  ``|i - j| <= local_attention // 2``; the replacement attention applies that window itself on top of the padding
  mask (``masked_fill``, so it is idempotent when transformers 5.x already hands it the windowed mask).
* **Gated FFN.** ``Wi`` is ``(2 * N, D)`` and ``act(Wi_x[:N]) * Wi_x[N:]`` feeds ``Wo``: neuron ``j`` owns rows ``j``
  (input half) and ``N + j`` (gate half) of ``Wi`` and column ``j`` of ``Wo``; they are removed together.
* **Biases.** ``attention_bias``/``mlp_bias`` are False in released checkpoints: a layer left with 0 heads (0 FFN
  blocks) then adds nothing but the residual; with biases it adds ``Wo.bias``.
* **Attention path.** transformers 4.57 unpads the batch only with ``flash_attention_2``, which needs a GPU; on CPU
  (and in every ONNX export) both lines run the padded path with a ``(B, 1, 1|S, S)`` mask. The replacement module
  implements exactly that padded path (checked against HF eager and SDPA in the tests).
* **Pre-LayerNorm.** The FFN sublayer's residual is the input of ``mlp_norm`` (not of ``Wi``):
  :meth:`ModernBertAdapter.ffn_residual` tells recovery so.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_adapter
from .base import Adapter
from .modules import additive_mask, slice_linear


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class FusableModernBertAttention(nn.Module):
    """Drop-in for ``ModernBertAttention`` (padded path) with any head count; returns ``(output, None)``.

    Accepts how both transformers lines call it: 4.57 passes ``attention_mask`` (global, additive) and
    ``sliding_window_mask``; 5.x passes the per-layer-type ``attention_mask`` (None, bool or additive) and
    ``position_embeddings``. The window and the rotary terms are computed here, so both give the same result.
    """

    def __init__(self, Wqkv: nn.Linear, Wo: nn.Linear, num_heads: int, head_dim: int, inv_freq: torch.Tensor,
                 window: int | None, out_drop: nn.Module, p: float):
        super().__init__()
        self.Wqkv, self.Wo, self.out_drop = Wqkv, Wo, out_drop
        self.num_heads, self.head_dim = num_heads, head_dim
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)
        self.window = window  # half-window of a local layer; None for a global layer
        self.attention_dropout = p

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        b, s = hidden_states.size(0), hidden_states.size(1)
        h, d = self.num_heads, self.head_dim
        qkv = self.Wqkv(hidden_states).view(b, s, 3, h, d)  # (B, S, 3, H, d)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=2))  # (B, H, S, d) each
        pos = torch.arange(s, device=hidden_states.device, dtype=torch.float)
        freqs = pos[:, None] * self.inv_freq[None, :]  # (S, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, d)
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        scores = torch.matmul(q, k.transpose(-1, -2)) * d**-0.5  # (B, H, S, S)
        add = additive_mask(kwargs.get("attention_mask"), scores)
        if self.window is not None:
            idx = torch.arange(s, device=hidden_states.device)
            outside = (idx[None, :] - idx[:, None]).abs() > self.window  # (S, S)
            base = add if add is not None else torch.zeros((), dtype=scores.dtype)
            add = base.masked_fill(outside, torch.finfo(scores.dtype).min)
        if add is not None:
            scores = scores + add
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        probs = nn.functional.dropout(probs, p=self.attention_dropout, training=self.training)
        context = torch.matmul(probs, v).transpose(1, 2).contiguous().view(b, s, h * d)  # (B, S, H*d)
        return self.out_drop(self.Wo(context)), None


class ModernBertNoHeads(nn.Module):
    """A ModernBERT attention with zero heads: it adds ``Wo``'s bias (nothing when the model has no biases)."""

    def __init__(self, bias: torch.Tensor | None):
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = torch.zeros_like(hidden_states) if self.bias is None else self.bias.expand_as(hidden_states)
        return out, None


class ModernBertNoFFN(nn.Module):
    """A ModernBERT MLP with no intermediate neurons: it adds ``Wo``'s bias (nothing without biases)."""

    def __init__(self, bias: torch.Tensor | None):
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states) if self.bias is None else self.bias.expand_as(hidden_states)


def _window(layer: nn.Module, config) -> int | None:
    local = getattr(layer.attn, "local_attention", None)  # 4.57: (w, w) or (-1, -1)
    if local is not None:
        return int(local[0]) if local[0] >= 0 else None
    if getattr(layer, "attention_type", "full_attention") == "sliding_attention":  # 5.x
        return int(config.local_attention) // 2
    return None


def _inv_freq(layer: nn.Module, config, head_dim: int) -> torch.Tensor:
    rotary = getattr(layer.attn, "rotary_emb", None)  # 4.57: one rotary module per attention
    if rotary is not None and getattr(rotary, "inv_freq", None) is not None:
        return rotary.inv_freq
    theta = float(config.rope_parameters[layer.attention_type]["rope_theta"])  # 5.x: per layer type
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


@register_adapter("modernbert")
class ModernBertAdapter(Adapter):
    """ModernBERT (see the module docstring for the family details)."""

    ort_attention_fusion = False

    def unsupported_reason(self, config) -> str | None:
        params = getattr(config, "rope_parameters", None)
        if isinstance(params, dict):  # 5.x: one entry per layer type
            types = {str((v or {}).get("rope_type", "default")) for v in params.values() if isinstance(v, dict)}
            if types - {"default"}:
                return f"rotary scaling {sorted(types - {'default'})} is not implemented (only default RoPE)"
        elif getattr(config, "rope_scaling", None):
            return "rotary scaling (rope_scaling) is not implemented (only default RoPE)"
        return None

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.layers

    def _set_layers(self, model: nn.Module, layers: list[nn.Module]) -> None:
        model.base_model.layers = nn.ModuleList(layers)
        model.config.num_hidden_layers = len(layers)
        if getattr(model.config, "layer_types", None) is not None:  # 5.x: the model builds one mask per type
            model.config.layer_types = [layer.attention_type for layer in layers]

    def _num_heads_config(self, config) -> int:
        return config.num_attention_heads

    def _out_proj(self, layer: nn.Module) -> nn.Linear | None:
        return None if isinstance(layer.attn, ModernBertNoHeads) else layer.attn.Wo

    def _make_layer_fusable(self, layer: nn.Module, config) -> None:
        old = layer.attn
        if isinstance(old, (FusableModernBertAttention, ModernBertNoHeads)):
            return
        d = config.hidden_size // config.num_attention_heads
        heads = old.Wqkv.out_features // (3 * d)
        layer.attn = FusableModernBertAttention(
            old.Wqkv, old.Wo, heads, d, _inv_freq(layer, config, d), _window(layer, config), old.out_drop,
            float(config.attention_dropout),
        ).train(old.training)

    def _prune_layer(self, layer: nn.Module, keep_positions: list[int], config) -> None:
        attn = layer.attn
        h, d = attn.num_heads, attn.head_dim
        if not keep_positions:
            layer.attn = ModernBertNoHeads(attn.Wo.bias).train(attn.training)
            return
        rows = [t * h * d + p * d + j for t in range(3) for p in keep_positions for j in range(d)]
        attn.Wqkv = slice_linear(attn.Wqkv, torch.tensor(rows, dtype=torch.long), 0)
        attn.Wo = self._slice_out(attn.Wo, keep_positions, d)
        attn.num_heads = len(keep_positions)

    def _ffn_width_config(self, config) -> int:
        return int(config.intermediate_size)

    def _ffn_in(self, layer: nn.Module) -> nn.Linear | None:
        return None if isinstance(layer.mlp, ModernBertNoFFN) else layer.mlp.Wi

    def _ffn_out(self, layer: nn.Module) -> nn.Linear | None:
        return None if isinstance(layer.mlp, ModernBertNoFFN) else layer.mlp.Wo

    def ffn_residual(self, model: nn.Module, i: int) -> nn.Module | None:
        return self.layers(model)[i].mlp_norm  # pre-LN: h + mlp(mlp_norm(h)); its input h is the residual

    def _prune_ffn_layer(self, layer: nn.Module, keep_neurons: list[int], config) -> None:
        mlp = layer.mlp
        if not keep_neurons:
            layer.mlp = ModernBertNoFFN(mlp.Wo.bias).train(mlp.training)
            return
        n = mlp.Wi.out_features // 2  # current width: rows [0, n) feed act(), rows [n, 2n) are the gate
        rows = list(keep_neurons) + [n + j for j in keep_neurons]
        mlp.Wi = slice_linear(mlp.Wi, torch.tensor(rows, dtype=torch.long), 0)
        mlp.Wo = slice_linear(mlp.Wo, torch.tensor(keep_neurons, dtype=torch.long), 1)

    def embed(self, model: nn.Module, input_ids, attention_mask, token_type_ids=None):
        hidden = model.base_model.embeddings(input_ids=input_ids)
        return hidden, self.additive_mask(attention_mask, hidden.dtype)

    def layer_forward(self, model: nn.Module, i: int, hidden: torch.Tensor, layer_mask) -> torch.Tensor:
        out = self.layers(model)[i](hidden, attention_mask=layer_mask)
        return out[0] if isinstance(out, tuple) else out

    def classify(self, model: nn.Module, hidden: torch.Tensor, layer_mask=None) -> torch.Tensor:
        hidden = model.base_model.final_norm(hidden)
        if model.config.classifier_pooling == "mean":
            if layer_mask is None:
                raise ValueError("ModernBERT mean pooling needs the layer mask that embed() returned")
            keep = (layer_mask[:, 0, 0, :] == 0).to(hidden.dtype)  # (B, S): 1 for real tokens
            pooled = (hidden * keep.unsqueeze(-1)).sum(dim=1) / keep.sum(dim=1, keepdim=True)
        else:
            pooled = hidden[:, 0]
        return model.classifier(model.drop(model.head(pooled)))
