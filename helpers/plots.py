"""Figure styling shared by the notebooks: saving figures with their numbers, depth axes, block-kind shading.

Only notebooks and widgets import this module; analysis modules return numbers.

The depth axis, as in the authors' notebooks, comes from the blocks (`Blocks.layers`, `Blocks.depths`): the head
(the logits) is not on it, block `i` of the `n` non-head blocks sits at `i / (n - 1)`, and the interval that ends
at a block, `[(i - 1)/(n - 1), i/(n - 1)]`, is shaded from its `Block.shade`: grey for an MSA, blue for subsampling.
For ResNet-50 and ViT-Ti that is exactly the authors' `pools = [4, 8, 14]` and `msas = [1, 3, ..., 23]`.
"""
import collections
import json
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter

from helpers import models
from helpers.blocks import normalized_depth
from helpers.common import provenance_path, writing
from helpers.fourier import shifted_frequencies
from helpers.verdict import weakest

SHADES = {"msa": ("tab:gray", 0.15), "pool": ("tab:blue", 0.15)}  # conv/mlp stay white, as in the paper
DEPTH_COLORMAP = "plasma"
KIND_COLORS = {"embed": "black", "conv": "tab:blue", "msa": "tab:red", "mlp": "tab:green",
               "pool": "tab:purple", "head": "tab:gray"}  # pool: every subsampling block, strided bottlenecks too
SMOKE_TITLE = "SMOKE RUN: fresh weights, synthetic data (meaningless numbers)"


