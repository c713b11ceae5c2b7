"""Head layouts and pruning plans: pure data, no torch.

A :class:`HeadLayout` describes the attention heads of an encoder (layers x heads). A :class:`HeadPlan` says which
heads each layer keeps, by their *original* index, and optionally which feed-forward (FFN) blocks it keeps: the
intermediate neurons of a layer are cut into ``block_size``-wide blocks (block ``b`` = neurons
``b*block_size .. (b+1)*block_size - 1``) and the plan lists the original indices of the kept blocks. Plans
round-trip through plain dicts (JSON), so the search, the surgery, the saved model and the report all speak the same
format::

    {"num_heads": [12, 12], "kept_heads": [[0, 3, 7], []]}                       # heads only (FFN untouched)
    {"num_heads": [12, 12], "kept_heads": [[0, 3, 7], []],
     "ffn": {"block_size": 128, "num_blocks": [12, 12], "kept_blocks": [[0, 1, 5], []]}}

A plan without ``"ffn"`` says nothing about the FFN: applied to a model, it leaves the FFN as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import PlanError

Head = tuple[int, int]  # (layer, head) in original indices
Block = tuple[int, int]  # (layer, FFN block) in original indices


def _kept_except(counts: Sequence[int], removed: Iterable[tuple[int, int]], unit: str,
                 units: str) -> tuple[tuple[int, ...], ...]:
    """Per layer, the indices ``0..counts[layer]-1`` not in ``removed`` ((layer, index) pairs, validated)."""
    gone: set[tuple[int, int]] = set()
    for layer, i in removed:
        if not 0 <= layer < len(counts):
            raise PlanError(f"layer {layer} does not exist (the model has layers 0..{len(counts) - 1})")
        if not 0 <= i < counts[layer]:
            raise PlanError(f"layer {layer}: {unit} {i} does not exist ({units} 0..{counts[layer] - 1})")
        gone.add((layer, i))
    return tuple(tuple(i for i in range(n) if (layer, i) not in gone) for layer, n in enumerate(counts))


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
        ffn_block_size: neurons per FFN block, or None when the plan does not touch the FFN.
        ffn_num_blocks: FFN blocks per layer of the unpruned model (intermediate size // block size), or None.
        ffn_kept: per layer, the sorted original indices of the kept FFN blocks, or None.
    """

    num_heads: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]
    ffn_block_size: int | None = None
    ffn_num_blocks: tuple[int, ...] | None = None
    ffn_kept: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.kept) != len(self.num_heads):
            raise PlanError(f"plan has {len(self.kept)} layers but the model has {len(self.num_heads)}")
        for layer, (n, kept) in enumerate(zip(self.num_heads, self.kept)):
            if list(kept) != sorted(set(kept)):
                raise PlanError(f"layer {layer}: kept heads must be sorted and unique, got {list(kept)}")
            bad = [h for h in kept if not 0 <= h < n]
            if bad:
                raise PlanError(f"layer {layer}: head(s) {bad} do not exist (the layer has heads 0..{n - 1})")
        ffn = (self.ffn_block_size, self.ffn_num_blocks, self.ffn_kept)
        if any(x is None for x in ffn):
            if any(x is not None for x in ffn):
                raise PlanError("an FFN plan needs block_size, num_blocks and kept_blocks together")
            return
        if self.ffn_block_size <= 0:
            raise PlanError(f"FFN block size must be positive, got {self.ffn_block_size}")
        if len(self.ffn_num_blocks) != len(self.num_heads) or len(self.ffn_kept) != len(self.num_heads):
            raise PlanError(
                f"FFN plan has {len(self.ffn_kept)} layers ({len(self.ffn_num_blocks)} block counts) but the head "
                f"plan has {len(self.num_heads)}"
            )
        for layer, (n, kept) in enumerate(zip(self.ffn_num_blocks, self.ffn_kept)):
            if n <= 0:
                raise PlanError(f"layer {layer}: an FFN needs >0 blocks, got {n}")
            if list(kept) != sorted(set(kept)):
                raise PlanError(f"layer {layer}: kept FFN blocks must be sorted and unique, got {list(kept)}")
            bad = [b for b in kept if not 0 <= b < n]
            if bad:
                raise PlanError(f"layer {layer}: FFN block(s) {bad} do not exist (the layer has blocks 0..{n - 1})")

    # ---- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def full(cls, num_heads: Sequence[int]) -> "HeadPlan":
        """The plan that keeps every head."""
        return cls(tuple(num_heads), tuple(tuple(range(n)) for n in num_heads))

    @classmethod
    def from_removed(cls, num_heads: Sequence[int], removed: Iterable[Head]) -> "HeadPlan":
        """The plan that removes exactly ``removed`` (a set of (layer, head) pairs)."""
        num_heads = tuple(num_heads)
        return cls(num_heads, _kept_except(num_heads, removed, "head", "heads"))

    @classmethod
    def from_dict(cls, data: dict) -> "HeadPlan":
        """Inverse of :meth:`to_dict` (the ``"ffn"`` entry is optional); raises :class:`PlanError` on a malformed
        dict."""
        try:
            num_heads = tuple(int(n) for n in data["num_heads"])
            kept = tuple(tuple(int(h) for h in layer) for layer in data["kept_heads"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan (need 'num_heads' and 'kept_heads' lists): {exc!r}") from exc
        ffn = data.get("ffn")
        if ffn is None:
            return cls(num_heads, kept)
        try:
            block_size = int(ffn["block_size"])
            num_blocks = tuple(int(n) for n in ffn["num_blocks"])
            kept_blocks = tuple(tuple(int(b) for b in layer) for layer in ffn["kept_blocks"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(
                f"malformed FFN plan (need 'block_size', 'num_blocks' and 'kept_blocks'): {exc!r}"
            ) from exc
        return cls(num_heads, kept, block_size, num_blocks, kept_blocks)

    def with_ffn(self, block_size: int, num_blocks: Sequence[int],
                 kept_blocks: Sequence[Sequence[int]] | None = None) -> "HeadPlan":
        """This plan's heads plus an FFN part (``kept_blocks=None`` keeps every block)."""
        num_blocks = tuple(int(n) for n in num_blocks)
        if kept_blocks is None:
            kept_blocks = [range(n) for n in num_blocks]
        kept_t = tuple(tuple(int(b) for b in k) for k in kept_blocks)
        return HeadPlan(self.num_heads, self.kept, int(block_size), num_blocks, kept_t)

    def with_ffn_removed(self, block_size: int, num_blocks: Sequence[int], removed: Iterable[Block]) -> "HeadPlan":
        """This plan's heads plus the FFN plan that removes exactly ``removed`` (a set of (layer, block) pairs)."""
        num_blocks = tuple(int(n) for n in num_blocks)
        return self.with_ffn(block_size, num_blocks, _kept_except(num_blocks, removed, "FFN block", "blocks"))

    def heads_only(self) -> "HeadPlan":
        """This plan without its FFN part."""
        return HeadPlan(self.num_heads, self.kept)

    def select_layers(self, indices: Sequence[int]) -> "HeadPlan":
        """The plan of the encoder truncated to ``indices`` (heads and FFN blocks)."""
        heads = HeadPlan(tuple(self.num_heads[i] for i in indices), tuple(self.kept[i] for i in indices))
        if not self.has_ffn:
            return heads
        return heads.with_ffn(self.ffn_block_size, [self.ffn_num_blocks[i] for i in indices],
                              [self.ffn_kept[i] for i in indices])

    # ---- views --------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict = {"num_heads": list(self.num_heads), "kept_heads": [list(k) for k in self.kept]}
        if self.has_ffn:
            d["ffn"] = {
                "block_size": self.ffn_block_size,
                "num_blocks": list(self.ffn_num_blocks),
                "kept_blocks": [list(k) for k in self.ffn_kept],
            }
        return d

    @property
    def has_ffn(self) -> bool:
        """True when the plan carries an FFN part (it may still keep every block)."""
        return self.ffn_kept is not None

    @property
    def ffn_kept_counts(self) -> tuple[int, ...] | None:
        """Kept FFN blocks per layer (None without an FFN part)."""
        return None if self.ffn_kept is None else tuple(len(k) for k in self.ffn_kept)

    @property
    def ffn_kept_widths(self) -> tuple[int, ...] | None:
        """Kept FFN neurons per layer (None without an FFN part)."""
        counts = self.ffn_kept_counts
        return None if counts is None else tuple(c * self.ffn_block_size for c in counts)

    def ffn_removed(self) -> list[Block]:
        """The removed (layer, FFN block) pairs, layer-major ([] without an FFN part)."""
        if not self.has_ffn:
            return []
        return [(layer, b) for layer, n in enumerate(self.ffn_num_blocks) for b in range(n)
                if b not in self.ffn_kept[layer]]

    @property
    def ffn_num_removed(self) -> int:
        return 0 if not self.has_ffn else sum(self.ffn_num_blocks) - sum(self.ffn_kept_counts)

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
        """True when nothing is removed: no head and no FFN block."""
        return self.num_removed == 0 and self.ffn_num_removed == 0

    def check_fits(self, layout: HeadLayout) -> None:
        """Raise :class:`PlanError` if this plan was made for another head layout."""
        if tuple(self.num_heads) != tuple(layout.heads_per_layer):
            raise PlanError(
                f"plan is for heads per layer {list(self.num_heads)} but the model has {list(layout.heads_per_layer)}"
            )


Unit = tuple[int, int]  # (layer, unit index): a head when index < heads of the layer, else an FFN block


@dataclass(frozen=True)
class UnitSpace:
    """The prunable units the search works over: heads only, or heads and FFN blocks together.

    A unit is ``(layer, i)``: ``i < heads_per_layer[layer]`` is head ``i``; ``i >= heads_per_layer[layer]`` is FFN
    block ``i - heads_per_layer[layer]``. One flat pair keeps search states plain, sortable sets of 2-tuples (the
    journal, the cache keys and A*'s tie-breaking need nothing else), and a heads-only space is exactly the old
    heads-only state space.

    Attributes:
        heads_per_layer: heads of each layer of the unpruned model.
        ffn_blocks_per_layer: FFN blocks of each layer (None = heads only).
        ffn_block_size: neurons per FFN block (None = heads only).
    """

    heads_per_layer: tuple[int, ...]
    ffn_blocks_per_layer: tuple[int, ...] | None = None
    ffn_block_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads_per_layer", tuple(int(h) for h in self.heads_per_layer))
        if not self.heads_per_layer or any(h <= 0 for h in self.heads_per_layer):
            raise PlanError(f"a unit space needs >0 heads in every layer, got {self.heads_per_layer}")
        if (self.ffn_blocks_per_layer is None) != (self.ffn_block_size is None):
            raise PlanError("give both ffn_blocks_per_layer and ffn_block_size, or neither")
        if self.ffn_blocks_per_layer is not None:
            blocks = tuple(int(b) for b in self.ffn_blocks_per_layer)
            object.__setattr__(self, "ffn_blocks_per_layer", blocks)
            if len(blocks) != len(self.heads_per_layer) or any(b <= 0 for b in blocks):
                raise PlanError(f"FFN blocks per layer {blocks} do not fit heads per layer {self.heads_per_layer}")
            if int(self.ffn_block_size) <= 0:
                raise PlanError(f"FFN block size must be positive, got {self.ffn_block_size}")

    @classmethod
    def of(cls, layout: "HeadLayout | Sequence[int] | UnitSpace") -> "UnitSpace":
        """Coerce a head layout, a heads-per-layer sequence or a space into a space."""
        if isinstance(layout, UnitSpace):
            return layout
        if isinstance(layout, HeadLayout):
            return cls(layout.heads_per_layer)
        return cls(tuple(layout))

    @property
    def has_ffn(self) -> bool:
        return self.ffn_blocks_per_layer is not None

    @property
    def num_layers(self) -> int:
        return len(self.heads_per_layer)

    def units_per_layer(self) -> tuple[int, ...]:
        blocks = self.ffn_blocks_per_layer or (0,) * self.num_layers
        return tuple(h + b for h, b in zip(self.heads_per_layer, blocks))

    def all_units(self) -> list[Unit]:
        """Every unit, layer-major (heads of a layer before its FFN blocks)."""
        return [(layer, i) for layer, n in enumerate(self.units_per_layer()) for i in range(n)]

    def is_head(self, unit: Unit) -> bool:
        return unit[1] < self.heads_per_layer[unit[0]]

    def split(self, removed: Iterable[Unit]) -> tuple[list[Head], list[Block]]:
        """Removed units -> (removed heads, removed FFN blocks), both in original indices."""
        heads: list[Head] = []
        blocks: list[Block] = []
        per_layer = self.units_per_layer()
        for layer, i in removed:
            if not (0 <= layer < self.num_layers and 0 <= i < per_layer[layer]):
                raise PlanError(f"unit ({layer}, {i}) does not exist (units per layer {list(per_layer)})")
            if i < self.heads_per_layer[layer]:
                heads.append((layer, i))
            else:
                blocks.append((layer, i - self.heads_per_layer[layer]))
        return sorted(heads), sorted(blocks)

    def block_unit(self, layer: int, block: int) -> Unit:
        """The unit of FFN block ``block`` of ``layer``."""
        return (layer, self.heads_per_layer[layer] + block)

    def kept_counts(self, removed: Iterable[Unit]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """(kept heads per layer, kept FFN blocks per layer or None for a heads-only space)."""
        heads = list(self.heads_per_layer)
        blocks = list(self.ffn_blocks_per_layer) if self.has_ffn else None
        for layer, i in removed:
            if i < self.heads_per_layer[layer]:
                heads[layer] -= 1
            elif blocks is not None:
                blocks[layer] -= 1
        return tuple(heads), None if blocks is None else tuple(blocks)

    def plan(self, removed: Iterable[Unit]) -> HeadPlan:
        """The plan removing exactly ``removed``; it has an FFN part iff the space has FFN blocks."""
        heads, blocks = self.split(removed)
        plan = HeadPlan.from_removed(self.heads_per_layer, heads)
        if self.has_ffn:
            plan = plan.with_ffn_removed(self.ffn_block_size, self.ffn_blocks_per_layer, blocks)
        return plan

    def units_of(self, plan: HeadPlan) -> list[Unit]:
        """Inverse of :meth:`plan`: the removed units of ``plan`` (its FFN part must match the space's blocks)."""
        units = list(plan.removed())
        if plan.has_ffn:
            if not self.has_ffn or plan.ffn_block_size != self.ffn_block_size \
                    or tuple(plan.ffn_num_blocks) != self.ffn_blocks_per_layer:
                raise PlanError("the plan's FFN blocks do not match the search space's")
            units += [self.block_unit(layer, b) for layer, b in plan.ffn_removed()]
        return sorted(units)

    def to_dict(self) -> dict:
        d: dict = {"heads_per_layer": list(self.heads_per_layer)}
        if self.has_ffn:
            d.update(ffn_blocks_per_layer=list(self.ffn_blocks_per_layer), ffn_block_size=self.ffn_block_size)
        return d
