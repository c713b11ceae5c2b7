"""Bundle writer: files, metadata, certification (pass / fallback / fail / force), atomicity, CLI, optimum interop."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from edgeprune.errors import CertificationError, EdgepruneError
from edgeprune.plan import HeadPlan
from edgeprune.testing import TINY_FAMILIES, tiny_model

UNEVEN = HeadPlan((4, 4, 4, 4), ((0, 2, 3), (), (1,), (0, 1, 2, 3)))
# Removes 14 of 16 heads: on a tiny random model this flips a large share of predictions.
HEAVY = HeadPlan((4, 4, 4, 4), ((), (2,), (), (0,)))
FULL = HeadPlan.full((4, 4, 4, 4))
WORDS = "the movie film plot good bad great awful fun boring love hate not very really funny dull".split()


def word_tokenizer(directory):
    """A whitespace word-level tokenizer over WORDS (ids < 128), built with `tokenizers` so it behaves the same on
    transformers 4.57 and 5.x. (edgeprune.testing.tiny_tokenizer maps every word to [UNK] on 5.23: reported.)"""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    tok.save_pretrained(directory)
    return tok


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    t = word_tokenizer(tmp_path_factory.mktemp("tok"))
    assert t("good movie")["input_ids"] == [2, 9, 6, 3]
    return t


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]


def certify_set(model, tok, n: int = 300):
    """A certify split whose labels are the unpruned model's own predictions (base accuracy 100%), so the
    paired drop is exactly the share of predictions the shipped file changes."""
    from edgeprune.task.predict import torch_predictions
    from edgeprune.task.data import TextDataset

    t = texts(n)
    preds = torch_predictions(model, tok, TextDataset(t, [0] * n), max_length=32)
    return TextDataset(t, preds, source="constructed")


@pytest.mark.parametrize("graph", ["plain", "fused"])
@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_bundle_files_and_metadata(tmp_path, tok, model_type, graph):
    import dataclasses

    from edgeprune.output.bundle import export_bundle
    from edgeprune.task.predict import onnx_predictions, torch_predictions
    from edgeprune.onnx.export import ort_session
    from edgeprune.profiles import load_profile

    model = tiny_model(model_type)
    data = certify_set(model, tok, n=64)
    out = tmp_path / "bundle"
    prof = load_profile("raspberrypi4")
    assert prof.quant.graph == "plain"
    prof = dataclasses.replace(prof, quant=dataclasses.replace(prof.quant, graph=graph))
    res = export_bundle(model, UNEVEN, prof, out, tokenizer=tok, certify_data=data, max_drop_pts=100,
                        confidence=0.95)
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.ort", "model.required_operators.config", "config.json", "edgeprune.json",
            "tokenizer.json"} <= names
    assert not any(n.endswith((".fp32.onnx", ".fused.onnx")) for n in names)  # intermediates stay out
    meta = json.loads((out / "edgeprune.json").read_text())
    assert meta["plan"] == UNEVEN.to_dict() and meta["kept_heads"] == [3, 0, 1, 4]
    assert meta["checks"]["graph"] == graph
    from edgeprune.adapters import get_adapter

    if graph == "fused" and not get_adapter(model_type).ort_attention_fusion:
        # DeBERTa/ModernBERT/MPNet: ORT's optimizer has no pattern for their attention; the bundle says so.
        assert meta["checks"]["fused_attention_num_heads"] == []
        assert "not available" in meta["checks"]["attention_fusion"]
        assert "QAttention" not in meta["checks"]["quantized_nodes"]
    elif graph == "fused":
        assert meta["checks"]["fused_attention_num_heads"] == [3, 1, 4]
        assert meta["checks"]["quantized_nodes"]["QAttention"] == 3
    else:  # plain: quantized MatMuls, no offline Attention (ORT fuses at session load)
        assert "QAttention" not in meta["checks"]["quantized_nodes"] and "fused_attention_num_heads" not in meta["checks"]
        assert sum(meta["checks"]["quantized_nodes"].values()) >= 3 * 4
    assert meta["quant"]["weight_type"] == "s8" and meta["profile"]["name"] == "raspberrypi4"
    assert meta["certified"] is True and meta["certification"]["n"] == 64
    assert meta["versions"]["onnxruntime"] and meta["checks"]["ort_vs_onnx_max_abs_diff"] < 1e-3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == model_type and cfg["id2label"] == {"0": "label_0", "1": "label_1"}
    assert cfg["edgeprune_kept_heads"] == [3, 0, 1, 4]
    # Plain onnxruntime + the bundled tokenizer reproduce the certified predictions; the .ort file loads too.
    from transformers import AutoTokenizer

    btok = AutoTokenizer.from_pretrained(str(out))
    assert onnx_predictions(out / "model.onnx", btok, data, max_length=32) == \
        onnx_predictions(out / "model.ort", btok, data, max_length=32)
    assert res.certification.accuracy == pytest.approx(
        np.mean(np.array(onnx_predictions(out / "model.onnx", btok, data, max_length=32)) == np.array(data.labels)))
    assert [i.name for i in ort_session(out / "model.ort").get_inputs()] == meta["inputs"]
    del torch_predictions


def test_fixed_sequence_ships_the_most_compressed_plan_that_passed(tmp_path, tok):
    from edgeprune.output.bundle import export_bundle

    model = tiny_model("distilbert")  # its random head gives balanced predictions (tiny BERT's are one class)
    data = certify_set(model, tok)
    out = tmp_path / "b"
    res = export_bundle(model, HEAVY, None, out, tokenizer=tok, certify_data=data, max_drop_pts=10,
                        confidence=0.9, frontier=[FULL], names=["dense", "heavy"])
    # Sequence [FULL, HEAVY]: the full plan (only INT8 noise) passes, the heavy one breaks the bound; the sequence
    # stops there and the last plan that passed ships.
    assert res.plan_index == 0 and res.plan == FULL and res.certified is True
    first, second = res.attempts
    assert first["certification"]["passed"] is True and second["certification"]["passed"] is False
    assert second["certification"]["drop_upper_bound"] > 0.10
    # Fixed sequence: every test at the full confidence (no Bonferroni split over the looks).
    assert first["certification"]["per_look_confidence"] == pytest.approx(0.9)
    meta = json.loads((out / "edgeprune.json").read_text())
    assert meta["plan_index"] == 0 and meta["sequence"]["stopped_at"] == 1
    assert meta["sequence"]["order"] == ["dense", "heavy"] and meta["sequence"]["certified"] == ["dense"]
    # The other way round (heavy first): its failure ends the sequence before the full plan is looked at.
    with pytest.raises(CertificationError, match="first plan"):
        export_bundle(model, FULL, None, tmp_path / "c", tokenizer=tok, certify_data=data, max_drop_pts=10,
                      confidence=0.9, frontier=[HEAVY])


def test_certification_failure_leaves_no_bundle(tmp_path, tok):
    from edgeprune.output.bundle import export_bundle

    model = tiny_model("distilbert")
    data = certify_set(model, tok, n=200)
    out = tmp_path / "b"
    with pytest.raises(CertificationError, match="No bundle was written"):
        export_bundle(model, HEAVY, None, out, tokenizer=tok, certify_data=data, max_drop_pts=1, confidence=0.95)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temporary folder


def test_forced_bundle_is_marked(tmp_path, tok):
    from edgeprune.output.bundle import export_bundle

    model = tiny_model("distilbert")
    data = certify_set(model, tok, n=200)
    out = tmp_path / "b"
    res = export_bundle(model, HEAVY, None, out, tokenizer=tok, certify_data=data, max_drop_pts=1,
                        confidence=0.95, force=True)
    assert res.forced and res.certified is False
    meta = json.loads((out / "edgeprune.json").read_text())
    assert meta["forced"] is True and meta["certified"] is False
    assert "NOT CERTIFIED" in meta["certification_note"]


def test_certify_counts_pairs():
    from edgeprune.certify.core import certify

    labels = [1] * 100
    base = [1] * 90 + [0] * 10          # base: 90% right
    cand = [1] * 85 + [0] * 5 + [1] * 10  # 5 newly wrong, 10 newly right
    cert = certify(base, cand, labels, max_drop=0.01, confidence=0.95)
    assert (cert.n_worse, cert.n_better) == (5, 10)
    assert cert.accuracy == pytest.approx(0.95) and cert.drop == pytest.approx(-0.05)
    assert cert.drop_upper_bound >= cert.drop
    worse = certify(base, [0] * 100, labels, max_drop=0.01, confidence=0.95)
    assert not worse.passed and worse.drop_upper_bound >= 0.9


@pytest.mark.parametrize("step", ["surgery", "export", "optimize", "quantize", "ort", "write"])
def test_interrupted_export_leaves_nothing(tmp_path, tok, step):
    from edgeprune.output.bundle import export_bundle

    def hook(name):
        if name == step:
            raise KeyboardInterrupt(f"interrupted at {name}")

    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_model("bert", num_layers=2), HeadPlan((4, 4), ((1,), ())), None, tmp_path / "b",
                      tokenizer=tok, hook=hook)
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_kept_unless_overwrite(tmp_path, tok):
    from edgeprune.output.bundle import export_bundle

    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    plan = HeadPlan((4, 4), ((0, 1), (3,)))
    with pytest.raises(EdgepruneError, match="already exists"):
        export_bundle(tiny_model("bert", num_layers=2), plan, None, out, tokenizer=tok)
    with pytest.raises(KeyboardInterrupt):  # a failed overwrite keeps the old bundle intact
        export_bundle(tiny_model("bert", num_layers=2), plan, None, out, tokenizer=tok, overwrite=True,
                      hook=lambda s: (_ for _ in ()).throw(KeyboardInterrupt()) if s == "write" else None)
    assert (out / "keep.txt").read_text() == "old"
    export_bundle(tiny_model("bert", num_layers=2), plan, None, out, tokenizer=tok, overwrite=True)
    assert (out / "model.onnx").exists() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert json.loads((out / "edgeprune.json").read_text())["certified"] is None


def _model_dir(tmp_path, tok, model_type="distilbert"):
    model = tiny_model(model_type)
    d = tmp_path / "model"
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return model, d


def test_cli_export_and_forced_exit_code(tmp_path, tok):
    from typer.testing import CliRunner

    from edgeprune.cli import app

    model, mdir = _model_dir(tmp_path, tok)
    data = certify_set(model, tok, n=120)
    csv = tmp_path / "certify.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(data.texts, data.labels)))
    (tmp_path / "plan.json").write_text(json.dumps({"plan": UNEVEN.to_dict()}))
    (tmp_path / "heavy.json").write_text(json.dumps(HEAVY.to_dict()))
    runner = CliRunner()
    ok = runner.invoke(app, ["export", "--model", str(mdir), "--plan", str(tmp_path / "plan.json"), "--profile",
                             "x86-64", "--out", str(tmp_path / "ok"), "--data", str(csv), "--max-drop", "100"])
    assert ok.exit_code == 0, ok.output
    assert "bundle written" in ok.output and "PASS" in ok.output
    forced = runner.invoke(app, ["export", "--model", str(mdir), "--plan", str(tmp_path / "heavy.json"),
                                 "--profile", "x86-64", "--out", str(tmp_path / "forced"), "--data", str(csv),
                                 "--max-drop", "0.5", "--force"])
    assert forced.exit_code == 3
    assert "NOT CERTIFIED" in forced.output and "FAIL" in forced.output
    assert json.loads((tmp_path / "forced" / "edgeprune.json").read_text())["forced"] is True


def test_bundle_loads_with_optimum(tmp_path, tok):
    """Interop: optimum's ORTModelForSequenceClassification reads the bundle folder and gives the same logits."""
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
    except ImportError as exc:  # only the optional extra (transformers < 4.58) provides it
        pytest.skip(f"optimum[onnxruntime] is not importable here: {exc}")
    from edgeprune.output.bundle import export_bundle
    from edgeprune.onnx.export import ort_session

    for model_type in ("bert", "roberta", "distilbert"):
        out = tmp_path / model_type
        export_bundle(tiny_model(model_type), UNEVEN, None, out, tokenizer=tok)
        ort_model = ORTModelForSequenceClassification.from_pretrained(str(out), file_name="model.onnx")
        enc = tok(texts(3), padding=True, return_tensors="np")
        names = [i.name for i in ort_session(out / "model.onnx").get_inputs()]
        ref = ort_session(out / "model.onnx").run(["logits"], {n: enc[n].astype(np.int64) for n in names})[0]
        import torch

        got = ort_model(**{n: torch.from_numpy(enc[n].astype(np.int64)) for n in names}).logits
        assert np.allclose(np.asarray(got), ref, atol=1e-6), model_type
        assert ort_model.config.id2label[1] == "label_1"