def save(fig, name, folder="results", table=None, *, run):
    """Write `fig` as `folder/name.png` and `.pdf`, and `table` (a DataFrame or dict of columns; arrays in its cells as
    JSON lists) as `.csv`, with `name.json` recording what its numbers rest on, `run` (`helpers.provenance`; read by
    `common.saved_run`); sweeps live apart, in `folder/sweeps/`. A smoke run's figure says so in its title."""
    if Path(name).name != name or name == "sweeps":
        raise ValueError(f"A figure name is a plain file name, not {name!r}: sweeps live in {folder}/sweeps/")
    folder, run = Path(folder), weakest(run)  # weakest: a ValueError unless one of RUN_KINDS
    if run == "smoke":
        top = fig.get_tightbbox(fig.canvas.get_renderer()).y1  # inches: above every title, however short the figure
        fig.suptitle(SMOKE_TITLE, color="tab:red", fontsize="medium", y=(top + 0.08) / fig.get_figheight(), va="bottom")
    paths = [folder / f"{name}.{ext}" for ext in ("png", "pdf", "csv" if table is not None else None) if ext]
    with writing(paths[0]):
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(paths[0], dpi=150, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight")
        if table is not None:
            paths.append(provenance_path(paths[2]))
            paths[3].unlink(missing_ok=True)  # never beside another run's table, even if stopped before the end
            pd.DataFrame(table).map(lambda v: json.dumps(np.asarray(v).tolist()) if isinstance(v, (list, np.ndarray))
                                    else v).to_csv(paths[2], index=False)  # arrays at full precision
            paths[3].write_text(json.dumps({"run": run}) + "\n")
    return paths


def shade_kinds(ax, blocks):
    """Shade the depth interval that ends at each MSA block grey and at each subsampling block blue.

    `blocks` is a `Blocks`; its head is left out of the axis, so that the shading lines up with curves over
    `Blocks.feature_maps` (see the module docstring).
    """
    step = 1.0 / max(len(blocks.layers) - 1, 1)
    for depth, block in zip(blocks.depths(), blocks.layers):
        if block.shade in SHADES:
            color, alpha = SHADES[block.shade]
            ax.axvspan(depth - step, depth, color=color, alpha=alpha, lw=0)
    ax.set_xlim(0, 1)
    ax.set_xlabel("Normalized depth")


def model_style(name):
    """(marker, colour) of a model specification (`helpers.models.Spec.style`; a label may follow it: "vit_ti
    (authors)"): the authors' diamonds for ResNet and circles for ViT, and a style of its own for any other model."""
    for text in (name, name.rsplit(" (", 1)[0]):
        try:
            return models.resolve(text).style
        except ValueError:
            continue
    return models.style_of(name)


def depth_curve(ax, blocks, values, *, marker="o", color=None, label=None, highlight=None):
    """`values` (one per non-head block) against normalized depth over the kind shading.

    With `color=None` the line and markers are coloured by depth (the authors' Fig. 8); `highlight` is a
    block index to ring (the layer explorer's current block).
    """
    values = np.asarray(values, dtype=float)
    if len(values) != len(blocks.layers):
        raise ValueError(f"{len(values)} values for {len(blocks.layers)} non-head blocks.")
    depth = blocks.depths()
    if color is None:
        points = np.stack([depth, values], axis=1)  # n, 2
        segments = np.stack([points[:-1], points[1:]], axis=1)  # n-1, 2 ends, 2
        ax.add_collection(LineCollection(segments, array=depth[:-1], cmap=DEPTH_COLORMAP, norm=Normalize(0, 1),
                                         linewidth=2.5))
        ax.scatter(depth, values, c=depth, cmap=DEPTH_COLORMAP, norm=Normalize(0, 1), marker=marker, zorder=3,
                   label=label)
        ax.autoscale_view()
    else:
        ax.plot(depth, values, marker=marker, color=color, markersize=6, label=label)
    if highlight is not None:
        ax.scatter(depth[highlight], values[highlight], s=180, facecolors="none", edgecolors="black", zorder=4)
    shade_kinds(ax, blocks)


def map_sizes(ax, blocks, sizes):
    """Label, on a top axis, each stretch of `blocks` (their `layers`) whose feature maps share a size H (`sizes`,
    one per layer) with `H x H` and the highest frequency of such a map, π(1 - 2/H): what Fig. 8 reads there is
    lower for a smaller map, and a CIFAR model's deeper stages have 8 x 8 and 4 x 4 maps."""
    sizes, depths = [int(size) for size in sizes], blocks.depths()
    runs = [0] + [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]] + [len(sizes)]
    top = ax.secondary_xaxis("top")
    top.set_xticks([(depths[a] + depths[b - 1]) / 2 for a, b in zip(runs, runs[1:])],
                   [f"{sizes[a]}×{sizes[a]}: {shifted_frequencies(sizes[a])[-1].item():.2f}π" for a in runs[:-1]],
                   fontsize=7)
    top.tick_params(length=0)
    for start in runs[1:-1]:
        ax.axvline(depths[start - 1], color="dimgray", lw=0.6, ls=":")


def lesion_drops(ax, blocks, table, *, column="accuracy_drop"):
    """The lesion study of one model: `column` of `lesion.drops` (in %) for each removed block against normalised
    depth, over the kind shading of Fig. 8 and Fig. 9; blocks that cannot be removed (embedding, pooling) are
    crosses on the zero line, and dashed lines mark the ends of the stages."""
    removable = table[table.removable]
    ax.axhline(0, color="black", lw=0.5)
    for kind, rows in removable.groupby("kind", sort=False):
        ax.plot(rows.depth, 100 * rows[column], "o", color=KIND_COLORS[kind], label=f"{kind} removed", ms=5)
    fixed = table[~table.removable]
    ax.plot(fixed.depth, np.zeros(len(fixed)), "x", color="dimgray", label="not removable")
    for depth in table[table.stage_end].depth:
        ax.axvline(depth, color="black", lw=0.8, ls="--")
    shade_kinds(ax, blocks)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)


