"""Reliability (issue #17), through the real entry point (``python -m edgeprune.cli``, which runs ``main``):

- every bad input ends in one line on stderr and its exit code; each row of docs/errors.md is a case here;
- a failed start leaves nothing that blocks the next run; a lock refuses a second build on the same --out, and a
  lock left by a killed build is taken over;
- a build SIGKILLed at each stage (and at random points inside the long ones), then resumed, ships the same plan
  and the same bundle as an uninterrupted build with the same pinned latency table and seed;
- Ctrl-C says how to --resume, and the resumed report counts the time of both processes;
- a full disk while writing the bundle ends in a clear message and exit 5, with no half bundle left.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from test_build import tiny_task  # noqa: E402,F401  (the tiny model + 240-row data fixture of the build tests)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")  # the child imports this checkout
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _cli(args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeprune.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=_env())


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(("error:", "internal error:"))]


# ---------------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pinned_lut(tiny_task, tmp_path_factory):
    """A latency table of the tiny model at the x86-64 profile, measured once (builds reuse it: same plans)."""
    from edgeprune.latency.table import build_lut, save_lut
    from edgeprune.task.modeling import load_model

    model, _ = load_model(str(tiny_task / "model"), with_tokenizer=False)
    lut = build_lut(model, "x86-64", rounds=3, reps=1)
    return save_lut(lut, tmp_path_factory.mktemp("lut") / "lut.json")


def _build_args(task: Path, out: Path, lut: Path | None = None, *extra) -> list:
    args = ["build", "--profile", "x86-64", "--model", task / "model", "--data", task / "data.csv", "--out", out,
            "--max-drop", "60", "--max-evals", "12"]
    if lut is not None:
        args += ["--latency-table", lut]
    return args + list(extra)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _rows(n: int, label=lambda i: "positive" if i % 2 else "negative") -> str:
    return "text,label\n" + "".join(f"a good film number {i},{label(i)}\n" for i in range(n))


def _lut_variant(lut: Path, tmp: Path, name: str, edit) -> Path:
    data = json.loads(lut.read_text())
    edit(data)
    return _write(tmp / name, json.dumps(data))


def _fake_state(out: Path, stages, *, user_file: bool = False, fingerprint=None) -> None:
    state = out / ".edgeprune"
    state.mkdir(parents=True)
    _write(state / "config.json", json.dumps(fingerprint if fingerprint is not None else {"profile": "x86-64"}))
    for s in stages:
        _write(state / f"{s}.json", "{}")
    if user_file:
        _write(out / "plan.json", "{}")


def _start_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19])


# ---------------------------------------------------------------------------------------------------------------------
# the bad-input table (docs/errors.md): (case, setup -> argv, exit code, distinctive part of the message)
# ---------------------------------------------------------------------------------------------------------------------
def _case_out_unwritable(t, tmp, lut):
    return _build_args(t, Path("/proc/nope"))


def _case_out_is_file(t, tmp, lut):
    return _build_args(t, _write(tmp / "afile", "x"))


def _case_out_not_a_build(t, tmp, lut):
    _write(tmp / "mine" / "notes.txt", "my files")
    return _build_args(t, tmp / "mine")


def _case_out_finished(t, tmp, lut):
    _fake_state(tmp / "o", ["task", "lut", "search", "export", "measure", "report"], user_file=True)
    return _build_args(t, tmp / "o")


def _case_out_unfinished(t, tmp, lut):
    _fake_state(tmp / "o", ["task", "lut"])
    return _build_args(t, tmp / "o")


def _case_resume_other_settings(t, tmp, lut):
    _fake_state(tmp / "o", ["task", "lut"], fingerprint={"profile": "raspberrypi4"})
    return _build_args(t, tmp / "o", None, "--resume")


def _case_out_locked(t, tmp, lut):
    import socket

    _fake_state(tmp / "o", ["task", "lut"])
    me = os.getpid()  # this test process: alive, on this host
    _write(tmp / "o" / ".edgeprune" / "lock", json.dumps({"pid": me, "host": socket.gethostname(),
                                                          "start_ticks": _start_ticks(me), "started": "now"}))
    return _build_args(t, tmp / "o", None, "--resume")


def _case_resume_and_overwrite(t, tmp, lut):
    return _build_args(t, tmp / "o", None, "--resume", "--overwrite")


def _case_max_drop(t, tmp, lut):
    return _build_args(t, tmp / "o") + ["--max-drop", "-1"]


def _case_distill_augment(t, tmp, lut):
    return _build_args(t, tmp / "o") + ["--distill-augment", "-1"]


def _case_model_without_data(t, tmp, lut):
    return ["build", "--profile", "x86-64", "--model", t / "model", "--out", tmp / "o"]


def _case_bad_profile(t, tmp, lut):
    return ["build", "--profile", "no-such-device", "--out", tmp / "o"]


def _case_missing_data(t, tmp, lut):
    return ["build", "--profile", "x86-64", "--model", t / "model", "--data", tmp / "nope.csv", "--out", tmp / "o"]


def _case_no_label_column(t, tmp, lut):
    data = _write(tmp / "d.csv", "text,target\n" + "".join(f"film {i},{i % 2}\n" for i in range(200)))
    return ["build", "--profile", "x86-64", "--model", t / "model", "--data", data, "--out", tmp / "o"]


def _case_named_label_column_missing(t, tmp, lut):
    return _build_args(t, tmp / "o") + ["--label-column", "lab"]


def _case_unknown_label(t, tmp, lut):
    data = _write(tmp / "d.csv", _rows(200, lambda i: "neutral" if i == 7 else "positive"))
    return ["build", "--profile", "x86-64", "--model", t / "model", "--data", data, "--out", tmp / "o"]


def _case_label_id_outside(t, tmp, lut):
    data = _write(tmp / "d.csv", _rows(200, lambda i: 5 if i == 3 else i % 2))
    return ["build", "--profile", "x86-64", "--model", t / "model", "--data", data, "--out", tmp / "o"]


def _case_not_utf8(t, tmp, lut):
    data = _write(tmp / "d.csv", _rows(200).encode() + "un film tr\u00e8s dr\u00f4le,positive\n".encode("latin-1"))
    return ["build", "--profile", "x86-64", "--model", t / "model", "--data", data, "--out", tmp / "o"]


def _case_unclosed_quote(t, tmp, lut):
    data = _write(tmp / "d.csv", 'text,label\n"a film,positive\n' + _rows(200).split("\n", 1)[1])
    return ["build", "--profile", "x86-64", "--model", t / "model", "--data", data, "--out", tmp / "o"]


def _case_certify_labels_differ(t, tmp, lut):
    cert = _write(tmp / "c.csv", _rows(100, lambda i: "positive"))
    return _build_args(t, tmp / "o") + ["--certify-data", cert]


def _case_missing_tokenizer(t, tmp, lut):
    m = tmp / "m"
    shutil.copytree(t / "model", m)
    for f in m.glob("tokenizer*"):
        f.unlink()
    return ["build", "--profile", "x86-64", "--model", m, "--data", t / "data.csv", "--out", tmp / "o"]


def _case_config_weights_disagree(t, tmp, lut):
    m = tmp / "m"
    shutil.copytree(t / "model", m)
    cfg = json.loads((m / "config.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=128)
    (m / "config.json").write_text(json.dumps(cfg))
    return ["build", "--profile", "x86-64", "--model", m, "--data", t / "data.csv", "--out", tmp / "o"]


def _case_lut_other_model(t, tmp, lut):
    def edit(d):
        d["model"]["heads_per_layer"] = [4, 4, 4]

    return _build_args(t, tmp / "o", _lut_variant(lut, tmp, "lut.json", edit))


def _case_lut_other_profile(t, tmp, lut):
    return _build_args(t, tmp / "o", _lut_variant(lut, tmp, "lut.json",
                                                  lambda d: d["settings"].update(profile="raspberrypi4")))


def _case_lut_other_seq_len(t, tmp, lut):
    return _build_args(t, tmp / "o", _lut_variant(lut, tmp, "lut.json", lambda d: d["settings"].update(seq_len=64)))


def _case_plan_other_shape(t, tmp, lut):
    plan = _write(tmp / "plan.json", json.dumps({"num_heads": [4, 4, 4], "kept_heads": [[0], [1], [2]]}))
    return ["prune", "--model", t / "model", "--plan", plan, "--out", tmp / "pruned"]


def _case_prune_out_unwritable(t, tmp, lut):
    plan = _write(tmp / "plan.json", json.dumps({"num_heads": [4, 4], "kept_heads": [[0], [1]]}))
    return ["prune", "--model", t / "model", "--plan", plan, "--out", "/proc/nope"]


CASES = [
    # (case, argv builder, exit code, distinctive part of the message)
    ("out_unwritable", _case_out_unwritable, 2, "--out /proc/nope: cannot be created or written"),
    ("out_is_file", _case_out_is_file, 2, "exists and is not a folder"),
    ("out_not_a_build", _case_out_not_a_build, 2, "is not empty and is not an edgeprune build folder"),
    ("out_finished", _case_out_finished, 2, "holds a finished build: pass --overwrite to replace it"),
    ("out_unfinished", _case_out_unfinished, 2,
     "holds an unfinished build (stages done: task, lut): pass --resume to continue it"),
    ("resume_other_settings", _case_resume_other_settings, 2, "was built with other settings"),
    ("out_locked", _case_out_locked, 2, "is in use by another edgeprune build (pid"),
    ("resume_and_overwrite", _case_resume_and_overwrite, 2, "--resume and --overwrite exclude each other"),
    ("max_drop", _case_max_drop, 2, "--max-drop is in accuracy points"),
    ("distill_augment", _case_distill_augment, 2, "--distill-augment must be a whole number of variants in [0, 16]"),
    ("model_without_data", _case_model_without_data, 2, "give both --model and --data"),
    ("bad_profile", _case_bad_profile, 2, "no-such-device"),
    ("missing_data", _case_missing_data, 2, "nope.csv: file not found"),
    ("no_label_column", _case_no_label_column, 2, "no label column (tried 'label', 'labels'; name it with --label-column)"),
    ("named_label_column_missing", _case_named_label_column_missing, 2, "no label column 'lab'; columns found"),
    ("unknown_label", _case_unknown_label, 2, "column 'label': unknown label 'neutral'"),
    ("label_id_outside", _case_label_id_outside, 2, "unknown label id 5; known labels"),
    ("not_utf8", _case_not_utf8, 2, "not UTF-8 text"),
    ("unclosed_quote", _case_unclosed_quote, 2, "check for an unclosed quote"),
    ("certify_labels_differ", _case_certify_labels_differ, 2, "has no example of label(s) ['negative']"),
    ("missing_tokenizer", _case_missing_tokenizer, 2, "has no tokenizer files"),
    ("config_weights_disagree", _case_config_weights_disagree, 2,
     "tensor shapes differ from what its config.json describes"),
    ("lut_other_model", _case_lut_other_model, 2, "the latency table is for heads per layer [4, 4, 4]"),
    ("lut_other_profile", _case_lut_other_profile, 2, "measured with profile 'raspberrypi4'"),
    ("lut_other_seq_len", _case_lut_other_seq_len, 2, "measured with seq_len 64"),
    ("plan_other_shape", _case_plan_other_shape, 2, "plan is for heads per layer [4, 4, 4] but the model has [4, 4]"),
    ("prune_out_unwritable", _case_prune_out_unwritable, 2, "--out /proc/nope: cannot be created or written"),
]


@pytest.mark.parametrize("case,make,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line_and_its_exit_code(case, make, code, fragment, tiny_task, pinned_lut, tmp_path):
    before = {p.name for p in tmp_path.iterdir()}
    args = make(tiny_task, tmp_path, pinned_lut)
    made = {p.name for p in tmp_path.iterdir()} - before
    res = _cli(args, tmp_path)
    assert res.returncode == code, res.stdout + res.stderr
    errors = _error_lines(res.stderr)
    assert len(errors) == 1 and fragment in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    # A failed start leaves nothing behind (what the case set up itself stays as it was).
    if args[0] == "build" and "o" not in made:
        assert not (tmp_path / "o").exists(), list((tmp_path / "o").rglob("*"))


def test_the_docs_table_is_the_tested_table():
    rows = []
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*(.+?)\s*\|\s*`(.+?)`\s*\|\s*(\d+)\s*\|$", line)
        if m:
            rows.append((m.group(2), int(m.group(3))))
    tested = [(fragment, code) for _, _, code, fragment in CASES] + [(f, c) for f, c in EXTRA_ROWS]
    assert sorted(rows) == sorted(tested)


# Rows of docs/errors.md backed by the dedicated tests below (not by the table test above).
EXTRA_ROWS = [
    ("internal error: RuntimeError: injected", 70),
    ("interrupted during stage", 130),
    ("No space left on device", 5),
]


def test_the_python_api_names_arguments_not_flags(tiny_task, tmp_path):
    from edgeprune.errors import DataError, EdgepruneError
    from edgeprune.pipeline import BuildConfig
    from edgeprune.task.data import load_dataset

    with pytest.raises(EdgepruneError, match=r"^max_drop_pts is in accuracy points"):
        BuildConfig(max_drop_pts=-1)
    data = _write(tmp_path / "d.csv", "text,target\nfilm,1\n")
    with pytest.raises(DataError, match=r"name it with label_column\)"):
        load_dataset(data)


def test_an_unexpected_error_prints_a_short_message_and_the_traceback_file(tmp_path):
    code = """
        import sys
        import edgeprune.profiles
        def broken(*a, **k):
            raise RuntimeError("injected\\nsecond line")
        edgeprune.profiles.load_profile = broken
        from edgeprune.cli import main
        sys.argv = ["edgeprune", "build", "--profile", "x86-64", "--out", "o"]
        main()
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=_env())
    assert res.returncode == 70, res.stderr
    assert "internal error: RuntimeError: injected" in res.stderr and "second line" not in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) <= 3
    path = Path(re.search(r"the full traceback is in (\S+)", res.stderr).group(1))
    text = path.read_text()
    assert "Traceback (most recent call last)" in text and "def broken" not in text and "injected" in text
    path.unlink()


