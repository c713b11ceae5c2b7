"""Orchestration of one head-pruning search: model + search split + latency model -> plan (``edgeprune search``).

This is the only module that ties the torch engine (:mod:`edgeprune.evaluate`, :mod:`edgeprune.importance`) to
the pure search (:mod:`edgeprune.search`). Heavy imports happen inside :func:`run_search`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .errors import EdgepruneError
from .search import ALGORITHMS, Correction, Progress, SearchConfig, SearchResult
from .search import search as _search
from .versions import versions

LatencyFn = Callable[..., float]  # latency(kept_heads[, kept_ffn_blocks]) -> ms
STRUCTURES = ("heads", "heads+ffn")
DEFAULT_FFN_BLOCK_SIZE = 128


def default_block_size(ffn_widths: Sequence[int], preferred: int = DEFAULT_FFN_BLOCK_SIZE) -> int:
    """``preferred`` neurons per FFN block when it divides every layer's width, else the largest divisor of all
    widths below it (e.g. 37-wide test models get 37's divisors; BERT-family widths 1536/3072/4096 get 128)."""
    import math

    g = 0
    for w in ffn_widths:
        g = math.gcd(g, int(w))
    if g % preferred == 0:
        return preferred
    return max(d for d in range(1, min(g, preferred) + 1) if g % d == 0)


def analytic_latency(heads_per_layer: Sequence[int], hidden: int, seq_len: int,
                     ffn_blocks_per_layer: Optional[Sequence[int]] = None) -> LatencyFn:
    """A FLOP-count stand-in for a latency table (relative units, *not* milliseconds).

    Per layer: FFN ``16 * S * D^2`` (two D x 4D matmuls, 2 FLOPs per MAC) plus, per kept head, its share of the
    Q/K/V/output projections ``8 * S * D * d`` and of the attention itself ``4 * S^2 * d``; embeddings and
    classifier are ignored. Returned in GFLOPs so numbers look like small "ms". Use a measured LUT for real plans:
    this proxy over-weights attention on CPUs where memory traffic dominates.

    Args:
        heads_per_layer: heads per layer of the unpruned model.
        hidden: hidden size D.
        seq_len: sequence length S.
        ffn_blocks_per_layer: FFN blocks per layer of the unpruned model (joint search: the FFN term scales with
            the kept share of blocks).

    Returns:
        ``latency(kept_counts, kept_blocks=None) -> GFLOPs``.
    """
    n = max(heads_per_layer)
    d = hidden // n
    ffn = 16.0 * seq_len * hidden * hidden
    per_head = 8.0 * seq_len * hidden * d + 4.0 * seq_len * seq_len * d

    def latency(kept_counts: tuple[int, ...], kept_blocks: Optional[Sequence[int]] = None) -> float:
        shares = [1.0] * len(kept_counts) if kept_blocks is None else \
            [b / full for b, full in zip(kept_blocks, ffn_blocks_per_layer)]
        return sum(ffn * f + per_head * k for k, f in zip(kept_counts, shares)) / 1e9

    return latency


def resolve_latency(layout, hidden: int, seq_len: int, *, latency_table: Optional[Union[str, Path]] = None,
                    profile: Any = None, space: Any = None) -> tuple[LatencyFn, dict[str, Any]]:
    """Pick the latency model: an explicit LUT file, else the profile's LUT, else the analytic proxy.

    Args:
        space: the search's :class:`~edgeprune.plan.UnitSpace`; with FFN blocks the function also takes the kept
            blocks per layer, and a LUT must have an FFN axis.

    Returns:
        ``(latency_fn, source)`` where ``source`` describes it for plan.json (kind, path, LUT provenance).
    """
    path = Path(latency_table) if latency_table else None
    if path is None and profile is not None and callable(getattr(profile, "latency_table_path", None)) \
            and profile.latency_table_path() is not None:
        candidate = profile.latency_table_path()
        path = candidate if candidate.exists() else None
    joint = space is not None and space.has_ffn
    if path is not None:
        from .latency import has_ffn_axis, load_lut, predict

        lut = load_lut(path)
        n_layers = len(lut["layers"])
        if n_layers != layout.num_layers:
            raise EdgepruneError(f"{path}: latency table has {n_layers} layers but the model has {layout.num_layers}")
        if joint and not has_ffn_axis(lut):
            raise EdgepruneError(f"{path}: this latency table has no FFN axis, so it cannot rank FFN-block plans; "
                                 "rebuild it with `edgeprune lut --ffn` or search with --structures heads")
        bs = space.ffn_block_size if joint else 0

        def lut_latency(kc, kb=None):
            return predict(lut, kc, ffn_widths=None if kb is None else [b * bs for b in kb])

        return lut_latency, {
            "kind": "lut",
            "unit": "ms",
            "path": str(path),
            "provenance": lut.get("provenance"),
            "settings": lut.get("settings"),
        }
    return analytic_latency(layout.heads_per_layer, hidden, seq_len,
                            space.ffn_blocks_per_layer if joint else None), {
        "kind": "analytic-proxy",
        "unit": "GFLOPs (relative proxy, NOT milliseconds)",
        "note": "no latency table given or found for the profile; plan ranking uses a FLOP count. Build one with "
                "`edgeprune lut` and pass --latency-table for real latency.",
        "seq_len": seq_len,
    }


def run_search(
    model: Any,
    search_data: Any,
    *,
    profile: Any = None,
    latency_table: Optional[Union[str, Path]] = None,
    latency: Optional[LatencyFn] = None,
    max_drop_pts: float = 1.0,
    confidence: float = 0.95,
    algorithm: str = "astar",
    correction: Union[str, Correction] = Correction.BONFERRONI,
    max_evaluations: int = 300,
    max_seconds: Optional[float] = None,
    branching: int = 6,
    batch_size: int = 4,
    seed: int = 0,
    tokenizer: Any = None,
    max_length: Optional[int] = None,
    eval_batch_size: int = 32,
    journal: Optional[Union[str, Path]] = None,
    resume: bool = False,
    on_progress: Optional[Callable[[Progress], None]] = None,
    text_column: Optional[str] = None,
    label_column: Optional[str] = None,
    offset_worse: int = 0,
    offset_better: int = 0,
    rescore_every: int = 1,
    shipped_predictions: Optional[Sequence[int]] = None,
    importance_examples: Optional[int] = None,
    structures: str = "heads",
    ffn_block_size: Optional[int] = None,
    credit_improvement: bool = True,
) -> SearchResult:
    """Search a head plan for ``model`` on ``search_data`` under an accuracy bound.

    Args:
        model: model folder / hub id (loaded with :func:`edgeprune.modeling.load_model`), "default" (the default
            task's fine-tuned MiniLM), or a loaded model (then pass ``tokenizer``). The loaded model is modified in place (fusable attention modules, same outputs).
        search_data: a :class:`~edgeprune.data.TextDataset`, a dataset path for :func:`edgeprune.data.load_dataset`,
            or "default" (the default task's search split).
        profile: device profile name/path/object (sequence length, its LUT); optional.
        latency_table: LUT JSON (``edgeprune lut``); overrides the profile's.
        latency: a latency function to use directly (overrides both; e.g. for tests).
        max_drop_pts: accuracy bound in points (1.0 = one point) on the upper confidence bound of the paired drop.
        confidence: one-sided confidence of that bound.
        algorithm: "astar", "greedy", "oneshot" or "random".
        correction: "bonferroni" (over the evaluation budget) or "none"; see docs/search.md.
        max_evaluations: evaluation budget (each is a pass over the search split).
        max_seconds: wall-time budget (None = none).
        branching: A* successors per node.
        batch_size: candidates per evaluator call.
        seed: seed (random baseline).
        tokenizer: tokenizer when ``model`` is an object.
        max_length: truncation length (default: the profile's seq_len, else 128).
        eval_batch_size: examples per forward pass.
        journal: JSONL journal path (default: none).
        resume: replay the journal instead of re-evaluating.
        on_progress: progress callback.
        text_column: dataset text column (file datasets).
        label_column: dataset label column (file datasets).
        offset_worse, offset_better: discordant counts added to every candidate before bounding (the dense INT8
            model's flips on the search split, so accepted plans leave room for quantization; see SearchConfig).
        rescore_every: greedy (and A*'s greedy seed) re-score importance every this many removals.
        importance_examples: compute head importance on about this many examples (None = the whole split).
        shipped_predictions: predictions of the *unpruned* model in its shipped form (e.g. the INT8 ONNX file) on
            the search split, in dataset order; its discordant count against the FP32 model is added to the
            offsets, split evenly between worse and better, so the search keeps room for the flips quantization
            causes by itself without banking on their net direction.
        structures: "heads" (attention heads only) or "heads+ffn" (heads and FFN neuron blocks in one search;
            the latency table needs an FFN axis). See docs/search.md, "Joint search".
        ffn_block_size: neurons per FFN block for "heads+ffn" (default 128).
        credit_improvement: False = no credit for an observed net accuracy gain (see SearchConfig).

    Returns:
        The :class:`SearchResult`; ``result.to_dict()`` is the plan.json content (with latency source, model,
        data, versions under ``search``).

    Raises:
        EdgepruneError: bad model, data, profile, table or configuration.
    """
    from .evaluate import MaskedEvaluator
    from .importance import head_importance, make_rescorer

    if algorithm not in ALGORITHMS:
        raise EdgepruneError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if structures not in STRUCTURES:
        raise EdgepruneError(f"unknown structures {structures!r}; choose one of {', '.join(STRUCTURES)}")
    joint = structures == "heads+ffn"
    if ffn_block_size is not None and not joint:
        raise EdgepruneError("--ffn-block-size needs --structures heads+ffn")
    if ffn_block_size is not None and ffn_block_size <= 0:
        raise EdgepruneError(f"--ffn-block-size must be positive, got {ffn_block_size}")
    model_id = None
    if str(model) == "default" or str(search_data) == "default":
        from .default_task import default_task

        task = default_task()
        if str(model) == "default":
            model = task.model_dir
        if str(search_data) == "default":
            search_data = task.search
    if isinstance(model, (str, os.PathLike)):
        from .modeling import load_model

        model_id = str(model)
        model, tok = load_model(model)
        tokenizer = tokenizer or tok
    if tokenizer is None:
        raise EdgepruneError("a tokenizer is needed to evaluate the search split")
    if isinstance(search_data, (str, os.PathLike)):
        from .data import load_dataset

        search_data = load_dataset(search_data, text_column=text_column, label_column=label_column,
                                   label2id=getattr(model.config, "label2id", None))
    prof = None
    if profile is not None:
        from .profiles import load_profile

        prof = load_profile(profile)
    seq_len = max_length or (prof.seq_len if prof is not None else 128)
    t0 = time.monotonic()
    block_size = None
    if joint:
        from .adapters import get_adapter

        block_size = ffn_block_size or default_block_size(get_adapter(model).ffn_sizes(model))
    evaluator = MaskedEvaluator(model, tokenizer, search_data, batch_size=eval_batch_size, max_length=seq_len,
                                ffn_block_size=block_size)
    base_s = time.monotonic() - t0
    layout = evaluator.layout
    space = evaluator.space
    shipped_counts = None
    if shipped_predictions is not None:
        import torch

        ref = torch.as_tensor(list(shipped_predictions), dtype=torch.long)
        if ref.shape[0] != evaluator.n:
            raise EdgepruneError(f"shipped_predictions has {ref.shape[0]} entries, the search split {evaluator.n}")
        ref_correct = ref == evaluator.labels
        shipped_counts = {"worse": int((evaluator.base_correct & ~ref_correct).sum()),
                          "better": int((~evaluator.base_correct & ref_correct).sum()), "n": evaluator.n}
        # Add the quantization's discordance symmetrically: its flips widen the final bound whichever way they go,
        # but its net effect is noise around zero for the default preset (measured on the default task: +0.05 pt
        # on the certify split, -0.85 pt on the search split). Taking the search split's lucky net gain at face
        # value let the search spend room that certification then did not have.
        discordant = shipped_counts["worse"] + shipped_counts["better"]
        offset_worse += (discordant + 1) // 2
        offset_better += discordant // 2
    if latency is not None:
        lat_fn, source = latency, {"kind": "callable", "unit": "ms"}
    else:
        lat_fn, source = resolve_latency(layout, layout.hidden_size, seq_len, latency_table=latency_table,
                                         profile=prof, space=space)
    t1 = time.monotonic()
    if joint:
        from .ffn_importance import unit_importance

        def rescore_units(state: frozenset) -> dict:
            raw = unit_importance(evaluator, frozenset(state), max_examples=importance_examples)
            return importance_per_ms(raw, space, lat_fn, frozenset(state))

        importance = rescore_units(frozenset())
        rescorer = rescore_units
    else:
        importance = head_importance(evaluator, max_examples=importance_examples)
        rescorer = make_rescorer(evaluator, max_examples=importance_examples)
    importance_s = time.monotonic() - t1
    config = SearchConfig(max_drop_pts=max_drop_pts, confidence=confidence, correction=Correction(correction),
                          max_evaluations=max_evaluations, max_seconds=max_seconds, branching=branching,
                          batch_size=batch_size, seed=seed, offset_worse=offset_worse,
                          offset_better=offset_better, rescore_every=rescore_every,
                          credit_improvement=credit_improvement)
    fingerprint = {
        "model": model_id or type(model).__name__,
        "data": {"source": getattr(search_data, "source", None), "n": len(search_data)},
        "max_length": seq_len,
        "latency_source": source.get("path") or source["kind"],
        "importance_examples": importance_examples,
    }
    result = _search(evaluator, lat_fn, importance, space, config, algorithm,
                     rescore=rescorer if algorithm in ("greedy", "astar") else None,
                     journal=journal, resume=resume, fingerprint=fingerprint, on_progress=on_progress)
    result.info.update(
        {
            "latency_source": source,
            "model": model_id,
            "data": {"source": getattr(search_data, "source", None), "n": len(search_data),
                     "max_length": seq_len, "base_accuracy": evaluator.base_accuracy},
            "profile": getattr(prof, "name", None),
            "timing_s": {"tokenise_and_base_pass": base_s, "importance": importance_s},
            "evaluator_threads": _torch_threads(),
            "shipped_model_flips": shipped_counts,
            "versions": versions(),
        }
    )
    return result


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def importance_per_ms(scores: dict, space: Any, latency: LatencyFn, removed: frozenset = frozenset()) -> dict:
    """Divide each unit's importance by the latency its removal saves from ``removed`` (joint search order).

    Heads and FFN blocks share one importance scale (un-normalised gate gradients ~ loss increase) but not one
    price: on the default task a head saves ~0.03 ms and a 128-neuron block ~0.02 ms at full width, and a block
    saves nothing while the FFN is in its flat region below ~256 neurons (docs/latency.md). Ranking by loss per
    millisecond removes first what buys the most time for the least accuracy (Kwon et al. 2022 rank the same
    ratio). Savings are the latency model's marginal at the current state, per layer and kind; a zero saving is
    floored at 1% of the largest one, so such units go last but stay reachable.
    """
    kc, kb = space.kept_counts(removed)

    def lat(heads, blocks):
        return latency(heads) if blocks is None else latency(heads, blocks)

    base = lat(kc, kb)
    saving: dict = {}
    for layer in range(space.num_layers):
        if kc[layer] > 0:
            k2 = list(kc)
            k2[layer] -= 1
            saving[(layer, "h")] = base - lat(tuple(k2), kb)
        if kb is not None and kb[layer] > 0:
            b2 = list(kb)
            b2[layer] -= 1
            saving[(layer, "f")] = base - lat(kc, tuple(b2))
    floor = 0.01 * max([v for v in saving.values() if v > 0], default=1.0)
    out = {}
    for unit, v in scores.items():
        if v == float("inf"):
            out[unit] = v
            continue
        kind = "h" if space.is_head(unit) else "f"
        out[unit] = float(v) / max(saving.get((unit[0], kind), floor), floor)
    return out


def write_plan(result: SearchResult, out: Union[str, Path]) -> Path:
    """Write ``result.to_dict()`` as JSON to ``out``; returns the path."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result.to_dict(), indent=2))
    return p


__all__ = ["STRUCTURES", "analytic_latency", "default_block_size", "importance_per_ms", "resolve_latency", "run_search", "write_plan"]
