"""Does the claim hold? Each figure's claim as a measured verdict, from the table the figure makes.

Each function takes the table a figure's notebook makes (the DataFrame itself, or the CSV `plots.save` wrote,
read back) and returns verdict rows (`COLUMNS`, one `Verdict` each): the figure, the paper's claim, the models,
the statistic and its value, the comparison in numbers, `holds` (True, False, or None where the table cannot
decide: the comparison then says why), `n` (the measurements behind the value) and `smoke` (whether a smoke run made
the table, whose numbers mean nothing; None: not known). Where the paper gives no threshold, a claim holds when the
sign or the majority it states is measured.

- Fig. 2a / 8, `fourier` (the table of `fourier.highest_frequency`): per model and block kind, the change of the Δ
  log amplitude at the highest frequency across each block (its value minus the previous block's); it holds when
  more than half of the changes have the claimed sign: negative across an MSA (a low-pass filter), positive across
  a Conv or an MLP (high-pass). n: blocks.
- Fig. 9, `variance` (the table of `variance.variances`): the same on the feature-map variance (MSAs reduce it,
  Convs and MLPs increase it). Both leave out subsampling blocks (shade `pool`), where the map itself changes size.
- Fig. 1c / 4, `hessian` (`hessian.results`, or the pooled eigenvalues the notebook saves): per loss, the median |λ|
  of the top-k eigenvalues by magnitude (holds: smaller with MSAs) and the share of negative ones (holds: larger
  with MSAs). n: eigenvalues of both models.
- Fig. 1a, `landscape` (the landscapes with a `model` column): the rise of NLL + L2 from the centre of the grid to its
  edge ring, mean and max (holds: smaller with MSAs). n: edge points of both models.
- Fig. 2b, `robustness` (`robustness.accuracy_drop`): per model, the accuracy drop at 0.9π minus at 0.1π (holds:
  negative with MSAs, positive without); per pair, the drop at 0.9π (holds: smaller with MSAs). n: bands.
- Sec. 4, `lesion` (`lesion.drops`): per model, the mean accuracy drop when the last MSA of a stage is removed minus
  that of the other MSAs (holds: positive). n: MSA blocks.
- Accuracy, `accuracy` (`train.accuracy_table`): per model, ours against the paper's (holds: within `tolerance`
  points). n: test images.

Which model plays ViT and which ResNet (Fig. 1, Fig. 2b): a model with MSA blocks (the split of its specification
has an `msa` block: ViT, PiT, Swin, AlterNet, a timm DeiT) is compared with each model without one (ResNet), by a
rule over the blocks, not the names; `msa_models` (the names with MSA blocks) decides for names that are no model
specification. A label after a name ("vit_ti (authors)": the authors' published grid) keeps a model apart: only
models with the same label are compared.

Each model's own values, also those a pair's verdict compares, come from `measurements` (what `helpers.diagnosis`
places a model by); `shown` is the verdict table as the figure notebooks end with it.

`python -m helpers.claims [--results DIR]` judges every figure table saved in a results folder, says for each
figure without one why, and writes the verdicts as `claims.csv` and `claims.md` in that folder.
"""
import argparse
import functools
import itertools
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import models
from helpers.blocks import split
from helpers.common import saved_smoke, writing
from helpers.experiment import results_folder

CLAIMS = {  # each verdict function's figure and the paper's claim, short
    "fourier": ("Fig. 2a/8", "MSAs are low-pass filters; Convs are high-pass filters"),
    "variance": ("Fig. 9", "MSAs reduce feature-map variance; Convs and MLPs increase it"),
    "hessian": ("Fig. 1c/4", "ViT's Hessian eigenvalues are smaller in magnitude, and ViT has negative ones, which "
                             "ResNet hardly has"),
    "landscape": ("Fig. 1a", "MSAs flatten the loss landscape"),
    "robustness": ("Fig. 2b", "ViT is robust to high-frequency noise; ResNet is vulnerable to it"),
    "lesion": ("Sec. 4", "MSAs at the end of a stage matter most"),
    "accuracy": ("Accuracy", "the official checkpoints reach the paper's accuracy"),
}
CLAIMED_SIGN = {"msa": -1, "conv": 1, "mlp": 1}  # Fig. 8 and Fig. 9: what an MSA lowers, a Conv or an MLP raises
QUANTITIES = {"fourier": "Δ log amplitude at the highest frequency", "variance": "feature-map variance"}


