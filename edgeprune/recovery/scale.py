"""Retraining-free recovery: re-fit the scales of the kept heads and FFN neurons by least squares, then fold them.

After a plan removes heads and FFN neurons, the kept ones still carry the weights that were trained to work *with*
the removed ones. Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers", mask tuning) re-fit a
real-valued scale per kept structure, layer by layer, so that each pruned sublayer reconstructs the unpruned one,
with no gradient step and no labels. This module does that for the heads and the FFN neurons of every layer:

* a sublayer's output before its LayerNorm is ``residual + sum_u s_u P_u + bias`` where ``P_u`` is unit ``u``'s
  contribution: head ``h``: ``W_o[:, slice_h] ctx_h``; FFN neuron ``j``: ``W_2[:, j] act_j``. It is linear in the
  scales ``s``, so the best scales solve a small linear least-squares problem (one unknown per kept head, or per
  kept neuron), over every non-padding token of a few thousand examples;
* the normal equations are accumulated over tokens as a Gram matrix ``G = sum_t P_t^T P_t`` (heads x heads; for FFN
  neurons ``G = (sum_t a_t a_t^T) * (W_2^T W_2)`` elementwise, which never materialises the per-neuron outputs) and
  solved with ridge regularisation *toward 1* (the unrecovered scale): ``(G + lambda I) s = b + lambda 1`` with
  ``lambda = ridge * mean(diag G)``; the scales are then clamped to ``[0, max_scale]``. If clamping made the fit worse
  than no recovery on the fit data, the layer keeps scale 1 (recorded as ``reverted``);
* layers are solved bottom-up: layer ``l`` sees the inputs produced by the already-recovered pruned layers below it
  (and its FFN sees the output of its own recovered attention);
* the target (``target=``) is either

  - ``"teacher"`` (Kwon's mask tuning): the *unpruned model's* pre-LayerNorm sublayer output on the *unpruned model's*
    own input (so the fit also corrects the drift accumulated below): ``y = x_t + F(x_t) - x_s`` (the student's
    residual ``x_s`` and the common bias move to the left-hand side);
  - ``"same_input"``: the unpruned sublayer's output on the pruned model's input: ``y = F(x_s)`` (only repairs what
    this layer's removals broke);

* the fitted scales are folded into the weights: the columns of the attention output projection that read head
  ``h`` are multiplied by ``s_h``, and the FFN output projection's column ``j`` by ``s_j``. Removed units get scale 0,
  so the folded *unpruned* model already computes the pruned one; surgery afterwards removes exactly those zero
  columns, and pruned == masked parity holds as before.

Scales are stored in *original* indices of the unpruned model. Plans without an FFN part re-fit only the heads by
default (``fit_ffn=None``); ``fit_ffn=True`` also re-fits every FFN neuron (useful with the teacher target, which can
correct the heads' drift in the FFN too).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from edgeprune.adapters import get_adapter
from edgeprune.errors import DataError, PlanError
from edgeprune.plan import HeadPlan

TARGETS = ("teacher", "same_input")


@dataclass
class Recovery:
    """Fitted scales of the kept heads and FFN neurons of one plan, with the fit's statistics.

    Attributes:
        plan: the plan the scales were fitted for.
        head_scales: per layer, one scale per *original* head (0.0 for a removed head).
        ffn_scales: per layer, one scale per *original* intermediate neuron (0.0 for a removed neuron), or ``None``
            when the FFN was not re-fitted (then the FFN is folded as is, with only the plan's removals).
        target: ``"teacher"`` or ``"same_input"`` (see the module docstring).
        ridge: relative ridge strength toward 1.
        max_scale: upper clamp of the scales.
        examples: examples used for the fit.
        tokens: non-padding tokens used for the fit.
        seconds: wall time of the fit.
        layers: per layer, ``{"layer": i, "heads": {...}, "ffn": {...}}`` where each part has ``unknowns``,
            ``error_before`` / ``error_after`` (mean squared reconstruction error per token, on the fit data, of the
            pruned sublayer with scale 1 and with the fitted scales), ``relative_before`` / ``relative_after``
            (the same divided by the target's mean squared norm) and ``reverted``; a part is ``None`` when the layer
            has nothing to fit there.
    """

    plan: HeadPlan
    head_scales: tuple[tuple[float, ...], ...]
    ffn_scales: tuple[tuple[float, ...], ...] | None
    target: str
    ridge: float
    max_scale: float
    examples: int
    tokens: int
    seconds: float
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_identity(self) -> bool:
        """True when folding changes nothing but the plan's own removals (every kept unit has scale exactly 1)."""
        heads = all(self.head_scales[i][h] == 1.0 for i, kept in enumerate(self.plan.kept) for h in kept)
        if self.ffn_scales is None:
            return heads
        return heads and all(self.ffn_scales[i][j] == 1.0
                             for i, kept in enumerate(_kept_neurons(self.plan, self.ffn_width)) for j in kept)

    @property
    def ffn_width(self) -> int | None:
        return None if self.ffn_scales is None else len(self.ffn_scales[0])

    def to_dict(self, *, include_scales: bool = False) -> dict[str, Any]:
        """JSON-ready summary (per-layer errors, scale ranges); with ``include_scales`` also every scale."""
        def rng(rows, kept_sets):
            vals = [rows[i][u] for i, kept in enumerate(kept_sets) for u in kept]
            if not vals:
                return None
            return {"min": min(vals), "max": max(vals), "mean": sum(vals) / len(vals)}

        d: dict[str, Any] = {
            "method": "least-squares re-fit of kept head / FFN-neuron scales (Kwon et al. 2022 mask tuning), folded "
                      "into the output projections",
            "target": self.target, "ridge": self.ridge, "max_scale": self.max_scale, "examples": self.examples,
            "tokens": self.tokens, "seconds": round(self.seconds, 2), "ffn_fitted": self.ffn_scales is not None,
            "head_scale_range": rng(self.head_scales, self.plan.kept),
            "ffn_scale_range": (rng(self.ffn_scales, _kept_neurons(self.plan, self.ffn_width))
                                if self.ffn_scales is not None else None),
            "layers": self.layers,
        }
        if include_scales:
            d["head_scales"] = [list(r) for r in self.head_scales]
            d["ffn_scales"] = [list(r) for r in self.ffn_scales] if self.ffn_scales is not None else None
        return d


def _kept_neurons(plan: HeadPlan, width: int | None) -> list[list[int]]:
    """Kept intermediate neurons per layer, original indices (all of them for a plan without an FFN part)."""
    if not plan.has_ffn:
        return [list(range(width or 0)) for _ in plan.num_heads]
    bs = plan.ffn_block_size
    return [[b * bs + j for b in kept for j in range(bs)] for kept in plan.ffn_kept]


class StopForward(Exception):
    """Raised by a capture hook to end a layer's forward pass early (the rest of the layer is not needed)."""


@contextlib.contextmanager
def capture_input(module: torch.nn.Module | None, store: dict, key: str, *, stop: bool = False,
                  transform: Any = None) -> Iterator[None]:
    """Record ``module``'s raw input (before any masking hook, hence ``prepend``) in ``store[key]``, through
    ``transform`` if given (the refit's simulated INT8 input); ``stop`` ends the forward pass there."""
    if module is None:
        yield
        return

    def hook(mod, args):
        store[key] = transform(args[0]) if transform is not None else args[0]
        if stop:
            raise StopForward

    handle = module.register_forward_pre_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def scale_hooks(model, head_scales: torch.Tensor, ffn_scales: torch.Tensor | None) -> Iterator[None]:
    """Apply per-head and per-neuron scales with the adapter's masking hooks (no weight is changed).

    Args:
        model: an unpruned model.
        head_scales: ``(layers, max_heads)`` scales (0 removes a head).
        ffn_scales: ``(layers, intermediate)`` per-neuron scales, or ``None`` to leave the FFN alone.
    """
    adapter = get_adapter(model)
    with contextlib.ExitStack() as stack:
        stack.enter_context(adapter.mask_heads(model, head_scales))
        if ffn_scales is not None:
            stack.enter_context(adapter.mask_ffn(model, ffn_scales, block_size=1))
        yield


def _scaled_layer_until(model, adapter, i: int, x, mask, head_s, ffn_s, *captures) -> None:
    """Run layer ``i`` with the current scales under ``captures`` (``capture_input`` contexts), stopping early where a
    capture says ``stop=True``."""
    import contextlib

    with contextlib.ExitStack() as stack:
        stack.enter_context(scale_hooks(model, head_s, ffn_s))
        for c in captures:
            stack.enter_context(c)
        try:
            adapter.layer_forward(model, i, x, mask)
        except StopForward:
            pass


def recovery_scales(recovery: Recovery) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The recovery's scales as the tensors :func:`scale_hooks` takes (``(layers, max_heads)``, ``(layers, N)``)."""
    width = max(len(r) for r in recovery.head_scales)
    heads = torch.tensor([list(r) + [0.0] * (width - len(r)) for r in recovery.head_scales], dtype=torch.float32)
    if recovery.ffn_scales is not None:
        return heads, torch.tensor([list(r) for r in recovery.ffn_scales], dtype=torch.float32)
    if recovery.plan.has_ffn:  # FFN not re-fitted, but the plan's removals still apply
        n = recovery.plan.ffn_num_blocks[0] * recovery.plan.ffn_block_size  # intermediate width
        ffn = torch.zeros(len(recovery.head_scales), n)
        for i, kept in enumerate(_kept_neurons(recovery.plan, n)):
            ffn[i, kept] = 1.0
        return heads, ffn
    return heads, None


def _check_unpruned(adapter, model) -> None:
    current = adapter.current_plan(model)
    if current.num_removed or current.ffn_num_removed:
        raise PlanError("recovery works on the unpruned model (fit and fold first, prune afterwards)")


def _solve(gram: torch.Tensor, rhs: torch.Tensor, yy: float, ridge: float, max_scale: float):
    """Ridge-toward-1 least squares ``min ||P s - y||^2 + lam ||s - 1||^2`` from its Gram form, clamped.

    Returns:
        ``(scales, error_at_ones, error_at_scales, reverted)``; errors are summed squared residuals.
    """
    k = gram.shape[0]
    ones = torch.ones(k, dtype=gram.dtype)

    def err(s):
        return float(s @ gram @ s - 2 * rhs @ s + yy)

    before = err(ones)
    lam = ridge * float(gram.diagonal().mean()) if k else 0.0
    a = gram + lam * torch.eye(k, dtype=gram.dtype)
    try:
        s = torch.linalg.solve(a, rhs + lam * ones)
    except RuntimeError:  # singular (e.g. dead units with ridge 0): least-norm solution
        s = torch.linalg.lstsq(a, (rhs + lam * ones)[:, None]).solution[:, 0]
    s = s.clamp(0.0, max_scale)
    after = err(s)
    if not after <= before:  # clamping (or numerics) made it worse than no recovery: keep the plain pruned layer
        return ones, before, before, True
    return s, before, after, False


def _part_stats(kept: int, before: float, after: float, yy: float, tokens: int, reverted: bool) -> dict[str, Any]:
    norm = max(yy, 1e-30)
    return {"unknowns": kept, "error_before": max(before, 0.0) / tokens, "error_after": max(after, 0.0) / tokens,
            "relative_before": max(before, 0.0) / norm, "relative_after": max(after, 0.0) / norm,
            "reverted": reverted}


def fit_recovery(model, tokenizer, dataset, plan: HeadPlan, *, max_examples: int = 2048, max_length: int = 128,
                 batch_size: int = 32, ridge: float = 1e-2, max_scale: float = 4.0, target: str = "teacher",
                 fit_ffn: bool | None = None, threads: int | None = None) -> Recovery:
    """Fit per-unit scales of the heads and FFN neurons ``plan`` keeps (see the module docstring).

    Args:
        model: the *unpruned* sequence-classification model (its self-attention is swapped for the adapter's fusable
            equivalent in place, same weights and outputs; no weight changes).
        tokenizer: its tokenizer.
        dataset: fit data (``TextDataset``-like; labels are not used). Use the search split, never the certify split.
        plan: the plan to recover (heads only, or heads + FFN blocks).
        max_examples: use about this many examples (an evenly strided subset of a larger dataset).
        max_length: truncation length in tokens.
        batch_size: examples per forward pass.
        ridge: ridge strength toward scale 1, relative to the mean diagonal of each layer's Gram matrix.
        max_scale: scales are clamped to ``[0, max_scale]``.
        target: ``"teacher"`` (Kwon's: reconstruct the unpruned model's own sublayer outputs) or ``"same_input"``
            (reconstruct the unpruned sublayer on the pruned model's input).
        fit_ffn: re-fit the FFN neurons too; ``None`` = only when the plan has an FFN part.
        threads: torch intra-op threads (default: leave as is).

    Returns:
        The :class:`Recovery`. A plan that removes nothing gives the identity (scales exactly 1, no data pass).

    Raises:
        PlanError: the model is already pruned or the plan does not fit it.
        DataError: empty dataset or unknown target.
    """
    from edgeprune.search.evaluate import MaskedEvaluator

    if target not in TARGETS:
        raise DataError(f"unknown recovery target {target!r} (choose from {', '.join(TARGETS)})")
    if len(dataset) == 0:
        raise DataError("recovery needs a non-empty fit dataset")
    t0 = time.time()
    adapter = get_adapter(model)
    _check_unpruned(adapter, model)
    adapter.check_plan(model, plan)
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    adapter.make_fusable_(model)
    layout = adapter.layout(model)
    num_layers, d = layout.num_layers, layout.head_size
    width = adapter.ffn_sizes(model)[0]
    fit_ffn = plan.has_ffn if fit_ffn is None else bool(fit_ffn)
    kept_neurons = _kept_neurons(plan, width)
    head_s = torch.zeros(num_layers, max(layout.heads_per_layer))
    for i, kept in enumerate(plan.kept):
        head_s[i, list(kept)] = 1.0
    ffn_s = None
    if plan.has_ffn or fit_ffn:
        ffn_s = torch.zeros(num_layers, width)
        for i, kept in enumerate(kept_neurons):
            ffn_s[i, kept] = 1.0

    def result(layers, examples, tokens) -> Recovery:
        return Recovery(
            plan=plan, head_scales=tuple(tuple(float(x) for x in head_s[i, :n]) for i, n in
                                         enumerate(layout.heads_per_layer)),
            ffn_scales=tuple(tuple(float(x) for x in row) for row in ffn_s) if fit_ffn else None,
            target=target, ridge=ridge, max_scale=max_scale, examples=examples, tokens=tokens,
            seconds=time.time() - t0, layers=layers)

    if plan.is_full:
        return result([], 0, 0)

    if max_examples and len(dataset) > max_examples:
        stride = len(dataset) / max_examples
        dataset = dataset.subset(sorted({int(k * stride) for k in range(max_examples)}))
    # Length-sorted batches padded to their own longest example (the evaluator's tokeniser).
    batches = MaskedEvaluator._tokenise(tokenizer, dataset, batch_size, max_length)
    import inspect

    if "token_type_ids" not in inspect.signature(model.forward).parameters:
        for b in batches:
            b.inputs.pop("token_type_ids", None)
    teacher = target == "teacher"
    layers_stats: list[dict[str, Any]] = []
    with torch.inference_mode():
        xs, masks, tok = [], [], []
        for b in batches:
            hidden, layer_mask = adapter.embed(model, b.inputs["input_ids"], b.inputs["attention_mask"],
                                               b.inputs.get("token_type_ids"))
            xs.append(hidden)
            masks.append(layer_mask)
            tok.append(b.inputs["attention_mask"].bool())  # (B, S): real tokens only enter the normal equations
        xt = list(xs) if teacher else None
        tokens = int(sum(int(t.sum()) for t in tok))
        for i in range(num_layers):
            w_o = adapter.attention_output(model, i).weight.detach()  # (D, H*d)
            w_2 = adapter.ffn_output(model, i).weight.detach()  # (D, N)
            n_heads = layout.heads_per_layer[i]
            stats: dict[str, Any] = {"layer": i, "heads": None, "ffn": None}
            ffn_target: list[torch.Tensor] = []
            # ---- attention: Gram over all heads of the layer, restricted to the kept ones at the solve ----------
            gram = torch.zeros(n_heads, n_heads, dtype=torch.float64)
            rhs = torch.zeros(n_heads, dtype=torch.float64)
            yy = 0.0
            for bi in range(len(batches)):
                cap: dict[str, torch.Tensor] = {}
                if teacher:  # the unpruned layer on its own input: attention target, FFN target, next input
                    with capture_input(adapter.attention_output(model, i), cap, "ctx"), \
                            capture_input(adapter.ffn_residual(model, i), cap, "z"), \
                            capture_input(adapter.ffn_output(model, i), cap, "a"):
                        out_t = adapter.layer_forward(model, i, xt[bi], masks[bi])
                    y_full_t = cap["ctx"] @ w_o.T  # (B, S, D): all heads, no bias (it cancels)
                    ffn_target.append(cap["z"] + cap["a"] @ w_2.T)  # (B, S, D) pre-LayerNorm FFN output minus bias
                    y_attn = xt[bi] + y_full_t - xs[bi]
                    xt[bi] = out_t
                if not plan.kept[i]:
                    continue  # nothing to fit in this attention (the teacher pass above still had to run)
                _scaled_layer_until(model, adapter, i, xs[bi], masks[bi], head_s, ffn_s,
                                    capture_input(adapter.attention_output(model, i), cap, "ctx_s", stop=True))
                m = tok[bi]
                ctx = cap["ctx_s"][m]  # (T, H*d) raw concatenated heads of the real tokens
                per_head = torch.einsum("thk,dhk->thd", ctx.view(ctx.shape[0], n_heads, d),
                                        w_o.view(w_o.shape[0], n_heads, d))  # (T, H, D): head h's output
                y = y_attn[m] if teacher else per_head.sum(1)  # (T, D)
                per_head, y = per_head.double(), y.double()
                gram += torch.einsum("thd,tgd->hg", per_head, per_head)
                rhs += torch.einsum("thd,td->h", per_head, y)
                yy += float((y * y).sum())
            kept = list(plan.kept[i])
            if kept:
                idx = torch.tensor(kept)
                s, before, after, reverted = _solve(gram[idx][:, idx], rhs[idx], yy, ridge, max_scale)
                head_s[i, idx] = s.float()
                stats["heads"] = _part_stats(len(kept), before, after, yy, tokens, reverted)
            # ---- FFN: per-neuron Gram (a^T a) * (W2^T W2), with this layer's recovered attention -------------------
            kn = kept_neurons[i]
            if fit_ffn and kn:
                idx = torch.tensor(kn)
                w_k = w_2[:, idx]  # (D, K)
                act_gram = torch.zeros(len(kn), len(kn), dtype=torch.float64)
                rhs = torch.zeros(len(kn), dtype=torch.float64)
                yy = 0.0
                for bi in range(len(batches)):
                    cap = {}
                    _scaled_layer_until(model, adapter, i, xs[bi], masks[bi], head_s, ffn_s,
                                        capture_input(adapter.ffn_residual(model, i), cap, "z"),
                                        capture_input(adapter.ffn_output(model, i), cap, "a", stop=True))
                    m = tok[bi]
                    a = cap["a"][m]  # (T, N) raw activated intermediate
                    y = (ffn_target[bi][m] - cap["z"][m]) if teacher else a @ w_2.T  # (T, D)
                    a_k = a[:, idx]
                    act_gram += (a_k.T @ a_k).double()  # float32 GEMM, float64 accumulation
                    rhs += (a_k * (y @ w_k)).sum(0).double()
                    yy += float((y.double() ** 2).sum())
                gram = act_gram * (w_k.T @ w_k).double()
                s, before, after, reverted = _solve(gram, rhs, yy, ridge, max_scale)
                ffn_s[i, idx] = s.float()
                stats["ffn"] = _part_stats(len(kn), before, after, yy, tokens, reverted)
            del ffn_target
            # ---- the recovered layer's output is the next layer's input --------------------------------------------
            with scale_hooks(model, head_s, ffn_s):
                for bi in range(len(batches)):
                    xs[bi] = adapter.layer_forward(model, i, xs[bi], masks[bi])
            layers_stats.append(stats)
    return result(layers_stats, len(dataset), tokens)


def apply_recovery_(model, recovery: Recovery):
    """Fold the recovery's scales into the unpruned model's output projections, in place.

    Attention output projection columns of head ``h`` are multiplied by its scale, FFN output projection column
    ``j`` by neuron ``j``'s (removed units by 0, so the folded model computes the recovered *pruned* model even
    before surgery; ``adapter.prune_heads_(model, recovery.plan)`` then removes those columns).

    Args:
        model: the unpruned model the recovery was fitted on (or an identical copy).
        recovery: from :func:`fit_recovery`.

    Returns:
        ``model``.

    Raises:
        PlanError: the model is pruned or its layout differs from the recovery's plan.
    """
    adapter = get_adapter(model)
    _check_unpruned(adapter, model)
    adapter.check_plan(model, recovery.plan)
    heads, ffn = recovery_scales(recovery)
    d = adapter.head_size(model)
    with torch.no_grad():
        for i, n in enumerate(adapter.layout(model).heads_per_layer):
            w = adapter.attention_output(model, i).weight  # (D, H*d): head h reads columns h*d .. (h+1)*d - 1
            w.mul_(heads[i, :n].repeat_interleave(d).to(w.dtype))
            if ffn is not None:
                w2 = adapter.ffn_output(model, i).weight  # (D, N)
                if w2.shape[1] != ffn.shape[1]:
                    raise PlanError(f"layer {i}: the FFN has {w2.shape[1]} neurons, the recovery {ffn.shape[1]}")
                w2.mul_(ffn[i].to(w2.dtype))
    return model


def recovered_copy(model: Any, tokenizer: Any, data: Any, plan: HeadPlan, *, examples: int, max_length: int,
                    batch_size: int) -> tuple[Any, dict[str, Any]]:
    """A copy of the unpruned ``model`` with ``plan``'s recovery fitted on ``data`` and folded in (the model itself is
    left untouched: certification pairs against it); returns ``(folded_copy, recovery summary)``."""
    from edgeprune.task.modeling import clone_model

    folded = clone_model(model).eval()
    rec = fit_recovery(folded, tokenizer, data, plan, max_examples=examples, max_length=max_length,
                       batch_size=batch_size)
    apply_recovery_(folded, rec)
    return folded, rec.to_dict()