def build_up(ax, steps, column="accuracy", *, scale=100):
    """The build-up rule step by step (`buildup.steps`), as the authors' animation: `column` against the number of
    MSAs; each layout is joined to the one it was built on, solid and filled when it became the best so far, dotted
    and open when not; each point is labelled with the position it added, and "rule 2" where the rule went back to
    the best layout at the end of an earlier stage."""
    by_layout = steps.set_index("layout")
    colors = plt.get_cmap(DEPTH_COLORMAP)(np.linspace(0.1, 0.8, max(len(steps), 2)))
    labelled = collections.Counter()  # labels already at a point: tied variants get theirs stacked, not overprinted
    for row, color in zip(steps.itertuples(), colors):
        value = scale * getattr(row, column)
        if row.parent:
            parent = by_layout.loc[row.parent]
            ax.plot([parent.msas, row.msas], [scale * parent[column], value], color=color,
                    ls="-" if row.kept else ":", lw=1.5)
        ax.plot(row.msas, value, "s", color=color, mfc=color if row.kept else "white", ms=7, zorder=3)
        added = sorted(set(row.layout.split("+")) - set(row.parent.split("+")))
        label = ("rule 2: " if row.rule_2 else "") + ("+" + added[0] if row.parent else "baseline")
        place = row.msas, round(value, 6), row.kept
        stacked, labelled[place] = labelled[place], labelled[place] + 1
        ax.annotate(label, (row.msas, value), textcoords="offset points",
                    xytext=(6, 4 + 9 * stacked if row.kept else -10 - 9 * stacked),
                    fontsize=7, color="tab:red" if row.rule_2 else "black")
    ax.set_xticks(sorted(steps.msas.unique()))
    ax.set_xlabel("MSA number")


def frequency_curves(ax, table, *, leave_out_last=True):
    """Fig. 2a: one Δ log amplitude curve per block of `fourier.relative_log_amplitudes`' table, coloured by
    normalized depth, deepest drawn first. As in the authors' notebook the last block's curve is left out."""
    n = table["block"].max() + 1
    colormap = plt.get_cmap(DEPTH_COLORMAP)
    for block in reversed(range(n - 1 if leave_out_last else n)):
        curve = table[table["block"] == block].sort_values("entry")
        ax.plot(curve["frequency"], curve["delta_log_amplitude"], color=colormap(normalized_depth(n)[block]))
    ax.set_xlim(0, 1)
    ax.set_xlabel("Frequency")
    ax.set_ylabel(r"$\Delta$ Log amplitude")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%.1fπ"))
    ax.figure.colorbar(plt.cm.ScalarMappable(Normalize(0, 1), DEPTH_COLORMAP), ax=ax, label="Normalized depth")


def spectrum_image(ax, spectrum):
    """A shifted 2-D log-amplitude spectrum with its frequency axes (units of π, zero in the middle)."""
    height, width = spectrum.shape[-2:]

    def edges(size):  # outer edges of the first and last pixel; a pixel spans 2/size in units of π
        low, high = shifted_frequencies(size)[[0, -1]].tolist()
        return low - 1.0 / size, high + 1.0 / size

    image = ax.imshow(np.asarray(spectrum, dtype=float), cmap="magma", origin="lower", extent=(*edges(width), *edges(height)))
    ax.set_xlabel("Frequency (π)")
    ax.set_ylabel("Frequency (π)")
    ax.figure.colorbar(image, ax=ax, label="Log amplitude")


def short(name, width=32):
    """A model specification short enough for an axis label: its keywords become "(…)", then it is cut to `width`."""
    name = name if len(name) <= width or "(" not in name else name.split("(", 1)[0] + "(…)"
    return name if len(name) <= width else name[:width - 1] + "…"