@dataclass
class Verdict:
    figure: str
    claim: str
    models: str          # the model, or "A vs B": the one with MSA blocks against the one without
    statistic: str
    value: float
    comparison: str      # what is compared, in numbers; "cannot decide: why" where holds is None
    holds: bool | None
    n: int | None        # blocks, eigenvalues, grid points, bands or test images behind the value
    smoke: bool | None   # a smoke run made the table (meaningless numbers); None: not known


COLUMNS = tuple(field.name for field in fields(Verdict))


def verdict(claim, names, statistic, value, comparison, holds, n, smoke):
    return Verdict(*CLAIMS[claim], names, statistic, float(value), comparison, holds, n, smoke)


def undecided(claim, reason, smoke, names="", statistic=""):
    return Verdict(*CLAIMS[claim], names, statistic, math.nan, f"cannot decide: {reason}", None, 0, smoke)


def verdicts(rows):
    """The rows as a table of COLUMNS; `holds`, `n` and `smoke` keep None (not known) apart from False and 0."""
    return pd.DataFrame({column: pd.Series([getattr(row, column) for row in rows],
                                           dtype=object if column in ("holds", "n", "smoke") else None)
                         for column in COLUMNS})


def problem(table, columns):
    """Why `table` cannot be judged at all (no rows, or lacking some of `columns`), or None."""
    if len(table) == 0:
        return "the table is empty"
    missing = [column for column in columns if column not in table]
    return f"the table has no column {', '.join(missing)}" if missing else None


def by_model(table):
    """The rows of each model, in order of appearance; a table without a `model` column is one model, "model"."""
    table = table.reset_index(drop=True)  # concatenated tables repeat their indices
    return (table if "model" in table else table.assign(model="model")).groupby("model", sort=False)


# --- Fig. 2a / 8 and Fig. 9: the sign of the change across each block --------------------------------------------

def block_changes(blocks, column):
    """The change of `column` across each block of one model (`blocks` in block order): its value minus the previous
    block's, for the blocks of a CLAIMED_SIGN kind that do not subsample (shade `pool`, or a new map `size`)."""
    change = blocks[column].diff()
    shade = blocks["shade"] if "shade" in blocks else blocks["kind"]  # tables saved before `shade` existed
    resized = blocks["size"].diff().fillna(0).ne(0) if "size" in blocks else False
    kept = blocks["kind"].isin(list(CLAIMED_SIGN)) & shade.ne("pool") & ~resized & change.notna()
    return pd.DataFrame({"kind": blocks["kind"][kept], "change": change[kept]})


def kind_statistic(kind, quantity):
    return f"share of {kind} blocks that {'lower' if CLAIMED_SIGN[kind] < 0 else 'raise'} the {quantity}"


def kind_verdicts(claim, table, column, quantity, smoke):
    """Per model and kind of CLAIMED_SIGN (`msa` always, the others where present): holds when more than half of the
    kind's changes of `column` (`block_changes`) have the claimed sign; the comparison gives the mean change."""
    if table.duplicated([column for column in ("model", "block") if column in table]).any():
        why = "more than one row per block of a model (Fig. 8 reads the table of fourier.highest_frequency)"
        return verdicts([undecided(claim, why, smoke)])
    rows = []
    for name, blocks in by_model(table):
        changes = block_changes(blocks.sort_values("block"), column)
        for kind in dict.fromkeys(["msa", *blocks["kind"]]):
            if kind not in CLAIMED_SIGN:
                continue
            sign, values = CLAIMED_SIGN[kind], changes.change[changes.kind == kind]
            verb, statistic = "lower" if sign < 0 else "raise", kind_statistic(kind, quantity)
            if not len(values):
                why = (f"every {kind} block of {name} subsamples" if kind in set(blocks["kind"])
                       else f"{name} has no block of kind {kind}")
                rows.append(undecided(claim, why, smoke, name, statistic))
                continue
            agree = int((sign * values > 0).sum())
            comparison = (f"{agree} of {len(values)} {kind} blocks {verb} it (claimed: most); "
                          f"mean change {values.mean():+.3g}")
            rows.append(verdict(claim, name, statistic, agree / len(values), comparison, agree > len(values) / 2,
                                len(values), smoke))
    return verdicts(rows)


