"""helpers.claims on small tables whose verdicts are worked out by hand in each test, and its command line on a
results folder of smoke tables saved the way the notebooks save them."""
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import claims, plots  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def row(frame, **match):
    """The one verdict of `frame` whose columns contain the strings of `match`."""
    chosen = frame
    for column, value in match.items():
        chosen = chosen[chosen[column].astype(str).str.contains(value, regex=False)]
    assert len(chosen) == 1, (match, frame[["models", "statistic"]])
    return chosen.iloc[0]


def blocks(model, kinds, column, values, shades=None, sizes=None):
    """A figure table of one model, one row per block, as `fourier.highest_frequency` / `variance.variances` give."""
    table = pd.DataFrame({"block": range(len(kinds)), "name": [f"b{i}" for i in range(len(kinds))], "kind": kinds,
                          "shade": shades or kinds, column: values, "model": model})
    return table.assign(size=sizes) if sizes else table


# --- Fig. 2a / 8 ---------------------------------------------------------------------------------------------------

VIT_KINDS = ["embed", "msa", "mlp", "msa", "mlp", "msa", "mlp"]


def test_fourier_holds_when_most_msas_lower_and_most_mlps_raise_the_highest_frequency():
    # changes: msa -1.0, -1.1, +0.2 (2 of 3 lower it, mean -0.6333); mlp +0.6, +1.0, +0.2 (3 of 3 raise it, mean +0.6)
    table = blocks("vit_ti", VIT_KINDS, "delta_log_amplitude", [0.0, -1.0, -0.4, -1.5, -0.5, -0.3, -0.1],
                   sizes=[16] * 7)
    verdicts = claims.fourier(table, smoke=False)
    assert list(verdicts.columns) == list(claims.COLUMNS) and len(verdicts) == 2
    msa, mlp = row(verdicts, statistic="msa"), row(verdicts, statistic="mlp")
    assert msa.value == pytest.approx(2 / 3) and msa.holds is True and msa.n == 3
    assert "mean change -0.633" in msa.comparison
    assert mlp.value == 1.0 and mlp.holds is True and mlp.n == 3 and "+0.6" in mlp.comparison
    assert msa.figure == "Fig. 2a/8" and msa.models == "vit_ti" and msa.smoke is False


def test_fourier_fails_on_lowering_convs_leaves_out_subsampling_and_cannot_judge_msas_of_a_resnet():
    # block 2 subsamples (shade pool, map 32 -> 16): its +3.5 is left out; the convs change by -0.5 and -3.2
    table = blocks("resnet_50", ["embed", "conv", "conv", "conv"], "delta_log_amplitude", [0.0, -0.5, 3.0, -0.2],
                   shades=["embed", "conv", "pool", "conv"], sizes=[32, 32, 16, 16])
    for saved in (table, table.drop(columns="shade")):  # a table saved before `shade`: the size change says it
        verdicts = claims.fourier(saved)
        conv, msa = row(verdicts, statistic="conv"), row(verdicts, statistic="msa")
        assert conv.value == 0.0 and conv.holds is False and conv.n == 2 and "mean change -1.85" in conv.comparison
        assert msa.holds is None and "resnet_50 has no block of kind msa" in msa.comparison and msa.n == 0
        assert conv.smoke is None  # not told


def test_fourier_needs_more_than_half_and_one_row_per_block():
    # msa changes -1 and +1: half is not most
    highest = blocks("vit_ti", ["embed", "msa", "mlp", "msa"], "delta_log_amplitude", [0.0, -1.0, 2.0, 3.0])
    msa = row(claims.fourier(highest, smoke=True), statistic="msa")
    assert msa.value == 0.5 and msa.holds is False and msa.n == 2 and msa.smoke is True
    whole = pd.concat([highest.assign(entry=0, delta_log_amplitude=0.0), highest.assign(entry=1)])  # all frequencies
    (verdict,) = claims.fourier(whole).itertuples()
    assert verdict.holds is None and "more than one row per block" in verdict.comparison


# --- Fig. 9 --------------------------------------------------------------------------------------------------------

