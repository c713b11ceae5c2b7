"""Recovered models for a certification sequence: the model each tested plan is compiled from.

The bundle compiles and certifies the plans of the frozen sequence in order (:mod:`edgeprune.certify.core`) and
asks this module, plan by plan, for the PyTorch model to compile. What that model is depends on the recovery:

* ``none``: the unpruned model (the compile chain prunes it);
* ``scale``: the least-squares rescaling of the kept units (:mod:`edgeprune.recovery.scale`), folded into a copy;
* ``refit``: the full least-squares weight refit (:mod:`edgeprune.recovery.refit`), folded into a copy;
* ``distill``: gradual pruning with distillation along the sequence (:func:`edgeprune.recovery.distill.
  distill_gradual_`): the plans are made nested (:func:`nested_plans`), the student is pruned to plan 1 and
  distilled from the unpruned model, then pruned further to plan 2 and distilled again, ... one saved model per
  plan. Stages are built lazily, when certification asks for them, so a sequence that stops at plan 2 never
  trains plan 3. Each stage is checkpointed (``work/distill/plan-<k>``): a resumed build continues where it stopped
  and gets the weights of an uninterrupted run (fixed step counts, seeded).

Fit and distillation data never include the certify split (the caller passes the search split, the default task's
fine-tune + search splits, or the user's ``--distill-data``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgeprune.errors import EdgepruneError
from edgeprune.plan import HeadPlan

RECOVERIES = ("none", "scale", "refit", "distill")


def nested_plans(plans: Sequence[HeadPlan]) -> tuple[list[HeadPlan], list[bool]]:
    """Make a least-to-most-compressed sequence nested, keeping its last plan.

    Plan ``j`` becomes the units removed by any of plans ``1..j`` that the last plan removes too, so every plan
    removes a superset of the previous one's units and the last plan is unchanged (gradual pruning needs nested
    plans; an A* frontier is nested along its greedy path but not always beyond it).

    Returns:
        ``(plans, changed)``: the nested plans and, per plan, whether it differs from the input.
    """
    if not plans:
        return [], []
    last = plans[-1]
    final_units = _units(last)
    out, changed, union = [], [], set()
    for p in plans[:-1]:
        union |= _units(p)
        units = union & final_units
        q = _plan_from_units(last, units)
        out.append(q)
        changed.append(_units(q) != _units(p))
    out.append(last)
    changed.append(False)
    return out, changed


def _units(plan: HeadPlan) -> set:
    return {("h", l, h) for l, h in plan.removed()} | ({("f", l, b) for l, b in plan.ffn_removed()}
                                                       if plan.has_ffn else set())


def _plan_from_units(template: HeadPlan, units: set) -> HeadPlan:
    plan = HeadPlan.from_removed(template.num_heads, [(l, h) for k, l, h in units if k == "h"])
    if template.has_ffn:
        plan = plan.with_ffn_removed(template.ffn_block_size, template.ffn_num_blocks,
                                     [(l, b) for k, l, b in units if k == "f"])
    return plan


@dataclass
class DistillSettings:
    """Distillation along the sequence.

    Attributes:
        epochs: passes over the distillation texts in total, shared by the stages in proportion to the units each
            removes (fixed step counts, so a resumed build is step for step the same run).
        batch_size, max_length, lr: as :class:`edgeprune.recovery.distill.DistillConfig`.
        seed: batch order and dropout seed.
    """

    epochs: float = 1.5
    batch_size: int = 32
    max_length: int = 64
    lr: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise EdgepruneError(f"--distill-epochs must be > 0, got {self.epochs}")


@dataclass
class Recoverer:
    """Hands the bundle the model to compile for each plan of the certification sequence.

    Args:
        method: one of :data:`RECOVERIES`.
        model: the unpruned model (never modified).
        tokenizer: its tokenizer.
        fit_data: texts for the scale/refit fits (the search split).
        distill_data: texts for distillation (``TextDataset``; never the certify split).
        plans: the whole frozen sequence (``distill`` makes it nested: :attr:`plans` is what is compiled).
        work: folder for distillation checkpoints and stage models.
        fit_examples: fit texts for scale/refit.
        max_length: truncation length of the fits.
        distill: :class:`DistillSettings`.
        progress: called with ``(message, fraction of the current stage)`` during distillation.
        threads: torch threads of every fit and of distillation (None: the physical cores). Fixed, not taken from
            the load: float sums depend on the thread count, and a resumed build (whose search stage, which sets
            threads from the load, is reused) must write the uninterrupted run's bytes.
    """

    method: str
    model: Any
    tokenizer: Any
    fit_data: Any = None
    distill_data: Any = None
    plans: Sequence[HeadPlan] = ()
    work: Optional[Path] = None
    fit_examples: int = 1024
    max_length: int = 128
    distill: DistillSettings = field(default_factory=DistillSettings)
    progress: Optional[Callable[[str, float], None]] = None
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.method not in RECOVERIES:
            raise EdgepruneError(f"unknown recovery {self.method!r}; choose one of {', '.join(RECOVERIES)}")
        self.plans = list(self.plans)
        self.adjusted = [False] * len(self.plans)
        if self.method == "distill":
            if self.work is None or self.distill_data is None:
                raise EdgepruneError("distillation needs a work folder and distillation texts")
            if not self.plans:
                raise EdgepruneError("distillation needs the sequence's plans")
            self.plans, self.adjusted = nested_plans(self.plans)
        if self.method in ("refit",):
            from edgeprune.recovery.refit import unsupported_reason

            why = unsupported_reason(self.model)
            if why:
                raise EdgepruneError(f"--recovery refit is not available for this model: {why}; use --recovery "
                                     "distill, scale or none")
        if self.method in ("scale", "refit") and self.fit_data is None:
            raise EdgepruneError(f"--recovery {self.method} needs fit data (the search split)")
        if self.threads is None:
            from edgeprune.search.evaluate import physical_cores

            self.threads = physical_cores()

    # ---- the bundle's callback ---------------------------------------------------------------------------------
    def __call__(self, index: int, plan: HeadPlan) -> tuple[Any, Optional[HeadPlan], Optional[dict]]:
        """``(model, plan to prune it with or None if it is already pruned, recovery record or None)``."""
        if plan.is_full:
            return self.model, plan, None  # the unpruned plan is shipped as it is
        if self.method == "none":
            return self.model, plan, None
        import torch

        torch.set_num_threads(self.threads)  # fixed (see ``threads``), before the teacher's logits too
        if self.method == "scale":
            from edgeprune.recovery.scale import recovered_copy

            folded, info = recovered_copy(self.model, self.tokenizer, self.fit_data, plan,
                                          examples=self.fit_examples, max_length=self.max_length, batch_size=32)
            return folded, plan, {**info, "recovery": "scale"}
        if self.method == "refit":
            from edgeprune.recovery.refit import RefitConfig, refit_plan

            folded, rec = refit_plan(self.model, self.tokenizer, self.fit_data, plan,
                                     RefitConfig(max_examples=self.fit_examples, max_length=min(self.max_length, 128)))
            info = rec.to_dict()
            info.pop("sublayers", None)
            return folded, plan, {**info, "recovery": "refit"}
        return self._distilled(index, plan)

    # ---- distillation ------------------------------------------------------------------------------------------
    def stage_steps(self) -> list[int]:
        """Optimiser steps of each pruned stage: the total epochs' steps shared in proportion to the units each
        stage removes beyond the previous one (a stage that removes 4 units needs less repair than one that removes
        30), each stage getting at least a quarter of an equal share."""
        pruned = [p for p in self.plans if not p.is_full]
        per_epoch = math.ceil(len(self.distill_data) / self.distill.batch_size)
        total = max(len(pruned), round(self.distill.epochs * per_epoch))
        added, before = [], set()
        for p in pruned:
            units = _units(p)
            added.append(len(units - before))
            before = units
        floor = 0.25 * sum(added) / max(len(added), 1)
        weights = [max(a, floor) for a in added]
        return [max(1, round(total * w / sum(weights))) for w in weights] if weights else []

    def _distilled(self, index: int, plan: HeadPlan):
        from edgeprune.recovery.distill import DistillConfig, distill_gradual_
        from edgeprune.task.modeling import clone_model

        if index >= len(self.plans) or _units(self.plans[index]) != _units(plan):
            raise EdgepruneError(f"plan {index} is not the sequence's plan {index}: distillation follows the frozen "
                                 "sequence (a bug)")
        chain = [p for p in self.plans[:index + 1] if not p.is_full]
        per_epoch = math.ceil(len(self.distill_data) / self.distill.batch_size)
        budgets = self.stage_steps()[:len(chain)]
        configs = [DistillConfig(epochs=max(1, math.ceil(n / per_epoch)), max_steps=n,
                                 batch_size=self.distill.batch_size, max_length=self.distill.max_length,
                                 lr=self.distill.lr, seed=self.distill.seed,
                                 threads=self.threads) for n in budgets]
        cfg = configs[-1]
        student = clone_model(self.model)
        total = sum(budgets)

        def progress(info: dict) -> None:
            if self.progress:
                k = info["stage"]
                done = sum(budgets[:k]) + info["step"]
                self.progress(f"distill plan {index} stage {k + 1}/{len(chain)} step {info['step']}/"
                              f"{budgets[k]} loss {info['loss']:.3f}", done / max(total, 1))

        results = distill_gradual_(student, self.model, self.tokenizer, self.distill_data, chain, configs,
                                   checkpoint_dir=Path(self.work) / "distill", progress=progress)
        res = results[-1]
        info = {"recovery": "distill", "method": "gradual pruning with distillation (KL at T + CE)",
                "stage": len(chain), "stages": len(chain), "steps": res.steps,
                "seconds": round(sum(r.seconds for r in results), 2), "examples": res.examples,
                "last_loss": res.last_loss, "adjusted_to_nest": bool(self.adjusted[index]),
                "surgery_max_abs_diff": max((r.surgery_max_abs_diff or 0.0) for r in results),
                "config": cfg.to_dict(), "data": str(getattr(self.distill_data, "source", "texts"))}
        return student.eval(), None, info


__all__ = ["RECOVERIES", "DistillSettings", "Recoverer", "nested_plans"]
