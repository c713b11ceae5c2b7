"""Loading, saving and pruning models safely.

* Weights are read with safetensors only; ``trust_remote_code`` is never set. Pickle checkpoints
  (``pytorch_model.bin``) load only with ``allow_pickle=True``.
* ``from_pretrained`` rebuilds full-size layers, so a pruned model is saved with its plan in
  ``edgeprune_pruning.json`` and rebuilt on load: full-size skeleton -> surgery -> strict state-dict load.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from edgeprune.adapters import get_adapter
from edgeprune.adapters.base import PLAN_ATTR
from edgeprune.errors import EdgepruneError, PlanError, UnsupportedModelError, VerificationError
from edgeprune.plan import HeadPlan

PRUNING_FILE = "edgeprune_pruning.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
#: Written when the plan has an FFN part: older edgeprune versions then refuse the folder with a clear "unknown
#: format_version" instead of rebuilding the FFN at full size and failing on the weights. Head-only folders stay 1.
FFN_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, FFN_FORMAT_VERSION)


def is_pruned_dir(path: str | Path) -> bool:
    return (Path(path) / PRUNING_FILE).is_file()


def load_config(name_or_path: str | Path):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; wrap with a clear message
        where = "folder" if Path(str(name_or_path)).exists() else "hub id (the Hugging Face Hub may be unreachable)"
        raise EdgepruneError(f"cannot load a model config from {where} {str(name_or_path)!r}: {exc}") from exc
    get_adapter(config)  # fail early, naming the model type and the supported ones
    return config


# Files one of which a tokenizer folder has (fast tokenizers, WordPiece, BPE, SentencePiece variants).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "spm.model", "tokenizer.model")


def load_model(name_or_path: str | Path, *, num_labels: int | None = None, allow_pickle: bool = False,
               with_tokenizer: bool = True):
    """Load a sequence-classification model (and its tokenizer) from a folder or a hub id.

    Args:
        name_or_path: a local folder (plain transformers or saved by :func:`save_pruned`) or a hub id.
        num_labels: override the number of labels (a fresh classifier head is created).
        allow_pickle: allow ``pytorch_model.bin`` checkpoints (unpickling runs code: only for trusted files).
        with_tokenizer: also load the tokenizer (returned as None when False).

    Returns:
        ``(model, tokenizer)`` with the model in eval mode.

    Raises:
        UnsupportedModelError: the family has no adapter.
        EdgepruneError: the folder/hub id cannot be read, or only pickle weights exist and ``allow_pickle`` is off.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # edgeprune shows its own progress; per-tensor bars are noise
    path = Path(str(name_or_path))
    if is_pruned_dir(path):
        model = load_pruned(path)
    else:
        config = load_config(name_or_path)
        if path.is_dir() and not any(path.glob("*.safetensors")) and not allow_pickle:
            raise EdgepruneError(
                f"{path} has no .safetensors weights; refusing to unpickle a checkpoint (pass allow_pickle=True / "
                "--allow-pickle only for files you trust)"
            )
        if num_labels and num_labels != config.num_labels:
            config.num_labels = num_labels  # resets id2label/label2id; a fresh classifier head is created
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(name_or_path), config=config, trust_remote_code=False, use_safetensors=not allow_pickle
            )
        except UnsupportedModelError:
            raise
        except Exception as exc:  # noqa: BLE001
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "mismatch" in str(exc).lower():  # transformers' text points at a report it logged (silenced here)
                text = ("the weights' tensor shapes differ from what its config.json describes (e.g. hidden_size); "
                        "use the config the weights were saved with")
            raise EdgepruneError(f"cannot load model weights from {str(name_or_path)!r}: {text}") from exc
    tokenizer = None
    if with_tokenizer and path.is_dir() and not any((path / n).is_file() for n in TOKENIZER_FILES):
        # transformers would build an empty-vocabulary tokenizer from the config alone: every word [UNK], silently.
        raise EdgepruneError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): save the "
                             f"tokenizer next to the model (tokenizer.save_pretrained({str(path)!r}))")
    if with_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001
            raise EdgepruneError(f"cannot load a tokenizer from {str(name_or_path)!r}: {exc}") from exc
    return model.eval(), tokenizer


