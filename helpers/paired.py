"""The claims that compare a model with MSA blocks against one without (ViT against ResNet): Fig. 1c/4, Fig. 1a and
Fig. 2b, as verdicts under the value policy of `helpers.verdict`.

Which model plays ViT: a model whose table rows say `msa` (figure tables record whether a model has MSA blocks, by
the rule of `helpers.blocks`; `helpers.provenance.facts`), or, where given, a name in `msa_models`. Each model with
MSA blocks is compared with each model without, of the same label: a label after a name ("vit_ti (authors)": the
authors' published grid) keeps a model apart.

Like with like: a pair is compared only where its tables agree on what they record of the measurement (`LIKE`: the
digests of the data and of the settings, the noise's epsilon) and, for Fig. 1a, on the grid (the same points);
otherwise each of its verdicts cannot decide, naming the difference. A pair whose rows say what they rest on (`run`:
the authors' grids are official, whatever the rest of the figure rests on) has that as its verdicts' run.
"""
import itertools
import math

import numpy as np
import pandas as pd

from helpers.verdict import (NOTHING, RUN_KINDS, Decision, Measured, by_model, compare, problem, sample, signed,
                             undecided, verdict, verdicts, weakest)

LIKE = {"data": "data", "settings": "settings", "epsilon": "noise amplitude"}  # column: what it records


# --- the pairs -----------------------------------------------------------------------------------------------------

def one_value(rows: pd.DataFrame, column: str):
    """The one value `rows` record in `column` (NaN dropped): None when they record none, a tuple when several."""
    if column not in rows:
        return None
    values = list(dict.fromkeys(rows[column].dropna()))
    return None if not values else values[0] if len(values) == 1 else tuple(values)


def with_msa(table: pd.DataFrame, msa_models=None) -> dict:
    """{model: whether it has MSA blocks, None where the table does not say}: from `msa_models` (names with MSA
    blocks; a label after a name is ignored) if given, else from the table's `msa` column."""
    groups = dict(list(by_model(table)))
    if msa_models is not None:
        return {name: name in msa_models or name.rsplit(" (", 1)[0] in msa_models for name in groups}
    flags = {name: one_value(rows, "msa") for name, rows in groups.items()}
    return {name: None if flag is None or isinstance(flag, tuple) else str(flag).lower() == "true"
            for name, flag in flags.items()}


def pairs(table: pd.DataFrame, msa_models=None):
    """([(a model with MSA blocks, a model without, of the same label)], why there is none)."""
    kinds = with_msa(table, msa_models)
    found = [(a, b) for a, b in itertools.product(kinds, kinds)
             if kinds[a] and kinds[b] is False and a.partition(" ")[2] == b.partition(" ")[2]]
    status = {True: "MSA blocks", False: "no MSA block",
              None: "not recorded (a table saved before tables said it: rerun its notebook, or pass msa_models)"}
    return found, ("needs a model with MSA blocks and one without, of the same label; the table has "
                   + ", ".join(f"{name}: {status[kind]}" for name, kind in kinds.items()))


def grid(points: pd.DataFrame) -> str:
    """A landscape's grid in words: its points, and the extent and step of each axis."""
    def axis(values):
        values = np.unique(values)
        step = f" in steps of {np.diff(values).min():.3g}" if len(values) > 1 else ""
        return f"[{values.min():g}, {values.max():g}]{step}"
    return f"{len(points)} points, x in {axis(points.x)}, y in {axis(points.y)}"


