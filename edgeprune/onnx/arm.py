"""Correctness checks of an ONNX model on aarch64 onnxruntime, emulated with qemu-user on an x86-64 host.

``scripts/setup_arm_emu.sh`` builds an aarch64 Debian sysroot with onnxruntime + numpy and an ``arm-python``
launcher (``qemu-aarch64-static -L SYSROOT``). :func:`verify_arm` then

1. makes a fixed set of inputs on the host (seeded; shapes from the profile; one padded row so masks matter) and
   saves them as ``.npz``,
2. runs the model under the profile's QEMU CPU model (``cortex-a72`` for a Pi 4, ``cortex-a76`` for a Pi 5,
   ``neoverse-n1`` for A78/X1-class cores; never ``max``) with a small script that needs only onnxruntime + numpy,
3. compares the ARM outputs with a reference computed on this host.

Tolerance (why it is not "ARM == x86"): ARM INT8 results differ from x86 INT8 results by 0.02-0.06 on BERT logits,
and the error is on the x86 side (AVX2 U8S8 kernels saturate int16 pair sums; ARM NEON/dotprod kernels do not), see
DESIGN.md section 7. So the ARM run is compared with the **FP32** model on this host, and the allowed error is set
by what the same quantized file shows on this host::

    |ARM - FP32| <= atol + rtol * max|FP32| + host_factor * max|x86 INT8 - FP32|      (per output, max over elements)

with ``atol = 1e-3``, ``rtol = 1e-3`` (float kernel and exp/erf approximations differ between NEON and AVX2) and
``host_factor = 2`` (the ARM integer GEMMs are exact, so ARM's quantization error is about the x86 one or smaller;
twice it leaves room for one-step rounding differences in the dynamic activation scales; a broken kernel is off by
O(1)). When the model itself is FP32 the last term is 0. When no FP32 model is available the reference is the same
file on this host, a weaker check with the x86-saturation margin ``0.05 + 0.05 * max|ref|`` instead of the last term.
Argmax agreement (top class per row) with the reference is reported beside it, not gated on: random inputs on a
random model sit near decision boundaries.

Emulated timings are meaningless (qemu-user is 60-300x slower than the device): this module checks correctness only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from edgeprune.errors import EmulationError, VerificationError

__all__ = [
    "ATOL",
    "DEFAULT_TEXTS",
    "HOST_FACTOR",
    "RTOL",
    "ArmCheckResult",
    "OutputCheck",
    "arm_root",
    "find_arm_python",
    "find_fp32_reference",
    "fp32_reference_from_source",
    "make_inputs",
    "make_text_inputs",
    "run_on_arm",
    "run_on_host",
    "setup_command",
    "verify_arm",
]

#: Absolute part of the tolerance: float kernels (NEON vs AVX2 FMA order, exp/erf/tanh approximations).
ATOL = 1e-3
#: Relative part, times max|reference| of the output.
RTOL = 1e-3
#: Allowed ARM quantization error as a multiple of the same file's quantization error on this host.
HOST_FACTOR = 2.0
#: When the reference is the same INT8 file on x86 (no FP32 model): margin for AVX2 U8S8 saturation (DESIGN 7).
X86_INT8_ATOL = 0.05
X86_INT8_RTOL = 0.05
#: File names the bundle writer may use for the FP32 model kept next to the shipped one (first match wins).
FP32_CANDIDATES = ("model.fp32.onnx", "model_fp32.onnx", "fp32/model.onnx", "model.optimized.onnx", "model.opt.onnx")
#: ONNX ops that only appear in quantized graphs.
_QUANT_OPS = {
    "MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QAttention", "QuantizeLinear", "DequantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QEmbedLayerNormalization", "ConvInteger",
}
_NOTE = "correctness only, emulated timings are meaningless (qemu-user runs 60-300x slower than the device)"

# The script the emulated Python runs. It needs only onnxruntime + numpy (the sysroot has nothing else), reads
# job.json + in_<k>.npz from its folder and writes out_<k>.npz + info.json there.
_GUEST_SCRIPT = r'''
import json, platform, struct, sys, time
from pathlib import Path
import numpy as np
import onnxruntime as ort

d = Path(sys.argv[1])
job = json.loads((d / "job.json").read_text())
# AT_HWCAP(16)/AT_HWCAP2(26) as qemu reports them for QEMU_CPU: what ORT's kernel dispatch sees.
aux = dict(struct.iter_unpack("<QQ", Path("/proc/self/auxv").read_bytes()))
hw, hw2 = aux.get(16, 0), aux.get(26, 0)
isa = {"asimd": bool(hw >> 1 & 1), "asimdhp(fp16)": bool(hw >> 10 & 1), "asimddp(dotprod)": bool(hw >> 20 & 1),
       "sve": bool(hw >> 22 & 1), "i8mm": bool(hw2 >> 13 & 1), "sme": bool(hw2 >> 23 & 1)}
so = ort.SessionOptions()
so.intra_op_num_threads = job["threads"]
so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
so.log_severity_level = 3
if job.get("custom_ops"):  # a string-in model.e2e.*: the aarch64 onnxruntime-extensions wheel's tokenizer ops
    import onnxruntime_extensions
    so.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    job["onnxruntime_extensions"] = onnxruntime_extensions.__version__
sess = ort.InferenceSession(job["model"], sess_options=so, providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
t0 = time.perf_counter()
for k in range(job["n"]):
    with np.load(d / f"in_{k}.npz", allow_pickle=False) as z:
        feed = {name: z[f"i{j}"] for j, name in enumerate(job["inputs"])}
    outs = sess.run(None, feed)
    np.savez(d / f"out_{k}.npz", **{f"o{j}": np.asarray(o) for j, o in enumerate(outs)})
info = {"machine": platform.machine(), "onnxruntime": ort.__version__, "numpy": np.__version__,
        "onnxruntime_extensions": job.get("onnxruntime_extensions"),
        "python": platform.python_version(), "outputs": names, "isa": isa, "run_seconds": time.perf_counter() - t0}
(d / "info.json").write_text(json.dumps(info))
'''


# ---------------------------------------------------------------------------------------------------------------------
# locating the emulator
# ---------------------------------------------------------------------------------------------------------------------
def arm_root() -> Path:
    """Folder of the emulation sysroot: ``$EDGEPRUNE_ARM_ROOT`` or ``~/.cache/edgeprune/arm64``."""
    env = os.environ.get("EDGEPRUNE_ARM_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeprune" / "arm64"


def setup_command(root: Optional[Path] = None) -> str:
    """The shell command that installs qemu-user-static and builds the sysroot at ``root`` (about 1 minute)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "setup_arm_emu.sh"
    cmd = f"bash {script}" if script.is_file() else "bash scripts/setup_arm_emu.sh  # from the edgeprune source tree"
    root = Path(root) if root is not None else arm_root()
    if root != Path.home() / ".cache" / "edgeprune" / "arm64":
        cmd = cmd.replace(".sh", f".sh {root}", 1)
    return cmd


