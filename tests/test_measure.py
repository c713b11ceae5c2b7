"""ONNX Runtime latency/memory measurement on a tiny ONNX model built with onnx.helper (no torch)."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest

from edgeprune.latency import device_runner as dr
from edgeprune.errors import MeasureError
from edgeprune.latency.measure import (
    effective_threads,
    file_size_bytes,
    measure_alternating,
    measure_latency,
    measure_memory,
    measured_on,
    onnx_vocab_size,
)
from edgeprune.profiles import load_profile

VOCAB = 50


def _tiny_onnx(path, *, hidden=16, external=False, with_token_types=True):
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(rng.standard_normal((VOCAB, hidden)).astype(np.float32), "word_embeddings"),
        nh.from_array(rng.standard_normal((hidden, 2)).astype(np.float32), "cls_w"),
        nh.from_array(np.array([-1], np.int64), "ax"),
    ]
    nodes = [
        h.make_node("Gather", ["word_embeddings", "input_ids"], ["e"]),  # (B, S, hidden)
        h.make_node("Cast", ["attention_mask"], ["mf"], to=T.FLOAT),
        h.make_node("Unsqueeze", ["mf", "ax"], ["m3"]),  # (B, S, 1)
        h.make_node("Mul", ["e", "m3"], ["em"]),
        h.make_node("ReduceMean", ["em"], ["pooled"], axes=[1], keepdims=0),  # (B, hidden)
        h.make_node("MatMul", ["pooled", "cls_w"], ["logits"]),
    ]
    inputs = [
        h.make_tensor_value_info("input_ids", T.INT64, ["batch", "seq"]),
        h.make_tensor_value_info("attention_mask", T.INT64, ["batch", "seq"]),
    ]
    if with_token_types:  # accepted and unused, like BERT's segment ids on a one-segment task
        inputs.append(h.make_tensor_value_info("token_type_ids", T.INT64, ["batch", "seq"]))
    graph = h.make_graph(nodes, "tiny", inputs, [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 2])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=100)
    else:
        onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_onnx(tmp_path_factory.mktemp("m") / "tiny.onnx")


def test_summarize_arithmetic():
    s = dr.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s["n"] == 5 and s["p50_ms"] == 3.0 and s["mean_ms"] == 3.0
    assert s["min_ms"] == 1.0 and s["max_ms"] == 5.0
    assert s["p90_ms"] == pytest.approx(4.6) and s["p99_ms"] == pytest.approx(4.96)
    assert s["std_ms"] == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert s["cv"] == pytest.approx(s["std_ms"] / 3.0)
    with pytest.raises(ValueError):
        dr.summarize([])
    assert dr.median([3.0, 1.0, 10.0, 2.0]) == 2.5 and dr.median([2.0, 9.0, 1.0]) == 2.0


def test_synth_inputs_deterministic_and_in_range(tiny):
    s = dr.make_session(tiny, 1)
    a = dr.synth_inputs(s, 2, 16, vocab_size=VOCAB, seed=3)
    b = dr.synth_inputs(s, 2, 16, vocab_size=VOCAB, seed=3)
    assert set(a) == {"input_ids", "attention_mask", "token_type_ids"}
    assert a["input_ids"].shape == (2, 16) and a["input_ids"].dtype == np.int64
    assert np.array_equal(a["input_ids"], b["input_ids"])
    assert a["input_ids"].max() < VOCAB and a["input_ids"].min() >= 0
    assert (a["attention_mask"] == 1).all() and (a["token_type_ids"] == 0).all()


def test_vocab_size_read_from_embedding(tiny):
    assert onnx_vocab_size(tiny) == VOCAB


def test_measure_latency_stats(tiny):
    st = measure_latency(tiny, "raspberrypi4", min_runs=30, min_seconds=0.05, warmup=2)
    assert st.n >= 30
    assert 0 < st.min_ms <= st.p50_ms <= st.p90_ms <= st.p99_ms <= st.max_ms
    assert st.cv >= 0 and st.mean_ms > 0
    assert st.seq_len == 128 and st.batch == 1 and st.profile == "raspberrypi4"
    assert "raspberrypi4 settings" in st.measured_on
    if not platform.machine().lower().startswith(("aarch64", "arm")):
        assert st.where == "this host" and "not on a Raspberry Pi 4" in st.measured_on


def test_min_duration_is_honoured(tiny):
    st = measure_latency(tiny, "x86-64", min_runs=1, min_seconds=0.2, warmup=0)
    assert st.n * st.mean_ms >= 0.2 * 1000 * 0.5  # timed time covers (most of) the minimum duration
    assert st.n > 1


def test_threads_clipped_to_host(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    thr, note = effective_threads(load_profile("jetson-orin-nano"))
    assert thr == 2 and "6 threads" in note
    thr, note = effective_threads(load_profile("jetson-orin-nano"), threads=1)
    assert thr == 1 and note == ""


def test_measure_alternating(tiny, tmp_path):
    other = _tiny_onnx(tmp_path / "wide.onnx", hidden=256)
    res = measure_alternating([tiny, other], "raspberrypi4", rounds=3, reps=3)
    assert len(res.median_ms) == 2 and all(len(r) == 3 for r in res.rounds_ms)
    assert res.ratio_to_first[0] == pytest.approx(1.0)
    assert all(s >= 0 for s in res.spread_ms)
    assert "raspberrypi4 settings" in res.measured_on
    with pytest.raises(MeasureError):
        measure_alternating([], "raspberrypi4")


def test_file_size_counts_external_data(tmp_path):
    p = _tiny_onnx(tmp_path / "ext.onnx", external=True)
    size = file_size_bytes(p)
    assert size["external_files"] == ["ext.onnx.data"]
    assert size["external_bytes"] == (tmp_path / "ext.onnx.data").stat().st_size > 0
    assert size["total_bytes"] == size["model_bytes"] + size["external_bytes"]


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(MeasureError, match="not found"):
        measure_latency(tmp_path / "nope.onnx", "raspberrypi4")


def test_memory_in_fresh_process(tiny):
    mem = measure_memory(tiny, "raspberrypi4", processes=1)
    assert mem.processes == 1
    assert mem.baseline_mib > 10  # python + numpy + onnxruntime
    assert mem.session_mib >= 0 and mem.peak_mib >= mem.session_mib - 1e-6


@pytest.mark.parametrize(
    "host, where, words",
    [
        ({"arch": "x86_64", "cpu_model": "AMD EPYC 7B13", "logical_cores": 2, "arm_cores": []}, "this host",
         "measured on AMD EPYC 7B13 (x86_64, 2 cores) with raspberrypi4 settings, not on a Raspberry Pi 4"),
        ({"arch": "aarch64", "cpu_model": "Cortex-A72", "logical_cores": 4, "arm_cores": ["Cortex-A72"],
          "device_model": "Raspberry Pi 4 Model B Rev 1.4"}, "device", "Raspberry Pi 4 Model B Rev 1.4"),
        ({"arch": "aarch64", "cpu_model": "Neoverse-N1", "logical_cores": 4, "arm_cores": ["Neoverse-N1"]},
         "this host", "not on a Raspberry Pi 4"),
        ({"arch": "aarch64", "cpu_model": "AMD EPYC", "logical_cores": 2, "arm_cores": [], "emulated": True,
          "qemu_cpu": "cortex-a72"}, "emulated", "QEMU emulation"),
    ],
)
def test_where_sentence(host, where, words):
    got_where, sentence = measured_on("raspberrypi4", host)
    assert got_where == where
    assert words in sentence


def test_android_and_x86_classes():
    a78 = {"arch": "aarch64", "cpu_model": "x", "logical_cores": 8, "arm_cores": ["Cortex-A55", "Cortex-A78"]}
    assert measured_on("android-arm64", a78)[0] == "device"
    assert measured_on("x86-64", {"arch": "x86_64", "cpu_model": "Intel", "logical_cores": 2})[0] == "device"


def test_cli_measure_json(tiny):
    from typer.testing import CliRunner

    from edgeprune.cli import app

    res = CliRunner().invoke(app, ["measure", str(tiny), "--profile", "raspberrypi5", "--no-memory", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["profile"] == "raspberrypi5" and data["latency"]["p50_ms"] > 0
    assert "raspberrypi5 settings" in data["measured_on"] and data["size"]["total_bytes"] > 0
    res = CliRunner().invoke(app, ["measure", str(tiny), "--profile", "raspberrypi5", "--no-memory"])
    assert res.exit_code == 0 and "p50" in res.output and "measured on" in res.output
