"""Standalone ONNX Runtime timing kernel and on-device latency-table runner.

This file needs only the Python standard library, ``numpy`` and ``onnxruntime``: copy it to the device (a Raspberry
Pi, a phone's Termux, the ARM emulation image) together with a folder written by ``edgeprune lut --export-only DIR``
and run::

    python device_runner.py DIR --out lut.json            # measure the per-layer sub-models, write the LUT
    python device_runner.py --memory MODEL.onnx --threads 4 --batch 1 --seq-len 128   # one memory probe (JSON)

The workstation then uses the LUT with ``edgeprune search --latency-table lut.json``.

``edgeprune.latency.measure`` and ``edgeprune.latency.table`` import the same functions from here, so the host and the device
measure in exactly the same way. Keep this file free of ``edgeprune`` imports (it must run as a single copied file).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

LUT_FORMAT = "edgeprune-lut"
LUT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# ARM MIDR part numbers (implementer 0x41 = Arm Ltd) of the cores edgeprune profiles name. Used to recognise that the
# host *is* the profile's device class (e.g. a Pi 4 reports part 0xd08 = Cortex-A72).
ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd05": "Cortex-A55",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE",
    "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2",
    "0xd4b": "Cortex-A78C",
}


# ---------------------------------------------------------------------------------------------------------------------
# Host description and the "measured on" sentence


def _normalise_arch(machine: str) -> str:
    m = machine.lower()
    return {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}.get(m, m)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def host_info() -> dict[str, Any]:
    """Describe the machine this process runs on (for LUT/measurement provenance).

    Returns:
        dict with ``cpu_model``, ``arch``, ``logical_cores``, ``arm_cores`` (core names from MIDR part numbers, ARM
        only), ``device_model`` (device-tree model, e.g. "Raspberry Pi 4 Model B"), ``emulated`` (QEMU user mode
        detected), ``qemu_cpu``, ``ort_version``, ``numpy_version``, ``python``, ``os`` and ``loadavg``.
    """
    arch = _normalise_arch(platform.machine())
    cpuinfo = _read("/proc/cpuinfo")
    cpu_model = ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if m:
            cpu_model = m.group(1).strip()
            break
    parts = re.findall(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)", cpuinfo, re.MULTILINE)
    arm_cores = sorted({ARM_PARTS.get(p.lower(), f"ARM part {p.lower()}") for p in parts})
    if not cpu_model and arm_cores:
        cpu_model = "/".join(arm_cores)
    if not cpu_model:
        cpu_model = platform.processor() or "unknown CPU"
    device_model = _read("/proc/device-tree/model").strip("\x00 \n")
    qemu_cpu = os.environ.get("QEMU_CPU")
    # qemu-user passes its environment to the guest; the ARM recipe always sets QEMU_CPU. EDGEPRUNE_EMULATED lets a
    # wrapper say so explicitly.
    emulated = bool(qemu_cpu) or os.environ.get("EDGEPRUNE_EMULATED", "") not in ("", "0")
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "arch": arch,
        "logical_cores": os.cpu_count() or 1,
        "arm_cores": arm_cores,
        "device_model": device_model,
        "emulated": emulated,
        "qemu_cpu": qemu_cpu,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux/macOS
        info["loadavg"] = None
    try:
        import onnxruntime

        info["ort_version"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        info["ort_version"] = None
    try:
        import numpy

        info["numpy_version"] = numpy.__version__
    except ImportError:  # pragma: no cover
        info["numpy_version"] = None
    return info


def _core_names(core_type: str) -> set[str]:
    """Core names mentioned in a profile's core_type ("Cortex-A78/X1 (big cores)" -> {Cortex-A78, Cortex-X1})."""
    names = set()
    for tok in re.findall(r"(A\d{2,3}(?:AE|C)?|X\d|N1)", core_type):
        names.add("Neoverse-N1" if tok == "N1" else f"Cortex-{tok}")
    return names


