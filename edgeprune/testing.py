"""Tiny random models and tokenizers built in code, shared by tests and benchmarks (no Hub access needed)."""

from __future__ import annotations

from pathlib import Path

#: Per registered family: the config class name and the keyword arguments of a tiny model.
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "bert": ("BertConfig", {}),
    "roberta": ("RobertaConfig", {"pad_token_id": 1}),
    "xlm-roberta": ("XLMRobertaConfig", {"pad_token_id": 1}),
    "electra": ("ElectraConfig", {"embedding_size": 16}),
    "distilbert": ("DistilBertConfig", {}),
    # DeBERTa-v3's structure: relative attention with both position terms, keys shared with the content
    # projections, log-bucketed positions (16 buckets: seq 64 reaches the log range), LayerNorm-ed rel embeddings,
    # no absolute positions, no segment embeddings.
    "deberta-v2": ("DebertaV2Config", {"relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                       "share_att_key": True, "position_buckets": 16, "max_relative_positions": -1,
                                       "norm_rel_ebd": "layer_norm", "position_biased_input": False,
                                       "type_vocab_size": 0, "hidden_act": "gelu"}),
    # ModernBERT-base's structure (no biases, mean pooling, global layer every 3rd... here every 2nd of 4 layers)
    # with a window of +-4 tokens so the parity shapes (seq 12-64) exercise the local layers.
    "modernbert": ("ModernBertConfig", {"local_attention": 8, "global_attn_every_n_layers": 2,
                                        "classifier_pooling": "mean", "pad_token_id": 0, "bos_token_id": 2,
                                        "eos_token_id": 3, "cls_token_id": 2, "sep_token_id": 3}),
    # MPNet numbers positions from padding_idx + 1 = 2 (as RoBERTa): 128 tokens need 130 position embeddings
    # (all-mpnet-base-v2 has 514 for 512 tokens).
    "mpnet": ("MPNetConfig", {"pad_token_id": 1, "max_position_embeddings": 130}),
}
TINY_FAMILIES = sorted(TINY_CONFIGS)

_WORDS = (
    "the a an movie film plot actor story good bad great awful fun boring love hate best worst funny dull "
    "and but not very really is was it this that of to in with for on"
).split()


def tiny_config(model_type: str, num_layers: int = 4, num_heads: int = 4, hidden: int = 32, num_labels: int = 2,
                vocab_size: int = 128, attn_implementation: str | None = None, overrides: dict | None = None):
    """A tiny transformers config for ``model_type`` (layers x heads, hidden width); ``overrides`` are set on the
    built config (family variants, e.g. ``{"share_att_key": False}``)."""
    import transformers

    cls_name, extra = TINY_CONFIGS[model_type]
    cls = getattr(transformers, cls_name)
    labels = {i: f"label_{i}" for i in range(num_labels)}
    if model_type == "distilbert":
        kwargs = dict(dim=hidden, n_heads=num_heads, n_layers=num_layers, hidden_dim=hidden * 2)
    else:
        kwargs = dict(hidden_size=hidden, num_attention_heads=num_heads, num_hidden_layers=num_layers,
                      intermediate_size=hidden * 2)
    extra = dict(extra)
    max_pos = extra.pop("max_position_embeddings", 128)
    config = cls(vocab_size=vocab_size, max_position_embeddings=max_pos, id2label=labels,
                 label2id={v: k for k, v in labels.items()},
                 # larger than the default 0.02 so heads matter and parity checks have signal to compare
                 initializer_range=0.2, **kwargs, **extra)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return config


def tiny_model(model_type: str = "bert", num_layers: int = 4, num_heads: int = 4, hidden: int = 32,
               num_labels: int = 2, seed: int = 0, attn_implementation: str | None = None,
               overrides: dict | None = None):
    """A tiny randomly initialised sequence-classification model in eval mode."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_config(model_type, num_layers, num_heads, hidden, num_labels,
                         attn_implementation=attn_implementation, overrides=overrides)
    model = AutoModelForSequenceClassification.from_config(config)
    return model.eval()


def randomize_biases_(model, std: float = 0.2, seed: int = 0):
    """Give every bias and LayerNorm parameter random values, in place; returns the model.

    transformers initialises biases to 0 and LayerNorm to (1, 0), so a surgery that forgets a bias (e.g. of a layer
    left without heads or FFN neurons) would still pass a parity check on a fresh tiny model.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():  # LayerNorm, layer_norm, mlp_norm, final_norm
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny_tokenizer(directory: str | Path):
    """A lower-casing WordPiece tokenizer over a small fixed vocabulary (ids < 128), saved in ``directory``.

    Built with the ``tokenizers`` library directly, so it behaves the same on transformers 4.57 and 5.x.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS]
    vocab += list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = list(dict.fromkeys(vocab))[:128]  # unique ("a" is a word and a letter), ids < the tiny vocab size
    core = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    tok.save_pretrained(directory)
    return tok


def random_inputs(batch: int = 3, seq: int = 12, vocab_size: int = 128, seed: int = 0, pad_last: bool = True):
    """Random token ids with a padded tail on the last row: :func:`edgeprune.task.modeling.random_inputs`."""
    from edgeprune.task.modeling import random_inputs as make

    return make(batch, seq, vocab_size=vocab_size, seed=seed, pad_last=pad_last)
