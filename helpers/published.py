"""Fig. 1a: the authors' published loss-landscape grids (ResNet-50 and ViT-Ti), counted as theirs only when they are.

The authors' repository (xxxnell/how-do-vits-work at the commit the registry pins, `resources/results/`) holds one
header-less CSV per model: the 441 points of a 21 x 21 grid over [-1, 1]^2, each with its L1/L2 norm sums and
metrics (`COLUMNS`, their losslandscape.ipynb's `names`), measured on 4,992 augmented training images (`SAMPLE`).
The registry pins each file's SHA-256 and, as the official weights' fingerprint, its centre's l1 and l2.

A file counts as the authors' only when its SHA-256 is the registry's, wherever it comes from: the official URL, a
mirror (`mirror`, $VITS_MIRROR), `url`, or the copy kept in `folder`/authors (checked by digest at every read, not
only parsed). Its shape is checked first, to say what differs: 441 points, and a centre whose l1/l2 match the
registry to its rounding (rel 1e-6: the file holds 508540.65625 where the registry says 508540.66). Any other file
is refused in one line naming the file and the difference; a download that fails is not kept.
"""
import math
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import landscape, models, provenance
from helpers.common import file_digest
from helpers.download import download, source
from helpers.recipes import STRONG

COLUMNS = ("x", "y", "l1", "l2", "NLL", "Cutoff1", "Cutoff2", "Acc", "Acc-90", "Unc", "Unc-90", "IoU", "IoU-90",
           "Freq", "Freq-90", "Top-5", "Brier", "ECE", "ECSE")
MODELS = tuple(name for name, entry in models.REGISTRY.items() if entry.grid)
POINTS = 441          # 21 x 21
SAMPLE = 4992         # 52 batches of 96: the training images behind each grid (its accuracies are k / 4992)
CENTRE_RTOL = 1e-6    # the registry's l1/l2 are the file's, rounded to 8 significant digits


def grid(name: str, folder="data", *, url=None, mirror=None, weight_decay=STRONG.weight_decay) -> pd.DataFrame:
    """The authors' grid of `name` (one of MODELS), downloaded into `folder`/authors once and verified at every read
    (see the module docstring), as a table of `landscape.COLUMNS` with loss = NLL + wd x l2, `msa` (whether the
    model has MSA blocks) and `run`: "official", what a verified grid rests on."""
    spec = models.resolve(name)
    if spec.entry is None or spec.entry.grid is None:
        raise ValueError(f"The authors published landscapes for {', '.join(MODELS)} only, not {name!r}.")
    path = Path(folder) / "authors" / spec.entry.grid[0]
    if not path.exists():
        url = url or source(spec.entry.grid_url, mirror)[0]
        download(url, path, verify=lambda partial: check(partial, spec, url))
    table = check(path, spec, f"{path} (delete it to download it again)")
    table["loss"] = table["NLL"] + weight_decay * table["l2"]
    return table[list(landscape.COLUMNS)].assign(msa=provenance.has_msa(models.create(name)), run="official")


def read(path) -> pd.DataFrame:
    """A file in the authors' layout: 19 numeric columns without a header, else a ValueError."""
    try:
        table = pd.read_csv(path, names=list(COLUMNS), header=None)
    except (pd.errors.ParserError, UnicodeDecodeError):
        table = pd.DataFrame({"x": ["?"]})
    if table.isna().any().any() or not all(pd.api.types.is_numeric_dtype(t) for t in table.dtypes):
        raise ValueError(f"{path} is not one of the authors' grids: expected {len(COLUMNS)} numeric columns "
                         f"({', '.join(COLUMNS[:5])}, ...) without a header.")
    return table


def check(path, spec, origin) -> pd.DataFrame:
    """The table of the file at `path` if it is the authors' grid of `spec`, else a one-line ValueError naming
    `origin` (where it came from) and what differs."""
    table, (file, digest), centre = read(path), spec.entry.grid, spec.entry.fingerprint
    refused = f"{origin} is not the authors' grid of {spec.name}:"
    if len(table) != POINTS:
        raise ValueError(f"{refused} it holds {len(table)} points, not {POINTS}.")
    found = table[np.isclose(table["x"], 0) & np.isclose(table["y"], 0)][["l1", "l2"]].to_numpy()
    if len(found) != 1 or not all(math.isclose(f, k, rel_tol=CENTRE_RTOL) for f, k in zip(found[0], centre)):
        shown = f"{found[0][0]:.8g}/{found[0][1]:.8g}" if len(found) == 1 else f"{len(found)} centre points"
        raise ValueError(f"{refused} its centre's l1/l2 are {shown}, the registry's {centre[0]}/{centre[1]}.")
    if file_digest(path) != digest:
        raise ValueError(f"{refused} its SHA-256 is {file_digest(path)}, the registry's {digest} ({file}).")
    return table