def find_arm_python(root: Optional[Union[str, Path]] = None) -> Path:
    """The ``arm-python`` launcher of a finished sysroot.

    Args:
        root: sysroot folder (default :func:`arm_root`).

    Returns:
        Path of the launcher script.

    Raises:
        EmulationError: qemu-user or the sysroot is missing; the message holds the command that installs it.
    """
    root = Path(root).expanduser() if root is not None else arm_root()
    if shutil.which("qemu-aarch64-static") is None:
        raise EmulationError(
            "qemu-aarch64-static not found: the aarch64 check needs qemu-user. Install it and the sysroot with\n"
            f"    {setup_command(root)}\n(or only qemu: `sudo apt-get install qemu-user-static`)"
        )
    launcher = root / "arm-python"
    if not launcher.is_file() or not (root / "rootfs" / "usr" / "bin" / "python3.11").exists():
        raise EmulationError(
            f"no aarch64 sysroot at {root} (set EDGEPRUNE_ARM_ROOT to use another folder). Build it (about 1 minute, "
            f"~370 MB) with\n    {setup_command(root)}"
        )
    return launcher


def qemu_cpu_for(profile: Any, override: Optional[str] = None) -> tuple[str, str, Optional[Any]]:
    """(profile name, QEMU CPU model, loaded profile or None) for a profile name, path or object."""
    from edgeprune.profiles import load_profile

    prof = load_profile(profile)
    if not prof.qemu_cpu and override:
        return prof.name, override, prof
    if not prof.qemu_cpu:
        raise EmulationError(
            f"profile {prof.name!r} ({prof.arch}) has no qemu_cpu: it is not an ARM device. Use an ARM profile "
            f"(raspberrypi4, raspberrypi5, jetson-orin-nano, android-arm64) or pass --qemu-cpu"
        )
    return prof.name, prof.qemu_cpu, prof


