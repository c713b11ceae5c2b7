"""The latency table's schema: the one place that fits, assembles, validates, reads and predicts a LUT.

Two documents exist:

* **measurements** (``format = "edgeprune-lut-measurements"``, written by the standalone
  :mod:`edgeprune.latency.device_runner` on the device, or by :func:`edgeprune.latency.table.build_lut` through the
  same runner on this host): the export manifest as it was read, the threads used, the host description, the date,
  the measuring method and, per layer group, the raw per-round values of every sub-model file of that group
  (``groups[i]["rounds"][file_name]``). No fits, no differences: only what was timed.
* **the LUT** (``format = "edgeprune-lut"``): what the search and the predictor read. :func:`assemble_lut` builds it
  from measurements; :func:`load_lut` reads either document (a measurements file is assembled on read, with the same
  code), so ``python device_runner.py DIR --out lut.json`` followed by ``--latency-table lut.json`` needs no extra
  step on the workstation.

Assembly (DESIGN 6: layer latency is linear in kept heads and layers add up):

* ``layers[i].raw_ms[k]`` = median over rounds of ``T(layer i with k heads) - T(0 layers)``, both from the same
  round of layer i's group (paired: load drift cancels); ``spread_ms`` = p90 - p10 of those differences.
* a line ``a_i + b_i * k`` is fitted over k = 1..H (:func:`fit_linear`); ``k = 0`` stays raw (a 0-head layer has no
  attention block, so it sits below the line). ``fitted_ms``, and ``ms`` = what :func:`predict` uses (``fitted`` by
  default, ``raw`` on request).
* ``rest_ms`` = median of the real 0-layer model's rounds over every group; ``calibration_factor`` = measured full
  model / LUT sum for the full model, when the full model was measured.
* optional ``"ffn"`` section (the manifest has an FFN axis): per layer, ``layer_raw_ms[j]`` = T(layer, all heads,
  ``widths[j]`` neurons) - T(0 layers), ``raw_ms`` = that minus its value at width 0 (the FFN's own cost),
  ``fitted_ms`` from :func:`fit_hinge` (flat below a knee, linear above, exactly 0 at width 0).
* ``provenance``: the measuring host (CPU, arch, cores, ORT/numpy/Python versions, load), the date of the
  measurement, ``where`` (``device`` / ``emulated`` / ``this host``) and the ``measured_on`` sentence.

Prediction: ``predict(lut, kept, ffn_widths=w) = rest + sum_i ms[i][kept_i] + sum_i (F_i(w_i) - F_i(full_i))``
(heads and FFN terms add, benchmarks/results/ffn_additivity-2026-11-24.md), times the calibration factor if asked.

Pure Python: the search imports this without torch or onnxruntime.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from edgeprune.errors import MeasureError, PlanError
from edgeprune.latency.device_runner import (
    MEASUREMENTS_FORMAT,
    MEASUREMENTS_VERSION,
    describe_where,
    median,
    percentile,
)
from edgeprune.profiles import DeviceProfile, load_profile

__all__ = [
    "LUT_FORMAT",
    "LUT_VERSION",
    "MEASUREMENTS_FORMAT",
    "MEASUREMENTS_VERSION",
    "assemble_lut",
    "check_lut",
    "ffn_cost",
    "ffn_layer_entry",
    "fit_hinge",
    "fit_linear",
    "format_lut",
    "has_ffn_axis",
    "hinge_value",
    "layer_costs",
    "load_lut",
    "lut_problem",
    "measurements_problem",
    "predict",
    "profile_lut",
    "save_lut",
]

LUT_FORMAT = "edgeprune-lut"
LUT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------------
# Fits


def fit_linear(ks: Sequence[int], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line y = a + b*k (DESIGN 6: a layer's latency is linear in its kept heads).

    Args:
        ks: abscissae (kept heads).
        ys: values (ms).

    Returns:
        ``intercept_ms``, ``slope_ms_per_head``, ``r2`` (NaNs when there are no points).
    """
    n = len(ks)
    if n == 0:
        return {"intercept_ms": float("nan"), "slope_ms_per_head": float("nan"), "r2": float("nan")}
    mk = sum(ks) / n
    my = sum(ys) / n
    sxx = sum((k - mk) ** 2 for k in ks)
    sxy = sum((k - mk) * (y - my) for k, y in zip(ks, ys))
    b = sxy / sxx if sxx > 0 else 0.0
    a = my - b * mk
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * k)) ** 2 for k, y in zip(ks, ys))
    return {"intercept_ms": a, "slope_ms_per_head": b, "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def fit_hinge(widths: Sequence[int], ys: Sequence[float]) -> dict[str, Any]:
    """Least-squares "flat below a knee, linear above" fit of an FFN's cost over its nonzero kept widths.

    ``f(w) = a + b * max(w, knee)`` for ``w > 0`` (``f(0)`` is measured, not fitted: a layer without an FFN block
    has no matrix products at all). Measured on MiniLM INT8 (benchmarks/results/ffn_block_size-2026-11-24.md): the
    FFN is linear from ~256 kept neurons up and flat below (fixed costs: the input's dynamic quantization,
    SkipLayerNorm, op overheads). The knee differs per device and kernel, so it is chosen here among the measured
    widths (the one with the smallest squared error; the smallest such width on ties, i.e. the plain line when the
    data show no flat part).

    Args:
        widths: nonzero kept widths (neurons), ascending.
        ys: FFN cost at each width (ms).

    Returns:
        ``knee``, ``intercept_ms`` (a), ``slope_ms_per_neuron`` (b), ``r2`` over the given points.
    """
    pts = [(int(w), float(y)) for w, y in zip(widths, ys) if int(w) > 0]
    if not pts:
        return {"knee": 0, "intercept_ms": float("nan"), "slope_ms_per_neuron": float("nan"), "r2": float("nan")}
    my = sum(y for _, y in pts) / len(pts)
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    best: Optional[dict[str, Any]] = None
    for knee in sorted({w for w, _ in pts}):
        xs = [max(w, knee) for w, _ in pts]
        if len(set(xs)) < 2 and len(pts) > 1:
            continue  # every point on the flat part: no slope to fit
        line = fit_linear(xs, [y for _, y in pts])
        a, b = line["intercept_ms"], line["slope_ms_per_head"]
        sse = sum((y - (a + b * x)) ** 2 for x, (_, y) in zip(xs, pts))
        # A knee must beat the previous one clearly (1e-9 ms^2) to be taken: equal fits keep the simpler model.
        if best is None or sse < best["sse"] - 1e-12:
            best = {"knee": knee, "intercept_ms": a, "slope_ms_per_neuron": b, "sse": sse}
    assert best is not None
    sse = best.pop("sse")
    best["r2"] = 1 - sse / ss_tot if ss_tot > 0 else 1.0
    return best


def hinge_value(fit: dict[str, Any], width: int) -> float:
    """The fitted FFN cost at ``width`` (0 for a removed FFN)."""
    if width <= 0:
        return 0.0
    return fit["intercept_ms"] + fit["slope_ms_per_neuron"] * max(int(width), int(fit["knee"]))


# ---------------------------------------------------------------------------------------------------------------------
# Assembly: measurements -> LUT


def measurements_problem(doc: Any) -> Optional[str]:
    """What keeps a measurements document from being assembled (``None`` when it is sound).

    Checked: format and version, the manifest's model and files, one group per layer, and in each group every
    sub-model the assembly pairs (the in-group reference, the rest model, the full model if exported, the layer's
    k = 0..H models and its FFN-width models) with the same number of numeric rounds.
    """
    if not isinstance(doc, dict) or doc.get("format") != MEASUREMENTS_FORMAT:
        return f"not an edgeprune measurements file (format={doc.get('format') if isinstance(doc, dict) else None!r})"
    if doc.get("version") != MEASUREMENTS_VERSION:
        return f"measurements version {doc.get('version')!r}, this edgeprune reads v{MEASUREMENTS_VERSION}"
    for key in ("manifest", "groups", "host", "method"):
        if key not in doc:
            return f"the measurements lack '{key}'"
    manifest = doc["manifest"]
    try:
        heads = [int(h) for h in manifest["model"]["heads_per_layer"]]
        files = manifest["files"]
        rest = files["rest"]
        layer_files = [list(names) for names in files["layers"]]
        int(manifest["settings"]["threads"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"the measurements' manifest is malformed ({exc!r})"
    if len(layer_files) != len(heads):
        return f"the manifest lists head sub-models for {len(layer_files)} layers, the model has {len(heads)}"
    groups = doc["groups"]
    if not isinstance(groups, list) or len(groups) != len(heads):
        n = len(groups) if isinstance(groups, list) else "no"
        return f"{n} layer groups measured for {len(heads)} layers"
    ffn_files = (files.get("ffn") or []) if manifest.get("ffn") else []
    for i, (h, group) in enumerate(zip(heads, groups)):
        rounds = group.get("rounds") if isinstance(group, dict) else None
        if not isinstance(rounds, dict):
            return f"layer group {i} has no 'rounds'"
        needed = [files.get("ref") or rest, rest] + ([files["full"]] if files.get("full") else [])
        if len(layer_files[i]) != h + 1:
            return f"layer {i}: the manifest lists {len(layer_files[i])} head sub-models for {h} heads"
        needed += list(layer_files[i]) + [n for n in (ffn_files[i] if i < len(ffn_files) else []) if n]
        lengths = set()
        for name in needed:
            values = rounds.get(name)
            if not isinstance(values, list) or not values:
                return f"layer group {i}: no timings for {name}"
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
                return f"layer group {i}: timings of {name} are not all numbers"
            lengths.add(len(values))
        if len(lengths) > 1:
            return f"layer group {i}: sub-models have different numbers of rounds {sorted(lengths)} (pairing needs equal)"
    return None


def assemble_lut(measurements: dict[str, Any]) -> dict[str, Any]:
    """Turn a measurements document (the device runner's output) into the LUT.

    The latency of layer ``i`` with ``k`` heads is the median over rounds of ``T(1-layer model, k heads) - T(0-layer
    model)`` taken *within the same round* of layer i's group (a paired difference: slow load drift cancels). For
    each layer a line is fitted over k = 1..H; k = 0 is kept raw because a 0-head layer drops the whole attention
    block (Q/K/V, softmax and the output projection), so it sits below the line. See the module docstring for the
    LUT's fields.

    Args:
        measurements: written by :func:`edgeprune.latency.device_runner.measure_folder`.

    Returns:
        The LUT dict.

    Raises:
        MeasureError: the document is not sound measurements (:func:`measurements_problem`).
    """
    problem = measurements_problem(measurements)
    if problem:
        raise MeasureError(problem)
    manifest = measurements["manifest"]
    settings = dict(manifest["settings"])
    used = int(measurements.get("threads") or settings["threads"])
    if used != int(settings["threads"]):
        settings["threads_note"] = f"manifest asked for {settings['threads']} threads; {used} were used"
        settings["threads"] = used
    files = manifest["files"]
    ref_name = files.get("ref") or files["rest"]
    ffn_files = (files.get("ffn") or []) if manifest.get("ffn") else []
    rest_rounds: list[float] = []
    full_rounds: list[float] = []
    layer_rest_rounds: dict[int, list[float]] = {}
    layer_rounds: dict[tuple[int, int], list[float]] = {}
    ffn_rounds: dict[tuple[int, int], list[float]] = {}
    for i, (h, group) in enumerate(zip(manifest["model"]["heads_per_layer"], measurements["groups"])):
        rounds = group["rounds"]
        layer_rest_rounds[i] = rounds[ref_name]
        # The real rest model and the full model run in every group: their medians cover the whole measuring period.
        rest_rounds += rounds[files["rest"]]
        if files.get("full"):
            full_rounds += rounds[files["full"]]
        for k in range(h + 1):
            layer_rounds[(i, k)] = rounds[files["layers"][i][k]]
        for j, name in enumerate(ffn_files[i] if i < len(ffn_files) else []):
            if name:
                ffn_rounds[(i, j)] = rounds[name]
    return _assemble(
        dict(manifest, settings=settings),
        rest_rounds,
        layer_rounds,
        layer_rest_rounds,
        full_rounds=full_rounds or None,
        host=measurements["host"],
        date=measurements.get("date"),
        where=measurements.get("where"),
        method=measurements["method"],
        table=measurements.get("table") or "fitted",
        ffn_rounds=ffn_rounds if manifest.get("ffn") else None,
    )


def _assemble(
    manifest: dict[str, Any],
    rest_rounds: list[float],
    layer_rounds: dict[tuple[int, int], list[float]],
    layer_rest_rounds: dict[int, list[float]],
    *,
    full_rounds: Optional[list[float]],
    host: dict[str, Any],
    date: Optional[str],
    where: Optional[str],
    method: dict[str, Any],
    table: str,
    ffn_rounds: Optional[dict[tuple[int, int], list[float]]],
) -> dict[str, Any]:
    """The LUT from per-round values already sorted by role (see :func:`assemble_lut`)."""
    if table not in ("fitted", "raw"):
        raise MeasureError(f"table must be 'fitted' or 'raw', got {table!r}")
    profile = manifest.get("profile") or {}
    auto_where, sentence = describe_where(profile, host)
    if where and where != auto_where:
        sentence = f"{sentence} (declared by the runner as: {where})"
    rest_ms = median(rest_rounds)
    heads = manifest["model"]["heads_per_layer"]
    layers = []
    for i, h in enumerate(heads):
        rest_i = layer_rest_rounds[i]
        raw, spread = [], []
        for k in range(h + 1):
            diffs = sorted(t - r for t, r in zip(layer_rounds[(i, k)], rest_i))
            raw.append(median(diffs))
            spread.append(percentile(diffs, 90) - percentile(diffs, 10))
        ks = list(range(1, h + 1))
        fit = fit_linear(ks, [raw[k] for k in ks])
        fitted = [raw[0]] + [fit["intercept_ms"] + fit["slope_ms_per_head"] * k for k in ks]
        layers.append(
            {
                "index": i,
                "heads": h,
                "raw_ms": raw,
                "spread_ms": spread,
                "fit": fit,
                "fitted_ms": fitted,
                "ms": fitted if table == "fitted" else raw,
            }
        )
    lut: dict[str, Any] = {
        "format": LUT_FORMAT,
        "version": LUT_VERSION,
        "model": manifest["model"],
        "settings": manifest["settings"],
        "profile": profile,
        "provenance": {
            "cpu_model": host.get("cpu_model"),
            "arch": host.get("arch"),
            "logical_cores": host.get("logical_cores"),
            "device_model": host.get("device_model"),
            "ort_version": host.get("ort_version"),
            "numpy_version": host.get("numpy_version"),
            "python": host.get("python"),
            "loadavg": host.get("loadavg"),
            "date": date,
            "where": where or auto_where,
            "measured_on": sentence,
            "qemu_cpu": host.get("qemu_cpu"),
        },
        "method": dict(method, table=table, pairing="per-round T(1 layer, k heads) - T(0 layers)"),
        "rest_ms": rest_ms,
        "rest_spread_ms": percentile(sorted(rest_rounds), 90) - percentile(sorted(rest_rounds), 10),
        "layers": layers,
        "calibration_factor": 1.0,
    }
    if ffn_rounds is not None and manifest.get("ffn"):
        lut["ffn"] = _ffn_section(manifest, layer_rounds, layer_rest_rounds, ffn_rounds, table)
    if full_rounds:
        # Calibration: measured full model / LUT prediction of the full model, paired per round with the rest model.
        full_ms = median(full_rounds)
        predicted_full = rest_ms + sum(layer["ms"][layer["heads"]] for layer in layers)
        lut["full_model_ms"] = full_ms
        lut["full_model_predicted_ms"] = predicted_full
        lut["calibration_factor"] = full_ms / predicted_full if predicted_full > 0 else 1.0
    return lut


def ffn_layer_entry(
    index: int, heads: int, width: int, widths: Sequence[int], layer_raw: Sequence[float], spread: Sequence[float],
    table: str = "fitted",
) -> dict[str, Any]:
    """One layer of the LUT's ``"ffn"`` section from its measured layer times (all heads kept) per kept width.

    ``raw_ms[j]`` = layer time at ``widths[j]`` minus the layer time without FFN (``widths[0]`` must be 0), i.e. the
    FFN's own cost; ``fitted_ms`` follows :func:`fit_hinge` (exact 0 at width 0); ``ms`` is the table ``predict``
    interpolates.

    Raises:
        MeasureError: the widths do not ascend from 0 to ``width``.
    """
    if list(widths) != sorted({int(w) for w in widths}) or widths[0] != 0 or widths[-1] != width:
        raise MeasureError(f"layer {index}: FFN widths must ascend from 0 to the full width {width}, got {list(widths)}")
    raw = [float(t) - float(layer_raw[0]) for t in layer_raw]
    fit = fit_hinge(widths[1:], raw[1:])
    fitted = [hinge_value(fit, w) for w in widths]
    return {
        "index": index,
        "heads": heads,
        "width": width,
        "widths": [int(w) for w in widths],
        "layer_raw_ms": [float(t) for t in layer_raw],
        "spread_ms": [float(x) for x in spread],
        "raw_ms": raw,
        "fit": fit,
        "fitted_ms": fitted,
        "ms": fitted if table == "fitted" else raw,
    }


def _ffn_section(
    manifest: dict[str, Any],
    layer_rounds: dict[tuple[int, int], list[float]],
    layer_rest_rounds: dict[int, list[float]],
    ffn_rounds: dict[tuple[int, int], list[float]],
    table: str,
) -> dict[str, Any]:
    """The LUT's ``"ffn"`` section: per layer, the FFN's cost by kept width (every head kept)."""
    heads = manifest["model"]["heads_per_layer"]
    spec = manifest["ffn"]
    layers = []
    for i, h in enumerate(heads):
        widths, full = [int(w) for w in spec["widths"][i]], int(spec["sizes"][i])
        rest_i = layer_rest_rounds[i]
        layer_raw, spread = [], []
        for j, w in enumerate(widths):
            # The full width with every head is the heads axis' k = H model: the same file, the same rounds.
            if (i, j) in ffn_rounds:
                rounds = ffn_rounds[(i, j)]
            elif w == full:
                rounds = layer_rounds[(i, h)]
            else:
                raise MeasureError(f"layer {i}: no timings for FFN width {w}")
            diffs = sorted(t - r for t, r in zip(rounds, rest_i))
            layer_raw.append(median(diffs))
            spread.append(percentile(diffs, 90) - percentile(diffs, 10))
        layers.append(ffn_layer_entry(i, h, full, widths, layer_raw, spread, table))
    return {
        "pairing": "per-round T(1 layer, all heads, w FFN neurons) - T(0 layers); raw_ms = that minus the same "
                   "at w = 0 (the FFN's own cost)",
        "fit": "f(0) = 0; f(w) = a + b * max(w, knee) for w > 0, knee chosen among the measured widths",
        "predict": "rest + sum_i heads_ms[i][k_i] + sum_i (ffn_ms_i(w_i) - ffn_ms_i(full_i)); ffn_ms_i interpolated "
                   "linearly between measured widths, flat between 0 (exclusive) and the smallest nonzero width",
        "table": table,
        "layers": layers,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Validating, writing and reading


def lut_problem(lut: Any) -> Optional[str]:
    """What is wrong with an assembled LUT (``None`` when it is sound): format/version, required keys, one entry
    per kept-head count in every layer, and the FFN section if present."""
    if not isinstance(lut, dict) or lut.get("format") != LUT_FORMAT or lut.get("version") != LUT_VERSION:
        fmt, ver = (lut.get("format"), lut.get("version")) if isinstance(lut, dict) else (None, None)
        return f"not an edgeprune latency table v{LUT_VERSION} (format={fmt!r}, version={ver!r})"
    for key in ("rest_ms", "layers", "provenance", "settings", "model"):
        if key not in lut:
            return f"latency table lacks '{key}'"
    for layer in lut["layers"]:
        if len(layer["ms"]) != layer["heads"] + 1:
            return f"layer {layer['index']} has {len(layer['ms'])} entries for {layer['heads']} heads"
    return _ffn_problem(lut)


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


def save_lut(lut: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write a LUT (or measurements) as indented JSON, atomically (never seen half written); returns the path."""
    import os

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(lut, indent=2))
    tmp.replace(p)
    return p


def load_lut(path: Union[str, Path]) -> dict[str, Any]:
    """Read a latency table: an assembled LUT, or the device runner's measurements (assembled here, on read).

    Args:
        path: JSON file (``edgeprune lut --out``, or ``python device_runner.py DIR --out``).

    Returns:
        The LUT dict.

    Raises:
        MeasureError: missing file, not JSON, neither format (or another version), measurements that cannot be
            assembled, or inconsistent layer entries.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise MeasureError(f"latency table not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise MeasureError(f"{p}: not a JSON latency table: {exc}") from None
    if isinstance(doc, dict) and doc.get("format") == MEASUREMENTS_FORMAT:
        try:
            doc = assemble_lut(doc)
        except MeasureError as exc:
            raise MeasureError(f"{p}: {exc}") from None
    elif not isinstance(doc, dict) or doc.get("format") != LUT_FORMAT:
        fmt, ver = (doc.get("format"), doc.get("version")) if isinstance(doc, dict) else (None, None)
        raise MeasureError(
            f"{p}: not an edgeprune latency table v{LUT_VERSION} nor device measurements v{MEASUREMENTS_VERSION} "
            f"(format={fmt!r}, version={ver!r})"
        )
    problem = lut_problem(doc)
    if problem:
        raise MeasureError(f"{p}: {problem}")
    return doc


def profile_lut(profile: Union[str, DeviceProfile]) -> Optional[dict[str, Any]]:
    """The device-measured LUT a profile points to (``latency_table = "..."``), loaded, or ``None``."""
    path = load_profile(profile).latency_table_path()
    return load_lut(path) if path is not None else None


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


# ---------------------------------------------------------------------------------------------------------------------
# Predicting


def has_ffn_axis(lut: dict[str, Any]) -> bool:
    """True when the LUT has an FFN axis (built with ``edgeprune lut --ffn``, the default since the FFN axis exists)."""
    return bool(lut.get("ffn")) and bool(lut["ffn"].get("layers"))


_NO_FFN = (
    "the latency table has no FFN axis (it was built before the FFN axis or with --no-ffn): rebuild it with "
    "`edgeprune lut --ffn` to predict plans that prune the FFN"
)


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
        lut: a LUT dict (:func:`load_lut` / :func:`edgeprune.latency.table.build_lut`).
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
