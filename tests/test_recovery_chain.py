"""Recovered models for the certification sequence (edgeprune.recovery.chain): each recovery's model, lazy and
resumable distillation of the plans beyond the refit's reach, and a build that never distils on the certify
split."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgeprune.adapters import get_adapter  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402
from edgeprune.recovery.chain import DistillSettings, Recoverer  # noqa: E402
from edgeprune.task.modeling import clone_model  # noqa: E402
from test_recovery import BS, H, JOINT, L, NB, dataset, tiny_model, tok  # noqa: E402,F401


def _plan(heads_removed, blocks_removed):
    return HeadPlan.from_removed((H,) * L, heads_removed).with_ffn_removed(BS, (NB,) * L, blocks_removed)


def _units(plan):
    return set(plan.removed()) | {("f",) + b for b in plan.ffn_removed()}


@pytest.mark.parametrize("method", ["none", "scale", "refit"])
def test_each_recovery_hands_over_a_model_for_the_plan(tok, method):
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = Recoverer(method, model, tok, fit_data=dataset(48), fit_examples=32, max_length=16)
    source, to_prune, info = rec(1, JOINT)
    assert to_prune == JOINT  # still to be pruned by the compile chain
    assert (info is None) == (method == "none") and (info is None or info["recovery"] == method)
    if method != "none":
        assert source is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched
    full = HeadPlan.full((H,) * L).with_ffn(BS, (NB,) * L)
    assert rec(0, full) == (model, full, None)  # the unpruned plan ships as it is


def test_refit_is_refused_for_families_it_cannot_solve(tok):
    from edgeprune.testing import tiny_model as plain_tiny

    with pytest.raises(EdgepruneError, match="refit is not available"):
        Recoverer("refit", plain_tiny("modernbert"), tok, fit_data=dataset(8))
    with pytest.raises(EdgepruneError, match="unknown recovery"):
        Recoverer("retrain", tiny_model("bert"), tok)


def test_distillation_trains_only_plans_beyond_the_refit_lazily_and_resumably(tok, tmp_path):
    """Plans priced within the promise get the refit alone; a plan beyond it is refitted, pruned and distilled
    with the whole budget, only when asked for; a new Recoverer on the same folder (a resumed build) gives the
    same weights without training again."""
    from edgeprune.recovery.refit import RefitConfig, refit_plan

    model = tiny_model("bert")
    full = HeadPlan.full((H,) * L).with_ffn(BS, (NB,) * L)
    p1 = _plan([(0, 1)], [(1, 2)])
    p2 = _plan([(0, 1), (2, 3), (1, 0)], [(1, 2), (3, 0)])
    data = dataset(64, seed=2)
    settings = DistillSettings(epochs=1.5, batch_size=16, max_length=16)
    kw = dict(fit_data=dataset(48), distill_data=data, plans=[full, p1, p2], beyond_refit=[False, False, True],
              work=tmp_path, distill=settings, fit_examples=32, max_length=16)
    rec = Recoverer("distill", model, tok, **kw)
    assert rec.distill_steps() == 6  # 1.5 epochs x 4 batches
    m1, to_prune, info1 = rec(1, p1)
    assert to_prune == p1 and info1["recovery"] == "refit"  # within the promise: the refit alone
    assert not (tmp_path / "distill").exists()
    m2, to_prune, info2 = rec(2, p2)
    assert to_prune is None and info2["recovery"] == "distill" and info2["steps"] == 6
    assert "refit" in info2["method"] and info2["surgery_max_abs_diff"] <= 1e-5
    current = get_adapter(m2).current_plan(m2)
    assert current.kept == p2.kept and current.ffn_kept == p2.ffn_kept
    assert not (tmp_path / "distill" / "plan-1").exists()  # plan 1 was never distilled
    # distillation trained: the pruned model is neither the masked original nor the refit alone
    with torch.no_grad():
        enc = tok(["good movie", "bad plot"], padding=True, return_tensors="pt")
        feed = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        masked = clone_model(model)
        with get_adapter(masked).mask_heads(masked, p2):
            ref = masked(**feed).logits
        refitted, _ = refit_plan(model, tok, dataset(48), p2, RefitConfig(max_examples=32, max_length=16))
        with get_adapter(refitted).mask_heads(refitted, p2):
            ref_fit = refitted(**feed).logits
        got = m2(**feed).logits
    assert not torch.allclose(ref, got, atol=1e-4) and not torch.allclose(ref_fit, got, atol=1e-4)
    # resumed: the finished run is read back from its checkpoint, not retrained; same weights
    again = Recoverer("distill", model, tok, **kw)
    m2b, _, info2b = again(2, p2)
    assert info2b["resumed_from_step"] == 6
    assert all(torch.equal(a, b) for a, b in zip(m2.state_dict().values(), m2b.state_dict().values()))
    with pytest.raises(EdgepruneError, match="frozen sequence"):
        again(2, p1)


def test_distill_settings_reach_the_training_run(tok, tmp_path):
    """--distill-ce-weight and --distill-int8-aware reach distill_: the run's recorded config, its method text,
    and the weights (the quantization-aware student differs from the float-trained one)."""
    model = tiny_model("bert")
    full = HeadPlan.full((H,) * L).with_ffn(BS, (NB,) * L)
    p2 = _plan([(0, 1), (2, 3), (1, 0)], [(1, 2), (3, 0)])
    out = {}
    for name, settings in {"float": DistillSettings(epochs=1.0, batch_size=16, max_length=16),
                           "q": DistillSettings(epochs=1.0, batch_size=16, max_length=16, ce_weight=0.0,
                                                int8_aware=True)}.items():
        rec = Recoverer("distill", model, tok, fit_data=dataset(48), distill_data=dataset(64, seed=2),
                        plans=[full, p2], beyond_refit=[False, True], work=tmp_path / name, distill=settings,
                        fit_examples=32, max_length=16)
        out[name] = rec(1, p2)
    (m_f, _, info_f), (m_q, _, info_q) = out["float"], out["q"]
    assert info_f["config"]["ce_weight"] == 0.5 and not info_f["config"]["int8_aware"]
    assert info_q["config"]["ce_weight"] == 0.0 and info_q["config"]["int8_aware"]
    assert "+ CE" in info_f["method"] and "INT8" not in info_f["method"]
    assert "+ CE" not in info_q["method"] and "simulated INT8" in info_q["method"]
    assert not all(torch.equal(a, b) for a, b in zip(m_f.state_dict().values(), m_q.state_dict().values()))


WORDS = "the a movie film plot good bad great awful fun boring love hate best worst".split()


def _user_model(tmp_path):
    """A tiny sentiment BERT with its tokenizer saved in ``tmp_path / "model"``, as a user's ``--model``."""
    from edgeprune.testing import tiny_model as plain_tiny
    from edgeprune.testing import tiny_tokenizer

    model = plain_tiny("bert", num_layers=2, num_heads=4, hidden=32)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer(tmp_path / "model")
    return model


