"""Peer baseline (issue #20): optimum's ``ORTQuantizer`` with its arm64 preset, run in another Python environment.

optimum (2.1 + optimum-onnx 0.1) only installs next to transformers < 4.58, so it is never importable in edgeprune's
main (transformers 5.x) environment. Instead of skipping the baseline there, :func:`quantize_with_optimum` runs it
in a **subprocess** of the transformers 4.57 environment's interpreter (``.venv-tf457``, built by
``scripts/test.sh``): the FP32 ONNX file and the model's ``config.json`` are staged in a folder, a self-contained
script (:data:`_SCRIPT`: no edgeprune import, arguments as one JSON argv, one JSON result line on stdout) runs

    ORTQuantizer.from_pretrained(stage, file_name=...).quantize(
        save_dir=out_dir, quantization_config=AutoQuantizationConfig.arm64(is_static=False, per_channel=True))

and reports the INT8 file and the versions of optimum, optimum-onnx, transformers and onnxruntime *of that
environment* (the file's numbers belong to those versions, not to the calling environment's).

The interpreter, first found wins: the ``python`` argument; ``$EDGEPRUNE_OPTIMUM_PYTHON``; the current interpreter
if it can import ``optimum.onnxruntime`` (the 4.57 environment itself); ``<repo>/.venv-tf457/bin/python``; a
``.venv-tf457`` next to the current environment (a git worktree shares its main checkout's environments). Even when
the current interpreter has optimum, the quantization runs in a subprocess: one code path, whatever the caller, and
the quantizer's memory and logging stay out of the benchmark process.

The result is a dict: ``{"status": "ok", "path", "versions", "python", "seconds"}``, or ``{"status": "not
available", "detail"}`` (no such interpreter, or optimum does not import there) or ``{"status": "failed",
"detail"}`` (the quantizer raised, crashed or timed out; the detail ends with the subprocess's stderr tail).
Benchmarks record it as it is and keep going.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "EDGEPRUNE_OPTIMUM_PYTHON"
VENV_NAME = ".venv-tf457"
#: The prefix of the subprocess's result line (optimum and ORT may print to stdout themselves).
RESULT_TAG = "EDGEPRUNE_OPTIMUM_RESULT "
#: Characters of the subprocess's stderr kept in a failure's detail.
STDERR_TAIL = 1500
PACKAGES = ("optimum", "optimum-onnx", "transformers", "onnxruntime")

# Runs in the *other* environment: standard library + optimum only, no edgeprune (it need not be installed there).
_SCRIPT = r'''
import json, sys, time, traceback
from importlib import metadata

TAG = "EDGEPRUNE_OPTIMUM_RESULT "
args = json.loads(sys.argv[1])


def emit(result, code):
    print(TAG + json.dumps(result), flush=True)
    sys.exit(code)


versions = {}
for name in args["packages"]:
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        versions[name] = None
versions["python"] = sys.version.split()[0]
try:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
except Exception as exc:
    traceback.print_exc()
    emit({"status": "not available", "detail": f"optimum does not import in {sys.executable}: "
                                               f"{type(exc).__name__}: {exc}", "versions": versions}, 3)
try:
    t = time.monotonic()
    config = AutoQuantizationConfig.arm64(is_static=False, per_channel=args["per_channel"])
    quantizer = ORTQuantizer.from_pretrained(args["stage"], file_name=args["file_name"])
    out = quantizer.quantize(save_dir=args["save_dir"], quantization_config=config)
    files = sorted(p for p in __import__("pathlib").Path(out).glob("*.onnx"))
    if not files:
        emit({"status": "failed", "detail": f"the quantizer wrote no .onnx file in {out}", "versions": versions}, 4)
    emit({"status": "ok", "path": str(files[0]), "versions": versions, "seconds": round(time.monotonic() - t, 2),
          "preset": {"name": "arm64", "is_static": False, "per_channel": args["per_channel"],
                     "format": str(config.format), "mode": str(config.mode),
                     "activations": str(config.activations_dtype), "weights": str(config.weights_dtype),
                     "weights_symmetric": config.weights_symmetric, "reduce_range": config.reduce_range,
                     "operators": list(config.operators_to_quantize)}}, 0)
except Exception as exc:
    traceback.print_exc()
    emit({"status": "failed", "detail": f"the quantizer raised {type(exc).__name__}: {str(exc)[:300]}",
          "versions": versions}, 5)
'''


def _has_optimum() -> bool:
    """Whether this interpreter can import ``optimum.onnxruntime`` (found, not imported: that pulls in torch)."""
    try:
        return importlib.util.find_spec("optimum") is not None and \
            importlib.util.find_spec("optimum.onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def find_optimum_python(python: str | None = None) -> tuple[str | None, str]:
    """The interpreter to run optimum with (see the module docstring for the order) and where it came from.

    Args:
        python: an explicit interpreter path (wins over everything else).

    Returns:
        ``(path or None, how it was found / what was tried)``. An explicit or ``$EDGEPRUNE_OPTIMUM_PYTHON`` path is
        returned even when it does not exist, so the caller reports it as "not available" rather than silently
        falling back to another environment.
    """
    if python:
        return str(python), "the python argument"
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR], f"${ENV_VAR}"
    if _has_optimum():
        return sys.executable, "the current interpreter (it imports optimum)"
    candidates = {REPO / VENV_NAME / "bin" / "python": "the repository's",
                  Path(sys.prefix).parent / VENV_NAME / "bin" / "python": "next to the current environment"}
    for c, where in candidates.items():  # a dict: the two are one path in the main checkout
        if c.is_file():
            return str(c), f"{VENV_NAME} ({where})"
    return None, "tried " + ", ".join(str(c) for c in candidates) + f" and ${ENV_VAR} (unset)"


def _tail(text: str, n: int = STDERR_TAIL) -> str:
    text = (text or "").strip()
    return text if len(text) <= n else "..." + text[-n:]


def _stage(fp32_onnx: Path, config_dir_or_model: Any, stage: Path) -> None:
    """Copy the FP32 file (with any external data) and write/copy ``config.json`` into ``stage``."""
    from edgeprune.onnx.export import onnx_files

    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        files = onnx_files(fp32_onnx)
    except Exception:  # noqa: BLE001 - an unreadable file is the quantizer's to report (as "failed")
        files = [fp32_onnx]
    for f in files:
        shutil.copy2(f, stage / f.name)
    src = config_dir_or_model
    if isinstance(src, (str, Path)):
        src = Path(src)
        cfg = src / "config.json" if src.is_dir() else src
        if not cfg.is_file():
            raise FileNotFoundError(f"no config.json at {src}")
        shutil.copy2(cfg, stage / "config.json")
    else:  # a transformers model or config: optimum reads the config next to the file
        getattr(src, "config", src).save_pretrained(stage)


def quantize_with_optimum(fp32_onnx: str | Path, config_dir_or_model: Any, out_dir: str | Path,
                          python: str | None = None, *, per_channel: bool = True,
                          timeout: float = 1800.0) -> dict[str, Any]:
    """optimum's arm64 dynamic preset on an FP32 ONNX file, in a subprocess of the optimum environment.

    Args:
        fp32_onnx: the FP32 ONNX file (e.g. ``onnx.export.export_onnx`` of the dense model).
        config_dir_or_model: a folder holding the model's ``config.json`` (or the file itself), or a transformers
            model / config (its ``save_pretrained`` writes it); optimum reads it next to the ONNX file.
        out_dir: folder for the staged input (``out_dir/src``) and the quantized file (``out_dir``).
        python: the interpreter to use (default: see :func:`find_optimum_python`).
        per_channel: the preset's per-channel weights (``AutoQuantizationConfig.arm64(per_channel=...)``).
        timeout: seconds before the subprocess is killed (reported as "failed").

    Returns:
        ``{"status": "ok", "path", "versions", "python", "found_by", "seconds", "preset"}`` or
        ``{"status": "not available" | "failed", "detail", ...}``; never raises for an unusable environment or a
        quantizer error.
    """
    fp32_onnx, out_dir = Path(fp32_onnx), Path(out_dir)
    exe, found_by = find_optimum_python(python)
    if exe is None:
        return {"status": "not available", "detail": f"no interpreter with optimum: {found_by}"}
    if not (Path(exe).is_file() and os.access(exe, os.X_OK)):
        return {"status": "not available", "detail": f"{exe} ({found_by}) does not exist or is not executable",
                "python": exe}
    if not fp32_onnx.is_file():
        return {"status": "failed", "detail": f"no FP32 ONNX file at {fp32_onnx}", "python": exe}
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = out_dir / "src"
    try:
        _stage(fp32_onnx, config_dir_or_model, stage)
    except Exception as exc:  # noqa: BLE001 - e.g. no config.json: a reason, not a crash of the benchmark
        return {"status": "failed", "detail": f"staging the input failed: {type(exc).__name__}: {exc}", "python": exe}
    args = {"stage": str(stage), "file_name": fp32_onnx.name, "save_dir": str(out_dir), "per_channel": per_channel,
            "packages": list(PACKAGES)}
    # The other environment must not see this one's packages (PYTHONPATH would put transformers 5.x first).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    t = time.monotonic()
    try:
        proc = subprocess.run([exe, "-c", _SCRIPT, json.dumps(args)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(out_dir), check=False)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return {"status": "failed", "detail": f"timed out after {timeout:.0f} s; stderr tail: {_tail(err)}",
                "python": exe}
    except OSError as exc:  # e.g. not a Python at all
        return {"status": "not available", "detail": f"cannot run {exe}: {exc}", "python": exe}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        return {"status": "failed", "python": exe,
                "detail": f"{exe} exited with code {proc.returncode} and no result line; stderr tail: "
                          f"{_tail(proc.stderr)}"}
    res = json.loads(lines[-1][len(RESULT_TAG):])
    res.update({"python": exe, "found_by": found_by, "wall_s": round(time.monotonic() - t, 1)})
    if res["status"] != "ok":
        res["detail"] += f" (exit code {proc.returncode}); stderr tail: {_tail(proc.stderr)}"
    return res


def versions_text(res: dict[str, Any]) -> str:
    """``optimum 2.1.0, optimum-onnx 0.1.0, transformers 4.57.6, onnxruntime 1.32.0`` (of the optimum run)."""
    v = res.get("versions") or {}
    return ", ".join(f"{k} {v.get(k) or '?'}" for k in PACKAGES)