# ---------------------------------------------------------------------------------------------------------------------
# inputs and runs
# ---------------------------------------------------------------------------------------------------------------------
def _onnx_model(path: Path) -> Optional[Any]:
    """The ONNX graph without weights, or None for ``.ort`` files (which the onnx package cannot read)."""
    if path.suffix == ".ort":
        return None
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _is_quantized(path: Path) -> Optional[bool]:
    model = _onnx_model(path)
    if model is None:
        return None
    return any(n.op_type in _QUANT_OPS for n in model.graph.node)


def _vocab_size(path: Path, id_input: str) -> Optional[int]:
    """Rows of the embedding table that ``id_input`` indexes: config.json's vocab_size, else the graph's initializer."""
    cfg = path.parent / "config.json"
    if cfg.is_file():
        try:
            v = json.loads(cfg.read_text()).get("vocab_size")
            if isinstance(v, int) and v > 0:
                return v
        except (OSError, ValueError):
            pass
    model = _onnx_model(path)
    if model is None:
        return None
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if id_input in node.input:
            # Gather(data=table, indices=ids) or EmbedLayerNormalization(ids, segment_ids, word_embedding, ...):
            # the first 2-D initializer among the node's inputs is the word-embedding table (vocab, hidden).
            for name in node.input:
                if name != id_input and len(shapes.get(name, [])) == 2:
                    return int(shapes[name][0])
    return None


