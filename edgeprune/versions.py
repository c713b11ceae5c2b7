"""Library versions recorded in every artifact (plan.json, edgeprune.json, report.json, the default-task manifest).

Read from package metadata, so recording them imports nothing heavy.
"""

from __future__ import annotations

import platform

PACKAGES = ("edgeprune", "torch", "transformers", "tokenizers", "safetensors", "onnx", "onnxruntime", "numpy")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """``{"python": ..., package: version or "not installed"}`` for ``packages``."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
