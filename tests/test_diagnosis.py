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
    assert math.isnan(scale) and position == "cannot place" and "the same value" in basis


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


def eigenvalues(model, values):
    return pd.DataFrame({"model": [model], "weight_decay": [0.05], "batch": [0], "converged": [True],
                         "magnitude": [np.array(values, dtype=float)]})


def test_standing_places_the_model_claim_by_claim():
    kinds = ["embed", "msa", "mlp", "msa", "mlp"]
    maps = pd.concat([highest("resnet_50", ["embed", "conv", "conv"], [0.0, 1.0, 0.5]),  # conv +1, -0.5: 1 of 2
                      highest("mine", kinds, [0.0, 1.0, 2.0, 1.5, 2.0]),  # msa +1, -0.5: 1 of 2; mlp +1, +0.5
                      highest("vit_ti", kinds, [0.0, -1.0, -0.5, -1.5, -1.0])])  # msa -1, -1; mlp +0.5, +0.5
    # median |λ|: resnet_50 15, mine 3.5, vit_ti 1.5 -> (3.5 - 15) / (1.5 - 15) = 0.85; negative 0, 0.5, 0.5 -> 1
    spectra = pd.concat([eigenvalues("resnet_50", [10, 20]), eigenvalues("mine", [4, -3]),
                         eigenvalues("vit_ti", [-1, 2])])
    standing = diagnosis.standing({"fourier": maps, "hessian": spectra, "lesion": pd.DataFrame()}, "mine",
                                  msa_models=["mine", "vit_ti"])
    rows = standing.set_index(standing.statistic.str.split().str[:3].str.join(" "))
    assert rows.loc["share of msa", "position"] == "unlike vit_ti" and rows.loc["share of msa", "yours"] == 0.5
    assert rows.loc["share of conv", ["resnet_50", "position", "basis"]].tolist() == [
        0.5, "not measured", "mine has no block of kind conv"]
    assert rows.loc["share of mlp", "position"] == "like vit_ti"
    assert rows.loc["median |λ| of", "scale"] == pytest.approx(11.5 / 13.5)
    assert rows.loc["median |λ| of", ["resnet_50", "yours", "vit_ti", "position"]].tolist() == [
        15.0, 3.5, 1.5, "like vit_ti"]
    assert rows.loc["share of negative", "scale"] == 1.0
    lesions = standing[standing.figure == "Sec. 4"].iloc[0]
    assert lesions.position == "cannot place" and lesions.basis == "the table is empty"
    assert list(standing.columns) == ["figure", "statistic", "resnet_50", "yours", "vit_ti", "scale", "position",
                                      "basis"] and len(standing) == 6


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
