"""Distillation of a pruned model from the unpruned one: KL at temperature T plus a weighted cross-entropy.

Loss per batch (Hinton et al. 2015)::

    T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  ce_weight * CE(student, label)

with T = 2 and ce_weight = 0.5 by default, AdamW (peak lr 1e-4 with a linear warm-up and decay to 0, decoupled weight decay 0.01 except biases and
LayerNorms), batch 32, texts truncated to 64 tokens and padded per batch. The teacher's logits are computed once
over the distillation texts (eval mode, no dropout) and reused for every epoch; the student trains with dropout.
Texts without labels (``ce_weight = 0`` or a plain list of strings) train on the KL term alone.

* **Data**: whatever the caller passes. For the default task use :func:`task_distill_data` (its fine-tune split +
  search split, never the certify split: training on it would void the certificate).
* **Deterministic for a seed**: the batch order of epoch ``e`` is drawn from ``seed + e`` (length-grouped by
  default), dropout
  from a generator seeded with ``seed``; on the same machine and thread count two runs give identical weights.
* **Budget**: ``epochs`` and/or ``max_steps`` and/or ``max_seconds`` (whichever ends first).
* **Checkpoint / resume**: with ``checkpoint_dir`` the full state (weights, plan, optimizer, RNG, position) is
  written atomically to ``checkpoint_dir/distill.pt`` every ``checkpoint_every`` steps, at each epoch end and when
  the budget stops the run; a later call with the same folder, config and data continues from there and ends with
  exactly the weights of an uninterrupted run.
* **Masked or pruned students**: a physically pruned student (``prune_and_verify_``) trains as is; an unpruned
  student with ``plan`` trains under the plan's masks (the removed units get no gradient; prune afterwards).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from edgeprune.adapters import get_adapter
from edgeprune.task.data import TextDataset
from edgeprune.errors import DataError, EdgepruneError
from edgeprune.plan import HeadPlan

CHECKPOINT = "distill.pt"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`distill_`.

    Attributes:
        epochs: passes over the texts (the run may stop earlier on ``max_steps`` / ``max_seconds``).
        max_steps: stop after this many optimiser steps in total (None: no cap).
        max_seconds: stop once this call has trained this long (None: no cap; checked after every step, so it is
            a budget, not a deterministic point: a run stopped by time is not reproducible step for step; a resumed
            call gets its own budget).
        lr: AdamW peak learning rate.
        schedule: ``"linear"`` (warm up linearly over the first ``warmup`` share of the run's steps, then decay
            linearly to 0 at its last step, so the run ends on settled weights) or ``"constant"``. The run's steps
            are ``epochs x batches per epoch``, capped by ``max_steps``; a resumed run must be given the same.
        warmup: share of the steps spent warming up (``"linear"`` only).
        weight_decay: AdamW decoupled weight decay (not on biases and LayerNorm weights).
        batch_size: texts per step.
        max_length: truncation length in tokens.
        temperature: softening temperature T of the KL term (scaled by T^2).
        ce_weight: weight of the cross-entropy on the gold labels (0 = KL only).
        hidden_weight: weight of the layer-wise hidden-state term (0 = off): the mean over the student's layer
            outputs of the relative squared error ``sum ||h_s - h_t||^2 / sum ||h_t||^2`` over the real (unpadded)
            tokens, student layer ``j`` of ``L_s`` matched to teacher layer ``round(j * L_t / L_s)`` (TinyBERT /
            CoFi-style layer distillation). The teacher's hidden states are computed once with its logits and kept
            in memory in float16 (unpadded: about ``tokens x layers x hidden x 2`` bytes, ~1.3 GB for the default
            task); a resumed run recomputes them, so it needs the teacher model.
        int8_aware: train through a simulation of the shipped INT8 file (quantization-aware distillation): every
            ``nn.Linear`` of the student computes with fake-quantized S8 per-channel weights and U8 per-tensor
            inputs, as ORT's dynamic quantization runs them (``refit.simulate_int8``), gradients passed straight
            through the rounding; the trained weights stay float (they are quantized at export).
        seed: batch order and dropout seed.
        checkpoint_every: also checkpoint every this many steps (None: only at epoch ends and at the stop).
        threads: torch intra-op threads (None: leave as is).
        group_by_length: batches of similar lengths (shuffled, sorted inside chunks of 50 batches, batch order
            shuffled; :func:`edgeprune.task.predict.length_grouped_batches`), each padded to its own longest
            text: about half the compute of random batches on short sentences. False = random batches.
    """

    epochs: int = 2
    max_steps: int | None = None
    max_seconds: float | None = None
    lr: float = 1e-4
    schedule: str = "linear"
    warmup: float = 0.06
    weight_decay: float = 0.01
    batch_size: int = 32
    max_length: int = 64
    temperature: float = 2.0
    ce_weight: float = 0.5
    hidden_weight: float = 0.0
    int8_aware: bool = False
    seed: int = 0
    checkpoint_every: int | None = None
    threads: int | None = None
    group_by_length: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 2:
            raise DataError("distillation needs epochs >= 1, batch_size >= 1 and max_length >= 2")
        if not (self.lr > 0 and self.temperature > 0 and self.ce_weight >= 0 and self.weight_decay >= 0
                and self.hidden_weight >= 0):
            raise DataError("distillation needs lr > 0, temperature > 0 and ce_weight, hidden_weight, weight_decay "
                            ">= 0")
        if self.schedule not in ("linear", "constant"):
            raise DataError(f"distillation schedule must be 'linear' or 'constant', got {self.schedule!r}")
        if not 0 <= self.warmup < 1:
            raise DataError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.max_steps is not None and self.max_steps < 1:
            raise DataError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise DataError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillConfig":
        return cls(**data)

    def _resume_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed (budgets and threads may change between runs)."""
        d = self.to_dict()
        for k in ("epochs", "max_steps", "max_seconds", "checkpoint_every", "threads"):
            d.pop(k)
        for k in ("hidden_weight", "int8_aware"):
            if not d[k]:
                d.pop(k)  # checkpoints written before the field existed stay resumable
        return d

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based) of a ``total``-step run."""
        if self.schedule == "constant":
            return self.lr
        warm = max(1, round(self.warmup * total)) if self.warmup > 0 else 0
        if step < warm:
            return self.lr * (step + 1) / warm
        return self.lr * max(0.0, (total - step) / max(1, total - warm))