def fourier(table, *, smoke=None):
    """Fig. 2a / 8 from the table of `fourier.highest_frequency` (a row per block; `model`, `block`, `kind`, `shade`,
    `size`, `delta_log_amplitude`; not the whole `relative_log_amplitudes` table, which cannot decide). Holds, per model
    and kind, when more than half of the changes across the blocks of that kind are negative for `msa` and positive
    for `conv` and `mlp` (see `block_changes`); a model without an MSA block gets an `msa` row that cannot decide."""
    reason = problem(table, ("block", "kind", "delta_log_amplitude"))
    if reason:
        return verdicts([undecided("fourier", reason, smoke)])
    return kind_verdicts("fourier", table, "delta_log_amplitude", QUANTITIES["fourier"], smoke)


def variance(table, *, smoke=None):
    """Fig. 9 from the table of `variance.variances` (`model`, `block`, `kind`, `shade`, `variance`). Holds, per model
    and kind, when more than half of the changes of the variance across the blocks of that kind are negative for
    `msa` and positive for `conv` and `mlp`; subsampling blocks are left out, as in `fourier`."""
    reason = problem(table, ("block", "kind", "variance"))
    if reason:
        return verdicts([undecided("variance", reason, smoke)])
    return kind_verdicts("variance", table, "variance", QUANTITIES["variance"], smoke)


# --- Fig. 1c / 4, Fig. 1a, Fig. 2b: a model with MSA blocks against one without ----------------------------------

@functools.lru_cache(maxsize=None)
def has_msa(name):
    """Whether the model specification `name` (a label may follow: "vit_ti (authors)") has an MSA block, by the rule
    of `helpers.blocks` on fresh weights; None if it names no model."""
    try:
        spec = models.resolve(name.rsplit(" (", 1)[0])
    except ValueError:
        return None
    return "msa" in split(spec.build(fresh=True), spec).kinds


def with_msa(names, msa_models=None):
    """{name: whether it has MSA blocks, None where unknown}: from `msa_models` (names with MSA blocks; a label after a
    name is ignored) if given, else `has_msa`."""
    if msa_models is not None:
        return {name: name in msa_models or name.split()[0] in msa_models for name in names}
    return {name: has_msa(name) for name in names}


def pairs(names, msa_models=None):
    """([(a model with MSA blocks, a model without, of the same label)], why there is none)."""
    kinds = with_msa(names, msa_models)
    found = [(a, b) for a, b in itertools.product(names, names)
             if kinds[a] and kinds[b] is False and a.partition(" ")[2] == b.partition(" ")[2]]
    status = {True: "MSA blocks", False: "no MSA block", None: "unknown (pass msa_models)"}
    return found, ("needs a model with MSA blocks and one without, of the same label; the table has "
                   + ", ".join(f"{name}: {status[kinds[name]]}" for name in names))


def compare(claim, names, statistics, smoke, msa_models):
    """One verdict per pair of `names` (`pairs`) and statistic: `statistics` maps a statistic to ({name: value},
    "smaller" or "larger": what the model with MSA blocks is claimed to have, {name: n})."""
    found, reason = pairs(names, msa_models)
    if not found:
        return [undecided(claim, reason, smoke, " ".join(names), statistic) for statistic in statistics]
    rows = []
    for (a, b), (statistic, (values, claimed, counts)) in itertools.product(found, statistics.items()):
        x, y, pair = values.get(a, math.nan), values.get(b, math.nan), f"{a} vs {b}"
        if math.isnan(x) or math.isnan(y):
            rows.append(undecided(claim, f"no value for {a if math.isnan(x) else b}", smoke, pair, statistic))
            continue
        holds = bool(x < y) if claimed == "smaller" else bool(x > y)
        comparison = f"{a} {x:.4g} vs {b} {y:.4g} (claimed: {claimed} with MSAs)"
        rows.append(verdict(claim, pair, statistic, x, comparison, holds, counts[a] + counts[b], smoke))
    return rows


