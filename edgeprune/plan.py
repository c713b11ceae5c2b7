"""Head layouts and pruning plans: pure data, no torch.

A :class:`HeadLayout` describes the attention heads of an encoder (layers x heads). A :class:`HeadPlan` says which
heads each layer keeps, by their *original* index. Plans round-trip through plain dicts (JSON), so the search, the
surgery, the saved model and the report all speak the same format::

    {"num_heads": [12, 12], "kept_heads": [[0, 3, 7], []]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import PlanError

Head = tuple[int, int]  # (layer, head) in original indices


@dataclass(frozen=True)
class HeadLayout:
    """The attention-head geometry of an encoder.

    Attributes:
        heads_per_layer: number of heads of each layer in the unpruned model.
        head_size: width of one head (hidden_size // num_heads for BERT-family models).
        hidden_size: model width.
    """

    heads_per_layer: tuple[int, ...]
    head_size: int
    hidden_size: int

    def __post_init__(self) -> None:
        if not self.heads_per_layer or any(h <= 0 for h in self.heads_per_layer):
            raise PlanError(f"a layout needs at least one layer and >0 heads per layer, got {self.heads_per_layer}")

    @property
    def num_layers(self) -> int:
        return len(self.heads_per_layer)

    @property
    def total_heads(self) -> int:
        return sum(self.heads_per_layer)

    def all_heads(self) -> list[Head]:
        """Every (layer, head) pair, layer-major."""
        return [(layer, h) for layer, n in enumerate(self.heads_per_layer) for h in range(n)]


@dataclass(frozen=True)
class HeadPlan:
    """Which heads each layer keeps (original indices, sorted).

    Attributes:
        num_heads: heads per layer of the unpruned model.
        kept: per layer, the sorted original indices of the kept heads.
    """

    num_heads: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.kept) != len(self.num_heads):
            raise PlanError(f"plan has {len(self.kept)} layers but the model has {len(self.num_heads)}")
        for layer, (n, kept) in enumerate(zip(self.num_heads, self.kept)):
            if list(kept) != sorted(set(kept)):
                raise PlanError(f"layer {layer}: kept heads must be sorted and unique, got {list(kept)}")
            bad = [h for h in kept if not 0 <= h < n]
            if bad:
                raise PlanError(f"layer {layer}: head(s) {bad} do not exist (the layer has heads 0..{n - 1})")

    # ---- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def full(cls, num_heads: Sequence[int]) -> "HeadPlan":
        """The plan that keeps every head."""
        return cls(tuple(num_heads), tuple(tuple(range(n)) for n in num_heads))

    @classmethod
    def from_removed(cls, num_heads: Sequence[int], removed: Iterable[Head]) -> "HeadPlan":
        """The plan that removes exactly ``removed`` (a set of (layer, head) pairs)."""
        num_heads = tuple(num_heads)
        gone: set[Head] = set()
        for layer, head in removed:
            if not 0 <= layer < len(num_heads):
                raise PlanError(f"layer {layer} does not exist (the model has layers 0..{len(num_heads) - 1})")
            if not 0 <= head < num_heads[layer]:
                raise PlanError(f"layer {layer}: head {head} does not exist (heads 0..{num_heads[layer] - 1})")
            gone.add((layer, head))
        kept = tuple(tuple(h for h in range(n) if (layer, h) not in gone) for layer, n in enumerate(num_heads))
        return cls(num_heads, kept)

    @classmethod
    def from_dict(cls, data: dict) -> "HeadPlan":
        """Inverse of :meth:`to_dict`; raises :class:`PlanError` on a malformed dict."""
        try:
            num_heads = tuple(int(n) for n in data["num_heads"])
            kept = tuple(tuple(int(h) for h in layer) for layer in data["kept_heads"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan (need 'num_heads' and 'kept_heads' lists): {exc!r}") from exc
        return cls(num_heads, kept)

    # ---- views --------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"num_heads": list(self.num_heads), "kept_heads": [list(k) for k in self.kept]}

    @property
    def kept_counts(self) -> tuple[int, ...]:
        return tuple(len(k) for k in self.kept)

    def removed(self) -> list[Head]:
        """The removed (layer, head) pairs, layer-major."""
        return [(layer, h) for layer, n in enumerate(self.num_heads) for h in range(n) if h not in self.kept[layer]]

    @property
    def num_removed(self) -> int:
        return sum(self.num_heads) - sum(self.kept_counts)

    @property
    def is_full(self) -> bool:
        return self.num_removed == 0

    def check_fits(self, layout: HeadLayout) -> None:
        """Raise :class:`PlanError` if this plan was made for another head layout."""
        if tuple(self.num_heads) != tuple(layout.heads_per_layer):
            raise PlanError(
                f"plan is for heads per layer {list(self.num_heads)} but the model has {list(layout.heads_per_layer)}"
            )
