"""The string-in bundle model (edgeprune.onnx.e2e, issue #19): the onnxruntime-extensions tokenizer graph merged in front
of the INT8 classifier. Tiny random models of every family with WordPiece/BPE/Unigram tokenizers built in code."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions")

MAX_LEN = 24  # small, so that many of the varied texts are truncated
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the movie film plot actor story good bad great awful fun boring love hate best worst funny dull and but "
         "not very really is was it this that of to in with for on café naïve résumé façade jalapeño über straße "
         "Ångström Øre Ærø crème brûlée señor coöperate déjà vu piñata smörgåsbord Zürich Bogotá Asunción Reykjavík Genève "
         "São Paulo Málaga Curaçao fiancée soufflé").split()  # Latin-1 accents: the extensions' op strips these
#: Measured differences of onnxruntime-extensions 0.15.2's BertTokenizer op from transformers (docs/mobile.md):
#: a word with a character missing from the vocabulary after a matched prefix keeps the prefix pieces + [UNK]
#: (transformers: one [UNK] for the word); accents outside Latin-1 (Dvořák) and the emoji variation selector
#: U+FE0F (the red heart "❤️" = U+2764 U+FE0F) are not stripped; NUL ends the text.
KNOWN_DIFFERENT = ("fun\u2603 snowman", "Dvořák", "I \u2764\ufe0f it", "good movie\x00 bad plot")
CJK = "中文电影很好看我喜欢这个故事演员"
PUNCT = list("!?.,;:'\"()[]{}<>-_/\\@#$%^&*+=~`|")
EMOJI = ["😀", "👍🏽", "🎬", "❤", "™", "©", "€", "½", "²"]


def _corpus(seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(400):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        words += [rng.choice(CJK) for _ in range(rng.randint(0, 3))]
        lines.append(" ".join(words) + rng.choice([".", "!", "?", ","]))
    return lines


def varied_texts(n: int = 300, seed: int = 0) -> list[str]:
    """Unicode, accents, casing, CJK, emoji, punctuation, whitespace runs, digits, the empty string, a word over
    the WordPiece limit, texts far longer than MAX_LEN tokens, tokens glued to punctuation."""
    rng = random.Random(seed)
    fixed = ["", " ", "\t\n", "a", "A", "É", "!!!", "中", "😀", "x" * 150, "Ab" * 60, "CAFÉ NAÏVE",
             " ".join(WORDS) * 3, "the" + "-the" * 200, "  spaced   out\ttext\r\nwith lines  ",
             "zero\u200bwidth and\u00a0no-break", "fullwidth ｆｉｌｍ", "ﬁlm ligature", "mixed中文and English",
             "[square] brackets but not special", "numbers 3.14159 1,000,000 2026-12-01 #42 @user"]
    out = list(fixed)
    while len(out) < n:
        parts = []
        for _ in range(rng.choice([1, 3, 8, 20, 60])):
            r = rng.random()
            w = rng.choice(WORDS)
            if r < 0.15:
                w = w.upper()
            elif r < 0.3:
                w = w.capitalize()
            elif r < 0.4:
                w += rng.choice(PUNCT)
            elif r < 0.5:
                w = "".join(rng.choice(CJK) for _ in range(rng.randint(1, 4)))
            elif r < 0.55:
                w = rng.choice(EMOJI)
            elif r < 0.6:
                w = str(rng.randint(0, 10**6))
            elif r < 0.65:
                w = w + rng.choice(WORDS)  # an unseen compound: WordPiece splits it into ## pieces
            parts.append(w)
        out.append(rng.choice([" ", "  ", " \t"]).join(parts))
    return out[:n]


def make_wordpiece(directory: Path, cls: str = "BertTokenizer", *, lowercase: bool = True,
                   strip_accents: bool | None = None, vocab_size: int = 600):
    """A trained WordPiece tokenizer (BERT normalizer/pre-tokenizer/template) saved as tokenizer.json, loaded back
    with AutoTokenizer as class ``cls`` (how transformers 5 loads a real checkpoint's tokenizer)."""
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import AutoTokenizer

    wp = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=strip_accents)
    # Trained on the test texts too, so every character they use is in the vocabulary (as a word start and as a
    # ## piece): a character missing from the vocabulary is one of the KNOWN_DIFFERENT cases.
    wp.train_from_iterator(_corpus() + varied_texts(), vocab_size=vocab_size, special_tokens=SPECIALS,
                           show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    wp.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": cls, "do_lower_case": lowercase, "strip_accents": strip_accents, "unk_token": "[UNK]",
        "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
        "model_max_length": 512}))
    return AutoTokenizer.from_pretrained(str(directory))


