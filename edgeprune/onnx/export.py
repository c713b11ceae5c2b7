"""PyTorch -> ONNX export, parity check, and ORT graph optimisation with a fused-Attention self-check.

The path chosen here is the one verified in DESIGN.md section 4:

* ``torch.onnx.export(dynamo=False, dynamic_axes=...)`` (TorchScript) of a wrapper that calls the model with
  **keyword** arguments (transformers 5.x fails positionally on ``use_cache``), traced with batch and sequence >= 2 so
  no axis is specialised to size 1. The TorchScript exporter is deprecated in torch but it is the only path on which
  ORT's BERT optimizer fuses Attention with per-layer head counts (after the adapter's ``make_fusable_`` on 5.x).
* ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads=0, hidden_size=0)``: with zeros
  the optimizer reads each layer's head count from its reshape constants, which is what uneven (pruned) layers need.
  The fused ``Attention`` nodes are then counted and their ``num_heads`` compared with the plan.

Every step checks itself: :func:`check_parity` compares ORT with PyTorch at several (batch, seq) shapes, with padded
attention masks, and raises :class:`~edgeprune.errors.VerificationError` beyond the tolerance.

This module imports torch and onnxruntime lazily (inside functions) so ``import edgeprune.onnx.export`` stays cheap.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

from edgeprune.errors import VerificationError

log = logging.getLogger(__name__)

#: Shapes (batch, seq) at which exported graphs are compared with PyTorch by default: batch 1 and odd lengths catch
#: axes that the trace specialised.
DEFAULT_PARITY_SHAPES: tuple[tuple[int, int], ...] = ((1, 8), (2, 17), (3, 64))

#: FP32 ONNX vs PyTorch tolerance on logits. Measured diffs are ~1e-6 on tiny and real models (DESIGN 4: 6e-6 on a
#: pruned MiniLM after fusion); 1e-4 leaves room for different kernel summation orders without hiding real bugs.
FP32_ATOL = 1e-4

#: Families whose tokenizers never return ``token_type_ids`` (optimum's ONNX configs omit the input for them too).
_NO_SEGMENT_FAMILIES = frozenset({"distilbert", "roberta", "xlm-roberta", "camembert"})

#: ONNX files above this size are written with external data (protobuf's hard limit is 2 GiB).
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def input_names_for(model_or_config: Any) -> list[str]:
    """The ONNX input names for a sequence-classification model of this family.

    ``token_type_ids`` is an input only for families whose tokenizers produce segment ids (BERT, ELECTRA) and only
    when the model has more than one segment type. RoBERTa and XLM-R tokenizers return no token type ids (their
    real checkpoints have ``type_vocab_size == 1``); DistilBERT has no segment embedding at all. This matches what
    optimum exports per family, so its ``ORTModelForSequenceClassification`` feeds exactly these inputs.

    Args:
        model_or_config: a transformers model or its config.

    Returns:
        ``["input_ids", "attention_mask"]`` plus ``"token_type_ids"`` where the family uses it.
    """
    config = getattr(model_or_config, "config", model_or_config)
    names = ["input_ids", "attention_mask"]
    family_has_segments = getattr(config, "model_type", "") not in _NO_SEGMENT_FAMILIES
    if family_has_segments and int(getattr(config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


def random_feeds(config: Any, names: Sequence[str], batch: int, seq: int, seed: int = 0) -> dict[str, Any]:
    """Random int64 inputs (numpy) with padded attention masks: row i has i*seq//(2*batch) padding tokens at the end.

    Padding is included on purpose: a trace that dropped the mask (transformers' SDPA path skips an all-ones mask)
    would pass a parity check on unpadded inputs and be wrong on real batches.
    """
    import numpy as np

    rng = np.random.default_rng(seed + 1000 * batch + seq)
    vocab = int(config.vocab_size)
    # Avoid ids 0..4 (pad/special tokens in most vocabularies) so padding positions are the only special ones.
    ids = rng.integers(5, max(vocab, 6), size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for i in range(batch):
        pad = (i * seq) // (2 * batch)
        if pad:
            mask[i, seq - pad :] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        tt = np.zeros((batch, seq), dtype=np.int64)
        tt[:, seq // 2 :] = 1
        out["token_type_ids"] = tt
    return out


def _wrap(model: Any, names: Sequence[str]) -> Any:
    """A module whose positional forward(*tensors) calls ``model(**{name: tensor})`` and returns logits only."""
    import torch

    class KeywordWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.names = tuple(names)

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            kwargs = dict(zip(self.names, tensors))
            return self.model(**kwargs, return_dict=True).logits

    return KeywordWrapper().eval()


def _set_attn_impl(model: Any, impl: str) -> None:
    """Set the attention implementation on the model's config (a plain attribute on 4.57 and 5.x)."""
    try:
        model.config._attn_implementation = impl
    except (AttributeError, ValueError):  # pragma: no cover - a future transformers that forbids it
        log.debug("could not set attention implementation %r", impl)


def _torch_logits(model: Any, inputs: dict[str, Any]) -> Any:
    import numpy as np
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, return_dict=True).logits
    return out.float().numpy().astype(np.float32)


