"""The latency table's schema owner (edgeprune.latency.schema): measurements in, the same LUT out as before the move.

``tests/data/lut_pre_schema.json`` holds the LUTs that the runner assembled itself at commit e350d4d (before the
schema moved out of device_runner.py), from the deterministic fake timings of ``tests/lut_fakes.py``.
``tests/data/lut_measurements_v1.json`` holds the measurements files today's runner writes for the same timings.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lut_fakes
import pytest

from edgeprune.errors import MeasureError
from edgeprune.latency import device_runner as dr
from edgeprune.latency.schema import (
    LUT_FORMAT,
    MEASUREMENTS_FORMAT,
    assemble_lut,
    load_lut,
    measurements_problem,
    predict,
    save_lut,
)

DATA = Path(__file__).resolve().parent / "data"
OLD = json.loads((DATA / "lut_pre_schema.json").read_text())["cases"]
MEASURED = json.loads((DATA / "lut_measurements_v1.json").read_text())["cases"]


def _run_runner(monkeypatch, tmp_path, name):
    manifest, host, kwargs = lut_fakes.CASES[name]
    folder = tmp_path / name
    folder.mkdir()
    (folder / dr.MANIFEST_NAME).write_text(json.dumps(manifest))
    lut_fakes.patch_runner(monkeypatch, dr, host)
    return dr.measure_folder(folder, **kwargs)


def test_the_fixtures_cover_what_the_assembly_distinguishes():
    # Otherwise equality below would prove little: the cases differ in every branch the assembly has.
    a, b = OLD["pi4_ffn_threads"], OLD["x86_declared_raw"]
    assert "ffn" in a and "ffn" not in b
    assert "full_model_ms" in a and "full_model_ms" not in b
    assert a["settings"]["threads_note"] and "threads_note" not in b["settings"]
    assert a["method"]["table"] == "fitted" and b["method"]["table"] == "raw"
    assert a["provenance"]["where"] == "device" and "declared by the runner" in b["provenance"]["measured_on"]
    assert a["layers"][1]["ms"] != a["layers"][1]["raw_ms"]  # the fit is not exact: fitted and raw differ


@pytest.mark.parametrize("name", sorted(lut_fakes.CASES))
def test_new_runner_and_schema_give_the_old_lut(name, monkeypatch, tmp_path):
    """Same timings through today's runner (measurements) and schema (assembly): the old LUT, key for key."""
    measurements = _run_runner(monkeypatch, tmp_path, name)
    assert measurements["format"] == MEASUREMENTS_FORMAT and measurements["version"] == 1
    # JSON round trip: what a device writes and the workstation reads.
    measurements = json.loads(json.dumps(measurements))
    assert measurements == MEASURED[name]  # the measurements format is pinned (older device files keep loading)
    assert assemble_lut(measurements) == OLD[name]


@pytest.mark.parametrize("name", sorted(lut_fakes.CASES))
def test_load_lut_reads_measurements_and_assembled_tables_alike(name, tmp_path):
    from_measurements = load_lut(save_lut(MEASURED[name], tmp_path / "lut.json"))
    from_table = load_lut(save_lut(OLD[name], tmp_path / "assembled.json"))
    assert from_measurements == from_table == OLD[name]
    assert from_measurements["format"] == LUT_FORMAT
    heads = from_table["model"]["heads_per_layer"]
    assert predict(from_measurements, heads) == predict(from_table, heads) > 0


def test_the_assembly_uses_the_measured_values():
    # A cross-check that equality with the fixture is not equality of two constant outputs: moving one sub-model's
    # rounds moves exactly its entry.
    meas = copy.deepcopy(MEASURED["pi4_ffn_threads"])
    meas["groups"][1]["rounds"]["layer01_k02.onnx"] = [x + 1.0 for x in meas["groups"][1]["rounds"]["layer01_k02.onnx"]]
    lut = assemble_lut(meas)
    old = OLD["pi4_ffn_threads"]
    assert lut["layers"][1]["raw_ms"][2] == pytest.approx(old["layers"][1]["raw_ms"][2] + 1.0)
    assert lut["layers"][1]["raw_ms"][:2] == old["layers"][1]["raw_ms"][:2]
    assert lut["layers"][0] == old["layers"][0]


def test_measurements_are_checked_before_assembly(tmp_path):
    good = MEASURED["pi4_ffn_threads"]
    assert measurements_problem(good) is None

    def broken(edit):
        doc = copy.deepcopy(good)
        edit(doc)
        return doc

    cases = [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d["groups"].pop(), "1 layer groups measured for 2 layers"),
        (lambda d: d["groups"][0]["rounds"].pop("ref.onnx"), "no timings for ref.onnx"),
        (lambda d: d["groups"][1]["rounds"].pop("layer01_f00006.onnx"), "no timings for layer01_f00006.onnx"),
        (lambda d: d["groups"][0]["rounds"]["full.onnx"].pop(), "different numbers of rounds"),
        (lambda d: d["groups"][0]["rounds"].update({"rest.onnx": ["1.0"] * 5}), "not all numbers"),
        (lambda d: d.pop("host"), "lack 'host'"),
    ]
    for i, (edit, message) in enumerate(cases):
        doc = broken(edit)
        assert message in (measurements_problem(doc) or ""), message
        with pytest.raises(MeasureError, match="lut.json: .*" + message.split(" ")[0]):
            load_lut(save_lut(doc, tmp_path / f"{i}" / "lut.json"))


def test_runner_writes_measurements_not_a_table():
    # The device runner owns no schema: it has no fits, no assembly and no LUT format of its own.
    for gone in ("assemble_lut", "fit_linear", "fit_hinge", "hinge_value", "ffn_layer_entry", "LUT_FORMAT"):
        assert not hasattr(dr, gone), gone
    text = Path(dr.__file__).read_text()
    assert "import edgeprune" not in text and "from edgeprune" not in text and "from ." not in text