def int8_model(model_type: str, vocab_size: int, directory: Path, seed: int = 0) -> Path:
    """A tiny random classifier of ``model_type`` exported to ONNX and quantized like a bundle's model.onnx."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from edgeprune.onnx.export import export_onnx
    from edgeprune.onnx.quantize import quantize_onnx
    from edgeprune.testing import randomize_biases_, tiny_config

    config = tiny_config(model_type, num_layers=2)
    config.vocab_size = vocab_size
    torch.manual_seed(seed)
    model = randomize_biases_(AutoModelForSequenceClassification.from_config(config).eval())
    directory.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, directory / "model.fp32.onnx")
    out = quantize_onnx(fp32, directory / "model.onnx")  # the default preset: dynamic, S8, per-channel
    fp32.unlink()
    (directory / "config.json").write_text(json.dumps({"id2label": {"0": "negative", "1": "positive"}}))
    return Path(out)


def e2e_files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir() if ".e2e." in p.name}


TEXTS = varied_texts()
WORDPIECE_FAMILIES = {"bert": "BertTokenizer", "electra": "ElectraTokenizer", "distilbert": "DistilBertTokenizer"}


@pytest.fixture(scope="module")
def bert_case(tmp_path_factory):
    """A BERT tokenizer + INT8 model + written e2e files, shared by the checks that only read them."""
    from edgeprune.onnx.e2e import write_e2e

    d = tmp_path_factory.mktemp("e2e-bert")
    tok = make_wordpiece(d / "tok")
    model = int8_model("bert", len(tok), d)
    res = write_e2e(model, tok, d, max_length=MAX_LEN, texts=TEXTS)
    return d, tok, model, res


# ---------------------------------------------------------------------------------------------------------------------
# parity on every WordPiece family
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", sorted(WORDPIECE_FAMILIES))
def test_wordpiece_families_ids_and_predictions_match(tmp_path, model_type):
    from edgeprune.onnx.e2e import E2E_ONNX_FILE, E2E_ORT_FILE, classify, e2e_session, write_e2e

    tok = make_wordpiece(tmp_path / "tok", WORDPIECE_FAMILIES[model_type])
    assert len(tok) > 200  # a trained subword vocabulary (words, letters, ## pieces), not a handful of specials
    model = int8_model(model_type, len(tok), tmp_path)
    res = write_e2e(model, tok, tmp_path, max_length=MAX_LEN, texts=TEXTS)
    assert res["skipped_reason"] is None and res["written"]
    assert res["ids_parity"] == {"texts": len(TEXTS), "differences": 0, "examples": []}
    assert res["prediction_parity"]["texts"] == len(TEXTS)
    assert res["prediction_parity"]["label_differences"] == 0
    assert res["prediction_parity"]["max_abs_logit_diff"] <= 1e-5
    assert e2e_files(tmp_path) == {E2E_ONNX_FILE, E2E_ORT_FILE, "model.e2e.required_operators.config"}
    assert res["custom_ops"] == ["ai.onnx.contrib;1;BertTokenizer"]
    assert res["ort_vs_onnx_max_abs_diff"] <= 1e-3
    # the .ort file loads on its own and answers with a label per string
    out = classify(e2e_session(tmp_path / E2E_ORT_FILE), TEXTS[:7])
    assert out["logits"].shape == (7, 2) and out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"], out["logits"].argmax(-1))
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)


def test_outputs_truncation_padding_and_metadata(bert_case):
    import onnx

    from edgeprune.onnx.e2e import E2E_ONNX_FILE, with_token_outputs, e2e_session

    d, tok, _, res = bert_case
    assert res["written"]
    sess = e2e_session(with_token_outputs(d / E2E_ONNX_FILE)[0])
    batch = ["", "good movie", " ".join(["great"] * 100)]
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"text": np.array(batch, dtype=object)})))
    ids, mask = got["input_ids"], got["attention_mask"]
    assert ids.shape == (3, MAX_LEN)  # padded to the longest row, which is truncated to max_length
    assert mask.sum(-1).tolist() == [2, 4, MAX_LEN]
    assert ids[0, :2].tolist() == [tok.cls_token_id, tok.sep_token_id] and set(ids[0, 2:]) == {tok.pad_token_id}
    assert ids[2, -1] == tok.sep_token_id
    assert ids.tolist() == tok(batch, padding=True, truncation=True, max_length=MAX_LEN)["input_ids"]
    # a batch of one is not padded (the same shapes as the two-step path)
    one = sess.run(["input_ids"], {"text": np.array(["good movie"], dtype=object)})[0]
    assert one.shape == (1, 4)
    # One long-lived session over many batches keeps every row (declaring the op's optional offset output lost
    # rows and then segfaulted with onnxruntime-extensions 0.15.2).
    for _ in range(2):
        for start in range(0, len(TEXTS), 32):
            chunk = TEXTS[start:start + 32]
            assert sess.run(["label"], {"text": np.array(chunk, dtype=object)})[0].shape == (len(chunk),)
    meta = {p.key: p.value for p in onnx.load(str(d / E2E_ONNX_FILE), load_external_data=False).metadata_props}
    assert json.loads(meta["id2label"]) == {"0": "negative", "1": "positive"}
    assert meta["edgeprune.max_length"] == str(MAX_LEN)


@pytest.mark.parametrize("lowercase,strip_accents", [(False, None), (False, True), (True, False)])
def test_casing_and_accent_settings_match(tmp_path, lowercase, strip_accents):
    from edgeprune.onnx.e2e import wordpiece_spec, write_e2e

    tok = make_wordpiece(tmp_path / "tok", lowercase=lowercase, strip_accents=strip_accents)
    spec = wordpiece_spec(tok)
    assert spec.lowercase is lowercase
    assert spec.strip_accents is (lowercase if strip_accents is None else strip_accents)
    model = int8_model("bert", len(tok), tmp_path)
    res = write_e2e(model, tok, tmp_path, max_length=MAX_LEN, texts=TEXTS)
    assert res["written"], res["skipped_reason"]
    assert res["ids_parity"]["differences"] == 0
    assert res["prediction_parity"]["label_differences"] == 0


def test_gen_processing_models_default_would_differ(bert_case):
    """Why edgeprune reads tokenizer.json itself: the stock converter drops strip_accents=None (accents are
    stripped when lower-casing), so 'Café' tokenises differently; edgeprune's spec strips them."""
    from onnxruntime_extensions import gen_processing_models

    from edgeprune.onnx.e2e import wordpiece_spec

    _, tok, _, _ = bert_case
    pre, _ = gen_processing_models(tok, pre_kwargs={})
    attrs = {a.name: a.i for a in pre.graph.node[0].attribute if a.name == "strip_accents"}
    assert attrs["strip_accents"] == 0
    assert wordpiece_spec(tok).strip_accents is True