def test_quoted_newlines_are_one_row_and_form_feeds_do_not_split_rows(tmp_path):
    from edgeprune.task.data import load_dataset

    path = _write(tmp_path / "d.csv", 'text,label\n"a good\nfilm",1\nan odd\x0cchar,0\n"x",1\n')
    ds = load_dataset(path)
    assert ds.texts == ["a good\nfilm", "an odd\x0cchar", "x"] and ds.labels == [1, 0, 1]


# ---------------------------------------------------------------------------------------------------------------------
# console output
# ---------------------------------------------------------------------------------------------------------------------
def test_log_output_has_a_line_per_stage_with_time_and_a_heartbeat():
    from edgeprune.pipeline import _Display

    buf = io.StringIO()
    with _Display(True, stream=buf, heartbeat_s=0.2, terminal=False) as d:
        d.stage("task", 0)
        d.stage("lut", 2, reused=True)
        d.stage("search", 3)
        d.fraction("search", 0.5, "evals 6/12  best: -3 units 0.8 ms")
        time.sleep(0.7)
        d.stage("export", 4)
        d.finish()
    out = buf.getvalue()
    assert out.count("stage 1/7: task\n") == 1 and "stage 1/7: task done in" in out
    assert "stage 3/7: lut: reused from the interrupted build" in out
    assert re.search(r"search: evals 6/12  best: -3 units 0\.8 ms \(\d+ s in this stage\)", out), out
    assert out.count("stage 5/7: export done in") == 1 and "\x1b[" not in out  # plain text, no terminal codes


