"""Model-family adapters, keyed by ``config.model_type``.

>>> adapter = get_adapter(model)           # doctest: +SKIP
>>> adapter.layout(model).heads_per_layer  # doctest: +SKIP

Adding a family: subclass :class:`~edgeprune.adapters.base.Adapter` in a new module, decorate it with
``@register_adapter("model_type", ...)``, import the module below, and add a tiny config to
``edgeprune.testing.TINY_CONFIGS`` (a test fails when a registered family has no tiny model).
"""

from __future__ import annotations

from ..errors import UnsupportedModelError

_REGISTRY: dict[str, "object"] = {}
#: Families whose structure cannot be pruned per layer: ``model_type`` -> the reason, given instead of the generic
#: "not supported" so the user knows it is a property of the architecture, not a missing adapter.
_REFUSED: dict[str, str] = {}


def refuse_family(model_type: str, reason: str) -> None:
    """Register a family that is refused with ``reason`` (e.g. ALBERT's cross-layer weight sharing)."""
    _REFUSED[model_type] = reason


def register_adapter(*model_types: str):
    """Class decorator registering an adapter for the given ``config.model_type`` values."""

    def wrap(cls):
        cls.model_types = tuple(model_types)
        instance = cls()
        for t in model_types:
            _REGISTRY[t] = instance
        return cls

    return wrap


def supported_model_types() -> list[str]:
    """Every registered ``config.model_type``."""
    return sorted(_REGISTRY)


def get_adapter(model_or_type):
    """The adapter for a model, a config or a ``model_type`` string.

    Raises:
        UnsupportedModelError: naming the model type and the supported ones; for a refused family (ALBERT) or a
            config variant the adapter cannot handle, naming the reason.
    """
    config = None
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", model_or_type)
        model_type = getattr(config, "model_type", None)
    if model_type in _REFUSED:
        raise UnsupportedModelError(f"model type {model_type!r} cannot be pruned per layer: {_REFUSED[model_type]}")
    try:
        adapter = _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported model types: {', '.join(supported_model_types())}"
        ) from None
    reason = adapter.unsupported_reason(config) if config is not None else None
    if reason:
        raise UnsupportedModelError(f"this {model_type!r} model is not supported: {reason}")
    return adapter


from . import bert, deberta_v2, distilbert, modernbert, mpnet, refused  # noqa: E402,F401  (registration side effect)
