"""Recovered models for a certification sequence: the model each tested plan is compiled from.

The bundle compiles and certifies the plans of the frozen sequence in order (:mod:`edgeprune.certify.core`) and
asks this module, plan by plan, for the PyTorch model to compile. What that model is depends on the recovery:

* ``none``: the unpruned model (the compile chain prunes it);
* ``scale``: the least-squares rescaling of the kept units (:mod:`edgeprune.recovery.scale`), folded into a copy;
* ``refit``: the full least-squares weight refit (:mod:`edgeprune.recovery.refit`), folded into a copy;
* ``distill``: for the plans the search priced beyond the promise (``beyond_refit``: the refit alone is not
  expected to pass them), the full weight refit *then* distillation from the unpruned model with the whole budget
  (:func:`edgeprune.recovery.distill.distill_`, a linear warm-up and decay so the run ends on settled weights); the
  other plans get the refit alone. Each distilled plan starts from its own refit (no gradual chain: measured on the
  default task, a stage trained on a share of the budget ends mid-training and loses accuracy against the teacher:
  117 worse / 80 better for 2 heads + 2 blocks after 106 steps). A distillation is built only when certification
  asks for its plan, and checkpointed (``work/distill/plan-<k>``): a resumed build continues where it stopped and
  gets the weights of an uninterrupted run (fixed step counts, seeded, fixed threads).

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


@dataclass
class DistillSettings:
    """Distillation along the sequence.

    Attributes:
        epochs: passes over the distillation texts for each distilled plan (a fixed step count, so a resumed build
            is step for step the same run).
        batch_size, max_length, lr: as :class:`edgeprune.recovery.distill.DistillConfig` (peak lr, linear warm-up
            and decay).
        seed: batch order and dropout seed.
        ce_weight: weight of the cross-entropy on the gold labels next to the KL term (0 = KL only).
        int8_aware: distil through the simulated INT8 forward pass of the shipped file (quantization-aware:
            ``DistillConfig.int8_aware``).
    """

    epochs: float = 2.0
    batch_size: int = 32
    max_length: int = 64
    lr: float = 1e-4
    seed: int = 0
    ce_weight: float = 0.5
    int8_aware: bool = False

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
        plans: the whole frozen sequence.
        beyond_refit: per plan of ``plans``, whether the search priced it beyond the promise (``distill`` distils
            those and refits the others; empty: every pruned plan is distilled).
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
    beyond_refit: Sequence[bool] = ()
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
        self.beyond_refit = list(self.beyond_refit) or [True] * len(self.plans)
        if len(self.beyond_refit) != len(self.plans):
            raise EdgepruneError(f"{len(self.beyond_refit)} beyond-refit flags for {len(self.plans)} plans (a bug)")
        self._teacher_logits = None
        from edgeprune.recovery.refit import unsupported_reason

        self.refit_unsupported = unsupported_reason(self.model)
        if self.method == "distill":
            if self.work is None or self.distill_data is None:
                raise EdgepruneError("distillation needs a work folder and distillation texts")
            if not self.plans:
                raise EdgepruneError("distillation needs the sequence's plans")
        if self.method == "refit" and self.refit_unsupported:
            raise EdgepruneError(f"--recovery refit is not available for this model: {self.refit_unsupported}; use "
                                 "--recovery distill, scale or none")
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
        if self.method == "refit" or (self.method == "distill" and not self._distils(index, plan)):
            folded, info = self._refit(plan)
            return folded, plan, info
        return self._distilled(index, plan)

    def _refit(self, plan: HeadPlan) -> tuple[Any, dict]:
        from edgeprune.recovery.refit import RefitConfig, refit_plan

        folded, rec = refit_plan(self.model, self.tokenizer, self.fit_data, plan,
                                 RefitConfig(max_examples=self.fit_examples, max_length=min(self.max_length, 128)))
        info = rec.to_dict()
        info.pop("sublayers", None)
        return folded, {**info, "recovery": "refit"}

    def _distils(self, index: int, plan: HeadPlan) -> bool:
        """Whether plan ``index`` is distilled (``distill`` only): it was priced beyond the promise, or the family
        has no refit to fall back on, or there is no fit data."""
        if index >= len(self.plans) or _units(self.plans[index]) != _units(plan):
            raise EdgepruneError(f"plan {index} is not the sequence's plan {index}: the recovery follows the frozen "
                                 "sequence (a bug)")
        return bool(self.beyond_refit[index]) or bool(self.refit_unsupported) or self.fit_data is None

    # ---- distillation ------------------------------------------------------------------------------------------
    def distill_steps(self) -> int:
        """Optimiser steps of each distilled plan: ``epochs`` passes over the distillation texts."""
        per_epoch = math.ceil(len(self.distill_data) / self.distill.batch_size)
        return max(1, round(self.distill.epochs * per_epoch))

    def _distilled(self, index: int, plan: HeadPlan):
        from edgeprune.recovery.distill import CHECKPOINT, DistillConfig, distill_, teacher_logits
        from edgeprune.task.modeling import clone_model, prune_and_verify_

        if self.refit_unsupported or self.fit_data is None:
            student, start = clone_model(self.model), "the unpruned weights"
        else:
            student, _ = self._refit(plan)
            start = "the full weight refit"
        surgery = prune_and_verify_(student, plan)
        steps = self.distill_steps()
        per_epoch = math.ceil(len(self.distill_data) / self.distill.batch_size)
        cfg = DistillConfig(epochs=max(1, math.ceil(steps / per_epoch)), max_steps=steps,
                            batch_size=self.distill.batch_size, max_length=self.distill.max_length,
                            lr=self.distill.lr, seed=self.distill.seed, threads=self.threads,
                            ce_weight=self.distill.ce_weight, int8_aware=self.distill.int8_aware)
        folder = Path(self.work) / "distill" / f"plan-{index}"
        logits = None
        if not (folder / CHECKPOINT).is_file():  # a resumed run reads the teacher's logits from its checkpoint
            if self._teacher_logits is None:
                self._teacher_logits = teacher_logits(self.model, self.tokenizer, self.distill_data,
                                                      max_length=cfg.max_length)
            logits = self._teacher_logits

        def progress(info: dict) -> None:
            if self.progress:
                self.progress(f"distill plan {index} step {info['step']}/{steps} loss {info['loss']:.3f}",
                              info["step"] / steps)

        res = distill_(student, self.model, self.tokenizer, self.distill_data, cfg, checkpoint_dir=folder,
                       teacher_logits_=logits, progress=progress)
        loss = "KL at T" + (" + CE" if cfg.ce_weight else "") + (", through the simulated INT8 file"
                                                                   if cfg.int8_aware else "")
        info = {"recovery": "distill", "method": f"distillation ({loss}) from {start}",
                "steps": res.steps, "seconds": round(res.seconds, 2), "examples": res.examples,
                "last_loss": res.last_loss, "surgery_max_abs_diff": surgery, "resumed_from_step": res.resumed_from_step,
                "config": cfg.to_dict(), "data": str(getattr(self.distill_data, "source", "texts"))}
        return student.eval(), None, info


def _units(plan: HeadPlan) -> set:
    return {("h", l, h) for l, h in plan.removed()} | ({("f", l, b) for l, b in plan.ffn_removed()}
                                                       if plan.has_ffn else set())


__all__ = ["RECOVERIES", "DistillSettings", "Recoverer"]
