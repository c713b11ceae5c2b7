"""Per-layer latency lookup table (LUT) of a model at a device profile's settings, and the latency predictor.

Construction (DESIGN 6: layer latency is linear in kept heads and layers add up):

* ``rest``: the model with 0 encoder layers (embeddings + pooler/classifier), real vocabulary.
* for each layer ``i`` and ``k = 0..H``: the model truncated to layer ``i`` alone with ``k`` heads kept.
* each sub-model goes through the same chain as the shipped bundle: adapter surgery -> ``export_onnx`` ->
  ``optimize_onnx`` (ORT fusion, fused-heads check) -> ``quantize_onnx`` with the profile's preset.
* ``entry[i][k] = median over rounds of (T(layer i with k heads) - T(0 layers))``, both timed in the same round of
  an alternating schedule, so load drift on a shared machine cancels in the difference. A round's T is the best of
  ``reps`` runs: other processes only ever add time, and they add more to long runs than to short ones, which would
  break additivity (see :func:`edgeprune.device_runner.alternate`).
* the real ``rest`` model and the unpruned ``full`` model run in every layer group too; ``calibration_factor`` =
  measured full / LUT sum for the full model (paired in time with the entries).
* a line ``a_i + b_i * k`` is fitted over k = 1..H per layer; ``k = 0`` stays raw (a 0-head layer has no attention
  block at all, so it sits below the line). The LUT keeps both ``raw_ms`` and ``fitted_ms``; ``ms`` is what the
  predictor uses (``fitted`` by default: it averages out per-entry noise).
* ``predict(lut, kept_counts) = rest_ms + sum_i ms[i][kept_i]`` (times an optional calibration factor measured on
  the unpruned full model).

Speed trick (documented deviation): the per-layer sub-models carry a word-embedding table cut to
``min(vocab, max(1024, 2 * max_positions))`` rows. The embedding lookup is identical in ``T(layer i, k)`` and in
its reference ``T(0 layers)`` (which is cut the same way), so it cancels in the entry; exporting the full 30k-row
table 80 times was 90% of the LUT build time. ``rest`` and ``full`` keep the real table. Measured on MiniLM
sub-models: 1.86/1.67/0.85 ms with the real table vs 1.88/1.66/0.85 ms cut.

The LUT is a JSON document with its provenance (CPU, arch, ORT version, threads, batch, seq_len, precision, date,
where it was measured); see :func:`edgeprune.device_runner.assemble_lut` for the exact layout.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from . import device_runner as dr
from .errors import MeasureError, PlanError
from .profiles import DeviceProfile, QuantPreset, load_profile

log = logging.getLogger(__name__)

__all__ = [
    "build_lut",
    "check_lut",
    "format_lut",
    "profile_lut",
    "export_for_latency",
    "export_lut_models",
    "layer_costs",
    "load_lut",
    "predict",
    "save_lut",
]

EXPORT_FORMAT = "edgeprune-lut-export"
DEFAULT_ROUNDS = 15
DEFAULT_REPS = 5

# Fallback preset when INT8 is asked for with a profile that ships FP32 (format "none").
_DEFAULT_INT8 = {"format": "dynamic", "weight_type": "s8", "per_channel": True, "reduce_range": False}


def _quant_kwargs(profile: DeviceProfile, precision: Optional[str]) -> Optional[dict[str, Any]]:
    """Quantization kwargs for ``precision`` (``None`` = the profile's), or ``None`` for FP32."""
    precision = (precision or profile.precision).lower()
    if precision == "fp32":
        return None
    if precision != "int8":
        raise MeasureError(f"precision must be 'int8' or 'fp32', got {precision!r}")
    return profile.quant.kwargs() if profile.quant.format != "none" else dict(_DEFAULT_INT8)


def export_for_latency(
    model: Any,
    out_path: Union[str, Path],
    *,
    quant: Optional[dict[str, Any]],
    expected_heads: Optional[Sequence[int]] = None,
    workdir: Optional[Path] = None,
) -> Path:
    """Export a (pruned, fusable) model through the bundle's chain: export -> optimize -> (quantize).

    Args:
        model: the torch model (already pruned/truncated; made fusable here).
        out_path: the final ``.onnx``.
        quant: kwargs for :func:`edgeprune.quantize.quantize_onnx`, or ``None`` for FP32.
        expected_heads: kept heads per layer for the fused-Attention check.
        workdir: where intermediate files go (default: next to ``out_path``).

    Returns:
        ``out_path``.
    """
    from .adapters import get_adapter
    from .export import export_onnx, optimize_onnx

    out_path = Path(out_path)
    work = Path(workdir or out_path.parent)
    stem = out_path.stem
    get_adapter(model).make_fusable_(model)
    raw = export_onnx(model, work / f"{stem}.raw.onnx")
    opt_target = out_path if quant is None else work / f"{stem}.opt.onnx"
    optimize_onnx(raw, opt_target, expected_heads=expected_heads)
    _remove_onnx(raw)
    if quant is not None:
        from .quantize import quantize_onnx

        quantize_onnx(opt_target, out_path, **quant)
        _remove_onnx(opt_target)
    return out_path


def _remove_onnx(p: Path) -> None:
    for f in (p, p.with_name(p.name + ".data"), p.with_suffix(".data")):
        if f.exists():
            f.unlink()


def _model_info(model: Any, layout) -> dict[str, Any]:
    cfg = model.config
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    max_pos = int(getattr(cfg, "max_position_embeddings", 512) or 512)
    return {
        "name": str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "name_or_path", "") or ""),
        "model_type": getattr(cfg, "model_type", None),
        "heads_per_layer": list(layout.heads_per_layer),
        "head_size": layout.head_size,
        "hidden_size": layout.hidden_size,
        "vocab_size": vocab,
        "layer_vocab_size": min(vocab, max(1024, 2 * max_pos)) if vocab else 0,
    }


