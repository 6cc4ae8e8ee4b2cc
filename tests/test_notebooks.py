"""Every notebook at the repository root: stored clean, and runs top to bottom in smoke mode."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

from helpers import run

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs_and_with_a_parameters_cell(path):
    code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "google.colab" in code[0].source  # the first cell installs the project in Colab
    assert "parameters" in code[1].metadata.get("tags", [])
    names = {t.id for node in ast.parse(code[1].source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert {"smoke", "results"} <= names
    definitions = [line for cell in code for line in cell.source.splitlines() if re.match(r"\s*(def|class)\s", line)]
    assert not definitions, "notebooks call helpers; they define no functions or classes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_in_smoke_mode(path, tmp_path):
    run.run(path, {"smoke": True, "results": str(tmp_path)}, output=tmp_path / "executed", timeout=600)
    assert list(tmp_path.glob("*.png")) and list(tmp_path.glob("*.pdf")) and list(tmp_path.glob("*.csv"))
