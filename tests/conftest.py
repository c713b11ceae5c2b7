"""Shared fixtures. Tests run on whichever transformers line is installed (CI runs 5.x and 4.57.x)."""

from __future__ import annotations

import os

import pytest

# Builds made by tests record their certify-split looks in a ledger of their own, not the user's cache.
os.environ.setdefault("EDGEPRUNE_CERTIFY_LEDGER", os.path.join(__import__("tempfile").mkdtemp(prefix="edgeprune-ledger-"),
                                                               "certify-ledger.json"))

# Tests share two cores with the rest of the machine: one intra-op thread keeps runs stable and fast.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pure tests still run
        yield
        return
    torch.set_num_threads(1)
    yield


def sdpa_supported(model_type: str) -> bool:
    """Whether this transformers version offers SDPA attention for the family (ELECTRA has none in 4.57)."""
    from edgeprune.testing import tiny_model

    try:
        tiny_model(model_type, num_layers=1, attn_implementation="sdpa")
    except ValueError:
        return False
    return True


@pytest.fixture
def tiny_task(tmp_path):
    """A stand-in for the default task, for benchmark smoke runs: a tiny 4-layer BERT (random biases too) and the
    word-level tokenizer saved in ``tmp_path/"model"``, with random-word splits of 48 / 48 / 40 texts.

    Attributes as ``edgeprune.task.default.default_task``'s that the benchmarks read (``model_dir``, ``finetune``,
    ``search``, ``certify``), plus ``model`` and ``tok`` (the saved model and tokenizer). Distillation reads
    fine-tune + search only (96 texts); certify is scored.
    """
    import types

    pytest.importorskip("torch")
    from test_bundle import word_tokenizer
    from test_recovery import dataset, tiny_model

    model, tok = tiny_model("bert"), word_tokenizer(tmp_path / "tok")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return types.SimpleNamespace(model_dir=tmp_path / "model", finetune=dataset(48, 1), search=dataset(48, 2),
                                 certify=dataset(40, 3), model=model, tok=tok)