def save_pruned(model, out_dir: str | Path, tokenizer=None) -> Path:
    """Save a (possibly pruned) model: config, safetensors weights, the plan, and the tokenizer if given."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = get_adapter(model)
    plan = adapter.current_plan(model)
    model.config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    version = FFN_FORMAT_VERSION if plan.has_ffn else FORMAT_VERSION
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "edgeprune": str(version)})
    meta = {"format_version": version, "model_type": model.config.model_type, "plan": plan.to_dict()}
    (out / PRUNING_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_pruned(path: str | Path):
    """Rebuild a model saved by :func:`save_pruned`: full-size skeleton, surgery (heads and FFN blocks), strict
    weight load."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    try:
        meta = json.loads((path / PRUNING_FILE).read_text())
        plan = HeadPlan.from_dict(meta["plan"])
    except (OSError, ValueError, KeyError) as exc:
        raise EdgepruneError(f"{path / PRUNING_FILE} is unreadable or malformed: {exc}") from exc
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise EdgepruneError(f"{path / PRUNING_FILE}: unknown format_version {meta.get('format_version')!r}")
    config = load_config(path)
    model = AutoModelForSequenceClassification.from_config(config)
    adapter = get_adapter(model)
    adapter.prune_heads_(model, plan)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise EdgepruneError(f"{weights} is missing")
    state = load_file(str(weights))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: weights and plan disagree
        raise EdgepruneError(f"{weights} does not match the plan in {path / PRUNING_FILE}: {exc}") from exc
    # Some buffers (e.g. position_ids) may legitimately be absent from older files; parameters may not.
    params = {n for n, _ in model.named_parameters()}
    if unexpected or any(k in params for k in missing):
        raise EdgepruneError(f"{weights} does not match the pruned architecture: missing={missing} unexpected={unexpected}")
    return model.eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def sample_inputs(model, batch: int = 3, seq: int = 12, seed: int = 0) -> dict:
    """Random inputs with padding in the last row, in the model's vocabulary."""
    return random_inputs(batch, seq, vocab_size=model.config.vocab_size, seed=seed)


def random_inputs(batch: int = 3, seq: int = 12, vocab_size: int = 128, seed: int = 0, pad_last: bool = True):
    """Random token ids with a padded tail on the last row (so masks matter): dict of torch tensors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, seq), generator=g)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last and seq > 2:
        attention_mask[-1, seq // 2:] = 0
        input_ids[-1, seq // 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}



# no_grad, not inference_mode: the sliced weights surgery creates under inference_mode would be inference tensors, and
# the pruned model could never be trained (distilled) afterwards ("Setting requires_grad=True on inference tensor").
@torch.no_grad()
def prune_and_verify_(model, plan: HeadPlan, *, inputs: dict | None = None, atol: float = 1e-5) -> float:
    """Prune in place and check that the pruned logits equal the masked model's (the pruned model stays trainable).

    Returns:
        The max absolute logit difference.

    Raises:
        VerificationError: when the difference exceeds ``atol`` times the logits' scale (``max(1, max |logit|)``:
            removing units reorders float sums, so large logits, e.g. after a weight refit, differ by ~1e-6
            relative; a wrong surgery differs by orders of magnitude more).
    """
    adapter = get_adapter(model)
    model.eval()
    inputs = inputs if inputs is not None else sample_inputs(model)
    with adapter.mask_heads(model, plan):
        expected = model(**inputs).logits
    adapter.prune_heads_(model, plan)
    got = model(**inputs).logits
    diff = float((got - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not diff <= atol * scale:
        raise VerificationError(f"pruned logits differ from the masked model's by {diff:.3g} (atol {atol:g} x logit "
                                f"scale {scale:.3g})")
    return diff


def load_plan(path: str | Path) -> HeadPlan:
    """Read a plan from JSON: either a plan dict or a plan.json with a ``plan`` entry."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read plan {path}: {exc}") from exc
    return HeadPlan.from_dict(data.get("plan", data) if isinstance(data, dict) else data)


def prune_and_save(model_path: str | Path, plan_path: str | Path, out_dir: str | Path) -> dict:
    """CLI helper: load, prune with verification, save. Returns a summary dict."""
    model, tokenizer = load_model(model_path)
    plan = load_plan(plan_path)
    adapter = get_adapter(model)
    adapter.check_plan(model, plan)
    before = count_parameters(model)
    diff = prune_and_verify_(model, plan)
    save_pruned(model, out_dir, tokenizer)
    return {
        "out": str(out_dir), "heads_removed": plan.num_removed, "heads_total": sum(plan.num_heads),
        "params_before": before, "params_after": count_parameters(model), "max_abs_diff": diff,
        "ffn_blocks_removed": plan.ffn_num_removed,
        "ffn_blocks_total": sum(plan.ffn_num_blocks) if plan.has_ffn else 0,
    }


def clone_model(model):
    """A deep copy that keeps edgeprune's plan attribute."""
    new = copy.deepcopy(model)
    if hasattr(model, PLAN_ATTR):
        setattr(new, PLAN_ATTR, getattr(model, PLAN_ATTR))
    return new