def test_variance_holds_fails_and_cannot_judge_a_model_without_msas():
    vit = blocks("vit_ti", VIT_KINDS[:5], "variance", [1.0, 0.5, 2.0, 1.0, 3.0])  # msa -0.5, -1.0; mlp +1.5, +2.0
    bad = blocks("pit_ti", ["embed", "msa", "mlp"], "variance", [1.0, 2.0, 3.0])  # msa +1.0; mlp +1.0
    resnet = blocks("resnet_50", ["embed", "conv", "conv"], "variance", [1.0, 2.0, 0.5],
                    shades=["embed", "conv", "pool"])  # the strided conv's -1.5 is left out: conv +1.0
    verdicts = claims.variance(pd.concat([vit, bad, resnet]))
    assert row(verdicts, models="vit_ti", statistic="msa").holds is True
    assert row(verdicts, models="vit_ti", statistic="msa").value == 1.0
    assert "mean change -0.75" in row(verdicts, models="vit_ti", statistic="msa").comparison
    assert "mean change +1.75" in row(verdicts, models="vit_ti", statistic="mlp").comparison
    assert row(verdicts, models="pit_ti", statistic="msa").holds is False
    assert row(verdicts, models="pit_ti", statistic="mlp").holds is True
    conv = row(verdicts, models="resnet_50", statistic="conv")
    assert conv.holds is True and conv.n == 1 and conv.value == 1.0
    assert row(verdicts, models="resnet_50", statistic="msa").holds is None
    assert len(verdicts) == 6


# --- Fig. 1c / 4 ---------------------------------------------------------------------------------------------------

def hessian_results(model, batches, converged):
    return pd.DataFrame({"weight_decay": 0.05, "batch": range(len(batches)), "converged": converged,
                         "magnitude": [np.array(b, dtype=float) for b in batches], "model": model})


def test_hessian_holds_on_smaller_and_negative_vit_eigenvalues_of_converged_batches():
    # vit_ti pools -1, 2, 3, -0.5 (the unconverged +-100 left out): median |λ| (1 + 2)/2 = 1.5, negative 2 of 4
    # resnet_50 pools 10, 20, 30, 5: median (10 + 20)/2 = 15, negative 0 of 4
    table = pd.concat([hessian_results("vit_ti", [[-1, 2], [3, -0.5], [100, -100]], [True, True, False]),
                       hessian_results("resnet_50", [[10, 20], [30, 5]], [True, True])])
    verdicts = claims.hessian(table, smoke=False)
    median, negative = row(verdicts, statistic="median"), row(verdicts, statistic="negative")
    assert median.models == "vit_ti vs resnet_50" and median.value == 1.5 and median.holds is True and median.n == 8
    assert "vit_ti 1.5 vs resnet_50 15" in median.comparison and "NLL + L2 (wd 0.05)" in median.statistic
    assert negative.value == 0.5 and negative.holds is True


def test_hessian_fails_on_the_saved_pooled_table_and_cannot_judge_without_a_pair():
    # vit_ti 50, 60: median 55 > resnet_50's |5|, |-1| median 3; negative 0 < 0.5
    saved = pd.DataFrame({"loss": "NLL", "model": ["vit_ti", "vit_ti", "resnet_50", "resnet_50"],
                          "eigenvalue": [50.0, 60.0, 5.0, -1.0]})
    verdicts = claims.hessian(saved)
    assert row(verdicts, statistic="median").value == 55 and row(verdicts, statistic="median").holds is False
    assert row(verdicts, statistic="negative").holds is False and row(verdicts, statistic="negative").n == 4
    resnets = claims.hessian(saved.replace({"vit_ti": "resnet_18"}))
    assert resnets.holds.isna().all() and "resnet_18: no MSA block" in resnets.comparison[0]
    unconverged = claims.hessian(hessian_results("vit_ti", [[1, 2]], [False]))
    assert unconverged.holds.isna().all() and "no converged batch" in unconverged.comparison[0]


def test_which_model_plays_vit_is_read_off_its_blocks_or_given():
    assert claims.has_msa("vit_ti (authors)") is True and claims.has_msa("resnet_50") is False
    assert claims.has_msa("mine.py:net") is None
    saved = pd.DataFrame({"model": ["mine", "theirs"], "eigenvalue": [1.0, 9.0]})
    assert "mine: unknown (pass msa_models)" in claims.hessian(saved).comparison[0]
    given = claims.hessian(saved, msa_models=["mine"])
    assert row(given, statistic="median").models == "mine vs theirs" and row(given, statistic="median").holds is True


# --- Fig. 1a -------------------------------------------------------------------------------------------------------

def grid(model, centre, curvature):
    """A 3 x 3 grid over [-1, 1]^2 of loss = centre + curvature (x^2 + y^2): the edge ring is its 8 outer points,
    4 rising by curvature and 4 corners by 2 curvature, so the mean rise is 1.5 curvature and the max 2 curvature."""
    x, y = np.meshgrid([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0])
    loss = centre + curvature * (x**2 + y**2)
    return pd.DataFrame({"model": model, "x": x.ravel(), "y": y.ravel(), "loss": loss.ravel()})