def describe_where(profile: dict[str, Any], host: Optional[dict[str, Any]] = None) -> tuple[str, str]:
    """Say, in words, where a measurement with a profile's settings was taken.

    Args:
        profile: at least ``name``, ``display_name``, ``arch`` and ``cpu.core_type`` (``DeviceProfile.to_dict()``).
        host: :func:`host_info` output (taken now if omitted).

    Returns:
        ``(where, sentence)``: where is ``"device"``, ``"emulated"`` or ``"this host"``; the sentence is what every
        output prints, e.g. "measured on Intel Xeon (x86_64, 2 cores) with raspberrypi4 settings, not on a
        Raspberry Pi 4".
    """
    host = host or host_info()
    name = profile.get("name", "?")
    display = profile.get("display_name") or name
    what = f"{host.get('device_model') or host.get('cpu_model')} ({host.get('arch')}, {host.get('logical_cores')} cores)"
    if host.get("emulated"):
        return "emulated", (
            f"measured under QEMU emulation (cpu {host.get('qemu_cpu') or '?'}) on {host.get('cpu_model')} with {name} "
            f"settings, not on {display}: emulated timings are 60-300x slower and only show correctness"
        )
    same_arch = host.get("arch") == profile.get("arch")
    if same_arch and profile.get("arch") == "x86_64":
        # The x86-64 profile is a generic class, not one device: any x86-64 host is an instance of it.
        return "device", f"measured on {what} with {name} settings"
    wanted = _core_names((profile.get("cpu") or {}).get("core_type", ""))
    if same_arch and wanted and wanted & set(host.get("arm_cores") or []):
        return "device", f"measured on {what} with {name} settings ({display} class hardware)"
    return "this host", f"measured on {what} with {name} settings, not on {display}"


# ---------------------------------------------------------------------------------------------------------------------
# Sessions, inputs, timing


def make_session(
    path: str | os.PathLike,
    threads: int,
    *,
    allow_spinning: bool = True,
    disable_prepacking: bool = False,
):
    """An ORT CPU session set up like the device runs it.

    Args:
        path: ONNX (or .ort) file; external data next to it is found by ORT.
        threads: intra-op threads (inter-op is 1: BERT graphs are sequential).
        allow_spinning: False sets ``session.intra_op.allow_spinning=0``. Needed when several sessions alternate in
            one process: spinning idle workers of one session steal the cores of the next (2-2.5x slower measured).
        disable_prepacking: trade ~25% RSS for +10-18% latency (``session.disable_prepacking``).

    Returns:
        onnxruntime.InferenceSession.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if disable_prepacking:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


_NP_TYPES = {
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bool)": "bool",
}


def synth_inputs(session, batch: int, seq_len: int, *, vocab_size: int = 100, seed: int = 0) -> dict[str, Any]:
    """Deterministic inputs for a text classifier, built from the session's input names.

    ``input_ids`` are uniform in [min(5, vocab-1), vocab) (skipping the first ids, which are special tokens in
    BERT-family vocabularies); ``attention_mask`` is all ones (the padded length is what the device computes on);
    ``token_type_ids`` and anything else are zeros of the declared dtype.

    Args:
        session: an ORT session.
        batch: first dimension.
        seq_len: second dimension.
        vocab_size: upper bound for ids (Gather fails on out-of-range ids).
        seed: numpy seed for the ids.

    Returns:
        name -> numpy array.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for inp in session.get_inputs():
        dtype = _NP_TYPES.get(inp.type, "int64")
        shape = [batch, seq_len][: len(inp.shape)] + [1] * max(0, len(inp.shape) - 2)
        for i, d in enumerate(inp.shape):  # honour static dims that differ from our defaults
            if isinstance(d, int) and d > 0:
                shape[i] = d
        name = inp.name.lower()
        if "input_ids" in name or name in ("ids", "tokens"):
            low = min(5, max(vocab_size - 1, 0))
            arr = rng.integers(low, max(vocab_size, low + 1), size=shape).astype(dtype)
        elif "mask" in name:
            arr = np.ones(shape, dtype=dtype)
        else:
            arr = np.zeros(shape, dtype=dtype)
        feeds[inp.name] = arr
    return feeds


