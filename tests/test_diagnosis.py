"""helpers.diagnosis: where a model stands between ResNet-50 and ViT-Ti, on constructed tables whose places are worked
out by hand in each test; the configuration the notebook builds its sweeps from."""
import math

import numpy as np
import pandas as pd
import pytest

from helpers import diagnosis, lesion
from helpers.diagnosis import Measure, place


def test_a_statistic_both_references_have_places_the_model_on_the_scale():
    cnn, vit = Measure("resnet_50", 10.0, None), Measure("vit_ti", 2.0, None)
    # scale = (yours - 10) / (2 - 10): 4 -> 0.75, 6 -> 0.5, 8 -> 0.25, 12 -> -0.25
    assert place(Measure("mine", 4.0, None), cnn, vit)[:2] == (0.75, "like vit_ti")
    assert place(Measure("mine", 6.0, None), cnn, vit)[:2] == (0.5, "between")
    assert place(Measure("mine", 8.0, None), cnn, vit)[:2] == (0.25, "like resnet_50")
    assert place(Measure("mine", 12.0, None), cnn, vit)[:2] == (-0.25, "like resnet_50")
    scale, position, basis = place(Measure("mine", 4.0, None), cnn, Measure("vit_ti", 10.0, None))
    assert math.isnan(scale) and position == "cannot place" and "resnet_50 and vit_ti do not differ here" in basis


def test_references_that_differ_by_noise_or_are_infinite_place_nothing():
    # defect 5: 10 against 10.4 differ by 0.4, within 5 % of 10.4 (0.52): a scale over them would be noise; 10 against
    # 11 differ by 1 > 0.55; an infinite reference, or two zeros, span no scale either
    mine, cnn = Measure("mine", 10.2, None), Measure("resnet_50", 10.0, None)
    scale, position, basis = place(mine, cnn, Measure("vit_ti", 10.4, None))
    assert math.isnan(scale) and position == "cannot place" and basis.startswith(
        "resnet_50 and vit_ti do not differ here (10 vs 10.4")
    assert place(mine, cnn, Measure("vit_ti", 11.0, None))[:2] == (pytest.approx(0.2), "like resnet_50")
    infinite = place(mine, cnn, Measure("vit_ti", math.inf, None))
    assert infinite[1:] == ("cannot place", "the value of vit_ti is infinite")
    zeros = place(Measure("mine", 0.1, None), Measure("resnet_50", 0.0, None), Measure("vit_ti", 0.0, None))
    assert zeros[1] == "cannot place" and "do not differ here" in zeros[2]
    beyond = place(Measure("mine", math.inf, None), cnn, Measure("vit_ti", 2.0, None))  # an infinite value of yours
    assert beyond[:2] == (-math.inf, "like resnet_50")


def test_a_statistic_of_one_reference_compares_the_verdicts():
    cnn = Measure("resnet_50", math.nan, None, "resnet_50 has no block of kind msa")
    vit = Measure("vit_ti", 0.8, True)
    scale, position, basis = place(Measure("mine", 0.6, True), cnn, vit)
    assert math.isnan(scale) and position == "like vit_ti"
    assert basis == "the claim holds for it and holds for vit_ti (resnet_50 has no block of kind msa)"
    assert place(Measure("mine", 0.4, False), cnn, vit)[1] == "unlike vit_ti"
    missing = Measure("mine", math.nan, None, "mine has no block of kind msa")
    assert place(missing, cnn, vit)[1:] == ("not measured", "mine has no block of kind msa")


def highest(model, kinds, values):
    return pd.DataFrame({"model": model, "block": range(len(kinds)), "kind": kinds, "shade": kinds,
                         "delta_log_amplitude": values})


def eigenvalues(model, values, msa):
    return pd.DataFrame({"model": [model], "weight_decay": [0.05], "batch": [0], "converged": [True],
                         "magnitude": [np.array(values, dtype=float)], "msa": [msa]})


def test_standing_places_the_model_claim_by_claim():
    kinds = ["embed", "msa", "mlp", "msa", "mlp"]
    maps = pd.concat([highest("resnet_50", ["embed", "conv", "conv", "conv"], [0.0, 1.0, 0.5, 1.5]),  # conv 2 of 3
                      highest("mine", kinds, [0.0, 1.0, 2.0, 2.5, 3.0]),  # msa +1, +0.5: 0 of 2; mlp +1, +0.5: 2 of 2
                      highest("vit_ti", kinds, [0.0, -1.0, -0.5, -1.5, -1.0])])  # msa -1, -1; mlp +0.5, +0.5
    # positive λ: resnet_50 10, 20 (median 15, largest 20), mine 4, vit_ti 2: median (4 - 15) / (2 - 15) = 11/13,
    # largest (4 - 20) / (2 - 20) = 16/18; negative share 0, 0.5, 0.5 -> 1
    spectra = pd.concat([eigenvalues("resnet_50", [10, 20], False), eigenvalues("mine", [4, -3], True),
                         eigenvalues("vit_ti", [-1, 2], True)])
    standing = diagnosis.standing({"fourier": maps, "hessian": spectra, "lesion": pd.DataFrame()}, "mine")
    rows = standing.set_index(standing.statistic.str.split().str[:3].str.join(" "))
    assert rows.loc["share of msa", "position"] == "unlike vit_ti" and rows.loc["share of msa", "yours"] == 0.0
    assert rows.loc["share of conv", ["resnet_50", "position", "basis"]].tolist() == [
        pytest.approx(2 / 3), "not measured", "mine has no block of kind conv"]
    assert rows.loc["share of mlp", "position"] == "like vit_ti"
    assert rows.loc["median positive λ", "scale"] == pytest.approx(11 / 13)
    assert rows.loc["median positive λ", ["resnet_50", "yours", "vit_ti", "position"]].tolist() == [
        15.0, 4.0, 2.0, "like vit_ti"]
    assert rows.loc["largest positive λ", "scale"] == pytest.approx(16 / 18)
    assert rows.loc["share of negative", "scale"] == 1.0
    lesions = standing[standing.figure == "Sec. 4"].iloc[0]
    assert lesions.position == "cannot place" and lesions.basis == "the table is empty"
    assert list(standing.columns) == ["figure", "statistic", "resnet_50", "yours", "vit_ti", "scale", "position",
                                      "basis"] and len(standing) == 7


def test_the_config_lines_the_model_up_between_the_references_and_makes_each_sweeps_config(tmp_path):
    config = diagnosis.Config(model="pit_ti", smoke=True, results=str(tmp_path)).resolved()
    assert config.names() == ["resnet_50", "pit_ti", "vit_ti"] and config.images == 4 and config.max_steps == 1
    assert diagnosis.Config(model="vit_ti").names() == ["resnet_50", "vit_ti"]
    sweep = config.sweep(lesion.Config, images=config.images, batch_size=config.batch_size)
    assert sweep.models == config.names() and sweep.results == str(tmp_path) and sweep.images == 4 and sweep.smoke
    mine = diagnosis.Config(model="timm:convnext_atto", checkpoint="mine.pth")
    assert mine.sweep(lesion.Config).checkpoints == {"timm:convnext_atto": "mine.pth"}
    assert mine.figure_name("lesion") == "diagnose_timm-convnext_atto_lesion"
    with pytest.raises(ValueError, match="smoke run uses fresh weights"):
        diagnosis.Config(smoke=True, checkpoint="mine.pth")
    with pytest.raises(ValueError, match="ImageNet"):
        diagnosis.Config(model="timm:resnet18.a1_in1k")
    with pytest.raises(ValueError, match="Unknown model"):
        diagnosis.Config(model="resnet_5O")