# ---------------------------------------------------------------------------------------------------------------------
# never ship a tokenizer that differs
# ---------------------------------------------------------------------------------------------------------------------
def test_a_differing_text_blocks_the_file(tmp_path):
    from edgeprune.onnx.e2e import write_e2e

    tok = make_wordpiece(tmp_path / "tok")
    model = int8_model("bert", len(tok), tmp_path)
    assert write_e2e(model, tok, tmp_path, max_length=MAX_LEN, texts=TEXTS[:20])["written"]
    assert e2e_files(tmp_path)
    # A NUL character ends the text for the extensions' op; transformers drops it and reads on.
    bad = "good movie\x00 but a bad plot"
    res = write_e2e(model, tok, tmp_path, max_length=MAX_LEN, texts=TEXTS[:20] + [bad])
    assert not res["written"]
    assert "1 of 21 texts tokenise differently" in res["skipped_reason"]
    assert res["ids_parity"]["examples"][0]["text"] == bad
    assert e2e_files(tmp_path) == set()  # the earlier files are removed, not left stale


@pytest.mark.parametrize("text", KNOWN_DIFFERENT)
def test_known_extension_differences_are_detected(bert_case, text):
    """Each documented difference is real (if a new onnxruntime-extensions fixes one, update docs/mobile.md)."""
    from edgeprune.onnx.e2e import E2E_ONNX_FILE, token_id_parity

    d, tok, _, _ = bert_case
    assert token_id_parity(d / E2E_ONNX_FILE, tok, [text], max_length=MAX_LEN)["differences"] == 1