@pytest.mark.parametrize("augment", [0, 2])
def test_a_build_never_distils_on_the_certify_split(tmp_path, monkeypatch, augment):
    """The distillation texts of a build are the search split (user data): no certify text among them, and with
    --distill-augment none of the augmented variants either (a 15-word vocabulary makes collisions likely)."""
    import random

    from edgeprune.pipeline import BuildConfig, build
    from edgeprune.recovery import chain

    model = _user_model(tmp_path)
    rng = random.Random(1)
    rows = ["text,label"] + [f"{' '.join(rng.choices(WORDS, k=rng.randint(3, 9)))} {i},"
                             f"{'positive' if rng.random() < 0.5 else 'negative'}" for i in range(240)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    seen = {}
    real_init = chain.Recoverer.__post_init__

    def spy(self):
        seen["texts"] = list(self.distill_data.texts)
        seen["labels"] = list(self.distill_data.labels)
        real_init(self)

    monkeypatch.setattr(chain.Recoverer, "__post_init__", spy)
    out = tmp_path / "out"
    cfg = BuildConfig(profile="x86-64", model=str(tmp_path / "model"), data=str(tmp_path / "data.csv"),
                      out=str(out), max_drop_pts=60.0, max_evaluations=8, measure_rounds=5, recovery="distill",
                      distill_augment=augment)
    build(cfg, progress=False)
    from edgeprune.pipeline import split_user_data

    search, certify, _ = split_user_data(cfg, dict(model.config.label2id))
    assert seen["texts"] and not set(seen["texts"]) & set(certify.texts)
    n = len(search.texts)
    assert sorted(seen["texts"][:n]) == sorted(search.texts)
    assert -100 not in seen["labels"][:n]
    extra = seen["texts"][n:]
    if augment:  # about `augment` variants per text (a few unchangeable short texts may get fewer), KL only
        assert n * augment * 0.9 <= len(extra) <= n * augment
        assert set(seen["labels"][n:]) == {-100}
        assert not set(extra) & set(search.texts)
    else:
        assert not extra


def test_distill_data_texts_train_on_the_kl_term_only(tmp_path):
    """--distill-data: plain-text lines are appended unlabelled (-100); the loss then ignores them in the CE term,
    and a batch of only unlabelled texts is the KL term alone (no NaN)."""
    from edgeprune.pipeline import _with_extra_texts
    from edgeprune.recovery.distill import distill_loss
    from edgeprune.task.data import TextDataset

    extra = tmp_path / "texts.txt"
    extra.write_text("an in-domain sentence\n\n  another one  \n")
    data = _with_extra_texts(TextDataset(["a", "b"], [0, 1]), str(extra))
    assert data.texts == ["a", "b", "an in-domain sentence", "another one"] and data.labels == [0, 1, -100, -100]
    student, teacher = torch.randn(4, 2), torch.randn(4, 2)
    labels = torch.tensor(data.labels)
    kl = distill_loss(student, teacher, None, 2.0, 0.0)
    mixed = distill_loss(student, teacher, labels, 2.0, 0.5)
    expected = kl + 0.5 * torch.nn.functional.cross_entropy(student[:2], labels[:2])
    assert torch.allclose(mixed, expected)
    only = distill_loss(student[2:], teacher[2:], labels[2:], 2.0, 0.5)
    assert torch.isfinite(only) and torch.allclose(only, distill_loss(student[2:], teacher[2:], None, 2.0, 0.5))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(EdgepruneError, match="no texts"):
        _with_extra_texts(data, str(tmp_path / "empty.txt"))
    pairs = TextDataset(["a", "b"], [0, 1], text_pairs=["x", "y"])
    with pytest.raises(EdgepruneError, match="text pairs"):  # not silently dropped
        _with_extra_texts(pairs, str(extra))


def test_a_pair_task_with_distill_data_is_refused_before_any_work(tmp_path):
    """--distill-data holds single texts: on a sentence-pair task the build refuses at once (before the output
    folder is claimed), not after the search."""
    import random

    from edgeprune.pipeline import BuildConfig, build

    _user_model(tmp_path)
    rng = random.Random(2)
    rows = ["text,pair,label"] + [f"{' '.join(rng.choices(WORDS, k=4))},{' '.join(rng.choices(WORDS, k=3))},"
                                  f"{'positive' if i % 2 else 'negative'}" for i in range(240)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "extra.txt").write_text("a fine film\n")
    out = tmp_path / "out"
    cfg = BuildConfig(profile="x86-64", model=str(tmp_path / "model"), data=str(tmp_path / "data.csv"),
                      text_pair_column="pair", out=str(out), distill_data=str(tmp_path / "extra.txt"))
    with pytest.raises(EdgepruneError, match="text pairs"):
        build(cfg, progress=False)
    assert not out.exists()
