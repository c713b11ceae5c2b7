"""Masked evaluation engine: paired outcomes of many head-removal candidates against the unpruned model.

Implements the search's evaluator protocol (``evaluate(states) -> list[EvalResult]``). What makes it fast:

* the split is tokenised once, sorted by length and cut into batches padded only to their own longest example;
* the unpruned model's predictions, log-probabilities and the hidden states *entering* each layer are computed once
  and cached (within a memory cap), so a candidate whose first modified layer is ``l`` starts from the cached input
  of layer ``l``;
* one call evaluates several candidates in one pass over the data: per batch, candidates are run layer by layer
  and candidates that remove the same heads below layer ``i`` share their layer-``i`` input (a prefix tree), so the
  A* siblings that differ only in one head of layer ``l`` share all the work below ``l``;
* everything runs under ``torch.inference_mode`` on ``threads`` threads (default: physical cores).

Heads are masked with :meth:`Adapter.mask_heads` (hooks that zero a head's input slice of the attention output
projection), so masked evaluation equals physically pruning the heads. With ``ffn_block_size`` the candidates are
sets of *units* of a joint :class:`~edgeprune.plan.UnitSpace` (heads and FFN blocks); FFN blocks are masked with
:meth:`Adapter.mask_ffn` (hooks that zero the block's slice of the activated intermediate), which equals removing
the block's neurons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from edgeprune.adapters import get_adapter
from edgeprune.errors import DataError
from edgeprune.plan import UnitSpace
from edgeprune.search.core import EvalResult

if TYPE_CHECKING:  # pragma: no cover
    from edgeprune.task.data import TextDataset

Head = tuple[int, int]


def physical_cores() -> int:
    """Number of physical CPU cores (psutil), falling back to the logical count."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to tell
        n = None
    import os

    return max(1, n or os.cpu_count() or 1)


def free_cores(sample_s: float = 0.25) -> int:
    """Physical cores not busy with *other* processes, at least 1.

    Oversubscribing hurts torch badly: on a 2-core host with another busy process, a pass over 2,113 sentences took
    73 s with 2 intra-op threads and 9-17 s with 1 (measured here). The CPU use of every other process is sampled
    for ``sample_s`` seconds (psutil); this process and its children do not count, since their work is what the
    threads are for (the 1-minute load average, used before, counted the build's own latency measurements and left
    the search on one thread of an otherwise idle 2-core machine). Without psutil: the load average.
    """
    import os
    import time

    n = physical_cores()
    try:
        import psutil

        me = psutil.Process()
        ours = {me.pid} | {c.pid for c in me.children(recursive=True)}
        procs = [p for p in psutil.process_iter() if p.pid not in ours]
        for p in procs:
            try:
                p.cpu_percent(None)
            except (psutil.Error, OSError):
                pass
        time.sleep(sample_s)
        busy = 0.0
        for p in procs:
            try:
                busy += p.cpu_percent(None) / 100.0
            except (psutil.Error, OSError):
                pass
    except Exception:  # psutil missing or unable to tell: fall back to the load average
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # not available on this platform
            return n
    return max(1, min(n, int(n - busy + 0.5)))


@dataclass
class _Batch:
    index: torch.Tensor  # (B,) positions in the dataset
    inputs: dict  # input_ids / attention_mask / token_type_ids, (B, S)
    labels: torch.Tensor  # (B,)


