"""Write a deployable bundle: pruned INT8 ONNX + ORT format + tokenizer + metadata, certified on data.

Pipeline for one plan (each step checks itself and raises :class:`~edgeprune.errors.VerificationError` on failure)::

    surgery (adapter.prune_heads_) -> make_fusable_ -> ONNX (TorchScript) -> parity vs PyTorch at several shapes
    -> graph (profile's ``quant.graph``: ``plain`` = as exported, ORT fuses at session load; ``fused`` = ORT
    transformers fusion, fused Attention num_heads == plan's kept heads, parity) -> INT8 (profile's preset;
    quantized node count) -> INT8 vs FP32 agreement -> certification on the certify split -> .ort +
    required-operators config

Bundle folder (``out_dir``)::

    model.onnx                         the shipped INT8 model (plus model.onnx.data only for >1.8 GB models)
    model.ort                          the same model in ORT format, for (reduced) mobile builds
    model.required_operators.config    the operator list for a reduced onnxruntime build
    model.e2e.onnx / model.e2e.ort     string in, logits + label + probabilities out (tokenizer in the graph;
                                       edgeprune.e2e); with model.e2e.required_operators.config. Skipped, with
                                       the reason in edgeprune.json checks.e2e, when the tokenizer is unsupported
    config.json                        transformers config: id2label/label2id, model_type, edgeprune_kept_heads
    tokenizer files                    whatever the tokenizer's save_pretrained writes
    edgeprune.json                     plan, profile, versions, checks, certification

Atomicity: everything is written into a hidden temporary folder next to ``out_dir`` and renamed to ``out_dir`` at
the very end, so an interrupted or failed export leaves no half bundle (and never damages an existing one).

Certification (DESIGN.md section 2): the *shipped INT8 file* is run once with onnxruntime on the certify split and
paired against the unpruned PyTorch model's predictions on the same examples; the one-sided upper confidence bound
on the accuracy drop, ``bounds.paired_drop_upper_bound(n_worse, n_better, n, confidence)``, must not exceed
``max_drop_pts``. When a frontier of fallback plans is given, the number of plans that *may* be looked at is fixed
before the first look and every look uses the Bonferroni-corrected confidence, so the guarantee holds for the one
plan that is finally shipped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import CertificationError, EdgepruneError, VerificationError
from .plan import HeadPlan
from .versions import versions

BUNDLE_FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
ORT_FILE = "model.ort"
OPS_CONFIG_FILE = "model.required_operators.config"
META_FILE = "edgeprune.json"

#: Parity shapes (batch, seq) checked on every exported graph.
PARITY_SHAPES: tuple[tuple[int, int], ...] = ((1, 8), (2, 17), (3, 64))

#: model.ort vs model.onnx: same INT8 graph, ORT's fixed optimisations baked in; only kernel-order noise is allowed.
ORT_VS_ONNX_ATOL = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# statistics: edgeprune.bounds (exact Clopper-Pearson, Bonferroni split; see its docstrings)
# ---------------------------------------------------------------------------------------------------------------------
def corrected_confidence(confidence: float, looks: int) -> float:
    """Per-look confidence so that ``looks`` looks keep the family-wise ``confidence`` (Bonferroni)."""
    from . import bounds

    return float(bounds.corrected_confidence(confidence, looks))


# ---------------------------------------------------------------------------------------------------------------------
# profile access (edgeprune.profiles; a marked shim for a missing profile)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _DefaultQuant:
    """The default preset when no profile is given (DESIGN 5: dynamic, S8, per-channel, no reduce_range)."""

    format: str = "dynamic"
    weight_type: str = "s8"
    per_channel: bool = True
    reduce_range: bool = False


def _load_profile(profile: Any) -> Any:
    if profile is None:
        return None
    from .profiles import load_profile

    return load_profile(profile)


def _quant_of(profile: Any) -> Any:
    return getattr(profile, "quant", None) or _DefaultQuant()


def _profile_dict(profile: Any) -> Any:
    if profile is None:
        return None
    to_dict = getattr(profile, "to_dict", None)
    return to_dict() if to_dict else {"name": getattr(profile, "name", str(profile))}


# ---------------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Certification:
    """Outcome of certifying one shipped file on the certify split (accuracies and bound as fractions)."""

    n: int
    base_accuracy: float
    accuracy: float
    n_worse: int
    n_better: int
    drop: float
    drop_upper_bound: float
    max_drop: float
    confidence: float
    per_look_confidence: float
    looks_planned: int
    passed: bool
    data_source: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BundleResult:
    """What :func:`export_bundle` wrote and checked."""

    out_dir: Path
    plan: HeadPlan
    plan_index: int
    certified: bool | None
    forced: bool
    certification: Certification | None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    recovery: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def _tokenize(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, names: Sequence[str],
              max_length: int) -> dict[str, Any]:
    import numpy as np

    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, padding=True, truncation=True,
                    max_length=max_length, return_tensors="np")
    out = {}
    for n in names:
        if n in enc:
            out[n] = np.asarray(enc[n], dtype=np.int64)
        elif n == "token_type_ids":
            out[n] = np.zeros_like(np.asarray(enc["input_ids"], dtype=np.int64))
        else:
            raise EdgepruneError(f"the tokenizer does not produce {n!r}, which the model needs")
    return out


def _batches(data: Any, batch_size: int):
    texts = list(data.texts)
    pairs = list(data.text_pairs) if getattr(data, "text_pairs", None) is not None else None
    for start in range(0, len(texts), batch_size):
        stop = start + batch_size
        yield texts[start:stop], (pairs[start:stop] if pairs is not None else None)


def torch_predictions(model: Any, tokenizer: Any, data: Any, *, max_length: int, batch_size: int = 32) -> list[int]:
    """Argmax predictions of a PyTorch model on a dataset (tokenised in batches).

    Args:
        model: sequence-classification model.
        tokenizer: its tokenizer.
        data: a dataset with ``texts`` (and optionally ``text_pairs``).
        max_length: truncation length.
        batch_size: examples per forward pass.

    Returns:
        One predicted class id per example.
    """
    import torch

    from .export import input_names_for

    names = input_names_for(model)
    preds: list[int] = []
    model.eval()
    with torch.inference_mode():
        for texts, pairs in _batches(data, batch_size):
            feed = _tokenize(tokenizer, texts, pairs, names, max_length)
            logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
            preds.extend(int(i) for i in logits.argmax(-1).tolist())
    return preds


def onnx_predictions(onnx_path: str | Path, tokenizer: Any, data: Any, *, max_length: int, batch_size: int = 32,
                     threads: int = 1) -> list[int]:
    """Argmax predictions of an ONNX/ORT-format model run with onnxruntime on a dataset.

    Args:
        onnx_path: ``.onnx`` or ``.ort`` file with inputs named like the tokenizer outputs and a ``logits`` output.
        tokenizer: the tokenizer.
        data: dataset with ``texts`` (and optionally ``text_pairs``).
        max_length: truncation length.
        batch_size: examples per run.
        threads: ORT intra-op threads.

    Returns:
        One predicted class id per example.
    """
    from .export import ort_session

    sess = ort_session(onnx_path, threads=threads)
    names = [i.name for i in sess.get_inputs()]
    preds: list[int] = []
    for texts, pairs in _batches(data, batch_size):
        feed = _tokenize(tokenizer, texts, pairs, names, max_length)
        logits = sess.run(["logits"], feed)[0]
        preds.extend(int(i) for i in logits.argmax(-1).tolist())
    return preds


def certify(base_preds: Sequence[int], preds: Sequence[int], labels: Sequence[int], *, max_drop: float,
            confidence: float, looks: int = 1, data_source: str = "") -> Certification:
    """Paired certification of a candidate's predictions against the base model's.

    Args:
        base_preds: unpruned model's predictions.
        preds: shipped model's predictions on the same examples.
        labels: gold labels.
        max_drop: allowed accuracy drop as a fraction (0.01 = 1 point).
        confidence: family-wise confidence of the promise.
        looks: number of candidate files that may be certified on this split (Bonferroni correction).
        data_source: description of the certify split, for the record.

    Returns:
        A :class:`Certification` (``passed`` says whether the bound holds).
    """
    n = len(labels)
    if not (len(base_preds) == len(preds) == n) or n == 0:
        raise EdgepruneError(f"certification needs aligned, non-empty predictions (got {len(base_preds)}, "
                             f"{len(preds)}, {n})")
    base_ok = [p == y for p, y in zip(base_preds, labels)]
    ok = [p == y for p, y in zip(preds, labels)]
    n_worse = sum(1 for b, c in zip(base_ok, ok) if b and not c)
    n_better = sum(1 for b, c in zip(base_ok, ok) if c and not b)
    from . import bounds

    per_look = corrected_confidence(confidence, looks)
    bound = float(bounds.paired_drop_upper_bound(n_worse, n_better, n, per_look))
    return Certification(
        n=n, base_accuracy=sum(base_ok) / n, accuracy=sum(ok) / n, n_worse=n_worse, n_better=n_better,
        drop=(n_worse - n_better) / n, drop_upper_bound=bound, max_drop=max_drop, confidence=confidence,
        per_look_confidence=per_look, looks_planned=looks, passed=bound <= max_drop + 1e-12,
        data_source=data_source,
    )


def _config_json(model: Any, plan: HeadPlan) -> dict[str, Any]:
    """config.json for the bundle: the model's own config (optimum/transformers read it) plus the pruned layout.

    ``num_attention_heads`` stays the original per-layer count (transformers configs cannot express uneven heads);
    the kept counts go to ``edgeprune_kept_heads`` (ignored by transformers and optimum, which only need
    ``model_type``, ``id2label`` and ``label2id`` for an ONNX classifier).
    """
    cfg = model.config.to_dict()
    for key in ("_attn_implementation", "_attn_implementation_autoset", "torch_dtype", "dtype"):
        cfg.pop(key, None)
    cfg["architectures"] = [type(model).__name__]
    cfg["id2label"] = {str(k): v for k, v in model.config.id2label.items()}
    cfg["label2id"] = {k: int(v) for k, v in model.config.label2id.items()}
    cfg["edgeprune_kept_heads"] = list(plan.kept_counts)
    cfg["edgeprune_plan"] = plan.to_dict()
    return cfg


def _replace_dir(tmp_bundle: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished bundle into place: a rename, so readers never see a half-written folder."""
    if out_dir.exists():
        if not overwrite:
            raise EdgepruneError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp_bundle, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_bundle, out_dir)