def time_runs(
    session,
    feeds: dict[str, Any],
    *,
    warmup: int = 5,
    min_runs: int = 20,
    min_seconds: float = 1.0,
    max_runs: int = 100_000,
) -> list[float]:
    """Warm up, then time runs until both ``min_runs`` runs and ``min_seconds`` of timed wall-clock are reached.

    Returns:
        per-run wall-clock latencies in milliseconds.
    """
    for _ in range(warmup):
        session.run(None, feeds)
    samples: list[float] = []
    t_start = time.perf_counter()
    while len(samples) < max_runs:
        t0 = time.perf_counter_ns()
        session.run(None, feeds)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if len(samples) >= min_runs and time.perf_counter() - t_start >= min_seconds:
            break
    return samples


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) without numpy."""
    if not sorted_xs:
        return float("nan")
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples_ms: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99, mean, std, coefficient of variation (std/mean), min, max and count of latency samples."""
    xs = sorted(float(x) for x in samples_ms)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    mean = sum(xs) / n
    std = (sum((x - mean) ** 2 for x in xs) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {
        "n": n,
        "p50_ms": percentile(xs, 50),
        "p90_ms": percentile(xs, 90),
        "p99_ms": percentile(xs, 99),
        "mean_ms": mean,
        "std_ms": std,
        "cv": std / mean if mean > 0 else float("nan"),
        "min_ms": xs[0],
        "max_ms": xs[-1],
    }


def _median(xs: Sequence[float]) -> float:
    return percentile(sorted(xs), 50)


def alternate(
    sessions: Sequence[Any],
    feeds: Sequence[dict[str, Any]],
    *,
    rounds: int = 7,
    reps: int = 5,
    warmup: int = 3,
    seed: int = 0,
    block: str = "min",
    reps_each: Optional[Sequence[int]] = None,
) -> list[list[float]]:
    """Time several sessions side by side: each round runs every session ``reps`` times, in a shuffled order.

    Load on a shared machine drifts over seconds; interleaving puts every model under the same drift, so differences
    and ratios between them stay meaningful even when absolute numbers swing.

    The value of a round is the *best* of its ``reps`` runs by default (``block="min"``): other processes can only
    add time to a run (a preempted worker thread stalls a whole parallel op), and longer runs are hit more often, so
    medians under load inflate long models more than short ones and break additivity (measured: a MiniLM LUT under
    load average 10 on 2 cores under-predicted the medians by 2.4x, while the best-of-5 values agreed). On a quiet
    device min and median coincide. ``block="median"`` keeps the typical run instead. ``reps_each`` gives a
    per-session number of runs per round (e.g. fewer for a slow full model that only serves as a reference).

    Returns:
        for each session, its per-round values (``rounds`` values, ms).
    """
    for s, f in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, f)
    rng = random.Random(seed)
    order = list(range(len(sessions)))
    per_round: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        rng.shuffle(order)
        for j in order:
            s, f = sessions[j], feeds[j]
            times = []
            for _ in range(reps_each[j] if reps_each else reps):
                t0 = time.perf_counter_ns()
                s.run(None, f)
                times.append((time.perf_counter_ns() - t0) / 1e6)
            per_round[j].append(min(times) if block == "min" else _median(times))
    return per_round


# ---------------------------------------------------------------------------------------------------------------------
# Memory probe (run in a fresh process: allocator state of earlier sessions would pollute the numbers)


def _status_kib(field: str) -> Optional[int]:
    m = re.search(rf"^{field}:\s*(\d+)\s*kB", _read("/proc/self/status"), re.MULTILINE)
    return int(m.group(1)) if m else None


