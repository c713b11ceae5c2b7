"""Per-layer latency lookup table (LUT) of a model at a device profile's settings, and the latency predictor.

Construction (DESIGN 6: layer latency is linear in kept heads and layers add up):

* ``rest``: the model with 0 encoder layers (embeddings + pooler/classifier), real vocabulary.
* for each layer ``i`` and ``k = 0..H``: the model truncated to layer ``i`` alone with ``k`` heads kept.
* each sub-model goes through the same chain as the shipped bundle: adapter surgery -> ``export_onnx`` ->
  ``optimize_onnx`` (ORT fusion, fused-heads check) -> ``quantize_onnx`` with the profile's preset.
* ``entry[i][k] = median over rounds of (T(layer i with k heads) - T(0 layers))``, both timed in the same round of
  an alternating schedule, so load drift on a shared machine cancels in the difference. A round's T is the best of
  ``reps`` runs: other processes only ever add time, and they add more to long runs than to short ones, which would
  break additivity (see :func:`edgeprune.latency.device_runner.alternate`).
* the real ``rest`` model and the unpruned ``full`` model run in every layer group too; ``calibration_factor`` =
  measured full / LUT sum for the full model (paired in time with the entries).
* a line ``a_i + b_i * k`` is fitted over k = 1..H per layer; ``k = 0`` stays raw (a 0-head layer has no attention
  block at all, so it sits below the line). The LUT keeps both ``raw_ms`` and ``fitted_ms``; ``ms`` is what the
  predictor uses (``fitted`` by default: it averages out per-entry noise).
* ``predict(lut, kept_counts) = rest_ms + sum_i ms[i][kept_i]`` (times an optional calibration factor measured on
  the unpruned full model).

FFN axis (optional ``"ffn"`` section; ``build_lut(..., ffn=True)``, the default):

* for each layer ``i`` and a few kept FFN widths ``w`` (:func:`edgeprune.latency.device_runner.default_ffn_widths`: 0, 128,
  256, then doubling up to the full width), the 1-layer model with every head kept and its FFN cut to ``w`` neurons
  (``adapter.prune_ffn_``) goes through the same chain and the same alternating group as the heads' sub-models,
  paired with the same reference. The full width is the heads axis' ``k = H`` model (not exported twice).
* ``ffn.layers[i].raw_ms[j]`` = the FFN's own cost at ``widths[j]`` (layer time minus the layer time without FFN);
  ``fitted_ms`` = ``a + b * max(w, knee)`` for ``w > 0`` and exactly 0 at ``w = 0`` (flat below a knee, linear
  above, as measured in benchmarks/results/ffn_block_size-2026-11-24.md; the knee is fitted among the measured
  widths).
* ``predict(lut, kept, ffn_widths=w) = rest + sum_i ms[i][kept_i] + sum_i (F_i(w_i) - F_i(full_i))``: heads and FFN
  terms add (benchmarks/results/ffn_additivity-2026-11-24.md: within 0.6% median). ``F_i`` interpolates ``ms``
  linearly between measured widths and is flat between 0 (exclusive) and the smallest measured nonzero width.

Speed trick (documented deviation): the per-layer sub-models carry a word-embedding table cut to
``min(vocab, max(1024, 2 * max_positions))`` rows. The embedding lookup is identical in ``T(layer i, k)`` and in
its reference ``T(0 layers)`` (which is cut the same way), so it cancels in the entry; exporting the full 30k-row
table 80 times was 90% of the LUT build time. ``rest`` and ``full`` keep the real table. Measured on MiniLM
sub-models: 1.86/1.67/0.85 ms with the real table vs 1.88/1.66/0.85 ms cut.

The LUT is a JSON document with its provenance (CPU, arch, ORT version, threads, batch, seq_len, precision, date,
where it was measured); see :func:`edgeprune.latency.device_runner.assemble_lut` for the exact layout.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from edgeprune.latency import device_runner as dr
from edgeprune.errors import MeasureError, PlanError
from edgeprune.profiles import DeviceProfile, load_profile

log = logging.getLogger(__name__)

__all__ = [
    "build_lut",
    "check_lut",
    "format_lut",
    "has_ffn_axis",
    "profile_lut",
    "compile_submodel",
    "quant_record",
    "export_lut_models",
    "ffn_cost",
    "layer_costs",
    "load_lut",
    "predict",
    "save_lut",
]

EXPORT_FORMAT = "edgeprune-lut-export"
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
            :func:`edgeprune.latency.device_runner.default_ffn_widths` of each layer's width.
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


def _ffn_spec(adapter: Any, model: Any, widths: Optional[Sequence[int]]) -> dict[str, Any]:
    """Per layer the full FFN width and the kept widths the LUT measures (ascending, 0 and full included)."""
    sizes = [int(x) for x in adapter.ffn_sizes(model)]
    per_layer = []
    for i, full in enumerate(sizes):
        if widths is None:
            ws = dr.default_ffn_widths(full)
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
        ffn_widths: FFN widths to measure (default :func:`edgeprune.latency.device_runner.default_ffn_widths`).

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
    from edgeprune.output.folder import atomic_write_text

    return atomic_write_text(path, json.dumps(lut, indent=2))  # never seen half written


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
    problem = _ffn_problem(lut)
    if problem:
        raise MeasureError(f"{p}: {problem}")
    return lut


def _ffn_problem(lut: dict[str, Any]) -> Optional[str]:
    """What is wrong with the LUT's ``"ffn"`` section (``None`` when it is absent or sound)."""
    ffn = lut.get("ffn")
    if ffn is None:
        return None
    layers = ffn.get("layers") if isinstance(ffn, dict) else None
    if not isinstance(layers, list) or len(layers) != len(lut["layers"]):
        n = len(layers) if isinstance(layers, list) else "no"
        return f"the FFN section has {n} layers, the heads section {len(lut['layers'])}"
    for i, layer in enumerate(layers):
        try:
            widths = [int(w) for w in layer["widths"]]
            ms, full = layer["ms"], int(layer["width"])
        except (KeyError, TypeError, ValueError) as exc:
            return f"FFN layer {i} is malformed ({exc!r})"
        if len(ms) != len(widths):
            return f"FFN layer {i} has {len(ms)} entries for {len(widths)} widths"
        if widths != sorted(set(widths)) or not widths or widths[0] != 0 or widths[-1] != full:
            return f"FFN layer {i}: widths must ascend from 0 to the full width {full}, got {widths}"
    return None


