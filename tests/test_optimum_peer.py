"""benchmarks/optimum_peer.py: optimum's arm64 preset run in the transformers 4.57 environment as a subprocess.

The real quantization needs a Python with optimum: ``.venv-tf457`` when it exists (``scripts/test.sh`` builds it after
the 5.x suite, so on a fresh machine the 5.x run has none and skips it, saying so), and always in the 4.57 run,
where this file is listed in ``TF457_TESTS`` and the current interpreter itself imports optimum (never skipped there:
see ``optimum_python``). The failure paths need no optimum.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks.optimum_peer as op

REPO = Path(__file__).resolve().parents[1]


def optimum_python() -> str:
    """The interpreter the benchmarks would use; skips only where no Python with optimum exists at all."""
    exe, how = op.find_optimum_python()
    if exe is None:
        # find_optimum_python returns sys.executable whenever it imports optimum: the 4.57 run cannot get here.
        assert not op._has_optimum()
        pytest.skip(f"no Python with optimum here ({how}); scripts/test.sh runs this file in .venv-tf457 too")
    return exe


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for an interpreter (a shell script)."""
    exe = tmp_path / "fake-bin" / "python"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def env_versions(python: str) -> dict:
    """The package versions of another interpreter's environment, asked independently of the module under test."""
    code = ("import json, sys\nfrom importlib import metadata\nv = {}\n"
            "for n in sys.argv[1:]:\n    try: v[n] = metadata.version(n)\n"
            "    except metadata.PackageNotFoundError: v[n] = None\nprint(json.dumps(v))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", code, *op.PACKAGES], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


@pytest.fixture
def fp32_file(tiny_task, tmp_path):
    pytest.importorskip("onnx")
    from edgeprune.onnx.export import export_onnx
    from edgeprune.task.modeling import clone_model

    return export_onnx(clone_model(tiny_task.model), tmp_path / "fp32" / "model.onnx")


def _logits(path: Path, feed: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feed.items() if k in names})[0]


def test_arm64_preset_writes_an_int8_file_close_to_fp32(tiny_task, fp32_file, tmp_path):
    import numpy as np
    import onnx

    from edgeprune.onnx.quantize import INT8_LOGIT_ATOL, count_quantized

    python = optimum_python()
    res = op.quantize_with_optimum(fp32_file, tiny_task.model_dir, tmp_path / "opt")  # config.json from a folder
    assert res["status"] == "ok", res.get("detail")
    out = Path(res["path"])
    assert out.is_file() and out.parent == tmp_path / "opt" and out != fp32_file and res["python"] == python
    # The versions are the optimum environment's (in the 5.x run: transformers 4.57 while this one is 5.x).
    assert {k: res["versions"][k] for k in op.PACKAGES} == env_versions(python)
    assert res["versions"]["optimum"] and res["versions"]["transformers"].startswith("4.57")
    # The arm64 dynamic preset: QOperator integer ops, u8 activations, s8 symmetric per-channel weights.
    preset = json.loads((out.parent / "ort_config.json").read_text())["quantization"]
    assert (preset["is_static"], preset["per_channel"], preset["format"], preset["mode"]) == \
        (False, True, "QOperator", "IntegerOps")
    assert (preset["activations_dtype"], preset["weights_dtype"], preset["weights_symmetric"]) == \
        ("QUInt8", "QInt8", True)
    # INT8 compute: every MatMul became DynamicQuantizeLinear + MatMulInteger (4 layers x (q, k, v, out, 2 FFN) +
    # 2 activation MatMuls per layer + pooler + classifier = 34); none is left in float.
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert count_quantized(out).get("MatMulInteger", 0) == ops.count("MatMulInteger") == 34
    assert ops.count("DynamicQuantizeLinear") >= 30 and "MatMul" not in ops
    assert "MatMulInteger" not in [n.op_type for n in onnx.load(str(fp32_file)).graph.node]
    # Logits close to the FP32 file's on real (padded) inputs, far closer than the logits differ between inputs.
    enc = tiny_task.tok(list(tiny_task.certify.texts[:16]), padding=True, return_tensors="np")
    feed = {k: v.astype(np.int64) for k, v in enc.items()}
    feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))  # the word tokenizer returns none
    assert (feed["attention_mask"] == 0).any()  # padding too
    ref, q = _logits(fp32_file, feed), _logits(out, feed)
    assert ref.shape == q.shape == (16, 2)
    diff = float(np.abs(ref - q).max())
    spread = float(np.abs(ref - ref.mean(axis=0)).max())
    # measured 0.023 vs a spread of 0.138 (transformers 5.24 export); a wrong or unquantized file fails one of them
    assert 0 < diff < INT8_LOGIT_ATOL and diff < 0.5 * spread, (diff, spread)