def test_landscape_holds_when_the_msa_model_rises_less_to_the_edge():
    verdicts = claims.landscape(pd.concat([grid("vit_ti", 1.0, 0.5), grid("resnet_50", 2.0, 3.0)]), smoke=True)
    mean, top = row(verdicts, statistic="mean rise"), row(verdicts, statistic="max rise")
    assert mean.value == 0.75 and mean.holds is True and "resnet_50 4.5" in mean.comparison and mean.n == 16
    assert top.value == 1.0 and top.holds is True and "resnet_50 6" in top.comparison


def test_landscape_fails_compares_only_models_of_one_label_and_cannot_judge_a_single_point():
    table = pd.concat([grid("vit_ti", 1.0, 3.0), grid("resnet_50", 1.0, 0.5),  # ours: ViT is the sharper one
                       grid("vit_ti (authors)", 2.5, 0.1), grid("resnet_50 (authors)", 2.2, 0.4)])
    verdicts = claims.landscape(table)
    assert sorted(set(verdicts.models)) == ["vit_ti (authors) vs resnet_50 (authors)", "vit_ti vs resnet_50"]
    assert row(verdicts, models="vit_ti vs", statistic="mean").holds is False
    assert row(verdicts, models="(authors) vs", statistic="mean").value == pytest.approx(0.15)
    assert row(verdicts, models="(authors) vs", statistic="max").holds is True
    apart = claims.landscape(pd.concat([grid("vit_ti (authors)", 2.5, 0.1), grid("resnet_50", 2.2, 0.4)]))
    assert apart.holds.isna().all() and "of the same label" in apart.comparison[0]
    centre = pd.DataFrame({"model": ["vit_ti", "resnet_50"], "x": 0.0, "y": 0.0, "loss": [1.0, 2.0]})
    single = claims.landscape(centre)
    assert single.holds.isna().all() and "no value for vit_ti" in single.comparison[0]


# --- Fig. 2b -------------------------------------------------------------------------------------------------------

def drops(model, by_frequency):
    return pd.DataFrame({"model": model, "epsilon": 0.7, "frequency": list(by_frequency),
                         "accuracy_drop": list(by_frequency.values())})


def test_robustness_holds_when_vit_loses_less_at_high_frequency_and_resnet_more():
    table = pd.concat([drops("vit_ti", {0.1: 0.30, 0.5: 0.20, 0.9: 0.05}), drops("resnet_50", {0.1: 0.10, 0.9: 0.40})])
    verdicts = claims.robustness(table, smoke=False)
    vit = row(verdicts, models="vit_ti", statistic="minus")
    resnet = row(verdicts, models="resnet_50", statistic="minus")
    assert vit.value == pytest.approx(-0.25) and vit.holds is True and "negative (MSAs)" in vit.comparison
    assert resnet.value == pytest.approx(0.30) and resnet.holds is True and "positive (no MSA)" in resnet.comparison
    pair = row(verdicts, models="vit_ti vs resnet_50")
    assert pair.value == 0.05 and pair.holds is True and pair.statistic == "accuracy drop at 0.9π"


def test_robustness_fails_and_cannot_judge_a_missing_band_or_a_lone_resnet():
    table = pd.concat([drops("vit_ti", {0.1: 0.1, 0.9: 0.5}), drops("resnet_50", {0.1: 0.3, 0.9: 0.2})])
    verdicts = claims.robustness(table)
    assert verdicts.holds.tolist() == [False, False, False]  # vit +0.4, resnet -0.1, at 0.9π 0.5 > 0.2
    lone = claims.robustness(drops("resnet_50", {0.1: 0.1}))
    assert "a band is not measured" in row(lone, statistic="minus").comparison
    (pair,) = lone[lone.statistic == "accuracy drop at 0.9π"].itertuples()
    assert pair.holds is None and "resnet_50: no MSA block" in pair.comparison


# --- Sec. 4 --------------------------------------------------------------------------------------------------------

def lesion_table(model, kinds, stage_ends, accuracy_drop):
    return pd.DataFrame({"model": model, "block": [f"b{i}" for i in range(len(kinds))], "kind": kinds,
                         "removable": [k not in ("embed", "pool") for k in kinds],
                         "stage_end": [i in stage_ends for i in range(len(kinds))], "accuracy_drop": accuracy_drop})


