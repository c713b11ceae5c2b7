"""Latency table: predictor arithmetic, LUT assembly, a real tiny-model LUT with provenance, the device runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeprune.errors import MeasureError, PlanError
from edgeprune.latency import schema
from edgeprune.latency.table import (
    default_ffn_widths,
    ffn_cost,
    has_ffn_axis,
    layer_costs,
    load_lut,
    predict,
    save_lut,
)

PROVENANCE = ["cpu_model", "arch", "ort_version", "date", "where", "measured_on"]
SETTINGS = ["threads", "batch", "seq_len", "precision", "profile"]


def _lut(calibration=1.0):
    return {
        "format": schema.LUT_FORMAT,
        "version": schema.LUT_VERSION,
        "model": {"heads_per_layer": [2, 3]},
        "settings": {},
        "provenance": {},
        "rest_ms": 1.5,
        "layers": [
            {"index": 0, "heads": 2, "ms": [0.5, 1.0, 1.25]},
            {"index": 1, "heads": 3, "ms": [0.25, 2.0, 3.0, 4.0]},
        ],
        "calibration_factor": calibration,
    }


def _ffn_lut(calibration=1.0):
    """_lut() plus an FFN axis: layer 0 has 8 neurons measured at 0/2/4/8, layer 1 has 6 at 0/3/6."""
    lut = _lut(calibration)
    lut["ffn"] = {
        "layers": [
            {"index": 0, "heads": 2, "width": 8, "widths": [0, 2, 4, 8], "ms": [0.0, 0.5, 0.6, 1.0],
             "fit": {"knee": 2, "intercept_ms": 0.0, "slope_ms_per_neuron": 0.1, "r2": 1.0}},
            {"index": 1, "heads": 3, "width": 6, "widths": [0, 3, 6], "ms": [0.0, 0.25, 0.75],
             "fit": {"knee": 3, "intercept_ms": 0.0, "slope_ms_per_neuron": 0.1, "r2": 1.0}},
        ]
    }
    return lut


def test_predict_arithmetic():
    lut = _lut()
    assert predict(lut, [2, 3]) == pytest.approx(1.5 + 1.25 + 4.0)
    assert predict(lut, [0, 0]) == pytest.approx(1.5 + 0.5 + 0.25)
    assert predict(lut, (1, 2)) == pytest.approx(1.5 + 1.0 + 3.0)
    assert predict(_lut(0.5), [1, 2], calibrated=True) == pytest.approx(0.5 * 5.5)
    assert predict(_lut(0.5), [1, 2]) == pytest.approx(5.5)  # calibration only when asked


def test_predict_accepts_a_plan():
    from edgeprune.plan import HeadPlan

    plan = HeadPlan.from_removed([2, 3], [(0, 1), (1, 0), (1, 2)])
    assert predict(_lut(), plan) == pytest.approx(1.5 + 1.0 + 2.0)


def test_predict_rejects_mismatched_plans():
    with pytest.raises(PlanError, match="3 layers but the latency table has 2"):
        predict(_lut(), [1, 1, 1])
    with pytest.raises(PlanError, match="0..2"):
        predict(_lut(), [3, 0])


def test_predict_with_ffn_widths():
    lut = _ffn_lut()
    heads = predict(lut, [2, 3])
    assert has_ffn_axis(lut) and not has_ffn_axis(_lut())
    # Full widths are the heads-only prediction; None means the same.
    assert predict(lut, [2, 3], ffn_widths=[8, 6]) == pytest.approx(heads)
    # Width 0 removes each FFN's whole measured cost.
    assert predict(lut, [2, 3], ffn_widths=[0, 0]) == pytest.approx(heads - 1.0 - 0.75)
    # Interpolation between measured widths: 6 in layer 0 lies half-way between 4 (0.6) and 8 (1.0).
    assert ffn_cost(lut, 0, 6) == pytest.approx(0.8)
    assert predict(lut, [2, 3], ffn_widths=[6, 6]) == pytest.approx(heads - 0.2)
    # Below the smallest measured nonzero width the FFN is flat (fixed costs), not a ramp down to 0.
    assert ffn_cost(lut, 0, 1) == pytest.approx(0.5) and ffn_cost(lut, 1, 1) == pytest.approx(0.25)
    assert ffn_cost(lut, 0, 0) == 0.0
    assert predict(lut, [0, 0], ffn_widths=[4, 3]) == pytest.approx(1.5 + 0.5 + 0.25 + (0.6 - 1.0) + (0.25 - 0.75))
    assert predict(_ffn_lut(0.5), [2, 3], ffn_widths=[0, 0], calibrated=True) == pytest.approx(0.5 * (heads - 1.75))


def test_predict_ffn_errors():
    with pytest.raises(PlanError, match="edgeprune lut --ffn"):
        predict(_lut(), [2, 3], ffn_widths=[8, 6])
    with pytest.raises(PlanError, match="3 layers"):
        predict(_ffn_lut(), [2, 3], ffn_widths=[8, 6, 1])
    with pytest.raises(PlanError, match="0..8"):
        predict(_ffn_lut(), [2, 3], ffn_widths=[9, 6])
    with pytest.raises(PlanError, match="0..6"):
        predict(_ffn_lut(), [2, 3], ffn_widths=[8, -1])


def test_old_lut_without_ffn_loads_and_predicts(tmp_path):
    old = _lut()
    assert "ffn" not in old
    p = save_lut(old, tmp_path / "old.json")
    lut = load_lut(p)
    assert not has_ffn_axis(lut)
    assert predict(lut, [2, 3]) == pytest.approx(1.5 + 1.25 + 4.0)
    assert predict(lut, [2, 3], ffn_widths=None) == pytest.approx(1.5 + 1.25 + 4.0)
    from edgeprune.latency.table import format_lut

    lut["settings"] = {"profile": "p", "precision": "int8", "threads": 1, "batch": 1, "seq_len": 8}
    lut["model"]["name"] = "m"
    lut["provenance"] = {"measured_on": "here"}
    lut["layers"] = [dict(layer, fit={"intercept_ms": 0.0, "slope_ms_per_head": 0.0, "r2": 1.0})
                     for layer in lut["layers"]]
    assert "no FFN axis" in format_lut(lut)


def test_load_lut_checks_the_ffn_section(tmp_path):
    assert load_lut(save_lut(_ffn_lut(), tmp_path / "ok.json")) == _ffn_lut()
    bad = _ffn_lut()
    bad["ffn"]["layers"][1]["ms"] = [0.0, 0.1]
    with pytest.raises(MeasureError, match="FFN layer 1 has 2 entries for 3 widths"):
        load_lut(save_lut(bad, tmp_path / "a.json"))
    bad = _ffn_lut()
    bad["ffn"]["layers"][0]["widths"] = [2, 0, 4, 8]
    with pytest.raises(MeasureError, match="ascend from 0"):
        load_lut(save_lut(bad, tmp_path / "b.json"))
    bad = _ffn_lut()
    bad["ffn"]["layers"].pop()
    with pytest.raises(MeasureError, match="FFN section has 1 layers"):
        load_lut(save_lut(bad, tmp_path / "c.json"))


def test_fit_linear_recovers_line():
    f = schema.fit_linear([1, 2, 3, 4], [2.5, 3.0, 3.5, 4.0])
    assert f["intercept_ms"] == pytest.approx(2.0) and f["slope_ms_per_head"] == pytest.approx(0.5)
    assert f["r2"] == pytest.approx(1.0)
    noisy = schema.fit_linear([1, 2, 3], [1.0, 3.0, 2.0])
    assert noisy["slope_ms_per_head"] == pytest.approx(0.5) and noisy["r2"] == pytest.approx(0.25)


def test_fit_hinge_finds_the_knee():
    widths = [128, 256, 512, 1024, 1536]
    # Flat at 0.30 below 256, then 0.22 + 0.0003 ms/neuron (the shape measured on MiniLM).
    ys = [0.22 + 0.0003 * max(w, 256) for w in widths]
    fit = schema.fit_hinge(widths, ys)
    assert fit["knee"] == 256
    assert fit["slope_ms_per_neuron"] == pytest.approx(0.0003) and fit["intercept_ms"] == pytest.approx(0.22)
    # A plain line keeps the smallest knee (no flat part invented).
    line = schema.fit_hinge(widths, [0.1 + 0.001 * w for w in widths])
    assert line["knee"] == 128 and line["r2"] == pytest.approx(1.0)
    assert schema.hinge_value(fit, 0) == 0.0 and schema.hinge_value(fit, 100) == pytest.approx(0.22 + 0.0003 * 256)
    assert default_ffn_widths(1536) == [0, 128, 256, 512, 1024, 1536]
    assert default_ffn_widths(3072) == [0, 128, 256, 512, 1024, 2048, 3072]
    assert default_ffn_widths(64) == [0, 16, 32, 64]


def test_layer_costs_and_round_trip(tmp_path):
    rest, rows = layer_costs(_lut())
    assert rest == 1.5 and rows[1] == [0.25, 2.0, 3.0, 4.0]
    p = save_lut(_lut(), tmp_path / "lut.json")
    assert load_lut(p) == _lut()


def test_load_lut_rejects_bad_files(tmp_path):
    with pytest.raises(MeasureError, match="not found"):
        load_lut(tmp_path / "none.json")
    (tmp_path / "a.json").write_text("{nope")
    with pytest.raises(MeasureError, match="not a JSON"):
        load_lut(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(MeasureError, match="not an edgeprune latency table"):
        load_lut(tmp_path / "b.json")
    bad = _lut()
    bad["layers"][0]["ms"] = [1.0]
    save_lut(bad, tmp_path / "c.json")
    with pytest.raises(MeasureError, match="layer 0 has 1 entries"):
        load_lut(tmp_path / "c.json")


def _measurements(manifest, groups, host, **extra):
    """A measurements document as the device runner writes it (files named like ``edgeprune lut --export-only``)."""
    doc = {"format": schema.MEASUREMENTS_FORMAT, "version": schema.MEASUREMENTS_VERSION, "manifest": manifest,
           "threads": manifest["settings"]["threads"], "where": None, "table": "fitted", "host": host,
           "date": "2026-12-01T00:00:00+00:00", "method": {"rounds": 3, "reps": 1}, "groups": groups}
    doc.update(extra)
    return doc


def _manifest(ffn=None):
    manifest = {
        "model": {"heads_per_layer": [2]},
        "settings": {"profile": "raspberrypi4", "threads": 1, "batch": 1, "seq_len": 8, "precision": "int8"},
        "profile": {"name": "raspberrypi4", "display_name": "a Raspberry Pi 4", "arch": "aarch64",
                    "cpu": {"core_type": "Cortex-A72"}},
        "files": {"rest": "rest.onnx", "ref": "ref.onnx", "full": "full.onnx",
                  "layers": [["layer00_k00.onnx", "layer00_k01.onnx", "layer00_k02.onnx"]]},
    }
    if ffn:
        manifest["ffn"] = {"sizes": [8], "widths": [[0, 2, 4, 8]]}
        manifest["files"]["ffn"] = [["layer00_f00000.onnx", "layer00_f00002.onnx", "layer00_f00004.onnx", None]]
    return manifest


HOST = {"arch": "x86_64", "cpu_model": "Test CPU", "logical_cores": 2, "ort_version": "x"}


def test_assemble_pairs_rounds_and_fits():
    # The machine slows down by +10 ms in round 2: paired differences must not see it.
    rounds = {"ref.onnx": [1.0, 11.0, 1.0], "rest.onnx": [1.0, 1.2, 0.8], "full.onnx": [6.0, 6.0, 6.0],
              "layer00_k00.onnx": [1.5, 11.5, 1.5], "layer00_k01.onnx": [3.0, 13.0, 3.0],
              "layer00_k02.onnx": [4.0, 14.0, 4.0]}
    lut = schema.assemble_lut(_measurements(_manifest(), [{"layer": 0, "rounds": rounds}], HOST, threads=2))
    row = lut["layers"][0]
    assert row["raw_ms"] == pytest.approx([0.5, 2.0, 3.0])
    assert row["fit"]["slope_ms_per_head"] == pytest.approx(1.0) and row["fitted_ms"][0] == pytest.approx(0.5)
    assert lut["rest_ms"] == pytest.approx(1.0)  # the real rest model's rounds, not the in-group reference's
    assert lut["full_model_predicted_ms"] == pytest.approx(1.0 + 3.0)
    assert lut["calibration_factor"] == pytest.approx(6.0 / 4.0)
    assert lut["provenance"]["where"] == "this host" and lut["provenance"]["date"] == "2026-12-01T00:00:00+00:00"
    assert "not on a Raspberry Pi 4" in lut["provenance"]["measured_on"]
    assert lut["settings"]["threads"] == 2 and "1 threads; 2 were used" in lut["settings"]["threads_note"]
    assert "ffn" not in lut  # no FFN axis in the manifest: none in the LUT


def test_assemble_ffn_axis_from_device_rounds():
    base = {"ref.onnx": [1.0, 11.0, 1.0], "rest.onnx": [1.0, 1.0, 1.0], "full.onnx": [6.0, 6.0, 6.0],
            "layer00_k00.onnx": [1.5, 11.5, 1.5], "layer00_k01.onnx": [3.0, 13.0, 3.0],
            "layer00_k02.onnx": [4.0, 14.0, 4.0]}  # a +10 ms load burst in round 2 cancels in the paired differences
    # FFN widths 0, 2, 4 (the full width 8 is the k = 2 heads model, not measured twice).
    ffn = {"layer00_f00000.onnx": [2.0, 12.0, 2.0], "layer00_f00002.onnx": [3.0, 13.0, 3.0],
           "layer00_f00004.onnx": [3.5, 13.5, 3.5]}
    doc = _measurements(_manifest(ffn=True), [{"layer": 0, "rounds": dict(base, **ffn)}], HOST, table="raw")
    lut = schema.assemble_lut(doc)
    row = lut["ffn"]["layers"][0]
    assert row["widths"] == [0, 2, 4, 8] and row["width"] == 8
    assert row["layer_raw_ms"] == pytest.approx([1.0, 2.0, 2.5, 3.0])  # last = heads raw_ms[2]
    assert row["raw_ms"] == pytest.approx([0.0, 1.0, 1.5, 2.0]) and row["ms"] == row["raw_ms"]
    assert row["fitted_ms"][0] == 0.0 and row["fit"]["knee"] in (2, 4)
    assert has_ffn_axis(lut)
    assert predict(lut, [2], ffn_widths=[2]) == pytest.approx(predict(lut, [2]) - 1.0)
    del doc["groups"][0]["rounds"]["layer00_f00004.onnx"]
    with pytest.raises(MeasureError, match="no timings for layer00_f00004.onnx"):
        schema.assemble_lut(doc)
    doc["manifest"]["files"]["ffn"][0][2] = None  # a width the manifest names but no file measured
    with pytest.raises(MeasureError, match="no timings for FFN width 4"):
        schema.assemble_lut(doc)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("torch")
    from edgeprune.latency.table import build_lut
    from edgeprune.testing import tiny_model

    tmp = tmp_path_factory.mktemp("lut")
    model = tiny_model("bert", num_layers=2, num_heads=2, hidden=32)
    lut = build_lut(model, "raspberrypi4", out=tmp / "lut.json", rounds=3, reps=2, keep_dir=tmp / "export")
    return tmp, lut


@pytest.mark.slow
def test_tiny_lut_written_with_provenance(built):
    tmp, lut = built
    on_disk = load_lut(tmp / "lut.json")
    assert on_disk == json.loads(json.dumps(lut))
    for key in PROVENANCE:
        assert on_disk["provenance"].get(key), f"provenance.{key} missing"
    for key in SETTINGS:
        assert key in on_disk["settings"], f"settings.{key} missing"
    assert on_disk["settings"]["precision"] == "int8" and on_disk["settings"]["seq_len"] == 128
    assert on_disk["model"]["heads_per_layer"] == [2, 2]
    assert [len(layer["raw_ms"]) for layer in on_disk["layers"]] == [3, 3]
    assert on_disk["full_model_ms"] > 0 and on_disk["calibration_factor"] > 0
    assert predict(on_disk, [2, 2]) == pytest.approx(on_disk["full_model_predicted_ms"])
    files = {p.name for p in (tmp / "export").iterdir()}
    assert {"manifest.json", "device_runner.py", "rest.onnx", "full.onnx", "layer01_k02.onnx"} <= files


@pytest.mark.slow
def test_tiny_lut_has_a_sane_ffn_axis(built):
    from edgeprune.latency.table import check_lut, format_lut

    tmp, lut = built
    assert has_ffn_axis(lut)
    files = {p.name for p in (tmp / "export").iterdir()}
    assert {"layer00_f00000.onnx", "layer01_f00032.onnx"} <= files and "layer00_f00064.onnx" not in files
    for heads_row, row in zip(lut["layers"], lut["ffn"]["layers"]):
        assert row["width"] == 64 and row["widths"] == [0, 16, 32, 64]
        # The full width is the heads axis' k = H model: the same rounds, the same number.
        assert row["layer_raw_ms"][-1] == pytest.approx(heads_row["raw_ms"][-1])
        assert row["ms"][0] == 0.0 and row["raw_ms"][0] == 0.0
        # A tiny FFN costs microseconds: anything beyond the whole layer's time is a unit or pairing bug.
        assert all(abs(x) <= max(row["layer_raw_ms"]) + 0.05 for x in row["ms"])
    assert predict(lut, [2, 2], ffn_widths=[64, 64]) == pytest.approx(predict(lut, [2, 2]))
    removed = predict(lut, [2, 2], ffn_widths=[0, 0])
    assert removed == pytest.approx(predict(lut, [2, 2]) - sum(r["ms"][-1] for r in lut["ffn"]["layers"]))
    assert "FFN (64 neurons)" in format_lut(lut)
    assert check_lut(lut, [2, 2], ffn_sizes=[64, 64]) == []
    with pytest.raises(MeasureError, match="FFN widths"):
        check_lut(lut, [2, 2], ffn_sizes=[128, 128])


@pytest.mark.slow
def test_lut_sub_models_follow_the_profiles_graph(built, tmp_path):
    """Sub-models are made like the shipped file: plain graph by default, offline-fused when the profile says so."""
    import dataclasses

    import onnx

    from edgeprune.latency.table import export_lut_models
    from edgeprune.profiles import load_profile
    from edgeprune.testing import tiny_model

    def attention_heads(path):
        graph = onnx.load(str(path)).graph
        return [a.i for n in graph.node if n.op_type in ("Attention", "QAttention") for a in n.attribute
                if a.name == "num_heads"]

    tmp, lut = built
    assert lut["settings"]["graph"] == "plain"
    assert attention_heads(tmp / "export" / "full.onnx") == []  # plain: ORT fuses at session load
    ops = {n.op_type for n in onnx.load(str(tmp / "export" / "full.onnx")).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}

    prof = load_profile("raspberrypi4")
    fused = dataclasses.replace(prof, quant=dataclasses.replace(prof.quant, graph="fused"))
    out = tmp_path / "fused"
    manifest = json.loads(export_lut_models(tiny_model("bert", num_layers=2, num_heads=2, hidden=32), fused, out,
                                            ffn=False).read_text())
    assert manifest["settings"]["graph"] == "fused"
    assert attention_heads(out / "layer00_k01.onnx") == [1]  # INT8: the fused Attention became QAttention
    assert attention_heads(out / "layer00_k00.onnx") == []
    assert attention_heads(out / "full.onnx") == [2, 2]


@pytest.mark.slow
def test_device_runner_standalone_on_exported_folder(built):
    tmp, _ = built
    runner = tmp / "export" / "device_runner.py"
    text = runner.read_text()
    assert "import edgeprune" not in text and "from edgeprune" not in text and "from ." not in text
    out = tmp / "device_lut.json"
    res = subprocess.run(
        [sys.executable, str(runner), str(tmp / "export"), "--out", str(out), "--rounds", "2", "--reps", "2",
         "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp,
    )
    assert res.returncode == 0, res.stderr
    raw = json.loads(out.read_text())
    # The device writes measurements (raw rounds per sub-model file), the workstation assembles them on read.
    assert raw["format"] == schema.MEASUREMENTS_FORMAT and "layers" not in raw
    assert len(raw["groups"]) == 2 and len(raw["groups"][0]["rounds"]["layer00_k02.onnx"]) == 2
    lut = load_lut(out)
    assert lut["format"] == schema.LUT_FORMAT and lut == schema.assemble_lut(raw)
    assert lut["settings"]["threads"] == 1 and "threads_note" in lut["settings"]
    assert lut["method"]["rounds"] == 2
    assert lut["provenance"]["ort_version"] and lut["provenance"]["measured_on"]
    assert predict(lut, [0, 1]) > 0
    assert has_ffn_axis(lut) and [row["widths"] for row in lut["ffn"]["layers"]] == [[0, 16, 32, 64]] * 2
    assert "FFN axis" in res.stdout
    assert predict(lut, [0, 1], ffn_widths=[24, 0]) == pytest.approx(
        predict(lut, [0, 1]) + ffn_cost(lut, 0, 24) - ffn_cost(lut, 0, 64) - ffn_cost(lut, 1, 64))
    # The search takes the device's file as it is (`--latency-table lut.json`): the same predictions.
    from edgeprune.plan import HeadLayout
    from edgeprune.search.run import resolve_latency

    lat_fn, source = resolve_latency(HeadLayout((2, 2), 16, 32), 32, 128, latency_table=out)
    assert source["kind"] == "lut" and source["provenance"] == lut["provenance"]
    assert lat_fn((0, 1)) == predict(lut, [0, 1])


@pytest.mark.slow
def test_cli_lut_export_only(tmp_path):
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from edgeprune.cli import app
    from edgeprune.testing import tiny_model

    model_dir = tmp_path / "model"
    tiny_model("bert", num_layers=1, num_heads=2, hidden=32).save_pretrained(model_dir)
    res = CliRunner().invoke(app, ["lut", "--model", str(model_dir), "--profile", "raspberrypi5",
                                   "--export-only", str(tmp_path / "dev")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "dev" / "manifest.json").read_text())
    assert manifest["settings"]["threads"] == 4 and manifest["settings"]["profile"] == "raspberrypi5"
    assert manifest["files"]["layers"] == [["layer00_k00.onnx", "layer00_k01.onnx", "layer00_k02.onnx"]]
    assert manifest["ffn"] == {"sizes": [64], "widths": [[0, 16, 32, 64]]}
    assert manifest["files"]["ffn"] == [["layer00_f00000.onnx", "layer00_f00016.onnx", "layer00_f00032.onnx", None]]
    res = CliRunner().invoke(app, ["lut", "--model", str(model_dir), "--no-ffn", "--export-only", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "n" / "manifest.json").read_text())
    assert "ffn" not in manifest and "ffn" not in manifest["files"]
    assert not list((tmp_path / "n").glob("*_f*.onnx"))
    res = CliRunner().invoke(app, ["lut", "--model", str(model_dir)])
    assert res.exit_code == 2 and "--out" in res.output  # typer's usage error: give --out or --export-only


def test_check_lut_layout_and_settings():
    from edgeprune.latency.table import check_lut

    lut = _lut()
    assert check_lut(lut, [2, 3]) == []
    with pytest.raises(MeasureError, match=r"\[2, 3\]"):
        check_lut(lut, [2, 2])
    lut["settings"] = {"batch": 1, "seq_len": 64, "precision": "int8"}
    warnings = check_lut(lut, [2, 3], "raspberrypi4")
    assert len(warnings) == 1 and "seq_len" in warnings[0]
    assert check_lut(lut, [2, 3], ffn_sizes=[8, 6]) == []  # no FFN axis: nothing to compare
    assert check_lut(_ffn_lut(), [2, 3], ffn_sizes=[8, 6]) == []
    with pytest.raises(MeasureError, match=r"FFN widths \[8, 6\]"):
        check_lut(_ffn_lut(), [2, 3], ffn_sizes=[8, 8])
    bad = _ffn_lut()
    bad["ffn"]["layers"][0]["widths"] = [0, 2, 4, 7]
    with pytest.raises(MeasureError, match="full width 8"):
        check_lut(bad, [2, 3])


def test_profile_lut_follows_the_profile_field(tmp_path):
    from edgeprune.latency.table import profile_lut

    save_lut(_lut(), tmp_path / "pi4-lut.json")
    text = (Path(__file__).resolve().parents[1] / "profiles" / "raspberrypi4.toml").read_text()
    prof = tmp_path / "pi.toml"
    prof.write_text(text.replace('qemu_cpu = "cortex-a72"', 'qemu_cpu = "cortex-a72"\nlatency_table = "pi4-lut.json"'))
    assert profile_lut(prof)["rest_ms"] == 1.5
    assert profile_lut("raspberrypi4") is None
