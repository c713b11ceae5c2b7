"""Labelled text data: a small in-memory dataset type and a loader for CSV, TSV, JSONL and Hugging Face datasets.

Everything here is pure Python (no torch): the search, the certification and the default task all consume a
:class:`TextDataset`. Every problem in the input is raised as :class:`edgeprune.errors.DataError` with the file,
the row (CSV/TSV: 1-based data row and its line number; JSONL: line number) and the column, so the user can fix the
file without guessing.

The Hugging Face ``datasets`` library is optional: it is imported only when a dataset name or a ``save_to_disk``
folder is given.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from edgeprune.errors import DataError, arg

__all__ = [
    "TEXT_COLUMN_CANDIDATES",
    "TEXT_PAIR_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "SUPPORTED_SUFFIXES",
    "TextDataset",
    "load_dataset",
]

#: Columns tried, in order, when ``text_column`` is not given.
TEXT_COLUMN_CANDIDATES: tuple[str, ...] = ("text", "sentence")
#: Columns tried, in order, when ``text_column`` is not given and the file holds sentence pairs (GLUE style).
TEXT_PAIR_COLUMN_CANDIDATES: tuple[tuple[str, str], ...] = (("sentence1", "sentence2"), ("premise", "hypothesis"))
#: Columns tried, in order, when ``label_column`` is not given.
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels")

_DELIMITED = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_JSONL = (".jsonl", ".ndjson")
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_DELIMITED) + _JSONL

# How many known labels / columns an error message lists before it abbreviates.
_LIST_LIMIT = 20


@dataclass
class TextDataset:
    """Labelled texts (optionally sentence pairs), held in memory.

    Attributes:
        texts: One text per example.
        labels: Integer class ids, aligned with ``texts``.
        text_pairs: Second segment per example for pair tasks (NLI, paraphrase), or None.
        source: Human-readable description of where the data came from (file path, split, ...).
        id2label: Class id -> class name, when names are known (string labels or the model's config).
    """

    texts: list[str]
    labels: list[int]
    text_pairs: list[str] | None = None
    source: str = "<memory>"
    id2label: dict[int, str] | None = field(default=None)

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.labels = [int(x) for x in self.labels]
        if len(self.texts) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.texts)} texts but {len(self.labels)} labels")
        if self.text_pairs is not None:
            self.text_pairs = list(self.text_pairs)
            if len(self.text_pairs) != len(self.texts):
                raise DataError(f"{self.source}: {len(self.texts)} texts but {len(self.text_pairs)} text pairs")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, str | None, int]:
        """Return ``(text, text_pair or None, label)`` of one example."""
        pair = self.text_pairs[index] if self.text_pairs is not None else None
        return self.texts[index], pair, self.labels[index]

    def __iter__(self) -> Iterator[tuple[str, str | None, int]]:
        for i in range(len(self)):
            yield self[i]

    @property
    def label_names(self) -> list[str] | None:
        """Class names ordered by id (None when ids are not named or not contiguous from 0)."""
        if not self.id2label or sorted(self.id2label) != list(range(len(self.id2label))):
            return None
        return [self.id2label[i] for i in range(len(self.id2label))]

    @property
    def num_labels(self) -> int:
        """Number of classes: from ``id2label`` when known, else 1 + the largest label seen."""
        if self.id2label:
            return max(len(self.id2label), max(self.id2label) + 1)
        return (max(self.labels) + 1) if self.labels else 0

    def label_counts(self) -> dict[int, int]:
        """Examples per class id, sorted by id."""
        return dict(sorted(Counter(self.labels).items()))

    def subset(self, indices: Iterable[int], source: str | None = None) -> "TextDataset":
        """A new dataset with the examples at ``indices`` (in that order).

        Args:
            indices: Positions into this dataset.
            source: Description of the subset; defaults to this source plus the number of examples.

        Returns:
            The selected examples as a new :class:`TextDataset`.
        """
        idx = list(indices)
        return TextDataset(
            texts=[self.texts[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            text_pairs=[self.text_pairs[i] for i in idx] if self.text_pairs is not None else None,
            source=source if source is not None else f"{self.source} [{len(idx)} examples]",
            id2label=dict(self.id2label) if self.id2label else None,
        )

    def head(self, n: int) -> "TextDataset":
        """The first ``n`` examples (all of them when ``n`` is larger than the dataset)."""
        n = min(max(int(n), 0), len(self))
        return self.subset(range(n), source=f"{self.source} [first {n}]")


# ----------------------------------------------------------------------------------------------------------------
# Public loader
# ----------------------------------------------------------------------------------------------------------------


def load_dataset(
    path_or_name: str | os.PathLike[str],
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    label2id: Mapping[str, int] | None = None,
    id2label: Mapping[int, str] | None = None,
    split: str | None = None,
) -> TextDataset:
    """Load labelled texts from a CSV/TSV/JSONL file, a ``datasets`` ``save_to_disk`` folder or a dataset name.

    Labels may be integers or strings. When the model's ``label2id`` (or ``id2label``) is given, string labels are
    mapped by name (exact, then case-insensitive) and integer labels must be ids the model knows. Without it,
    integer labels are used as they are and string labels get ids in sorted name order.

    Args:
        path_or_name: A ``.csv``, ``.tsv``/``.tab`` or ``.jsonl``/``.ndjson`` file; a folder written by
            ``datasets.Dataset.save_to_disk``; or a Hugging Face dataset name (both need ``datasets`` installed).
        text_column: Column with the text. Default: the first of ``TEXT_COLUMN_CANDIDATES`` present, else a
            ``sentence1``/``sentence2`` or ``premise``/``hypothesis`` pair.
        text_pair_column: Column with the second text of a pair task, or None.
        label_column: Column with the label. Default: the first of ``LABEL_COLUMN_CANDIDATES`` present.
        label2id: The model's label name -> id mapping (``model.config.label2id``).
        id2label: The model's id -> name mapping; used when ``label2id`` is not given.
        split: Split of a ``datasets`` DatasetDict (required when it has several).

    Returns:
        The examples as a :class:`TextDataset`.

    Raises:
        DataError: Missing file, empty file, missing column, unknown label, empty or non-text value, malformed
            JSON line, unsupported format, or ``datasets`` needed but not installed.
    """
    if label2id is None and id2label is not None:
        label2id = {str(v): int(k) for k, v in id2label.items()}
    path = Path(path_or_name)
    suffix = path.suffix.lower()
    if path.is_dir():
        return _load_hf(path, text_column, text_pair_column, label_column, label2id, split, from_disk=True)
    if path.exists():
        if suffix in _DELIMITED:
            rows = _read_delimited(path, _DELIMITED[suffix])
        elif suffix in _JSONL:
            rows = _read_jsonl(path)
        else:
            raise DataError(
                f"{path}: unsupported file type {suffix or '(no suffix)'!r}; supported: "
                f"{', '.join(SUPPORTED_SUFFIXES)} files, or a `datasets` save_to_disk folder"
            )
        return _build(rows, str(path), text_column, text_pair_column, label_column, label2id)
    if suffix in SUPPORTED_SUFFIXES or os.sep in str(path_or_name) or str(path_or_name).startswith("."):
        raise DataError(f"{path}: file not found")
    return _load_hf(str(path_or_name), text_column, text_pair_column, label_column, label2id, split, from_disk=False)


# ----------------------------------------------------------------------------------------------------------------
# Readers: each yields (location, record) where location names the row for error messages.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    columns: list[str]
    records: list[tuple[str, Mapping[str, Any]]]  # (location such as "row 3 (line 4)", record)


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would rename the first column.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def delimited_rows(text: str, delimiter: str, where: str, *, strict: bool = False):
    """The header and the data rows of delimited text, each row located by its lines.

    A file object, not ``str.splitlines()``: that also splits at form feeds, U+2028 and other characters that are
    not line ends for CSV, cutting such a row in two. Quoted fields may span lines (a row is located by its first
    line; csv's ``line_num`` is its last). Blank lines are skipped.

    Args:
        text: the file's text.
        delimiter: ``","`` or ``"\t"``.
        where: how errors name the file.
        strict: csv's strict mode (a stray quote is an error instead of being kept).

    Returns:
        ``(header, rows)``: the stripped header cells and an iterator of ``(row number, first line, last line,
        values)``.

    Raises:
        DataError: no header, a malformed header or row (with its line).
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=strict)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{where}: file is empty") from None
    except csv.Error as exc:
        raise DataError(f"{where}: line 1: malformed header ({exc})") from exc
    hint = "; check for an unclosed quote" if strict else ""

    def rows():
        row_no = 0
        while True:
            first = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{where}: line {reader.line_num}: malformed {_fmt_name(delimiter)} ({exc}){hint}") \
                    from exc
            if not values or all(not v.strip() for v in values):
                continue  # blank line between rows: not an example
            row_no += 1
            yield row_no, first, reader.line_num, values

    return header, rows()


def _read_delimited(path: Path, delimiter: str) -> _Rows:
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    header, rows = delimited_rows(text, delimiter, str(path))
    if not any(header):
        raise DataError(f"{path}: line 1: empty header row")
    dupes = sorted(h for h, c in Counter(header).items() if c > 1 and h)
    if dupes:
        raise DataError(f"{path}: line 1: duplicate column name(s) {', '.join(map(repr, dupes))}")
    records: list[tuple[str, Mapping[str, Any]]] = []
    for row_no, first, last, values in rows:
        lines = f"line {first}" if last == first else f"lines {first}-{last}"
        if last > first and len(values) < len(header):
            # A quoted field ran over line ends and the row came out short: almost always a quote never closed.
            raise DataError(f"{path}: row {row_no} ({lines}): a quoted field opened on line {first} runs to line "
                            f"{last} and the row has {len(values)} of {len(header)} columns; check for an unclosed "
                            "quote (quoted fields may contain line breaks, but must end with a quote)")
        # Missing trailing fields stay absent (reported as "missing value" by _build); extra fields are ignored.
        rec = {h: v for h, v in zip(header, values)}
        records.append((f"row {row_no} ({lines})", rec))
    if not records:
        raise DataError(f"{path}: has a header ({', '.join(header)}) but no data rows")
    return _Rows(columns=header, records=records)


def _fmt_name(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def _read_jsonl(path: Path) -> _Rows:
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    records: list[tuple[str, Mapping[str, Any]]] = []
    columns: dict[str, None] = {}  # ordered union of keys
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_no}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {line_no}: expected a JSON object, got {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
        records.append((f"line {line_no}", obj))
    return _Rows(columns=list(columns), records=records)


# ----------------------------------------------------------------------------------------------------------------
# Column resolution, value checks, label mapping
# ----------------------------------------------------------------------------------------------------------------


def _list(names: Sequence[Any]) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:_LIST_LIMIT])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LIST_LIMIT else "")