def eigenvalues(table):
    """(model, loss, eigenvalue) rows: the top-k by magnitude of every converged batch of `hessian.results` (one loss
    per weight decay), or the saved pooled table as it is."""
    if "magnitude" not in table:
        return table.assign(loss=table["loss"] if "loss" in table else "")[["model", "loss", "eigenvalue"]]
    kept = table[table["converged"].astype(bool)] if "converged" in table else table
    losses = [("NLL" if wd == 0 else f"NLL + L2 (wd {wd:g})") for wd in kept.get("weight_decay", [0.0] * len(kept))]
    pooled = kept.assign(loss=losses, eigenvalue=kept["magnitude"].map(list)).explode("eigenvalue")
    return pooled[["model", "loss", "eigenvalue"]].dropna().astype({"eigenvalue": float})


def hessian_statistics(table):
    """{loss: {statistic: ({model: value}, claimed, {model: n})}}: per loss, each model's median |λ| of the top-k by
    magnitude (claimed: smaller with MSAs) and share of negative ones (claimed: larger), over its converged batches."""
    names, statistics = list(dict.fromkeys(table["model"])), {}
    for loss, group in eigenvalues(table).groupby("loss", sort=False):
        samples = {name: part["eigenvalue"].to_numpy() for name, part in group.groupby("model", sort=False)}
        counts = {name: len(samples.get(name, [])) for name in names}
        statistics[loss] = {f"median |λ| of the top-k by magnitude, {loss}":
                            ({name: np.median(np.abs(v)) for name, v in samples.items()}, "smaller", counts),
                            f"share of negative λ among the top-k by magnitude, {loss}":
                            ({name: np.mean(v < 0) for name, v in samples.items()}, "larger", counts)}
    return statistics


def hessian(table, *, smoke=None, msa_models=None):
    """Fig. 1c / 4 from `hessian.results` (`model`, `weight_decay`, `magnitude` lists; only `converged` batches count)
    or from the pooled table the notebook saves (`loss`, `model`, `eigenvalue`). Per loss and per pair (`pairs`):
    holds when the median |λ| of the model with MSA blocks is smaller, and (a second row) when its share of negative
    eigenvalues is larger (`hessian_statistics`). A model without a converged batch cannot be judged."""
    reason = problem(table, ("model", "magnitude" if "magnitude" in table else "eigenvalue"))
    if reason:
        return verdicts([undecided("hessian", reason, smoke)])
    names, rows = list(dict.fromkeys(table["model"])), []
    for statistics in hessian_statistics(table).values():
        rows += compare("hessian", names, statistics, smoke, msa_models)
    return verdicts(rows or [undecided("hessian", "no converged batch", smoke, " ".join(names))])


def edge_rise(points):
    """NLL + L2 at each point of the grid's edge ring (max(|x|, |y|) largest) minus at the centre (x = y = 0)."""
    centre = points["loss"][np.isclose(points["x"], 0) & np.isclose(points["y"], 0)]
    radius = np.maximum(points["x"].abs(), points["y"].abs())
    ring = points["loss"][np.isclose(radius, radius.max()) & (radius > 0)]
    return ring - centre.iloc[0] if len(centre) else ring.iloc[:0]


def landscape_statistics(table):
    """{statistic: ({model: value}, "smaller", {model: n})}: each model's mean and max rise of the loss from the centre
    to the edge ring (`edge_rise`), claimed smaller with MSAs; n: edge points."""
    rises = {name: edge_rise(points) for name, points in by_model(table)}
    counts = {name: len(rise) for name, rise in rises.items()}
    return {f"{how} rise of NLL + L2 from the centre to the edge ring":
            ({name: getattr(rise, how)() if len(rise) else math.nan for name, rise in rises.items()}, "smaller", counts)
            for how in ("mean", "max")}


def landscape(table, *, smoke=None, msa_models=None):
    """Fig. 1a from the landscapes (`model`, `x`, `y`, `loss` = NLL + L2: `landscape.read` per model, as the notebook
    saves them). Per pair (`pairs`): holds when the mean rise of the loss from the centre to the edge ring
    (`edge_rise`) of the model with MSA blocks is smaller, and (a second row) when its max rise is smaller."""
    reason = problem(table, ("model", "x", "y", "loss"))
    if reason:
        return verdicts([undecided("landscape", reason, smoke)])
    statistics = landscape_statistics(table)
    names = list(next(iter(statistics.values()))[2])  # the models, in order of appearance
    return verdicts(compare("landscape", names, statistics, smoke, msa_models))


