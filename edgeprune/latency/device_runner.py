"""Standalone ONNX Runtime timing kernel and on-device latency-table runner.

This file needs only the Python standard library, ``numpy`` and ``onnxruntime``: copy it to the device (a Raspberry
Pi, a phone's Termux, the ARM emulation image) together with a folder written by ``edgeprune lut --export-only DIR``
and run::

    python device_runner.py DIR --out lut.json            # measure the per-layer sub-models, write the measurements
    python device_runner.py --memory MODEL.onnx --threads 4 --batch 1 --seq-len 128   # one memory probe (JSON)

The workstation then uses the file with ``edgeprune search --latency-table lut.json``: it holds the raw measurements
(format ``edgeprune-lut-measurements`` v1, see :func:`measure_folder`), and edgeprune assembles the latency table
from them when it reads the file (``edgeprune.latency.schema``, the one owner of the table's fits and layout).

``edgeprune.latency.measure`` and ``edgeprune.latency.table`` import the timing kernel (``make_session``,
``synth_inputs``, ``time_runs``, ``alternate``, ``memory_probe``) and :func:`measure_folder` from here, so the host
and the device measure in exactly the same way. Keep this file free of ``edgeprune`` imports (it must run as a single
copied file).
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

#: What :func:`measure_folder` writes: raw per-round timings, not the assembled table.
MEASUREMENTS_FORMAT = "edgeprune-lut-measurements"
MEASUREMENTS_VERSION = 1
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


def median(xs: Sequence[float]) -> float:
    """Median (the 50th :func:`percentile`) of unsorted values."""
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
            per_round[j].append(min(times) if block == "min" else median(times))
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
    """Measure every sub-model listed in ``folder/manifest.json`` and return the measurements document.

    Sub-models are timed per layer group (the 0-layer models, the full model, that layer's k = 0..H models and, when
    the manifest has an FFN axis, its kept-FFN-width models, alternating), with ``session.intra_op.allow_spinning=0``
    because sessions alternate.

    The document (``format = "edgeprune-lut-measurements"``, ``version = 1``)::

        {"format", "version",
         "manifest": the manifest as read,
         "threads": intra-op threads used, "where": declared place or null, "table": "fitted" | "raw",
         "host": host_info() after measuring, "date": ISO-8601 UTC after measuring,
         "method": {"rounds", "reps", "allow_spinning", "round_value", "measure_seconds"},
         "groups": [{"layer": i, "rounds": {file name: [value of each round, ms], ...}}, ...]}

    Args:
        folder: written by ``edgeprune lut --export-only``.
        threads: override the manifest's thread count (e.g. a phone where only the big cores should be used).
        rounds, reps: override the manifest's measuring schedule.
        where: declare ``"device"``/``"emulated"``/``"this host"`` if auto-detection cannot know.
        table: which entries the assembled table's predictor will use, ``"fitted"`` or ``"raw"`` (recorded).
        log: callable taking a string, for progress (default: silent).

    Returns:
        The measurements dict (JSON-serialisable).
    """
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    settings = manifest["settings"]
    thr = int(threads or settings["threads"])
    rounds = int(rounds or manifest.get("schedule", {}).get("rounds", 15))
    reps = int(reps or manifest.get("schedule", {}).get("reps", 5))
    model = manifest["model"]
    # Ids must be valid for every sub-model: the per-layer ones carry a cut embedding table (see edgeprune.latency.table).
    vocab = min(v for v in (model.get("vocab_size"), model.get("layer_vocab_size"), 100_000) if v) or 100
    batch, seq = int(settings["batch"]), int(settings["seq_len"])
    log = log or (lambda s: None)

    def load(rel: str):
        s = make_session(folder / rel, thr, allow_spinning=False)
        return s, synth_inputs(s, batch, seq, vocab_size=vocab)

    files = manifest["files"]
    # The in-group reference: the 0-layer model built exactly like the per-layer ones (same embedding table). The
    # real rest model and the full model run in every group too: their medians then cover the whole measuring period
    # (a single separate block was easily caught by a burst of load) and the calibration factor is paired in time
    # with the per-layer entries.
    fixed_names = [n for n in (files.get("ref"), files["rest"], files.get("full")) if n]
    fixed = [load(name) for name in fixed_names]
    ffn_files = files.get("ffn") or []
    groups: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, h in enumerate(model["heads_per_layer"]):
        # The layer's FFN sub-models (every head kept, kept width w) alternate in the same group: paired with the
        # same reference. The full width is the k = H heads model and is not listed again.
        names = list(files["layers"][i][: h + 1])
        names += [name for name in (ffn_files[i] if i < len(ffn_files) else []) if name]
        group = fixed + [load(name) for name in names]
        # Every model, the slow full one included, gets the same best-of-reps, so the full model's round value (and
        # the calibration factor) is as robust to load bursts as the entries it is compared with.
        per = alternate([g[0] for g in group], [g[1] for g in group], rounds=rounds, reps=reps, seed=i)
        groups.append({"layer": i, "rounds": dict(zip(fixed_names + names, per))})
        del group
        log(f"layer {i}: {len(names)} sub-models measured ({time.perf_counter() - t0:.1f} s)")
    return {
        "format": MEASUREMENTS_FORMAT,
        "version": MEASUREMENTS_VERSION,
        "manifest": manifest,
        "threads": thr,
        "where": where,
        "table": table,
        "host": host_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": {"rounds": rounds, "reps": reps, "allow_spinning": False, "round_value": "best of reps",
                   "measure_seconds": round(time.perf_counter() - t0, 2)},
        "groups": groups,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description="Measure an edgeprune latency table (or memory) with onnxruntime only.")
    ap.add_argument("folder", nargs="?", help="folder written by `edgeprune lut --export-only`")
    ap.add_argument("--out", default="lut.json",
                    help="where to write the measurements JSON (edgeprune reads it as a latency table)")
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
    meas = measure_folder(
        args.folder,
        threads=args.threads,
        rounds=args.rounds,
        reps=args.reps,
        where=args.where,
        table=args.table,
        log=lambda s: print(s, file=sys.stderr),
    )
    Path(args.out).write_text(json.dumps(meas, indent=2))
    n_models = len({name for g in meas["groups"] for name in g["rounds"]})
    ffn = ", FFN axis" if meas["manifest"].get("ffn") else ""
    _, sentence = describe_where(meas["manifest"].get("profile") or {}, meas["host"])
    print(f"wrote {args.out}: measurements of {n_models} sub-models in {len(meas['groups'])} layer groups{ffn}, "
          f"threads {meas['threads']}; {sentence}. Use it on the workstation with --latency-table {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
