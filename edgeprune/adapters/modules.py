"""Replacement attention modules shared by the adapters.

They keep the original ``nn.Linear`` objects under the original attribute names, so state-dict keys do not change,
and they accept every attention-mask format the two transformers lines hand to a layer:

* ``None`` (no padding),
* a 2-D ``(B, S)`` 0/1 padding mask (DistilBERT eager in 4.57),
* a 4-D additive float mask ``(B, 1, 1|S, S)`` (0 keep, large negative drop),
* a 4-D boolean mask (True keep).

They use explicit ``view(B, S, H, d)`` reshapes, the pattern ONNX Runtime's BERT optimizer recognises as Attention
(transformers 5.x's generic attention interface hides it; see DESIGN.md section 4).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def additive_mask(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor | None:
    """Return ``mask`` as an additive float mask broadcastable to ``scores`` (B, H, S, S), or None."""
    if mask is None:
        return None
    if mask.dim() == 2:  # (B, S) padding mask, 1 = keep
        mask = mask[:, None, None, :]
        return (1.0 - mask.to(scores.dtype)) * torch.finfo(scores.dtype).min
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=scores.dtype).masked_fill(~mask, torch.finfo(scores.dtype).min)
    return mask.to(scores.dtype)


def multi_head_attention(
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    q_proj: nn.Linear,
    k_proj: nn.Linear,
    v_proj: nn.Linear,
    num_heads: int,
    head_size: int,
    dropout: nn.Module,
) -> torch.Tensor:
    """Scaled dot-product self-attention with explicit reshapes; returns the context (B, S, num_heads * head_size)."""
    batch, seq = hidden.size(0), hidden.size(1)
    q = q_proj(hidden).view(batch, seq, num_heads, head_size).transpose(1, 2)  # (B, H, S, d)
    k = k_proj(hidden).view(batch, seq, num_heads, head_size).transpose(1, 2)  # (B, H, S, d)
    v = v_proj(hidden).view(batch, seq, num_heads, head_size).transpose(1, 2)  # (B, H, S, d)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_size)  # (B, H, S, S)
    add = additive_mask(mask, scores)
    if add is not None:
        scores = scores + add
    probs = dropout(torch.softmax(scores, dim=-1))
    context = torch.matmul(probs, v).transpose(1, 2).contiguous()  # (B, S, H, d)
    return context.view(batch, seq, num_heads * head_size)  # (B, S, H*d)


def _pick(args: tuple, kwargs: dict, names: tuple[str, ...], position: int):
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return args[position] if len(args) > position else None


class FusableSelfAttention(nn.Module):
    """Drop-in for BERT-family ``attention.self`` (query/key/value); returns ``(context, None)``."""

    def __init__(self, query: nn.Linear, key: nn.Linear, value: nn.Linear, num_heads: int, head_size: int, p: float):
        super().__init__()
        self.query, self.key, self.value = query, key, value
        self.num_attention_heads = num_heads
        self.attention_head_size = head_size
        self.all_head_size = num_heads * head_size
        self.dropout = nn.Dropout(p)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        mask = _pick(args, kwargs, ("attention_mask",), 0)
        context = multi_head_attention(
            hidden_states, mask, self.query, self.key, self.value,
            self.num_attention_heads, self.attention_head_size, self.dropout,
        )
        return context, None


class FusableDistilAttention(nn.Module):
    """Drop-in for DistilBERT ``attention`` (q_lin/k_lin/v_lin/out_lin); returns ``(output, None)``.

    4.57 calls it as ``attention(query=x, key=x, value=x, mask=m, ...)``, 5.x as ``attention(x, attention_mask=m)``.
    """

    def __init__(self, q_lin, k_lin, v_lin, out_lin, num_heads: int, head_size: int, p: float):
        super().__init__()
        self.q_lin, self.k_lin, self.v_lin, self.out_lin = q_lin, k_lin, v_lin, out_lin
        self.n_heads = num_heads
        self.attention_head_size = head_size
        self.dim = num_heads * head_size
        self.dropout = nn.Dropout(p)

    def forward(self, *args, **kwargs):
        hidden = _pick(args, kwargs, ("hidden_states", "query"), 0)
        mask = _pick(args, kwargs, ("attention_mask", "mask"), 1)
        context = multi_head_attention(
            hidden, mask, self.q_lin, self.k_lin, self.v_lin, self.n_heads, self.attention_head_size, self.dropout
        )
        return self.out_lin(context), None


class BiasResidualNorm(nn.Module):
    """A BERT attention block with zero heads: ``LayerNorm(dropout(bias) + hidden)``.

    With no heads the output projection sees an empty input, so it only adds its bias. Slicing to zero heads
    crashes in 4.57 and breaks ONNX export, hence this explicit module (DESIGN.md section 3).
    """

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm, p: float):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.LayerNorm = layer_norm
        self.dropout = nn.Dropout(p)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.LayerNorm(self.dropout(self.bias) + hidden_states), None


class BiasOnlyAttention(nn.Module):
    """A DistilBERT attention with zero heads: its output is the output projection's bias (the block adds the
    residual and applies ``sa_layer_norm`` itself)."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.n_heads = 0

    def forward(self, *args, **kwargs):
        hidden = _pick(args, kwargs, ("hidden_states", "query"), 0)
        return self.bias.expand_as(hidden), None


class NoIntermediate(nn.Module):
    """A BERT-family ``intermediate`` with no neurons left: passes its input on (the matching
    :class:`FfnBiasResidualNorm` ignores it), so no empty (B, S, 0) tensor is ever built."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


class FfnBiasResidualNorm(nn.Module):
    """A BERT-family FFN ``output`` with no intermediate neurons: ``LayerNorm(dropout(bias) + input_tensor)``.

    ``BertOutput`` computes ``LayerNorm(dropout(dense(h)) + input_tensor)``; with an empty ``h`` the dense layer
    only adds its bias. Same reasoning as :class:`BiasResidualNorm` for a 0-head attention.
    """

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm, p: float):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.LayerNorm = layer_norm
        self.dropout = nn.Dropout(p)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.bias) + input_tensor)


class BiasOnlyFFN(nn.Module):
    """A DistilBERT ``ffn`` with no intermediate neurons: its output is ``dropout(lin2.bias)`` (the block adds the
    residual and applies ``output_layer_norm`` itself)."""

    def __init__(self, bias: torch.Tensor, p: float):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.dropout = nn.Dropout(p)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - DistilBERT's FFN argument name
        return self.dropout(self.bias).expand_as(input)


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0 = output rows, 1 = input columns)."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None).to(weight.dtype)
    new.weight = nn.Parameter(weight)
    if linear.bias is not None:
        bias = linear.bias.detach()
        new.bias = nn.Parameter((bias.index_select(0, index) if dim == 0 else bias).clone())
    return new