def ort_session(onnx_path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with a fixed thread count and no spin-waiting (fair on shared machines).

    Args:
        onnx_path: ``.onnx`` or ``.ort`` file.
        threads: intra-op threads.

    Returns:
        ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------------
def export_onnx(model: Any, out_path: str | Path, *, opset: int = 17, trace_shape: tuple[int, int] = (2, 16)) -> Path:
    """Export a Hugging Face sequence-classification model to ONNX with dynamic batch and sequence axes.

    The model should already be pruned and, for ORT Attention fusion on transformers 5.x, made fusable with
    ``get_adapter(model).make_fusable_(model)`` (the export itself works either way). The model is exported in eval
    mode; its weights are not changed.

    Args:
        model: a ``*ForSequenceClassification`` model.
        out_path: destination ``.onnx`` file. Models above ~1.8 GB are written with external data next to it
            (``<name>.data``); smaller ones are a single self-contained file.
        opset: ONNX opset (17 is supported by every onnxruntime >= 1.14 and by the ORT mobile builds).
        trace_shape: (batch, seq) of the tracing inputs; both must be >= 2 so no axis is specialised to size 1.

    Returns:
        The path of the written ``.onnx`` file.

    Raises:
        VerificationError: if the export produced no file or the graph fails ``onnx.checker``.
    """
    import onnx
    import torch

    batch, seq = trace_shape
    if batch < 2 or seq < 2:
        raise ValueError(f"trace with batch and seq >= 2 (got {trace_shape}): size 1 gets specialised in the trace")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names_for(model)
    was_training = model.training
    model.eval()
    # transformers 5.x builds the padding mask per attention implementation: the SDPA/flash variants trace into
    # boolean And/Where graphs that ORT's optimizer does not recognise, so Attention is not fused. The eager
    # implementation yields the classic additive (1 - mask) * min pattern. make_fusable_ modules ignore the setting
    # for the attention itself, so this only changes the mask subgraph; it is restored afterwards.
    prev_impl = getattr(model.config, "_attn_implementation", None)
    _set_attn_impl(model, "eager")
    wrapper = _wrap(model, names)
    example = random_feeds(model.config, names, batch, seq)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic_axes["logits"] = {0: "batch"}
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated and emits tracer warnings for Python-level shape
            # arithmetic in transformers; both are expected here (see module docstring).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(out_path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was_training)
        if prev_impl is not None:
            _set_attn_impl(model, prev_impl)
    if not out_path.exists():
        raise VerificationError(f"torch.onnx.export wrote no file at {out_path}")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    onnx_model = onnx.load(str(out_path))
    if _restore_unused_inputs(onnx_model, names) or size > _EXTERNAL_DATA_THRESHOLD:
        save_onnx(onnx_model, out_path)
    onnx.checker.check_model(str(out_path))
    return out_path


def _restore_unused_inputs(onnx_model: Any, names: Sequence[str]) -> bool:
    """Re-add inputs the tracer dropped because nothing reads them (e.g. ``attention_mask`` when every layer has 0
    heads), so every bundle has the same input signature. Returns True if the graph changed."""
    import onnx

    present = [i.name for i in onnx_model.graph.input]
    missing = [n for n in names if n not in present]
    if not missing:
        return False
    inputs = {i.name: i for i in onnx_model.graph.input}
    for n in missing:
        inputs[n] = onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["batch", "sequence"])
    ordered = [inputs[n] for n in names] + [i for k, i in inputs.items() if k not in names]
    del onnx_model.graph.input[:]
    onnx_model.graph.input.extend(ordered)
    return True