def export_lut_models(
    model: Any,
    profile: Union[str, DeviceProfile],
    out_dir: Union[str, Path],
    *,
    precision: Optional[str] = None,
    include_full: bool = True,
    rounds: int = DEFAULT_ROUNDS,
    reps: int = DEFAULT_REPS,
    log_fn: Optional[Callable[[str], None]] = None,
) -> Path:
    """Write the LUT sub-models, ``manifest.json`` and a copy of ``device_runner.py`` into ``out_dir``.

    Copy the folder to the device and run ``python device_runner.py DIR --out lut.json`` there (needs only
    onnxruntime + numpy).

    Args:
        model: an unpruned sequence-classification model (not modified: sub-models are built from copies).
        profile: name, path or loaded profile (threads, batch, seq_len, quant preset).
        out_dir: destination folder (created).
        precision: ``int8`` / ``fp32``; default: the profile's preset.
        include_full: also export the unpruned full model (gives the LUT's calibration factor).
        rounds, reps: measuring schedule recorded in the manifest.
        log_fn: progress callback.

    Returns:
        Path of ``manifest.json``.
    """
    import torch

    from .adapters import get_adapter
    from .modeling import clone_model
    from .plan import HeadPlan

    prof = load_profile(profile)
    quant = _quant_kwargs(prof, precision)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log_fn or (lambda s: None)
    adapter = get_adapter(model)
    layout = adapter.layout(model)
    current = adapter.current_plan(model)
    if not current.is_full:
        raise PlanError("build the latency table from the unpruned model (this one already has heads removed)")
    info = _model_info(model, layout)
    small = info["layer_vocab_size"]
    t0 = time.perf_counter()
    files: dict[str, Any] = {"layers": []}
    with tempfile.TemporaryDirectory(prefix="edgeprune-lut-") as tmp, torch.no_grad():
        work = Path(tmp)
        rest = adapter.keep_layers_(clone_model(model), [])
        files["rest"] = export_for_latency(rest, out / "rest.onnx", quant=quant, expected_heads=[], workdir=work).name
        if small and small < info["vocab_size"]:
            rest.resize_token_embeddings(small)
            files["ref"] = export_for_latency(rest, out / "ref.onnx", quant=quant, expected_heads=[], workdir=work).name
        del rest
        for i, h in enumerate(layout.heads_per_layer):
            base = adapter.keep_layers_(clone_model(model), [i])
            if "ref" in files:
                base.resize_token_embeddings(small)
            names = []
            for k in range(h + 1):
                sub = clone_model(base)
                adapter.prune_heads_(sub, HeadPlan((h,), (tuple(range(k)),)))
                name = f"layer{i:02d}_k{k:02d}.onnx"
                export_for_latency(sub, out / name, quant=quant, expected_heads=[k], workdir=work)
                names.append(name)
            files["layers"].append(names)
            say(f"exported layer {i}: {h + 1} sub-models ({time.perf_counter() - t0:.1f} s)")
        if include_full:
            full = clone_model(model)
            files["full"] = export_for_latency(
                full, out / "full.onnx", quant=quant, expected_heads=list(layout.heads_per_layer), workdir=work
            ).name
    manifest = {
        "format": EXPORT_FORMAT,
        "version": dr.LUT_VERSION,
        "model": info,
        "settings": {
            "profile": prof.name,
            "threads": prof.threads,
            "threads_requested": prof.threads,
            "batch": prof.batch,
            "seq_len": prof.seq_len,
            "precision": "fp32" if quant is None else "int8",
            "quant": quant,
            "allow_spinning": False,
        },
        "profile": _profile_dict(prof),
        "schedule": {"rounds": rounds, "reps": reps},
        "files": files,
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / dr.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    shutil.copy2(dr.__file__, out / "device_runner.py")
    return out / dr.MANIFEST_NAME


def _profile_dict(profile: DeviceProfile) -> dict[str, Any]:
    from .measure import _profile_dict as pd

    return pd(profile)


def build_lut(
    model: Any,
    profile: Union[str, DeviceProfile],
    *,
    out: Optional[Union[str, Path]] = None,
    precision: Optional[str] = None,
    threads: Optional[int] = None,
    rounds: int = DEFAULT_ROUNDS,
    reps: int = DEFAULT_REPS,
    table: str = "fitted",
    include_full: bool = True,
    keep_dir: Optional[Union[str, Path]] = None,
    log_fn: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Export the sub-models and measure them on this host: the LUT at the profile's settings.

    Args:
        model: unpruned sequence-classification model.
        profile: name, path or loaded profile.
        out: if given, the LUT JSON is written there.
        precision: ``int8`` / ``fp32``; default: the profile's preset.
        threads: override the profile's threads (clipped to this host's cores anyway).
        rounds, reps: alternating schedule (per-round medians of ``reps`` runs; entries are medians over rounds).
        table: ``fitted`` (default) or ``raw`` entries for the predictor.
        include_full: measure the full model too (calibration factor and a sanity check).
        keep_dir: keep the exported sub-models there instead of a temporary folder.
        log_fn: progress callback.

    Returns:
        The LUT dict (also written to ``out``).
    """
    from .measure import effective_threads

    prof = load_profile(profile)
    thr, note = effective_threads(prof, threads)
    t0 = time.perf_counter()
    tmp = None
    if keep_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgeprune-lutm-")
        folder = Path(tmp.name)
    else:
        folder = Path(keep_dir)
    try:
        export_lut_models(
            model, prof, folder, precision=precision, include_full=include_full, rounds=rounds, reps=reps,
            log_fn=log_fn,
        )
        t_exp = time.perf_counter() - t0
        lut = dr.measure_folder(folder, threads=thr, table=table, log=log_fn)
    finally:
        if tmp is not None:
            tmp.cleanup()
    lut["settings"]["threads_requested"] = prof.threads
    if note:
        lut["settings"]["threads_note"] = note
    lut["method"]["export_seconds"] = round(t_exp, 2)
    lut["method"]["total_seconds"] = round(time.perf_counter() - t0, 2)
    if out is not None:
        save_lut(lut, out)
    return lut


# ---------------------------------------------------------------------------------------------------------------------
# Reading and using a LUT (pure Python: the search imports this without torch or onnxruntime)


def save_lut(lut: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write a LUT as indented JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(lut, indent=2))
    return p


def load_lut(path: Union[str, Path]) -> dict[str, Any]:
    """Read and check a LUT JSON file.

    Raises:
        MeasureError: missing file, not JSON, wrong format/version or inconsistent layer entries.
    """
    p = Path(path)
    try:
        lut = json.loads(p.read_text())
    except FileNotFoundError:
        raise MeasureError(f"latency table not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise MeasureError(f"{p}: not a JSON latency table: {exc}") from None
    if lut.get("format") != dr.LUT_FORMAT or lut.get("version") != dr.LUT_VERSION:
        raise MeasureError(
            f"{p}: not an edgeprune latency table v{dr.LUT_VERSION} (format={lut.get('format')!r}, "
            f"version={lut.get('version')!r})"
        )
    for key in ("rest_ms", "layers", "provenance", "settings", "model"):
        if key not in lut:
            raise MeasureError(f"{p}: latency table lacks '{key}'")
    for layer in lut["layers"]:
        if len(layer["ms"]) != layer["heads"] + 1:
            raise MeasureError(f"{p}: layer {layer['index']} has {len(layer['ms'])} entries for {layer['heads']} heads")
    return lut


def layer_costs(lut: dict[str, Any]) -> tuple[float, list[list[float]]]:
    """``(rest_ms, per_layer)`` where ``per_layer[i][k]`` is layer i's latency with k kept heads (ms)."""
    return float(lut["rest_ms"]), [[float(x) for x in layer["ms"]] for layer in lut["layers"]]


def predict(lut: dict[str, Any], kept_counts: Any, *, calibrated: bool = False) -> float:
    """Predicted end-to-end latency (ms) of a plan: ``rest_ms + sum_i ms[i][kept_i]``.

    Args:
        lut: a LUT dict (:func:`load_lut` / :func:`build_lut`).
        kept_counts: kept heads per layer (a sequence of ints or a :class:`~edgeprune.plan.HeadPlan`).
        calibrated: multiply by the LUT's ``calibration_factor`` (measured full model / predicted full model), which
            corrects a constant bias of the sum (DESIGN 6: FP32 sums over-predicted by ~8-10%).

    Returns:
        Milliseconds.

    Raises:
        PlanError: the plan has another number of layers or more heads than a layer.
    """
    counts = list(getattr(kept_counts, "kept_counts", kept_counts))
    rest, per_layer = layer_costs(lut)
    if len(counts) != len(per_layer):
        raise PlanError(f"plan has {len(counts)} layers but the latency table has {len(per_layer)}")
    total = rest
    for i, (k, row) in enumerate(zip(counts, per_layer)):
        if not 0 <= int(k) < len(row):
            raise PlanError(f"layer {i}: {k} kept heads, the latency table covers 0..{len(row) - 1}")
        total += row[int(k)]
    if calibrated:
        total *= float(lut.get("calibration_factor") or 1.0)
    return total


def format_lut(lut: dict[str, Any]) -> str:
    """A short human summary of a LUT: settings, rest, per-layer fit, calibration and where it was measured."""
    s = lut["settings"]
    lines = [
        f"latency table: {lut['model'].get('name') or lut['model'].get('model_type')} "
        f"{len(lut['layers'])} layers, profile {s['profile']}, {s['precision']}, threads {s['threads']}, "
        f"batch {s['batch']}, seq_len {s['seq_len']}",
        f"rest (embeddings + classifier): {lut['rest_ms']:.3f} ms",
    ]
    for layer in lut["layers"]:
        f = layer["fit"]
        lines.append(
            f"layer {layer['index']:>2}: {layer['ms'][-1]:.3f} ms with {layer['heads']} heads, "
            f"{layer['ms'][0]:.3f} ms with 0; fit {f['intercept_ms']:.3f} + {f['slope_ms_per_head']:.3f}*k "
            f"(r2 {f['r2']:.2f})"
        )
    if "full_model_ms" in lut:
        lines.append(
            f"full model: measured {lut['full_model_ms']:.3f} ms, LUT sum {lut['full_model_predicted_ms']:.3f} ms "
            f"(calibration factor {lut['calibration_factor']:.3f})"
        )
    if s.get("threads_note"):
        lines.append(f"note: {s['threads_note']}")
    lines.append(lut["provenance"]["measured_on"])
    return "\n".join(lines)


def check_lut(
    lut: dict[str, Any], heads_per_layer: Sequence[int], profile: Optional[Union[str, DeviceProfile]] = None
) -> list[str]:
    """Check that a LUT fits a model (and, optionally, a profile's settings) before the search relies on it.

    Args:
        lut: the table.
        heads_per_layer: the model's unpruned heads per layer.
        profile: if given, the LUT's batch, seq_len and precision are compared with it.

    Returns:
        Warnings (settings that differ from the profile; the table is still usable but describes other conditions).

    Raises:
        MeasureError: the table was measured for another head layout.
    """
    have = list(lut["model"]["heads_per_layer"])
    if have != list(heads_per_layer):
        raise MeasureError(f"the latency table is for heads per layer {have}, the model has {list(heads_per_layer)}")
    warnings: list[str] = []
    if profile is not None:
        prof = load_profile(profile)
        s = lut["settings"]
        for key, want in (("batch", prof.batch), ("seq_len", prof.seq_len), ("precision", prof.precision)):
            if s.get(key) != want:
                warnings.append(f"latency table {key} is {s.get(key)!r} but profile {prof.name} uses {want!r}")
    return warnings


def profile_lut(profile: Union[str, DeviceProfile]) -> Optional[dict[str, Any]]:
    """The device-measured LUT a profile points to (``latency_table = "..."``), loaded, or ``None``."""
    path = load_profile(profile).latency_table_path()
    return load_lut(path) if path is not None else None
