"""Building the per-layer latency lookup table (LUT) of a model at a device profile's settings.

This module *builds*: it cuts the model into sub-models, compiles them like the shipped file, and measures them with
the standalone device runner's own code. Everything about the table itself (the fits, assembling measurements into
the table, validating, reading, predicting) lives in :mod:`edgeprune.latency.schema`; the reading and predicting
names are re-exported here, so ``from edgeprune.latency.table import load_lut, predict`` keeps working.

Construction (DESIGN 6: layer latency is linear in kept heads and layers add up):

* ``rest``: the model with 0 encoder layers (embeddings + pooler/classifier), real vocabulary.
* for each layer ``i`` and ``k = 0..H``: the model truncated to layer ``i`` alone with ``k`` heads kept.
* each sub-model goes through the same chain as the shipped bundle (:func:`edgeprune.onnx.compile.compile_plan`):
  adapter surgery checked against masking -> ``export_onnx`` -> the profile's graph -> ``quantize_onnx`` with the
  profile's preset.
* FFN axis (``ffn=True``, the default): for each layer ``i`` and a few kept FFN widths ``w``
  (:func:`default_ffn_widths`: 0, 128, 256, then doubling up to the full width), the 1-layer model with every head
  kept and its FFN cut to ``w`` neurons. The full width is the heads axis' ``k = H`` model (not exported twice).
* :func:`export_lut_models` writes the sub-models, ``manifest.json`` and a copy of ``device_runner.py``;
  :func:`build_lut` then measures that folder on this host with
  :func:`edgeprune.latency.device_runner.measure_folder` (an alternating schedule per layer group, best of ``reps``
  runs per round) and assembles the measurements with :func:`edgeprune.latency.schema.assemble_lut`, exactly what
  ``load_lut`` does with a device's measurements file.

Speed trick (documented deviation): the per-layer sub-models carry a word-embedding table cut to
``min(vocab, max(1024, 2 * max_positions))`` rows. The embedding lookup is identical in ``T(layer i, k)`` and in
its reference ``T(0 layers)`` (which is cut the same way), so it cancels in the entry; exporting the full 30k-row
table 80 times was 90% of the LUT build time. ``rest`` and ``full`` keep the real table. Measured on MiniLM
sub-models: 1.86/1.67/0.85 ms with the real table vs 1.88/1.66/0.85 ms cut.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from edgeprune.errors import MeasureError, PlanError
from edgeprune.latency import device_runner as dr
from edgeprune.latency.schema import (
    assemble_lut,
    check_lut,
    ffn_cost,
    format_lut,
    has_ffn_axis,
    layer_costs,
    load_lut,
    predict,
    profile_lut,
    save_lut,
)
from edgeprune.profiles import DeviceProfile, load_profile

log = logging.getLogger(__name__)

__all__ = [
    # building: this module's own
    "build_lut",
    "compile_submodel",
    "default_ffn_widths",
    "export_lut_models",
    "quant_record",
    # reading and predicting: edgeprune.latency.schema's, re-exported for the callers that read through this module
    "check_lut",
    "ffn_cost",
    "format_lut",
    "has_ffn_axis",
    "layer_costs",
    "load_lut",
    "predict",
    "profile_lut",
    "save_lut",
]

EXPORT_FORMAT = "edgeprune-lut-export"
EXPORT_VERSION = 1
DEFAULT_ROUNDS = 15
DEFAULT_REPS = 5

#: LUT sub-models are compiled like the shipped file (edgeprune.onnx.compile), with FP32 parity at one small shape.
LUT_PARITY_SHAPES = ((1, 8),)


def quant_record(preset: Any) -> Optional[dict[str, Any]]:
    """How a latency table records its preset: ``None`` for FP32, else format/weight_type/per_channel/reduce_range."""
    if preset.format == "none":
        return None
    rec = preset.to_record()
    rec.pop("graph")
    return rec


def compile_submodel(model: Any, plan: Any, preset: Any, out_path: Union[str, Path], work: Path) -> Path:
    """Compile one latency sub-model through the shipped file's chain (:func:`edgeprune.onnx.compile.compile_plan`:
    surgery checked against masking, export, parity, graph, quantization) into ``out_path``.

    Args:
        model: the (unpruned, truncated) sub-model; not modified.
        plan: heads/FFN blocks to keep, or ``None`` for the model as it is.
        preset: :class:`~edgeprune.profiles.QuantPreset` (``format`` ``none`` = FP32).
        out_path: the final ``.onnx``.
        work: scratch folder (intermediates are deleted).

    Returns:
        ``out_path``.
    """
    from edgeprune.onnx.compile import compile_plan

    scratch = Path(tempfile.mkdtemp(prefix="sub-", dir=work))
    try:
        compile_plan(model, plan, preset, scratch, out_path=out_path, parity_shapes=LUT_PARITY_SHAPES)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Path(out_path)


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
    ffn: bool = True,
    ffn_widths: Optional[Sequence[int]] = None,
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
        ffn: also export the FFN axis (per layer, every head kept, a few kept FFN widths).
        ffn_widths: the widths to measure (same for every layer; 0 and the full width are always added); default
            :func:`default_ffn_widths` of each layer's width.
        log_fn: progress callback.

    Returns:
        Path of ``manifest.json``.

    Raises:
        PlanError: the model is already pruned, or a requested FFN width is outside 0..full width.
    """
    import torch

    from edgeprune.adapters import get_adapter
    from edgeprune.task.modeling import clone_model
    from edgeprune.plan import HeadPlan

    prof = load_profile(profile)
    try:
        preset = prof.quant.for_precision(precision)
    except ValueError as exc:
        raise MeasureError(str(exc)) from None
    quant = quant_record(preset)
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
    ffn_spec = _ffn_spec(adapter, model, ffn_widths) if ffn else None
    t0 = time.perf_counter()
    files: dict[str, Any] = {"layers": []}
    if ffn_spec is not None:
        files["ffn"] = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-lut-") as tmp, torch.no_grad():
        work = Path(tmp)
        rest = adapter.keep_layers_(clone_model(model), [])
        files["rest"] = compile_submodel(rest, None, preset, out / "rest.onnx", work).name
        if small and small < info["vocab_size"]:
            rest.resize_token_embeddings(small)
            files["ref"] = compile_submodel(rest, None, preset, out / "ref.onnx", work).name
        del rest
        for i, h in enumerate(layout.heads_per_layer):
            base = adapter.keep_layers_(clone_model(model), [i])
            if "ref" in files:
                base.resize_token_embeddings(small)
            names = []
            for k in range(h + 1):
                name = f"layer{i:02d}_k{k:02d}.onnx"
                compile_submodel(base, HeadPlan((h,), (tuple(range(k)),)), preset, out / name, work)
                names.append(name)
            files["layers"].append(names)
            n_ffn = 0
            if ffn_spec is not None:
                full_w = ffn_spec["sizes"][i]
                ffn_names: list[Optional[str]] = []
                for w in ffn_spec["widths"][i]:
                    if w == full_w:
                        ffn_names.append(None)  # = the k = H heads model above
                        continue
                    bs = math.gcd(full_w, w) if w else full_w
                    plan = HeadPlan.full((h,)).with_ffn(bs, [full_w // bs], [range(w // bs)])
                    name = f"layer{i:02d}_f{w:05d}.onnx"
                    compile_submodel(base, plan, preset, out / name, work)
                    ffn_names.append(name)
                    n_ffn += 1
                files["ffn"].append(ffn_names)
            say(f"exported layer {i}: {h + 1 + n_ffn} sub-models ({time.perf_counter() - t0:.1f} s)")
        if include_full:
            files["full"] = compile_submodel(model, None, preset, out / "full.onnx", work).name
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model": info,
        "settings": {
            "profile": prof.name,
            "threads": prof.threads,
            "threads_requested": prof.threads,
            "batch": prof.batch,
            "seq_len": prof.seq_len,
            "precision": "fp32" if quant is None else "int8",
            "quant": quant,
            "graph": preset.graph,
            "allow_spinning": False,
        },
        "profile": prof.summary(),
        "schedule": {"rounds": rounds, "reps": reps},
        "files": files,
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
    if ffn_spec is not None:
        manifest["ffn"] = ffn_spec
    (out / dr.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    shutil.copy2(dr.__file__, out / "device_runner.py")
    return out / dr.MANIFEST_NAME


def default_ffn_widths(width: int) -> list[int]:
    """FFN widths the LUT measures for a layer of ``width`` intermediate neurons.

    0 (FFN removed: its own step, ~1/3 of the FFN on MiniLM), 128 (the flat part below the knee), 256 (the knee
    measured on MiniLM), then doubling up to the full width: MiniLM (1536) gets 0, 128, 256, 512, 1024, 1536 and a
    BERT-base FFN (3072) 0, 128, 256, 512, 1024, 2048, 3072. Narrow FFNs (tests) get quarter and half width.
    """
    width = int(width)
    ws = {0, width} | {w for w in (128, 256, 512, 1024, 2048, 4096, 8192) if w < width}
    if len(ws) < 4:
        ws |= {w for w in (width // 4, width // 2) if 0 < w < width}
    return sorted(ws)


def _ffn_spec(adapter: Any, model: Any, widths: Optional[Sequence[int]]) -> dict[str, Any]:
    """Per layer the full FFN width and the kept widths the LUT measures (ascending, 0 and full included)."""
    sizes = [int(x) for x in adapter.ffn_sizes(model)]
    per_layer = []
    for i, full in enumerate(sizes):
        if widths is None:
            ws = default_ffn_widths(full)
        else:
            bad = [int(w) for w in widths if not 0 <= int(w) <= full]
            if bad:
                raise PlanError(f"layer {i}: FFN widths {bad} outside 0..{full}")
            ws = sorted({0, full} | {int(w) for w in widths})
        per_layer.append(ws)
    return {"sizes": sizes, "widths": per_layer}


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
    ffn: bool = True,
    ffn_widths: Optional[Sequence[int]] = None,
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
        ffn: also measure the FFN axis (the LUT's ``"ffn"`` section; ~+35% build time on MiniLM-L6).
        ffn_widths: FFN widths to measure (default :func:`default_ffn_widths`).

    Returns:
        The LUT dict (also written to ``out``).
    """
    from edgeprune.latency.measure import effective_threads

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
            ffn=ffn, ffn_widths=ffn_widths, log_fn=log_fn,
        )
        t_exp = time.perf_counter() - t0
        # The device's code path: the runner measures and writes measurements, the schema assembles them.
        lut = assemble_lut(dr.measure_folder(folder, threads=thr, table=table, log=log_fn))
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