def test_a_build_log_is_plain_and_says_threads_and_whole_time(tiny_task, pinned_lut, tmp_path):
    res = _cli(_build_args(tiny_task, tmp_path / "o", pinned_lut), tmp_path)
    assert res.returncode == 0, res.stderr
    err = res.stderr
    for i, name in enumerate(("task", "preflight", "lut", "search", "export", "measure", "report"), start=1):
        assert err.count(f"stage {i}/7: {name}\n") == 1, err
        assert re.search(rf"stage {i}/7: {name} done in \d+\.\d s", err), err
    for noise in ("Loading weights", "Writing model shards", "INFO:", "it/s]", "━"):
        assert noise not in err + res.stdout, noise
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["latency_ms"]["settings"]["threads_requested"] == 4  # the x86-64 profile asks for 4
    if (os.cpu_count() or 1) < 4:
        assert "asks for 4 threads; this host has" in err
        assert "asks for 4 threads; this host has" in (tmp_path / "o" / "report.md").read_text()
    assert report["timing"]["processes"] == 1 and report["wall_s"] >= sum(report["timing"]["stages_s"].values()) - 1
    assert not (tmp_path / "o" / ".edgeprune" / "lock").exists()


# ---------------------------------------------------------------------------------------------------------------------
# locks
# ---------------------------------------------------------------------------------------------------------------------
def test_a_stale_lock_is_recognised_and_taken_over(tmp_path):
    from edgeprune.errors import OutputFolderError
    from edgeprune.output.folder import FolderLock, process_alive

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ticks = _start_ticks(zombie.pid)
    zombie.send_signal(signal.SIGKILL)
    time.sleep(0.3)  # killed, not reaped: a zombie still answers kill(pid, 0)
    try:
        assert not process_alive(gone.pid) and not process_alive(zombie.pid, ticks)
        assert process_alive(os.getpid(), _start_ticks(os.getpid()))
        assert not process_alive(os.getpid(), _start_ticks(os.getpid()) + 1)  # same pid, another process: reused
        lock_path = tmp_path / "lock"
        lock_path.write_text(json.dumps({"pid": zombie.pid, "host": os.uname().nodename, "start_ticks": ticks}))
        lock = FolderLock(lock_path, tmp_path).acquire()
        assert lock.recovered["pid"] == zombie.pid and json.loads(lock_path.read_text())["pid"] == os.getpid()
        lock.release()
        assert not lock_path.exists()
        # A live holder (here: this process's parent) is not taken over.
        lock_path.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
        with pytest.raises(OutputFolderError, match=f"in use by another edgeprune build \\(pid {os.getppid()}"):
            FolderLock(lock_path, tmp_path).acquire()
    finally:
        zombie.wait()