def test_lesion_holds_when_the_last_msa_of_a_stage_costs_the_most():
    # one stage ending with an MLP: its last MSA is block 5 (drop 0.10) against blocks 1 and 3 (mean 0.03)
    table = lesion_table("vit_ti", VIT_KINDS, {6}, [np.nan, 0.02, 0.01, 0.04, 0.01, 0.10, 0.03])
    verdict = claims.lesion(table, smoke=True).iloc[0]
    assert verdict.value == pytest.approx(0.07) and verdict.holds is True and verdict.n == 3
    assert "10.00 % over 1 stage-end MSAs vs 3.00 % over the other 2" in verdict.comparison


def test_lesion_fails_across_stages_and_cannot_judge_without_msas_or_without_other_msas():
    # stages end at blocks 2 and 7; stage-end MSAs 1 (0.05) and 6 (0.02), mean 0.035, against block 4's 0.08
    kinds = ["embed", "msa", "mlp", "pool", "msa", "mlp", "msa", "mlp"]
    pit = lesion_table("pit_ti", kinds, {2, 7}, [np.nan, 0.05, 0.01, np.nan, 0.08, 0.01, 0.02, 0.01])
    resnet = lesion_table("resnet_50", ["embed", "conv", "conv"], {1, 2}, [np.nan, 0.2, 0.3])
    ends_only = lesion_table("alternet_50", ["embed", "conv", "msa", "conv", "msa"], {2, 4},
                             [np.nan, 0.1, 0.2, 0.1, 0.3])
    verdicts = claims.lesion(pd.concat([pit, resnet, ends_only]))
    pit, resnet = row(verdicts, models="pit_ti"), row(verdicts, models="resnet_50")
    assert pit.value == pytest.approx(-0.045) and pit.holds is False and pit.n == 3
    assert resnet.holds is None and "resnet_50 has no MSA block" in resnet.comparison
    assert "every MSA block ends its stage" in row(verdicts, models="alternet_50").comparison


# --- the accuracy table ----------------------------------------------------------------------------------------------

def test_accuracy_within_a_point_of_the_paper():
    table = pd.DataFrame({"model": ["resnet_50", "vit_ti", "alternet_18"], "paper_accuracy": [82.9, 66.6, np.nan],
                          "accuracy": [82.5, 64.0, 70.0], "count": 10000})
    verdicts = claims.accuracy(table, smoke=False)
    assert verdicts.holds.tolist() == [True, False, None] and verdicts.n.tolist()[:2] == [10000, 10000]
    assert "-0.40 points" in verdicts.comparison[0] and "-2.60 points" in verdicts.comparison[1]
    assert "the paper reports no accuracy for alternet_18" in verdicts.comparison[2]
    fractions = claims.accuracy(table.assign(accuracy=table.accuracy / 100).drop(columns="count"), percent=False)
    assert fractions.value[0] == pytest.approx(82.5) and fractions.n[0] is None


@pytest.mark.parametrize("claim", [claims.fourier, claims.variance, claims.hessian, claims.landscape,
                                   claims.robustness, claims.lesion, claims.accuracy])
def test_an_empty_table_cannot_decide(claim):
    (verdict,) = claim(pd.DataFrame(), smoke=True).to_dict("records")
    assert verdict["holds"] is None and verdict["comparison"] == "cannot decide: the table is empty"
    assert verdict["smoke"] is True and verdict["figure"] == claims.CLAIMS[claim.__name__][0]


# --- every model's own numbers, and the verdicts as a notebook shows them ------------------------------------------

def test_measurements_give_every_model_its_own_value_of_a_pair_statistic():
    # medians: vit_ti |-1|, 2 -> 1.5; resnet_50 10, 20 -> 15; swin_ti |-3|, 4 -> 3.5; negative 1/2, 0, 1/2
    table = pd.concat([hessian_results("vit_ti", [[-1, 2]], [True]), hessian_results("resnet_50", [[10, 20]], [True]),
                       hessian_results("swin_ti", [[4, -3], [99, 99]], [True, False])])
    measured = claims.measurements("hessian", table, msa_models=["vit_ti", "swin_ti"])
    median = measured[measured.statistic.str.startswith("median")].set_index("model")
    negative = measured[measured.statistic.str.startswith("share of negative")].set_index("model")
    assert median.value.to_dict() == {"vit_ti": 1.5, "resnet_50": 15.0, "swin_ti": 3.5}
    assert negative.value.to_dict() == {"vit_ti": 0.5, "resnet_50": 0.0, "swin_ti": 0.5}
    assert median.holds.isna().all() and set(measured.figure) == {"Fig. 1c/4"} and len(measured) == 6


