"""Figure styling shared by the notebooks: saving figures with their numbers, depth axes, block-kind shading.

Only notebooks and widgets import this module; analysis modules return numbers.
"""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

SHADES = {"msa": ("tab:gray", 0.15), "pool": ("tab:blue", 0.15)}  # conv/mlp stay white, as in the paper


def save(fig, name, folder="results", table=None):
    """Write `fig` as `folder/name.png` and `.pdf`, and `table` (a DataFrame or dict of columns) as `.csv`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=150, bbox_inches="tight")
    fig.savefig(folder / f"{name}.pdf", bbox_inches="tight")
    if table is not None:
        pd.DataFrame(table).to_csv(folder / f"{name}.csv", index=False)
    return [folder / f"{name}.{ext}" for ext in ("png", "pdf", "csv" if table is not None else None) if ext]


def normalized_depth(n):
    """Block i of n sits at depth i / (n - 1): 0 for the first block, 1 for the last."""
    return np.arange(n) / max(n - 1, 1)


def shade_kinds(ax, blocks):
    """Shade the depth interval that ends at each MSA block grey and at each subsampling block blue.

    `blocks` is a `Blocks` (or any sequence with `.kind` and `.downsamples`) laid out on `normalized_depth`.
    """
    step = 1.0 / max(len(blocks) - 1, 1)
    for depth, block in zip(normalized_depth(len(blocks)), blocks):
        kind = "pool" if block.downsamples else block.kind
        if kind in SHADES:
            color, alpha = SHADES[kind]
            ax.axvspan(depth - step, depth, color=color, alpha=alpha, lw=0)
    ax.set_xlim(0, 1)
    ax.set_xlabel("Normalized depth")


def use_style():
    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False})