def has_ffn_axis(lut: dict[str, Any]) -> bool:
    """True when the LUT has an FFN axis (built with ``edgeprune lut --ffn``, the default since the FFN axis exists)."""
    return bool(lut.get("ffn")) and bool(lut["ffn"].get("layers"))


def ffn_cost(lut: dict[str, Any], layer: int, width: int) -> float:
    """Layer ``layer``'s FFN cost (ms) at ``width`` kept neurons, from the LUT's FFN axis (0 for a removed FFN).

    Linear interpolation between the measured widths; between 0 (exclusive) and the smallest measured nonzero width
    the cost is that width's (an FFN below the knee is flat: its fixed costs do not shrink with the width).

    Raises:
        PlanError: no FFN axis, no such layer, or ``width`` outside 0..full width.
    """
    if not has_ffn_axis(lut):
        raise PlanError(_NO_FFN)
    layers = lut["ffn"]["layers"]
    if not 0 <= layer < len(layers):
        raise PlanError(f"layer {layer}: the latency table's FFN axis covers layers 0..{len(layers) - 1}")
    row = layers[layer]
    widths = [int(w) for w in row["widths"]]
    ms = [float(x) for x in row["ms"]]
    w = int(width)
    if not 0 <= w <= widths[-1]:
        raise PlanError(f"layer {layer}: {width} kept FFN neurons, the latency table covers 0..{widths[-1]}")
    if w == 0:
        return ms[0]
    j = bisect.bisect_left(widths, w)  # widths[j-1] < w <= widths[j]
    if widths[j] == w or j == 1:
        return ms[j]
    lo, hi = widths[j - 1], widths[j]
    return ms[j - 1] + (ms[j] - ms[j - 1]) * (w - lo) / (hi - lo)


_NO_FFN = (
    "the latency table has no FFN axis (it was built before the FFN axis or with --no-ffn): rebuild it with "
    "`edgeprune lut --ffn` to predict plans that prune the FFN"
)