def graph_input_names(onnx_path: str | Path) -> list[str]:
    """Names of the graph inputs of an ONNX file (initializers excluded)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def ensure_inputs(onnx_path: str | Path, names: Sequence[str]) -> None:
    """Make sure ``onnx_path`` has every input in ``names`` (graph tools drop inputs nothing reads)."""
    import onnx

    if all(n in graph_input_names(onnx_path) for n in names):
        return
    model = onnx.load(str(onnx_path))
    _restore_unused_inputs(model, names)
    save_onnx(model, onnx_path)


def save_onnx(onnx_model: Any, out_path: str | Path) -> Path:
    """Save an ONNX ModelProto, with external data (``<file>.data``) only when it would exceed protobuf's 2 GiB.

    Args:
        onnx_model: ``onnx.ModelProto``.
        out_path: destination ``.onnx``.

    Returns:
        ``out_path``.
    """
    import onnx

    out_path = Path(out_path)
    big = onnx_model.ByteSize() > _EXTERNAL_DATA_THRESHOLD
    data_name = out_path.name + ".data"
    if big:
        onnx.save_model(onnx_model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    else:
        onnx.save_model(onnx_model, str(out_path))
    return out_path


def onnx_files(onnx_path: str | Path) -> list[Path]:
    """The files that make up an ONNX model: the ``.onnx`` plus any external-data files it references.

    Args:
        onnx_path: the ``.onnx`` file.

    Returns:
        Paths (the ``.onnx`` first), for copying or size accounting.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    extra: list[Path] = []
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    p = onnx_path.parent / entry.value
                    if p not in extra:
                        extra.append(p)
    return [onnx_path, *extra]


def onnx_size_bytes(onnx_path: str | Path) -> int:
    """Total bytes on disk of an ONNX model including its external data."""
    return sum(p.stat().st_size for p in onnx_files(onnx_path))


# ---------------------------------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------------------------------
def check_parity(
    model: Any,
    onnx_path: str | Path,
    shapes: Sequence[tuple[int, int]] = DEFAULT_PARITY_SHAPES,
    atol: float = FP32_ATOL,
    *,
    seed: int = 0,
) -> float:
    """Compare ORT logits of ``onnx_path`` with PyTorch logits of ``model`` at several (batch, seq) shapes.

    Inputs are random token ids with padded attention masks (see ``random_feeds``), so a graph that lost the mask or
    specialised an axis fails.

    Args:
        model: the PyTorch model the graph was exported from (or an equivalent one).
        onnx_path: the ONNX (or ``.ort``) file.
        shapes: (batch, seq) pairs to try.
        atol: maximum allowed absolute difference of any logit.
        seed: seed of the random inputs.

    Returns:
        The maximum absolute logit difference over all shapes.

    Raises:
        VerificationError: if a difference exceeds ``atol``, an output is not finite, or the shapes differ.
    """
    import numpy as np

    sess = ort_session(onnx_path)
    feed_names = [i.name for i in sess.get_inputs()]
    names = input_names_for(model)
    if sorted(feed_names) != sorted(names):
        raise VerificationError(f"{onnx_path}: graph inputs {feed_names} differ from the expected {names}")
    model.eval()
    worst = 0.0
    for batch, seq in shapes:
        inputs = random_feeds(model.config, names, batch, seq, seed=seed)
        ref = _torch_logits(model, inputs)
        got = sess.run(["logits"], {n: inputs[n] for n in feed_names})[0]
        if got.shape != ref.shape:
            raise VerificationError(f"{onnx_path}: logits shape {got.shape} at (batch, seq)=({batch}, {seq}), "
                                    f"PyTorch gives {ref.shape}")
        if not np.all(np.isfinite(got)):
            raise VerificationError(f"{onnx_path}: non-finite logits at (batch, seq)=({batch}, {seq})")
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
        worst = max(worst, diff)
        if diff > atol:
            raise VerificationError(
                f"{onnx_path}: ONNX and PyTorch logits differ by {diff:.3e} > atol {atol:.1e} at (batch, seq)="
                f"({batch}, {seq})"
            )
    return worst


# ---------------------------------------------------------------------------------------------------------------------
# graph optimisation
# ---------------------------------------------------------------------------------------------------------------------
def fused_attention_heads(onnx_path: str | Path) -> list[int]:
    """``num_heads`` of every fused ``Attention``/``MultiHeadAttention`` node, in graph (= layer) order.

    Args:
        onnx_path: an (optimised) ONNX file.

    Returns:
        One entry per fused attention node.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    heads: list[int] = []
    for node in model.graph.node:
        if node.op_type in ("Attention", "MultiHeadAttention") and node.domain == "com.microsoft":
            n = next((a.i for a in node.attribute if a.name == "num_heads"), -1)
            heads.append(int(n))
    return heads


def op_counts(onnx_path: str | Path) -> dict[str, int]:
    """Count nodes per op type (``domain:op`` for non-default domains)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return counts


class FusionReport(dict):
    """Result of :func:`check_fusion`: ``{"expected": [...], "fused": [...], "ok": bool, "message": str}``."""


