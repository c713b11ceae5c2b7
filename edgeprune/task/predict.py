"""Predictions of a PyTorch model or an ONNX/ORT file on a dataset (tokenised in batches, in dataset order).

Used wherever a file or model is scored on a split: certification, the search's "dense model as it will ship"
predictions, the benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgeprune.errors import EdgepruneError


def tokenize(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, names: Sequence[str],
             max_length: int) -> dict[str, Any]:
    """Tokenise a batch to numpy int64 feeds named ``names`` (zeros for a missing ``token_type_ids``).

    Raises:
        EdgepruneError: the tokenizer does not produce an input the model needs.
    """
    import numpy as np

    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, padding=True, truncation=True,
                    max_length=max_length, return_tensors="np")
    out = {}
    for n in names:
        if n in enc:
            out[n] = np.asarray(enc[n], dtype=np.int64)
        elif n == "token_type_ids":
            out[n] = np.zeros_like(np.asarray(enc["input_ids"], dtype=np.int64))
        else:
            raise EdgepruneError(f"the tokenizer does not produce {n!r}, which the model needs")
    return out


def batches(data: Any, batch_size: int):
    """``(texts, pairs)`` chunks of a dataset with ``texts`` (and optionally ``text_pairs``)."""
    texts = list(data.texts)
    pairs = list(data.text_pairs) if getattr(data, "text_pairs", None) is not None else None
    for start in range(0, len(texts), batch_size):
        stop = start + batch_size
        yield texts[start:stop], (pairs[start:stop] if pairs is not None else None)


def torch_predictions(model: Any, tokenizer: Any, data: Any, *, max_length: int, batch_size: int = 32) -> list[int]:
    """Argmax predictions of a PyTorch model on a dataset (tokenised in batches).

    Args:
        model: sequence-classification model.
        tokenizer: its tokenizer.
        data: a dataset with ``texts`` (and optionally ``text_pairs``).
        max_length: truncation length.
        batch_size: examples per forward pass.

    Returns:
        One predicted class id per example.
    """
    import torch

    from edgeprune.onnx.export import input_names_for

    names = input_names_for(model)
    preds: list[int] = []
    model.eval()
    with torch.inference_mode():
        for texts, pairs in batches(data, batch_size):
            feed = tokenize(tokenizer, texts, pairs, names, max_length)
            logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
            preds.extend(int(i) for i in logits.argmax(-1).tolist())
    return preds


def onnx_predictions(onnx_path: str | Path, tokenizer: Any, data: Any, *, max_length: int, batch_size: int = 32,
                     threads: int = 1) -> list[int]:
    """Argmax predictions of an ONNX/ORT-format model run with onnxruntime on a dataset.

    Args:
        onnx_path: ``.onnx`` or ``.ort`` file with inputs named like the tokenizer outputs and a ``logits`` output.
        tokenizer: the tokenizer.
        data: dataset with ``texts`` (and optionally ``text_pairs``).
        max_length: truncation length.
        batch_size: examples per run.
        threads: ORT intra-op threads.

    Returns:
        One predicted class id per example.
    """
    from edgeprune.onnx.export import ort_session

    sess = ort_session(onnx_path, threads=threads)
    names = [i.name for i in sess.get_inputs()]
    preds: list[int] = []
    for texts, pairs in batches(data, batch_size):
        feed = tokenize(tokenizer, texts, pairs, names, max_length)
        logits = sess.run(["logits"], feed)[0]
        preds.extend(int(i) for i in logits.argmax(-1).tolist())
    return preds


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: Any) -> list[list[int]]:
    """Shuffle, sort by length inside chunks of 50 batches, cut into batches, shuffle the batch order.

    Padding each batch only to its own longest sentence (instead of to max_seq_len) roughly halves the compute on
    these short sentences; the chunked sort keeps batches random enough for SGD (the same idea as HF Trainer's
    ``group_by_length``). ``rng`` is a ``random.Random``. Every chunk but the last is a whole number of batches,
    so there are ``ceil(len(lengths) / batch_size)`` batches. Used by the default task's fine-tune and by
    distillation.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches
