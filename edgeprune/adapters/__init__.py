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
        UnsupportedModelError: naming the model type and the supported ones.
    """
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", model_or_type)
        model_type = getattr(config, "model_type", None)
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported model types: {', '.join(supported_model_types())}"
        ) from None


from . import bert, distilbert  # noqa: E402,F401  (registration side effect)
