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
    "RealLengthResult",
    "effective_threads",
    "file_size_bytes",
    "format_measurement",
    "measure_alternating",
    "measure_latency",
    "measure_memory",
    "measure_model",
    "measure_real_lengths",
    "measured_on",
    "onnx_vocab_size",
    "strided_subset",
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


@dataclass(frozen=True)
class RealLengthResult:
    """Models timed at batch 1 on real texts, each at its own tokenized length (see :func:`measure_real_lengths`).

    Attributes:
        paths: the models, in the order given.
        latency_ms: per model, ``{p50, p90, p99, mean, n}`` over one run per text (ms).
        ratio_p50_to_first: per model, median over texts of (this model / first model) on the same text: paired,
            robust to load drift.
        lengths_tokens: the tokenized length of every text used (what each run was fed; no padding).
        tokens: ``{p50, p90, min, max, mean}`` of ``lengths_tokens``.
        texts_total, texts_used, stride: the texts given, the ones used (every ``stride``-th), the stride.
        max_length: truncation length (the profile's ``seq_len`` unless overridden).
        at_max_length: texts whose tokenized length reached ``max_length`` (cut there, or exactly that long).
    """

    paths: tuple[str, ...]
    latency_ms: tuple[dict, ...]
    ratio_p50_to_first: tuple[float, ...]
    lengths_tokens: tuple[int, ...] = field(repr=False)
    tokens: dict
    texts_total: int
    texts_used: int
    stride: int
    max_length: int
    at_max_length: int
    threads: int
    profile: str
    where: str
    measured_on: str
    threads_note: str = ""

    def to_dict(self, *, with_lengths: bool = False) -> dict[str, Any]:
        """JSON-ready dict; the per-text lengths only when ``with_lengths``."""
        d = asdict(self)
        if with_lengths:
            d["lengths_tokens"] = list(self.lengths_tokens)
        else:
            del d["lengths_tokens"]
        return d


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


def strided_subset(n: int, max_items: int) -> tuple[list[int], int]:
    """Indices of every k-th of ``n`` items so that at most ``max_items`` remain (``k = ceil(n / max_items)``).

    Strided rather than the first ``max_items``: a data file is often sorted (by class, source or length), and a
    stride keeps the whole file's length distribution.

    Returns:
        ``(indices, stride)``.
    """
    if max_items < 1:
        raise MeasureError(f"max_texts must be >= 1, got {max_items}")
    stride = max(1, -(-n // max_items))
    return list(range(0, n, stride)), stride


def measure_real_lengths(
    paths: Sequence[PathLike],
    profile: Union[str, DeviceProfile],
    tokenizer: Any,
    texts: Sequence[str],
    *,
    text_pairs: Optional[Sequence[str]] = None,
    max_texts: int = 300,
    max_length: Optional[int] = None,
    threads: Optional[int] = None,
    warmup: int = 5,
    seed: int = 0,
) -> RealLengthResult:
    """Latency at batch 1 with every input at its real tokenized length (no padding), over a list of texts.

    The fixed-length measurements (:func:`measure_latency`, :func:`measure_alternating`) feed every model the
    profile's padded ``seq_len``: the worst case, and what a fixed-shape device graph computes. An app that
    tokenizes one request at a time without padding runs much shorter inputs; this is that latency. Each text is
    tokenized alone (truncated at ``max_length``, never padded) and every model runs it once, in a shuffled order
    per text (:func:`edgeprune.latency.device_runner.alternate` with one round), so the models see the same texts
    under the same load drift and the paired ratio stays meaningful.

    Args:
        paths: the models (e.g. dense INT8 first, then the pruned file); their inputs are named like the
            tokenizer's outputs (a missing ``token_type_ids`` is fed as zeros).
        profile: name, path or loaded profile (threads; ``seq_len`` is the default truncation).
        tokenizer: the models' tokenizer.
        texts: the texts (e.g. a data split's); at most ``max_texts`` are used, every k-th (:func:`strided_subset`).
        text_pairs: second segments for pair tasks, aligned with ``texts``.
        max_texts: how many texts at most (each costs one run per model).
        max_length: truncation length (default: the profile's ``seq_len``, the length the bundle truncates at).
        threads: override the profile's threads (clipped to the host's cores).
        warmup: untimed runs per model before timing, on the first texts of the subset.
        seed: per-text order shuffling.

    Returns:
        :class:`RealLengthResult`.

    Raises:
        MeasureError: no texts, a missing file, or ORT cannot load a model.
    """
    from edgeprune.task.predict import tokenize

    if not paths:
        raise MeasureError("measure_real_lengths needs at least one model")
    if not texts:
        raise MeasureError("measure_real_lengths needs at least one text")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise MeasureError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
    prof = load_profile(profile)
    thr, note = effective_threads(prof, threads)
    length = int(max_length or prof.seq_len)
    idx, stride = strided_subset(len(texts), max_texts)
    # One session spins only while alone: alternating spinning sessions steal each other's cores (DESIGN 6).
    sessions = [_session(p, thr, allow_spinning=len(paths) == 1) for p in paths]
    feeds_per_model = []
    for s in sessions:
        names = [i.name for i in s.get_inputs()]
        feeds_per_model.append([
            tokenize(tokenizer, [texts[i]], [text_pairs[i]] if text_pairs is not None else None, names, length)
            for i in idx
        ])
    # The length each run was fed: a single text is padded to itself, i.e. not at all.
    lengths = [int(f["input_ids"].shape[1]) if "input_ids" in f else int(next(iter(f.values())).shape[1])
               for f in feeds_per_model[0]]
    for s, feeds in zip(sessions, feeds_per_model):
        for f in feeds[: max(0, warmup)]:
            s.run(None, f)
    per_model: list[list[float]] = [[] for _ in sessions]
    for j in range(len(idx)):
        per = dr.alternate(sessions, [feeds[j] for feeds in feeds_per_model], rounds=1, reps=1, warmup=0,
                           seed=seed + j)
        for m, r in enumerate(per):
            per_model[m].append(r[0])

    def stats(xs: list[float]) -> dict[str, float]:
        s = dr.summarize(xs)
        return {"p50": round(s["p50_ms"], 4), "p90": round(s["p90_ms"], 4), "p99": round(s["p99_ms"], 4),
                "mean": round(s["mean_ms"], 4), "n": int(s["n"])}

    ls = sorted(lengths)
    where, sentence = measured_on(prof)
    return RealLengthResult(
        paths=tuple(str(p) for p in paths),
        latency_ms=tuple(stats(xs) for xs in per_model),
        ratio_p50_to_first=tuple(statistics.median(a / b for a, b in zip(xs, per_model[0])) for xs in per_model),
        lengths_tokens=tuple(lengths),
        tokens={"p50": dr.percentile(ls, 50), "p90": dr.percentile(ls, 90), "min": ls[0], "max": ls[-1],
                "mean": round(statistics.fmean(ls), 2)},
        texts_total=len(texts),
        texts_used=len(idx),
        stride=stride,
        max_length=length,
        at_max_length=sum(1 for n in lengths if n >= length),
        threads=thr,
        profile=prof.name,
        where=where,
        measured_on=sentence,
        threads_note=note,
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