def band_drops(table, low, high):
    """{model: {band: its mean accuracy drop}} at the bands `low` and `high` (NaN where a band is not measured)."""
    return {name: {f: rows["accuracy_drop"][np.isclose(rows["frequency"], f)].mean() for f in (low, high)}
            for name, rows in by_model(table)}


def robustness_statistics(table, *, low=0.1, high=0.9):
    """{statistic: ({model: value}, claimed, {model: n})}: each model's accuracy drop at `high` minus at `low` (claimed:
    negative with MSAs, positive without; n: 2 bands), and its drop at `high` (claimed: smaller with MSAs)."""
    drops = band_drops(table, low, high)
    return {f"accuracy drop at {high:g}π minus at {low:g}π":
            ({name: d[high] - d[low] for name, d in drops.items()}, "negative with MSAs", dict.fromkeys(drops, 2)),
            f"accuracy drop at {high:g}π": ({name: d[high] for name, d in drops.items()}, "smaller",
                                             dict.fromkeys(drops, 1))}


def robustness(table, *, smoke=None, msa_models=None, low=0.1, high=0.9):
    """Fig. 2b from `robustness.accuracy_drop` (`model`, `frequency` in units of π, `accuracy_drop`; one epsilon).
    Per model: the drop at `high` minus the drop at `low`; holds when it is negative for a model with MSA blocks (a
    low-pass filter shrugs off high frequencies) and positive for a model without. Per pair (`pairs`): holds when
    the drop at `high` of the model with MSA blocks is smaller (`robustness_statistics`)."""
    reason = problem(table, ("model", "frequency", "accuracy_drop"))
    if reason:
        return verdicts([undecided("robustness", reason, smoke)])
    drops = band_drops(table, low, high)
    (statistic, (slopes, _, _)), at_high = list(robustness_statistics(table, low=low, high=high).items())
    rows = []
    for name, msa in with_msa(list(drops), msa_models).items():
        slope = slopes[name]
        if msa is None or math.isnan(slope):
            why = "unknown whether it has MSA blocks (pass msa_models)" if msa is None else "a band is not measured"
            rows.append(undecided("robustness", f"{name}: {why}", smoke, name, statistic))
            continue
        claimed = "negative (MSAs)" if msa else "positive (no MSA)"
        comparison = f"{drops[name][high]:.4g} - {drops[name][low]:.4g} = {slope:+.4g} (claimed: {claimed})"
        rows.append(verdict("robustness", name, statistic, slope, comparison, bool(slope < 0 if msa else slope > 0),
                            2, smoke))
    return verdicts(rows + compare("robustness", list(drops), dict([at_high]), smoke, msa_models))


# --- Sec. 4 and the accuracy table ---------------------------------------------------------------------------------

def stage_end_verdict(name, blocks, smoke):
    """One model's lesion verdict: mean drop of the last MSA of each stage minus that of its other MSAs."""
    statistic = "mean accuracy drop, last MSA of each stage minus the other MSAs"
    stage = blocks["stage_end"].astype(bool).shift(fill_value=False).cumsum()  # a stage ends at its stage_end row
    msa = blocks.assign(stage=stage)[blocks["kind"] == "msa"]
    if msa.empty:
        return undecided("lesion", f"{name} has no MSA block", smoke, name, statistic)
    last = msa.index.isin(msa.groupby("stage").tail(1).index)
    ends, others = msa["accuracy_drop"][last].dropna(), msa["accuracy_drop"][~last].dropna()
    if ends.empty or others.empty:
        why = "every MSA block ends its stage" if last.all() else "the drops are not all computed yet"
        return undecided("lesion", f"{name}: {why}", smoke, name, statistic)
    value = ends.mean() - others.mean()
    comparison = (f"{100 * ends.mean():.2f} % over {len(ends)} stage-end MSAs vs {100 * others.mean():.2f} % over "
                  f"the other {len(others)} (claimed: larger at the stage ends)")
    return verdict("lesion", name, statistic, value, comparison, bool(value > 0), len(ends) + len(others), smoke)


