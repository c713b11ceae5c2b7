"""Synthetic device-runner timings for the latency-table schema tests (no ONNX files, no onnxruntime).

``patch_runner(monkeypatch, dr, host)`` replaces the runner's session, input and timing functions, its clock and its
host description with deterministic fakes, so ``dr.measure_folder`` runs on a folder that holds only a manifest.
The same fakes produced ``tests/data/lut_pre_schema.json`` with the runner as it was before the schema moved (commit
e350d4d, where ``measure_folder`` returned the assembled LUT; the generator is in commit 4472f6e); the tests feed
the same timings through today's runner and assembler and expect the same LUT.
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from types import SimpleNamespace
from typing import Any

DATE = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.timezone.utc)

PI4_HOST = {
    "cpu_model": "Cortex-A72", "arch": "aarch64", "logical_cores": 4, "arm_cores": ["Cortex-A72"],
    "device_model": "Raspberry Pi 4 Model B Rev 1.4", "emulated": False, "qemu_cpu": None, "python": "3.11.2",
    "os": "Linux 6.1.0-rpi7-rpi-v8", "loadavg": [0.31, 0.2, 0.12], "ort_version": "1.32.0", "numpy_version": "2.3.1",
}
X86_HOST = {
    "cpu_model": "Test Xeon", "arch": "x86_64", "logical_cores": 2, "arm_cores": [], "device_model": "",
    "emulated": False, "qemu_cpu": None, "python": "3.11.9", "os": "Linux 6.8", "loadavg": [3.5, 2.0, 1.0],
    "ort_version": "1.32.0", "numpy_version": "2.3.1",
}
PI4_PROFILE = {"name": "raspberrypi4", "display_name": "a Raspberry Pi 4", "arch": "aarch64",
               "cpu": {"core_type": "Cortex-A72", "count": 4, "ghz": 1.5}}


def _settings(threads: int) -> dict[str, Any]:
    return {"profile": "raspberrypi4", "threads": threads, "threads_requested": threads, "batch": 1, "seq_len": 128,
            "precision": "int8", "quant": {"format": "dynamic", "weight_type": "s8", "per_channel": True,
                                           "reduce_range": False}, "graph": "plain", "allow_spinning": False}


def _manifest(heads, *, ffn=None, ref=True, full=True, threads=4, rounds=5, reps=3) -> dict[str, Any]:
    files: dict[str, Any] = {"rest": "rest.onnx", "layers": [[f"layer{i:02d}_k{k:02d}.onnx" for k in range(h + 1)]
                                                              for i, h in enumerate(heads)]}
    if ref:
        files["ref"] = "ref.onnx"
    if full:
        files["full"] = "full.onnx"
    manifest: dict[str, Any] = {
        "format": "edgeprune-lut-export", "version": 1,
        "model": {"name": "tiny", "model_type": "bert", "heads_per_layer": list(heads), "head_size": 16,
                  "hidden_size": 16 * max(heads), "vocab_size": 30522, "layer_vocab_size": 1024},
        "settings": _settings(threads), "profile": PI4_PROFILE, "schedule": {"rounds": rounds, "reps": reps},
        "files": files, "export_seconds": 12.5,
    }
    if ffn is not None:
        sizes, widths = ffn
        manifest["ffn"] = {"sizes": list(sizes), "widths": [list(w) for w in widths]}
        files["ffn"] = [[None if w == full_w else f"layer{i:02d}_f{w:05d}.onnx" for w in ws]
                        for i, (full_w, ws) in enumerate(zip(sizes, widths))]
    return manifest


#: name -> (manifest, host, measure_folder keyword arguments)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # A Pi 4 measuring its own table with an FFN axis, 2 of the manifest's 4 threads, fitted entries.
    "pi4_ffn_threads": (
        _manifest([2, 3], ffn=([8, 12], [[0, 2, 4, 8], [0, 3, 6, 12]])), PI4_HOST, {"threads": 2},
    ),
    # An x86 host declaring itself emulated, heads only, no cut-vocabulary reference, no full model, raw entries,
    # the schedule overridden on the command line.
    "x86_declared_raw": (
        _manifest([3, 1, 2], ref=False, full=False, threads=1), X86_HOST,
        {"where": "emulated", "table": "raw", "rounds": 4, "reps": 2},
    ),
}


def _fake_ms(name: str, rnd: int, seed: int) -> float:
    """Plausible per-round timings: cost grows with kept heads / FFN width, a load burst hits round 1 of every
    group (paired differences must cancel it), and a per-file, per-round jitter keeps the fits inexact."""
    base = 1.0
    m = re.match(r"layer(\d+)_(k|f)(\d+)\.onnx", name)
    if m:
        base += 0.4 + 0.1 * int(m.group(1))
        base += 0.3 * int(m.group(3)) if m.group(2) == "k" else 0.02 * int(m.group(3))
    elif name == "full.onnx":
        base = 7.5
    elif name == "ref.onnx":
        base = 0.95
    jitter = (zlib.crc32(f"{name}:{rnd}:{seed}".encode()) % 1000) / 20000.0
    burst = 2.0 if rnd == 1 else 0.0
    return base + jitter + burst


class _Session:
    def __init__(self, path: Any) -> None:
        self.name = str(path).replace("\\", "/").rsplit("/", 1)[-1]


def _alternate(sessions, feeds, *, rounds=7, reps=5, warmup=3, seed=0, block="min", reps_each=None):
    return [[_fake_ms(s.name, r, seed) for r in range(rounds)] for s in sessions]


class _FakeDatetime:
    @staticmethod
    def now(tz=None):
        return DATE


def patch_runner(monkeypatch, dr, host: dict[str, Any]) -> None:
    """Replace the runner's ORT, clock and host functions by the fakes (``monkeypatch`` = pytest's fixture)."""
    monkeypatch.setattr(dr, "make_session", lambda path, threads, **kw: _Session(path))
    monkeypatch.setattr(dr, "synth_inputs", lambda session, batch, seq_len, **kw: {})
    monkeypatch.setattr(dr, "alternate", _alternate)
    monkeypatch.setattr(dr, "host_info", lambda: dict(host))
    monkeypatch.setattr(dr, "time", SimpleNamespace(perf_counter=lambda: 100.0, perf_counter_ns=lambda: 0))
    monkeypatch.setattr(dr, "_dt", SimpleNamespace(datetime=_FakeDatetime, timezone=dt.timezone))