def test_broken_onnx_file_fails_with_the_stderr_tail(tiny_task, tmp_path):
    optimum_python()
    broken = tmp_path / "broken" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"this is not an ONNX protobuf")
    res = op.quantize_with_optimum(broken, tiny_task.model, tmp_path / "opt")  # config from the model object
    assert res["status"] == "failed"
    assert res["detail"].startswith("the quantizer raised DecodeError") and "stderr tail:" in res["detail"]
    assert "Traceback" in res["detail"] and "onnx" in res["detail"].split("stderr tail:")[1]
    assert res["versions"]["optimum"] and not list((tmp_path / "opt").glob("*.onnx"))


def test_missing_python_is_not_available(tmp_path, monkeypatch):
    res = op.quantize_with_optimum(tmp_path / "x.onnx", tmp_path, tmp_path / "o", python="/nonexistent/bin/python")
    assert res["status"] == "not available"
    assert res["detail"] == "/nonexistent/bin/python (the python argument) does not exist or is not executable"
    monkeypatch.setenv(op.ENV_VAR, str(tmp_path / "nope" / "python"))  # the variable is not silently ignored
    res = op.quantize_with_optimum(tmp_path / "x.onnx", tmp_path, tmp_path / "o")
    assert res["status"] == "not available" and f"(${op.ENV_VAR})" in res["detail"] and "nope" in res["detail"]
    # Nothing anywhere: no variable, this interpreter without optimum, no .venv-tf457 in the repo or next to the env.
    monkeypatch.delenv(op.ENV_VAR)
    monkeypatch.setattr(op, "_has_optimum", lambda: False)
    monkeypatch.setattr(op, "REPO", tmp_path / "repo")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env" / ".venv"))
    res = op.quantize_with_optimum(tmp_path / "x.onnx", tmp_path, tmp_path / "o")
    assert res["status"] == "not available" and res["detail"].startswith("no interpreter with optimum: tried ")
    assert str(tmp_path / "repo" / ".venv-tf457" / "bin" / "python") in res["detail"]
    assert str(tmp_path / "env" / ".venv-tf457" / "bin" / "python") in res["detail"]


def test_python_without_optimum_is_not_available(tmp_path):
    # -S: no site-packages, so no optimum, whatever this environment has.
    exe = fake_python(tmp_path, f'exec "{sys.executable}" -S "$@"')
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "m.onnx").write_bytes(b"x")
    res = op.quantize_with_optimum(tmp_path / "m.onnx", tmp_path, tmp_path / "o", python=exe)
    assert res["status"] == "not available"
    assert res["detail"].startswith("optimum does not import in ") and "No module named 'optimum'" in res["detail"]
    assert "(exit code 3); stderr tail: Traceback" in res["detail"] and res["versions"]["optimum"] is None


