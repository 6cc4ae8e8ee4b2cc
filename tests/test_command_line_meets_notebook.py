"""The README's torchrun instructions, run as written in smoke mode, fill exactly what the notebook then reads: the
notebook computes no unit (its summary says so) and its figure table equals one made from the command line's rows."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from helpers import hessian, landscape, robustness, run
from helpers.sweep import Table

# the README's real commands, two processes then a notebook each (two minutes on 2 cores): the rehearsal's CI step
pytestmark = pytest.mark.rehearsal
ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = re.search(r"<!-- torchrun -->\n```bash\n(.*?)```\n<!-- /torchrun -->", README, re.S).group(1).splitlines()
NOTEBOOKS = {"helpers.landscape": "losslandscape.ipynb", "helpers.hessian": "hessian.ipynb",
             "helpers.robustness": "robustness.ipynb"}


def stored(results, figure, model, key):
    (folder,) = (results / "sweeps" / figure).glob(f"{model}-*")
    return Table(folder, key).frame()


def landscape_table(results, models):
    points = landscape.grid_points(landscape.Config(smoke=True).resolved().points)
    return pd.concat({m: landscape.read(Table(next((results / "sweeps" / "landscape").glob(f"{m}-*")), ("x", "y")),
                                        points) for m in models}, names=["model"]).reset_index(level=0)


def hessian_table(results, models):  # the notebook's SLQ density table
    rows = []
    for model in models:
        frame = stored(results, "hessian", model, ("weight_decay", "batch")).sort_values(["weight_decay", "batch"])
        for wd, group in frame.groupby("weight_decay", sort=False):
            loss = "NLL" if wd == 0 else f"NLL + L2 (wd {wd}, squared)"
            spread = max(np.abs(np.concatenate(list(group.nodes))).max(), 1e-6)
            grid = np.linspace(-1.1 * spread, 1.1 * spread, 2001)
            density = hessian.spectral_density(list(group.nodes), list(group.weights), grid, sigma=spread / 200)
            rows += [{"loss": loss, "model": model, "eigenvalue": x, "density": d} for x, d in zip(grid, density.tolist())]
    return pd.DataFrame(rows).sort_values(["loss", "model", "eigenvalue"]).reset_index(drop=True)


def robustness_table(results, models):
    noise = pd.concat([stored(results, "robustness_noise", m, ("epsilon", "frequency")).assign(model=m) for m in models])
    return robustness.accuracy_drop(noise.sort_values(["model", "frequency"], kind="stable"))


FIGURES = {"helpers.landscape": ("losslandscape.csv", landscape_table),
           "helpers.hessian": ("hessian_slq_density.csv", hessian_table),
           "helpers.robustness": ("robustness_frequency_noise.csv", robustness_table)}


@pytest.mark.parametrize("module", list(NOTEBOOKS))
def test_the_readme_torchrun_run_fills_what_the_notebook_reads(module, tmp_path):
    (command,) = [line for line in COMMANDS if f" -m {module} " in line]
    words = shlex.split(command)
    assert words[:2] == ["torchrun", "--standalone"] and words[2:4] == ["--nproc-per-node", "4"]
    models = words[words.index("--models") + 1:]
    results = tmp_path / "results"
    arguments = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *words[4:],
                 "--smoke", "--results", str(results)]  # as written, on the 2 processes a CPU machine has
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(arguments, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [line for line in done.stdout.splitlines() if "units finished" in line]
    assert summaries and all("(0 computed" not in line for line in summaries)  # one summary, from rank 0

    executed = run.run(ROOT / NOTEBOOKS[module], {"smoke": True, "results": str(results), "models": models},
                       timeout=900)
    text = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", []))
    reported = [line for line in text.splitlines() if "units finished" in line]
    assert len(reported) == len(summaries) and all("(0 computed by this run)" in line for line in reported)

    file, expected = FIGURES[module]
    figure_table = pd.read_csv(results / file)
    if module == "helpers.hessian":
        figure_table = figure_table.sort_values(["loss", "model", "eigenvalue"]).reset_index(drop=True)
    expected_table = expected(results, models).reset_index(drop=True)
    assert set(figure_table.columns) - set(expected_table.columns) <= {"msa", "data", "settings"}  # the models' facts
    pd.testing.assert_frame_equal(figure_table[expected_table.columns], expected_table, check_dtype=False, rtol=1e-12)