def make_inputs(
    onnx_path: Union[str, Path],
    *,
    batch: int = 2,
    seq_len: int = 128,
    num_batches: int = 2,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """A fixed, seeded set of input feeds for any ONNX classifier (BERT-style names) or plain float graph.

    Integer inputs: ``*mask*`` -> ones with the second half of the last row padded (0), ``*type*``/``*segment*`` ->
    zeros, ``*position*`` -> ``arange``, others (token ids) -> uniform in ``[min(5, vocab-1), vocab)`` with 0 at
    padded positions. Float inputs -> standard normal. Dynamic axes: the first is the batch, the second the sequence.

    Args:
        onnx_path: ``.onnx`` or ``.ort`` model.
        batch: rows per feed.
        seq_len: sequence length (second dynamic axis).
        num_batches: number of feeds.
        seed: RNG seed.

    Returns:
        List of ``{input name: numpy array}`` feeds.
    """
    import numpy as np
    import onnxruntime as ort

    path = Path(onnx_path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds: list[dict[str, Any]] = []
    for _ in range(num_batches):
        feed: dict[str, Any] = {}
        pad_start = seq_len // 2 if seq_len > 2 else seq_len
        for inp in sess.get_inputs():
            shape, dyn = [], 0
            for dim in inp.shape:
                if isinstance(dim, int) and dim > 0:
                    shape.append(dim)
                else:
                    shape.append(batch if dyn == 0 else seq_len)
                    dyn += 1
            lname = inp.name.lower()
            if "float" in inp.type or "double" in inp.type:
                dtype = np.float64 if "double" in inp.type else (np.float16 if "float16" in inp.type else np.float32)
                feed[inp.name] = rng.standard_normal(shape).astype(dtype)
                continue
            dtype = np.int32 if "int32" in inp.type else np.int64
            if "mask" in lname:
                arr = np.ones(shape, dtype=dtype)
                if arr.ndim == 2 and arr.shape[0] > 1:
                    arr[-1, pad_start:] = 0
            elif "type" in lname or "segment" in lname:
                arr = np.zeros(shape, dtype=dtype)
            elif "position" in lname:
                arr = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
            else:
                vocab = _vocab_size(path, inp.name) or 100
                arr = rng.integers(min(5, vocab - 1), vocab, size=shape).astype(dtype)
                if arr.ndim == 2 and arr.shape[0] > 1:
                    arr[-1, pad_start:] = 0
            feed[inp.name] = arr
        feeds.append(feed)
    return feeds


#: Sentences used when the model folder has a tokenizer and no texts are given: short and long, both polarities, so
#: real logits (not the near-zero ones random token ids give) and padded rows are compared.
DEFAULT_TEXTS = (
    "A gripping, beautifully acted film that stays with you long after the credits.",
    "Dull, predictable and far too long.",
    "The plot is thin but the performances are wonderful.",
    "I wanted to like it, yet nothing in it works.",
    "One of the funniest and warmest comedies of the year, with a script that never talks down to its audience.",
    "Not bad.",
    "A tedious mess of clichés that wastes a talented cast on a story nobody asked for.",
    "It is what it is: a pleasant, forgettable afternoon at the movies.",
)


def make_text_inputs(
    onnx_path: Union[str, Path],
    texts: Sequence[str],
    *,
    tokenizer_dir: Optional[Union[str, Path]] = None,
    batch: int = 2,
    seq_len: int = 128,
) -> list[dict[str, Any]]:
    """Feeds of real tokenised sentences (padded to ``seq_len``) for the model's inputs.

    Args:
        onnx_path: ``.onnx`` or ``.ort`` model (its input names and integer types are read from a session).
        texts: sentences; feed ``i`` holds ``texts[i*batch:(i+1)*batch]``.
        tokenizer_dir: folder with the tokenizer files (default: the model's folder). Loaded locally only.
        batch: rows per feed.
        seq_len: padded length.

    Returns:
        List of ``{input name: numpy array}`` feeds.

    Raises:
        EmulationError: no tokenizer can be loaded from the folder, or ``texts`` is empty.
    """
    import numpy as np
    import onnxruntime as ort

    if not texts:
        raise EmulationError("no texts given for the test inputs")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else Path(onnx_path).parent
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as exc:  # transformers raises several types for a folder without tokenizer files
        raise EmulationError(f"cannot load a tokenizer from {tok_dir}: {exc}") from exc
    so = ort.SessionOptions()
    so.log_severity_level = 3
    inputs = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"]).get_inputs()
    feeds: list[dict[str, Any]] = []
    for start in range(0, len(texts), batch):
        enc = tok(list(texts[start:start + batch]), padding="max_length", truncation=True, max_length=seq_len,
                  return_tensors="np")
        feed: dict[str, Any] = {}
        for inp in inputs:
            dtype = np.int32 if "int32" in inp.type else np.int64
            if inp.name in enc:
                feed[inp.name] = np.asarray(enc[inp.name]).astype(dtype)
            elif "type" in inp.name.lower() or "segment" in inp.name.lower():
                feed[inp.name] = np.zeros_like(np.asarray(enc["input_ids"]), dtype=dtype)
            else:
                raise EmulationError(f"the tokenizer does not produce the model input {inp.name!r}")
        feeds.append(feed)
    return feeds


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()


def run_on_host(onnx_path: Union[str, Path], feeds: Sequence[dict[str, Any]], threads: int = 1) -> list[list[Any]]:
    """Run ``feeds`` with this host's onnxruntime (CPU). Returns one list of output arrays per feed."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    return [sess.run(None, feed) for feed in feeds]


def run_on_arm(
    onnx_path: Union[str, Path],
    feeds: Sequence[dict[str, Any]],
    *,
    qemu_cpu: str,
    threads: int = 1,
    root: Optional[Union[str, Path]] = None,
    timeout: float = 1800.0,
    custom_ops: bool = False,
) -> tuple[list[list[Any]], dict[str, Any]]:
    """Run ``feeds`` through aarch64 onnxruntime under qemu-user with the CPU model ``qemu_cpu``.

    Args:
        onnx_path: ``.onnx`` (external data next to it is fine) or ``.ort`` model.
        feeds: input dicts (numpy arrays), e.g. from :func:`make_inputs`.
        qemu_cpu: QEMU CPU model (``cortex-a72``, ``cortex-a76``, ``neoverse-n1``); ``max`` is refused.
        threads: ORT intra-op threads inside the guest (1 keeps a shared host quiet; results do not depend on it).
        root: sysroot folder (default :func:`arm_root`).
        timeout: seconds before the emulated run is abandoned.
        custom_ops: register the guest's onnxruntime-extensions library (string-in ``model.e2e.*`` files; string
            feeds are passed as numpy unicode arrays).

    Returns:
        (outputs per feed, info) where info has the guest's machine, onnxruntime/numpy/python versions, output
        names, the ISA flags qemu exposed (from AT_HWCAP) and the emulated run time in seconds.

    Raises:
        EmulationError: qemu/sysroot missing, ``max`` requested, or the emulated run failed.
    """
    import numpy as np

    if qemu_cpu == "max":
        raise EmulationError("QEMU CPU 'max' is refused: it enables SME and ORT's KleidiAI path gave wrong INT8 "
                             "results under qemu 7.2 (DESIGN 7); use the profile's core model")
    launcher = find_arm_python(root)
    model = Path(onnx_path).resolve()
    names = list(feeds[0]) if feeds else []
    with tempfile.TemporaryDirectory(prefix="edgeprune-arm-") as tmp:
        d = Path(tmp)
        (d / "guest.py").write_text(_GUEST_SCRIPT)
        (d / "job.json").write_text(json.dumps({"model": str(model), "threads": threads, "n": len(feeds),
                                                "inputs": names, "custom_ops": custom_ops}))
        for k, feed in enumerate(feeds):
            np.savez(d / f"in_{k}.npz", **{f"i{j}": np.asarray(feed[n]) for j, n in enumerate(names)})
        env = dict(os.environ, QEMU_CPU=qemu_cpu)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([str(launcher), str(d / "guest.py"), str(d)], env=env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise EmulationError(
                f"emulated run on {qemu_cpu} exceeded {timeout:.0f} s; try a smaller --seq-len"
            ) from exc
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            hint = ""
            if proc.returncode in (-11, 139):
                hint = ("\nA segfault at start-up usually means ORT's cpuinfo read the host's /proc/cpuinfo: re-run "
                        f"{setup_command(root)} to restore the shadows in the sysroot.")
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise EmulationError(f"emulated aarch64 run ({qemu_cpu}) failed with exit code {proc.returncode}:\n"
                                 f"{tail}{hint}")
        info = json.loads((d / "info.json").read_text())
        info["wall_seconds"] = wall
        outs = []
        for k in range(len(feeds)):
            with np.load(d / f"out_{k}.npz", allow_pickle=False) as z:
                outs.append([z[f"o{j}"] for j in range(len(info["outputs"]))])
    return outs, info


# ---------------------------------------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class OutputCheck:
    """Comparison of one model output over all feeds.

    Attributes:
        name: output name.
        shape: shape of the output for the first feed.
        max_abs_diff: max |ARM - reference|.
        tolerance: the allowed max |ARM - reference| (formula in the module docstring).
        host_max_abs_diff: max |this host's run of the model - reference| (the x86 quantization error), or None
            when the reference is the model itself.
        arm_vs_host: max |ARM - this host's run of the same model|.
        max_abs_reference: max |reference| (scale of the output).
    """

    name: str
    shape: list[int]
    max_abs_diff: float
    tolerance: float
    host_max_abs_diff: Optional[float]
    arm_vs_host: float
    max_abs_reference: float

    @property
    def passed(self) -> bool:
        """True when the ARM output is within tolerance."""
        return self.max_abs_diff <= self.tolerance


@dataclass
class ArmCheckResult:
    """Everything :func:`verify_arm` measured; ``summary_lines()`` is what the CLI prints."""

    model: str
    reference: str
    reference_kind: str  # "fp32" | "fp32 (model itself)" | "host int8 (no FP32 model found)" | "int8"
    model_quantized: Optional[bool]
    profile: str
    qemu_cpu: str
    guest: dict[str, Any]
    host_onnxruntime: str
    batch: int
    seq_len: int
    num_batches: int
    inputs: str
    outputs: list[OutputCheck]
    argmax_agree: Optional[int]
    argmax_total: Optional[int]
    host_argmax_agree: Optional[int]
    emulated_seconds: float
    note: str = _NOTE
    tolerance_rule: str = field(default="")

    @property
    def passed(self) -> bool:
        """True when every output is within its tolerance."""
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (includes ``passed``)."""
        d = asdict(self)
        d["passed"] = self.passed
        for o, od in zip(self.outputs, d["outputs"]):
            od["passed"] = o.passed
        return d

    def summary_lines(self) -> list[str]:
        """Human-readable report lines."""
        isa = self.guest.get("isa", {})
        flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in isa.items())
        kind = "INT8" if self.model_quantized else ("FP32" if self.model_quantized is False else "format unknown")
        lines = [
            f"emulated CPU: {self.qemu_cpu} (qemu-user, profile {self.profile}); ISA seen by the guest: {flags}",
            f"onnxruntime inside: {self.guest.get('onnxruntime')} on {self.guest.get('machine')} (numpy "
            f"{self.guest.get('numpy')}, Python {self.guest.get('python')}); host onnxruntime {self.host_onnxruntime}",
            f"model: {self.model} ({kind}); reference: {self.reference} [{self.reference_kind}, run on this host]",
            f"inputs: {self.num_batches} feeds of batch <= {self.batch} x seq {self.seq_len}: {self.inputs}",
        ]
        for o in self.outputs:
            host = ""
            if o.host_max_abs_diff is not None:
                host = f"; this host's run of the model: {o.host_max_abs_diff:.3g}"
            lines.append(
                f"{o.name} {o.shape}: max abs diff ARM vs reference {o.max_abs_diff:.3g} (tolerance {o.tolerance:.3g}"
                f"{host}); ARM vs this host's run of the same file {o.arm_vs_host:.3g}; max|ref| "
                f"{o.max_abs_reference:.3g} -> {'ok' if o.passed else 'OUT OF TOLERANCE'}"
            )
        if self.argmax_total:
            pct = 100.0 * self.argmax_agree / self.argmax_total
            line = f"argmax agreement with reference: {self.argmax_agree}/{self.argmax_total} ({pct:.1f}%)"
            if self.host_argmax_agree is not None:
                line += f"; this host's run: {self.host_argmax_agree}/{self.argmax_total}"
            lines.append(line)
        lines.append(f"tolerance rule: {self.tolerance_rule}")
        lines.append(f"result: {'PASS' if self.passed else 'FAIL'} (emulation took {self.emulated_seconds:.1f} s)")
        lines.append(f"note: {self.note}")
        return lines


