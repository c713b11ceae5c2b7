"""Conversion of a shipped ONNX file to ORT format (``.ort``) plus its required-operators config, for reduced
onnxruntime builds on mobile."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgeprune.errors import VerificationError


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

    from edgeprune.onnx.export import onnx_files

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeprune-ort-") as tmp:
        work = Path(tmp) / "in"
        work.mkdir()
        for f in onnx_files(onnx_path):
            shutil.copy2(f, work / f.name)
        console = io.StringIO()
        # The tool's loggers log INFO lines ("Created config in /tmp/...") through handlers that hold the real
        # stderr, which the redirection below cannot catch: raise their level for the call.
        import logging

        loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("ort_format")]
        levels = [lg.level for lg in loggers]
        try:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
            with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
                convert_onnx_models_to_ort(work / onnx_path.name, output_dir=Path(tmp) / "out",
                                           optimization_styles=[OptimizationStyle[optimization_style]],
                                           target_platform=target_platform,
                                           custom_op_library_path=Path(custom_op_library) if custom_op_library else None)
        except OSError:
            raise  # no space, permission: the caller reports the system's refusal, not a failed conversion
        except Exception as exc:  # noqa: BLE001 - the tool raises plain exceptions; keep its output for the user
            raise VerificationError(f"ORT format conversion failed: {exc}\n{console.getvalue()[-2000:]}") from exc
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
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
