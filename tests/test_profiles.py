"""Device profiles: every shipped profile loads; malformed profiles fail naming the file and the dotted field."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeprune.errors import ProfileError
from edgeprune.profiles import DeviceProfile, QuantPreset, format_profiles_table, list_profiles, load_profile

SHIPPED = ["android-arm64", "jetson-orin-nano", "raspberrypi4", "raspberrypi5", "x86-64"]
PI4 = Path(__file__).resolve().parents[1] / "profiles" / "raspberrypi4.toml"


def test_all_shipped_profiles_are_listed():
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_typed(name):
    p = load_profile(name)
    assert isinstance(p, DeviceProfile) and isinstance(p.quant, QuantPreset)
    assert p.name == name
    assert p.threads >= 1 and p.batch >= 1 and p.seq_len >= 2
    assert p.qemu_cpu != "max"
    for reason in ("format_reason", "weight_type_reason", "per_channel_reason", "reduce_range_reason"):
        assert len(getattr(p.quant, reason)) > 20, f"{name}: quant.{reason} should explain the choice"
    if p.arch == "aarch64":
        assert p.isa.neon and p.qemu_cpu


def test_device_facts_match_design():
    pi4, pi5, jet = load_profile("raspberrypi4"), load_profile("raspberrypi5"), load_profile("jetson-orin-nano")
    assert (pi4.qemu_cpu, pi5.qemu_cpu, jet.qemu_cpu) == ("cortex-a72", "cortex-a76", "neoverse-n1")
    assert not pi4.isa.dotprod and pi5.isa.dotprod and jet.isa.fp16 and not pi5.isa.i8mm
    assert pi4.cpu.count == 4 and jet.cpu.count == 6
    assert pi4.quant.to_record() == {"format": "dynamic", "weight_type": "s8", "per_channel": True, "reduce_range": False,
                                     "graph": "plain"}
    assert pi4.quant.to_record() == {**QuantPreset.default_int8().to_record()}


def test_load_by_path_equals_load_by_name():
    assert load_profile(PI4) == load_profile("raspberrypi4")
    assert load_profile(str(PI4)).source == PI4.resolve()


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def _pi4_text() -> str:
    return PI4.read_text()


@pytest.mark.parametrize(
    "edit, field, words",
    [
        # unknown key, top level and nested
        (lambda t: t.replace('arch = "aarch64"', 'arch = "aarch64"\ncolour = "red"'), "colour", "unknown field"),
        (lambda t: t.replace("threads = 4", "threads = 4\nthread = 4"), "inference.thread", "unknown field"),
        # wrong types
        (lambda t: t.replace("threads = 4", 'threads = "4"'), "inference.threads", "must be int"),
        (lambda t: t.replace("per_channel = true", "per_channel = 1"), "quant.per_channel", "must be bool"),
        (lambda t: t.replace("ghz = 1.5", 'ghz = "fast"'), "cpu.ghz", "must be float"),
        (
            lambda t: t.replace("[memory]\nram_gb_min = 1.0\nram_gb_max = 8.0\n", "").replace(
                'arch = "aarch64"', 'arch = "aarch64"\nmemory = 8'
            ),
            "memory",
            "must be a table",
        ),
        # missing fields
        (lambda t: t.replace('qemu_cpu = "cortex-a72"', ""), "qemu_cpu", "required for aarch64"),
        (lambda t: t.replace("seq_len = 128\n", ""), "inference.seq_len", "missing required field"),
        (lambda t: t.replace('weight_type = "s8"\n', ""), "quant.weight_type", "missing required field"),
        # invalid values
        (lambda t: t.replace('qemu_cpu = "cortex-a72"', 'qemu_cpu = "max"'), "qemu_cpu", "not allowed"),
        (lambda t: t.replace('weight_type = "s8"', 'weight_type = "s4"'), "quant.weight_type", "must be one of"),
        (lambda t: t.replace("threads = 4", "threads = 0"), "inference.threads", ">= 1"),
    ],
)
def test_malformed_profile_names_file_and_field(tmp_path, edit, field, words):
    text = edit(_pi4_text())
    assert text != _pi4_text()
    path = _write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"'{field}'" in msg
    assert words in msg


def test_missing_section_and_bad_toml(tmp_path):
    text = _pi4_text()
    start = text.index("[memory]")
    end = text.index("[inference]")
    with pytest.raises(ProfileError, match=r"missing required field 'memory'"):
        load_profile(_write(tmp_path, text[:start] + text[end:]))
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(_write(tmp_path, "name = [unclosed"))


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ProfileError, match="raspberrypi4"):
        load_profile("no-such-device")
    with pytest.raises(ProfileError, match="not found"):
        load_profile("/nonexistent/dir/x.toml")


def test_user_profile_dir_via_env(tmp_path, monkeypatch):
    (tmp_path / "mypi.toml").write_text(_pi4_text().replace('name = "raspberrypi4"', 'name = "mypi"'))
    monkeypatch.setenv("EDGEPRUNE_PROFILES", str(tmp_path))
    assert "mypi" in list_profiles()
    assert load_profile("mypi").name == "mypi"


def test_latency_table_path_is_relative_to_profile(tmp_path):
    p = _write(tmp_path, _pi4_text().replace('qemu_cpu = "cortex-a72"', 'qemu_cpu = "cortex-a72"\nlatency_table = "lut.json"'))
    assert load_profile(p).latency_table_path() == tmp_path.resolve() / "lut.json"
    assert load_profile("raspberrypi4").latency_table_path() is None


def test_table_lists_every_profile():
    table = format_profiles_table()
    for name in SHIPPED:
        assert name in table
    assert "cortex-a72" in table and "dynamic s8 per-channel" in table


def test_profiles_module_is_light():
    import subprocess

    code = "import edgeprune.profiles, sys; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_profile_asking_for_static_quantization_is_refused_at_load(tmp_path):
    import re

    from edgeprune.errors import ProfileError
    from edgeprune.profiles import load_profile

    src = (Path(__file__).resolve().parents[1] / "profiles" / "raspberrypi4.toml").read_text()
    changed = re.sub(r'(?m)^format = "dynamic"', 'format = "static"', src)
    assert changed != src
    (tmp_path / "static.toml").write_text(changed)
    with pytest.raises(ProfileError, match="calibration"):
        load_profile(tmp_path / "static.toml")
