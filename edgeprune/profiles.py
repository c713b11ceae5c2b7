"""Device profiles: target devices as data (``profiles/*.toml``), loaded into typed frozen dataclasses.

A profile says what the device is (arch, cores, ISA, RAM), how to run inference on it (threads, batch, sequence
length), which INT8 preset fits its ISA (with the reason beside each choice) and which QEMU CPU model emulates it.
No code branches on a profile's name: everything device-specific is a field here.

Loading is strict: an unknown key, a value of the wrong type or a missing required field raises
:class:`~edgeprune.errors.ProfileError` naming the file and the dotted field path (``inference.threads``), because a
typo in a profile silently falling back to a default would make every latency number wrong.

This module is pure Python (no torch, no onnxruntime).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import ProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "CpuSpec",
    "DeviceProfile",
    "InferenceSettings",
    "IsaFlags",
    "MemorySpec",
    "QuantPreset",
    "list_profiles",
    "load_profile",
    "profile_dirs",
]

QUANT_FORMATS = ("dynamic", "none")  # "none" = ship FP32
# Static (QDQ) quantization needs calibration data, which no stage passes yet: a profile asking for it is refused at
# load (and it measured 2.2x slower than dynamic on AVX2 hosts, DESIGN 5).
UNSUPPORTED_QUANT_FORMATS = {"static": "static (QDQ) quantization needs calibration data, which edgeprune does not "
                                       "wire in yet; use format = \"dynamic\" (the measured default)"}
WEIGHT_TYPES = ("s8", "u8")
GRAPHS = ("plain", "fused")  # how the ONNX graph is prepared before quantization (QuantPreset.graph)
ARCHES = ("aarch64", "x86_64")


@dataclass(frozen=True)
class CpuSpec:
    """The CPU cores inference runs on.

    Attributes:
        count: number of cores the inference may use.
        core_type: marketing name of the core (``Cortex-A72``).
        ghz: nominal clock in GHz.
    """

    count: int
    core_type: str
    ghz: float

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count: must be >= 1")
        if self.ghz <= 0:
            raise ValueError("ghz: must be > 0")


@dataclass(frozen=True)
class IsaFlags:
    """INT8-relevant instruction-set features (they decide which ORT kernels run).

    Attributes:
        neon: ARM Advanced SIMD (ARMv8 baseline; ORT's U8X8 kernels).
        dotprod: ARMv8.2 SDOT/UDOT (faster INT8 GEMM).
        fp16: ARMv8.2 half-precision arithmetic.
        i8mm: ARMv8.6 SMMLA/UMMLA INT8 matrix multiply.
        avx2: x86 AVX2.
        avx512_vnni: x86 VNNI (no U8S8 saturation, so reduce_range is never needed).
    """

    neon: bool
    dotprod: bool
    fp16: bool
    i8mm: bool
    avx2: bool = False
    avx512_vnni: bool = False

    def enabled(self) -> list[str]:
        """Names of the flags that are set, in declaration order."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class MemorySpec:
    """RAM range of the device family in GB (boards come in several sizes)."""

    ram_gb_min: float
    ram_gb_max: float

    def __post_init__(self) -> None:
        if not 0 < self.ram_gb_min <= self.ram_gb_max:
            raise ValueError("ram_gb_min: must be > 0 and <= ram_gb_max")


@dataclass(frozen=True)
class InferenceSettings:
    """How inference is run and measured on the device.

    Attributes:
        threads: ORT intra-op threads.
        batch: batch size of a request.
        seq_len: padded sequence length; latency tables are only valid for this length.
        warmup: runs discarded before timing (first runs pay for allocation and page faults).
        min_runs: timed runs at least ...
        min_seconds: ... and at least this much timed wall-clock, whichever takes longer.
    """

    threads: int
    threads_reason: str
    batch: int
    batch_reason: str
    seq_len: int
    seq_len_reason: str
    warmup: int = 5
    min_runs: int = 20
    min_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in ("threads", "batch", "min_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.seq_len < 2:
            raise ValueError("seq_len: must be >= 2")
        if self.warmup < 0:
            raise ValueError("warmup: must be >= 0")
        if self.min_seconds < 0:
            raise ValueError("min_seconds: must be >= 0")


@dataclass(frozen=True)
class QuantPreset:
    """The ONNX Runtime quantization preset for the device's ISA, each choice with its reason.

    Attributes:
        format: ``dynamic`` (INT8 weights, activations quantized at run time) or ``none`` (FP32). ``static`` is
            refused until calibration data is wired in.
        weight_type: ``s8`` or ``u8``.
        per_channel: one scale per output channel of each weight matrix.
        reduce_range: 7-bit weights (only useful on x86 without VNNI).
        graph: ``plain`` (the exported graph, quantized; ONNX Runtime applies its own fusions when a session loads
            it, on every device) or ``fused`` (the ORT transformers optimizer's offline fusions: Attention,
            SkipLayerNormalization, BiasGelu..., with the fused ``num_heads`` checked against the plan). The shipped
            file and every latency-table sub-model are made the same way.
    """

    format: str
    format_reason: str
    weight_type: str
    weight_type_reason: str
    per_channel: bool
    per_channel_reason: str
    reduce_range: bool
    reduce_range_reason: str
    graph: str = "plain"
    graph_reason: str = ("measured on an x86 AVX-512-VNNI host (MiniLM-L6 INT8, seq 128, 2 threads, 100 alternating "
                         "rounds): the offline-fused graph was 1.16-1.18x slower than the plain one; ORT still fuses "
                         "at session load")

    def __post_init__(self) -> None:
        if self.graph not in GRAPHS:
            raise ValueError(f"graph: must be one of {list(GRAPHS)}, got {self.graph!r}")
        if self.format in UNSUPPORTED_QUANT_FORMATS:
            raise ValueError(f"format: {UNSUPPORTED_QUANT_FORMATS[self.format]}")
        if self.format not in QUANT_FORMATS:
            raise ValueError(f"format: must be one of {list(QUANT_FORMATS)}, got {self.format!r}")
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"weight_type: must be one of {list(WEIGHT_TYPES)}, got {self.weight_type!r}")

    @property
    def precision(self) -> str:
        """``int8`` or ``fp32``: what a latency table measured with this preset is valid for."""
        return "fp32" if self.format == "none" else "int8"

    def short(self) -> str:
        """A compact one-line label, e.g. ``dynamic s8 per-channel``."""
        if self.format == "none":
            return "fp32 (no quantization)"
        parts = [self.format, self.weight_type, "per-channel" if self.per_channel else "per-tensor"]
        if self.reduce_range:
            parts.append("reduce-range")
        if self.graph == "fused":
            parts.append("fused graph")
        return " ".join(parts)

    def to_record(self) -> dict[str, Any]:
        """The choices without their reasons (what plan.json, latency tables and edgeprune.json record)."""
        return {"format": self.format, "weight_type": self.weight_type, "per_channel": self.per_channel,
                "reduce_range": self.reduce_range, "graph": self.graph}

    @classmethod
    def default_int8(cls, graph: str = "plain") -> "QuantPreset":
        """The measured default INT8 preset (DESIGN 5: dynamic, S8 weights, per-channel, no reduce_range)."""
        return cls(format="dynamic", format_reason="the measured default: static QDQ was 2.2x slower on AVX2",
                   weight_type="s8", weight_type_reason="signed weights: fastest on AVX2 and ARM",
                   per_channel=True, per_channel_reason="best accuracy at the same speed (cosine 0.991 vs 0.964)",
                   reduce_range=False, reduce_range_reason="costs accuracy; only for x86 without VNNI", graph=graph)

    def for_precision(self, precision: str | None) -> "QuantPreset":
        """This preset for ``precision``: ``None`` = as it is; ``fp32`` = no quantization (same graph); ``int8`` =
        this preset, or the default INT8 preset when this one ships FP32."""
        if precision is None:
            return self
        precision = precision.lower()
        if precision == "fp32":
            return dataclasses.replace(self, format="none", format_reason="FP32 requested")
        if precision != "int8":
            raise ValueError(f"precision must be 'int8' or 'fp32', got {precision!r}")
        return self if self.format != "none" else QuantPreset.default_int8(self.graph)


@dataclass(frozen=True)
class DeviceProfile:
    """A target device, loaded from ``profiles/<name>.toml`` by :func:`load_profile`.

    Attributes:
        name: short id (file stem), used by ``--profile``.
        display_name: noun phrase with its article, as sentences use it ("a Raspberry Pi 4").
        description: one line for listings.
        arch: ``aarch64`` or ``x86_64`` (as ``platform.machine()`` spells it on Linux).
        cpu, isa, memory, inference, quant: see the section dataclasses.
        qemu_cpu: QEMU CPU model for emulated checks (``None`` for x86 profiles). Never ``max``.
        latency_table: optional device-measured LUT JSON (resolved relative to the profile file).
        source: the file this profile was loaded from.
    """

    name: str
    display_name: str
    description: str
    arch: str
    cpu: CpuSpec
    isa: IsaFlags
    memory: MemorySpec
    inference: InferenceSettings
    quant: QuantPreset
    qemu_cpu: Optional[str] = None
    latency_table: Optional[str] = None
    source: Optional[Path] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f"arch: must be one of {list(ARCHES)}, got {self.arch!r}")
        if self.qemu_cpu == "max":
            # "max" enables SME, which sends ORT down the KleidiAI path that gave wrong INT8 results under qemu 7.2.
            raise ValueError("qemu_cpu: 'max' is not allowed (SME/KleidiAI gives wrong INT8 results under QEMU)")
        if self.arch == "aarch64" and not self.qemu_cpu:
            raise ValueError("qemu_cpu: required for aarch64 profiles (emulated checks need a core model)")

    # Flat accessors the rest of the code uses most.
    @property
    def threads(self) -> int:
        return self.inference.threads

    @property
    def batch(self) -> int:
        return self.inference.batch

    @property
    def seq_len(self) -> int:
        return self.inference.seq_len

    @property
    def precision(self) -> str:
        return self.quant.precision

    def latency_table_path(self) -> Optional[Path]:
        """The device-measured LUT path, resolved relative to the profile file, or ``None``."""
        if not self.latency_table:
            return None
        p = Path(self.latency_table).expanduser()
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p

    def summary(self) -> dict[str, Any]:
        """The few fields that say which device a measurement stands for (latency tables, measurements)."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "arch": self.arch,
            "cpu": {"count": self.cpu.count, "core_type": self.cpu.core_type, "ghz": self.cpu.ghz},
            "qemu_cpu": self.qemu_cpu,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (JSON-friendly) for reports and LUT provenance."""
        d = dataclasses.asdict(self)
        d["source"] = str(self.source) if self.source else None
        return d


