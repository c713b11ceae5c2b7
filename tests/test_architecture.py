"""House rules that keep the package easy to change: no reach-ins to other modules' private names, production code
never imports the test helpers, and the stage packages stay where docs/architecture.md says they are."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgeprune"
STAGE_PACKAGES = ("adapters", "task", "search", "latency", "onnx", "certify", "recovery", "output")


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_reach_ins(paths, root: Path = ROOT) -> list[str]:
    """``from other_module import _name`` and ``other_module._name`` for edgeprune modules other than the file's own."""
    problems = []
    package = root / "edgeprune"
    for path in paths:
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases: dict[str, str] = {}  # local name -> edgeprune module it refers to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(module, node, path)
                if not source.startswith("edgeprune"):
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__") and source != module:
                        problems.append(f"{path.relative_to(root)}:{node.lineno}: imports {source}.{alias.name}")
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("edgeprune"):
                        aliases[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name or "edgeprune"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in aliases:
                    target = aliases[node.value.id]
                    if target != module and (package / Path(*target.split(".")[1:])).with_suffix(".py").exists():
                        problems.append(f"{path.relative_to(root)}:{node.lineno}: uses {target}.{node.attr}")
    return problems


def test_no_module_reaches_into_another_modules_private_names():
    paths = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert private_reach_ins(paths) == []


def test_the_lint_catches_a_reach_in(tmp_path):
    # The rule itself must be able to fail: a module importing another module's private helper is reported. The probe
    # lives in a copy of the layout under tmp_path (never in the package, which parallel test workers scan).
    (tmp_path / "edgeprune" / "search").mkdir(parents=True)
    (tmp_path / "edgeprune" / "latency").mkdir()
    (tmp_path / "edgeprune" / "latency" / "table.py").write_text("def _model_info():\n    pass\n")
    bad = tmp_path / "edgeprune" / "search" / "probe.py"
    bad.write_text("from edgeprune.onnx.export import _wrap\nfrom edgeprune.latency import table\nx = table._model_info\n")
    found = private_reach_ins([bad], root=tmp_path)
    assert any("edgeprune.onnx.export._wrap" in p for p in found)
    assert any("edgeprune.latency.table._model_info" in p for p in found)


def test_production_code_does_not_import_the_test_helpers():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "testing.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (_resolve(_module_name(path), node, path) == "edgeprune.testing"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("package", STAGE_PACKAGES)
def test_stage_packages_exist_and_say_what_they_hold(package):
    init = PACKAGE / package / "__init__.py"
    assert init.is_file()
    assert ast.get_docstring(ast.parse(init.read_text())), f"{package}/__init__.py needs a docstring"


def test_no_flat_stage_modules_are_left_behind():
    # The stage modules live in their packages; only the cross-cutting ones stay at the top.
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "cli", "config", "errors", "pipeline", "plan", "profiles", "testing", "versions"]