@dataclass
class DistillResult:
    """What :func:`distill_` did.

    Attributes:
        steps: optimiser steps done in total (resumed steps included).
        epochs_done: completed epochs.
        seconds: training wall time in total (resumed runs included; teacher logits excluded).
        teacher_seconds: time to compute the teacher's logits in this call (0 when reused).
        stopped_by: ``"epochs"``, ``"max_steps"`` or ``"max_seconds"``.
        resumed_from_step: the checkpoint step this call started from (0 for a fresh run).
        examples: distillation texts.
        losses: mean loss per completed epoch.
        last_loss: mean loss of the last up to 50 steps.
        config: the settings.
        surgery_max_abs_diff: with :func:`distill_gradual_`, the stage's pruned-vs-masked logit difference.
    """

    steps: int
    epochs_done: int
    seconds: float
    teacher_seconds: float
    stopped_by: str
    resumed_from_step: int
    examples: int
    losses: list[float] = field(default_factory=list)
    last_loss: float | None = None
    config: DistillConfig | None = None
    surgery_max_abs_diff: float | None = None  # gradual pruning: this stage's pruned == masked check

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["config"] = self.config.to_dict() if self.config else None
        d["seconds"] = round(self.seconds, 2)
        d["teacher_seconds"] = round(self.teacher_seconds, 2)
        return d


# ---- data ---------------------------------------------------------------------------------------------------------
def task_distill_data(task: Any) -> TextDataset:
    """The default distillation texts of a task: its fine-tune split followed by its search split.

    Reads ``task.finetune`` and ``task.search`` only; the certify split is never touched (training on it would void
    the certificate; tests/test_distill.py poisons it).
    """
    ft, se = task.finetune, task.search
    return TextDataset(list(ft.texts) + list(se.texts), list(ft.labels) + list(se.labels),
                       text_pairs=(list(ft.text_pairs) + list(se.text_pairs)) if ft.text_pairs is not None
                       and se.text_pairs is not None else None, source=f"{ft.source} + {se.source}")


def _as_dataset(data: Any) -> tuple[TextDataset, bool]:
    """``(dataset, has_labels)`` from a TextDataset-like object or a plain list of strings."""
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        return TextDataset(list(data), [0] * len(data), source="unlabelled texts"), False
    labels = getattr(data, "labels", None)
    return data, labels is not None and len(labels) == len(data)


def _fingerprint(data: TextDataset) -> str:
    h = hashlib.sha256()
    for t in data.texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    h.update(json.dumps(list(data.labels)).encode())
    return h.hexdigest()


