"""End-to-end ONNX Runtime latency and memory of a model at a device profile's settings.

The timing kernel lives in :mod:`edgeprune.latency.device_runner` (standalone, so the device measures the same way); this
module adds the profile, honest labelling, memory in fresh processes and file sizes.

Every result carries ``measured_on``: a sentence saying on which machine the numbers were taken and whether that is
the profile's device (e.g. "measured on Intel Xeon (x86_64, 2 cores) with raspberrypi4 settings, not on a
Raspberry Pi 4").
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from edgeprune.latency import device_runner as dr
from edgeprune.errors import MeasureError
from edgeprune.profiles import DeviceProfile, load_profile

PathLike = Union[str, os.PathLike]

__all__ = [
    "AlternatingResult",
    "LatencyStats",
    "MemoryStats",
    "effective_threads",
    "file_size_bytes",
    "format_measurement",
    "measure_alternating",
    "measure_latency",
    "measure_memory",
    "measure_model",
    "measured_on",
    "onnx_vocab_size",
]


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model (milliseconds, wall-clock per ``session.run``).

    Attributes:
        p50_ms, p90_ms, p99_ms, mean_ms, std_ms, min_ms, max_ms: statistics over ``n`` timed runs.
        cv: coefficient of variation (std / mean); above ~0.1 the machine was busy: trust p50, not the mean.
        n: timed runs (after ``warmup``).
        threads, batch, seq_len: what was actually run.
        threads_note: set when the profile's threads were clipped to the host's cores.
        profile: profile name.
        where: ``device`` / ``this host`` / ``emulated``.
        measured_on: the honesty sentence.
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    max_ms: float
    n: int
    warmup: int
    threads: int
    batch: int
    seq_len: int
    profile: str
    where: str
    measured_on: str
    threads_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemoryStats:
    """Memory of one model, median over fresh processes (allocator noise makes a single process unreliable).

    Attributes:
        session_mib: RSS after session creation minus the pre-session baseline (Python + numpy + ORT).
        peak_mib: peak RSS during session creation and runs minus the same baseline.
        baseline_mib: the baseline itself.
        processes: how many fresh processes the medians are over.
        samples: the per-process results.
    """

    session_mib: float
    peak_mib: float
    baseline_mib: float
    processes: int
    samples: tuple = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = list(self.samples)
        return d


@dataclass(frozen=True)
class AlternatingResult:
    """Several models timed side by side (see :func:`measure_alternating`).

    Attributes:
        paths: the models, in the order given.
        median_ms: per model, median over rounds of the round values (best of ``reps`` runs by default).
        spread_ms: per model, p90 - p10 of its round values (how much the machine's load moved it).
        rounds_ms: per model, the round values themselves.
        ratio_to_first: per model, median over rounds of (this model / first model) in the same round: robust to
            load drift, use it for "x times faster".
    """

    paths: tuple[str, ...]
    median_ms: tuple[float, ...]
    spread_ms: tuple[float, ...]
    rounds_ms: tuple[tuple[float, ...], ...]
    ratio_to_first: tuple[float, ...]
    threads: int
    batch: int
    seq_len: int
    profile: str
    where: str
    measured_on: str
    threads_note: str = ""
    block: str = "min"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------




def measured_on(profile: Union[str, DeviceProfile], host: Optional[dict] = None) -> tuple[str, str]:
    """``(where, sentence)`` for measurements taken here with ``profile``'s settings (see device_runner)."""
    return dr.describe_where(load_profile(profile).summary(), host)


def effective_threads(profile: DeviceProfile, threads: Optional[int] = None) -> tuple[int, str]:
    """Intra-op threads to use on this host: the profile's (or ``threads``), clipped to the host's cores.

    Oversubscribing (4 threads on 2 cores) makes ORT's thread pool fight itself and measures nothing useful.

    Returns:
        ``(threads, note)``; the note is empty unless clipping happened.
    """
    want = int(threads or profile.threads)
    have = os.cpu_count() or 1
    if want > have:
        return have, f"{profile.name} asks for {want} threads; this host has {have} logical cores, so {have} were used"
    return want, ""


def file_size_bytes(onnx_path: PathLike) -> dict[str, Any]:
    """Size of an ONNX model on disk including its external-data files (``model.onnx.data``).

    Returns:
        ``{"model_bytes", "external_bytes", "total_bytes", "external_files"}``.
    """
    p = Path(onnx_path)
    if not p.is_file():
        raise MeasureError(f"model file not found: {p}")
    ext: set[Path] = set()
    if p.suffix == ".onnx":
        import onnx

        m = onnx.load(str(p), load_external_data=False)
        for init in m.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                for kv in init.external_data:
                    if kv.key == "location":
                        ext.add(p.parent / kv.value)
    ext = {e for e in ext if e.is_file()}
    ext_bytes = sum(e.stat().st_size for e in ext)
    return {
        "model_bytes": p.stat().st_size,
        "external_bytes": ext_bytes,
        "total_bytes": p.stat().st_size + ext_bytes,
        "external_files": sorted(e.name for e in ext),
    }


def onnx_vocab_size(onnx_path: PathLike, default: int = 100) -> int:
    """Vocabulary size of a text model, read from the embedding table that ``input_ids`` index into.

    Handles a plain Gather, a dynamically quantized Gather (DequantizeLinear in front) and the fused
    EmbedLayerNormalization. Falls back to ``default`` (safe for tiny test models) when nothing matches.
    """
    p = Path(onnx_path)
    if p.suffix != ".onnx":
        return default
    import onnx

    m = onnx.load(str(p), load_external_data=False)
    shapes = {i.name: list(i.dims) for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    ids = [i.name for i in m.graph.input if "input_ids" in i.name]
    if not ids:
        return default

    def table_rows(name: str) -> Optional[int]:
        for _ in range(3):  # follow DequantizeLinear / Cast back to the initializer
            if name in shapes and len(shapes[name]) == 2:
                return int(shapes[name][0])
            node = producers.get(name)
            if node is None or not node.input:
                return None
            name = node.input[0]
        return None

    for node in m.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in ids:
            rows = table_rows(node.input[0])
            if rows:
                return rows
        if node.op_type == "EmbedLayerNormalization" and node.input and node.input[0] in ids:
            rows = table_rows(node.input[2])
            if rows:
                return rows
    return default


def _session(path: PathLike, threads: int, allow_spinning: bool):
    p = Path(path)
    if not p.is_file():
        raise MeasureError(f"model file not found: {p}")
    try:
        return dr.make_session(p, threads, allow_spinning=allow_spinning)
    except Exception as exc:  # ORT raises its own exception types; give the user one clear message
        raise MeasureError(f"onnxruntime cannot load {p}: {exc}") from exc


def measure_latency(
    onnx_path: PathLike,
    profile: Union[str, DeviceProfile],
    *,
    threads: Optional[int] = None,
    warmup: Optional[int] = None,
    min_runs: Optional[int] = None,
    min_seconds: Optional[float] = None,
    allow_spinning: bool = True,
    seed: int = 0,
) -> LatencyStats:
    """Latency of one ONNX model with a profile's threads, batch and sequence length.

    Args:
        onnx_path: ``.onnx`` or ``.ort`` file.
        profile: name, path or loaded profile.
        threads: override the profile's threads (still clipped to the host's cores).
        warmup, min_runs, min_seconds: override the profile's measuring schedule: time runs until both the count
            and the duration are reached.
        allow_spinning: keep ORT's spin-waiting (fine for a single session; see :func:`measure_alternating`).
        seed: seed for the synthesised ``input_ids``.

    Returns:
        :class:`LatencyStats`.

    Raises:
        MeasureError: missing file or ORT failure.
    """
    prof = load_profile(profile)
    thr, note = effective_threads(prof, threads)
    inf = prof.inference
    sess = _session(onnx_path, thr, allow_spinning)
    feeds = dr.synth_inputs(sess, inf.batch, inf.seq_len, vocab_size=onnx_vocab_size(onnx_path), seed=seed)
    w = inf.warmup if warmup is None else warmup
    samples = dr.time_runs(
        sess,
        feeds,
        warmup=w,
        min_runs=inf.min_runs if min_runs is None else min_runs,
        min_seconds=inf.min_seconds if min_seconds is None else min_seconds,
    )
    s = dr.summarize(samples)
    where, sentence = measured_on(prof)
    return LatencyStats(
        p50_ms=s["p50_ms"],
        p90_ms=s["p90_ms"],
        p99_ms=s["p99_ms"],
        mean_ms=s["mean_ms"],
        std_ms=s["std_ms"],
        cv=s["cv"],
        min_ms=s["min_ms"],
        max_ms=s["max_ms"],
        n=s["n"],
        warmup=w,
        threads=thr,
        batch=inf.batch,
        seq_len=inf.seq_len,
        profile=prof.name,
        where=where,
        measured_on=sentence,
        threads_note=note,
    )


def measure_alternating(
    paths: Sequence[PathLike],
    profile: Union[str, DeviceProfile],
    rounds: int = 9,
    *,
    reps: int = 5,
    threads: Optional[int] = None,
    warmup: int = 3,
    seed: int = 0,
    block: str = "min",
) -> AlternatingResult:
    """Time several models side by side (e.g. the unpruned and the pruned INT8 model for the build report).

    Sessions are created with ``session.intra_op.allow_spinning=0`` (alternating spinning sessions were 2-2.5x
    slower, DESIGN 6). Each round runs every model ``reps`` times in a shuffled order.

    Args:
        paths: the models.
        profile: name, path or loaded profile.
        rounds: rounds (the per-model median is over these).
        reps: runs per model per round (the round value is their median).
        threads: override the profile's threads (clipped to the host's cores).
        warmup: untimed runs per model before the first round.
        seed: order shuffling and input seed.
        block: a round's value is the best (``"min"``, default: robust to other processes, see
            :func:`edgeprune.latency.device_runner.alternate`) or the median (``"median"``) of its ``reps`` runs.

    Returns:
        :class:`AlternatingResult` with medians, spreads and paired ratios to the first model.
    """
    if not paths:
        raise MeasureError("measure_alternating needs at least one model")
    prof = load_profile(profile)
    thr, note = effective_threads(prof, threads)
    inf = prof.inference
    sessions, feeds = [], []
    for p in paths:
        s = _session(p, thr, allow_spinning=False)
        sessions.append(s)
        feeds.append(dr.synth_inputs(s, inf.batch, inf.seq_len, vocab_size=onnx_vocab_size(p), seed=seed))
    per = dr.alternate(sessions, feeds, rounds=rounds, reps=reps, warmup=warmup, seed=seed, block=block)

    def med(xs):
        return statistics.median(xs)

    def spread(xs):
        xs = sorted(xs)
        return dr.percentile(xs, 90) - dr.percentile(xs, 10)

    ratios = tuple(med([a / b for a, b in zip(r, per[0])]) for r in per)
    where, sentence = measured_on(prof)
    return AlternatingResult(
        paths=tuple(str(p) for p in paths),
        median_ms=tuple(med(r) for r in per),
        spread_ms=tuple(spread(r) for r in per),
        rounds_ms=tuple(tuple(r) for r in per),
        ratio_to_first=ratios,
        threads=thr,
        batch=inf.batch,
        seq_len=inf.seq_len,
        profile=prof.name,
        where=where,
        measured_on=sentence,
        threads_note=note,
        block=block,
    )


def measure_memory(
    onnx_path: PathLike,
    profile: Union[str, DeviceProfile],
    *,
    processes: int = 3,
    threads: Optional[int] = None,
    timeout: float = 600.0,
) -> MemoryStats:
    """Memory of a model, each sample in a fresh Python process (``device_runner.py --memory``), median reported.

    Args:
        onnx_path: the model.
        profile: name, path or loaded profile (threads, batch, seq_len).
        processes: fresh processes to run.
        threads: override the profile's threads (clipped to the host's cores).
        timeout: per process, seconds.

    Returns:
        :class:`MemoryStats`.
    """
    prof = load_profile(profile)
    thr, _ = effective_threads(prof, threads)
    if not Path(onnx_path).is_file():
        raise MeasureError(f"model file not found: {onnx_path}")
    cmd = [
        sys.executable,
        dr.__file__,
        "--memory",
        str(onnx_path),
        "--threads",
        str(thr),
        "--batch",
        str(prof.batch),
        "--seq-len",
        str(prof.seq_len),
        "--vocab-size",
        str(onnx_vocab_size(onnx_path)),
    ]
    samples = []
    for _ in range(max(1, processes)):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise MeasureError(f"memory probe failed for {onnx_path}: {out.stderr.strip()[-500:]}")
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return MemoryStats(
        session_mib=statistics.median(s["session_mib"] for s in samples),
        peak_mib=statistics.median(s["peak_mib"] for s in samples),
        baseline_mib=statistics.median(s["baseline_mib"] for s in samples),
        processes=len(samples),
        samples=tuple(samples),
    )


def measure_model(
    onnx_path: PathLike,
    profile: Union[str, DeviceProfile],
    *,
    memory: bool = True,
    processes: int = 3,
    threads: Optional[int] = None,
) -> dict[str, Any]:
    """Everything ``edgeprune measure`` prints: latency, memory, file size, settings and the honesty sentence."""
    prof = load_profile(profile)
    lat = measure_latency(onnx_path, prof, threads=threads)
    res: dict[str, Any] = {
        "model": str(onnx_path),
        "profile": prof.name,
        "measured_on": lat.measured_on,
        "where": lat.where,
        "settings": {"threads": lat.threads, "batch": lat.batch, "seq_len": lat.seq_len, "threads_note": lat.threads_note},
        "latency": lat.to_dict(),
        "size": file_size_bytes(onnx_path),
        "host": dr.host_info(),
    }
    if memory:
        res["memory"] = measure_memory(onnx_path, prof, processes=processes, threads=threads).to_dict()
    return res


def format_measurement(res: dict[str, Any]) -> str:
    """Human-readable table of :func:`measure_model` output."""
    lat = res["latency"]
    size = res["size"]
    rows = [
        ("model", res["model"]),
        ("profile", f"{res['profile']} (threads {lat['threads']}, batch {lat['batch']}, seq_len {lat['seq_len']})"),
        ("latency p50 / p90 / p99", f"{lat['p50_ms']:.3f} / {lat['p90_ms']:.3f} / {lat['p99_ms']:.3f} ms"),
        ("mean, cv", f"{lat['mean_ms']:.3f} ms, cv {lat['cv']:.3f} over {lat['n']} runs (after {lat['warmup']} warm-up)"),
        ("file size", f"{size['total_bytes'] / 2**20:.2f} MiB" + (" (incl. external data)" if size["external_files"] else "")),
    ]
    if "memory" in res:
        m = res["memory"]
        rows.append(
            ("memory", f"session {m['session_mib']:.1f} MiB, peak {m['peak_mib']:.1f} MiB over a "
             f"{m['baseline_mib']:.0f} MiB baseline (median of {m['processes']} processes)")
        )
    if lat.get("threads_note"):
        rows.append(("note", lat["threads_note"]))
    if lat["cv"] > 0.1:
        rows.append(("note", f"cv {lat['cv']:.2f} > 0.1: the machine was busy; trust p50 over the mean"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append(res["measured_on"])
    return "\n".join(lines)