# ---------------------------------------------------------------------------------------------------------------------
# one plan -> files
# ---------------------------------------------------------------------------------------------------------------------
def build_model_files(
    base_model: Any,
    plan: HeadPlan,
    quant: Any,
    work: Path,
    *,
    parity_shapes: Sequence[tuple[int, int]] = PARITY_SHAPES,
    calibration_feeds: Any = None,
    hook: Callable[[str], None] | None = None,
) -> tuple[Any, Path, dict[str, Any]]:
    """Surgery, export, fusion and quantization of one plan, with every self-check.

    Args:
        base_model: the unpruned model (not modified: a copy is pruned).
        plan: heads to keep (original indices).
        quant: the quantization preset (``format``, ``weight_type``, ``per_channel``, ``reduce_range``);
            ``format == "none"`` ships the FP32 graph; ``graph`` (``plain``/``fused``) picks the graph preparation.
        work: scratch folder for intermediate files.
        parity_shapes: (batch, seq) pairs for the parity checks.
        calibration_feeds: ORT feeds for static (QDQ) quantization.
        hook: called with each step's name before it runs (used by tests to interrupt an export).

    Returns:
        ``(pruned_model, final_onnx_path, checks)``.
    """
    from .adapters import get_adapter
    from .export import (FP32_ATOL, check_parity, export_onnx, fused_attention_heads, onnx_size_bytes,
                         prepare_graph)
    from .modeling import clone_model
    from .quantize import INT8_LOGIT_ATOL, count_quantized, quantize_onnx

    step = hook or (lambda name: None)
    work.mkdir(parents=True, exist_ok=True)
    checks: dict[str, Any] = {}
    step("surgery")
    model = clone_model(base_model).eval()
    adapter = get_adapter(model)
    adapter.prune_heads_(model, plan)
    adapter.make_fusable_(model)
    step("export")
    fp32 = export_onnx(model, work / "model.fp32.onnx")
    checks["parity_fp32_max_abs_diff"] = check_parity(model, fp32, parity_shapes, FP32_ATOL)
    step("optimize")
    graph = getattr(quant, "graph", "plain")
    checks["graph"] = graph
    prepared = prepare_graph(fp32, work / "model.fused.onnx", graph=graph, expected_heads=plan.kept_counts)
    if graph == "fused":
        checks["fused_attention_num_heads"] = fused_attention_heads(prepared)
        checks["parity_fused_max_abs_diff"] = check_parity(model, prepared, parity_shapes, FP32_ATOL)
    checks["fp32_bytes"] = onnx_size_bytes(prepared)
    step("quantize")
    fmt = str(getattr(quant, "format", "dynamic")).lower()
    if fmt == "none":
        final = prepared
        checks["quantized_nodes"] = {}
    else:
        final = quantize_onnx(prepared, work / "model.int8.onnx", format="qdq" if fmt == "static" else fmt,
                              weight_type=quant.weight_type, per_channel=quant.per_channel,
                              reduce_range=quant.reduce_range, calibration_feeds=calibration_feeds)
        checks["quantized_nodes"] = count_quantized(final)
        # INT8 vs PyTorch: recorded; a diff beyond the documented tolerance raises (a broken quantization), while
        # the accuracy promise itself comes from certification on real data.
        checks["parity_int8_max_abs_diff"] = check_parity(model, final, parity_shapes, atol=float("inf"))
        checks["int8_logit_atol"] = INT8_LOGIT_ATOL
    checks["final_bytes"] = onnx_size_bytes(final)
    checks["size_ratio_vs_fp32"] = checks["final_bytes"] / checks["fp32_bytes"]
    checks["quant"] = {k: getattr(quant, k, None) for k in ("format", "weight_type", "per_channel", "reduce_range",
                                                            "graph")}
    return model, final, checks