def similarity_heatmap(ax, matrix, blocks_a, blocks_b):
    """A block-by-block similarity `matrix` (rows: `blocks_a`, input at the bottom left) with strips along both
    axes coloured by block kind, and a legend of the kinds present."""
    image = ax.imshow(np.asarray(matrix), origin="lower", cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.figure.colorbar(image, ax=ax, label="CKA", pad=0.02)
    index = {kind: i for i, kind in enumerate(KIND_COLORS)}
    kinds = [[b.shade for b in blocks] for blocks in (blocks_a, blocks_b)]
    for bounds, strip_kinds, vertical in (([0, -0.05, 1, 0.035], kinds[1], False),
                                          ([-0.05, 0, 0.035, 1], kinds[0], True)):
        strip = ax.inset_axes(bounds)
        codes = np.array([[index[k] for k in strip_kinds]])  # 1, blocks
        strip.imshow(codes.T if vertical else codes, origin="lower", aspect="auto",
                     cmap=ListedColormap(list(KIND_COLORS.values())), vmin=-0.5, vmax=len(KIND_COLORS) - 0.5)
        strip.set_axis_off()
    ax.set_xticks([]), ax.set_yticks([])
    present = [k for k in KIND_COLORS if k in kinds[0] + kinds[1]]
    ax.legend([Patch(color=KIND_COLORS[k]) for k in present], present, loc="upper left", bbox_to_anchor=(1.25, 1),
              frameon=False, title="block kind")
    return image


def symlog_bins(values, linthresh, count=60):
    """`count` histogram bin edges, even on a symmetric-log axis, spanning +-1.05 max|values| (Hessian spectra)."""
    limit = np.arcsinh(np.abs(values).max() * 1.05 / linthresh)
    return np.sinh(np.linspace(-limit, limit, count)) * linthresh


def symlog_axis(ax, linthresh, limit):
    """A symmetric-log x axis over [-limit, limit] with ticks only at 0 and at every other power of ten (at most
    three a side), as 10^n labels, so that labels never collide."""
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlim(-limit, limit)
    powers = np.arange(np.ceil(np.log10(linthresh)), np.floor(np.log10(limit)) + 1)
    powers = powers[::max(1, int(np.ceil(len(powers) / 3)))]
    ticks = sorted([0.0, *(10.0 ** powers), *(-(10.0 ** powers))])
    ax.set_xticks(ticks, ["0" if t == 0 else f"{'-' if t < 0 else ''}$10^{{{int(np.log10(abs(t)))}}}$" for t in ticks])
    ax.xaxis.set_minor_locator(plt.NullLocator())


def eigenvalue_density(ax, samples, *, excluded=None):
    """Histograms, as densities on one symmetric-log axis, of each model's eigenvalues (`samples`: name -> array),
    the positive and negative parts together; `excluded` (name -> count) adds to each label how many batches were
    left out as unconverged."""
    pooled = np.concatenate([np.asarray(v, dtype=float) for v in samples.values()] or [np.zeros(1)])
    limit = max(np.abs(pooled).max() * 1.05, 1e-3)
    linthresh = max(1e-3, min((np.abs(v).max() for v in samples.values() if len(v)), default=1.0) / 100)
    bins = symlog_bins(pooled, linthresh) if np.abs(pooled).max() > 0 else 60
    for name in dict.fromkeys([*samples, *(excluded or {})]):
        values, left_out, color = samples.get(name, []), (excluded or {}).get(name, 0), model_style(name)[1]
        label = f"{name} ({len(values)} values" + (f"; {left_out} unconverged batches left out)" if left_out else ")")
        if len(values):
            ax.hist(values, bins=bins, density=True, histtype="step", lw=1.5, color=color, label=label)
        else:
            ax.plot([], [], color=color, label=label)
    ax.axvline(0, color="black", lw=0.5)
    if not any(len(values) for values in samples.values()):
        ax.set_ylim(1e-2, 1)  # nothing to draw: a log axis needs limits all the same
        ax.text(0.5, 0.5, "no converged batch", transform=ax.transAxes, ha="center", color="dimgray")
    ax.set_yscale("log")
    symlog_axis(ax, linthresh, limit)
    ax.legend(fontsize=7)


def loss_landscapes(tables, *, clip=42):
    """Fig. 1a: per model (a dict of name -> landscape table), the surface and the contours of the loss minus its
    minimum, on one scale for every model; like the authors' plot, values more than `clip` above the minimum (and
    infinite NLLs) are left out. A one-dimensional slice is drawn as curves, a single point as a bar."""
    grids = {name: as_grid(table) for name, table in tables.items()}
    if all(min(z.shape) > 1 for _, _, z in grids.values()):
        fig = plt.figure(figsize=(9, 4 * len(grids)))
        for row, (name, (x, y, z)) in enumerate(grids.items()):
            finite = z[np.isfinite(z)]
            z = z - finite.min() if finite.size else np.full_like(z, np.nan)  # all infinite: nothing to draw
            hidden = ~(z <= clip)  # also NaN: infinite NLLs
            z[hidden] = np.nan
            title = name + (f"\n{hidden.sum()} of {z.size} points left out (infinite or > min + {clip})"
                            if hidden.any() else "")
            surface = fig.add_subplot(len(grids), 2, 2 * row + 1, projection="3d")
            surface.plot_surface(x, y, z, cmap="plasma", vmin=0, vmax=clip, rcount=len(z), ccount=len(z), linewidth=0)
            surface.view_init(elev=15, azim=15)
            surface.set(title=title, xlabel="x", ylabel="y", zlabel="NLL + L2 - min", zlim=(0, clip))
            contour = fig.add_subplot(len(grids), 2, 2 * row + 2)
            lines = contour.contour(x, y, z, levels=np.arange(0, clip + 1, 3), cmap="plasma", vmin=0, vmax=clip)
            contour.clabel(lines, fontsize=7)
            contour.set(title=title, xlabel="x", ylabel="y", aspect="equal")
        fig.tight_layout()
        return fig
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, table in tables.items():
        line = table[table.y == 0].sort_values("x")
        ax.plot(line.x, line.loss, marker=model_style(name)[0], label=name)
    ax.set(xlabel="x (y = 0)", ylabel="NLL + L2")
    ax.legend()
    return fig


def as_grid(table, column="loss"):
    """(X, Y, Z) 2-D arrays, rows along y and columns along x, from a table of grid points."""
    z = table.drop_duplicates(["x", "y"]).pivot(index="y", columns="x", values=column)
    x, y = np.meshgrid(z.columns.to_numpy(), z.index.to_numpy())
    return x, y, z.to_numpy()


def standing(ax, table, model, references, *, limit=1.5):
    """Where `model` stands on each statistic of `diagnosis.standing`'s `table` that has a scale: a point per statistic
    on an axis from `references[0]` (0) to `references[1]` (1), the middle third ("between") shaded, the scale written
    beside each point; a point beyond `limit` (or below 1 - `limit`) sits at the edge, its value written there."""
    placed = table[table.scale.notna()]
    y = np.arange(len(placed))[::-1]
    marker, color = model_style(model)
    ax.axvspan(1 / 3, 2 / 3, color="tab:gray", alpha=0.15, lw=0)
    for end, name in enumerate(references):
        ax.axvline(end, color=model_style(name)[1], lw=1.5)
    shown = placed.scale.clip(1 - limit, limit).to_numpy()
    ax.scatter(shown, y, marker=marker, color=color, s=50, zorder=3, label=model)
    for x, value, height in zip(shown, placed.scale, y):
        ax.annotate(f"{value:.2f}", (x, height), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
    labels = [textwrap.shorten(f"{figure}: {statistic}", 70, placeholder=" ...")
              for figure, statistic in zip(placed.figure, placed.statistic)]
    ax.set_yticks(y, [textwrap.fill(label, 40) for label in labels], fontsize=7)
    ax.set_xticks([0, 0.5, 1], [f"{references[0]} (0)", "between", f"{references[1]} (1)"], fontsize=8)
    ax.set(xlim=(1 - limit - 0.1, limit + 0.1), ylim=(-0.7, max(len(placed), 1) - 0.3))
    if placed.empty:
        ax.text(0.5, 0.5, "no statistic with a value for all three models", transform=ax.transAxes, ha="center",
                color="dimgray")


def use_style():
    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False})