def layer_costs(lut: dict[str, Any]) -> tuple[float, list[list[float]]]:
    """``(rest_ms, per_layer)`` where ``per_layer[i][k]`` is layer i's latency with k kept heads (ms)."""
    return float(lut["rest_ms"]), [[float(x) for x in layer["ms"]] for layer in lut["layers"]]


def predict(
    lut: dict[str, Any],
    kept_counts: Any,
    *,
    ffn_widths: Optional[Sequence[int]] = None,
    calibrated: bool = False,
) -> float:
    """Predicted end-to-end latency (ms) of a plan: ``rest_ms + sum_i ms[i][kept_i]`` (+ the FFN terms).

    Args:
        lut: a LUT dict (:func:`load_lut` / :func:`build_lut`).
        kept_counts: kept heads per layer (a sequence of ints or a :class:`~edgeprune.plan.HeadPlan`; only its heads
            are read: pass ``ffn_widths=plan.ffn_kept_widths`` for its FFN part).
        ffn_widths: kept FFN intermediate neurons per layer (any integer 0..full width; 0 = FFN removed), or
            ``None`` for unchanged (full-width) FFNs. Adds ``sum_i F_i(w_i) - F_i(full_i)`` (see :func:`ffn_cost`).
        calibrated: multiply by the LUT's ``calibration_factor`` (measured full model / predicted full model), which
            corrects a constant bias of the sum (DESIGN 6: FP32 sums over-predicted by ~8-10%).

    Returns:
        Milliseconds.

    Raises:
        PlanError: the plan has another number of layers or more heads than a layer; ``ffn_widths`` has another
            number of layers or a width outside 0..full; ``ffn_widths`` given but the LUT has no FFN axis.
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
    if ffn_widths is not None:
        widths = list(ffn_widths)
        if not has_ffn_axis(lut):
            raise PlanError(_NO_FFN)
        if len(widths) != len(per_layer):
            raise PlanError(f"FFN widths cover {len(widths)} layers but the latency table has {len(per_layer)}")
        for i, w in enumerate(widths):
            full = int(lut["ffn"]["layers"][i]["width"])
            if int(w) != full:
                total += ffn_cost(lut, i, int(w)) - ffn_cost(lut, i, full)
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
    if has_ffn_axis(lut):
        for layer in lut["ffn"]["layers"]:
            f = layer["fit"]
            pts = ", ".join(f"{w}: {x:.3f}" for w, x in zip(layer["widths"], layer["ms"]))
            lines.append(
                f"layer {layer['index']:>2} FFN ({layer['width']} neurons) ms by kept width {{{pts}}}; fit "
                f"{f['intercept_ms']:.3f} + {1000 * f['slope_ms_per_neuron']:.3f}us*max(w, {f['knee']}) "
                f"(r2 {f['r2']:.2f})"
            )
    else:
        lines.append("no FFN axis (rebuild with `edgeprune lut --ffn` to predict FFN pruning)")
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
    lut: dict[str, Any],
    heads_per_layer: Sequence[int],
    profile: Optional[Union[str, DeviceProfile]] = None,
    *,
    ffn_sizes: Optional[Sequence[int]] = None,
) -> list[str]:
    """Check that a LUT fits a model (and, optionally, a profile's settings) before the search relies on it.

    Args:
        lut: the table.
        heads_per_layer: the model's unpruned heads per layer.
        profile: if given, the LUT's batch, seq_len and precision are compared with it.
        ffn_sizes: the model's unpruned FFN widths per layer (``adapter.ffn_sizes(model)``); if given and the LUT
            has an FFN axis, its full widths must match.

    Returns:
        Warnings (settings that differ from the profile; the table is still usable but describes other conditions).

    Raises:
        MeasureError: the table was measured for another head layout or FFN widths, or its FFN section is malformed.
    """
    have = list(lut["model"]["heads_per_layer"])
    if have != list(heads_per_layer):
        raise MeasureError(f"the latency table is for heads per layer {have}, the model has {list(heads_per_layer)}")
    problem = _ffn_problem(lut)
    if problem:
        raise MeasureError(f"latency table: {problem}")
    if ffn_sizes is not None and has_ffn_axis(lut):
        have_ffn = [int(layer["width"]) for layer in lut["ffn"]["layers"]]
        if have_ffn != [int(x) for x in ffn_sizes]:
            raise MeasureError(f"the latency table is for FFN widths {have_ffn}, the model has {list(ffn_sizes)}")
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
