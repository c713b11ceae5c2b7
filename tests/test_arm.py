"""Emulated aarch64 checks (edgeprune.onnx.arm, `edgeprune verify-arm`).

Tests marked ``arm`` run tiny INT8 models on aarch64 onnxruntime under qemu-user (cortex-a72 = Pi 4, cortex-a76 =
Pi 5). They need the sysroot from ``scripts/setup_arm_emu.sh`` (about 1 minute once) and are skipped with the setup
command as the reason when it is absent. The other tests here need no emulator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import EmulationError

H = 32  # hidden width of the hand-built graph


def _emulator_or_skip() -> Path:
    from edgeprune.onnx.arm import find_arm_python

    try:
        return find_arm_python()
    except EmulationError as exc:
        pytest.skip(f"aarch64 emulation not set up: {exc}")


def _tiny_graph(path: Path, seed: int = 0, scale: float = 0.2) -> Path:
    """FP32 MatMul -> Gelu -> MatMul -> residual -> LayerNorm -> classifier graph with dynamic (batch, seq)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [w("W1", H, 4 * H), w("W2", 4 * H, H), w("W3", H, 3),
             numpy_helper.from_array(np.ones(H, np.float32), "g"),
             numpy_helper.from_array(np.zeros(H, np.float32), "b")]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Gelu", ["h1"], ["h2"], domain="com.microsoft"),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "x"], ["h4"]),
        helper.make_node("LayerNormalization", ["h4", "g", "b"], ["h5"], axis=-1),
        helper.make_node("MatMul", ["h5", "W3"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", H])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 3])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _quantize(fp32: Path, out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A folder shaped like a bundle: INT8 model.onnx + the FP32 model it came from."""
    d = tmp_path_factory.mktemp("tinyarm")
    _tiny_graph(d / "model.fp32.onnx")
    _quantize(d / "model.fp32.onnx", d / "model.onnx")
    return d


# ---------------------------------------------------------------------------------------------------------------------
# emulated runs
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.arm
@pytest.mark.parametrize("profile, cpu, dotprod", [("raspberrypi4", "cortex-a72", False),
                                                  ("raspberrypi5", "cortex-a76", True)])
def test_int8_graph_on_emulated_cores(tiny_bundle, profile, cpu, dotprod):
    _emulator_or_skip()
    from edgeprune.onnx.arm import verify_arm

    res = verify_arm(tiny_bundle, profile, seq_len=16)
    assert res.qemu_cpu == cpu
    assert res.guest["machine"] == "aarch64"
    # qemu exposes the profile's ISA to ORT: the Pi 5 core has SDOT/UDOT, the Pi 4 core does not; never SME.
    assert res.guest["isa"]["asimddp(dotprod)"] is dotprod
    assert res.guest["isa"]["sme"] is False
    assert res.model_quantized is True and res.reference_kind == "fp32"
    assert res.reference.endswith("model.fp32.onnx")
    (out,) = res.outputs
    assert out.shape == [2, 16, 3]
    assert out.passed, res.summary_lines()
    # INT8 really differs from FP32 (so the comparison has signal), and ARM stays within twice the x86 error.
    assert out.max_abs_diff > 1e-3
    assert out.max_abs_diff <= 2 * out.host_max_abs_diff + 1e-2
    assert res.argmax_total == 2 * 2 * 16
    assert res.argmax_agree >= 0.9 * res.argmax_total


@pytest.mark.arm
@pytest.mark.slow
def test_pruned_bert_bundle_via_cli(tmp_path):
    """A bundle-shaped folder like `edgeprune export` writes (uneven plan with a 0-head layer, fused, INT8, tokenizer,
    no FP32 file): `edgeprune verify-arm` rebuilds the FP32 reference from model_source + plan, feeds the built-in
    sentences, and passes on cortex-a72."""
    _emulator_or_skip()
    from typer.testing import CliRunner

    from edgeprune.adapters import get_adapter
    from edgeprune.cli import app
    from edgeprune.onnx.export import export_onnx, optimize_onnx
    from edgeprune.plan import HeadPlan
    from edgeprune.onnx.quantize import quantize_onnx
    from edgeprune.testing import tiny_model, tiny_tokenizer

    src = tmp_path / "source"
    tiny_model("bert", num_layers=3, num_heads=4, hidden=32).save_pretrained(src)
    plan = HeadPlan.from_dict({"num_heads": [4, 4, 4], "kept_heads": [[0, 2, 3], [], [1]]})
    model = tiny_model("bert", num_layers=3, num_heads=4, hidden=32)
    adapter = get_adapter(model)
    adapter.prune_heads_(model, plan)
    adapter.make_fusable_(model)
    bundle = tmp_path / "bundle"
    export_onnx(model, tmp_path / "fp32.onnx")
    optimize_onnx(tmp_path / "fp32.onnx", tmp_path / "fused.onnx", expected_heads=plan.kept_counts)
    quantize_onnx(tmp_path / "fused.onnx", bundle / "model.onnx")
    (bundle / "edgeprune.json").write_text(json.dumps({"model_source": str(src), "plan": plan.to_dict()}))
    tiny_tokenizer(bundle)  # a bundle ships its tokenizer: the check then feeds real sentences
    result = CliRunner().invoke(app, ["verify-arm", str(bundle), "--profile", "raspberrypi4", "--seq-len", "16",
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["passed"] and data["qemu_cpu"] == "cortex-a72"
    assert data["reference_kind"].startswith("fp32 (source model + plan")
    out = data["outputs"][0]
    assert out["shape"] == [2, 2] and out["host_max_abs_diff"] is not None
    assert out["max_abs_diff"] <= out["tolerance"]
    assert data["inputs"].startswith("8 tokenised sentences") and data["argmax_total"] == 8


@pytest.mark.arm
@pytest.mark.slow
def test_device_runner_measures_under_emulation(tmp_path):
    """The standalone runner, copied into an exported LUT folder, runs on aarch64 onnxruntime + numpy alone and writes
    measurements that the workstation assembles into a latency table labelled as emulated."""
    import os
    import subprocess

    launcher = _emulator_or_skip()
    from edgeprune.latency import schema
    from edgeprune.latency.table import export_lut_models, load_lut, predict
    from edgeprune.testing import tiny_model

    folder = tmp_path / "lut-pi4"
    export_lut_models(tiny_model("bert", num_layers=1, num_heads=2, hidden=32), "raspberrypi4", folder)
    out = folder / "lut.json"
    env = dict(os.environ, QEMU_CPU="cortex-a72")
    res = subprocess.run([str(launcher), str(folder / "device_runner.py"), str(folder), "--out", str(out),
                          "--rounds", "2", "--reps", "1", "--threads", "1"],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    raw = json.loads(out.read_text())
    assert raw["format"] == schema.MEASUREMENTS_FORMAT
    assert raw["host"]["arch"] == "aarch64" and raw["host"]["emulated"] and raw["host"]["qemu_cpu"] == "cortex-a72"
    lut = load_lut(out)
    assert lut["provenance"]["where"] == "emulated" and "QEMU" in lut["provenance"]["measured_on"]
    assert [row["widths"] for row in lut["ffn"]["layers"]] == [[0, 16, 32, 64]]
    assert predict(lut, [2]) > 0 and lut["method"]["rounds"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# no emulator needed
# ---------------------------------------------------------------------------------------------------------------------
def test_tolerance_catches_wrong_arm_outputs(tiny_bundle, monkeypatch):
    """The tolerance is not vacuous: ARM outputs off by 0.5 on one element fail (emulator replaced by a fake)."""
    import edgeprune.onnx.arm as arm

    def fake_arm(model, feeds, *, qemu_cpu, threads=1, root=None, timeout=0.0):
        outs = arm.run_on_host(model, feeds)
        bad = [[o.copy() for o in f] for f in outs]
        bad[0][0][0, 0, 0] += 0.5
        info = {"machine": "aarch64", "onnxruntime": "x", "outputs": ["logits"], "isa": {}, "wall_seconds": 0.0}
        return (bad if fail else outs), info

    monkeypatch.setattr(arm, "find_arm_python", lambda root=None: Path("/nonexistent/arm-python"))
    monkeypatch.setattr(arm, "run_on_arm", fake_arm)
    for fail in (False, True):
        res = arm.verify_arm(tiny_bundle, "raspberrypi4", seq_len=8, num_batches=1)
        assert res.passed is not fail
        assert res.outputs[0].max_abs_diff > 1e-3  # INT8 vs FP32: the reference comparison has signal
    assert "FAIL" in res.summary_lines()[-2] and "OUT OF TOLERANCE" in "\n".join(res.summary_lines())


def test_missing_sysroot_names_the_setup_command(tmp_path, monkeypatch):
    import edgeprune.onnx.arm as arm

    monkeypatch.setattr(arm.shutil, "which", lambda name: "/usr/bin/" + name)
    with pytest.raises(EmulationError) as exc:
        arm.find_arm_python(tmp_path / "nothing")
    assert "setup_arm_emu.sh" in str(exc.value) and str(tmp_path / "nothing") in str(exc.value)


def test_missing_qemu_names_the_install_command(tmp_path, monkeypatch):
    import edgeprune.onnx.arm as arm

    monkeypatch.setattr(arm.shutil, "which", lambda name: None)
    with pytest.raises(EmulationError, match="apt-get install qemu-user-static"):
        arm.find_arm_python(tmp_path)


def test_max_cpu_and_x86_profile_are_refused(tiny_bundle):
    from edgeprune.onnx.arm import run_on_arm, verify_arm

    with pytest.raises(EmulationError, match="max"):
        run_on_arm(tiny_bundle / "model.onnx", [], qemu_cpu="max")
    with pytest.raises(EmulationError, match="not an ARM device"):
        verify_arm(tiny_bundle, "x86-64")


def test_inputs_are_seeded_padded_and_in_vocab(tmp_path):
    from edgeprune.onnx.arm import make_inputs
    from edgeprune.onnx.export import export_onnx
    from edgeprune.testing import tiny_model

    model = tiny_model("bert", num_layers=1, num_heads=2, hidden=16)
    path = export_onnx(model, tmp_path / "m.onnx")
    feeds = make_inputs(path, batch=3, seq_len=10, num_batches=2, seed=0)
    again = make_inputs(path, batch=3, seq_len=10, num_batches=2, seed=0)
    assert len(feeds) == 2 and set(feeds[0]) >= {"input_ids", "attention_mask"}
    ids, mask = feeds[0]["input_ids"], feeds[0]["attention_mask"]
    assert ids.shape == (3, 10) and ids.dtype == np.int64
    # vocab read from the embedding initializer (no config.json here): every id indexes the table
    assert ids.max() < model.config.vocab_size
    assert mask[:-1].all() and mask[-1, :5].all() and not mask[-1, 5:].any()
    assert (ids[-1, 5:] == 0).all()
    assert np.array_equal(ids, again[0]["input_ids"]) and not np.array_equal(ids, feeds[1]["input_ids"])


def test_text_inputs_use_the_bundle_tokenizer(tmp_path):
    from edgeprune.onnx.arm import DEFAULT_TEXTS, make_text_inputs
    from edgeprune.onnx.export import export_onnx
    from edgeprune.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer(tmp_path)
    export_onnx(tiny_model("bert", num_layers=1, num_heads=2, hidden=16), tmp_path / "model.onnx")
    texts = ["the movie was good", "bad plot", "a very very long and boring story that is not fun at all"]
    feeds = make_text_inputs(tmp_path / "model.onnx", texts, batch=2, seq_len=12)
    assert [f["input_ids"].shape for f in feeds] == [(2, 12), (1, 12)]
    assert np.array_equal(feeds[0]["input_ids"][0], tok("the movie was good", padding="max_length", max_length=12,
                                                         return_tensors="np")["input_ids"][0])
    # short sentences are padded (mask 0 at the tail), the long one is truncated to seq_len
    assert feeds[0]["attention_mask"][1, -1] == 0 and feeds[1]["attention_mask"].all()
    assert len(DEFAULT_TEXTS) >= 8
    with pytest.raises(EmulationError, match="tokenizer"):
        make_text_inputs(tmp_path / "model.onnx", texts, tokenizer_dir=tmp_path / "nothing")


def test_fp32_reference_lookup(tiny_bundle, tmp_path):
    from edgeprune.onnx.arm import find_fp32_reference

    assert find_fp32_reference(tiny_bundle) == tiny_bundle / "model.fp32.onnx"
    # a quantized file is never taken as the FP32 reference, and edgeprune.json can name the FP32 file
    (tmp_path / "model.fp32.onnx").write_bytes((tiny_bundle / "model.onnx").read_bytes())
    assert find_fp32_reference(tmp_path) is None
    (tmp_path / "ref.onnx").write_bytes((tiny_bundle / "model.fp32.onnx").read_bytes())
    (tmp_path / "edgeprune.json").write_text(json.dumps({"files": {"fp32": "ref.onnx"}}))
    assert find_fp32_reference(tmp_path) == tmp_path / "ref.onnx"
