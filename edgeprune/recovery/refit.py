"""Full least-squares weight refit of pruned sublayers (K-prune style), folded into a copy of the unpruned model.

After a plan removes heads and FFN neurons, the kept ones still carry weights trained to work *with* the removed
ones. :mod:`edgeprune.recovery.scale` re-fits one scale per kept unit; this module re-fits every weight the kept units
feed: the kept input columns and the bias of each attention output projection and each FFN down projection
(Park et al., ICLR 2024, "Accurate Retraining-free Pruning for Pretrained Encoder-based Language Models", K-prune's
knowledge-preserving weight tuning; implemented from the method's description).

For one sublayer (attention or FFN) the output before its LayerNorm is ``x + W a + b``: ``x`` the residual (the
layer input for attention, the attention sublayer's output for the FFN), ``a`` the projection's input (concatenated
head contexts, or the activated intermediate), ``W`` / ``b`` the output projection. With ``A = [a_kept, 1]`` (tokens
x (K + 1)) and ``Theta = [W_kept^T; b^T]`` ((K + 1) x D) the refit solves, over every non-padding token of the fit
texts::

    min_Theta  || A Theta - (y - x_s) ||^2 + lam || Theta - Theta_0 ||^2

* ``y`` is the *unpruned* model's pre-LayerNorm sublayer output on the unpruned model's own input (its own
  residual included), ``x_s`` and ``a_kept`` come from the *pruned* model's forward pass through the already
  refitted layers below, so each sublayer also corrects the drift accumulated beneath it (errors do not compound);
* ridge toward the current weights ``Theta_0`` (the pruned, un-refitted sublayer), ``lam = ridge * mean(diag
  A^T A)``; the normal equations ``(A^T A + lam I) Theta = A^T (y - x_s) + lam Theta_0`` are accumulated in
  float64 over batches and solved directly ((K + 1) unknowns per output: at most 1,537 on MiniLM);
* by construction ``||A Theta - t||^2 <= ||A Theta_0 - t||^2`` on the fit data (the ridge optimum is no worse than
  the ridge-free point ``Theta_0``); both errors are reported per sublayer;
* sublayers are solved bottom-up, attention before FFN in each layer; a sublayer with nothing removed in it or
  below (``skip_intact``) already reproduces the unpruned output exactly and is left alone;
* a sublayer with every unit removed has only its bias to refit (the mean residual): the refit cannot bring a
  removed layer back, distillation can.

The result is a *copy* of the unpruned model whose removed units have zero output-projection columns and whose kept
columns and biases are refitted: it computes the pruned model without any mask, and ``adapter.prune_heads_(copy,
plan)`` removes exactly those zero columns (pruned == masked parity holds as before). The user's model is never
modified.

INT8-aware fitting (``int8_aware=True``): the pruned model's forward pass simulates ORT's dynamic INT8 MatMul
(weights symmetric S8 per output channel, activations asymmetric U8 per tensor, as ``quantize_onnx`` ships them), so
``a_kept`` and ``x_s`` are what the INT8 file will see and each refit also absorbs the quantization error of the
layers below; the regressor uses the quantize-dequantized ``a_kept``. Whether that helps is measured in
``benchmarks/recovery_calibration.py``, not assumed.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from edgeprune.adapters import get_adapter
from edgeprune.errors import DataError, PlanError
from edgeprune.plan import HeadPlan
from edgeprune.recovery.scale import StopForward, capture_input


@dataclass(frozen=True)
class RefitConfig:
    """Settings of :func:`refit_plan`.

    Attributes:
        max_examples: use about this many fit texts (an evenly strided subset of a larger dataset).
        max_length: truncation length in tokens.
        batch_size: texts per forward pass.
        ridge: ridge strength toward the current weights, relative to the mean diagonal of each sublayer's Gram
            matrix (0 = plain least squares; kept > 0 so rank-deficient activations still give a unique solution).
        int8_aware: simulate ORT dynamic INT8 in the pruned model's forward pass (see the module docstring).
        skip_intact: leave sublayers with nothing removed in them or below untouched (their error is exactly 0).
        threads: torch intra-op threads (None: leave as is).
    """

    max_examples: int = 2048
    max_length: int = 64
    batch_size: int = 32
    ridge: float = 1e-3
    int8_aware: bool = False
    skip_intact: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_examples < 1 or self.max_length < 2 or self.batch_size < 1:
            raise DataError("refit needs max_examples >= 1, max_length >= 2 and batch_size >= 1")
        if not self.ridge >= 0:
            raise DataError(f"refit ridge must be >= 0, got {self.ridge}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RefitConfig":
        return cls(**data)


@dataclass
class Refit:
    """What :func:`refit_plan` fitted, with its statistics.

    Attributes:
        plan: the plan the weights were refitted for.
        config: the settings used.
        examples: fit texts used.
        tokens: non-padding tokens in the normal equations.
        seconds: wall time.
        sublayers: per fitted or skipped sublayer ``{"layer", "part" ("attention" | "ffn"), "unknowns" (kept
            columns + 1 bias), "status" ("fitted" | "intact"), "error_before", "error_after"}``; errors are the mean
            squared reconstruction error per token on the fit data of the pruned sublayer before / after the refit,
            ``relative_*`` the same divided by the target's mean squared norm.
    """

    plan: HeadPlan
    config: RefitConfig
    examples: int
    tokens: int
    seconds: float
    sublayers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        fitted = [s for s in self.sublayers if s["status"] == "fitted"]
        return {
            "method": "least-squares refit of the kept output-projection columns and biases (K-prune style), "
                      "ridge toward the current weights, folded into a copy of the unpruned model",
            "config": self.config.to_dict(), "examples": self.examples, "tokens": self.tokens,
            "seconds": round(self.seconds, 2), "fitted_sublayers": len(fitted), "sublayers": self.sublayers,
        }


# ---- INT8 simulation (ORT dynamic quantization of every weight MatMul) --------------------------------------------
def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric S8 per output channel (a torch ``Linear`` weight's rows), quantize-dequantized: ORT's
    ``quantize_dynamic(weight_type=QInt8, per_channel=True)`` (range -127..127, scale = absmax / 127)."""
    scale = w.abs().amax(dim=1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(w / scale).clamp(-127, 127) * scale


def fake_quant_activation(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric U8 per tensor, quantize-dequantized: ONNX ``DynamicQuantizeLinear`` (range includes 0)."""
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    if float(scale.detach()) == 0.0:
        return x
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = torch.clamp(torch.round(x / scale) + zp, 0, 255)
    return (q - zp) * scale


@contextlib.contextmanager
def simulate_int8(modules: list[nn.Module], *, ste: bool = False) -> Iterator[None]:
    """Inside the block, every ``nn.Linear`` under ``modules`` computes with fake-quantized input and weight.

    The weight is quantize-dequantized at call time, so weights changed inside the block are simulated as changed.
    With ``ste`` the rounding passes gradients straight through (``x + (q(x) - x).detach()``: quantization-aware
    training; without it the rounding's gradient is 0).
    """
    handles = []

    def fq(fn, x):
        return x + (fn(x) - x).detach() if ste else fn(x)

    def hook(mod, args):
        return (fq(fake_quant_activation, args[0]),) + tuple(args[1:])

    linears = [m for root in modules for m in root.modules() if isinstance(m, nn.Linear)]
    originals: dict[nn.Linear, Callable | None] = {}  # the instance's own ``forward`` attribute, if it had one

    def forward(mod):
        def f(x):
            return nn.functional.linear(x, fq(fake_quant_weight, mod.weight), mod.bias)
        return f

    try:
        for m in linears:
            handles.append(m.register_forward_pre_hook(hook))
            originals[m] = m.__dict__.get("forward")
            m.forward = forward(m)
        yield
    finally:
        for h in handles:
            h.remove()
        for m, f in originals.items():
            if f is None:
                del m.forward  # back to the class's forward
            else:
                m.forward = f


# ---- helpers ------------------------------------------------------------------------------------------------------
def _run_until(adapter, model, i: int, x, mask, *captures) -> torch.Tensor | None:
    with contextlib.ExitStack() as stack:
        for c in captures:
            stack.enter_context(c)
        try:
            return adapter.layer_forward(model, i, x, mask)
        except StopForward:
            return None


def _batches(model, tokenizer, dataset, batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Length-sorted batches, each padded to its own longest text."""
    pairs = list(dataset.text_pairs) if getattr(dataset, "text_pairs", None) is not None else None
    texts = list(dataset.texts)
    lengths = tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda k: len(lengths[k]))
    takes_tt = "token_type_ids" in inspect.signature(model.forward).parameters
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[k] for k in idx], [pairs[k] for k in idx] if pairs is not None else None,
                        truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        b = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if takes_tt and "token_type_ids" in enc:
            b["token_type_ids"] = enc["token_type_ids"]
        out.append(b)
    return out


def _removed_columns(plan: HeadPlan, layer: int, n_heads: int, head_size: int, width: int) -> tuple[list, list]:
    """(attention output columns, FFN output columns) that the plan removes in ``layer``, current = original."""
    kept_h = set(plan.kept[layer])
    attn = [h * head_size + j for h in range(n_heads) if h not in kept_h for j in range(head_size)]
    if not plan.has_ffn:
        return attn, []
    bs = plan.ffn_block_size
    kept_b = set(plan.ffn_kept[layer])
    ffn = [b * bs + j for b in range(width // bs) if b not in kept_b for j in range(bs)]
    return attn, ffn


def _solve(gram: torch.Tensor, rhs: torch.Tensor, theta0: torch.Tensor, tt: float, ridge: float):
    """Ridge toward ``theta0``: ``(G + lam I) Theta = R + lam Theta0``; returns ``(Theta, err0, err)`` with the summed
    squared residuals at ``theta0`` and at the solution (from the Gram form)."""
    k = gram.shape[0]

    def err(th):
        return float((th * (gram @ th)).sum() - 2 * (th * rhs).sum() + tt)

    lam = ridge * float(gram.diagonal().mean())
    a = gram + lam * torch.eye(k, dtype=gram.dtype)
    b = rhs + lam * theta0
    try:
        theta = torch.linalg.solve(a, b)
    except RuntimeError:  # singular with ridge 0 (dead units): least-norm solution
        theta = torch.linalg.lstsq(a, b).solution
    before, after = err(theta0), err(theta)
    if not after <= before:  # only numerics can do this; never ship a worse fit
        return theta0, before, before
    return theta, before, after


def _stats(layer: int, part: str, unknowns: int, status: str, before: float = 0.0, after: float = 0.0,
           tt: float = 0.0, tokens: int = 1) -> dict[str, Any]:
    norm = max(tt, 1e-30)
    return {"layer": layer, "part": part, "unknowns": unknowns, "status": status,
            "error_before": max(before, 0.0) / tokens, "error_after": max(after, 0.0) / tokens,
            "relative_before": max(before, 0.0) / norm if tt else 0.0,
            "relative_after": max(after, 0.0) / norm if tt else 0.0}


def fold_plan_(model, plan: HeadPlan):
    """Zero the output-projection columns of the units ``plan`` removes, in place (an unpruned model then computes
    the pruned one without masks); returns ``model``.

    Raises:
        PlanError: the model is already pruned or the plan does not fit it.
    """
    adapter = get_adapter(model)
    _check_unpruned(adapter, model)
    adapter.check_plan(model, plan)
    d = adapter.head_size(model)
    layout = adapter.layout(model)
    width = adapter.ffn_sizes(model)[0]
    with torch.no_grad():
        for i in range(layout.num_layers):
            attn_cols, ffn_cols = _removed_columns(plan, i, layout.heads_per_layer[i], d, width)
            if attn_cols:
                adapter.attention_output(model, i).weight[:, attn_cols] = 0.0
            if ffn_cols:
                adapter.ffn_output(model, i).weight[:, ffn_cols] = 0.0
    return model


def _check_unpruned(adapter, model) -> None:
    current = adapter.current_plan(model)
    if current.num_removed or current.ffn_num_removed:
        raise PlanError("the refit works on the unpruned model (refit a copy, prune it afterwards)")


# ---- the refit ----------------------------------------------------------------------------------------------------
def unsupported_reason(model) -> str | None:
    """Why :func:`refit_plan` cannot refit this model (None: it can).

    The solve fits ``W a + b`` of each attention output projection and FFN down projection to the unpruned
    sublayer's pre-LayerNorm output minus the residual; it needs biased output projections and a post-LayerNorm
    layer whose FFN residual is the FFN's input (BERT, RoBERTa, ELECTRA, DistilBERT, DeBERTa, MPNet). Pre-LayerNorm
    families without biases (ModernBERT) are refused rather than refitted wrongly.
    """
    adapter = get_adapter(model)
    for i in range(len(adapter.layers(model))):
        out, down = adapter.attention_output(model, i), adapter.ffn_output(model, i)
        if (out is not None and out.bias is None) or (down is not None and down.bias is None):
            return f"{model.config.model_type}: its output projections have no bias"
        if adapter.ffn_residual(model, i) is not adapter.ffn_input(model, i):
            return f"{model.config.model_type}: a pre-LayerNorm layer (the FFN residual is not the FFN's input)"
    return None


@dataclass
class FitCache:
    """Fit data prepared once for many :func:`refit_plan` calls on one model (the search prices every candidate
    after the refit): the tokenised batches, their embeddings and the unpruned model's targets of every sublayer.

    The targets of all layers are held in memory (tokens x hidden x 4 bytes x 2 per layer: ~140 MB for 256 texts of
    the default task), so keep ``config.max_examples`` small. Build with :func:`prepare_fit`.
    """

    config: RefitConfig
    examples: int
    batches: list
    embeddings: list  # the student's (= the teacher's) layer-0 input per batch
    masks: list  # layer attention masks per batch
    real: list  # (B, S) real-token masks per batch
    targets: list  # per layer: (y_attn per batch, y_ffn per batch), each (T, D)
    tokens: int


def _fit_batches(model, tokenizer, dataset, cfg: RefitConfig):
    if len(dataset) > cfg.max_examples:
        stride = len(dataset) / cfg.max_examples
        dataset = dataset.subset(sorted({int(k * stride) for k in range(cfg.max_examples)}))
    return dataset, _batches(model, tokenizer, dataset, cfg.batch_size, cfg.max_length)


def _teacher_targets(adapter, teacher, xt: list, masks: list, real: list, num_layers: int):
    """Per layer, the unpruned model's pre-LayerNorm outputs of both sublayers on its own input (real tokens only):
    yields ``(y_attn, y_ffn)`` (lists over batches, each (T, D)); ``xt`` (the teacher's layer inputs) is advanced."""
    for i in range(num_layers):
        t_attn, t_ffn = adapter.attention_output(teacher, i), adapter.ffn_output(teacher, i)
        y_attn, y_ffn = [], []
        for bi in range(len(xt)):
            cap: dict[str, torch.Tensor] = {}
            with capture_input(t_attn, cap, "ctx"), capture_input(adapter.ffn_input(teacher, i), cap, "z"), \
                    capture_input(t_ffn, cap, "a"):
                out = adapter.layer_forward(teacher, i, xt[bi], masks[bi])
            m = real[bi]
            y_attn.append((xt[bi] + t_attn(cap["ctx"]))[m])  # (T, D)
            y_ffn.append((cap["z"] + t_ffn(cap["a"]))[m])  # (T, D)
            xt[bi] = out
        yield y_attn, y_ffn


def _embed_batches(adapter, model, batches):
    xs, masks, real = [], [], []
    for b in batches:
        hidden, layer_mask = adapter.embed(model, b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
        xs.append(hidden)
        masks.append(layer_mask)
        real.append(b["attention_mask"].bool())  # (B, S): only real tokens enter the normal equations
    return xs, masks, real


def prepare_fit(model, tokenizer, dataset, config: RefitConfig | None = None) -> FitCache:
    """Tokenise the fit texts and compute the unpruned model's sublayer targets once (see :class:`FitCache`).

    Args:
        model: the unpruned model (not modified).
        tokenizer: its tokenizer.
        dataset: fit texts (labels unused). Never the certify split.
        config: the :class:`RefitConfig` every :func:`refit_plan` call with this cache uses.

    Raises:
        PlanError: the model is pruned or not supported by the refit. DataError: empty dataset.
    """
    from edgeprune.task.modeling import clone_model

    cfg = config or RefitConfig()
    adapter = get_adapter(model)
    _check_unpruned(adapter, model)
    why = unsupported_reason(model)
    if why:
        raise PlanError(f"the full least-squares refit does not support this model: {why}")
    if len(dataset) == 0:
        raise DataError("the refit needs a non-empty fit dataset")
    dataset, batches = _fit_batches(model, tokenizer, dataset, cfg)
    teacher = adapter.make_fusable_(clone_model(model).eval())
    with torch.no_grad():
        xs, masks, real = _embed_batches(adapter, teacher, batches)
        targets = list(_teacher_targets(adapter, teacher, [x.clone() for x in xs], masks, real,
                                        adapter.layout(model).num_layers))
    return FitCache(cfg, len(dataset), batches, xs, masks, real, targets, int(sum(int(m.sum()) for m in real)))


def refit_plan(model, tokenizer, dataset, plan: HeadPlan, config: RefitConfig | None = None, *,
               progress: Callable[[int, int], None] | None = None,
               cache: FitCache | None = None) -> tuple[nn.Module, Refit]:
    """Refit the kept output-projection columns and biases of ``plan`` by least squares (module docstring).

    Args:
        model: the *unpruned* sequence-classification model (not modified).
        tokenizer: its tokenizer.
        dataset: fit texts (``TextDataset``-like; labels unused). Never the certify split. Ignored with ``cache``.
        plan: the plan (heads, optionally FFN blocks).
        config: :class:`RefitConfig` (default settings if None; with ``cache``, the cache's).
        progress: called with ``(sublayers done, sublayers total)``.
        cache: fit data prepared by :func:`prepare_fit` for this model (saves the tokenisation and the unpruned
            model's pass when many plans are refitted on the same texts).

    Returns:
        ``(folded, refit)``: a copy of the unpruned model with the plan's removed units zeroed and the kept weights
        refitted (prune it with ``adapter.prune_heads_(folded, plan)``), and the :class:`Refit` record.

    Raises:
        PlanError: the model is pruned or the plan does not fit it.
        DataError: empty dataset.
    """
    from edgeprune.task.modeling import clone_model

    cfg = cache.config if cache is not None else (config or RefitConfig())
    t0 = time.time()
    adapter = get_adapter(model)
    _check_unpruned(adapter, model)
    adapter.check_plan(model, plan)
    why = unsupported_reason(model)
    if why:
        raise PlanError(f"the full least-squares refit does not support this model: {why}")
    if cache is None and len(dataset) == 0:
        raise DataError("the refit needs a non-empty fit dataset")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    student = fold_plan_(adapter.make_fusable_(clone_model(model).eval()), plan)
    layout = adapter.layout(model)
    num_layers, d = layout.num_layers, layout.head_size
    width = adapter.ffn_sizes(model)[0]
    if plan.is_full and cfg.skip_intact:
        return student, Refit(plan, cfg, 0, 0, time.time() - t0)
    if cache is not None:
        batches, examples = cache.batches, cache.examples
    else:
        dataset, batches = _fit_batches(model, tokenizer, dataset, cfg)
        examples = len(dataset)
    sim = (simulate_int8([adapter.layers(student)[i] for i in range(num_layers)]) if cfg.int8_aware
           else contextlib.nullcontext())
    q = cfg.int8_aware
    stats: list[dict[str, Any]] = []
    total, done = 2 * num_layers, 0
    with torch.no_grad(), sim:
        if cache is not None:
            xs, masks, real = list(cache.embeddings), cache.masks, cache.real
            targets = iter(cache.targets)
        else:
            teacher = adapter.make_fusable_(clone_model(model).eval())
            xs, masks, real = _embed_batches(adapter, student, batches)
            targets = _teacher_targets(adapter, teacher, [x.clone() for x in xs], masks, real, num_layers)
        tokens = int(sum(int(m.sum()) for m in real))
        intact = True  # nothing removed so far (in this sublayer's inputs)
        for i in range(num_layers):
            attn_cols, ffn_cols = _removed_columns(plan, i, layout.heads_per_layer[i], d, width)
            y_attn, y_ffn = next(targets)
            # ---- the two sublayers of the student, bottom-up ---------------------------------------------------
            for part, removed in (("attention", attn_cols), ("ffn", ffn_cols)):
                intact = intact and not removed
                proj = adapter.attention_output(student, i) if part == "attention" else adapter.ffn_output(student, i)
                gone = set(removed)
                kept = [c for c in range(proj.in_features) if c not in gone]
                if intact and cfg.skip_intact:
                    stats.append(_stats(i, part, len(kept) + 1, "intact"))
                    done += 1
                    if progress:
                        progress(done, total)
                    continue
                k = len(kept)
                idx = torch.tensor(kept, dtype=torch.long)
                gram = torch.zeros(k + 1, k + 1, dtype=torch.float64)
                rhs = torch.zeros(k + 1, proj.out_features, dtype=torch.float64)
                tt = 0.0
                resid_in = adapter.ffn_input(student, i)  # the FFN's residual is its input projection's input
                for bi in range(len(batches)):
                    cap = {}
                    grab = [capture_input(proj, cap, "a", stop=True, transform=fake_quant_activation if q else None)]
                    if part == "ffn":
                        grab.insert(0, capture_input(resid_in, cap, "x"))
                    _run_until(adapter, student, i, xs[bi], masks[bi], *grab)
                    m = real[bi]
                    x = xs[bi][m] if part == "attention" else cap["x"][m]  # (T, D) the student's residual
                    a = cap["a"][m].index_select(1, idx)  # (T, K) kept columns of the projection's input
                    a1 = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)  # (T, K + 1)
                    t = (y_attn if part == "attention" else y_ffn)[bi] - x  # (T, D) target of W a + b
                    gram += (a1.T @ a1).double()  # float32 GEMM, float64 accumulation
                    rhs += (a1.T @ t).double()
                    tt += float((t.double() ** 2).sum())
                w = proj.weight
                theta0 = torch.cat([w[:, idx].T, proj.bias[None, :]], 0).double()  # (K + 1, D)
                theta, before, after = _solve(gram, rhs, theta0, tt, cfg.ridge)
                theta = theta.to(w.dtype)
                w[:, idx] = theta[:k].T
                proj.bias.copy_(theta[k])
                stats.append(_stats(i, part, k + 1, "fitted", before, after, tt, tokens))
                done += 1
                if progress:
                    progress(done, total)
            del y_attn, y_ffn
            for bi in range(len(batches)):
                xs[bi] = adapter.layer_forward(student, i, xs[bi], masks[bi])
    return student, Refit(plan, cfg, examples, tokens, time.time() - t0, stats)