def same_grid(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    key = [np.unique(np.round(t[c].to_numpy(float), 9)) for t in (a, b) for c in ("x", "y")]
    return (len(a) == len(b) and all(len(p) == len(q) and np.allclose(p, q) for p, q in zip(key[:2], key[2:])))


def unlike(rows: dict, a: str, b: str, *, on_grid: bool = False) -> str | None:
    """Why models `a` and `b` (`rows`: {model: its rows}) are not measured alike, or None: a column of LIKE that both
    record with other values, or (`on_grid`) other grid points."""
    for column, what in LIKE.items():
        x, y = one_value(rows[a], column), one_value(rows[b], column)
        if x is not None and y is not None and x != y:
            return f"{a} and {b} were measured with other {what} ({x} vs {y})"
    if on_grid and not same_grid(rows[a], rows[b]):
        return f"other grids: {a} {grid(rows[a])}; {b} {grid(rows[b])}"
    return None


def compared(claim: str, table: pd.DataFrame, statistics: dict, run, msa_models, *, on_grid=False) -> list:
    """One verdict per pair (`pairs`) and statistic. `statistics`: {statistic: (what the model with MSA blocks is
    claimed to have, "smaller" or "larger", {model: Measured})}."""
    found, reason = pairs(table, msa_models)
    if not found:
        names = " ".join(dict(list(by_model(table))))
        return [undecided(claim, reason, run, names, statistic) for statistic in statistics]
    rows, groups = [], dict(list(by_model(table)))
    for (a, b), (statistic, (claimed, measured)) in itertools.product(found, statistics.items()):
        x, y = measured.get(a, NOTHING), measured.get(b, NOTHING)
        runs = [one_value(groups[name], "run") for name in (a, b)]  # rows that say it (the authors' grids: official)
        pair_run = weakest(*runs) if all(kind in RUN_KINDS for kind in runs) else run
        difference = unlike(groups, a, b, on_grid=on_grid)
        decision = Decision(None, difference) if difference else compare(x.value, y.value, claimed, (a, b))
        notes = "; ".join(f"{name}: {m.note}" for name, m in ((a, x), (b, y)) if m.note)
        comparison = (f"{a} {x.value:.4g} vs {b} {y.value:.4g} (claimed: {claimed} with MSAs)"
                      + (f"; {notes}" if notes else ""))
        rows.append(verdict(claim, f"{a} vs {b}", statistic, x.value, comparison, decision, x.n + y.n, pair_run))
    return rows


# --- Fig. 1c / 4 ---------------------------------------------------------------------------------------------------

def eigenvalues(table: pd.DataFrame) -> pd.DataFrame:
    """(model, loss, eigenvalue) rows: the top-k by magnitude of every converged batch of `hessian.results` (one loss
    per weight decay), or the saved pooled table as it is."""
    if "magnitude" not in table:
        return table.assign(loss=table["loss"] if "loss" in table else "")[["model", "loss", "eigenvalue"]]
    kept = table[table["converged"].astype(bool)] if "converged" in table else table
    losses = [("NLL" if wd == 0 else f"NLL + L2 (wd {wd:g})") for wd in kept.get("weight_decay", [0.0] * len(kept))]
    pooled = kept.assign(loss=losses, eigenvalue=kept["magnitude"].map(list)).explode("eigenvalue")
    return pooled[["model", "loss", "eigenvalue"]].dropna().astype({"eigenvalue": float})


def hessian_statistics(table: pd.DataFrame) -> dict:
    """{loss: {statistic: (claimed, {model: Measured})}}: per loss, among each model's top-k eigenvalues by magnitude
    (its converged batches pooled), the median and the largest of the positive ones (claimed: smaller with MSAs;
    n: positive eigenvalues) and the share of negative ones (claimed: larger; n: eigenvalues)."""
    statistics = {}
    for loss, group in eigenvalues(table).groupby("loss", sort=False):
        samples = {name: sample(part["eigenvalue"]) for name, part in group.groupby("model", sort=False)}
        positives = {name: sample(s.values[s.values > 0]) for name, s in samples.items()}

        def of_positives(statistic):
            return {name: Measured(s.of(statistic), s.n, s.note("positive eigenvalues")) if s.n
                    else Measured(math.nan, 0, "no positive eigenvalue") for name, s in positives.items()}
        statistics[loss] = {
            f"median positive λ among the top-k by magnitude, {loss}": ("smaller", of_positives(np.median)),
            f"largest positive λ among the top-k by magnitude, {loss}": ("smaller", of_positives(np.max)),
            f"share of negative λ among the top-k by magnitude, {loss}":
                ("larger", {name: Measured(s.of(lambda v: np.mean(v < 0)), s.n) for name, s in samples.items()})}
    return statistics


def hessian(table: pd.DataFrame, *, run=None, msa_models=None) -> pd.DataFrame:
    """Fig. 1c / 4 from `hessian.results` (`model`, `weight_decay`, `magnitude` lists, `msa`; only `converged`
    batches count) or the pooled table the notebook saves (`loss`, `model`, `eigenvalue`, `msa`). Per loss and pair
    (`pairs`), three rows: holds when the model with MSA blocks has the smaller median positive eigenvalue, the
    smaller largest positive eigenvalue, and the larger share of negative eigenvalues, among the top-k by magnitude.
    Fails when the other model's is smaller (larger). Cannot decide: no converged batch, no pair, a model without a
    positive eigenvalue, a tie, or data or settings that differ between the two."""
    reason = problem(table, ("model", "magnitude" if "magnitude" in table else "eigenvalue"))
    if reason:
        return verdicts([undecided("hessian", reason, run)])
    rows = []
    for statistics in hessian_statistics(table).values():
        rows += compared("hessian", table, statistics, run, msa_models)
    names = " ".join(dict.fromkeys(table["model"]))
    return verdicts(rows or [undecided("hessian", "no converged batch", run, names)])


# --- Fig. 1a -------------------------------------------------------------------------------------------------------

def edge_rise(points: pd.DataFrame) -> tuple:
    """(the `Sample` of NLL + L2 at each point of the grid's edge ring (max(|x|, |y|) largest) minus at its centre, why
    there is none)."""
    centre = points["loss"][np.isclose(points["x"], 0) & np.isclose(points["y"], 0)].dropna()
    radius = np.maximum(points["x"].abs(), points["y"].abs())
    ring = points["loss"][np.isclose(radius, radius.max()) & (radius > 0)]
    if centre.empty or not ring.size:
        return sample([]), "the grid has no centre" if centre.empty else "the grid is a single point"
    if not math.isfinite(centre.iloc[0]):
        return sample([]), f"the loss at the centre is {centre.iloc[0]}"
    return sample(ring.to_numpy(float) - centre.iloc[0]), ""


def landscape_statistics(table: pd.DataFrame) -> dict:
    """{statistic: ("smaller", {model: Measured})}: each model's mean and max rise of the loss from the centre to the
    edge ring (`edge_rise`), claimed smaller with MSAs; n: edge points used, infinite ones (diverged) said."""
    rises = {name: edge_rise(points) for name, points in by_model(table)}

    def measured(statistic):
        return {name: Measured(rise.of(statistic), rise.n, why or rise.note("edge points") + (
            " (the loss diverged)" if rise.infinite else "")) for name, (rise, why) in rises.items()}
    return {f"{how} rise of NLL + L2 from the centre to the edge ring": ("smaller", measured(statistic))
            for how, statistic in (("mean", np.mean), ("max", np.max))}


def landscape(table: pd.DataFrame, *, run=None, msa_models=None) -> pd.DataFrame:
    """Fig. 1a from the landscapes (`model`, `x`, `y`, `loss` = NLL + L2, `msa`: `landscape.results` per model and
    `published.grid`, as the notebook saves them). Per pair (`pairs`) on the same grid, two rows: holds when the
    model with MSA blocks has the smaller mean rise of the loss from the centre to the edge ring (`edge_rise`), and
    the smaller max rise; an infinite rise (a diverged point) makes a model's mean and max infinite, and the
    comparison counts those points. Fails when the other model's is smaller. Cannot decide: no pair, other grids or
    data or settings, no finite centre, both rises infinite, or a tie."""
    reason = problem(table, ("model", "x", "y", "loss"))
    if reason:
        return verdicts([undecided("landscape", reason, run)])
    return verdicts(compared("landscape", table, landscape_statistics(table), run, msa_models, on_grid=True))


# --- Fig. 2b -------------------------------------------------------------------------------------------------------

def band_drops(table: pd.DataFrame, low: float, high: float) -> dict:
    """{model: {band: Measured mean accuracy drop}} at the bands `low` and `high` (NaN where a band is not measured)."""
    return {name: {f: (lambda s: Measured(s.of(np.mean), s.n, s.note("drops")))(
        sample(rows["accuracy_drop"][np.isclose(rows["frequency"], f)])) for f in (low, high)}
        for name, rows in by_model(table)}


def robustness(table: pd.DataFrame, *, run=None, msa_models=None, low=0.1, high=0.9) -> pd.DataFrame:
    """Fig. 2b from `robustness.accuracy_drop` (`model`, `frequency` in units of π, `accuracy_drop`, `msa`; one
    epsilon). Per model, the drop at `high` minus the drop at `low`: holds when it is negative for a model with MSA
    blocks (a low-pass filter shrugs off high frequencies) and positive for a model without; fails on the other sign;
    cannot decide when it is exactly zero, a band is not measured, or the table does not say whether the model has
    MSA blocks. Per pair (`pairs`): holds when the drop at `high` of the model with MSA blocks is smaller; fails
    when larger; cannot decide on a tie, or other data or settings."""
    reason = problem(table, ("model", "frequency", "accuracy_drop"))
    if reason:
        return verdicts([undecided("robustness", reason, run)])
    drops, statistic, rows = band_drops(table, low, high), f"accuracy drop at {high:g}π minus at {low:g}π", []
    for name, msa in with_msa(table, msa_models).items():
        slope = drops[name][high].value - drops[name][low].value
        if msa is None:
            decision = Decision(None, f"the table does not say whether {name} has MSA blocks (pass msa_models)")
        elif math.isnan(slope):
            decision = Decision(None, f"a band of {name} is not measured")
        else:
            decision = signed(slope, -1 if msa else 1, "the difference")
        claimed = "negative (MSAs)" if msa else "positive (no MSA)" if msa is False else "?"
        comparison = (f"{drops[name][high].value:.4g} - {drops[name][low].value:.4g} = {slope:+.4g} "
                      f"(claimed: {claimed})")
        rows.append(verdict("robustness", name, statistic, slope, comparison, decision,
                            drops[name][high].n + drops[name][low].n, run))
    at_high = {f"accuracy drop at {high:g}π": ("smaller", {name: d[high] for name, d in drops.items()})}
    return verdicts(rows + compared("robustness", table, at_high, run, msa_models))


def robustness_statistics(table: pd.DataFrame, *, low=0.1, high=0.9) -> dict:
    """{statistic: (claimed, {model: Measured})}: each model's drop at `high` (claimed: smaller with MSAs)."""
    return {f"accuracy drop at {high:g}π": ("smaller", {name: d[high] for name, d in band_drops(table, low, high)
                                                        .items()})}
