"""Orchestration of one head-pruning search: model + search split + latency model -> plan (``edgeprune search``).

This is the only module that ties the torch engine (:mod:`edgeprune.search.evaluate`, :mod:`edgeprune.search.importance`) to
the pure search (:mod:`edgeprune.search`). Heavy imports happen inside :func:`run_search`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from edgeprune.config import DEFAULT_FFN_BLOCK_SIZE, DEFAULT_SEARCH, STRUCTURES, SearchSettings
from edgeprune.errors import EdgepruneError
from edgeprune.search import Correction, Progress, SearchConfig, SearchResult
from edgeprune.search import search as _search
from edgeprune.versions import versions

LatencyFn = Callable[..., float]  # latency(kept_heads[, kept_ffn_blocks]) -> ms


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
        from edgeprune.latency.table import has_ffn_axis, load_lut, predict

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
    settings: Optional[SearchSettings] = None,
    max_drop_pts: float = 1.0,
    confidence: float = 0.95,
    profile: Any = None,
    latency_table: Optional[Union[str, Path]] = None,
    latency: Optional[LatencyFn] = None,
    tokenizer: Any = None,
    max_length: Optional[int] = None,
    journal: Optional[Union[str, Path]] = None,
    resume: bool = False,
    on_progress: Optional[Callable[[Progress], None]] = None,
    text_column: Optional[str] = None,
    label_column: Optional[str] = None,
    shipped_predictions: Optional[Sequence[int]] = None,
    work_dir: Optional[Union[str, Path]] = None,
    bound_scale: float = 1.0,
    **overrides: Any,
) -> SearchResult:
    """Search a plan for ``model`` on ``search_data`` under an accuracy bound, as ``edgeprune build`` does.

    Args:
        model: model folder / hub id (loaded with :func:`edgeprune.task.modeling.load_model`), "default" (the default
            task's fine-tuned MiniLM), or a loaded model (then pass ``tokenizer``). The loaded model is modified in
            place (fusable attention modules, same outputs).
        search_data: a :class:`~edgeprune.task.data.TextDataset`, a dataset path, or "default" (the default task's
            search split).
        settings: how to search (:class:`edgeprune.config.SearchSettings`; default: the build's defaults).
        max_drop_pts: the promise's accuracy bound in points (1.0 = one point).
        confidence: the promise's confidence; candidates are accepted at the level certification's tests
            use (:func:`edgeprune.certify.policy.search_confidence`: the full confidence with fixed-sequence
            certification).
        profile: device profile name/path/object (sequence length, its LUT, the INT8 preset for the INT8 allowance).
        latency_table: LUT JSON (``edgeprune lut``); overrides the profile's.
        latency: a latency function to use directly (overrides both; e.g. for tests).
        tokenizer: tokenizer when ``model`` is an object.
        max_length: truncation length (default: the profile's seq_len, else 128).
        journal: JSONL journal path (default: none).
        resume: replay the journal instead of re-evaluating.
        on_progress: progress callback.
        text_column, label_column: dataset columns (file datasets).
        shipped_predictions: predictions of the *unpruned* model in its shipped form on the search split (dataset
            order). Default with ``settings.int8_aware`` and a profile: compiled here with the profile's preset
            (:func:`shipped_dense_predictions`). Their discordance against the FP32 model is added to every
            candidate's counts (:func:`edgeprune.certify.policy.int8_allowance`).
        work_dir: scratch folder for the dense shipped-form file (default: a temporary folder).
        bound_scale: bound candidates as if observed on a split this many times larger (``SearchConfig.
            bound_scale``); ``edgeprune build`` passes certify size / search size, so the search accepts what the
            certify split is expected to certify.
        **overrides: :class:`SearchSettings` fields to change (e.g. ``algorithm="greedy"``).

    Returns:
        The :class:`SearchResult`; ``result.to_dict()`` is the plan.json content (with latency source, model,
        data, versions under ``search``).

    Raises:
        EdgepruneError: bad model, data, profile, table or configuration.
    """
    from edgeprune.certify.policy import int8_allowance, search_confidence

    settings = (settings or DEFAULT_SEARCH).replace(**overrides) if overrides else (settings or DEFAULT_SEARCH)
    algorithm, structures, ffn_block_size = settings.algorithm, settings.structures, settings.ffn_block_size
    importance_examples = settings.importance_examples
    from edgeprune.search.evaluate import MaskedEvaluator
    from edgeprune.search.importance import head_importance, make_rescorer

    joint = structures == "heads+ffn"
    model_id = None
    if str(model) == "default" or str(search_data) == "default":
        from edgeprune.task.default import default_task

        task = default_task()
        if str(model) == "default":
            model = task.model_dir
        if str(search_data) == "default":
            search_data = task.search
    if isinstance(model, (str, os.PathLike)):
        from edgeprune.task.modeling import load_model

        model_id = str(model)
        model, tok = load_model(model)
        tokenizer = tokenizer or tok
    if tokenizer is None:
        raise EdgepruneError("a tokenizer is needed to evaluate the search split")
    if isinstance(search_data, (str, os.PathLike)):
        from edgeprune.task.data import load_dataset

        search_data = load_dataset(search_data, text_column=text_column, label_column=label_column,
                                   label2id=getattr(model.config, "label2id", None))
    prof = None
    if profile is not None:
        from edgeprune.profiles import load_profile

        prof = load_profile(profile)
    seq_len = max_length or (prof.seq_len if prof is not None else 128)
    if shipped_predictions is None and settings.int8_aware and prof is not None:
        shipped_predictions = shipped_dense_predictions(model, tokenizer, search_data, prof, work_dir)
    t0 = time.monotonic()
    block_size = None
    if joint:
        from edgeprune.adapters import get_adapter

        block_size = ffn_block_size or default_block_size(get_adapter(model).ffn_sizes(model))
    pricing_note = None
    if settings.pricing == "refit":
        from edgeprune.recovery.refit import unsupported_reason

        pricing_note = unsupported_reason(model)
        if pricing_note:  # e.g. ModernBERT: price masked, and say so in plan.json
            settings = settings.replace(pricing="none")
            pricing_note = f"candidates priced masked: the least-squares refit does not support this model ({pricing_note})"
    if settings.pricing == "refit":
        from edgeprune.search.evaluate import RefitEvaluator

        evaluator = RefitEvaluator(model, tokenizer, search_data, batch_size=settings.eval_batch_size,
                                   max_length=seq_len, ffn_block_size=block_size, fit_examples=settings.fit_examples)
    else:
        evaluator = MaskedEvaluator(model, tokenizer, search_data, batch_size=settings.eval_batch_size,
                                    max_length=seq_len, ffn_block_size=block_size)
    base_s = time.monotonic() - t0
    layout = evaluator.layout
    space = evaluator.space
    shipped_counts = None
    offset_worse = offset_better = 0
    if shipped_predictions is not None:
        if len(shipped_predictions) != evaluator.n:
            raise EdgepruneError(f"shipped_predictions has {len(shipped_predictions)} entries, the search split "
                                 f"{evaluator.n}")
        labels = evaluator.labels.tolist()
        allowance = int8_allowance(evaluator.base_correct.tolist(),
                                   [int(p) == y for p, y in zip(shipped_predictions, labels)])
        offset_worse, offset_better = allowance.pop("offset_worse"), allowance.pop("offset_better")
        shipped_counts = allowance
    if latency is not None:
        lat_fn, source = latency, {"kind": "callable", "unit": "ms"}
    else:
        lat_fn, source = resolve_latency(layout, layout.hidden_size, seq_len, latency_table=latency_table,
                                         profile=prof, space=space)
    t1 = time.monotonic()
    if joint:
        from edgeprune.search.ffn_importance import unit_importance

        def rescore_units(state: frozenset) -> dict:
            raw = unit_importance(evaluator, frozenset(state), max_examples=importance_examples)
            return importance_per_ms(raw, space, lat_fn, frozenset(state))

        importance = rescore_units(frozenset())
        rescorer = rescore_units
    else:
        importance = head_importance(evaluator, max_examples=importance_examples)
        rescorer = make_rescorer(evaluator, max_examples=importance_examples)
    importance_s = time.monotonic() - t1
    config = SearchConfig(max_drop_pts=max_drop_pts,
                          confidence=search_confidence(confidence),
                          correction=Correction(settings.correction), max_evaluations=settings.max_evaluations,
                          max_seconds=settings.max_seconds, branching=settings.branching,
                          batch_size=settings.batch_size, seed=settings.seed, offset_worse=offset_worse,
                          offset_better=offset_better, rescore_every=settings.rescore_every,
                          credit_improvement=settings.credit_improvement, step_units=settings.step_units,
                          bound_scale=float(bound_scale))
    fingerprint = {
        "model": model_id or type(model).__name__,
        "data": {"source": getattr(search_data, "source", None), "n": len(search_data)},
        "max_length": seq_len,
        "latency_source": source.get("path") or source["kind"],
        "importance_examples": importance_examples,
        "pricing": settings.pricing,
        "fit_examples": settings.fit_examples if settings.pricing == "refit" else None,
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
            "early_rejection": {"candidates_stopped": evaluator.early_rejected,
                                "candidate_batches_skipped": evaluator.batches_skipped,
                                "candidate_batches_run": evaluator.batches_run,
                                "batches_per_evaluation": len(evaluator.batches)},
            "shipped_model_flips": shipped_counts,
            "pricing": ({"kind": "refit", "fit_examples": settings.fit_examples, "refits": evaluator.refits,
                         "refit_seconds": round(evaluator.refit_seconds, 2),
                         "what": "each candidate evaluated after the full least-squares weight refit "
                                 "(edgeprune.recovery.refit) fitted on search-split texts"}
                        if settings.pricing == "refit" else {"kind": "masked", "note": pricing_note}),
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


def shipped_dense_predictions(model: Any, tokenizer: Any, data: Any, profile: Any,
                              work_dir: Optional[Union[str, Path]] = None) -> list[int]:
    """Predictions on ``data`` of the unpruned model compiled as it will ship (the profile's preset, through
    :func:`edgeprune.onnx.compile.compile_plan`).

    The search bounds masked FP32 candidates; the shipped file is INT8, which changes some predictions by itself.
    """
    import shutil
    import tempfile

    from edgeprune.adapters import get_adapter
    from edgeprune.onnx.compile import compile_plan
    from edgeprune.plan import HeadPlan
    from edgeprune.task.predict import onnx_predictions

    full = HeadPlan.full(get_adapter(model).layout(model).heads_per_layer)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="edgeprune-dense-"))
    try:
        compiled = compile_plan(model, full, profile.quant, work)
        return onnx_predictions(compiled.onnx, tokenizer, data, max_length=profile.seq_len)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_plan(result: SearchResult, out: Union[str, Path]) -> Path:
    """Write ``result.to_dict()`` as JSON to ``out``; returns the path."""
    from edgeprune.output.folder import atomic_write_text

    return atomic_write_text(out, json.dumps(result.to_dict(), indent=2))  # never seen half written


__all__ = ["STRUCTURES", "analytic_latency", "default_block_size", "importance_per_ms", "resolve_latency", "run_search", "write_plan"]
