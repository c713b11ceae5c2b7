"""INT8 quantization of an (optimised) ONNX model, and conversion to ORT format for reduced mobile builds.

Default preset (DESIGN.md section 5, measured): dynamic quantization, signed 8-bit weights, per-channel, no
``reduce_range``. Per-channel S8 kept a cosine of 0.991 to FP32 on real MiniLM (per-tensor 0.964, reduce_range
0.880); static QDQ was 2.2x slower on AVX2 hosts and bigger on disk, so it is an option, not the default.

Two ORT pitfalls are handled here:

* ``quantize_dynamic`` on an ORT-fused graph (com.microsoft Attention, SkipLayerNormalization...) cannot infer the
  type of some tensors and fails unless ``extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}``.
* ``quant_pre_process`` (used by the static path) crashes in symbolic shape inference on contrib ops unless
  ``skip_symbolic_shape=True``.

Every quantization checks itself by counting the quantized nodes against the weight MatMul/Attention nodes of the
input graph.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import VerificationError

log = logging.getLogger(__name__)

#: Ops whose presence means "this node computes in INT8".
_QUANT_OPS = frozenset({"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QLinearMatMul", "MatMulIntegerToFloat",
                        "QGemm", "DynamicQuantizeLSTM"})
#: Ops the dynamic quantizer is expected to turn into one of the above when their weight is a constant.
_QUANTIZABLE = frozenset({"MatMul", "Attention"})

#: Documented INT8 tolerance used by the tests and the bundle: INT8 logits vs FP32 logits on tiny random models
#: (whose logits are O(0.1-1)). Dynamic per-channel S8 measured ~1e-2; the real guard of accuracy is the paired
#: certification of the shipped file, not this tolerance.
INT8_LOGIT_ATOL = 0.1


def _weight_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    table = {"s8": QuantType.QInt8, "int8": QuantType.QInt8, "qint8": QuantType.QInt8,
             "u8": QuantType.QUInt8, "uint8": QuantType.QUInt8, "quint8": QuantType.QUInt8}
    try:
        return table[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown weight_type {name!r}: use 's8' or 'u8'") from None


def count_quantizable(onnx_path: str | Path) -> int:
    """Number of MatMul nodes with a constant (initializer) weight, plus fused Attention nodes.

    Args:
        onnx_path: an FP32 ONNX file.

    Returns:
        The count a full dynamic quantization is expected to turn into INT8 nodes.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    n = 0
    for node in model.graph.node:
        if node.op_type == "Attention":
            n += 1
        elif node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
            n += 1
    return n


