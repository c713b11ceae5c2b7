"""Families refused with a reason: their structure cannot be pruned one layer at a time."""

from __future__ import annotations

from . import refuse_family

refuse_family(
    "albert",
    "ALBERT shares one set of attention and FFN weights across all its layers (cross-layer parameter sharing), so "
    "removing a head or an FFN block from one layer removes it from every layer; edgeprune's plans keep different "
    "heads per layer. Prune a model whose layers have their own weights (e.g. BERT, DeBERTa-v3, ModernBERT, MPNet)",
)
