"""Adapter contract, run for every registered family on tiny random models built in code."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from conftest import sdpa_supported  # noqa: E402
from edgeprune.adapters import get_adapter, supported_model_types  # noqa: E402
from edgeprune.errors import PlanError, UnsupportedModelError, VerificationError  # noqa: E402
from edgeprune.task.modeling import clone_model, count_parameters, prune_and_verify_  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402
from edgeprune.testing import TINY_CONFIGS, TINY_FAMILIES, random_inputs, tiny_model  # noqa: E402

L, H, D = 4, 4, 32
IMPLS = ["eager", "sdpa"]


def test_every_registered_family_has_a_tiny_model():
    missing = set(supported_model_types()) - set(TINY_CONFIGS)
    assert not missing, f"registered families without a tiny test model: {sorted(missing)}"


def _model(family, impl):
    if impl == "sdpa" and not sdpa_supported(family):
        pytest.skip(f"{family} has no SDPA attention in this transformers version")
    return tiny_model(family, num_layers=L, num_heads=H, hidden=D, attn_implementation=impl)


def _plans():
    rng = random.Random(1234)
    plans = {
        "none_removed": HeadPlan.full([H] * L),
        "zero_and_single": HeadPlan((H,) * L, ((0, 1, 2, 3), (), (2,), (1, 3))),
        "all_zero": HeadPlan((H,) * L, ((),) * L),
    }
    for k in range(3):
        removed = rng.sample([(layer, h) for layer in range(L) for h in range(H)], rng.randint(1, L * H - 1))
        plans[f"random{k}"] = HeadPlan.from_removed([H] * L, removed)
    return plans


PLANS = _plans()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_layout(family):
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    layout = get_adapter(model).layout(model)
    assert layout.heads_per_layer == (H,) * L
    assert layout.head_size == D // H and layout.hidden_size == D


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("plan_name", sorted(PLANS))
def test_pruned_logits_equal_masked_logits(family, impl, plan_name):
    plan = PLANS[plan_name]
    model = _model(family, impl)
    adapter = get_adapter(model)
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    before = count_parameters(model)
    with torch.no_grad():
        unmasked = model(**inputs).logits
        with adapter.mask_heads(model, plan):
            masked = model(**inputs).logits
    diff = prune_and_verify_(model, plan, inputs=inputs, atol=1e-5)
    assert diff <= 1e-5
    with torch.no_grad():
        pruned = model(**inputs).logits
    assert torch.allclose(pruned, masked, atol=1e-5)
    if plan.num_removed:
        assert not torch.allclose(masked, unmasked, atol=1e-4), "masking changed nothing: the hooks are not applied"
    # Each removed head takes 3 * (d_in*d rows + d bias) of q/k/v and d*D columns of the output projection;
    # a 0-head layer keeps the output projection's bias (moved into the bias+residual+LayerNorm block).
    # ModernBERT (released configs, and the tiny one) has no biases in Wqkv/Wo.
    d = D // H
    per_head = 3 * D * d + d * D if family == "modernbert" else 3 * (D * d + d) + d * D
    assert before - count_parameters(model) == per_head * plan.num_removed
    assert get_adapter(model).current_plan(model) == plan


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_masking_a_head_equals_zeroing_its_slice_and_mask_is_removed(family):
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    mask = torch.ones(L, H)
    mask[1, 2] = 0.0
    with torch.no_grad():
        base = model(**inputs).logits
        with adapter.mask_heads(model, mask):
            masked = model(**inputs).logits
        after = model(**inputs).logits
    assert not torch.allclose(base, masked)
    assert torch.equal(base, after), "hooks must be removed when the context exits"
    with torch.no_grad(), adapter.mask_heads(model, HeadPlan.from_removed([H] * L, [(1, 2)])):
        same = model(**inputs).logits
    assert torch.allclose(same, masked, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_gradient_flows_through_soft_mask(family):
    model = tiny_model(family, num_layers=2, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    gate = torch.ones(2, H, requires_grad=True)
    with adapter.mask_heads(model, gate):
        loss = model(**inputs).logits.logsumexp(-1).sum()
    loss.backward()
    assert gate.grad is not None and gate.grad.abs().sum() > 0


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_layerwise_api_reproduces_the_forward_pass(family):
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    with torch.no_grad():
        expected = model(**inputs).logits
        adapter.make_fusable_(model)
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-5)
        hidden, layer_mask = adapter.embed(model, inputs["input_ids"], inputs["attention_mask"])
        for i in range(L):
            hidden = adapter.layer_forward(model, i, hidden, layer_mask)
        assert torch.allclose(adapter.classify(model, hidden, layer_mask), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2", "modernbert", "mpnet"])
def test_pruning_twice_composes_in_original_indices(family):
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    reference = clone_model(model)
    adapter = get_adapter(model)
    first = HeadPlan((H,) * L, ((0, 1, 3), (1, 2), (0, 1, 2, 3), (3,)))
    second = HeadPlan((H,) * L, ((1, 3), (2,), (0, 3), ()))
    prune_and_verify_(model, first)
    prune_and_verify_(model, second)
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    with torch.no_grad(), adapter.mask_heads(reference, second):
        expected = reference(**inputs).logits
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-5)
    with pytest.raises(PlanError, match="already removed"):
        adapter.prune_heads_(model, first)


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2", "modernbert", "mpnet"])
def test_keep_layers(family):
    model = tiny_model(family, num_layers=L, num_heads=H, hidden=D)
    adapter = get_adapter(model)
    adapter.keep_layers_(model, [2])
    assert len(adapter.layers(model)) == 1
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    with torch.no_grad():
        assert model(**inputs).logits.shape == (3, 2)
    adapter.keep_layers_(model, [])
    with torch.no_grad():
        assert model(**inputs).logits.shape == (3, 2)
    with pytest.raises(PlanError, match="do not exist"):
        adapter.keep_layers_(model, [5])


def test_plan_errors_name_the_bad_layer_or_head():
    with pytest.raises(PlanError, match="layer 1: head 7 does not exist"):
        HeadPlan.from_removed([4, 4], [(1, 7)])
    with pytest.raises(PlanError, match="layer 9 does not exist"):
        HeadPlan.from_removed([4, 4], [(9, 0)])
    model = tiny_model("bert", num_layers=2, num_heads=4, hidden=32)
    with pytest.raises(PlanError, match=r"heads per layer \[4, 4, 4\]"):
        get_adapter(model).prune_heads_(model, HeadPlan.full([4, 4, 4]))
    assert HeadPlan.from_dict(HeadPlan.full([2, 3]).to_dict()) == HeadPlan.full([2, 3])
    with pytest.raises(PlanError, match="malformed plan"):
        HeadPlan.from_dict({"kept_heads": []})


def test_unsupported_family_names_type_and_supported_ones():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedModelError, match=r"'gpt2' is not supported; supported model types: bert, deberta-v2, distilbert, electra, modernbert, mpnet, "):
        get_adapter(GPT2Config())


def test_verification_error_when_parity_breaks():
    model = tiny_model("bert", num_layers=2, num_heads=4, hidden=32)
    adapter = get_adapter(model)
    plan = HeadPlan((4, 4), ((0, 1), (2,)))
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    original = adapter.prune_heads_

    def broken(m, p):  # corrupt the surgery: a silently wrong prune must be caught
        original(m, p)
        with torch.no_grad():
            adapter.layers(m)[0].attention.self.query.weight.mul_(2.0)
        return m

    adapter.prune_heads_ = broken
    try:
        with pytest.raises(VerificationError, match="pruned logits differ"):
            prune_and_verify_(model, plan, inputs=inputs)
    finally:
        del adapter.prune_heads_
