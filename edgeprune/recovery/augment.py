"""Unlabelled transfer texts for distillation, made from the distillation texts themselves.

A pruned student disagrees with its teacher mostly on texts near the teacher's decision boundary, and the paired
certificate charges every such disagreement. Showing the student the teacher's outputs on *more* in-domain texts is
what the distillation literature does about it (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks": masking, word replacement and n-gram sampling; TinyBERT's augmentation). Without a hub or a
masked-LM head, this module uses the three corpus-only operations of Tang et al.:

* **masking**: each word becomes the tokenizer's mask token with probability ``p_mask``;
* **replacement**: each (unmasked) word becomes a word drawn from the corpus's own word distribution with
  probability ``p_replace`` (Tang et al. draw a word of the same part of speech; no tagger is needed here);
* **n-gram sampling**: with probability ``p_ngram`` the variant is cut to a random window of ``min_ngram`` to
  ``max_ngram`` words.

Variants are drawn from ``random.Random(seed)`` alone, so the same texts and seed give the same variants on every
machine. They carry no label: distillation trains on them with the KL term only (label ``-100``). Pure Python.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from edgeprune.errors import DataError

#: Label of a text without a gold label (the cross-entropy term ignores it; edgeprune.recovery.distill); also the
#: label of ``--distill-data`` texts (edgeprune.pipeline).
UNLABELLED = -100


@dataclass(frozen=True)
class AugmentConfig:
    """How :func:`augment_texts` makes variants.

    Attributes:
        copies: variants per text (0 = none).
        p_mask: per-word probability of becoming the mask token.
        p_replace: per-word probability of becoming a random corpus word.
        p_ngram: per-variant probability of being cut to a window of words.
        min_ngram, max_ngram: window length range in words (inclusive).
        seed: the only source of randomness.
    """

    copies: int = 1
    p_mask: float = 0.1
    p_replace: float = 0.1
    p_ngram: float = 0.25
    min_ngram: int = 3
    max_ngram: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise DataError(f"augmentation copies must be >= 0, got {self.copies}")
        for name in ("p_mask", "p_replace", "p_ngram"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise DataError(f"augmentation {name} must lie in [0, 1], got {v}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise DataError(f"augmentation needs 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")


def _variant(words: list[str], vocab: Sequence[str], mask: str, cfg: AugmentConfig, rng: random.Random) -> str:
    out = []
    for w in words:
        r = rng.random()
        if r < cfg.p_mask:
            out.append(mask)
        elif r < cfg.p_mask + cfg.p_replace:
            out.append(vocab[rng.randrange(len(vocab))])
        else:
            out.append(w)
    if len(out) > cfg.min_ngram and rng.random() < cfg.p_ngram:
        n = rng.randint(cfg.min_ngram, min(cfg.max_ngram, len(out) - 1))
        start = rng.randrange(len(out) - n + 1)
        out = out[start:start + n]
    return " ".join(out)


def augment_texts(texts: Sequence[str], cfg: AugmentConfig = AugmentConfig(), *, mask_token: str = "[MASK]",
                  exclude: Sequence[str] = ()) -> list[str]:
    """``cfg.copies`` variants of every text (text order, then copy order), none equal to its source text.

    Args:
        texts: the source texts (the distillation texts; never the certify split).
        cfg: the augmentation settings.
        mask_token: the tokenizer's mask token (``tokenizer.mask_token``).
        exclude: texts no variant may equal (e.g. the certify split's texts, so no certify text enters training
            even by chance).

    Raises:
        DataError: no word in ``texts`` to draw replacements from while ``copies > 0``.
    """
    if cfg.copies == 0 or not texts:
        return []
    split = [t.split() for t in texts]
    vocab = [w for words in split for w in words]
    if not vocab:
        raise DataError("augmentation needs texts with words")
    banned = set(exclude) | set(texts)
    rng = random.Random(cfg.seed)
    out: list[str] = []
    for words in split:
        for _ in range(cfg.copies):
            v = ""
            for _try in range(4):  # re-draw a variant that came out unchanged (short texts) or banned
                v = _variant(words, vocab, mask_token, cfg, rng)
                if v and v not in banned:
                    break
            else:
                continue
            out.append(v)
    return out


def augmented_dataset(data: Any, cfg: AugmentConfig, *, mask_token: str = "[MASK]", exclude: Sequence[str] = ()):
    """``data`` (a ``TextDataset``) followed by the variants of its texts, unlabelled (label ``-100``).

    Sentence-pair data is returned unchanged: no pair task has been measured with augmentation, and a variant would
    have to be made of both segments together.
    """
    from edgeprune.task.data import TextDataset

    if cfg.copies == 0 or getattr(data, "text_pairs", None) is not None:
        return data
    extra = augment_texts(data.texts, cfg, mask_token=mask_token, exclude=exclude)
    return TextDataset(list(data.texts) + extra, list(data.labels) + [UNLABELLED] * len(extra),
                       source=f"{getattr(data, 'source', 'data')} + {len(extra)} augmented variants "
                              f"(seed {cfg.seed})", id2label=getattr(data, "id2label", None))
