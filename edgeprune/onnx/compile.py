"""The one compile chain: a plan applied to a PyTorch model becomes a shipped-form ONNX file, every step checked.

    surgery (prune, then pruned logits == masked logits) -> make fusable -> ONNX export -> parity vs PyTorch at
    several (batch, seq) shapes -> graph (profile's ``quant.graph``: ``plain`` as exported, ORT fuses at session
    load; ``fused`` = ORT's transformers fusions, fused Attention ``num_heads`` == the plan's kept heads, parity)
    -> INT8 with the profile's preset (quantized node count; INT8-vs-PyTorch difference recorded)

The bundle, the latency table's sub-models, the search's "dense model as it will ship" predictions and the
benchmarks all call :func:`compile_plan`, so what is measured, searched and certified is made the same way as what
ships. A failed check raises :class:`~edgeprune.errors.VerificationError` (exit code 4 on the command line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgeprune.errors import VerificationError

#: Parity shapes (batch, seq) checked on every shipped graph.
PARITY_SHAPES: tuple[tuple[int, int], ...] = ((1, 8), (2, 17), (3, 64))

#: Pruned logits vs the unpruned model with the same heads/blocks masked (exact surgery gives ~1e-7).
SURGERY_ATOL = 1e-5


@dataclass
class Compiled:
    """What :func:`compile_plan` made.

    Attributes:
        model: the pruned (fusable) PyTorch model the files were checked against.
        onnx: the shipped-form file (INT8 unless the preset ships FP32).
        fp32: the prepared FP32 graph it was quantized from (same as ``onnx`` for an FP32 preset).
        checks: every check's figure (surgery, parity, fusion, quantized nodes, sizes, the preset).
    """

    model: Any
    onnx: Path
    fp32: Path
    checks: dict[str, Any] = field(default_factory=dict)


def compile_plan(
    model: Any,
    plan: Any,
    preset: Any,
    work: str | Path,
    *,
    out_path: Optional[str | Path] = None,
    parity_shapes: Sequence[tuple[int, int]] = PARITY_SHAPES,
    hook: Optional[Callable[[str], None]] = None,
) -> Compiled:
    """Prune (and verify), export, prepare the graph and quantize one plan.

    Args:
        model: the model to compile (not modified: a copy is pruned). It may itself be a sub-model (the latency
            table's single layers) or already carry recovery folded into its weights.
        plan: a :class:`~edgeprune.plan.HeadPlan` in original indices (heads and, optionally, FFN blocks), or
            ``None`` to compile the model's current structure as it is.
        preset: the profile's :class:`~edgeprune.profiles.QuantPreset` (``format`` ``none`` ships FP32).
        work: scratch folder for intermediate files (created).
        out_path: where the final file goes (default: ``work/model.int8.onnx`` or the FP32 graph).
        parity_shapes: (batch, seq) pairs for the ONNX-vs-PyTorch checks (``()`` skips them).
        hook: called with each step's name before it runs (progress; tests use it to interrupt).

    Returns:
        A :class:`Compiled`.

    Raises:
        VerificationError: pruned != masked logits, ONNX != PyTorch, a fusion or quantization check failed.
    """
    from edgeprune.adapters import get_adapter
    from edgeprune.onnx.export import (FP32_ATOL, check_parity, export_onnx, fused_attention_heads, onnx_size_bytes,
                                       prepare_graph)
    from edgeprune.onnx.quantize import INT8_LOGIT_ATOL, count_quantized, quantize_onnx
    from edgeprune.task.modeling import clone_model, prune_and_verify_

    step = hook or (lambda name: None)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    checks: dict[str, Any] = {}
    step("surgery")
    pruned = clone_model(model).eval()
    adapter = get_adapter(pruned)
    if plan is not None:
        adapter.check_plan(pruned, plan)
        checks["surgery_max_abs_diff"] = prune_and_verify_(pruned, plan, atol=SURGERY_ATOL)
    adapter.make_fusable_(pruned)
    # Families whose attention ORT's optimizer cannot fuse (relative/rotary score terms) get its other fusions only;
    # the fused graph's parity check still runs.
    kept = list(adapter.current_plan(pruned).kept_counts) if adapter.ort_attention_fusion else None
    step("export")
    fp32 = export_onnx(pruned, work / "model.fp32.onnx")
    if parity_shapes:
        checks["parity_fp32_max_abs_diff"] = check_parity(pruned, fp32, parity_shapes, FP32_ATOL)
    step("optimize")
    graph = preset.graph
    checks["graph"] = graph
    prepared = prepare_graph(fp32, work / "model.fused.onnx", graph=graph, expected_heads=kept)
    if graph == "fused" and kept is None:
        checks["attention_fusion"] = "not available for this family (ORT's optimizer has no pattern for it)"
    if graph == "fused":
        checks["fused_attention_num_heads"] = fused_attention_heads(prepared)
        if parity_shapes:
            checks["parity_fused_max_abs_diff"] = check_parity(pruned, prepared, parity_shapes, FP32_ATOL)
    checks["fp32_bytes"] = onnx_size_bytes(prepared)
    step("quantize")
    if preset.format == "none":
        final = prepared
        if out_path is not None:
            final = _copy_onnx(prepared, Path(out_path))
        checks["quantized_nodes"] = {}
    else:
        final = quantize_onnx(prepared, out_path or work / "model.int8.onnx", preset)
        checks["quantized_nodes"] = count_quantized(final)
        # INT8 vs PyTorch: recorded (the accuracy promise itself comes from certification on real data).
        if parity_shapes:
            checks["parity_int8_max_abs_diff"] = check_parity(pruned, final, parity_shapes, atol=float("inf"))
            checks["int8_logit_atol"] = INT8_LOGIT_ATOL
    checks["final_bytes"] = onnx_size_bytes(final)
    checks["size_ratio_vs_fp32"] = checks["final_bytes"] / checks["fp32_bytes"]
    checks["quant"] = preset.to_record()
    return Compiled(model=pruned, onnx=Path(final), fp32=Path(prepared), checks=checks)


def check_int8_tolerance(compiled: Compiled, atol: Optional[float]) -> None:
    """Raise :class:`VerificationError` when the INT8 file's logits differ from PyTorch by more than ``atol``."""
    diff = compiled.checks.get("parity_int8_max_abs_diff", 0.0)
    if atol is not None and diff > atol:
        raise VerificationError(f"INT8 logits differ from PyTorch by {diff:.3g} > {atol}")


def _copy_onnx(src: Path, dst: Path) -> Path:
    """Copy an ONNX file (and its external data, keeping the referenced names) to ``dst``."""
    import shutil

    from edgeprune.onnx.export import onnx_files

    dst.parent.mkdir(parents=True, exist_ok=True)
    files = onnx_files(src)
    shutil.copy2(files[0], dst)
    for extra in files[1:]:
        shutil.copy2(extra, dst.parent / extra.name)
    return dst