def memory_probe(path: str, threads: int, batch: int, seq_len: int, *, vocab_size: int = 100, runs: int = 5) -> dict:
    """Memory of one model in *this* process: call it in a fresh process (``python device_runner.py --memory``).

    Returns:
        ``baseline_mib`` (RSS with Python+numpy+ORT imported, no model), ``session_mib`` (RSS after session creation
        minus baseline), ``peak_mib`` (peak RSS during creation and runs minus baseline).
    """
    import numpy  # noqa: F401  (part of the baseline, as in any real app)
    import onnxruntime  # noqa: F401

    try:
        import psutil

        def rss_kib() -> int:
            return psutil.Process().memory_info().rss // 1024

    except ImportError:  # on a device without psutil: /proc is enough on Linux/Android

        def rss_kib() -> int:
            return _status_kib("VmRSS") or 0

    base = rss_kib()
    # Reset the kernel's peak-RSS counter (VmHWM) so the peak we read covers only session creation and runs.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        hwm_ok = True
    except OSError:
        hwm_ok = False
    sess = make_session(path, threads)
    after = rss_kib()
    feeds = synth_inputs(sess, batch, seq_len, vocab_size=vocab_size)
    peak = after
    for _ in range(runs):
        sess.run(None, feeds)
        peak = max(peak, rss_kib())
    if hwm_ok:
        peak = max(peak, _status_kib("VmHWM") or 0)
    return {
        "baseline_mib": base / 1024,
        "session_mib": (after - base) / 1024,
        "peak_mib": (peak - base) / 1024,
        "peak_is_kernel_hwm": hwm_ok,
    }


# ---------------------------------------------------------------------------------------------------------------------
# LUT assembly (shared by the host path in edgeprune.latency.table and the device path below)


def fit_linear(ks: Sequence[int], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line y = a + b*k (DESIGN 6: a layer's latency is linear in its kept heads)."""
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


def ffn_layer_entry(
    index: int, heads: int, width: int, widths: Sequence[int], layer_raw: Sequence[float], spread: Sequence[float],
    table: str = "fitted",
) -> dict[str, Any]:
    """One layer of the LUT's ``"ffn"`` section from its measured layer times (all heads kept) per kept width.

    ``raw_ms[j]`` = layer time at ``widths[j]`` minus the layer time without FFN (``widths[0]`` must be 0), i.e. the
    FFN's own cost; ``fitted_ms`` follows :func:`fit_hinge` (exact 0 at width 0); ``ms`` is the table ``predict``
    interpolates.
    """
    if list(widths) != sorted({int(w) for w in widths}) or widths[0] != 0 or widths[-1] != width:
        raise ValueError(f"layer {index}: FFN widths must ascend from 0 to the full width {width}, got {list(widths)}")
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


def assemble_lut(
    manifest: dict[str, Any],
    rest_rounds: list[float],
    layer_rounds: dict[tuple[int, int], list[float]],
    layer_rest_rounds: dict[int, list[float]],
    *,
    full_rounds: Optional[list[float]] = None,
    host: Optional[dict[str, Any]] = None,
    where: Optional[str] = None,
    method: Optional[dict[str, Any]] = None,
    table: str = "fitted",
    ffn_rounds: Optional[dict[tuple[int, int], list[float]]] = None,
) -> dict[str, Any]:
    """Turn per-round timings into the LUT document.

    The latency of layer ``i`` with ``k`` heads is the median over rounds of ``T(1-layer model, k heads) - T(0-layer
    model)`` taken *within the same round* (a paired difference: slow load drift cancels). For each layer a line is
    fitted over k = 1..H; k = 0 is kept raw because a 0-head layer drops the whole attention block (Q/K/V, softmax
    and the output projection), so it sits below the line.

    Args:
        manifest: the export manifest (model layout, settings, profile).
        rest_rounds: per-round medians of the 0-layer (embeddings + classifier) model.
        layer_rounds: (layer, k) -> per-round medians of the 1-layer model.
        layer_rest_rounds: layer -> per-round medians of the 0-layer reference measured in that layer's group.
        full_rounds: per-round medians of the unpruned full model (gives the calibration factor), if measured.
        host: :func:`host_info` of the measuring machine.
        where: override ``"device" | "emulated" | "this host"`` (otherwise derived from the profile and host).
        method: free-form description of the measuring method (rounds, reps...).
        table: which per-layer values ``predict`` uses: ``"fitted"`` or ``"raw"``.
        ffn_rounds: (layer, j) -> per-round values of the 1-layer model with every head and ``widths[j]`` FFN neurons
            (``manifest["ffn"]["widths"][layer]``; the full width may be left out: it is the k = H heads model).
            Gives the LUT's ``"ffn"`` section (paired with the same in-group reference as the heads).

    Returns:
        The LUT dict (see docs in edgeprune.latency.table).
    """
    host = host or host_info()
    profile = manifest.get("profile") or {}
    auto_where, sentence = describe_where(profile, host)
    if where and where != auto_where:
        sentence = f"{sentence} (declared by the runner as: {where})"
    rest_ms = _median(rest_rounds)
    heads = manifest["model"]["heads_per_layer"]
    layers = []
    for i, h in enumerate(heads):
        rest_i = layer_rest_rounds[i]
        raw, spread = [], []
        for k in range(h + 1):
            diffs = sorted(t - r for t, r in zip(layer_rounds[(i, k)], rest_i))
            raw.append(_median(diffs))
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
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "where": where or auto_where,
            "measured_on": sentence,
            "qemu_cpu": host.get("qemu_cpu"),
        },
        "method": dict(method or {}, table=table, pairing="per-round T(1 layer, k heads) - T(0 layers)"),
        "rest_ms": rest_ms,
        "rest_spread_ms": percentile(sorted(rest_rounds), 90) - percentile(sorted(rest_rounds), 10),
        "layers": layers,
        "calibration_factor": 1.0,
    }
    if ffn_rounds is not None and manifest.get("ffn"):
        lut["ffn"] = _ffn_section(manifest, layer_rounds, layer_rest_rounds, ffn_rounds, table)
    if full_rounds:
        # Calibration: measured full model / LUT prediction of the full model, paired per round with the rest model.
        full_ms = _median(full_rounds)
        predicted_full = rest_ms + sum(layer["ms"][layer["heads"]] for layer in layers)
        lut["full_model_ms"] = full_ms
        lut["full_model_predicted_ms"] = predicted_full
        lut["calibration_factor"] = full_ms / predicted_full if predicted_full > 0 else 1.0
    return lut


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
                raise ValueError(f"layer {i}: no timings for FFN width {w}")
            diffs = sorted(t - r for t, r in zip(rounds, rest_i))
            layer_raw.append(_median(diffs))
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
# Device entry point: measure an exported folder


