"""Write a deployable bundle: pruned INT8 ONNX + ORT format + tokenizer + metadata, certified on data.

Each candidate plan is compiled by the one compile chain (:func:`edgeprune.onnx.compile.compile_plan`: surgery
checked against masking, export, parity, graph, INT8) and certified by :mod:`edgeprune.certify`; this module writes
the folder of the plan that ships (+ ``.ort`` and its required-operators config, checked against ``model.onnx``).

Bundle folder (``out_dir``)::

    model.onnx                         the shipped INT8 model (plus model.onnx.data only for >1.8 GB models)
    model.ort                          the same model in ORT format, for (reduced) mobile builds
    model.required_operators.config    the operator list for a reduced onnxruntime build
    model.e2e.onnx / model.e2e.ort     string in, logits + label + probabilities out (tokenizer in the graph;
                                       edgeprune.onnx.e2e); with model.e2e.required_operators.config. Skipped, with
                                       the reason in edgeprune.json checks.e2e, when the tokenizer is unsupported
    config.json                        transformers config: id2label/label2id, model_type, edgeprune_kept_heads
    tokenizer files                    whatever the tokenizer's save_pretrained writes
    edgeprune.json                     plan, profile, versions, checks, certification

Atomicity: everything is written into a hidden temporary folder next to ``out_dir`` and renamed to ``out_dir`` at
the very end, so an interrupted or failed export leaves no half bundle (and never damages an existing one).

Certification: see :mod:`edgeprune.certify.core` (what is tested, in which order, at which level).
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

from edgeprune.certify.core import Certification, certify_sequence
from edgeprune.errors import EdgepruneError, VerificationError
from edgeprune.plan import HeadPlan
from edgeprune.versions import versions

BUNDLE_FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
ORT_FILE = "model.ort"
OPS_CONFIG_FILE = "model.required_operators.config"
META_FILE = "edgeprune.json"

from edgeprune.onnx.compile import PARITY_SHAPES  # noqa: E402,F401 (re-exported: the bundle's parity shapes)

#: model.ort vs model.onnx: same INT8 graph, ORT's fixed optimisations baked in; only kernel-order noise is allowed.
ORT_VS_ONNX_ATOL = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# profile access (edgeprune.profiles; a marked shim for a missing profile)
# ---------------------------------------------------------------------------------------------------------------------
def _load_profile(profile: Any) -> Any:
    if profile is None:
        return None
    from edgeprune.profiles import load_profile

    return load_profile(profile)


def _quant_of(profile: Any) -> Any:
    from edgeprune.profiles import QuantPreset

    return profile.quant if profile is not None else QuantPreset.default_int8()


def _profile_dict(profile: Any) -> Any:
    if profile is None:
        return None
    to_dict = getattr(profile, "to_dict", None)
    return to_dict() if to_dict else {"name": getattr(profile, "name", str(profile))}


# ---------------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------------
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
    sequence: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
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
    names: Sequence[str] | None = None,
    recorded: dict[str, Any] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    force: bool = False,
    overwrite: bool = False,
    max_length: int | None = None,
    batch_size: int = 32,
    parity_shapes: Sequence[tuple[int, int]] = PARITY_SHAPES,
    int8_atol: float | None = None,
    hook: Callable[[str], None] | None = None,
    recovery_data: Any = None,
    recovery_examples: int = 2048,
    recover: Callable[[int, HeadPlan], tuple[Any, Any, Any]] | None = None,
    model_source: str | None = None,
) -> BundleResult:
    """Export a plan as a certified, deployable bundle folder (see the module docstring for the layout).

    Args:
        model_dir_or_model: the *unpruned* fine-tuned model: a folder/hub id (loaded safely with
            :func:`edgeprune.task.modeling.load_model`) or a model object (then pass ``tokenizer``). Certification pairs
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
        frontier: less compressed plans tested *before* ``plan``, least compressed first (e.g. the unpruned model,
            then frontier plans). The sequence ``frontier + [plan]`` is certified by fixed-sequence testing
            (:func:`edgeprune.certify.core.certify_sequence`): each test at the full ``confidence``, stop at the
            first failure, ship the most compressed plan that passed. The order must be fixed before the certify
            split is read.
        names: names of the sequence's plans (for the record; default ``"0"``, ``"1"``, ...).
        recorded, on_record: resume support (see :func:`~edgeprune.certify.core.certify_sequence`).
        force: when even the first plan fails, ship it anyway, marked ``"forced": true`` (the CLI then prints a
            large warning and exits non-zero). Without it, :class:`CertificationError` is raised.
        overwrite: replace an existing ``out_dir``.
        max_length: tokenizer truncation for certification (default: the profile's ``seq_len`` or 128).
        batch_size: certification batch size.
        parity_shapes: (batch, seq) pairs checked after export and fusion.
        int8_atol: if given, raise :class:`VerificationError` when INT8 logits differ from PyTorch by more.
        hook: called with each step name (``surgery``, ``export``, ``optimize``, ``quantize``, ``certify``,
            ``ort``, ``write``; ``recovery`` with ``recovery_data``); used by tests to interrupt an export.
        recovery_data: fit data for retraining-free recovery (:mod:`edgeprune.recovery.scale`: least-squares re-fit of the
            kept heads' and FFN neurons' scales, folded into the weights). Pass the *search* split, never the
            certify split. Each plan tested (every plan of the sequence) is fitted and folded into a copy of the unpruned model
            before surgery; parity checks compare against that folded model, while certification still pairs
            against the original model's predictions. ``None`` = no recovery.
        recovery_examples: examples of ``recovery_data`` used for the fit (an evenly strided subset).
        model_source: what ``edgeprune.json`` names as the model's source (default: the folder or hub id, or the
            object's ``name_or_path``).
        recover: the model to compile for each pruned plan of the sequence, ``recover(index, plan) -> (model, plan
            to prune it with or None when it is already pruned to the plan, recovery record)``; e.g. an
            :class:`edgeprune.recovery.chain.Recoverer` (scale, full refit or distillation). Overrides
            ``recovery_data``. Certification still pairs against the original model's predictions.

    Returns:
        A :class:`BundleResult`.

    Raises:
        CertificationError: no plan meets the bound and ``force`` is off.
        VerificationError: a self-check failed (parity, fusion, quantization).
        EdgepruneError: bad inputs (existing ``out_dir``, missing tokenizer...).
    """
    from edgeprune.task.modeling import load_model, load_plan
    from edgeprune.onnx.ort_format import to_ort_format

    t0 = time.time()
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not overwrite:
        raise EdgepruneError(f"{out_dir} already exists; pass --overwrite to replace it")
    if isinstance(model_dir_or_model, (str, Path)):
        model, loaded_tok = load_model(model_dir_or_model)
        tokenizer = tokenizer or loaded_tok
        model_source = str(model_dir_or_model)
    else:
        model = model_dir_or_model.eval()
        model_source = model_source or getattr(model_dir_or_model, "name_or_path", "<object>")
    if tokenizer is None:
        raise EdgepruneError("a tokenizer is needed for the bundle (pass tokenizer=...)")
    plans = [_as_plan(p, load_plan) for p in (frontier or [])] + [_as_plan(plan, load_plan)]
    prof = _load_profile(profile)
    quant = _quant_of(prof)
    seq_len = int(max_length or getattr(prof, "seq_len", None) or 128)
    step = hook or (lambda name: None)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        from edgeprune.onnx.compile import check_int8_tolerance, compile_plan
        from edgeprune.task.predict import onnx_predictions, torch_predictions

        base_preds = None
        if certify_data is not None:
            step("base-predictions")
            base_preds = torch_predictions(model, tokenizer, certify_data, max_length=seq_len, batch_size=batch_size)

        source_for = recover
        if source_for is None and recovery_data is not None:
            from edgeprune.recovery.chain import Recoverer

            source_for = Recoverer("scale", model, tokenizer, fit_data=recovery_data, fit_examples=recovery_examples,
                                   max_length=seq_len)

        def build(index: int, cand: HeadPlan):
            source, to_prune, recovery = model, cand, None
            if source_for is not None and not cand.is_full:
                step("recovery")
                source, to_prune, recovery = source_for(index, cand)
                if to_prune is None:  # already pruned (distilled): its layout must be the candidate's
                    from edgeprune.adapters import get_adapter

                    current = get_adapter(source).current_plan(source)
                    if current.kept != cand.kept or (cand.has_ffn and current.ffn_kept != cand.ffn_kept):
                        raise VerificationError(f"the recovered model for plan {index} has another layout than "
                                                "the plan")
            compiled = compile_plan(source, to_prune, quant, tmp_root / f"plan{index}", parity_shapes=parity_shapes,
                                    hook=hook)
            if to_prune is None:  # pruned during recovery, each step checked pruned == masked there
                compiled.checks["surgery_max_abs_diff"] = (recovery or {}).get("surgery_max_abs_diff")
            compiled.checks["recovery"] = recovery
            check_int8_tolerance(compiled, int8_atol)
            return compiled

        result, compiled = certify_sequence(
            plans, build,
            lambda c: onnx_predictions(c.onnx, tokenizer, certify_data, max_length=seq_len, batch_size=batch_size),
            base_preds, certify_data.labels if certify_data is not None else None,
            max_drop_pts=max_drop_pts, confidence=confidence, force=force,
            data_source=str(getattr(certify_data, "source", "<memory>")),
            names=names, describe=lambda c: {"recovery_applied": c.checks["recovery"] is not None},
            recorded=recorded, on_record=on_record, hook=step)
        index, cand, pruned, final, checks = (result.shipped_index, plans[result.shipped_index], compiled.model,
                                              compiled.onnx, compiled.checks)
        cert, forced, attempts = result.certification, result.forced, result.attempts
        recovery_info = checks.pop("recovery", None)
        step("ort")
        bundle = tmp_root / "bundle"
        bundle.mkdir()
        from edgeprune.onnx.export import onnx_files

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
        _canonical_tokenizer(tokenizer, seq_len).save_pretrained(str(bundle))
        (bundle / "config.json").write_text(json.dumps(_config_json(pruned, cand), indent=2, sort_keys=True) + "\n")
        from edgeprune.onnx.e2e import write_e2e  # string in, label out (model.e2e.onnx/.ort), or the reason it was skipped

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
            "ffn_blocks_removed": cand.ffn_num_removed,
            "ffn_blocks_total": sum(cand.ffn_num_blocks) if cand.has_ffn else 0,
            "profile": _profile_dict(prof),
            "quant": checks["quant"],
            "checks": checks,
            "certified": (cert.passed and not forced) if cert else None,
            "forced": forced,
            "certification": cert.to_dict() if cert else None,
            "attempts": attempts,
            "sequence": result.sequence,
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
                        attempts=attempts, checks=checks, recovery=recovery_info, sequence=result.sequence)


def _canonical_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """A copy of the tokenizer in a fixed state: a fast tokenizer's tokenizer.json records the truncation and padding
    of its last call, so the bundle would otherwise depend on what ran before it (a resumed build that reused its
    certification tests wrote a different file). Truncation at the bundle's length, no padding."""
    import copy

    tok = copy.deepcopy(tokenizer)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        backend.enable_truncation(max_length=max_length)
        backend.no_padding()
    return tok


def _max_diff_between(a: Path, b: Path, model: Any, shapes: Sequence[tuple[int, int]]) -> float:
    """Max |logit difference| between two ONNX/ORT files on the parity inputs."""
    import numpy as np

    from edgeprune.onnx.export import ort_session, random_feeds

    sa, sb = ort_session(a), ort_session(b)
    names = [i.name for i in sa.get_inputs()]
    worst = 0.0
    for batch, seq in shapes:
        feed = random_feeds(model.config, names, batch, seq)
        la = sa.run(["logits"], feed)[0]
        lb = sb.run(["logits"], feed)[0]
        worst = max(worst, float(np.max(np.abs(la.astype(np.float64) - lb))))
    return worst


def _input_names(model: Any) -> list[str]:
    from edgeprune.onnx.export import input_names_for

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
    from edgeprune.task.modeling import load_model

    mdl, tok = load_model(model)
    certify_data = None
    if data is not None:
        from edgeprune.task.data import load_dataset

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
    from edgeprune.onnx.e2e import summary_line

    lines.append("  " + summary_line(c.get("e2e")))
    cert = result.certification
    if cert is None:
        lines.append("  NOT CERTIFIED: no certify data given (--data)")
    else:
        lines.append(
            f"  certify split: n={cert.n}, accuracy {100 * cert.accuracy:.2f}% vs base {100 * cert.base_accuracy:.2f}%"
            f" (worse {cert.n_worse}, better {cert.n_better}); drop upper bound {100 * cert.drop_upper_bound:.2f} "
            f"pts at {cert.confidence:.0%}; limit {100 * cert.max_drop:.2f} pts -> {'PASS' if cert.passed else 'FAIL'}"
        )
        lines += sequence_lines(result.attempts, result.plan_index, (result.sequence or {}).get("stop_reason"))
    return lines


def sequence_lines(attempts: Sequence[dict[str, Any]], shipped: int, stop_reason: str | None) -> list[str]:
    """The certification sequence, one line per tested plan (used by the CLI and the build's console summary)."""
    lines = ["  certification sequence (fixed order, each test at the full confidence, stop at the first failure):"]
    for a in attempts:
        c = a.get("certification") or {}
        mark = "PASS" if c.get("passed") else "FAIL"
        lines.append(f"    {a.get('plan_index')}. {a.get('name', a.get('plan_index'))}: {a.get('heads_removed', 0)} "
                     f"heads and {a.get('ffn_blocks_removed', 0)} FFN blocks removed, worse {c.get('n_worse')} / "
                     f"better {c.get('n_better')}, bound {100 * c.get('drop_upper_bound', float('nan')):.2f} pts -> "
                     f"{mark}{'  <- shipped' if a.get('plan_index') == shipped else ''}"
                     f"{' (reused from the interrupted run)' if a.get('reused') else ''}")
    if stop_reason:
        lines.append(f"    stopped: {stop_reason}")
    return lines
