"""helpers.paired: Fig. 1c/4, Fig. 1a and Fig. 2b, a model with MSA blocks against one without, on small tables whose
verdicts are worked out by hand in each test, among them tables built to trip each rule of the value policy."""
import math

import numpy as np
import pandas as pd
import pytest

from helpers import paired


def row(frame, **match):
    """The one verdict of `frame` whose columns contain the strings of `match`."""
    chosen = frame
    for column, value in match.items():
        chosen = chosen[chosen[column].astype(str).str.contains(value, regex=False)]
    assert len(chosen) == 1, (match, frame[["models", "statistic"]])
    return chosen.iloc[0]


# --- Fig. 1a -------------------------------------------------------------------------------------------------------

def grid(model, centre, curvature, *, msa, points=3, span=1.0, **columns):
    """A `points` x `points` grid over [-span, span]^2 of loss = centre + curvature (x^2 + y^2) / span^2. On 3 x 3 the
    edge ring is its 8 outer points, 4 rising by curvature and 4 corners by 2 curvature: mean rise 1.5 curvature,
    max 2 curvature."""
    x, y = np.meshgrid(np.linspace(-span, span, points), np.linspace(-span, span, points))
    loss = centre + curvature * (x**2 + y**2) / span**2
    return pd.DataFrame({"model": model, "x": x.ravel(), "y": y.ravel(), "loss": loss.ravel(), "msa": msa, **columns})


def vit(centre=1.0, curvature=0.5, **kw):
    return grid("vit_ti", centre, curvature, msa=True, **kw)


def resnet(centre=2.0, curvature=3.0, **kw):
    return grid("resnet_50", centre, curvature, msa=False, **kw)


def test_landscape_holds_when_the_msa_model_rises_less_to_the_edge():
    verdicts = paired.landscape(pd.concat([vit(), resnet()]), run="smoke")
    mean, top = row(verdicts, statistic="mean rise"), row(verdicts, statistic="max rise")
    assert mean.models == "vit_ti vs resnet_50" and mean.value == 0.75 and mean.holds is True and mean.n == 16
    assert "resnet_50 4.5" in mean.comparison and mean.run == "smoke"
    assert top.value == 1.0 and top.holds is True and "resnet_50 6" in top.comparison


def test_landscape_fails_and_compares_only_models_of_one_label():
    table = pd.concat([vit(curvature=3.0), resnet(curvature=0.5),  # ours: ViT is the sharper one
                       grid("vit_ti (authors)", 2.5, 0.1, msa=True), grid("resnet_50 (authors)", 2.2, 0.4, msa=False)])
    verdicts = paired.landscape(table)
    assert sorted(set(verdicts.models)) == ["vit_ti (authors) vs resnet_50 (authors)", "vit_ti vs resnet_50"]
    assert row(verdicts, models="vit_ti vs", statistic="mean").holds is False
    assert row(verdicts, models="(authors) vs", statistic="mean").value == pytest.approx(0.15)
    apart = paired.landscape(pd.concat([grid("vit_ti (authors)", 2.5, 0.1, msa=True), resnet()]))
    assert apart.holds.isna().all() and "of the same label" in apart.comparison[0]


def test_diverged_edge_points_are_infinite_rises_that_the_comparison_counts():
    # defect 1: two of ResNet's 8 edge points diverged: its mean and max rise are infinite, ViT's 0.75 and 1 are not
    diverged = resnet()
    diverged.loc[[0, 8], "loss"] = math.inf  # two corners
    verdicts = paired.landscape(pd.concat([vit(), diverged]))
    for statistic in ("mean", "max"):
        verdict = row(verdicts, statistic=statistic)
        assert verdict.holds is True and verdict.n == 16 and "resnet_50 inf" in verdict.comparison
        assert "resnet_50: 2 of 8 edge points infinite (the loss diverged)" in verdict.comparison


