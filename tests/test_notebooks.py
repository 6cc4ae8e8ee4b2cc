"""Every notebook at the repository root: stored clean, its parameters the names and defaults of its experiment's
config, and runs top to bottom in smoke mode."""
import ast
import dataclasses
import re
from pathlib import Path

import nbformat
import pytest

from helpers import buildup, cka, diagnosis, hessian, landscape, lesion, robustness, run, train

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("*.ipynb"))
CONFIGS = {"losslandscape.ipynb": landscape.Config, "cka.ipynb": cka.Config, "robustness.ipynb": robustness.Config,
           "hessian.ipynb": hessian.Config,
           "classification.ipynb": train.Config, "lesion.ipynb": lesion.Config, "buildup.ipynb": buildup.Config,
           "diagnose.ipynb": diagnosis.Config}
# Smoke runs with smaller choices where the default models make a minute of work
SMOKE = {"lesion.ipynb": {"models": ["resnet_18", "vit_ti"]}, "buildup.ipynb": {"baseline": "alternet_18"}}


def parameters(path):
    """{name: default} of the notebook's `parameters` cell (the second code cell)."""
    code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    assert "parameters" in code[1].metadata.get("tags", [])
    return {target.id: ast.literal_eval(node.value) for node in ast.parse(code[1].source).body
            if isinstance(node, ast.Assign) for target in node.targets}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs_and_with_a_parameters_cell(path):
    code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "google.colab" in code[0].source  # the first cell installs the project in Colab
    assert {"smoke", "results", "mirror"} <= set(parameters(path))
    definitions = [line for cell in code for line in cell.source.splitlines() if re.match(r"\s*(def|class)\s", line)]
    assert not definitions, "notebooks call helpers; they define no functions or classes"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_parameters_cell_is_the_config(name):
    defaults = CONFIGS[name]()
    assert parameters(ROOT / name) == {field.name: getattr(defaults, field.name)
                                       for field in dataclasses.fields(defaults)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_in_smoke_mode(path, tmp_path):
    run.run(path, {"smoke": True, "results": str(tmp_path), **SMOKE.get(path.name, {})}, timeout=600)
    assert list(tmp_path.glob("*.png")) and list(tmp_path.glob("*.pdf")) and list(tmp_path.glob("*.csv"))
    assert (tmp_path / path.name).exists()  # the executed copy goes with the results
