"""edgeprune: make BERT-family text classifiers fit edge devices.

Importing this package is cheap: it imports neither torch nor onnxruntime. Heavy modules are imported by the
functions that need them.
"""

from __future__ import annotations

from .errors import EdgepruneError
from .plan import HeadLayout, HeadPlan

__version__ = "0.1.0"

__all__ = ["EdgepruneError", "HeadLayout", "HeadPlan", "__version__", "build"]


def build(*args, **kwargs):
    """Run the whole job (see :func:`edgeprune.pipeline.build`); imported lazily to keep ``import edgeprune`` cheap."""
    from .pipeline import build as _build

    return _build(*args, **kwargs)