def test_two_infinite_rises_or_a_tie_cannot_decide():
    # defect 1 and 2: both diverged (inf vs inf), or the same landscape (a tie) is no verdict, and says why
    both = [table.assign(loss=np.where(table.x == 1.0, math.inf, table.loss)) for table in (vit(), resnet())]
    verdicts = paired.landscape(pd.concat(both))
    assert verdicts.holds.isna().all() and all("cannot decide: both are infinite" in c for c in verdicts.comparison)
    tie = paired.landscape(pd.concat([vit(), vit().assign(model="resnet_50", msa=False)]))
    assert tie.holds.isna().all() and "cannot decide: a tie: both are 0.75" in row(tie, statistic="mean").comparison


def test_nan_points_are_dropped_and_not_counted():
    # defect 1: a NaN edge point of ViT is no value: 7 of its points count, and the mean of the rest is taken
    missing = vit()
    missing.loc[1, "loss"] = np.nan  # (0, -1): an edge rising by 0.5
    verdict = row(paired.landscape(pd.concat([missing, resnet()])), statistic="mean")
    assert verdict.n == 15 and verdict.value == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)
    assert "vit_ti: 1 NaN dropped" in verdict.comparison and verdict.holds is True


def test_unlike_grids_or_data_cannot_decide_naming_the_difference():
    # defect 3: ViT over [-1, 1]^2 against ResNet over [-2, 2]^2, or a 5 x 5 grid, or other data
    for other, said in ((resnet(span=2.0), "[-2, 2] in steps of 2"), (resnet(points=5), "25 points")):
        verdicts = paired.landscape(pd.concat([vit(), other]))
        assert verdicts.holds.isna().all() and all("cannot decide: other grids: vit_ti 9 points" in c and said in c
                                                   for c in verdicts.comparison)
    data = paired.landscape(pd.concat([vit(data="aaaa"), resnet(data="bbbb")]))
    assert data.holds.isna().all() and "vit_ti and resnet_50 were measured with other data (aaaa vs bbbb)" in \
        data.comparison[0]
    same = paired.landscape(pd.concat([vit(data="aaaa", settings="s"), resnet(data="aaaa", settings="s")]))
    assert same.holds.tolist() == [True, True]


def test_a_pair_whose_rows_say_what_they_rest_on_says_it():
    table = pd.concat([grid("vit_ti (authors)", 2.5, 0.1, msa=True, run="official"),
                       grid("resnet_50 (authors)", 2.2, 0.4, msa=False, run="official"), vit(), resnet()])
    verdicts = paired.landscape(table, run="unverified")  # the figure's own landscapes rest on a mirror's files
    assert set(verdicts[verdicts.models.str.contains("authors")].run) == {"official"}
    assert set(verdicts[verdicts.models == "vit_ti vs resnet_50"].run) == {"unverified"}


def test_a_single_point_or_a_missing_centre_cannot_decide():
    centre = pd.DataFrame({"model": ["vit_ti", "resnet_50"], "x": 0.0, "y": 0.0, "loss": [1.0, 2.0],
                           "msa": [True, False]})
    single = paired.landscape(centre)
    assert single.holds.isna().all() and "no value for vit_ti" in single.comparison[0]
    assert "vit_ti: the grid is a single point" in single.comparison[0]
    diverged_centre = vit()
    diverged_centre.loc[4, "loss"] = math.inf
    verdict = row(paired.landscape(pd.concat([diverged_centre, resnet()])), statistic="mean")
    assert verdict.holds is None and "the loss at the centre is inf" in verdict.comparison


# --- Fig. 1c / 4 ---------------------------------------------------------------------------------------------------

def hessian_results(model, batches, converged, *, msa, **columns):
    return pd.DataFrame({"weight_decay": 0.05, "batch": range(len(batches)), "converged": converged,
                         "magnitude": [np.array(b, dtype=float) for b in batches], "model": model, "msa": msa,
                         **columns})