def count_quantized(onnx_path: str | Path) -> dict[str, int]:
    """Count the INT8 compute nodes of a quantized model by op type (QDQ graphs count their MatMuls with a
    DequantizeLinear weight input).

    Args:
        onnx_path: a quantized ONNX file.

    Returns:
        ``{op_type: count}`` over the quantized op types present (``"QDQ:MatMul"`` for QDQ MatMuls).
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = None
        if node.op_type in _QUANT_OPS:
            key = node.op_type
        elif node.op_type in ("MatMul", "Attention") and len(node.input) > 1 and \
                producers.get(node.input[1]) == "DequantizeLinear":
            key = f"QDQ:{node.op_type}"
        if key:
            counts[key] = counts.get(key, 0) + 1
    return counts


def quantize_onnx(
    in_path: str | Path,
    out_path: str | Path,
    *,
    format: str = "dynamic",
    weight_type: str = "s8",
    per_channel: bool = True,
    reduce_range: bool = False,
    calibration_feeds: Iterable[dict[str, Any]] | None = None,
) -> Path:
    """Quantize an FP32 ONNX model to INT8 and check that every weight MatMul/Attention was quantized.

    Args:
        in_path: FP32 ONNX (ideally the ORT-optimised, fused graph).
        out_path: destination ``.onnx``.
        format: ``"dynamic"`` (weights INT8, activations quantized at run time; the default) or ``"qdq"`` (static
            QDQ with calibration; needs ``calibration_feeds``).
        weight_type: ``"s8"`` (default; signed weights, fastest on AVX2 and ARM) or ``"u8"``.
        per_channel: per-output-channel weight scales (more accurate, same speed).
        reduce_range: 7-bit weights; only for x86 without VNNI where U8S8 can saturate. Costs accuracy.
        calibration_feeds: for ``"qdq"``: an iterable of ORT input dicts (numpy int64 arrays).

    Returns:
        ``out_path``.

    Raises:
        VerificationError: fewer nodes were quantized than the input graph has weight MatMul/Attention nodes.
        ValueError: unknown ``format`` or ``weight_type``, or ``"qdq"`` without calibration feeds.
    """
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    in_path, out_path = Path(in_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wtype = _weight_type(weight_type)
    expected = count_quantizable(in_path)
    fmt = format.lower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("root").setLevel(logging.ERROR)
        if fmt == "dynamic":
            quantize_dynamic(
                str(in_path),
                str(out_path),
                weight_type=wtype,
                per_channel=per_channel,
                reduce_range=reduce_range,
                # Fused graphs carry contrib-op outputs without type info; FLOAT is their type (DESIGN 5).
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        elif fmt in ("qdq", "static"):
            if calibration_feeds is None:
                raise ValueError("format='qdq' needs calibration_feeds (a few batches of real tokenised inputs)")
            _quantize_qdq(in_path, out_path, wtype, per_channel, reduce_range, list(calibration_feeds))
        else:
            raise ValueError(f"unknown quantization format {format!r}: use 'dynamic' or 'qdq'")
    from .export import ensure_inputs, graph_input_names

    ensure_inputs(out_path, graph_input_names(in_path))
    got = count_quantized(out_path)
    total = sum(got.values())
    if total < expected:
        raise VerificationError(
            f"{out_path}: only {total} quantized nodes ({got}) for {expected} weight MatMul/Attention nodes in "
            f"{in_path.name}"
        )
    log.info("quantized %d nodes %s (expected >= %d)", total, got, expected)
    return out_path


def _quantize_qdq(in_path: Path, out_path: Path, wtype: Any, per_channel: bool, reduce_range: bool,
                  feeds: Sequence[dict[str, Any]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="edgeprune-qdq-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # skip_symbolic_shape: ORT's symbolic shape inference fails on fused contrib ops (DESIGN 5).
        quant_pre_process(str(in_path), str(pre), skip_symbolic_shape=True, skip_optimization=True)
        quantize_static(
            str(pre),
            str(out_path),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            # U8 activations: U8S8 QDQ ran 2.2x faster than S8S8 on AVX2 (DESIGN 5) and is fine on ARM NEON.
            activation_type=QuantType.QUInt8,
            weight_type=wtype,
            per_channel=per_channel,
            reduce_range=reduce_range,
            # Gemm/EmbedLayerNormalization biases cannot get an int32 scale in fused graphs: quantize the matmuls.
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": __import__("onnx").TensorProto.FLOAT},
        )


def to_ort_format(onnx_path: str | Path, out_dir: str | Path, *, optimization_style: str = "Fixed",
                  target_platform: str | None = None, custom_op_library: str | Path | None = None) -> dict[str, Path]:
    """Convert an ONNX model to ORT format (``.ort``) plus the required-operators config for a reduced build.

    Uses onnxruntime's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``, in process, its console
    output captured) on a private copy of the model, so the tool's side files never land next to the input.

    Args:
        onnx_path: the (quantized) ONNX file (external data is copied along).
        out_dir: where ``<stem>.ort`` and ``<stem>.required_operators.config`` are written.
        optimization_style: ``"Fixed"`` (optimisations baked in; the usual choice for mobile) or ``"Runtime"``.
        target_platform: ``"arm"`` or ``"amd64"`` (the tool's names; ``None`` = the host). Affects which
            optimisations are baked into a ``Fixed`` file.
        custom_op_library: shared library of custom operators the model uses (e.g. onnxruntime-extensions'
            ``get_library_path()``); its ops stay in the file and are listed with their domain in the config.

    Returns:
        ``{"ort": path, "required_operators": path}``.

    Raises:
        VerificationError: the tool failed or did not produce both files.
    """
    import contextlib
    import io

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from .export import onnx_files

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeprune-ort-") as tmp:
        work = Path(tmp) / "in"
        work.mkdir()
        for f in onnx_files(onnx_path):
            shutil.copy2(f, work / f.name)
        console = io.StringIO()
        try:
            with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
                convert_onnx_models_to_ort(work / onnx_path.name, output_dir=Path(tmp) / "out",
                                           optimization_styles=[OptimizationStyle[optimization_style]],
                                           target_platform=target_platform,
                                           custom_op_library_path=Path(custom_op_library) if custom_op_library else None)
        except Exception as exc:  # noqa: BLE001 - the tool raises plain exceptions; keep its output for the user
            raise VerificationError(f"ORT format conversion failed: {exc}\n{console.getvalue()[-2000:]}") from exc
        produced = list((Path(tmp) / "out").rglob("*"))
        ort_files = [p for p in produced if p.suffix == ".ort"]
        cfgs = [p for p in produced if p.name.endswith(".config") and "required_operators" in p.name]
        if len(ort_files) != 1 or not cfgs:
            raise VerificationError(f"ORT format conversion produced {sorted(p.name for p in produced)}:\n"
                                    f"{console.getvalue()[-2000:]}")
        ort_dst = out_dir / (onnx_path.stem + ".ort")
        cfg_dst = out_dir / (onnx_path.stem + ".required_operators.config")
        shutil.copy2(ort_files[0], ort_dst)
        # Prefer the plain config over a "with_runtime_opt" one: it lists exactly the ops of the saved file. Its
        # header names the temporary path it was generated from: name the shipped file instead.
        cfg = min(cfgs, key=lambda p: len(p.name))
        lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith("#")]
        cfg_dst.write_text(f"# Operators required by {ort_dst.name} (reduced onnxruntime build, "
                           "--include_ops_by_config)\n" + "\n".join(lines) + "\n")
    return {"ort": ort_dst, "required_operators": cfg_dst}