def _resolve_columns(
    source: str, columns: Sequence[str], text_column: str | None, text_pair_column: str | None, label_column: str | None
) -> tuple[str, str | None, str]:
    found = f"columns found: {_list(columns)}"
    if text_column is not None:
        if text_column not in columns:
            raise DataError(f"{source}: no text column {text_column!r}; {found}")
    else:
        text_column = next((c for c in TEXT_COLUMN_CANDIDATES if c in columns), None)
        if text_column is None:
            pair = next((p for p in TEXT_PAIR_COLUMN_CANDIDATES if p[0] in columns and p[1] in columns), None)
            if pair is None:
                raise DataError(
                    f"{source}: no text column (tried {_list(TEXT_COLUMN_CANDIDATES)}; name it with "
                    f"{arg('text_column')}); {found}"
                )
            text_column = pair[0]
            if text_pair_column is None:
                text_pair_column = pair[1]
    if text_pair_column is not None and text_pair_column not in columns:
        raise DataError(f"{source}: no text pair column {text_pair_column!r}; {found}")
    if label_column is not None:
        if label_column not in columns:
            raise DataError(f"{source}: no label column {label_column!r}; {found}")
    else:
        label_column = next((c for c in LABEL_COLUMN_CANDIDATES if c in columns), None)
        if label_column is None:
            raise DataError(
                f"{source}: no label column (tried {_list(LABEL_COLUMN_CANDIDATES)}; name it with "
                f"{arg('label_column')}); {found}"
            )
    return text_column, text_pair_column, label_column


