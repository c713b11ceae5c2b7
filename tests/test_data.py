"""Tests of the general data loader: good CSV/TSV/JSONL files and every bad input with its message."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from edgeprune.task.data import TextDataset, load_dataset
from edgeprune.errors import DataError

MODEL_LABEL2ID = {"negative": 0, "positive": 1}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(rows: list[object]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# Good inputs
# ---------------------------------------------------------------------------------------------------------------


def test_csv_int_labels_default_columns(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\ngood film,1\n"bad, really bad",0\n"a ""quoted"" one",1\n')
    ds = load_dataset(path)
    assert ds.texts == ["good film", "bad, really bad", 'a "quoted" one']
    assert ds.labels == [1, 0, 1]
    assert ds.text_pairs is None
    assert ds.source == str(path)
    assert ds.id2label is None and ds.num_labels == 2
    assert ds.label_counts() == {0: 1, 1: 2}


def test_tsv_sentence_column_and_string_labels_sorted_ids(tmp_path):
    path = write(tmp_path, "d.tsv", "sentence\tlabels\nfun\tpos\ndull\tneg\nok\tneutral\n")
    ds = load_dataset(path)
    assert ds.texts == ["fun", "dull", "ok"]
    # Without a model mapping, names get ids in sorted order (deterministic).
    assert ds.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert ds.labels == [2, 0, 1]
    assert ds.label_names == ["neg", "neutral", "pos"]


def test_csv_string_labels_mapped_by_model_label2id(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\ngreat,positive\nawful,NEGATIVE\nfine,1\n")
    ds = load_dataset(path, label2id=MODEL_LABEL2ID)
    assert ds.labels == [1, 0, 1]  # exact name, case-insensitive name, valid id as digits
    assert ds.id2label == {0: "negative", 1: "positive"}


def test_id2label_is_accepted_like_label2id(tmp_path):
    path = write(tmp_path, "d.jsonl", jsonl([{"text": "x", "label": "positive"}, {"text": "y", "label": 0}]))
    ds = load_dataset(path, id2label={0: "negative", 1: "positive"})
    assert ds.labels == [1, 0]


def test_jsonl_text_pairs_custom_columns_and_blank_lines(tmp_path):
    content = jsonl([
        {"premise": "A man sleeps.", "hypo": "A person rests.", "y": "entailment"},
        {"premise": "A cat runs.", "hypo": "A dog flies.", "y": "contradiction"},
    ]) + "\n   \n"
    path = write(tmp_path, "pairs.jsonl", content)
    ds = load_dataset(path, text_column="premise", text_pair_column="hypo", label_column="y",
                      label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
    assert ds.texts == ["A man sleeps.", "A cat runs."]
    assert ds.text_pairs == ["A person rests.", "A dog flies."]
    assert ds.labels == [0, 2]
    assert ds[1] == ("A cat runs.", "A dog flies.", 2)


def test_csv_glue_style_pair_columns_detected(tmp_path):
    path = write(tmp_path, "mrpc.csv", "sentence1,sentence2,label\nHe ran.,He jogged.,1\nIt is red.,It is blue.,0\n")
    ds = load_dataset(path)
    assert ds.texts == ["He ran.", "It is red."]
    assert ds.text_pairs == ["He jogged.", "It is blue."]
    assert ds.labels == [1, 0]


def test_utf8_bom_and_crlf_and_float_int_labels(tmp_path):
    path = write(tmp_path, "bom.csv", "\ufefftext,label\r\ncafé,1\r\nnaïve,0\r\n".encode("utf-8"))
    ds = load_dataset(path)
    assert ds.texts == ["café", "naïve"]  # the BOM did not rename the first column
    path = write(tmp_path, "f.jsonl", jsonl([{"text": "a", "label": 1.0}, {"text": "b", "label": 0}]))
    assert load_dataset(path).labels == [1, 0]


def test_textdataset_subset_head_and_checks():
    ds = TextDataset(["a", "b", "c"], [0, 1, 1], source="mem", id2label={0: "n", 1: "p"})
    sub = ds.subset([2, 0])
    assert (sub.texts, sub.labels, sub.id2label) == (["c", "a"], [1, 0], {0: "n", 1: "p"})
    assert len(ds.head(2)) == 2 and len(ds.head(10)) == 3
    assert list(ds) == [("a", None, 0), ("b", None, 1), ("c", None, 1)]
    with pytest.raises(DataError, match="3 texts but 2 labels"):
        TextDataset(["a", "b", "c"], [0, 1])
    with pytest.raises(DataError, match="2 texts but 1 text pairs"):
        TextDataset(["a", "b"], [0, 1], text_pairs=["x"])


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: each error names the file, the row and the column
# ---------------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: file not found"


@pytest.mark.parametrize("name", ["empty.csv", "empty.tsv", "empty.jsonl"])
def test_empty_file(tmp_path, name):
    path = write(tmp_path, name, "  \n")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: file is empty"


def test_header_only_csv(tmp_path):
    path = write(tmp_path, "h.csv", "text,label\n")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: has a header (text, label) but no data rows"


def test_missing_label_column_lists_columns(tmp_path):
    path = write(tmp_path, "d.csv", "text,target\nx,1\n")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: no label column (tried 'label', 'labels'")
    assert "columns found: 'text', 'target'" in msg


def test_missing_named_text_column_lists_columns(tmp_path):
    path = write(tmp_path, "d.jsonl", jsonl([{"review": "x", "label": 1}]))
    with pytest.raises(DataError) as err:
        load_dataset(path, text_column="body")
    assert str(err.value) == f"{path}: no text column 'body'; columns found: 'review', 'label'"
    with pytest.raises(DataError, match=r"no text column \(tried 'text', 'sentence'; name it with text_column\)"):
        load_dataset(path)


def test_missing_text_pair_column(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\nx\t1\n")
    with pytest.raises(DataError) as err:
        load_dataset(path, text_pair_column="text_b")
    assert str(err.value) == f"{path}: no text pair column 'text_b'; columns found: 'text', 'label'"


def test_unknown_string_label_lists_known(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\ngood,positive\nmeh,neutral\n")
    with pytest.raises(DataError) as err:
        load_dataset(path, label2id=MODEL_LABEL2ID)
    assert str(err.value) == (
        f"{path}: row 2 (line 3), column 'label': unknown label 'neutral'; "
        "known labels: 'negative', 'positive' (ids 0, 1)"
    )


def test_unknown_int_label_id(tmp_path):
    path = write(tmp_path, "d.jsonl", jsonl([{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 2}]))
    with pytest.raises(DataError) as err:
        load_dataset(path, label2id=MODEL_LABEL2ID)
    assert str(err.value) == (
        f"{path}: line 3, column 'label': unknown label id 2; known labels: 'negative', 'positive' (ids 0, 1)"
    )


def test_empty_text_value(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\nfine,1\n"   ",0\n')
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: row 2 (line 3), column 'text': empty text"


def test_row_and_line_differ_after_multiline_field_and_blank_line(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\n"two\nlines",1\n\nok,\n')
    with pytest.raises(DataError) as err:
        load_dataset(path)
    # Data row 2 sits on line 5: the quoted field spans lines 2-3 and line 4 is blank.
    assert str(err.value) == f"{path}: row 2 (line 5), column 'label': empty label"


def test_missing_value_in_short_row(tmp_path):
    path = write(tmp_path, "d.tsv", "label\ttext\n1\n")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: row 1 (line 2), column 'text': missing value"


@pytest.mark.parametrize(
    "value, shown",
    [(5, "int 5"), (None, None), (["a"], "list ['a']"), ({"t": 1}, "dict {'t': 1}")],
)
def test_non_text_value_in_jsonl(tmp_path, value, shown):
    path = write(tmp_path, "d.jsonl", jsonl([{"text": "ok", "label": 1}, {"text": value, "label": 0}]))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    expected = "missing value" if value is None else f"expected text, got {shown}"
    assert str(err.value) == f"{path}: line 2, column 'text': {expected}"


@pytest.mark.parametrize("value, expected", [
    (True, "expected an integer or a string label, got True"),
    (0.5, "label 0.5 is not an integer class id"),
    ([1], "expected an integer or a string label, got list"),
])
def test_bad_label_types_in_jsonl(tmp_path, value, expected):
    path = write(tmp_path, "d.jsonl", jsonl([{"text": "ok", "label": value}]))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: line 1, column 'label': {expected}"


def test_mixed_int_and_string_labels_without_mapping(tmp_path):
    path = write(tmp_path, "d.jsonl", jsonl([{"text": "a", "label": "pos"}, {"text": "b", "label": 0}]))
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: line 2, column 'label': integer label 0 mixed with string labels"


def test_negative_label_id_without_mapping(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\na,-1\n")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: row 1 (line 2), column 'label': negative label id -1"


def test_malformed_json_line(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "ok", "label": 1}\n\n{"text": "broken", "label": \n')
    with pytest.raises(DataError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: line 3: malformed JSON (Expecting value at column")


def test_json_line_not_an_object(tmp_path):
    path = write(tmp_path, "d.jsonl", '["text", 1]\n')
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: line 1: expected a JSON object, got list"


def test_not_utf8(tmp_path):
    path = write(tmp_path, "d.csv", b"text,label\ncaf\xe9,1\n")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value).startswith(f"{path}: not UTF-8 text (byte 14")


def test_duplicate_header(tmp_path):
    path = write(tmp_path, "d.csv", "text,text,label\na,b,1\n")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value) == f"{path}: line 1: duplicate column name(s) 'text'"


def test_unsupported_suffix(tmp_path):
    path = write(tmp_path, "d.xlsx", "whatever")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value).startswith(f"{path}: unsupported file type '.xlsx'; supported: .csv, .tsv, .tab, .jsonl")


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face datasets (optional dependency)
# ---------------------------------------------------------------------------------------------------------------


def _hide_datasets(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_dataset_name_without_datasets_library_is_a_clear_error(monkeypatch):
    _hide_datasets(monkeypatch)
    with pytest.raises(DataError) as err:
        load_dataset("glue-sst2-not-a-file")
    assert str(err.value) == (
        "glue-sst2-not-a-file (not a file; read as a dataset name): needs the Hugging Face `datasets` library, "
        "which is not installed (pip install datasets), or give a .csv/.tsv/.jsonl file"
    )


def test_folder_without_datasets_library_is_a_clear_error(monkeypatch, tmp_path):
    _hide_datasets(monkeypatch)
    with pytest.raises(DataError, match=r"\(a folder\): needs the Hugging Face `datasets` library"):
        load_dataset(tmp_path)


def test_save_to_disk_folder_roundtrip(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional `datasets` library is not installed")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["positive", "negative"])})
    import pyarrow as pa  # a dependency of datasets

    def make(sentences, labels, name):
        # Built from an Arrow table with an explicit fingerprint: Dataset.from_dict hashes its arguments with dill,
        # which fails on some pyarrow/dill combinations and is not what this test is about.
        table = pa.table({"sentence": sentences, "label": labels}).cast(features.arrow_schema)
        return datasets.Dataset(table, fingerprint=name)

    dd = datasets.DatasetDict({"train": make(["good", "bad"], [0, 1], "tr"), "test": make(["fine"], [0], "te")})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"has splits 'train', 'test'; pass split=..."):
        load_dataset(tmp_path / "dd")
    ds = load_dataset(tmp_path / "dd", split="train", label2id=MODEL_LABEL2ID)
    assert ds.texts == ["good", "bad"]
    # The dataset's ClassLabel order (positive=0) differs from the model's: labels are mapped by name.
    assert ds.labels == [1, 0]
    plain = load_dataset(tmp_path / "dd", split="train")
    assert plain.labels == [0, 1] and plain.id2label == {0: "positive", 1: "negative"}
