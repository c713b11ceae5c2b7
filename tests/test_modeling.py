"""Save/load round trips of pruned models, safe loading, the prune command, and cheap imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from edgeprune.adapters import get_adapter  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402
from edgeprune.task.modeling import load_model, load_pruned, prune_and_verify_, save_pruned  # noqa: E402
from edgeprune.plan import HeadPlan  # noqa: E402
from edgeprune.testing import TINY_FAMILIES, random_inputs, tiny_model, tiny_tokenizer  # noqa: E402

PLAN = HeadPlan((4, 4, 4), ((1, 2, 3), (), (0,)))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_load_round_trip_gives_identical_logits(family, tmp_path):
    model = tiny_model(family, num_layers=3)
    prune_and_verify_(model, PLAN)
    save_pruned(model, tmp_path / "m")
    loaded = load_pruned(tmp_path / "m")
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    assert get_adapter(loaded).current_plan(loaded) == PLAN
    meta = json.loads((tmp_path / "m" / "edgeprune_pruning.json").read_text())
    assert meta["plan"]["kept_heads"] == [[1, 2, 3], [], [0]]


def test_plain_transformers_folder_loads_with_tokenizer(tmp_path):
    model = tiny_model("bert", num_layers=2)
    model.save_pretrained(tmp_path / "plain")
    tiny_tokenizer(tmp_path / "plain")
    loaded, tok = load_model(tmp_path / "plain")
    inputs = random_inputs(vocab_size=model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    assert tok("a good movie")["input_ids"][0] == tok.cls_token_id


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path):
    model = tiny_model("bert", num_layers=1)
    model.config.save_pretrained(tmp_path / "pkl")
    torch.save(model.state_dict(), tmp_path / "pkl" / "pytorch_model.bin")  # writing a pickle is harmless
    with pytest.raises(EdgepruneError, match="refusing to unpickle"):
        load_model(tmp_path / "pkl", with_tokenizer=False)


def test_unreadable_model_path_gives_clear_error(tmp_path):
    with pytest.raises(EdgepruneError, match="cannot load a model config"):
        load_model(tmp_path / "nope")


def test_corrupt_weights_are_detected(tmp_path):
    model = tiny_model("bert", num_layers=3)
    prune_and_verify_(model, PLAN)
    save_pruned(model, tmp_path / "m")
    other = HeadPlan((4, 4, 4), ((1, 2), (), (0,)))
    meta = json.loads((tmp_path / "m" / "edgeprune_pruning.json").read_text())
    meta["plan"] = other.to_dict()
    (tmp_path / "m" / "edgeprune_pruning.json").write_text(json.dumps(meta))
    with pytest.raises(EdgepruneError):
        load_pruned(tmp_path / "m")


def test_prune_command(tmp_path):
    from typer.testing import CliRunner

    from edgeprune.cli import app

    model = tiny_model("distilbert", num_layers=3)
    model.save_pretrained(tmp_path / "src")
    tiny_tokenizer(tmp_path / "src")
    (tmp_path / "plan.json").write_text(json.dumps({"plan": PLAN.to_dict()}))
    result = CliRunner().invoke(app, ["prune", "--model", str(tmp_path / "src"), "--plan", str(tmp_path / "plan.json"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "removed 8 of 12 heads" in result.output
    loaded, _ = load_model(tmp_path / "out")
    assert get_adapter(loaded).current_plan(loaded) == PLAN


def test_import_is_lean_and_help_works():
    code = (
        "import sys, edgeprune, edgeprune.cli, edgeprune.plan\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "edgeprune.cli", "--help"], check=True, capture_output=True, text=True)
    assert "Usage" in out.stdout and "prune" in out.stdout


def test_tiny_tokenizer_tokenizes_words(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    enc = again(["a good movie", "boring"], padding=True)
    assert again.convert_ids_to_tokens(enc["input_ids"][0]) == ["[CLS]", "a", "good", "movie", "[SEP]"]
    assert enc["attention_mask"][1] == [1, 1, 1, 0, 0] and "token_type_ids" in enc
    assert max(tok.get_vocab().values()) < 128


def test_every_subpackage_is_packaged():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "edgeprune").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "edgeprune._profiles" in listed  # profiles/*.toml ship inside the wheel