def find_fp32_reference(bundle_dir: Union[str, Path]) -> Optional[Path]:
    """The FP32 ONNX kept in a bundle folder, if any.

    Looks at ``edgeprune.json`` (keys ``fp32_model``, or ``files.fp32``/``files.fp32_onnx``), then at the names in
    :data:`FP32_CANDIDATES`. A file found is only accepted if it holds no quantized op.

    Args:
        bundle_dir: bundle folder.

    Returns:
        Path of the FP32 model, or None.
    """
    d = Path(bundle_dir)
    names: list[str] = []
    meta = d / "edgeprune.json"
    if meta.is_file():
        try:
            m = json.loads(meta.read_text())
            files = m.get("files", {}) if isinstance(m.get("files"), dict) else {}
            names += [v for v in (m.get("fp32_model"), files.get("fp32"), files.get("fp32_onnx")) if isinstance(v, str)]
        except (OSError, ValueError):
            pass
    names += list(FP32_CANDIDATES)
    for n in names:
        p = d / n
        if p.is_file() and p.suffix == ".onnx" and _is_quantized(p) is False:
            return p
    return None


def fp32_reference_from_source(bundle_dir: Union[str, Path], out_path: Union[str, Path],
                                source_model: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """Rebuild a bundle's FP32 reference: the source model, pruned with the bundle's plan, exported to ONNX.

    Bundles ship only the INT8 model; ``edgeprune.json`` records ``model_source`` and the ``plan``. The export is
    plain FP32 (no fusion, no quantization), so it is the model the INT8 file approximates.

    Args:
        bundle_dir: bundle folder with ``edgeprune.json``.
        out_path: where to write the FP32 ``.onnx``.
        source_model: model folder or hub id to use instead of ``model_source`` (e.g. the bundle was built elsewhere).

    Returns:
        ``out_path``, or None when there is no ``edgeprune.json`` or no usable source model.
    """
    meta_path = Path(bundle_dir) / "edgeprune.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    source = source_model or meta.get("model_source")
    if not source or not isinstance(meta.get("plan"), dict):
        return None
    if source_model is None and not Path(str(source)).expanduser().exists():
        return None  # recorded on another machine or a hub id: never reach out implicitly
    from edgeprune.adapters import get_adapter
    from edgeprune.onnx.export import export_onnx
    from edgeprune.task.modeling import load_model
    from edgeprune.plan import HeadPlan

    model, _ = load_model(source, with_tokenizer=False)
    get_adapter(model).prune_heads_(model, HeadPlan.from_dict(meta["plan"]))
    return export_onnx(model.eval(), out_path)


def _resolve_model(path: Path) -> Path:
    if path.is_dir():
        for n in ("model.onnx", "model.ort"):
            if (path / n).is_file():
                return path / n
        raise EmulationError(f"{path} holds no model.onnx or model.ort: pass a bundle folder or an .onnx file")
    if not path.is_file():
        raise EmulationError(f"{path} does not exist")
    return path


def verify_arm(
    model: Union[str, Path],
    profile: Any = "raspberrypi4",
    *,
    reference: Optional[Union[str, Path]] = None,
    source_model: Optional[Union[str, Path]] = None,
    qemu_cpu: Optional[str] = None,
    batch: Optional[int] = None,
    seq_len: Optional[int] = None,
    num_batches: int = 2,
    texts: Optional[Sequence[str]] = None,
    seed: int = 0,
    threads: int = 1,
    atol: float = ATOL,
    rtol: float = RTOL,
    host_factor: float = HOST_FACTOR,
    root: Optional[Union[str, Path]] = None,
    timeout: float = 1800.0,
) -> ArmCheckResult:
    """Run a model on emulated aarch64 onnxruntime and compare it with FP32 on this host.

    Args:
        model: bundle folder (its ``model.onnx``, else ``model.ort``) or an ``.onnx``/``.ort`` file.
        profile: profile name, path or ``DeviceProfile``; gives the QEMU CPU model and the sequence length.
        reference: FP32 ``.onnx`` to compare with. Default: the bundle's FP32 model (:func:`find_fp32_reference`);
            else an FP32 export of the bundle's source model pruned with its plan
            (:func:`fp32_reference_from_source`, when ``model_source`` exists on this machine or ``source_model`` is
            given); else the model itself run on this host (exact if it is FP32, a weaker check if it is INT8).
        source_model: model folder or hub id to rebuild the FP32 reference from (overrides ``model_source``).
        qemu_cpu: override the profile's QEMU CPU model (never ``max``).
        batch: rows per feed (default 2: more than one row, one of them padded).
        seq_len: sequence length (default: the profile's).
        num_batches: number of feeds of random inputs (ignored with texts).
        texts: sentences to tokenise with the tokenizer next to the model. Default: :data:`DEFAULT_TEXTS` when the
            model's folder has a tokenizer, else seeded random token ids (``()`` forces random inputs).
        seed: input RNG seed.
        threads: ORT threads on both sides.
        atol: absolute tolerance term.
        rtol: relative tolerance term (times max|reference|).
        host_factor: allowed ARM error as a multiple of this host's error of the same file vs the FP32 reference.
        root: sysroot folder (default ``$EDGEPRUNE_ARM_ROOT`` or ``~/.cache/edgeprune/arm64``).
        timeout: seconds for the emulated run.

    Returns:
        :class:`ArmCheckResult`; ``.passed`` tells whether every output is within tolerance.

    Raises:
        EmulationError: qemu or the sysroot is missing (message has the install command), the model is missing, the
            profile has no ARM CPU model, or the emulated run crashed.
    """
    prof_name, cpu, prof = qemu_cpu_for(profile, qemu_cpu)
    if qemu_cpu and qemu_cpu != cpu:
        prof_name, cpu = f"{prof_name}, CPU overridden from {cpu}", qemu_cpu
    find_arm_python(root)  # fail fast, before any host work
    given = Path(model)
    model_path = _resolve_model(given)
    quantized = _is_quantized(model_path)

    with tempfile.TemporaryDirectory(prefix="edgeprune-ref-") as tmp:
        ref_path: Path
        ref_label: Optional[str] = None
        if reference is not None:
            ref_path = Path(reference)
            if not ref_path.is_file():
                raise EmulationError(f"reference model {ref_path} does not exist")
            ref_kind = "fp32" if _is_quantized(ref_path) is False else "int8"
        else:
            found = find_fp32_reference(model_path.parent) if given.is_dir() or quantized is not False else None
            rebuilt = None
            if found is None and quantized is not False:
                rebuilt = fp32_reference_from_source(model_path.parent, Path(tmp) / "reference.fp32.onnx",
                                                     source_model)
            if found is not None and found.resolve() != model_path.resolve():
                ref_path, ref_kind = found, "fp32"
            elif rebuilt is not None:
                ref_path, ref_kind = rebuilt, "fp32 (source model + plan, exported now)"
                meta = json.loads((model_path.parent / "edgeprune.json").read_text())
                ref_label = f"{source_model or meta.get('model_source')} pruned with the bundle's plan"
            elif quantized is False:
                ref_path, ref_kind = model_path, "fp32 (model itself)"
            else:
                ref_path, ref_kind = model_path, "host int8 (no FP32 model found: weaker check)"
        return _compare(model_path, ref_path, ref_label or str(ref_path), ref_kind, quantized, prof_name, cpu, prof,
                        batch=batch, seq_len=seq_len, num_batches=num_batches, texts=texts, seed=seed,
                        threads=threads,
                        atol=atol, rtol=rtol, host_factor=host_factor, root=root, timeout=timeout)


def _compare(model_path: Path, ref_path: Path, ref_label: str, ref_kind: str, quantized: Optional[bool],
             prof_name: str, cpu: str, prof: Any, *, batch: Optional[int], seq_len: Optional[int], num_batches: int,
             texts: Optional[Sequence[str]], seed: int, threads: int, atol: float, rtol: float, host_factor: float,
             root: Optional[Union[str, Path]], timeout: float) -> ArmCheckResult:
    """The host and emulated runs and the comparison of :func:`verify_arm` (reference already chosen)."""
    import numpy as np
    import onnxruntime as ort

    same_file = ref_path.resolve() == model_path.resolve()

    seq = seq_len or (prof.seq_len if prof is not None else 128)
    b = batch or 2
    if texts is None and _has_tokenizer(model_path.parent):
        texts = DEFAULT_TEXTS
    if texts:
        feeds = make_text_inputs(model_path, list(texts), batch=b, seq_len=seq)
        input_kind = f"{len(texts)} tokenised sentences"
    else:
        feeds = make_inputs(model_path, batch=b, seq_len=seq, num_batches=num_batches, seed=seed)
        input_kind = f"seeded random token ids (seed {seed}), last row half padded"
    ref_outs = run_on_host(ref_path, feeds, threads)
    host_outs = ref_outs if same_file else run_on_host(model_path, feeds, threads)
    arm_outs, info = run_on_arm(model_path, feeds, qemu_cpu=cpu, threads=threads, root=root, timeout=timeout)

    weak_int8 = same_file and quantized is not False
    checks: list[OutputCheck] = []
    n_out = min(len(arm_outs[0]), len(ref_outs[0]))
    for j in range(n_out):
        def cat(outs: list[list[Any]]) -> Any:
            return np.concatenate([np.asarray(o[j], dtype=np.float64).ravel() for o in outs])

        a, r, h = cat(arm_outs), cat(ref_outs), cat(host_outs)
        if a.shape != r.shape:
            raise VerificationError(f"output {j}: ARM shape {a.shape} differs from reference {r.shape}")
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        host_err = None if same_file else float(np.max(np.abs(h - r)))
        tol = atol + rtol * scale
        if host_err is not None:
            tol += host_factor * host_err
        if weak_int8:
            tol += X86_INT8_ATOL + X86_INT8_RTOL * scale
        checks.append(OutputCheck(
            name=info["outputs"][j], shape=list(np.asarray(arm_outs[0][j]).shape),
            max_abs_diff=float(np.max(np.abs(a - r))) if a.size else 0.0, tolerance=tol, host_max_abs_diff=host_err,
            arm_vs_host=float(np.max(np.abs(a - h))) if a.size else 0.0, max_abs_reference=scale,
        ))

    agree = total = host_agree = None
    first_ref = np.asarray(ref_outs[0][0])
    if first_ref.ndim >= 2 and first_ref.shape[-1] > 1 and np.issubdtype(first_ref.dtype, np.floating):
        def top(outs: list[list[Any]]) -> Any:
            return np.concatenate([np.asarray(o[0]).reshape(-1, np.asarray(o[0]).shape[-1]).argmax(-1) for o in outs])

        ta, tr = top(arm_outs), top(ref_outs)
        agree, total = int((ta == tr).sum()), int(tr.size)
        host_agree = None if same_file else int((top(host_outs) == tr).sum())

    rule = f"max|ARM - ref| <= {atol:g} + {rtol:g}*max|ref|"
    if not same_file:
        rule += f" + {host_factor:g}*max|x86 run of the model - ref|"
    if weak_int8:
        rule += f" + {X86_INT8_ATOL:g} + {X86_INT8_RTOL:g}*max|ref| (x86 AVX2 U8S8 saturation margin)"
    return ArmCheckResult(
        model=str(model_path), reference=ref_label, reference_kind=ref_kind, model_quantized=quantized,
        profile=prof_name, qemu_cpu=cpu, guest=info, host_onnxruntime=ort.__version__, batch=b, seq_len=seq,
        num_batches=len(feeds), inputs=input_kind, outputs=checks, argmax_agree=agree, argmax_total=total,
        host_argmax_agree=host_agree,
        emulated_seconds=float(info.get("wall_seconds", 0.0)), tolerance_rule=rule,
    )


if __name__ == "__main__":  # pragma: no cover - manual use: python -m edgeprune.onnx.arm MODEL [PROFILE]
    res = verify_arm(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "raspberrypi4")
    print("\n".join(res.summary_lines()))
