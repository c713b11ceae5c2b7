"""Latency at real tokenized lengths (batch 1, no padding) on tiny ONNX models built with onnx.helper."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.errors import MeasureError
from edgeprune.latency import device_runner as dr
from edgeprune.latency.measure import measure_real_lengths, strided_subset

VOCAB = 128  # edgeprune.testing.tiny_tokenizer's ids are < 128


def _tiny_onnx(path, hidden=16):
    """Embedding -> per-token MatMul (cost grows with the length) -> masked mean -> logits."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(rng.standard_normal((VOCAB, hidden)).astype(np.float32), "word_embeddings"),
        nh.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "w"),
        nh.from_array(rng.standard_normal((hidden, 2)).astype(np.float32), "cls_w"),
        nh.from_array(np.array([-1], np.int64), "ax"),
    ]
    nodes = [
        h.make_node("Gather", ["word_embeddings", "input_ids"], ["e"]),  # (B, S, hidden)
        h.make_node("MatMul", ["e", "w"], ["t"]),  # (B, S, hidden)
        h.make_node("Cast", ["attention_mask"], ["mf"], to=T.FLOAT),
        h.make_node("Unsqueeze", ["mf", "ax"], ["m3"]),  # (B, S, 1)
        h.make_node("Mul", ["t", "m3"], ["tm"]),
        h.make_node("ReduceMean", ["tm"], ["pooled"], axes=[1], keepdims=0),  # (B, hidden)
        h.make_node("MatMul", ["pooled", "cls_w"], ["logits"]),
    ]
    inputs = [h.make_tensor_value_info(n, T.INT64, ["batch", "seq"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = h.make_graph(nodes, "tiny", inputs, [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 2])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("rl")
    return _tiny_onnx(d / "a.onnx"), _tiny_onnx(d / "b.onnx", hidden=64)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    pytest.importorskip("transformers")
    from edgeprune.testing import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


WORDS = "the movie was really good but the plot of this film is not very fun and it was boring".split()
# 40 texts of 1..20 words: lengths spread widely, so padding anywhere would show.
TEXTS = [" ".join(WORDS[: 1 + (i * 7) % 20]) for i in range(40)]


def test_each_text_runs_at_its_own_length_alternated(models, tokenizer, monkeypatch):
    fed = []  # (sessions in this call, shapes fed to each)
    real = dr.alternate

    def spy(sessions, feeds, **kw):
        fed.append([{k: v.shape for k, v in f.items()} for f in feeds])
        for f in feeds:
            assert (f["attention_mask"] == 1).all()  # nothing padded
        return real(sessions, feeds, **kw)

    monkeypatch.setattr(dr, "alternate", spy)
    res = measure_real_lengths(list(models), "raspberrypi4", tokenizer, TEXTS, warmup=1)
    expected = [len(tokenizer(t, truncation=True, max_length=128)["input_ids"]) for t in TEXTS]
    assert list(res.lengths_tokens) == expected
    assert len(set(expected)) > 10  # lengths really vary
    assert len(fed) == len(TEXTS)  # one alternating call per text ...
    for shapes, n in zip(fed, expected):  # ... running both models at batch 1 and that text's real length
        assert len(shapes) == 2
        assert all(s["input_ids"] == (1, n) and s["token_type_ids"] == (1, n) for s in shapes)
    assert res.tokens["min"] == min(expected) and res.tokens["max"] == max(expected)
    assert res.tokens["p50"] <= res.tokens["p90"]
    assert res.texts_total == res.texts_used == 40 and res.stride == 1 and res.at_max_length == 0
    assert len(res.latency_ms) == 2
    for st in res.latency_ms:
        assert set(st) == {"p50", "p90", "p99", "mean", "n"}
        assert st["n"] == 40 and 0 < st["p50"] <= st["p90"] <= st["p99"]
    assert res.ratio_p50_to_first[0] == pytest.approx(1.0)
    assert res.max_length == 128 and res.profile == "raspberrypi4" and "raspberrypi4 settings" in res.measured_on
    d = res.to_dict()
    assert "lengths_tokens" not in d and d["tokens"]["p90"] == res.tokens["p90"]
    assert res.to_dict(with_lengths=True)["lengths_tokens"] == expected


def test_strided_subset_and_truncation(models, tokenizer):
    idx, stride = strided_subset(1000, 300)
    assert stride == 4 and idx[:3] == [0, 4, 8] and len(idx) == 250
    assert strided_subset(10, 300) == (list(range(10)), 1)
    long = ["the movie " * 40] + TEXTS
    res = measure_real_lengths([models[0]], "raspberrypi4", tokenizer, long, max_texts=7, max_length=16, warmup=0)
    step = -(-len(long) // 7)
    assert res.stride == step and res.texts_used == len(range(0, len(long), step)) <= 7
    assert res.lengths_tokens[0] == 16 and max(res.lengths_tokens) == 16 and res.at_max_length >= 1
    assert len(res.latency_ms) == 1 and res.latency_ms[0]["n"] == res.texts_used


def test_pairs_and_errors(models, tokenizer, tmp_path):
    res = measure_real_lengths([models[0]], "raspberrypi4", tokenizer, TEXTS[:5], text_pairs=TEXTS[5:10], warmup=0)
    single = measure_real_lengths([models[0]], "raspberrypi4", tokenizer, TEXTS[:5], warmup=0)
    assert all(p > s for p, s in zip(res.lengths_tokens, single.lengths_tokens))  # the pair's tokens are in
    with pytest.raises(MeasureError, match="at least one text"):
        measure_real_lengths([models[0]], "raspberrypi4", tokenizer, [])
    with pytest.raises(MeasureError, match="text pairs"):
        measure_real_lengths([models[0]], "raspberrypi4", tokenizer, TEXTS[:3], text_pairs=TEXTS[:2])
    with pytest.raises(MeasureError, match="not found"):
        measure_real_lengths([tmp_path / "nope.onnx"], "raspberrypi4", tokenizer, TEXTS[:3])
    with pytest.raises(MeasureError, match="max_texts"):
        measure_real_lengths([models[0]], "raspberrypi4", tokenizer, TEXTS[:3], max_texts=0)


def test_report_line_and_old_reports():
    from test_report import sample_report

    from edgeprune.output.report import render_markdown

    report = sample_report()
    assert "real input lengths" not in render_markdown(report)  # reports without the measurement still render
    report["latency_ms"]["real_lengths"] = {
        "final": {"p50": 3.0, "p90": 4.5, "p99": 5.0, "mean": 3.2, "n": 300},
        "dense_int8": {"p50": 4.2, "p90": 6.0, "p99": 7.0, "mean": 4.4, "n": 300},
        "ratio_dense_int8/final": 1.38, "tokens": {"p50": 21, "p90": 38, "min": 5, "max": 90, "mean": 23.1},
        "texts": {"used": 300, "total": 2113, "stride": 8},
        "measured_on": "measured on this host with raspberrypi4 settings, not on a Raspberry Pi 4"}
    md = render_markdown(report)
    line = next(x for x in md.splitlines() if x.startswith("At real input lengths"))
    assert "300 certify texts, 21 / 38 tokens p50 / p90" in line
    assert "edgeprune 3.00 / 4.50 ms" in line and "dense INT8 4.20 / 6.00 ms" in line and "1.38x" in line
    assert "not on a Raspberry Pi 4" in line
