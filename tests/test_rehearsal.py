"""A rehearsal of every notebook's real path: smoke=False, the default models and official checkpoint names, every
download through the mirror setting from a loopback server holding files in the real formats (tests/fakes.py),
small sizes from the notebooks' own parameters. It takes the code path of a user's first real run, and says what it
is: its checkpoints and data are fakes that the published fingerprints and MD5s do not vouch for, so every figure
table and verdict rests on "unverified" files (the authors' grids, their real files, are theirs)."""
import json
from pathlib import Path

import nbformat
import pytest
from fakes import mirror as build_mirror
from http_server import serve

from helpers import download, run
from helpers.common import saved_run

pytestmark = pytest.mark.rehearsal  # four minutes on 2 cores: its own step in .ci/run (python -m pytest -m rehearsal)
ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = [("resnet_50", "691cc9a9e4"), ("vit_ti", "9857b21357")]  # every notebook's default models include one

# notebook -> (small sizes of the real path, how the mirror is set: the environment or the `mirror` parameter)
REHEARSALS = {
    "fourier_analysis.ipynb": ({"images": 16, "batch_size": 8}, "environment"),
    "featuremap_variance.ipynb": ({"images": 16, "batch_size": 8}, "parameter"),
    "losslandscape.ipynb": ({"points": 3, "images": 8, "batch_size": 4, "workers": 0}, "environment"),
    "robustness.ipynb": ({"images": 4, "batch_size": 4}, "parameter"),
    "cka.ipynb": ({"examples": 8, "batch_size": 4, "workers": 0}, "environment"),
    "classification.ipynb": ({"test_images": 8, "images": 8, "batch_size": 8, "epochs": 1, "warmup_epochs": 0,
                              "eval_batch_size": 8, "workers": 0}, "parameter"),
    "hessian.ipynb": ({"models": ["vit_ti"], "images": 8, "batch_size": 2, "fraction": 0.25, "k": 2, "max_steps": 3},
                      "environment"),
    "lesion.ipynb": ({"models": ["vit_ti", "pit_ti"], "images": 4, "batch_size": 4, "workers": 0}, "parameter"),
    "diagnose.ipynb": ({"images": 4, "batch_size": 4, "hessian_batches": 1, "hessian_batch_size": 2, "k": 1,
                        "max_steps": 2, "workers": 0}, "parameter"),
    "buildup.ipynb": ({"baseline": "alternet_18", "epochs": 1, "warmup_epochs": 0, "images": 8, "batch_size": 8,
                       "test_images": 8, "eval_batch_size": 8, "workers": 0}, "environment"),
}


@pytest.fixture(scope="module")
def mirror_url(tmp_path_factory):
    with serve(build_mirror(tmp_path_factory.mktemp("mirror"))) as base:
        yield base


def outputs(executed):
    return "".join(output.get("text", "") for cell in nbformat.read(executed, as_version=4).cells
                   for output in cell.get("outputs", []))


@pytest.mark.parametrize("notebook", sorted(REHEARSALS))
def test_the_real_path_runs_from_a_mirror(notebook, mirror_url, tmp_path, monkeypatch):
    sizes, how = REHEARSALS[notebook]
    parameters = {"smoke": False, "results": str(tmp_path / "results"), "data_root": str(tmp_path / "data"), **sizes}
    if notebook != "buildup.ipynb":  # the build-up trains its own variants: no official checkpoints
        parameters["checkpoint_root"] = str(tmp_path / "checkpoints")
    if how == "environment":
        monkeypatch.setenv(download.MIRROR_VARIABLE, mirror_url)  # the kernel inherits it
    else:
        monkeypatch.delenv(download.MIRROR_VARIABLE, raising=False)
        parameters["mirror"] = mirror_url
    monkeypatch.chdir(tmp_path)
    executed = run.run(ROOT / notebook, parameters, timeout=900)

    figures = tmp_path / "results"
    assert executed == figures / notebook and list(figures.glob("*.png")) and list(figures.glob("*.csv"))
    assert "SMOKE" not in outputs(executed)
    assert {saved_run(table) for table in figures.glob("*.csv")} == {"unverified"}  # fakes: not "official"
    assert "run: unverified" in outputs(executed)
    downloaded = {p.name for p in (tmp_path / "data").rglob("*")} | {p.name for p in (tmp_path / "checkpoints").rglob("*")}
    assert "cifar-100-python.tar.gz" in downloaded  # fetched, from the mirror
    if notebook != "buildup.ipynb":  # the build-up trains its own variants
        assert downloaded & {f"{name}_cifar100_{uid}.pth.tar" for name, uid in OFFICIAL}
    for definition in (figures / "sweeps").glob("*/*/definition.json"):  # the real path's tables
        assert json.loads(definition.read_text())["settings"]["smoke"] is False
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.rglob(".*.part"))