def lesion(table, *, smoke=None):
    """Sec. 4 from `lesion.drops` (`model`, `kind`, `stage_end`, `accuracy_drop`, blocks in order). The MSAs at the end
    of a stage are, per stage (the blocks up to a `stage_end` row), its last MSA block: a transformer's stage ends
    with an MLP. Holds, per model, when their mean accuracy drop is larger than that of the other MSA blocks."""
    reason = problem(table, ("model", "kind", "stage_end", "accuracy_drop"))
    if reason:
        return verdicts([undecided("lesion", reason, smoke)])
    return verdicts([stage_end_verdict(name, blocks, smoke) for name, blocks in by_model(table)])


def accuracy(table, *, smoke=None, tolerance=1.0, percent=True):
    """The accuracy table (`model`, `accuracy`, `paper_accuracy` in %, optionally `count`): in % as the notebook shows
    and saves it; `percent=False` for `train.accuracy_table`'s fractions. The paper gives no tolerance: per model,
    holds when ours is within `tolerance` points of the paper's; a model the paper does not report cannot decide."""
    reason = problem(table, ("model", "accuracy", "paper_accuracy"))
    if reason:
        return verdicts([undecided("accuracy", reason, smoke)])
    rows, statistic = [], "top-1 accuracy on the CIFAR-100 test set (%)"
    for row in table.to_dict("records"):
        name, ours, paper = row["model"], row["accuracy"] * (1 if percent else 100), row["paper_accuracy"]
        if pd.isna(paper):
            rows.append(undecided("accuracy", f"the paper reports no accuracy for {name}", smoke, name, statistic))
            continue
        comparison = f"ours {ours:.2f} vs the paper's {paper:.1f}: {ours - paper:+.2f} points (claimed: within " \
                     f"±{tolerance:g})"
        count = None if pd.isna(row.get("count", math.nan)) else int(row["count"])
        rows.append(verdict("accuracy", name, statistic, ours, comparison, bool(abs(ours - paper) <= tolerance),
                            count, smoke))
    return verdicts(rows)


# --- each model's own numbers (diagnose.ipynb places a model between ResNet-50 and ViT-Ti by them) -----------------

def paired_statistics(claim, table):
    """{statistic: ({model: value}, claimed, {model: n})} of the statistics `claim` judges per pair, for every model."""
    if claim == "hessian":
        return {name: value for by_loss in hessian_statistics(table).values() for name, value in by_loss.items()}
    if claim == "landscape":
        return landscape_statistics(table)
    if claim == "robustness":
        return {name: value for name, value in robustness_statistics(table).items() if value[1] == "smaller"}
    return {}


def measurements(claim, table, *, msa_models=None):
    """Each model's own value of every statistic of `claim` (a name of CLAIMS) on `table`: a table of `figure`,
    `statistic`, `model`, `value` (NaN where the model has none, and `comparison` says why), `holds` (the model's
    own verdict for a statistic judged per model; None for one judged per pair) and `comparison`, a row for every
    statistic and model. A pair's verdict keeps only the value of its model with MSA blocks; here every model has
    its own. Where no statistic can be computed, the reasons the verdicts give, as rows without statistic or model."""
    options = {"msa_models": msa_models} if claim in ("hessian", "landscape", "robustness") else {}
    judged = globals()[claim](table, **options)
    names = list(dict.fromkeys(table["model"])) if "model" in table else ["model"]
    found = {}  # statistic -> {model: row}
    for row in judged[judged["models"].isin(names)].itertuples():
        found.setdefault(row.statistic, {})[row.models] = (row.value, row.holds, row.comparison)
    if len(table) and not (judged["models"] == "").all():
        for statistic, (values, claimed, _) in paired_statistics(claim, table).items():
            for name, value in values.items():
                found.setdefault(statistic, {})[name] = (float(value), None, f"claimed: {claimed} with MSAs")
    kinds = {kind_statistic(kind, QUANTITIES[claim]): kind for kind in CLAIMED_SIGN} if claim in QUANTITIES else {}
    rows = [(statistic, name, *by_model.get(name, (math.nan, None, f"cannot decide: {name} has no block of kind "
                                                   f"{kinds[statistic]}" if statistic in kinds
                                                   else f"cannot decide: no value for {name}")))
            for statistic, by_model in found.items() for name in names]
    rows = rows or [("", "", math.nan, None, comparison) for comparison in dict.fromkeys(judged["comparison"])]
    frame = pd.DataFrame(rows, columns=["statistic", "model", "value", "holds", "comparison"]).astype({"holds": object})
    return frame.assign(figure=CLAIMS[claim][0])[["figure", *frame.columns]]