def test_quantizer_error_reports_the_error_and_stderr_tail(tmp_path):
    """The quantizer raising (a stand-in optimum package, so no optimum is needed): status failed, the exception in
    the detail, then the traceback from the subprocess's stderr."""
    fake = tmp_path / "fake-site" / "optimum" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text(
        "class ORTQuantizer:\n"
        "    @classmethod\n"
        "    def from_pretrained(cls, path, file_name=None):\n"
        "        import sys; print('loading ' + file_name, file=sys.stderr); return cls()\n"
        "    def quantize(self, save_dir, quantization_config):\n"
        "        raise RuntimeError('unsupported op Foo in graph')\n")
    (fake / "configuration.py").write_text(
        "class AutoQuantizationConfig:\n"
        "    @staticmethod\n"
        "    def arm64(is_static, per_channel):\n"
        "        assert is_static is False and per_channel is True\n"
        "        return object()\n")
    exe = fake_python(tmp_path, f'PYTHONPATH="{fake.parent.parent}" exec "{sys.executable}" -S "$@"')
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "m.onnx").write_bytes(b"x")
    res = op.quantize_with_optimum(tmp_path / "m.onnx", tmp_path, tmp_path / "o", python=exe)
    assert res["status"] == "failed"
    assert res["detail"].startswith("the quantizer raised RuntimeError: unsupported op Foo in graph (exit code 5)")
    tail = res["detail"].split("stderr tail: ", 1)[1]
    assert tail.startswith("loading m.onnx") and "Traceback" in tail and tail.endswith("unsupported op Foo in graph")
    assert (tmp_path / "o" / "src" / "m.onnx").read_bytes() == b"x"  # staged with its config.json
    assert (tmp_path / "o" / "src" / "config.json").read_text() == "{}"


def test_crash_without_a_result_line_keeps_the_last_of_stderr(tmp_path):
    exe = fake_python(tmp_path, "head -c 5000 /dev/zero | tr '\\0' 'x' >&2; echo >&2; echo 'Segmentation fault' >&2; "
                                "echo 'some stdout noise'; exit 139")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "m.onnx").write_bytes(b"x")
    res = op.quantize_with_optimum(tmp_path / "m.onnx", tmp_path, tmp_path / "o", python=exe)
    assert res["status"] == "failed"
    assert res["detail"].startswith(f"{exe} exited with code 139 and no result line; stderr tail: ...")
    assert res["detail"].endswith("Segmentation fault") and len(res["detail"]) < len(exe) + 100 + op.STDERR_TAIL


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv(op.ENV_VAR, "/from/env/python")
    assert op.find_optimum_python("/explicit/python") == ("/explicit/python", "the python argument")
    assert op.find_optimum_python() == ("/from/env/python", f"${op.ENV_VAR}")
    monkeypatch.delenv(op.ENV_VAR)
    monkeypatch.setattr(op, "_has_optimum", lambda: True)
    assert op.find_optimum_python()[0] == sys.executable
    monkeypatch.setattr(op, "_has_optimum", lambda: False)
    venv = tmp_path / "repo" / ".venv-tf457" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    monkeypatch.setattr(op, "REPO", tmp_path / "repo")
    assert op.find_optimum_python()[0] == str(venv / "python")


def test_the_tf457_run_includes_this_file():
    """scripts/test.sh runs this file in the 4.57 environment, where the real quantization cannot skip."""
    script = (REPO / "scripts" / "test.sh").read_text()
    listed = re.search(r"TF457_TESTS=\$\(ls (.*?) 2>/dev/null\)", script, re.DOTALL)
    assert listed and "tests/test_optimum_peer.py" in listed.group(1).split()


def test_smaller_model_row_with_the_real_quantizer(tiny_task, monkeypatch):
    """benchmarks/smaller_model.py end to end with the real subprocess: the other environment's INT8 file loads,
    is certified and timed here, and the report names that environment's versions."""
    pytest.importorskip("onnxruntime")
    import benchmarks.recovery_calibration as rc
    import benchmarks.smaller_model as sm

    python = optimum_python()
    monkeypatch.setattr(rc, "wait_for_task", lambda minutes: tiny_task)
    args = vars(sm.parser().parse_args([]))
    rec = sm.run(argparse.Namespace(**{**args, "layers": [], "epochs": 1, "rounds": 2, "reps": 1, "real_texts": 10,
                                       "wait": 0, "optimum": True, "optimum_python": python}))
    assert rec["optimum"]["status"] == "ok", rec["optimum"].get("detail")
    dense, row = rec["rows"]
    assert row["name"] == sm.OPTIMUM_ROW and row["versions"] == rec["optimum"]["versions"]
    assert 0 <= row["accuracy"] <= 1 and row["bound_pts"] >= 0 and row["p50_ms"] > 0
    assert row["speedup_vs_dense_int8"] > 0 and dense["name"] == "dense ORT INT8"
    assert f"quantized in `{python}` ({op.versions_text(rec['optimum'])})" in sm.markdown(rec)