# ---------------------------------------------------------------------------------------------------------------------
# the bundle
# ---------------------------------------------------------------------------------------------------------------------
def export_bundle(
    model_dir_or_model: Any,
    plan: HeadPlan | dict | str | Path,
    profile: Any,
    out_dir: str | Path,
    *,
    tokenizer: Any = None,
    certify_data: Any = None,
    max_drop_pts: float = 1.0,
    confidence: float = 0.95,
    frontier: Sequence[HeadPlan | dict] | None = None,
    force: bool = False,
    overwrite: bool = False,
    max_length: int | None = None,
    batch_size: int = 32,
    parity_shapes: Sequence[tuple[int, int]] = PARITY_SHAPES,
    int8_atol: float | None = None,
    hook: Callable[[str], None] | None = None,
    recovery_data: Any = None,
    recovery_examples: int = 2048,
) -> BundleResult:
    """Export a plan as a certified, deployable bundle folder (see the module docstring for the layout).

    Args:
        model_dir_or_model: the *unpruned* fine-tuned model: a folder/hub id (loaded safely with
            :func:`edgeprune.modeling.load_model`) or a model object (then pass ``tokenizer``). Certification pairs
            against this model.
        plan: the plan to ship: a :class:`HeadPlan`, its dict, or a plan.json path.
        profile: device profile name/path/object (its ``quant`` preset and ``seq_len`` are used), or ``None`` for
            the default preset (dynamic, S8, per-channel) and seq 128.
        out_dir: bundle folder to create.
        tokenizer: the tokenizer (required with a model object).
        certify_data: the certify split (``TextDataset``-like: ``texts``, ``labels``, optional ``text_pairs``), or
            ``None`` to ship uncertified (recorded as such).
        max_drop_pts: allowed accuracy drop in points (1.0 = one percentage point).
        confidence: family-wise confidence of the promise (e.g. 0.95).
        frontier: fallback plans, best first, tried in order when the plan's bound is broken. The number of looks is
            ``1 + len(frontier)`` and is used for the Bonferroni correction of *every* look.
        force: when no plan certifies, ship the requested plan anyway, marked ``"forced": true`` (the CLI then
            prints a large warning and exits non-zero). Without it, :class:`CertificationError` is raised.
        overwrite: replace an existing ``out_dir``.
        max_length: tokenizer truncation for certification (default: the profile's ``seq_len`` or 128).
        batch_size: certification batch size.
        parity_shapes: (batch, seq) pairs checked after export and fusion.
        int8_atol: if given, raise :class:`VerificationError` when INT8 logits differ from PyTorch by more.
        hook: called with each step name (``surgery``, ``export``, ``optimize``, ``quantize``, ``certify``,
            ``ort``, ``write``; ``recovery`` with ``recovery_data``); used by tests to interrupt an export.
        recovery_data: fit data for retraining-free recovery (:mod:`edgeprune.recovery`: least-squares re-fit of the
            kept heads' and FFN neurons' scales, folded into the weights). Pass the *search* split, never the
            certify split. Each plan attempted (fallbacks too) is fitted and folded into a copy of the unpruned model
            before surgery; parity checks compare against that folded model, while certification still pairs
            against the original model's predictions. ``None`` = no recovery.
        recovery_examples: examples of ``recovery_data`` used for the fit (an evenly strided subset).

    Returns:
        A :class:`BundleResult`.

    Raises:
        CertificationError: no plan meets the bound and ``force`` is off.
        VerificationError: a self-check failed (parity, fusion, quantization).
        EdgepruneError: bad inputs (existing ``out_dir``, missing tokenizer...).
    """
    from .modeling import load_model, load_plan
    from .quantize import to_ort_format

    t0 = time.time()
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not overwrite:
        raise EdgepruneError(f"{out_dir} already exists; pass --overwrite to replace it")
    if isinstance(model_dir_or_model, (str, Path)):
        model, loaded_tok = load_model(model_dir_or_model)
        tokenizer = tokenizer or loaded_tok
        model_source = str(model_dir_or_model)
    else:
        model, model_source = model_dir_or_model.eval(), getattr(model_dir_or_model, "name_or_path", "<object>")
    if tokenizer is None:
        raise EdgepruneError("a tokenizer is needed for the bundle (pass tokenizer=...)")
    plans = [_as_plan(plan, load_plan)] + [_as_plan(p, load_plan) for p in (frontier or [])]
    prof = _load_profile(profile)
    quant = _quant_of(prof)
    seq_len = int(max_length or getattr(prof, "seq_len", None) or 128)
    looks = len(plans)
    step = hook or (lambda name: None)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        base_preds = None
        if certify_data is not None:
            step("base-predictions")
            base_preds = torch_predictions(model, tokenizer, certify_data, max_length=seq_len, batch_size=batch_size)
        attempts: list[dict[str, Any]] = []
        chosen = None
        for index, cand in enumerate(plans):
            work = tmp_root / f"plan{index}"
            source, recovery = model, None
            if recovery_data is not None and not cand.is_full:
                step("recovery")
                source, recovery = _recovered_copy(model, tokenizer, recovery_data, cand, examples=recovery_examples,
                                                   max_length=seq_len, batch_size=batch_size)
            pruned, final, checks = build_model_files(source, cand, quant, work, parity_shapes=parity_shapes,
                                                      hook=hook)
            del source  # the folded copy (if any): build_model_files pruned its own copy
            checks["recovery"] = recovery
            if int8_atol is not None and checks.get("parity_int8_max_abs_diff", 0.0) > int8_atol:
                raise VerificationError(f"INT8 logits differ from PyTorch by {checks['parity_int8_max_abs_diff']:.3g}"
                                        f" > {int8_atol}")
            cert = None
            if certify_data is not None:
                step("certify")
                preds = onnx_predictions(final, tokenizer, certify_data, max_length=seq_len, batch_size=batch_size)
                cert = certify(base_preds, preds, certify_data.labels, max_drop=max_drop_pts / 100.0,
                               confidence=confidence, looks=looks,
                               data_source=str(getattr(certify_data, "source", "<memory>")))
            if index == 0:
                first_built = (pruned, final, checks)
            attempts.append({"plan_index": index, "kept_heads": list(cand.kept_counts),
                             "recovery_applied": recovery is not None,
                             "certification": cert.to_dict() if cert else None})
            if cert is None or cert.passed:
                chosen = (index, cand, pruned, final, checks, cert)
                break
        forced = False
        if chosen is None:
            if not force:
                lines = [f"  plan {a['plan_index']} (kept heads {a['kept_heads']}): drop upper bound "
                         f"{100 * a['certification']['drop_upper_bound']:.2f} pts, observed accuracy "
                         f"{100 * a['certification']['accuracy']:.2f}% vs base "
                         f"{100 * a['certification']['base_accuracy']:.2f}%" for a in attempts]
                raise CertificationError(
                    f"no plan meets the bound 'accuracy drop <= {max_drop_pts} pts at {confidence:.0%} confidence' "
                    f"on the certify split ({attempts[0]['certification']['n']} examples, {looks} look(s), "
                    f"per-look confidence {attempts[0]['certification']['per_look_confidence']:.4f}):\n"
                    + "\n".join(lines)
                    + "\nNo bundle was written. Relax --max-drop, use a larger certify split, choose a plan that "
                    "removes fewer heads, or pass --force to ship anyway (marked as NOT certified)."
                )
            # Ship the requested plan (index 0), marked as forced.
            pruned, final, checks = first_built
            cert = Certification(**attempts[0]["certification"])
            chosen = (0, plans[0], pruned, final, checks, cert)
            forced = True

        index, cand, pruned, final, checks, cert = chosen
        recovery_info = checks.pop("recovery", None)
        step("ort")
        bundle = tmp_root / "bundle"
        bundle.mkdir()
        from .export import onnx_files

        files = onnx_files(final)
        shutil.copy2(final, bundle / MODEL_FILE)
        for extra in files[1:]:  # external data keeps its referenced name
            shutil.copy2(extra, bundle / extra.name)
        arch = getattr(prof, "arch", None)
        ort_out = to_ort_format(bundle / MODEL_FILE, tmp_root / "ort",
                                target_platform={"aarch64": "arm", "x86_64": "amd64"}.get(arch))
        shutil.copy2(ort_out["ort"], bundle / ORT_FILE)
        shutil.copy2(ort_out["required_operators"], bundle / OPS_CONFIG_FILE)
        # The .ort file has ORT's optimisations baked in: check it computes what the certified model.onnx does.
        checks["ort_vs_onnx_max_abs_diff"] = _max_diff_between(bundle / MODEL_FILE, bundle / ORT_FILE, pruned,
                                                               parity_shapes)
        if not checks["ort_vs_onnx_max_abs_diff"] <= ORT_VS_ONNX_ATOL:
            raise VerificationError(f"{ORT_FILE} differs from {MODEL_FILE} by {checks['ort_vs_onnx_max_abs_diff']:.3g}"
                                    f" > {ORT_VS_ONNX_ATOL}")
        step("write")
        tokenizer.save_pretrained(str(bundle))
        (bundle / "config.json").write_text(json.dumps(_config_json(pruned, cand), indent=2, sort_keys=True) + "\n")
        from .e2e import write_e2e  # string in, label out (model.e2e.onnx/.ort), or the reason it was skipped

        checks["e2e"] = write_e2e(bundle / MODEL_FILE, tokenizer, bundle, max_length=seq_len,
                                  texts=getattr(certify_data, "texts", None),
                                  pair_task=getattr(certify_data, "text_pairs", None) is not None,
                                  target_platform={"aarch64": "arm", "x86_64": "amd64"}.get(arch))
        meta = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "model_source": model_source,
            "model_type": pruned.config.model_type,
            "files": {"model": MODEL_FILE, "ort": ORT_FILE, "required_operators": OPS_CONFIG_FILE,
                      "external_data": [p.name for p in files[1:]], **checks["e2e"]["files"]},
            "inputs": _input_names(pruned),
            "max_length": seq_len,
            "plan": cand.to_dict(),
            "plan_index": index,
            "kept_heads": list(cand.kept_counts),
            "heads_removed": cand.num_removed,
            "heads_total": sum(cand.num_heads),
            "profile": _profile_dict(prof),
            "quant": checks["quant"],
            "checks": checks,
            "certified": (cert.passed and not forced) if cert else None,
            "forced": forced,
            "certification": cert.to_dict() if cert else None,
            "attempts": attempts,
            "recovery_applied": recovery_info is not None,
            "recovery": recovery_info,
            "versions": versions(),
            "export_seconds": round(time.time() - t0, 2),
        }
        if cert is None:
            meta["certification_note"] = "NOT CERTIFIED: no certify data was given"
        elif forced:
            meta["certification_note"] = ("NOT CERTIFIED (FORCED): the accuracy-drop bound is broken; shipped on "
                                          "user request")
        (bundle / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(bundle, out_dir, overwrite)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return BundleResult(out_dir=out_dir, plan=cand, plan_index=index,
                        certified=(cert.passed and not forced) if cert else None, forced=forced, certification=cert,
                        attempts=attempts, checks=checks, recovery=recovery_info)


def _recovered_copy(model: Any, tokenizer: Any, data: Any, plan: HeadPlan, *, examples: int, max_length: int,
                    batch_size: int) -> tuple[Any, dict[str, Any]]:
    """A copy of the unpruned ``model`` with ``plan``'s recovery fitted on ``data`` and folded in (the model itself is
    left untouched: certification pairs against it); returns ``(folded_copy, recovery summary)``."""
    from .modeling import clone_model
    from .recovery import apply_recovery_, fit_recovery

    folded = clone_model(model).eval()
    rec = fit_recovery(folded, tokenizer, data, plan, max_examples=examples, max_length=max_length,
                       batch_size=batch_size)
    apply_recovery_(folded, rec)
    return folded, rec.to_dict()


def _max_diff_between(a: Path, b: Path, model: Any, shapes: Sequence[tuple[int, int]]) -> float:
    """Max |logit difference| between two ONNX/ORT files on the parity inputs."""
    import numpy as np

    from .export import _make_inputs, ort_session

    sa, sb = ort_session(a), ort_session(b)
    names = [i.name for i in sa.get_inputs()]
    worst = 0.0
    for batch, seq in shapes:
        feed = _make_inputs(model.config, names, batch, seq)
        la = sa.run(["logits"], feed)[0]
        lb = sb.run(["logits"], feed)[0]
        worst = max(worst, float(np.max(np.abs(la.astype(np.float64) - lb))))
    return worst


def _input_names(model: Any) -> list[str]:
    from .export import input_names_for

    return input_names_for(model)


def _as_plan(plan: Any, load_plan: Callable[[Any], HeadPlan]) -> HeadPlan:
    if isinstance(plan, HeadPlan):
        return plan
    if isinstance(plan, dict):
        return HeadPlan.from_dict(plan.get("plan", plan))
    return load_plan(plan)


def load_frontier(path: str | Path) -> list[HeadPlan]:
    """Read fallback plans from JSON: a list of plan dicts, or ``{"frontier": [...]}`` whose items are plan dicts
    or ``{"plan": {...}}`` entries (the search's output), in the order they should be tried.

    Args:
        path: JSON file.

    Returns:
        The plans.

    Raises:
        EdgepruneError: unreadable or malformed file.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EdgepruneError(f"cannot read frontier {path}: {exc}") from exc
    items = data.get("frontier", data) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise EdgepruneError(f"{path}: expected a list of plans or {{'frontier': [...]}}")
    return [HeadPlan.from_dict(it.get("plan", it)) for it in items]


def run_export(
    model: str | Path,
    plan_path: str | Path,
    profile: str | Path,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    frontier_path: str | Path | None = None,
    max_drop_pts: float = 1.0,
    confidence: float = 0.95,
    force: bool = False,
    overwrite: bool = False,
) -> BundleResult:
    """The ``edgeprune export`` command's library call: load the model, the certify data and the frontier, export.

    Args:
        model: unpruned model folder or hub id.
        plan_path: plan.json.
        profile: device profile name or .toml path.
        out_dir: bundle folder.
        data: certify split file (CSV/TSV/JSONL), or ``None`` to ship uncertified.
        text_column, text_pair_column, label_column: columns of ``data`` (auto-detected when ``None``).
        frontier_path: JSON with fallback plans (see :func:`load_frontier`).
        max_drop_pts: allowed accuracy drop in points.
        confidence: family-wise confidence.
        force: ship even if no plan certifies (marked as not certified).
        overwrite: replace an existing bundle folder.

    Returns:
        The :class:`BundleResult`.
    """
    from .modeling import load_model

    mdl, tok = load_model(model)
    certify_data = None
    if data is not None:
        from .data import load_dataset

        certify_data = load_dataset(data, text_column=text_column, text_pair_column=text_pair_column,
                                    label_column=label_column, label2id=dict(mdl.config.label2id))
    frontier = load_frontier(frontier_path) if frontier_path else None
    return export_bundle(mdl, plan_path, profile, out_dir, tokenizer=tok, certify_data=certify_data,
                         max_drop_pts=max_drop_pts, confidence=confidence, frontier=frontier, force=force,
                         overwrite=overwrite)


def summary_lines(result: BundleResult) -> list[str]:
    """Human-readable lines describing a bundle result (used by the CLI)."""
    c = result.checks
    lines = [
        f"bundle written to {result.out_dir}",
        f"  plan {result.plan_index}: kept heads per layer {list(result.plan.kept_counts)} "
        f"({result.plan.num_removed} of {sum(result.plan.num_heads)} removed)",
        (f"  graph {c.get('graph', 'fused')}"
         + (f", fused Attention num_heads {c.get('fused_attention_num_heads')}" if c.get("graph") == "fused" else "")
         + f"; parity FP32 {c.get('parity_fp32_max_abs_diff', float('nan')):.2e}, "
           f"INT8 {c.get('parity_int8_max_abs_diff', float('nan')):.2e}"),
        f"  model.onnx {c.get('final_bytes', 0) / 1e6:.2f} MB = {100 * c.get('size_ratio_vs_fp32', float('nan')):.1f}% "
        f"of FP32 ({c.get('quantized_nodes')})",
    ]
    from .e2e import summary_line

    lines.append("  " + summary_line(c.get("e2e")))
    cert = result.certification
    if cert is None:
        lines.append("  NOT CERTIFIED: no certify data given (--data)")
    else:
        lines.append(
            f"  certify split: n={cert.n}, accuracy {100 * cert.accuracy:.2f}% vs base {100 * cert.base_accuracy:.2f}%"
            f" (worse {cert.n_worse}, better {cert.n_better}); drop upper bound {100 * cert.drop_upper_bound:.2f} "
            f"pts at {cert.confidence:.0%} (per look {cert.per_look_confidence:.4f}, {cert.looks_planned} look(s)); "
            f"limit {100 * cert.max_drop:.2f} pts -> {'PASS' if cert.passed else 'FAIL'}"
        )
    return lines