# --- python -m helpers.claims: every saved figure table of a results folder --------------------------------------

SAVED = (  # (figure table in the results folder, its verdict function, the notebook that saves it; None: optional)
    ("fourier_highest_frequency", fourier, "fourier_analysis.ipynb"),
    ("fourier_highest_frequency_imagenet", fourier, None),
    ("featuremap_variance", variance, "featuremap_variance.ipynb"),
    ("hessian_max_eigenvalues", hessian, "hessian.ipynb"),
    ("losslandscape", landscape, "losslandscape.ipynb"),
    ("robustness_frequency_noise", robustness, "robustness.ipynb"),
    ("lesion_accuracy_drop", lesion, "lesion.ipynb"),
    ("classification_accuracy", accuracy, "classification.ipynb"),
)
VERDICTS = {True: "holds", False: "fails", None: "cannot decide"}
RUNS = {True: "smoke", False: "real", None: "unknown"}
SMOKE_NOTE = "SMOKE RUN: fresh weights and synthetic data, so these verdicts mean nothing."


def read_table(path):
    """A saved figure table; an empty file (a figure without rows) as an empty table."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def judge(results):
    """(the verdicts of every figure table saved in `results`, with `table`: its file; {figure: why it has none})."""
    found, absent = [], {}
    for name, claim, notebook in SAVED:
        path = Path(results) / f"{name}.csv"
        if path.exists():
            found.append(claim(read_table(path), smoke=saved_smoke(path)).assign(table=path.name))
        elif notebook:
            absent[CLAIMS[claim.__name__][0]] = f"no table yet ({notebook} saves {path.name})"
    return (pd.concat(found, ignore_index=True) if found else verdicts([]).assign(table=[])), absent


def markdown(rows):
    """`rows` (a DataFrame of strings) as a Markdown table, its columns padded to one width."""
    cells = [list(rows.columns)] + [[str(v).replace("|", "\\|") for v in row] for row in rows.to_numpy()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(rows.columns))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines[:1] + ["|" + "|".join("-" * (w + 2) for w in widths) + "|"] + lines[1:])


def readable(table):
    """The verdicts in words: figure, claim, verdict (holds, fails, cannot decide), models, statistic, comparison, n,
    run (smoke, real, unknown) and, where `table` has it, the table they come from."""
    def key(value):
        return None if pd.isna(value) else bool(value)
    words = pd.DataFrame({"figure": table["figure"], "claim": table["claim"],
                          "verdict": [VERDICTS[key(h)] for h in table["holds"]], "models": table["models"],
                          "statistic": table["statistic"], "comparison": table["comparison"], "n": table["n"],
                          "run": [RUNS[key(s)] for s in table["smoke"]]})
    return words.assign(table=table["table"]) if "table" in table else words


def shown(table):
    """Verdicts as a notebook shows them below its figure (`readable`, without the claim, which the notebook states);
    in a smoke run it first prints that they mean nothing."""
    if table["smoke"].eq(True).any():
        print(SMOKE_NOTE)
    return readable(table).drop(columns="claim").reset_index(drop=True)


def report(table, absent, folder):
    """The verdicts as Markdown: one row per verdict, then why each figure without a table was not judged."""
    rows = readable(table).drop(columns="n")
    lines = ["# Does the claim hold?", "", f"Verdicts from the figure tables in {folder} (python -m helpers.claims). "
             "run: smoke means a smoke run made the table, and its verdict means nothing.", "", markdown(rows)]
    if absent:
        lines += ["", "Not judged:"] + [f"- {figure}: {why}" for figure, why in absent.items()]
    return "\n".join(lines)


def main(argv=None):
    arguments = argparse.ArgumentParser(prog="python -m helpers.claims", description=__doc__.split("\n\n")[0])
    arguments.add_argument("--results", help="the results folder (default: results/ in the project folder, or "
                           "$VITS_RESULTS)")
    folder = results_folder(arguments.parse_args(argv).results)
    table, absent = judge(folder)
    text = report(table, absent, folder)
    print(text)
    try:
        with writing(folder / "claims.csv"):
            folder.mkdir(parents=True, exist_ok=True)
            table.to_csv(folder / "claims.csv", index=False)
            (folder / "claims.md").write_text(text + "\n")
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
