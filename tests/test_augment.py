"""edgeprune.recovery.augment: unlabelled variants of the distillation texts (pure Python, fast)."""

from __future__ import annotations

import pytest

from edgeprune.errors import DataError, EdgepruneError
from edgeprune.recovery.augment import UNLABELLED, AugmentConfig, augment_texts, augmented_dataset
from edgeprune.task.data import TextDataset

TEXTS = ["a gripping , funny and deeply moving film about love and loss .",
         "the plot is thin but the acting is superb",
         "dull .", "an utterly forgettable sequel that nobody asked for", "wow"]


def test_variants_are_deterministic_for_a_seed_and_change_with_it():
    a = augment_texts(TEXTS * 4, AugmentConfig(copies=2, seed=3))
    assert a == augment_texts(TEXTS * 4, AugmentConfig(copies=2, seed=3))
    assert a != augment_texts(TEXTS * 4, AugmentConfig(copies=2, seed=4))


def test_no_variant_equals_a_source_or_an_excluded_text():
    exclude = ["dull [MASK]", "[MASK] .", "wow wow"]
    out = augment_texts(TEXTS * 10, AugmentConfig(copies=3, seed=0), exclude=exclude)
    assert out and not set(out) & (set(TEXTS) | set(exclude))
    # every variant is made of the corpus's words and the mask token only
    vocab = {w for t in TEXTS for w in t.split()} | {"[MASK]"}
    assert all(set(v.split()) <= vocab for v in out)


def test_copies_and_probabilities():
    long = [" ".join(f"w{i}" for i in range(k, k + 12)) for k in range(50)]
    out = augment_texts(long, AugmentConfig(copies=2, p_ngram=0.0, seed=1))
    assert len(out) == 100  # 12-word texts always change within 4 draws at these rates
    assert all(len(v.split()) == 12 for v in out)  # no windowing at p_ngram 0
    masked = sum(v.split().count("[MASK]") for v in out) / (100 * 12)
    assert 0.05 < masked < 0.15  # p_mask = 0.1
    cut = augment_texts(long, AugmentConfig(copies=1, p_mask=0.0, p_replace=0.0, p_ngram=1.0, seed=1))
    assert len(cut) == 50 and all(3 <= len(v.split()) <= 8 for v in cut)
    assert all(v in t for v, t in zip(cut, long))  # a window of the source, words unchanged
    assert augment_texts(long, AugmentConfig(copies=0)) == []


def test_a_text_that_cannot_change_gets_no_variant():
    # one word, nothing to replace it with but itself, no mask, no window: every draw equals the source
    assert augment_texts(["same"], AugmentConfig(copies=2, p_mask=0.0, p_replace=1.0)) == []


def test_augmented_dataset_appends_unlabelled_variants():
    data = TextDataset(TEXTS, [1, 1, 0, 0, 1], source="s")
    out = augmented_dataset(data, AugmentConfig(copies=2), mask_token="<mask>")
    assert out.texts[:5] == TEXTS and out.labels[:5] == [1, 1, 0, 0, 1]
    assert len(out) > 5 and set(out.labels[5:]) == {UNLABELLED}
    assert any("<mask>" in t for t in out.texts[5:])
    assert "augmented" in out.source
    pairs = TextDataset(TEXTS, [0] * 5, text_pairs=TEXTS)
    assert augmented_dataset(pairs, AugmentConfig(copies=2)) is pairs
    assert augmented_dataset(data, AugmentConfig(copies=0)) is data


@pytest.mark.parametrize("bad", [dict(copies=-1), dict(p_mask=1.5), dict(p_ngram=-0.1),
                                 dict(min_ngram=0), dict(min_ngram=5, max_ngram=4)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(DataError):
        AugmentConfig(**bad)


def test_the_build_refuses_a_bad_augment_count():
    from edgeprune.pipeline import BuildConfig

    with pytest.raises(EdgepruneError, match="distill"):
        BuildConfig(distill_augment=-1)
    assert BuildConfig(distill_augment=2).distill_augment == 2
