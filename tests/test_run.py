"""The headless runner: parameters after the `parameters` cell, strict flags, paths relative to where the command
runs, the executed copy beside the results, and short failures."""
import re

import nbformat
import pytest
from http_server import refusing

from helpers import download, run


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import sys"),
        nbformat.v4.new_code_cell("smoke = False\nmodels = ['resnet_50']\nresults = 'results'",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import pathlib\npathlib.Path(results).mkdir(exist_ok=True)\n"
                                  "(pathlib.Path(results) / 'out.txt').write_text(f'{smoke} {models}')"),
    ]
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / "demo.ipynb"
    nbformat.write(nb, path)
    return path


def test_parameters_are_injected_after_the_parameters_cell(notebook, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's folder, not the notebook's
    executed = run.run(notebook, {"smoke": True, "models": ["vit_ti", "pit_ti"], "results": "figures"})
    assert (tmp_path / "figures" / "out.txt").read_text() == "True ['vit_ti', 'pit_ti']"  # relative to the user
    assert executed == tmp_path / "figures" / "demo.ipynb"  # the executed copy goes with the results
    cells = nbformat.read(executed, as_version=4).cells
    assert cells[2].metadata.tags == ["injected-parameters"]
    assert nbformat.read(notebook, as_version=4).cells[2].source.startswith("import pathlib")  # source untouched


def test_command_line_values_are_literals_or_strings():
    assert run.parse_parameters(["smoke=True", "batch_size=8", "model=vit_ti", "models=['a', 'b']"]) == {
        "smoke": True, "batch_size": 8, "model": "vit_ti", "models": ["a", "b"]}
    with pytest.raises(SystemExit, match="key=value"):
        run.parse_parameters(["smoke"])


@pytest.mark.parametrize("value, expected", [("True", True), ("false", False), ("FALSE", False), ("true", True)])
def test_flags_take_true_or_false_in_any_case(value, expected):
    assert run.checked(run.parse_parameters([f"smoke={value}"]), {"smoke": False}) == {"smoke": expected}


@pytest.mark.parametrize("value", ["maybe", "1", "yes", "''"])
def test_flags_refuse_anything_else_before_running(notebook, tmp_path, value):
    with pytest.raises(SystemExit, match="smoke=.* must be True or False"):
        run.main([str(notebook), "-p", f"smoke={value}", "-o", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_unknown_parameters_are_refused_before_running(notebook, tmp_path):
    with pytest.raises(SystemExit, match="takes: models, results, smoke"):
        run.main([str(notebook), "-p", "smok=True", "-o", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_a_failing_notebook_ends_with_a_few_lines_and_keeps_its_copy(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("y = 2\n\nraise ValueError('boom at ' + str(y))")]
    nbformat.write(nb, tmp_path / "bad.ipynb")
    assert run.main([str(tmp_path / "bad.ipynb"), "-o", str(tmp_path / "out")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"{tmp_path / 'bad.ipynb'} failed in cell In [3]: y = 2", "ValueError: boom at 2",
                     f"The executed copy, with the full traceback, is {tmp_path / 'out' / 'bad.ipynb'}"]
    copy = (tmp_path / "out" / "bad.ipynb").read_text()
    assert "Traceback" in copy or "ValueError" in copy
    assert "\x1b[" not in copy  # no colour codes in a file


def test_an_offline_default_run_names_the_url_and_the_cell_in_a_few_plain_lines(tmp_path, monkeypatch, capfd):
    root = run.Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    with refusing() as nowhere:
        monkeypatch.setenv(download.MIRROR_VARIABLE, nowhere)  # every download fails, as offline
        status = run.main([str(root / "fourier_analysis.ipynb"), "-p", f"results={tmp_path / 'results'}"])
    out, err = capfd.readouterr()
    assert status == 1 and len((out + err).strip().splitlines()) <= 20
    assert "\x1b[" not in out + err and "without encryption" not in out + err
    assert re.search(rf"{nowhere}/resnet_50_cifar100_691cc9a9e4\.pth\.tar", err)  # the URL it could not reach
    assert re.search(r"fourier_analysis.ipynb failed in cell In \[\d+\]: if use_imagenet:", err)  # the cell
    assert (tmp_path / "results" / "fourier_analysis.ipynb").exists()
