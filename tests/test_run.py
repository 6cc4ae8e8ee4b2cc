import nbformat
import pytest

from helpers import run


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import sys"),
        nbformat.v4.new_code_cell("smoke = False\nmodels = ['resnet_50']\nresults = 'results'",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import pathlib\npathlib.Path(results).mkdir()\n"
                                  "(pathlib.Path(results) / 'out.txt').write_text(f'{smoke} {models}')"),
    ]
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, path)
    return path


def test_parameters_are_injected_after_the_parameters_cell(notebook, tmp_path):
    executed = run.run(notebook, {"smoke": True, "models": ["vit_ti", "pit_ti"], "results": "figures"},
                       output=tmp_path / "executed")
    assert (tmp_path / "figures" / "out.txt").read_text() == "True ['vit_ti', 'pit_ti']"  # ran in its folder
    cells = nbformat.read(executed, as_version=4).cells
    assert cells[2].metadata.tags == ["injected-parameters"]
    assert nbformat.read(notebook, as_version=4).cells[2].source.startswith("import pathlib")  # source untouched


def test_command_line_values_are_literals_or_strings():
    assert run.parse_parameters(["smoke=True", "batch_size=8", "model=vit_ti", "models=['a', 'b']"]) == {
        "smoke": True, "batch_size": 8, "model": "vit_ti", "models": ["a", "b"]}
    with pytest.raises(SystemExit, match="key=value"):
        run.parse_parameters(["smoke"])


def test_unknown_parameters_are_refused_before_running(notebook, tmp_path):
    with pytest.raises(SystemExit, match="takes: models, results, smoke"):
        run.main([str(notebook), "-p", "smok=True", "-o", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_a_failing_notebook_keeps_its_partial_copy(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nbformat.write(nb, tmp_path / "bad.ipynb")
    assert run.main([str(tmp_path / "bad.ipynb"), "-o", str(tmp_path / "out")]) == 1
    assert "boom" in capsys.readouterr().err
    assert (tmp_path / "out" / "bad.ipynb").exists()
