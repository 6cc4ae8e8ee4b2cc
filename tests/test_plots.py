"""helpers.plots: the depth axis and shading line up with the authors' hand-typed index lists."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import alternet, models, plots  # noqa: E402
from helpers.blocks import split  # noqa: E402
from helpers.common import saved_run  # noqa: E402

# From the authors' fourier_analysis.ipynb / featuremap_variance.ipynb: indices into the non-head blocks,
# each shading [(i - 1)/depth, i/depth] with depth = number of non-head blocks - 1.
AUTHORS = {"resnet_50": {"pools": [4, 8, 14], "msas": [], "depth": 16},
           "vit_ti": {"pools": [], "msas": list(range(1, 24, 2)), "depth": 24}}


def spans(ax, color):
    rgba = matplotlib.colors.to_rgba(color, 0.15)
    return sorted((round(p.get_x(), 9), round(p.get_x() + p.get_width(), 9)) for p in ax.patches
                  if np.allclose(p.get_facecolor(), rgba))


@pytest.mark.parametrize("name", list(AUTHORS))
def test_shading_matches_the_authors_index_lists(name):
    authors = AUTHORS[name]
    fig, ax = plt.subplots()
    plots.shade_kinds(ax, split(models.create(name)))  # the head is part of the Blocks and left off the axis
    depth = authors["depth"]
    assert spans(ax, "tab:blue") == [(round((i - 1) / depth, 9), round(i / depth, 9)) for i in authors["pools"]]
    assert spans(ax, "tab:gray") == [(round((i - 1) / depth, 9), round(i / depth, 9)) for i in authors["msas"]]
    assert ax.get_xlim() == (0, 1)
    plt.close(fig)


def test_depth_curve_puts_block_i_at_i_over_n_minus_1():
    blocks = split(models.create("vit_ti"))
    fig, ax = plt.subplots()
    plots.depth_curve(ax, blocks, np.arange(25.0), color="tab:red")
    x, y = ax.lines[0].get_data()
    assert np.allclose(x, np.arange(25) / 24) and np.allclose(y, np.arange(25))
    with pytest.raises(ValueError, match="26 values for 25 non-head blocks"):
        plots.depth_curve(ax, blocks, np.arange(26.0))
    plots.depth_curve(ax, blocks, np.arange(25.0), highlight=3)  # coloured by depth, the authors' Fig. 8
    plt.close(fig)


def test_frequency_curves_leave_out_the_last_block_like_the_authors():
    table = pd.DataFrame([{"block": b, "entry": k, "frequency": k / 4, "delta_log_amplitude": -b * k}
                          for b in range(3) for k in range(4)])
    fig, ax = plt.subplots()
    plots.frequency_curves(ax, table)
    assert len(ax.lines) == 2
    assert np.allclose(ax.lines[-1].get_ydata(), [0, 0, 0, 0])  # shallowest drawn last, on top
    plt.close(fig)


def test_spectrum_image_axes_are_the_shifted_frequencies():
    fig, ax = plt.subplots()
    plots.spectrum_image(ax, torch.zeros(4, 4))
    assert np.allclose(ax.images[0].get_extent(), [-1.25, 0.75, -1.25, 0.75])  # pixel centres -1, -0.5, 0, 0.5
    plt.close(fig)


def test_save_writes_png_pdf_csv_and_depths(tmp_path):
    fig, ax = plt.subplots()
    paths = plots.save(fig, "x", tmp_path, table={"a": [1, 2]}, run="official")
    assert all(p.exists() for p in paths) and [p.suffix for p in paths] == [".png", ".pdf", ".csv", ".json"]
    assert plots.model_style("resnet_50") == plots.model_style("resnet_18 (authors)") == ("D", "tab:blue")
    assert plots.model_style("vit_s")[0] == "o" and plots.model_style("pit_ti")[0] == "s"
    other = plots.model_style("timm:convnext_atto")  # outside the registry: a style none of the authors' models has
    assert other not in models.STYLES.values() and other == plots.model_style("timm:convnext_atto (fresh)")
    assert plots.model_style("my_net.py:build") != other  # another model, another style (these two differ)
    plt.close(fig)


def test_a_long_specification_is_shortened_for_an_axis_label():
    assert plots.short("vit_ti") == "vit_ti"
    assert plots.short("timm:deit_tiny_patch16_224(img_size=32, patch_size=4)") == "timm:deit_tiny_patch16_224(…)"
    assert plots.short("a" * 40) == "a" * 31 + "…"


def test_a_saved_table_records_what_its_numbers_rest_on(tmp_path):
    fig, _ = plt.subplots()
    csv = plots.save(fig, "x", tmp_path, table={"a": [1, 2]}, run="smoke")[2]
    assert saved_run(csv) == "smoke" and list(pd.read_csv(csv).columns) == ["a"]  # the table itself is unchanged
    plots.save(fig, "x", tmp_path, table={"a": [3]}, run="unverified")  # a real run over the smoke run's files
    assert saved_run(csv) == "unverified"
    plots.save(fig, "y", tmp_path, run="official")  # a figure without a table has no record
    assert not (tmp_path / "y.json").exists() and saved_run(tmp_path / "y.csv") is None
    (tmp_path / "x.json").write_text("{damaged")
    assert saved_run(csv) is None  # unknown, not a guess
    (tmp_path / "x.json").write_text('{"smoke": true}')  # recorded before runs were: a smoke run is still said
    assert saved_run(csv) == "smoke"
    (tmp_path / "x.json").write_text('{"smoke": false}')
    assert saved_run(csv) is None  # not a smoke run, but what it rests on was not recorded
    with pytest.raises(ValueError, match="'real' is none of smoke, unverified, user, official"):
        plots.save(fig, "z", tmp_path, table={"a": [1]}, run="real")
    assert not list(tmp_path.glob("z.*"))
    plt.close(fig)


def test_arrays_in_cells_are_saved_as_json_lists_at_full_precision(tmp_path):
    fig, _ = plt.subplots()
    table = pd.DataFrame({"model": ["a", "b"], "magnitude": [np.array([1 / 3, -2e-12]), np.array([np.inf])]})
    csv = plots.save(fig, "x", tmp_path, table=table, run="user")[2]
    saved = pd.read_csv(csv)
    assert [json.loads(cell) for cell in saved.magnitude] == [[1 / 3, -2e-12], [np.inf]]
    plt.close(fig)


def test_similarity_heatmap_marks_block_kinds():
    blocks_a, blocks_b = split(models.create("pit_ti")), split(models.create("resnet_18"))
    fig, ax = plt.subplots()
    image = plots.similarity_heatmap(ax, np.eye(len(blocks_a), len(blocks_b)), blocks_a, blocks_b)
    assert image.get_array().shape == (len(blocks_a), len(blocks_b))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["embed", "conv", "msa", "mlp", "pool", "head"]  # PiT's pools and ResNet's strided blocks
    plt.close(fig)


def test_symlog_bins_are_symmetric_and_cover_the_values():
    values = np.array([-40.0, -0.01, 0.5, 3.0, 120.0])
    bins = plots.symlog_bins(values, linthresh=0.1, count=61)
    assert len(bins) == 61 and bins[30] == pytest.approx(0.0)
    assert np.allclose(bins, -bins[::-1])
    assert bins[0] < values.min() and bins[-1] > values.max() and bins[-1] == pytest.approx(126.0)


def test_eigenvalue_density_ticks_never_collide_and_count_what_was_left_out():
    rng = np.random.default_rng(0)
    samples = {"resnet_50": rng.uniform(-0.5, 300, 200), "vit_ti": np.concatenate([rng.uniform(-40, 20, 200)])}
    fig, ax = plt.subplots(figsize=(5, 3))
    plots.eigenvalue_density(ax, samples, excluded={"vit_ti": 2, "pit_ti": 3})
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    boxes = [t.get_window_extent() for t in labels]
    assert 3 <= len(labels) <= 7 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["resnet_50 (200 values)", "vit_ti (200 values; 2 unconverged batches left out)",
                      "pit_ti (0 values; 3 unconverged batches left out)"]
    lo, hi = ax.get_xlim()
    assert lo < -40 and hi > 300
    plt.close(fig)


def test_build_up_labels_of_tied_variants_are_stacked_not_overprinted():
    # Four variants with one MSA, three of them tied at the baseline's accuracy (as a short budget gives).
    baseline = alternet.BASELINE
    steps = pd.DataFrame({"layout": [baseline, "c4.1", "c3.1", "c2.1", "c1.1"], "msas": [0, 1, 1, 1, 1],
                          "parent": ["", baseline, baseline, baseline, baseline], "accuracy": [0.1, 0.1, 0.1, 0.1, 0.12],
                          "kept": [True, False, False, False, True], "rule_2": [False, False, True, True, True]})
    fig, ax = plt.subplots(figsize=(4, 3))
    plots.build_up(ax, steps)
    fig.canvas.draw()
    texts = [t for t in ax.texts if t.get_text() != "baseline"]
    boxes = [t.get_window_extent() for t in texts]
    assert sorted(t.get_text() for t in texts) == ["+c4.1", "rule 2: +c1.1", "rule 2: +c2.1", "rule 2: +c3.1"]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_a_landscape_says_how_many_points_it_left_out():
    grid = [(x, y) for y in (-1.0, 0.0, 1.0) for x in (-1.0, 0.0, 1.0)]
    loss = [np.inf if (x, y) != (0.0, 0.0) and x == -1.0 else 2.0 + abs(x) + abs(y) for x, y in grid]
    loss[-1] = 100.0  # more than the clip above the minimum
    xs, ys = zip(*grid)
    tables = {"finite": pd.DataFrame({"x": xs, "y": ys, "loss": 2.0 + np.abs(grid).sum(1)}),
              "exploding": pd.DataFrame({"x": xs, "y": ys, "loss": loss})}
    fig = plots.loss_landscapes(tables)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["finite", "finite"]
    assert titles[2:] == ["exploding\n4 of 9 points left out (infinite or > min + 42)"] * 2
    plt.close(fig)