def test_hessian_holds_on_smaller_positive_and_more_negative_vit_eigenvalues_of_converged_batches():
    # vit_ti pools -1, 2, 3, -0.5 (the unconverged +-100 left out): positives 2, 3 (median 2.5, largest 3), negative
    # 2 of 4; resnet_50 pools 10, 20, 30, 5: median 15, largest 30, negative 0 of 4
    table = pd.concat([hessian_results("vit_ti", [[-1, 2], [3, -0.5], [100, -100]], [True, True, False], msa=True),
                       hessian_results("resnet_50", [[10, 20], [30, 5]], [True, True], msa=False)])
    verdicts = paired.hessian(table, run="official")
    median, largest = row(verdicts, statistic="median positive"), row(verdicts, statistic="largest positive")
    negative = row(verdicts, statistic="negative")
    assert median.models == "vit_ti vs resnet_50" and median.value == 2.5 and median.holds is True and median.n == 6
    assert "vit_ti 2.5 vs resnet_50 15" in median.comparison and "NLL + L2 (wd 0.05)" in median.statistic
    assert largest.value == 3.0 and largest.holds is True and "resnet_50 30" in largest.comparison
    assert negative.value == 0.5 and negative.holds is True and negative.n == 8 and negative.run == "official"


def test_hessian_judges_the_positive_eigenvalues_not_the_magnitudes():
    # defect 4: ViT -9, -9, 1, 1 against ResNet 5, 5: its median |λ| (5) is the same as ResNet's, a tie, and with
    # -10s it would be larger; its positive eigenvalues (median and largest 1) are smaller, as the paper says
    table = pd.concat([hessian_results("vit_ti", [[-9, -9, 1, 1]], [True], msa=True),
                       hessian_results("resnet_50", [[5, 5]], [True], msa=False)])
    verdicts = paired.hessian(table)
    assert row(verdicts, statistic="median positive").holds is True and row(verdicts, statistic="median").n == 4
    assert row(verdicts, statistic="largest positive").value == 1.0
    all_negative = paired.hessian(pd.concat([hessian_results("vit_ti", [[-3, -2]], [True], msa=True),
                                             hessian_results("resnet_50", [[5, 4]], [True], msa=False)]))
    median = row(all_negative, statistic="median positive")
    assert median.holds is None and "vit_ti: no positive eigenvalue" in median.comparison
    assert row(all_negative, statistic="negative").holds is True  # 2 of 2 against 0 of 2


def test_hessian_ties_and_other_settings_cannot_decide():
    # defect 2: the same positive eigenvalues; defect 3: settings that differ
    tie = paired.hessian(pd.concat([hessian_results("vit_ti", [[4, -1]], [True], msa=True),
                                    hessian_results("resnet_50", [[4, 2]], [True], msa=False)]))
    assert row(tie, statistic="largest positive").holds is None
    assert "cannot decide: a tie: both are 4" in row(tie, statistic="largest positive").comparison
    other = paired.hessian(pd.concat([hessian_results("vit_ti", [[1, -1]], [True], msa=True, settings="k5"),
                                      hessian_results("resnet_50", [[4, 2]], [True], msa=False, settings="k2")]))
    assert other.holds.isna().all() and "measured with other settings (k5 vs k2)" in other.comparison[0]


def test_hessian_reads_the_saved_pooled_table_and_needs_a_pair():
    saved = pd.DataFrame({"loss": "NLL", "model": ["vit_ti", "vit_ti", "resnet_50", "resnet_50"],
                          "eigenvalue": [50.0, 60.0, 5.0, -1.0], "msa": [True, True, False, False]})
    verdicts = paired.hessian(saved)
    assert row(verdicts, statistic="median positive").value == 55 and row(verdicts, statistic="median").holds is False
    assert row(verdicts, statistic="negative").holds is False and row(verdicts, statistic="negative").n == 4
    resnets = paired.hessian(saved.assign(msa=False))
    assert resnets.holds.isna().all() and "vit_ti: no MSA block" in resnets.comparison[0]
    unconverged = paired.hessian(hessian_results("vit_ti", [[1, 2]], [False], msa=True))
    assert unconverged.holds.isna().all() and "no converged batch" in unconverged.comparison[0]


