"""Dependency arrows that import-linter cannot check: those into and out of ``stablemtl.pipelines``.

setuptools maps ``stablemtl.pipelines`` to the top-level ``pipelines/`` folder, which import-linter (it
reads ``stablemtl/`` from disk) does not see; the rest of the arrows are its contracts in pyproject.toml.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offenders(files, forbidden: str) -> list[str]:
    return sorted(
        f"{path.name} imports {name}"
        for path in files
        for name in _imports(path)
        if name == forbidden or name.startswith(forbidden + ".")
    )


@pytest.mark.parametrize("layer", ["tasks", "data", "evaluation", "models", "utils"])
def test_lower_layers_never_import_the_pipelines(layer):
    assert _offenders((ROOT / "stablemtl" / layer).rglob("*.py"), "stablemtl.pipelines") == []


def test_pipelines_never_import_training():
    assert _offenders((ROOT / "pipelines").glob("*.py"), "stablemtl.training") == []


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline\n")
    assert _offenders([bad], "stablemtl.pipelines") != []