def test_stress_texts_are_reported_not_gated(bert_case):
    _, _, _, res = bert_case
    stress = res["stress_ids_parity"]
    assert stress["texts"] > 10
    assert any("\x00" in x["text"] for x in stress["examples"])  # the known NUL difference is visible
    assert res["written"]


@pytest.mark.parametrize("model_type,kind", [("roberta", "BPE"), ("xlm-roberta", "Unigram"), ("bert", "WordLevel")])
def test_unsupported_tokenizers_skip_with_reason(tmp_path, model_type, kind):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from edgeprune.onnx.e2e import write_e2e

    if kind == "BPE":  # RoBERTa: byte-level BPE
        core = Tokenizer(models.BPE(unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      show_progress=False)
        core.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    elif kind == "Unigram":  # XLM-R: SentencePiece Unigram
        core = Tokenizer(models.Unigram())
        core.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                          unk_token="<unk>", show_progress=False)
    else:
        core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, show_progress=False)
    core.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>" if kind != "WordLevel" else "[PAD]",
                                  unk_token="<unk>" if kind != "WordLevel" else "[UNK]")
    assert len(tok("good movie")["input_ids"]) > 0
    model = int8_model(model_type, len(tok), tmp_path)
    res = write_e2e(model, tok, tmp_path, max_length=MAX_LEN, texts=TEXTS[:10])
    assert not res["written"]
    assert res["skipped_reason"].startswith("tokenizer not supported by onnxruntime-extensions")
    assert f"{kind!r} is not WordPiece" in res["skipped_reason"]
    assert e2e_files(tmp_path) == set()


def test_pair_task_and_missing_extensions_skip(tmp_path, monkeypatch):
    from edgeprune.onnx.e2e import write_e2e

    tok = make_wordpiece(tmp_path / "tok")
    model = int8_model("bert", len(tok), tmp_path)
    res = write_e2e(model, tok, tmp_path, max_length=MAX_LEN, pair_task=True)
    assert not res["written"] and "sentence-pair" in res["skipped_reason"]
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # import now raises ImportError
    res = write_e2e(model, tok, tmp_path, max_length=MAX_LEN)
    assert not res["written"]
    assert "onnxruntime-extensions is not installed" in res["skipped_reason"]
    assert e2e_files(tmp_path) == set()


# ---------------------------------------------------------------------------------------------------------------------
# in the bundle
# ---------------------------------------------------------------------------------------------------------------------
def _certify_set(model, tok, texts):
    from edgeprune.task.predict import torch_predictions
    from edgeprune.task.data import TextDataset

    preds = torch_predictions(model, tok, TextDataset(texts, [0] * len(texts)), max_length=MAX_LEN)
    return TextDataset(texts, preds, source="constructed")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification

    from edgeprune.output.bundle import export_bundle
    from edgeprune.plan import HeadPlan
    from edgeprune.testing import tiny_config

    d = tmp_path_factory.mktemp("e2e-bundle")
    tok = make_wordpiece(d / "tok")
    config = tiny_config("bert")
    config.vocab_size = len(tok)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    data = _certify_set(model, tok, TEXTS[:120])
    plan = HeadPlan((4, 4, 4, 4), ((0, 2, 3), (1,), (0, 1, 2, 3), (2, 3)))
    res = export_bundle(model, plan, "raspberrypi4", d / "bundle", tokenizer=tok, certify_data=data,
                        max_drop_pts=100, max_length=MAX_LEN)
    return d / "bundle", res, tok