def test_which_model_plays_vit_is_read_off_the_table_or_given():
    saved = pd.DataFrame({"model": ["mine", "theirs"], "eigenvalue": [1.0, 9.0]})  # saved before tables said it
    assert "mine: not recorded" in paired.hessian(saved).comparison[0]
    given = paired.hessian(saved, msa_models=["mine"])
    assert row(given, statistic="median positive").models == "mine vs theirs"
    assert row(given, statistic="median positive").holds is True
    read_back = saved.assign(msa=["True", "False"])  # a CSV may give the flags back as text
    assert paired.with_msa(read_back) == {"mine": True, "theirs": False}


# --- Fig. 2b -------------------------------------------------------------------------------------------------------

def drops(model, by_frequency, *, msa):
    return pd.DataFrame({"model": model, "epsilon": 0.7, "frequency": list(by_frequency),
                         "accuracy_drop": list(by_frequency.values()), "msa": msa})


def test_robustness_holds_when_vit_loses_less_at_high_frequency_and_resnet_more():
    table = pd.concat([drops("vit_ti", {0.1: 0.30, 0.5: 0.20, 0.9: 0.05}, msa=True),
                       drops("resnet_50", {0.1: 0.10, 0.9: 0.40}, msa=False)])
    verdicts = paired.robustness(table, run="user")
    vit_, resnet_ = row(verdicts, models="vit_ti", statistic="minus"), row(verdicts, models="resnet_50",
                                                                          statistic="minus")
    assert vit_.value == pytest.approx(-0.25) and vit_.holds is True and "negative (MSAs)" in vit_.comparison
    assert resnet_.value == pytest.approx(0.30) and resnet_.holds is True and "positive (no MSA)" in resnet_.comparison
    pair = row(verdicts, models="vit_ti vs resnet_50")
    assert pair.value == 0.05 and pair.holds is True and pair.statistic == "accuracy drop at 0.9π"


def test_robustness_fails_and_cannot_judge_a_flat_curve_a_missing_band_or_a_lone_resnet():
    table = pd.concat([drops("vit_ti", {0.1: 0.1, 0.9: 0.5}, msa=True), drops("resnet_50", {0.1: 0.3, 0.9: 0.2},
                                                                                 msa=False)])
    assert paired.robustness(table).holds.tolist() == [False, False, False]  # vit +0.4, resnet -0.1, 0.5 > 0.2
    flat = paired.robustness(pd.concat([drops("vit_ti", {0.1: 0.2, 0.9: 0.2}, msa=True),
                                        drops("resnet_50", {0.1: 0.1, 0.9: 0.2}, msa=False)]))
    assert row(flat, models="vit_ti", statistic="minus").holds is None  # defect 2: a slope of exactly zero
    assert "the difference is exactly zero" in row(flat, models="vit_ti", statistic="minus").comparison
    assert "a tie: both are 0.2" in row(flat, models="vs").comparison  # and the pair ties at 0.9π
    lone = paired.robustness(drops("resnet_50", {0.1: 0.1}, msa=False))
    assert "a band of resnet_50 is not measured" in row(lone, statistic="minus").comparison
    (pair,) = lone[lone.statistic == "accuracy drop at 0.9π"].itertuples()
    assert pair.holds is None and "resnet_50: no MSA block" in pair.comparison


@pytest.mark.parametrize("claim", [paired.hessian, paired.landscape, paired.robustness])
def test_an_empty_table_cannot_decide(claim):
    (verdict,) = claim(pd.DataFrame(), run="smoke").to_dict("records")
    assert verdict["holds"] is None and verdict["comparison"] == "cannot decide: the table is empty"
    assert verdict["run"] == "smoke"