def measure_folder(
    folder: str | os.PathLike,
    *,
    threads: Optional[int] = None,
    rounds: Optional[int] = None,
    reps: Optional[int] = None,
    where: Optional[str] = None,
    table: str = "fitted",
    log=None,
) -> dict[str, Any]:
    """Measure every sub-model listed in ``folder/manifest.json`` and return the LUT dict.

    Sub-models are timed per layer group (the 0-layer model plus that layer's k = 0..H models and, when the manifest
    has an FFN axis, its kept-FFN-width models, alternating), with ``session.intra_op.allow_spinning=0`` because
    sessions alternate.

    Args:
        folder: written by ``edgeprune lut --export-only``.
        threads: override the manifest's thread count (e.g. a phone where only the big cores should be used).
        rounds, reps: override the manifest's measuring schedule.
        where: declare ``"device"``/``"emulated"``/``"this host"`` if auto-detection cannot know.
        table: ``"fitted"`` or ``"raw"``.
        log: callable taking a string, for progress (default: silent).

    Returns:
        LUT dict.
    """
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    settings = dict(manifest["settings"])
    if threads and int(threads) != int(settings["threads"]):
        settings["threads_note"] = f"manifest asked for {settings['threads']} threads; {int(threads)} were used"
        settings["threads"] = int(threads)
    manifest = dict(manifest, settings=settings)
    rounds = int(rounds or manifest.get("schedule", {}).get("rounds", 15))
    reps = int(reps or manifest.get("schedule", {}).get("reps", 5))
    model = manifest["model"]
    # Ids must be valid for every sub-model: the per-layer ones carry a cut embedding table (see edgeprune.latency.table).
    vocab = min(v for v in (model.get("vocab_size"), model.get("layer_vocab_size"), 100_000) if v) or 100
    batch, seq = int(settings["batch"]), int(settings["seq_len"])
    thr = int(settings["threads"])
    log = log or (lambda s: None)

    def load(rel: str):
        s = make_session(folder / rel, thr, allow_spinning=False)
        return s, synth_inputs(s, batch, seq, vocab_size=vocab)

    files = manifest["files"]
    # The in-group reference: the 0-layer model built exactly like the per-layer ones (same embedding table).
    fixed = [load(files.get("ref") or files["rest"])]
    # The real rest model and the full model run in every group too: their medians then cover the whole measuring
    # period (a single separate block was easily caught by a burst of load) and the calibration factor is paired in
    # time with the per-layer entries.
    if files.get("ref"):
        fixed.append(load(files["rest"]))
    if files.get("full"):
        fixed.append(load(files["full"]))
    rest_pos = 1 if files.get("ref") else 0
    full_pos = len(fixed) - 1 if files.get("full") else None
    layer_rounds: dict[tuple[int, int], list[float]] = {}
    layer_ref: dict[int, list[float]] = {}
    rest_rounds: list[float] = []
    full_rounds: list[float] = []
    t0 = time.perf_counter()
    ffn_files = files.get("ffn") or []
    ffn_rounds: dict[tuple[int, int], list[float]] = {}
    for i, h in enumerate(model["heads_per_layer"]):
        # The layer's FFN sub-models (every head kept, kept width w) alternate in the same group: paired with the
        # same reference. The full width is the k = H heads model and is not listed again.
        extra = [(j, name) for j, name in enumerate(ffn_files[i] if i < len(ffn_files) else []) if name]
        group = fixed + [load(files["layers"][i][k]) for k in range(h + 1)] + [load(name) for _, name in extra]
        # Every model, the slow full one included, gets the same best-of-reps, so the full model's round value (and
        # the calibration factor) is as robust to load bursts as the entries it is compared with.
        per = alternate([g[0] for g in group], [g[1] for g in group], rounds=rounds, reps=reps, seed=i)
        layer_ref[i] = per[0]
        rest_rounds += per[rest_pos]
        if full_pos is not None:
            full_rounds += per[full_pos]
        for k in range(h + 1):
            layer_rounds[(i, k)] = per[len(fixed) + k]
        for n, (j, _) in enumerate(extra):
            ffn_rounds[(i, j)] = per[len(fixed) + h + 1 + n]
        del group
        log(f"layer {i}: {h + 1 + len(extra)} sub-models measured ({time.perf_counter() - t0:.1f} s)")
    return assemble_lut(
        manifest,
        rest_rounds,
        layer_rounds,
        layer_ref,
        full_rounds=full_rounds or None,
        ffn_rounds=ffn_rounds if manifest.get("ffn") else None,
        where=where,
        method={"rounds": rounds, "reps": reps, "allow_spinning": False, "round_value": "best of reps",
                "measure_seconds": round(time.perf_counter() - t0, 2)},
        table=table,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description="Measure an edgeprune latency table (or memory) with onnxruntime only.")
    ap.add_argument("folder", nargs="?", help="folder written by `edgeprune lut --export-only`")
    ap.add_argument("--out", default="lut.json", help="where to write the LUT JSON")
    ap.add_argument("--threads", type=int, default=None, help="override the manifest's intra-op threads")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--where", choices=["device", "emulated", "this host"], default=None)
    ap.add_argument("--table", choices=["fitted", "raw"], default="fitted")
    ap.add_argument("--memory", metavar="MODEL", help="instead: print a memory probe of MODEL as JSON")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=100)
    args = ap.parse_args(argv)
    if args.memory:
        res = memory_probe(args.memory, args.threads or 1, args.batch, args.seq_len, vocab_size=args.vocab_size)
        print(json.dumps(res))
        return 0
    if not args.folder:
        ap.error("give the exported folder (or --memory MODEL)")
    lut = measure_folder(
        args.folder,
        threads=args.threads,
        rounds=args.rounds,
        reps=args.reps,
        where=args.where,
        table=args.table,
        log=lambda s: print(s, file=sys.stderr),
    )
    Path(args.out).write_text(json.dumps(lut, indent=2))
    ffn = ", FFN axis" if lut.get("ffn") else ""
    print(f"wrote {args.out}: rest {lut['rest_ms']:.2f} ms, {len(lut['layers'])} layers{ffn}; "
          f"{lut['provenance']['measured_on']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
