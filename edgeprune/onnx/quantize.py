"""INT8 quantization of an ONNX model with a device profile's preset (the ORT format lives in ``ort_format``).

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

from edgeprune.errors import VerificationError

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


def quantize_onnx(in_path: str | Path, out_path: str | Path, preset: Any = None) -> Path:
    """Quantize an FP32 ONNX model with a device profile's preset and check that every weight MatMul/Attention was
    quantized.

    Args:
        in_path: FP32 ONNX (plain exported or ORT-fused graph).
        out_path: destination ``.onnx``.
        preset: a :class:`~edgeprune.profiles.QuantPreset` (its ``format`` must be ``dynamic``; ``weight_type``,
            ``per_channel`` and ``reduce_range`` are used as they are); ``None`` = the measured default
            (:meth:`QuantPreset.default_int8`: dynamic, S8 weights, per-channel, no reduce_range).

    Returns:
        ``out_path``.

    Raises:
        VerificationError: fewer nodes were quantized than the input graph has weight MatMul/Attention nodes.
        ValueError: a preset that does not quantize (``format`` ``none``) or an unknown weight type.
    """
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    from edgeprune.profiles import QuantPreset

    preset = preset if preset is not None else QuantPreset.default_int8()
    if preset.format != "dynamic":
        raise ValueError(f"quantize_onnx needs a dynamic preset, got format {preset.format!r}")
    in_path, out_path = Path(in_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wtype = _weight_type(preset.weight_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("root").setLevel(logging.ERROR)
        quantize_dynamic(
            str(in_path),
            str(out_path),
            weight_type=wtype,
            per_channel=preset.per_channel,
            reduce_range=preset.reduce_range,
            # Fused graphs carry contrib-op outputs without type info; FLOAT is their type (DESIGN 5).
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return _check_quantized(in_path, out_path)


def quantize_qdq(in_path: str | Path, out_path: str | Path, calibration_feeds: Iterable[dict[str, Any]], *,
                 weight_type: str = "s8", per_channel: bool = True, reduce_range: bool = False) -> Path:
    """Static QDQ quantization with calibration feeds (library use only: no profile can ask for it yet, and it was
    2.2x slower than dynamic on AVX2 hosts, DESIGN 5).

    Args:
        in_path: FP32 ONNX.
        out_path: destination ``.onnx``.
        calibration_feeds: an iterable of ORT input dicts (numpy int64 arrays), a few batches of real inputs.
        weight_type, per_channel, reduce_range: as in :class:`~edgeprune.profiles.QuantPreset`.

    Returns:
        ``out_path``.

    Raises:
        VerificationError: fewer nodes were quantized than the graph has weight MatMul/Attention nodes.
        ValueError: no calibration feeds, or an unknown weight type.
    """
    feeds = list(calibration_feeds or [])
    if not feeds:
        raise ValueError("quantize_qdq needs calibration_feeds (a few batches of real tokenised inputs)")
    in_path, out_path = Path(in_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wtype = _weight_type(weight_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("root").setLevel(logging.ERROR)
        _quantize_qdq(in_path, out_path, wtype, per_channel, reduce_range, feeds)
    return _check_quantized(in_path, out_path)


def _check_quantized(in_path: Path, out_path: Path) -> Path:
    from edgeprune.onnx.export import ensure_inputs, graph_input_names

    expected = count_quantizable(in_path)
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