def _text_value(source: str, where: str, column: str, record: Mapping[str, Any]) -> str:
    if column not in record or record[column] is None:
        raise DataError(f"{source}: {where}, column {column!r}: missing value")
    value = record[column]
    if not isinstance(value, str):
        raise DataError(f"{source}: {where}, column {column!r}: expected text, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise DataError(f"{source}: {where}, column {column!r}: empty text")
    return value


def _raw_label(source: str, where: str, column: str, record: Mapping[str, Any]) -> int | str:
    if column not in record or record[column] is None:
        raise DataError(f"{source}: {where}, column {column!r}: missing label")
    value = record[column]
    if isinstance(value, bool):
        raise DataError(f"{source}: {where}, column {column!r}: expected an integer or a string label, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise DataError(f"{source}: {where}, column {column!r}: label {value!r} is not an integer class id")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise DataError(f"{source}: {where}, column {column!r}: empty label")
        return value
    raise DataError(
        f"{source}: {where}, column {column!r}: expected an integer or a string label, got {type(value).__name__}"
    )


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _map_labels(
    source: str,
    raw: list[tuple[str, int | str]],
    label_column: str,
    label2id: Mapping[str, int] | None,
) -> tuple[list[int], dict[int, str] | None]:
    """Turn raw labels (ints or strings) into class ids, checking them against the model's mapping when given."""
    if label2id is not None:
        label2id = {str(k): int(v) for k, v in label2id.items()}
        known_ids = sorted(set(label2id.values()))
        folded: dict[str, int] = {}
        for name, idx in label2id.items():
            folded.setdefault(name.casefold(), idx)
        id2label = {i: n for n, i in label2id.items()}
        known = f"known labels: {_list(list(label2id))} (ids {_list(known_ids)})"
        out = []
        for where, value in raw:
            if isinstance(value, str):
                if value in label2id:
                    out.append(label2id[value])
                    continue
                if value.casefold() in folded:
                    out.append(folded[value.casefold()])
                    continue
                as_int = _as_int(value)
                if as_int is None:
                    raise DataError(f"{source}: {where}, column {label_column!r}: unknown label {value!r}; {known}")
                value = as_int
            if value not in id2label:
                raise DataError(f"{source}: {where}, column {label_column!r}: unknown label id {value}; {known}")
            out.append(value)
        return out, dict(sorted(id2label.items()))

    # No model mapping: integers (or digit strings, as every CSV value is a string) are ids; names get sorted ids.
    ints = [(w, v if isinstance(v, int) else _as_int(v)) for w, v in raw]
    if all(v is not None for _, v in ints):
        for where, v in ints:
            if v < 0:  # type: ignore[operator]
                raise DataError(f"{source}: {where}, column {label_column!r}: negative label id {v}")
        return [int(v) for _, v in ints], None  # type: ignore[arg-type]
    mixed = next(((w, v) for w, v in raw if isinstance(v, int)), None)
    if mixed is not None:
        raise DataError(
            f"{source}: {mixed[0]}, column {label_column!r}: integer label {mixed[1]} mixed with string labels"
        )
    names = sorted({str(v) for _, v in raw})
    name2id = {n: i for i, n in enumerate(names)}
    return [name2id[str(v)] for _, v in raw], {i: n for n, i in name2id.items()}


def _build(
    rows: _Rows,
    source: str,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
    label2id: Mapping[str, int] | None,
    id2label_hint: dict[int, str] | None = None,
) -> TextDataset:
    if not rows.records:
        raise DataError(f"{source}: file is empty (no examples)")
    text_col, pair_col, label_col = _resolve_columns(source, rows.columns, text_column, text_pair_column, label_column)
    texts, pairs, raw = [], [] if pair_col else None, []
    for where, rec in rows.records:
        texts.append(_text_value(source, where, text_col, rec))
        if pair_col is not None:
            pairs.append(_text_value(source, where, pair_col, rec))  # type: ignore[union-attr]
        raw.append((where, _raw_label(source, where, label_col, rec)))
    if id2label_hint and label2id is not None:
        # A datasets ClassLabel carries names: map through them so a model with another id order still matches.
        raw = [(w, id2label_hint.get(v, v) if isinstance(v, int) else v) for w, v in raw]
    labels, id2label = _map_labels(source, raw, label_col, label2id)
    if id2label is None and id2label_hint:
        id2label = dict(id2label_hint)
    return TextDataset(texts=texts, labels=labels, text_pairs=pairs, source=source, id2label=id2label)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face datasets (optional)
# ----------------------------------------------------------------------------------------------------------------


def _import_datasets(what: str) -> Any:
    try:
        import datasets  # noqa: PLC0415  (optional dependency, imported lazily)
    except ImportError as exc:
        raise DataError(
            f"{what}: needs the Hugging Face `datasets` library, which is not installed "
            "(pip install datasets), or give a .csv/.tsv/.jsonl file"
        ) from exc
    return datasets


def _load_hf(
    path_or_name: Path | str,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
    label2id: Mapping[str, int] | None,
    split: str | None,
    *,
    from_disk: bool,
) -> TextDataset:
    what = f"{path_or_name} (a folder)" if from_disk else f"{path_or_name!s} (not a file; read as a dataset name)"
    datasets = _import_datasets(what)
    source = str(path_or_name)
    try:
        ds = datasets.load_from_disk(str(path_or_name)) if from_disk else datasets.load_dataset(str(path_or_name))
    except Exception as exc:  # noqa: BLE001  (datasets raises many types; the user needs the message)
        raise DataError(f"{source}: cannot load with `datasets`: {exc}") from exc
    if isinstance(ds, (datasets.DatasetDict, dict)):
        names = list(ds.keys())
        if split is None:
            if len(names) != 1:
                raise DataError(f"{source}: has splits {_list(names)}; pass split=...")
            split = names[0]
        if split not in ds:
            raise DataError(f"{source}: no split {split!r}; splits found: {_list(names)}")
        ds = ds[split]
        source = f"{source} [split {split}]"
    elif split is not None and getattr(ds, "split", None) not in (None, split):
        raise DataError(f"{source}: is a single split {ds.split!s}, not {split!r}")
    columns = list(ds.column_names)
    if len(ds) == 0:
        raise DataError(f"{source}: dataset is empty")
    _, _, label_col = _resolve_columns(source, columns, text_column, text_pair_column, label_column)
    hint = None
    feature = ds.features.get(label_col)
    if feature is not None and getattr(feature, "names", None):
        hint = {i: str(n) for i, n in enumerate(feature.names)}
    records = [(f"row {i + 1}", rec) for i, rec in enumerate(ds)]
    return _build(_Rows(columns, records), source, text_column, text_pair_column, label_column, label2id, hint)