# ---------------------------------------------------------------------------------------------------------------------
# Strict TOML -> dataclass conversion


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(True, inner) for ``Optional[X]`` / ``X | None``; (False, tp) otherwise."""
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, tp


def _convert(value: Any, tp: Any, where: str, file: str) -> Any:
    optional, tp = _is_optional(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ProfileError(f"{file}: field '{where}' must be a table ([{where}]), got {type(value).__name__}")
        return _build(tp, value, where, file)
    if tp is Path:
        tp = str
    ok: bool
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a new field type must be handled above
        raise TypeError(f"unsupported profile field type {tp!r}")
    if not ok:
        raise ProfileError(
            f"{file}: field '{where}' must be {tp.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, data: dict, prefix: str, file: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    dotted = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProfileError(
            f"{file}: unknown field '{dotted(unknown[0])}' (allowed here: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if not has_default:
                raise ProfileError(f"{file}: missing required field '{dotted(name)}'")
            continue
        kwargs[name] = _convert(data[name], hints[name], dotted(name), file)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        # __post_init__ messages start with the field name: turn it into the dotted path.
        msg = str(exc)
        head, _, rest = msg.partition(":")
        raise ProfileError(f"{file}: field '{dotted(head)}' is invalid:{rest}") from None


def parse_profile(data: dict, file: str = "<profile>", source: Optional[Path] = None) -> DeviceProfile:
    """Build a :class:`DeviceProfile` from already-parsed TOML data (strict; see the module docstring).

    Args:
        data: the TOML document as a dict.
        file: the name used in error messages.
        source: the file it came from (for resolving ``latency_table``).

    Returns:
        The profile.

    Raises:
        ProfileError: unknown key, wrong type, missing field or invalid value (message names file and field).
    """
    prof = _build(DeviceProfile, data, "", file)
    return dataclasses.replace(prof, source=source)


# ---------------------------------------------------------------------------------------------------------------------
# Finding shipped profiles


def profile_dirs() -> list[Path]:
    """Folders searched for profiles by name, first match wins.

    1. ``$EDGEPRUNE_PROFILES`` (``os.pathsep``-separated), for user-defined devices;
    2. ``profiles/`` next to the package in a source checkout (also an editable install);
    3. ``edgeprune/_profiles/`` inside an installed wheel (needs the package-data mapping in pyproject.toml).
    """
    dirs: list[Path] = []
    env = os.environ.get("EDGEPRUNE_PROFILES")
    if env:
        dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    dirs.append(here.parent / "profiles")
    dirs.append(here / "_profiles")
    return [d for d in dirs if d.is_dir()]


def _find(name: str) -> Path:
    for d in profile_dirs():
        p = d / f"{name}.toml"
        if p.is_file():
            return p
    known = ", ".join(list_profiles()) or "none found"
    raise ProfileError(f"unknown profile '{name}' (shipped profiles: {known}); pass a name or a path to a .toml file")


def load_profile(name_or_path: Union[str, Path, DeviceProfile]) -> DeviceProfile:
    """Load a device profile by name (``raspberrypi4``) or by path to a ``.toml`` file.

    Args:
        name_or_path: a shipped profile's name, a path to a TOML file, or an already loaded profile (returned as is).

    Returns:
        The typed, validated profile.

    Raises:
        ProfileError: the profile does not exist, is not valid TOML, or is malformed (message names file and field).
    """
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    s = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or s.endswith(".toml") or os.sep in s or "/" in s
    path = Path(s).expanduser() if looks_like_path else _find(s)
    if not path.is_file():
        raise ProfileError(f"profile file not found: {path}")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    prof = parse_profile(data, file=str(path), source=path.resolve())
    if not looks_like_path and prof.name != path.stem:
        # A name lookup must find the profile that calls itself that name.
        raise ProfileError(f"{path}: field 'name' is {prof.name!r} but the file is named {path.stem!r}.toml")
    return prof


def list_profiles() -> list[str]:
    """Names of all profiles found in :func:`profile_dirs`, sorted, without duplicates."""
    names: set[str] = set()
    for d in profile_dirs():
        names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def profiles_table() -> list[dict[str, Any]]:
    """One row per shipped profile: name, arch, cores, threads, seq_len, quant preset, qemu cpu (for listings)."""
    rows = []
    for name in list_profiles():
        p = load_profile(name)
        rows.append(
            {
                "name": p.name,
                "arch": p.arch,
                "cores": f"{p.cpu.count}x {p.cpu.core_type} {p.cpu.ghz:g} GHz",
                "threads": p.threads,
                "seq_len": p.seq_len,
                "quant": p.quant.short(),
                "qemu_cpu": p.qemu_cpu or "-",
                "isa": ",".join(p.isa.enabled()),
            }
        )
    return rows


def format_profiles_table(rows: Optional[list[dict[str, Any]]] = None) -> str:
    """Plain-text table of :func:`profiles_table` rows."""
    rows = profiles_table() if rows is None else rows
    cols = ["name", "arch", "cores", "threads", "seq_len", "quant", "qemu_cpu"]
    width = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines.append("  ".join("-" * width[c] for c in cols))
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)