def test_measurements_keep_each_models_verdict_and_say_which_model_lacks_a_kind():
    vit = blocks("vit_ti", VIT_KINDS, "delta_log_amplitude", [0.0, -1.0, -0.4, -1.5, -0.5, -0.3, -0.1])
    resnet = blocks("resnet_50", ["embed", "conv", "conv"], "delta_log_amplitude", [0.0, 1.0, 0.5])
    measured = claims.measurements("fourier", pd.concat([resnet, vit])).set_index(["statistic", "model"])
    msa, conv = (claims.kind_statistic(kind, claims.QUANTITIES["fourier"]) for kind in ("msa", "conv"))
    assert measured.loc[(msa, "vit_ti"), "value"] == pytest.approx(2 / 3) and measured.loc[(msa, "vit_ti"), "holds"]
    assert measured.loc[(conv, "resnet_50"), "value"] == 0.5 and measured.loc[(conv, "resnet_50"), "holds"] is False
    assert "resnet_50 has no block of kind msa" in measured.loc[(msa, "resnet_50"), "comparison"]
    assert "vit_ti has no block of kind conv" in measured.loc[(conv, "vit_ti"), "comparison"]
    assert math.isnan(measured.loc[(conv, "vit_ti"), "value"]) and len(measured) == 6  # msa, conv, mlp x 2 models
    (empty,) = claims.measurements("lesion", pd.DataFrame()).itertuples()
    assert empty.statistic == "" and empty.comparison == "cannot decide: the table is empty"


def test_robustness_measurements_have_each_models_slope_and_drop_at_the_highest_band():
    table = pd.concat([drops("vit_ti", {0.1: 0.30, 0.9: 0.05}), drops("resnet_50", {0.1: 0.10, 0.9: 0.40})])
    measured = claims.measurements("robustness", table).set_index(["statistic", "model"]).value
    assert measured[("accuracy drop at 0.9π minus at 0.1π", "vit_ti")] == pytest.approx(-0.25)
    assert measured[("accuracy drop at 0.9π", "resnet_50")] == 0.40 and len(measured) == 4


def test_shown_says_a_smoke_runs_verdicts_mean_nothing(capsys):
    table = lesion_table("vit_ti", VIT_KINDS, {6}, [np.nan, 0.02, 0.01, 0.04, 0.01, 0.10, 0.03])
    shown = claims.shown(claims.lesion(table, smoke=True))
    assert capsys.readouterr().out.strip() == claims.SMOKE_NOTE
    assert shown.verdict.tolist() == ["holds"] and "claim" not in shown and shown.run.tolist() == ["smoke"]
    claims.shown(claims.lesion(table, smoke=False))
    assert capsys.readouterr().out == ""


# --- python -m helpers.claims ----------------------------------------------------------------------------------------

def test_the_command_line_judges_the_saved_smoke_tables_and_names_the_missing_figures(tmp_path):
    fig, _ = plt.subplots()
    highest = blocks("vit_ti", VIT_KINDS, "delta_log_amplitude", [0.0, -1.0, -0.4, -1.5, -0.5, -0.3, -0.1])
    plots.save(fig, "fourier_highest_frequency", tmp_path, highest, smoke=True)
    plots.save(fig, "lesion_accuracy_drop", tmp_path, lesion_table("resnet_50", ["embed", "conv"], {1}, [np.nan, 0.1]),
               smoke=True)
    plots.save(fig, "hessian_max_eigenvalues", tmp_path, pd.DataFrame([]), smoke=True)  # no converged batch: no rows
    plt.close(fig)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "helpers.claims", "--results", str(tmp_path)], cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    saved = pd.read_csv(tmp_path / "claims.csv")
    assert list(saved.columns) == [*claims.COLUMNS, "table"] and len(saved) == 4  # fourier 2, hessian 1, lesion 1
    assert saved.smoke.all() and set(saved.table) == {"fourier_highest_frequency.csv", "hessian_max_eigenvalues.csv",
                                                      "lesion_accuracy_drop.csv"}
    assert (tmp_path / "claims.md").read_text().strip() == done.stdout.strip()
    table = [line for line in done.stdout.splitlines() if line.startswith("| Fig") or line.startswith("| Sec")]
    assert len(table) == 4 and all(line.rstrip(" |").split("|")[-2].strip() == "smoke" for line in table)
    for figure, file in [("Fig. 9", "featuremap_variance.csv"), ("Fig. 1a", "losslandscape.csv"),
                         ("Fig. 2b", "robustness_frequency_noise.csv"), ("Accuracy", "classification_accuracy.csv")]:
        assert f"- {figure}: no table yet (" in done.stdout and f"saves {file})" in done.stdout
    assert "- Fig. 2a/8:" not in done.stdout and "- Sec. 4:" not in done.stdout