def _tokenize(model, tokenizer, data: TextDataset, idx: Sequence[int], max_length: int) -> dict[str, torch.Tensor]:
    from edgeprune.onnx.export import input_names_for

    pairs = [data.text_pairs[i] for i in idx] if data.text_pairs is not None else None
    enc = tokenizer([data.texts[i] for i in idx], pairs, truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt")
    names = input_names_for(model)
    return {k: enc[k] for k in names if k in enc}


def teacher_logits(teacher, tokenizer, data: Any, *, max_length: int = 64, batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits ``(N, classes)`` on every text of ``data`` (eval mode, no gradient), in data order."""
    return teacher_targets(teacher, tokenizer, data, max_length=max_length, batch_size=batch_size)[0]


class HiddenCache:
    """The teacher's hidden states of every text, unpadded, float16: ``states[offsets[i]:offsets[i+1]]`` is text
    ``i``'s ``(tokens, layers + 1, hidden)`` block (embeddings first)."""

    def __init__(self, states: torch.Tensor, offsets: torch.Tensor) -> None:
        self.states, self.offsets = states, offsets

    @property
    def layers(self) -> int:
        return self.states.shape[1] - 1

    def batch(self, idx: Sequence[int], attention_mask: torch.Tensor) -> torch.Tensor:
        """``(layers + 1, batch, length, hidden)`` float32 for a padded batch of texts ``idx``: each text's states
        at the positions of its real tokens in ``attention_mask`` (either padding side), zeros elsewhere."""
        mask = attention_mask.bool()
        out = torch.zeros(self.states.shape[1], len(idx), mask.shape[1], self.states.shape[2])
        for b, i in enumerate(idx):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            if hi - lo != int(mask[b].sum()):
                raise DataError(f"text {i}: {int(mask[b].sum())} tokens now, {hi - lo} when the teacher ran "
                                "(another tokenizer or max_length?)")
            out[:, b, mask[b]] = self.states[lo:hi].transpose(0, 1).float()
        return out


def teacher_targets(teacher, tokenizer, data: Any, *, max_length: int = 64, batch_size: int = 64,
                    hidden: bool = False) -> tuple[torch.Tensor, "HiddenCache | None"]:
    """The teacher's logits ``(N, classes)`` in data order and, with ``hidden``, its :class:`HiddenCache`."""
    data, _ = _as_dataset(data)
    teacher.eval()
    out, blocks = [], []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            feed = _tokenize(teacher, tokenizer, data, idx, max_length)
            res = teacher(**feed, output_hidden_states=hidden)
            out.append(res.logits.float())
            if hidden:
                hs = torch.stack(res.hidden_states, 2)  # (batch, seq, layers + 1, hidden)
                mask = feed["attention_mask"].bool()
                for b in range(len(idx)):
                    blocks.append(hs[b][mask[b]].to(torch.float16))
    logits = torch.cat(out).clone()  # a normal tensor (not an inference tensor), safe to save and index
    if not hidden:
        return logits, None
    lengths = torch.tensor([0] + [blk.shape[0] for blk in blocks])
    return logits, HiddenCache(torch.cat(blocks).clone(), torch.cumsum(lengths, 0))


def hidden_loss(student_states: Sequence[torch.Tensor], teacher_states: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the student's layer outputs of ``sum ||h_s - h_t||^2 / sum ||h_t||^2`` on the real tokens
    (``student_states``: the model's ``hidden_states``, embeddings first; ``teacher_states``:
    :meth:`HiddenCache.batch`)."""
    ls, lt = len(student_states) - 1, teacher_states.shape[0] - 1
    mask = attention_mask.unsqueeze(-1).to(teacher_states.dtype)
    total = student_states[0].new_zeros(())
    for j in range(1, ls + 1):
        t = teacher_states[round(j * lt / ls)]
        total = total + (((student_states[j] - t) * mask) ** 2).sum() / ((t * mask) ** 2).sum().clamp_min(1e-12)
    return total / ls


# ---- trainability -------------------------------------------------------------------------------------------------
def make_trainable_(model: nn.Module) -> nn.Module:
    """Replace inference-mode parameters and buffers (left by surgery run under ``torch.inference_mode``) by normal
    tensors, in place; returns ``model``. A no-op for a normal model."""
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.is_inference():
                mod._parameters[name] = nn.Parameter(p.clone(), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None and b.is_inference():
                mod._buffers[name] = b.clone()
    return model


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                 temperature: float, ce_weight: float) -> torch.Tensor:
    """``T^2 KL(p_teacher,T || p_student,T) + ce_weight * CE(student, labels)`` (batch mean)."""
    t = temperature
    kl = nn.functional.kl_div(nn.functional.log_softmax(student_logits / t, -1),
                              nn.functional.log_softmax(teacher_logits / t, -1), log_target=True,
                              reduction="batchmean") * (t * t)
    if labels is None or ce_weight == 0:
        return kl
    known = labels >= 0  # unlabelled texts (label -100, e.g. --distill-data) train on the KL term only
    if not bool(known.any()):
        return kl
    return kl + ce_weight * nn.functional.cross_entropy(student_logits[known], labels[known])


# ---- checkpoints --------------------------------------------------------------------------------------------------
def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint intact


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only: no pickle code
    except Exception as exc:  # noqa: BLE001 - a damaged file is reported, not silently ignored
        raise EdgepruneError(f"cannot read distillation checkpoint {path}: {exc}") from exc
    if state.get("format") != CHECKPOINT_FORMAT:
        raise EdgepruneError(f"{path}: unknown distillation checkpoint format {state.get('format')!r}")
    return state


# ---- the training loop --------------------------------------------------------------------------------------------
def distill_(student: nn.Module, teacher: nn.Module | None, tokenizer, data: Any,
             config: DistillConfig | None = None, *, plan: HeadPlan | None = None,
             checkpoint_dir: str | os.PathLike | None = None, teacher_logits_: torch.Tensor | None = None,
             teacher_hidden_: HiddenCache | None = None, progress: Callable[[dict[str, Any]], None] | None = None) -> DistillResult:
    """Train ``student`` in place to match ``teacher`` on ``data`` (module docstring).

    Args:
        student: the pruned model (physically pruned, or unpruned with ``plan`` to train under its masks). Its
            parameters are trained in place; inference-mode tensors are converted first.
        teacher: the unpruned model (not modified); may be None when ``teacher_logits_`` is given.
        tokenizer: the tokenizer.
        data: distillation texts: a ``TextDataset`` (labels used for the CE term) or a list of strings (KL only).
            Never the certify split.
        config: :class:`DistillConfig` (defaults if None).
        plan: train an unpruned student under this plan's masks.
        checkpoint_dir: folder for ``distill.pt`` (resumed from when it exists).
        teacher_logits_: precomputed :func:`teacher_logits` for ``data`` (saves one pass when distilling several
            students from one teacher).
        teacher_hidden_: precomputed :func:`teacher_targets` hidden states for ``data`` (``hidden_weight > 0``).
        progress: called after every step with ``{"step", "total_steps", "epoch", "loss", "seconds"}``.

    Returns:
        :class:`DistillResult`. The student is left in eval mode.

    Raises:
        DataError: empty data, or logits that do not match the data.
        EdgepruneError: a checkpoint in ``checkpoint_dir`` belongs to other settings, data or model layout.
    """
    cfg = config or DistillConfig()
    data, has_labels = _as_dataset(data)
    n = len(data)
    if n == 0:
        raise DataError("distillation needs at least one text")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    make_trainable_(student)
    adapter = get_adapter(student)
    fingerprint = _fingerprint(data)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    state = _load_checkpoint(ckpt_path) if ckpt_path is not None else None
    key = {"config": cfg._resume_key(), "data": fingerprint, "examples": n,
           "plan": adapter.current_plan(student).to_dict(), "mask_plan": plan.to_dict() if plan else None}
    if state is not None and state["key"] != key:
        raise EdgepruneError(f"{ckpt_path} belongs to another distillation run (settings, data or model layout "
                             "differ); use another folder or delete it")
    t_teacher = time.time()
    teacher_seconds = 0.0
    want_hidden = cfg.hidden_weight > 0 and teacher_hidden_ is None
    hidden_t = teacher_hidden_
    if state is not None and "teacher_logits" in state and not want_hidden:
        logits_t = state["teacher_logits"]
    elif teacher_logits_ is not None and not want_hidden:
        logits_t = teacher_logits_
    else:
        if teacher is None:
            raise DataError("distill_ needs a teacher, or precomputed teacher logits (and hidden states with "
                            "hidden_weight > 0)")
        logits_t, hidden_t = teacher_targets(teacher, tokenizer, data, max_length=cfg.max_length,
                                             hidden=cfg.hidden_weight > 0)
        if teacher_logits_ is not None:
            logits_t = teacher_logits_
        teacher_seconds = time.time() - t_teacher
    if hidden_t is not None and len(hidden_t.offsets) != n + 1:
        raise DataError(f"teacher hidden states for {len(hidden_t.offsets) - 1} texts, {n} texts given")
    if logits_t.shape[0] != n:
        raise DataError(f"{logits_t.shape[0]} teacher logits for {n} texts")
    labels = torch.tensor(list(data.labels), dtype=torch.long) if has_labels and cfg.ce_weight > 0 else None

    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    lengths = None
    if cfg.group_by_length:
        from edgeprune.task.predict import length_grouped_batches

        pairs = list(data.text_pairs) if data.text_pairs is not None else None
        lengths = [len(x) for x in tokenizer(list(data.texts), pairs, truncation=True,
                                             max_length=cfg.max_length)["input_ids"]]
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    opt = torch.optim.AdamW(_param_groups(student, cfg.weight_decay), lr=cfg.lr)
    dropout_rng = torch.Generator().manual_seed(cfg.seed)
    step, epoch, pos, elapsed, losses = 0, 0, 0, 0.0, []
    epoch_loss = 0.0
    if state is not None:
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        dropout_rng.set_state(state["dropout_rng"])
        step, epoch, pos, elapsed = state["step"], state["epoch"], state["pos"], state["seconds"]
        losses, epoch_loss = list(state["losses"]), state["epoch_loss"]
    resumed_from = step
    recent: list[float] = []

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        _save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "key": key, "model": student.state_dict(), "optimizer": opt.state_dict(),
            "dropout_rng": dropout_rng.get_state(), "step": step, "epoch": epoch, "pos": pos, "seconds": elapsed,
            "losses": losses, "epoch_loss": epoch_loss, "teacher_logits": logits_t,
        })

    mask_ctx = adapter.mask_heads(student, plan) if plan is not None else contextlib.nullcontext()
    if cfg.int8_aware:
        from edgeprune.recovery.refit import simulate_int8

        sim_ctx = simulate_int8([student], ste=True)
    else:
        sim_ctx = contextlib.nullcontext()
    stopped_by = "epochs"
    t_start = time.time() - elapsed
    t_call = time.time()
    student.train()
    try:
        with mask_ctx, sim_ctx, torch.random.fork_rng(devices=[]):
            while epoch < cfg.epochs:
                if cfg.group_by_length:
                    epoch_batches = length_grouped_batches(lengths, cfg.batch_size, random.Random(cfg.seed + epoch))
                else:
                    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
                    epoch_batches = [order[k:k + cfg.batch_size] for k in range(0, n, cfg.batch_size)]
                while pos < steps_per_epoch:
                    if step >= total:
                        stopped_by = "max_steps"
                        break
                    idx = epoch_batches[pos]
                    feed = _tokenize(student, tokenizer, data, idx, cfg.max_length)
                    # dropout draws from the global generator: drive it from our own, saved in checkpoints
                    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=dropout_rng)))
                    res = student(**feed, output_hidden_states=cfg.hidden_weight > 0)
                    loss = distill_loss(res.logits, logits_t[idx], labels[idx] if labels is not None else None,
                                        cfg.temperature, cfg.ce_weight)
                    if cfg.hidden_weight > 0:
                        loss = loss + cfg.hidden_weight * hidden_loss(
                            res.hidden_states, hidden_t.batch(idx, feed["attention_mask"]), feed["attention_mask"])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for group in opt.param_groups:
                        group["lr"] = cfg.lr_at(step, total)
                    opt.step()
                    step, pos = step + 1, pos + 1
                    lv = float(loss.detach())
                    epoch_loss += lv
                    recent = (recent + [lv])[-50:]
                    elapsed = time.time() - t_start
                    if progress:
                        progress({"step": step, "total_steps": total, "epoch": epoch, "loss": lv,
                                  "seconds": elapsed})
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                        checkpoint()
                    if cfg.max_seconds is not None and time.time() - t_call >= cfg.max_seconds and step < total:
                        stopped_by = "max_seconds"
                        break
                if stopped_by != "epochs":
                    break
                losses.append(epoch_loss / steps_per_epoch)
                epoch, pos, epoch_loss = epoch + 1, 0, 0.0
                checkpoint()
            if stopped_by != "epochs":
                checkpoint()
    finally:
        student.eval()
    return DistillResult(steps=step, epochs_done=epoch, seconds=elapsed, teacher_seconds=teacher_seconds,
                         stopped_by=stopped_by, resumed_from_step=resumed_from, examples=n, losses=losses,
                         last_loss=sum(recent) / len(recent) if recent else None, config=cfg)