@pytest.mark.slow
def test_two_builds_on_one_out_the_second_refuses(tiny_task, pinned_lut, tmp_path):
    out = tmp_path / "o"
    first = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", *map(str, _build_args(tiny_task, out, pinned_lut))],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 120
        while not (out / ".edgeprune" / "lock").exists():
            assert first.poll() is None and time.time() < deadline, "the first build never took the lock"
            time.sleep(0.05)
        second = _cli(_build_args(tiny_task, out, pinned_lut, "--resume"), tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another edgeprune build (pid {first.pid}" in second.stderr
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    assert (out / "bundle" / "model.onnx").is_file() and not (out / ".edgeprune" / "lock").exists()


# ---------------------------------------------------------------------------------------------------------------------
# SIGKILL at each stage, then --resume: the same plan and bundle as an uninterrupted build
# ---------------------------------------------------------------------------------------------------------------------
KILLER = """
import importlib, os, signal, sys
target, when, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
calls = [0]
def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    if calls[0] == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, wrapper)
from edgeprune.cli import main
sys.argv = ["edgeprune"] + sys.argv[4:]
main()
"""

_rng = random.Random(17)  # "random points inside the long stages", fixed so a failure can be replayed
_EVAL_POINTS = sorted(_rng.sample(range(1, 12), 3))

KILL_POINTS = [
    # (stage, target, before/after, nth call)
    ("task", "edgeprune.task.data:load_dataset", "after", 1),
    ("lut", "edgeprune.latency.table:save_lut", "after", 1),
    ("preflight", "edgeprune.search.run:shipped_dense_predictions", "before", 1),  # the dense INT8 file (pre-flight)
    *[(f"search-eval-{k}", "edgeprune.search.journal:Journal.add_eval", "after", k) for k in _EVAL_POINTS],
    ("search-end", "edgeprune.search.run:write_plan", "after", 1),
    ("recovery", "edgeprune.recovery.chain:Recoverer.__call__", "before", 1),
    ("export-compile", "edgeprune.onnx.compile:compile_plan", "after", 2),  # call 1 is the search's dense INT8
    ("certification", "edgeprune.output.bundle:certify_sequence", "before", 1),
    ("export-ort", "edgeprune.onnx.ort_format:to_ort_format", "before", 1),
    ("export-end", "edgeprune.output.bundle:export_bundle", "after", 1),
    ("measure", "edgeprune.latency.measure:measure_alternating", "before", 1),
    ("measure-memory", "edgeprune.latency.measure:measure_memory", "before", 1),
    ("report", "edgeprune.output.report:write_report", "after", 1),
]


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if not (k.endswith(("seconds", "_s")) or k in ("timing_s", "path"))}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _ort_content(path: Path) -> list:
    """What an .ort file holds, in order: onnxruntime's serializer writes the same content in a varying byte layout
    (two conversions of one file in one process differ), so the files are compared by content."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    s = InferenceSession.GetRootAsInferenceSession(path.read_bytes(), 0)
    g = s.Model().Graph()
    out = [s.OrtVersion(), s.Model().IrVersion()]
    for i in range(g.NodesLength()):
        n = g.Nodes(i)
        out.append((n.Name(), n.OpType(), n.Domain(), n.SinceVersion(), n.Index(),
                    [n.Inputs(j) for j in range(n.InputsLength())], [n.Outputs(j) for j in range(n.OutputsLength())],
                    [(n.Attributes(j).Name(), n.Attributes(j).I(), n.Attributes(j).F(), n.Attributes(j).S(),
                      n.Attributes(j).IntsAsNumpy().tolist() if n.Attributes(j).IntsLength() else None)
                     for j in range(n.AttributesLength())]))
    for i in range(g.InitializersLength()):
        t = g.Initializers(i)
        out.append((t.Name(), t.DataType(), [t.Dims(j) for j in range(t.DimsLength())],
                    t.RawDataAsNumpy().tobytes() if t.RawDataLength() else None))
    out.append([g.NodeArgs(i).Name() for i in range(g.NodeArgsLength())])
    out.append([g.Inputs(i) for i in range(g.InputsLength())] + [g.Outputs(i) for i in range(g.OutputsLength())])
    return out


def _strip_reused(obj):
    """A resumed build marks the certification tests it reused from the interrupted run (``reused``): the tests and
    their numbers must be the same, the marks are the only difference allowed."""
    if isinstance(obj, dict):
        return {k: _strip_reused(v) for k, v in obj.items() if k != "reused"}
    if isinstance(obj, list):
        return [_strip_reused(v) for v in obj]
    return obj


def _bundle_fingerprint(out: Path) -> dict:
    files = {}
    for f in sorted((out / "bundle").iterdir()):
        if f.suffix == ".ort":  # model.ort and model.e2e.ort: same content, the serializer's byte layout varies
            files[f.name] = _ort_content(f)
        elif f.name == "edgeprune.json":
            files[f.name] = _strip_reused(_strip_times(json.loads(f.read_text())))
        else:
            files[f.name] = f.read_bytes()
    return files


def _plan_of(out: Path) -> dict:
    plan = json.loads((out / "plan.json").read_text())
    return {k: plan[k] for k in ("num_heads", "kept_heads", "ffn")}


@pytest.fixture(scope="module")
def reference(tiny_task, pinned_lut, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "o"
    res = _cli(_build_args(tiny_task, out, pinned_lut), out.parent)
    assert res.returncode == 0, res.stderr
    return {"plan": _plan_of(out), "bundle": _bundle_fingerprint(out), "out": out}


def _no_half_files(out: Path) -> None:
    """After a kill: every file under a final name is whole (JSON parses; a bundle folder is complete)."""
    for name in ("plan.json", "latency_table.json", "report.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())
    if (out / "bundle").exists():
        assert {"model.onnx", "model.ort", "edgeprune.json", "config.json"} <= {p.name for p in (out / "bundle").iterdir()}
    for p in (out / ".edgeprune").glob("*.json") if (out / ".edgeprune").exists() else []:
        json.loads(p.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage,target,when,nth", KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_sigkill_then_resume_gives_the_uninterrupted_result(stage, target, when, nth, tiny_task, pinned_lut, reference,
                                                            tmp_path):
    out = tmp_path / "o"
    args = _build_args(tiny_task, out, pinned_lut)
    killed = subprocess.run([sys.executable, "-c", KILLER, target, when, str(nth), *map(str, args)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=_env())
    assert killed.returncode == -signal.SIGKILL, f"kill point {stage} was never reached:\n{killed.stderr}"
    if out.exists():
        _no_half_files(out)
    resumed = _cli(args + ["--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    if stage != "task":  # every kill after the claim leaves a lock whose process is gone
        assert "took over a stale lock" in resumed.stderr, resumed.stderr
    assert _plan_of(out) == reference["plan"]
    assert _bundle_fingerprint(out) == reference["bundle"]
    assert not list(out.glob(".bundle.tmp-*")) and not (out / ".edgeprune" / "lock").exists()
    report = json.loads((out / "report.json").read_text())
    # Killed before any stage after the task finished (task, pre-flight), the resumed build starts over: 1 process.
    assert report["timing"]["processes"] == (1 if stage in ("task", "preflight") else 2)


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_the_resumed_report_counts_both_processes(tiny_task, pinned_lut, tmp_path):
    out = tmp_path / "o"
    args = _build_args(tiny_task, out, pinned_lut)
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune.cli", *map(str, args)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "stage 4/7: search" in line:
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=300)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert re.search(r"interrupted during stage (search|export|measure); continue it with the same command plus "
                     r"--resume", err), err
    assert "Traceback" not in err and "Aborted" not in err
    resumed = _cli(args + ["--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["processes"] == 2
    assert report["wall_s"] > report["timing"]["this_process_s"] + 1.0


# ---------------------------------------------------------------------------------------------------------------------
# a full disk while writing the bundle
# ---------------------------------------------------------------------------------------------------------------------
FILL_DISK = """
import os, sys
import edgeprune.output.bundle as bundle
original = bundle.export_bundle
ballast = os.path.join(sys.argv[1], "ballast")
def export_on_a_full_disk(*args, **kwargs):
    with open(ballast, "wb") as fh:  # leave ~64 KiB: the bundle (~100 KiB) cannot be written
        try:
            while True:
                fh.write(b"\\0" * 65536)
                fh.flush()
        except OSError:
            pass
    os.truncate(ballast, os.path.getsize(ballast) - 65536)
    return original(*args, **kwargs)
bundle.export_bundle = export_on_a_full_disk
from edgeprune.cli import main
sys.argv = ["edgeprune"] + sys.argv[2:]
main()
"""


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_a_full_disk_while_writing_the_bundle_is_a_clear_error_and_resumes(tiny_task, pinned_lut, small_tmpfs,
                                                                          tmp_path):
    out = small_tmpfs / "o"
    args = _build_args(tiny_task, out, pinned_lut)
    res = subprocess.run([sys.executable, "-c", FILL_DISK, str(small_tmpfs), *map(str, args)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=_env())
    assert res.returncode == 5, res.stderr
    errors = _error_lines(res.stderr)
    assert len(errors) == 1 and "No space left on device" in errors[0] and "stage export" in errors[0], res.stderr
    assert "--resume continues" in errors[0] and "Traceback" not in res.stderr
    assert not (out / "bundle").exists() and not list(out.glob(".bundle.tmp-*"))  # no half bundle, room freed
    assert not (out / ".edgeprune" / "lock").exists()
    assert shutil.disk_usage(small_tmpfs).free >= 32 * 1024  # the partial files' room was given back
    (small_tmpfs / "ballast").unlink()
    resumed = _cli(args + ["--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "bundle" / "model.onnx").is_file()
