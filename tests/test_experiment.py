"""One definition per figure: configs, their command lines, and where their results live."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import buildup, cka, experiment, hessian, landscape, lesion, models, robustness, train

CONFIGS = [landscape.Config, hessian.Config, robustness.Config, cka.Config, train.Config, lesion.Config,
           buildup.Config]


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__module__)
def test_the_command_line_is_the_config(config_class, capsys):
    assert experiment.parse(config_class, []) == config_class()
    with pytest.raises(SystemExit):
        experiment.parse(config_class, ["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(config_class):
        assert "--" + field.name.replace("_", "-") in help_text
        assert " ".join(field.metadata["doc"].split())[:40] in help_text


def test_the_usage_line_names_the_module_that_was_typed():
    # under python -m the module is "__main__": the usage must still say what to type again
    done = subprocess.run([sys.executable, "-m", "helpers.lesion", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    assert done.stdout.startswith("usage: python -m helpers.lesion ")


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__module__)
def test_smoke_sizes_are_the_same_on_both_sides(config_class):
    from_command_line = experiment.parse(config_class, ["--smoke"]).resolved()
    from_notebook = config_class.from_namespace({f.name: getattr(config_class(), f.name)
                                                 for f in dataclasses.fields(config_class)} | {"smoke": True})
    assert from_command_line == from_notebook.resolved() != config_class()
    capped = [f.name for f in dataclasses.fields(config_class) if f.metadata["smoke"] is not None]
    assert capped and all(getattr(from_command_line, name) <= f for name, f in
                          ((f.name, f.metadata["smoke"]) for f in dataclasses.fields(config_class) if f.name in capped))


def test_bad_values_are_refused_before_any_work(capsys):
    for arguments, message in ((["--points", "0"], "points=0: must be at least 1"),
                               (["--smoke", "maybe"], "unrecognized arguments: maybe"),
                               (["--normalization", "layer"], "invalid choice"),
                               (["--smoke", "--checkpoints", "vit_ti=x.pth"], "a smoke run uses fresh weights")):
        with pytest.raises(SystemExit) as exit_:
            experiment.parse(landscape.Config, arguments)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="smoke='maybe': must be bool"):
        landscape.Config(smoke="maybe")
    with pytest.raises(ValueError, match="batch_size=2.5: must be int"):
        landscape.Config(batch_size=2.5)


def test_lists_dicts_and_optional_values_parse():
    config = experiment.parse(landscape.Config, ["--models", "vit_ti", "pit_ti", "--checkpoints", "vit_ti=a.pth",
                                                 "--images", "None", "--mirror", "http://x", "--no-authors"])
    assert config.models == ["vit_ti", "pit_ti"] and config.checkpoints == {"vit_ti": "a.pth"}
    assert config.images is None and config.mirror == "http://x" and config.authors is False


def test_the_grid_of_one_point_is_the_centre():
    assert landscape.grid_points(1) == [{"x": 0.0, "y": 0.0}]
    with pytest.raises(ValueError, match="at least one point"):
        landscape.grid_points(0)


def test_results_live_in_one_place_whatever_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(experiment.RESULTS_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    here = experiment.results_folder()
    assert here == experiment.project_root() / "results" and here.is_absolute()
    assert experiment.results_folder("out") == tmp_path / "out"  # relative: to where the command runs
    monkeypatch.setenv(experiment.RESULTS_VARIABLE, str(tmp_path / "env"))
    assert experiment.results_folder() == tmp_path / "env"


def table(tmp_path, capsys=None, *, weights="w0", data=None, **settings):
    config = landscape.Config(results=str(tmp_path), **settings)
    return experiment.table(config, "landscape", "vit_ti", ("x", "y"), data=data or {"size": 8}, weights=weights)


def test_a_table_is_bound_to_everything_that_changed_its_numbers(tmp_path, capsys):
    base = table(tmp_path)
    base.add({"x": 0.0, "y": 0.0, "loss": 1.0})
    assert table(tmp_path).folder == base.folder and table(tmp_path, points=3, workers=2).folder == base.folder
    others = [table(tmp_path, weight_decay=0.0), table(tmp_path, smoke=True), table(tmp_path, data={"size": 4}),
              table(tmp_path, weights="w1"), table(tmp_path, seed=1), table(tmp_path, images=4992)]
    assert len({t.folder for t in others} | {base.folder}) == len(others) + 1
    assert all(t.todo([{"x": 0.0, "y": 0.0}]) for t in others)  # none sees the old row
    notes = capsys.readouterr().out
    assert "settings.weight_decay: 0.05 -> 0.0" in notes and "settings.smoke: False -> True" in notes


def test_the_weights_digest_sees_one_changed_number():
    model = models.create("resnet_18")
    before = experiment.weights_digest(model)
    assert experiment.weights_digest(model) == before
    with torch.no_grad():
        model.layer1[0].conv1[1].running_mean[3] += 1e-6  # a buffer: eval-mode outputs change
    assert experiment.weights_digest(model) != before


def test_the_command_line_and_the_environment_share_the_results_default(tmp_path, monkeypatch):
    monkeypatch.setenv(experiment.RESULTS_VARIABLE, str(tmp_path))
    assert landscape.Config().results_folder() == tmp_path == experiment.parse(landscape.Config, []).results_folder()