def check_fusion(onnx_path: str | Path, expected_heads: Sequence[int] | None) -> FusionReport:
    """Compare fused Attention nodes with the expected kept-head counts (layers with 0 heads have no attention).

    Args:
        onnx_path: the optimised ONNX file.
        expected_heads: kept heads per layer (e.g. ``plan.kept_counts``), or ``None`` to only report.

    Returns:
        A :class:`FusionReport`.
    """
    fused = fused_attention_heads(onnx_path)
    if expected_heads is None:
        return FusionReport(expected=None, fused=fused, ok=True, message=f"fused Attention num_heads {fused}")
    expected = [int(h) for h in expected_heads if int(h) > 0]
    ok = fused == expected
    if ok:
        msg = f"fused Attention num_heads {fused} match the plan"
    elif not fused:
        msg = (f"no Attention node was fused (expected {len(expected)} with num_heads {expected}); on transformers 5.x"
               " call get_adapter(model).make_fusable_(model) before export_onnx")
    else:
        msg = f"fused Attention num_heads {fused} differ from the plan's kept heads {expected}"
    return FusionReport(expected=expected, fused=fused, ok=ok, message=msg)


def prepare_graph(fp32_path: str | Path, out_path: str | Path, *, graph: str = "plain",
                  expected_heads: Sequence[int] | None = None) -> Path:
    """The graph the quantizer gets: ``plain`` = the exported graph itself, ``fused`` = :func:`optimize_onnx`.

    ``plain`` leaves fusion to ONNX Runtime at session load, on whatever device runs the file; ``fused`` bakes the
    transformers optimizer's fusions into the file (and checks the fused ``num_heads``). Which is faster is a
    property of the device: on this project's x86 host the fused INT8 graph was 1.16-1.18x slower (profiles'
    ``quant.graph`` and its reason).

    Returns:
        The path of the graph to quantize (``fp32_path`` itself for ``plain``).
    """
    if graph == "plain":
        return Path(fp32_path)
    if graph == "fused":
        return optimize_onnx(fp32_path, out_path, expected_heads=expected_heads, strict=True)
    raise ValueError(f"graph must be 'plain' or 'fused', got {graph!r}")


def optimize_onnx(
    in_path: str | Path,
    out_path: str | Path,
    *,
    expected_heads: Sequence[int] | None = None,
    strict: bool = True,
    opt_level: int = 0,
) -> Path:
    """ORT transformer graph optimisation (Attention, SkipLayerNorm, Gelu... fusion) with a fused-heads self-check.

    ``num_heads=0, hidden_size=0`` make the optimizer read each layer's head count from the graph, which is how
    uneven pruned layers get a correct per-node ``num_heads``. ``opt_level=0`` keeps the graph portable (no
    hardware-specific ORT layout transforms baked into the file); ORT applies its own level at session time.

    Fusion policy (documented choice): a *wrong* fused ``num_heads`` always raises, because such a graph computes
    different attention than the plan. A *missing* fusion (fewer fused nodes than layers with heads, none at all)
    raises with ``strict=True`` (the default in the export pipeline: an unfused graph is 20-40% slower and would
    make the latency promise false) and is a loud ``logging`` + ``warnings`` warning with ``strict=False``.

    Args:
        in_path: exported ONNX file.
        out_path: destination of the optimised ONNX.
        expected_heads: kept heads per layer of the plan (0 for layers without attention), or ``None`` to skip the
            check.
        strict: raise on a missing fusion instead of warning.
        opt_level: ORT optimisation level baked into the file (0 = only the transformer fusions).

    Returns:
        ``out_path``.

    Raises:
        VerificationError: fused ``num_heads`` differ from ``expected_heads``, or (strict) fusion is missing.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    in_path, out_path = Path(in_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # ORT's optimizer logs every fusion at INFO/WARNING level through its own loggers; keep them quiet.
        for name in ("onnxruntime.transformers", "fusion_base", "onnx_model", "fusion_attention", "optimizer"):
            logging.getLogger(name).setLevel(logging.ERROR)
        opt = optimize_model(str(in_path), model_type="bert", num_heads=0, hidden_size=0, opt_level=opt_level,
                             use_gpu=False)
    # save_model_to_file sorts the graph topologically and adds the com.microsoft opset import that the fused
    # contrib ops need (a plain onnx.save of opt.model lacks it and breaks shape inference downstream).
    opt.save_model_to_file(str(out_path), use_external_data_format=opt.model.ByteSize() > _EXTERNAL_DATA_THRESHOLD)
    ensure_inputs(out_path, graph_input_names(in_path))
    report = check_fusion(out_path, expected_heads)
    if not report["ok"]:
        wrong = report["fused"] and len(report["fused"]) == len(report["expected"])
        if wrong or strict:
            raise VerificationError(f"{out_path}: {report['message']}")
        log.warning("ATTENTION FUSION MISSING: %s", report["message"])
        warnings.warn(f"ATTENTION FUSION MISSING: {report['message']}", RuntimeWarning, stacklevel=2)
    return out_path