def test_bundle_ships_the_e2e_model(tiny_bundle):
    from edgeprune.output.bundle import summary_lines
    from edgeprune.onnx.e2e import classify, e2e_session
    from edgeprune.output.report import render_markdown  # noqa: F401 - the section renderer is used below

    bundle, res, tok = tiny_bundle
    assert {"model.e2e.onnx", "model.e2e.ort", "model.e2e.required_operators.config"} <= e2e_files(bundle)
    meta = json.loads((bundle / "edgeprune.json").read_text())
    assert meta["files"]["e2e_ort"] == "model.e2e.ort"
    e2e = meta["checks"]["e2e"]
    assert e2e["written"] and e2e["ids_parity"]["texts"] == 120 and e2e["ids_parity"]["differences"] == 0
    assert e2e["prediction_parity"]["label_differences"] == 0
    assert "ai.onnx.contrib;1;BertTokenizer" in (bundle / "model.e2e.required_operators.config").read_text()
    assert any("token ids differ on 0 of 120 texts" in line for line in summary_lines(res))
    # the .ort on a batch of strings = the plain model.onnx on the Python tokenizer's ids
    from edgeprune.onnx.export import ort_session

    out = classify(e2e_session(bundle / "model.e2e.ort"), TEXTS[:5])
    enc = tok(TEXTS[:5], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="np")
    plain = ort_session(bundle / "model.onnx")
    logits = plain.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in plain.get_inputs()})[0]
    np.testing.assert_allclose(out["logits"], logits, atol=1e-3)


def test_report_section(tiny_bundle):
    from edgeprune.onnx.e2e import report_lines

    bundle, _, _ = tiny_bundle
    e2e = json.loads((bundle / "edgeprune.json").read_text())["checks"]["e2e"]
    text = "\n".join(report_lines(e2e))
    assert "**0 differences** on 120 texts" in text and "ai.onnx.contrib;1;BertTokenizer" in text
    skipped = "\n".join(report_lines({"written": False, "skipped_reason": "tokenizer model 'BPE' is not WordPiece"}))
    assert skipped.startswith("Not shipped: tokenizer model 'BPE'")


def test_bundle_without_extensions_still_builds(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForSequenceClassification

    from edgeprune.output.bundle import export_bundle
    from edgeprune.plan import HeadPlan
    from edgeprune.testing import tiny_config

    tok = make_wordpiece(tmp_path / "tok")
    config = tiny_config("bert", num_layers=2)
    config.vocab_size = len(tok)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)
    export_bundle(model, HeadPlan.full((4, 4)), None, tmp_path / "bundle", tokenizer=tok, max_length=MAX_LEN)
    assert (tmp_path / "bundle" / "model.onnx").is_file() and e2e_files(tmp_path / "bundle") == set()
    e2e = json.loads((tmp_path / "bundle" / "edgeprune.json").read_text())["checks"]["e2e"]
    assert "onnxruntime-extensions is not installed" in e2e["skipped_reason"]


# ---------------------------------------------------------------------------------------------------------------------
# emulated aarch64 with the aarch64 onnxruntime-extensions wheel
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.arm
@pytest.mark.slow
def test_e2e_on_emulated_aarch64(tiny_bundle):
    from edgeprune.onnx.arm import find_arm_python
    from edgeprune.onnx.e2e import verify_arm_e2e
    from edgeprune.errors import EmulationError

    try:
        find_arm_python()
    except EmulationError as exc:
        pytest.skip(f"aarch64 emulation not set up: {exc}")
    bundle, _, _ = tiny_bundle
    texts = TEXTS[:12]
    res = verify_arm_e2e(bundle, "raspberrypi4", texts=texts, batch=6)
    assert res["guest"]["machine"] == "aarch64"
    assert res["guest"]["onnxruntime_extensions"] == "0.15.2"
    assert res["ids_differences"] == 0 and res["texts"] == 12
    assert res["label_differences_vs_two_step"] == 0
    assert res["passed"], res["lines"]