class MaskedEvaluator:
    """Evaluate head-removal candidates on a fixed split, paired against the unpruned model.

    Args:
        model: a sequence-classification model of a supported family (unpruned). Its self-attention modules are
            swapped for the adapter's fusable equivalents in place (same weights, same outputs) so every layer can
            be run on its own.
        tokenizer: the model's tokenizer.
        dataset: the split (a :class:`edgeprune.task.data.TextDataset`: texts, optional text_pairs, labels).
        batch_size: examples per forward pass.
        max_length: truncation length in tokens.
        threads: torch intra-op threads (default: physical cores). Set process-wide.
        cache_mb: memory cap for the cached base-model layer inputs (the highest layers are cached first, as they
            save the most compute per hit). 0 disables the cache.
        ffn_block_size: search heads *and* FFN blocks of this many neurons (states are units of
            :attr:`space`); None = heads only.

    Raises:
        DataError: empty dataset, or labels outside the model's classes.
        PlanError: the block size does not divide the FFN width.
    """

    def __init__(self, model, tokenizer, dataset: "TextDataset", *, batch_size: int = 32, max_length: int = 128,
                 threads: Optional[int] = None, cache_mb: float = 512.0,
                 ffn_block_size: Optional[int] = None) -> None:
        if len(dataset) == 0:
            raise DataError("the search split is empty")
        torch.set_num_threads(threads or free_cores())
        self.model = model.eval()
        self.adapter = get_adapter(model)
        self.adapter.make_fusable_(model)
        self.layout = self.adapter.layout(model)
        self.num_layers = self.layout.num_layers
        self.max_heads = max(self.layout.heads_per_layer)
        if ffn_block_size is None:
            self.space = UnitSpace(self.layout.heads_per_layer)
        else:
            self.space = UnitSpace(self.layout.heads_per_layer, self.adapter.ffn_num_blocks(model, ffn_block_size),
                                   ffn_block_size)
        self.n = len(dataset)
        num_labels = int(getattr(model.config, "num_labels", 2))
        bad = [y for y in dataset.labels if not 0 <= y < num_labels]
        if bad:
            raise DataError(f"labels {sorted(set(bad))[:5]} are outside the model's {num_labels} classes")
        self.batches = self._tokenise(tokenizer, dataset, batch_size, max_length)
        import inspect

        if "token_type_ids" not in inspect.signature(model.forward).parameters:
            # e.g. DistilBERT: the tokenizer may still emit segment ids the model cannot take (4.57 raises on them).
            for b in self.batches:
                b.inputs.pop("token_type_ids", None)
        self.labels = torch.tensor(dataset.labels, dtype=torch.long)
        self.early_rejected = 0  # candidates stopped early (evaluate's reject_worse)
        self.batches_run = 0  # candidate-batches evaluated
        self.batches_skipped = 0  # candidate-batches early rejection saved
        self._base_pass(cache_mb)

    # ---- setup --------------------------------------------------------------------------------------------------
    @staticmethod
    def _tokenise(tokenizer, dataset, batch_size: int, max_length: int) -> list[_Batch]:
        enc = tokenizer(list(dataset.texts), list(dataset.text_pairs) if dataset.text_pairs is not None else None,
                        truncation=True, max_length=max_length, padding=False)
        ids = enc["input_ids"]
        has_tt = "token_type_ids" in enc
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Length-sorted (stable, so ties keep dataset order): each batch pads only to its own longest example.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            tt = torch.zeros((len(idx), width), dtype=torch.long) if has_tt else None
            for r, i in enumerate(idx):
                k = len(ids[i])
                input_ids[r, :k] = torch.tensor(ids[i])
                mask[r, :k] = 1
                if tt is not None:
                    tt[r, :k] = torch.tensor(enc["token_type_ids"][i])
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            if tt is not None:
                inputs["token_type_ids"] = tt
            labels = torch.tensor([dataset.labels[i] for i in idx], dtype=torch.long)
            batches.append(_Batch(torch.tensor(idx), inputs, labels))
        return batches

    def _embed(self, b: _Batch):
        return self.adapter.embed(self.model, b.inputs["input_ids"], b.inputs["attention_mask"],
                                  b.inputs.get("token_type_ids"))

    @torch.inference_mode()
    def _base_pass(self, cache_mb: float) -> None:
        """Base predictions and log-probs; cache layer inputs of the highest layers that fit in ``cache_mb``."""
        per_layer_bytes = sum(b.inputs["input_ids"].numel() for b in self.batches) * self.layout.hidden_size * 4
        budget = cache_mb * 2**20
        n_cached = min(self.num_layers, int(budget // per_layer_bytes)) if per_layer_bytes else 0
        self.cached_layers = set(range(self.num_layers - n_cached, self.num_layers))
        self._cache: list[dict[int, torch.Tensor]] = []
        self._masks: list[torch.Tensor] = []
        base_pred = torch.empty(self.n, dtype=torch.long)
        self._base_logp: list[torch.Tensor] = []
        for b in self.batches:
            hidden, layer_mask = self._embed(b)
            self._masks.append(layer_mask)
            cache = {}
            for i in range(self.num_layers):
                if i in self.cached_layers:
                    cache[i] = hidden
                hidden = self.adapter.layer_forward(self.model, i, hidden, layer_mask)
            logits = self.adapter.classify(self.model, hidden, layer_mask)
            self._cache.append(cache)
            self._base_logp.append(torch.log_softmax(logits.float(), dim=-1))
            base_pred[b.index] = logits.argmax(-1)
        self.base_pred = base_pred
        self.base_correct = base_pred == self.labels
        self.base_accuracy = float(self.base_correct.float().mean())

    # ---- evaluation ---------------------------------------------------------------------------------------------
    def _layer_mask(self, layer: int, removed_in_layer: frozenset) -> torch.Tensor:
        mask = torch.ones(self.num_layers, self.max_heads)
        for h in removed_in_layer:
            mask[layer, h] = 0.0
        return mask

    def _masked(self, layer: int, removed_in_layer: frozenset):
        """Context masking the removed units (heads and FFN blocks) of one layer."""
        import contextlib

        n_heads = self.layout.heads_per_layer[layer]
        heads = frozenset(u for u in removed_in_layer if u < n_heads)
        blocks = [u - n_heads for u in removed_in_layer if u >= n_heads]
        stack = contextlib.ExitStack()
        if heads:
            stack.enter_context(self.adapter.mask_heads(self.model, self._layer_mask(layer, heads)))
        if blocks:
            mask = torch.ones(self.num_layers, max(self.space.ffn_blocks_per_layer))
            mask[layer, blocks] = 0.0
            stack.enter_context(self.adapter.mask_ffn(self.model, mask, block_size=self.space.ffn_block_size))
        return stack

    def _run(self, states: Sequence[frozenset], bi: int) -> list[torch.Tensor]:
        """Logits of every candidate on batch ``bi``, sharing layer inputs across candidates with equal prefixes."""
        b = self.batches[bi]
        layer_mask = self._masks[bi]
        memo: dict[tuple[int, frozenset], torch.Tensor] = {}
        by_layer = [
            [frozenset(h for (l, h) in s if l == i) for i in range(self.num_layers)] for s in states
        ]

        def layer_input(i: int, c: int) -> torch.Tensor:
            # Prefix key: the removed heads of layers < i, as a tuple of per-layer frozensets.
            prefix = tuple(by_layer[c][:i])
            key = (i, prefix)
            if key in memo:
                return memo[key]
            if not any(prefix) and (i in self.cached_layers or i == 0):
                out = self._cache[bi][i] if i in self.cached_layers else self._embed(b)[0]
            else:
                below = layer_input(i - 1, c)
                removed = by_layer[c][i - 1]
                if removed:
                    with self._masked(i - 1, removed):
                        out = self.adapter.layer_forward(self.model, i - 1, below, layer_mask)
                else:
                    out = self.adapter.layer_forward(self.model, i - 1, below, layer_mask)
            memo[key] = out
            return out

        return [self.adapter.classify(self.model, layer_input(self.num_layers, c), layer_mask)
                for c in range(len(states))]

    @torch.inference_mode()
    def evaluate(self, states: Sequence[frozenset], *, reject_worse: int | None = None) -> list[EvalResult]:
        """Paired outcomes of each candidate (set of removed units) against the unpruned model.

        Args:
            states: candidates; each is an iterable of units (layer, index) of :attr:`space`: heads in original
                indices (and, in a joint space, FFN blocks after the layer's heads).
            reject_worse: early rejection: a candidate whose "worse" count on the batches seen so far exceeds
                this is not evaluated further (its bound fails whatever the rest gives); its result then holds the
                partial counts (> ``reject_worse`` worse) and is counted in :attr:`early_rejected`.

        Returns:
            One :class:`EvalResult` per state: n_worse, n_better, n and the mean KL(base || candidate) as proxy.
        """
        states = [frozenset((int(l), int(h)) for l, h in s) for s in states]
        units = self.space.units_per_layer()
        for s in states:
            for l, h in s:
                if not (0 <= l < self.num_layers and 0 <= h < units[l]):
                    raise DataError(f"unit ({l}, {h}) does not exist (units per layer {list(units)}: heads "
                                    f"{list(self.layout.heads_per_layer)}, then FFN blocks)")
        todo = [c for c, s in enumerate(states) if s]
        pred = torch.empty(len(states), self.n, dtype=torch.long)
        seen = torch.zeros(len(states), self.n, dtype=torch.bool)
        worse_so_far = [0] * len(states)
        kl = [0.0] * len(states)
        for bi, b in enumerate(self.batches):
            if not todo:
                break
            logits = self._run([states[c] for c in todo], bi)
            base_logp = self._base_logp[bi]
            base_ok = self.base_correct[b.index]
            for c, lg in zip(todo, logits):
                logp = torch.log_softmax(lg.float(), dim=-1)
                pred[c, b.index] = lg.argmax(-1)
                seen[c, b.index] = True
                kl[c] += float((base_logp.exp() * (base_logp - logp)).sum())
                worse_so_far[c] += int((base_ok & (pred[c, b.index] != b.labels)).sum())
            self.batches_run += len(todo)
            if reject_worse is not None:
                stopped = [c for c in todo if worse_so_far[c] > reject_worse]
                if stopped:
                    self.early_rejected += len(stopped)
                    self.batches_skipped += len(stopped) * (len(self.batches) - bi - 1)
                    todo = [c for c in todo if c not in stopped]
        out = []
        for c, s in enumerate(states):
            if not s:
                out.append(EvalResult(0, 0, self.n, 0.0))
                continue
            correct = (pred[c] == self.labels) & seen[c]
            worse = int((self.base_correct & ~correct & seen[c]).sum())
            better = int((~self.base_correct & correct).sum())
            out.append(EvalResult(worse, better, self.n, kl[c] / self.n))
        return out

    @torch.inference_mode()
    def predict(self, state: frozenset = frozenset()) -> torch.Tensor:
        """Predicted class per example (dataset order) with the units of ``state`` masked: plain full forward.

        This is the reference the cached/prefix-shared path is tested against.
        """
        plan = self.space.plan(state)
        pred = torch.empty(self.n, dtype=torch.long)
        with self.adapter.mask_heads(self.model, plan):
            for b in self.batches:
                logits = self.model(**b.inputs).logits
                pred[b.index] = logits.argmax(-1)
        return pred


class RefitEvaluator(MaskedEvaluator):
    """Candidates priced as they will ship with the full least-squares refit (:mod:`edgeprune.recovery.refit`).

    Each candidate's plan is refitted (kept output-projection columns and biases re-solved so every pruned sublayer
    reproduces the unpruned model's output) on a small fit set prepared once (:func:`~edgeprune.recovery.refit.
    prepare_fit`: the tokenised texts and the unpruned model's targets of every sublayer), then evaluated on the
    split like a masked candidate: from the cached unpruned input of its first modified layer (the refit leaves the
    layers below untouched), through the refitted layers, physically pruned. A candidate costs one refit (~2-3 s on the default task
    with 256 fit texts on 2 cores) on top of its pass over the split.

    Args:
        fit_data: texts the refit fits on (labels unused; default: the evaluated split itself, an evenly strided
            ``fit_examples`` of it). Never the certify split.
        fit_examples: fit texts per refit.
        fit_max_length: their truncation length.
        int8_aware: refit against simulated INT8 (see :class:`~edgeprune.recovery.refit.RefitConfig`).
        other arguments: as :class:`MaskedEvaluator`.
    """

    def __init__(self, model, tokenizer, dataset: "TextDataset", *, fit_data=None, fit_examples: int = 256,
                 fit_max_length: int = 64, int8_aware: bool = False, **kwargs) -> None:
        super().__init__(model, tokenizer, dataset, **kwargs)
        import time

        from edgeprune.recovery.refit import RefitConfig, prepare_fit

        t0 = time.monotonic()
        self.fit_config = RefitConfig(max_examples=fit_examples, max_length=fit_max_length, int8_aware=int8_aware)
        self.fit_cache = prepare_fit(self.model, tokenizer, fit_data if fit_data is not None else dataset,
                                     self.fit_config)
        self.refits = 0
        self.refit_seconds = time.monotonic() - t0  # the preparation counts as refit time
        self._folded: dict[frozenset, tuple] = {}

    def refitted(self, state: frozenset):
        """The refitted copy of the unpruned model for ``state`` (zeroed removed columns, no masks needed) and its
        first modified layer."""
        import time

        from edgeprune.recovery.refit import refit_plan

        t0 = time.monotonic()
        plan = self.space.plan(frozenset(state))
        folded, _ = refit_plan(self.model, None, None, plan, cache=self.fit_cache)
        # Physically remove the zeroed units (exact: the folded model computes the pruned one): a 65% plan then
        # costs about a third of a full-width pass over the split.
        self.adapter.prune_heads_(folded, plan)
        self.refits += 1
        self.refit_seconds += time.monotonic() - t0
        first = min((l for l, _ in state), default=self.num_layers)
        return folded.eval(), first

    def _run(self, states: Sequence[frozenset], bi: int) -> list[torch.Tensor]:
        b = self.batches[bi]
        layer_mask = self._masks[bi]
        out = []
        for s in states:
            folded, first = self._folded[s]
            if first in self.cached_layers:
                hidden = self._cache[bi][first]
            else:
                hidden = self._embed(b)[0]
                for i in range(first):
                    hidden = self.adapter.layer_forward(self.model, i, hidden, layer_mask)
            for i in range(first, self.num_layers):
                hidden = self.adapter.layer_forward(folded, i, hidden, layer_mask)
            out.append(self.adapter.classify(folded, hidden, layer_mask))
        return out

    def evaluate(self, states: Sequence[frozenset], *, reject_worse: int | None = None) -> list[EvalResult]:
        states = [frozenset((int(l), int(h)) for l, h in s) for s in states]
        try:
            for s in states:
                if s and s not in self._folded:
                    self._folded[s] = self.refitted(s)
            return super().evaluate(states, reject_worse=reject_worse)
        finally:
            self._folded.clear()

    @torch.inference_mode()
    def predict(self, state: frozenset = frozenset()) -> torch.Tensor:
        """Predicted class per example (dataset order) of the refitted plan: plain full forward (the reference the
        cached path is tested against)."""
        if not state:
            return super().predict(state)
        folded, _ = self.refitted(frozenset(state))
        pred = torch.empty(self.n, dtype=torch.long)
        for b in self.batches:
            pred[b.index] = folded(**b.inputs).logits.argmax(-1)
        return pred


def accuracy(model, tokenizer, dataset: "TextDataset", *, batch_size: int = 32, max_length: int = 128) -> float:
    """Plain accuracy of a model on a dataset (no masking, no caching)."""
    ev = MaskedEvaluator(model, tokenizer, dataset, batch_size=batch_size, max_length=max_length, cache_mb=0)
    return ev.base_accuracy


__all__ = ["MaskedEvaluator", "RefitEvaluator", "accuracy", "physical_cores"]
