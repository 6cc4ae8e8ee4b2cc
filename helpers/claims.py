"""Does the claim hold? Each figure's claim as a measured verdict, from the table the figure makes.

Each verdict function takes the table a figure's notebook makes (the DataFrame itself, or the CSV `plots.save` wrote,
read back) and returns verdict rows (`helpers.verdict.COLUMNS`): the figure, the paper's claim, the models, the
statistic and its value, the comparison in numbers, `holds` (True, False, or None where the table cannot decide: the
comparison then says why), `n` (the values behind it) and `run` (what the numbers rest on: smoke, official, user,
unverified; `helpers.provenance`). Every claim follows the value policy of `helpers.verdict` (NaN dropped, infinities
kept and counted, ties and zeros undecided); each function's docstring says exactly when it holds, fails and cannot
decide. Where the paper gives no threshold, a claim holds when the sign or the majority it states is measured.

- Fig. 2a / 8 `fourier`, Fig. 9 `variance`: per model and block kind, the sign of the change across each block.
- Fig. 1c / 4 `hessian`, Fig. 1a `landscape`, Fig. 2b `robustness`: a model with MSA blocks against one without
  (`helpers.paired`).
- Sec. 4 `lesion`: per model, the MSAs at the end of a stage (not of the model) against the other MSAs.
- `accuracy`: per model, ours against the paper's.

Each model's own values, also those a pair's verdict compares, come from `measurements` (what `helpers.diagnosis`
places a model by); `shown` is the verdict table as the figure notebooks end with it.

`python -m helpers.claims [--results DIR]` judges every figure table saved in a results folder (`diagnose.ipynb`'s
too), says for each figure without one why, and writes the verdicts as `claims.csv` and `claims.md` in that folder.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.common import saved_run, writing
from helpers.experiment import results_folder
from helpers.paired import (hessian, hessian_statistics, landscape, landscape_statistics, robustness,  # noqa: F401
                            robustness_statistics)  # the pair claims are claims too: claims.hessian, ...
from helpers.verdict import (CLAIMS, COLUMNS, VERDICTS, Decision, by_model, compare, majority,  # noqa: F401
                             markdown, problem, readable, sample, shown, undecided, verdict, verdicts)

CLAIMED_SIGN = {"msa": -1, "conv": 1, "mlp": 1}  # Fig. 8 and Fig. 9: what an MSA lowers, a Conv or an MLP raises
QUANTITIES = {"fourier": "Δ log amplitude at the highest frequency", "variance": "feature-map variance"}


# --- Fig. 2a / 8 and Fig. 9: the sign of the change across each block --------------------------------------------

def block_changes(blocks: pd.DataFrame, column: str) -> pd.DataFrame:
    """The change of `column` across each block of one model (`blocks` in block order): its value minus the previous
    block's, for the blocks after the first of a CLAIMED_SIGN kind that do not subsample (shade `pool`, or a new map
    `size`); NaN where a value is missing."""
    change = blocks[column].astype(float).diff()
    shade = blocks["shade"] if "shade" in blocks else blocks["kind"]  # tables saved before `shade` existed
    resized = blocks["size"].diff().fillna(0).ne(0) if "size" in blocks else False
    kept = blocks["kind"].isin(list(CLAIMED_SIGN)) & shade.ne("pool") & ~resized
    kept.iloc[:1] = False  # the first block has no previous one
    return pd.DataFrame({"kind": blocks["kind"][kept], "change": change[kept]})


def kind_statistic(kind: str, quantity: str) -> str:
    return f"share of {kind} blocks that {'lower' if CLAIMED_SIGN[kind] < 0 else 'raise'} the {quantity}"


def kind_verdict(claim, name, kind, changes, present, quantity, run):
    """One model's verdict for one block kind: the majority (`helpers.verdict.majority`) of its changes' signs."""
    sign, statistic = CLAIMED_SIGN[kind], kind_statistic(kind, quantity)
    values = sample(changes.change[changes.kind == kind])
    if not values.n:
        why = (f"every {kind} block of {name} subsamples or has no value" if kind in present
               else f"{name} has no block of kind {kind}")
        return undecided(claim, why, run, name, statistic)
    agree, against = int((sign * values.values > 0).sum()), int((sign * values.values < 0).sum())
    verb, other = ("lower", "raise") if sign < 0 else ("raise", "lower")
    note = values.note(f"{kind} changes")
    comparison = (f"{agree} of {values.n} {kind} blocks {verb} it, {against} {other} it (claimed: most); mean change "
                  f"{values.of(np.mean):+.3g}" + (f"; {note}" if note else ""))
    return verdict(claim, name, statistic, agree / values.n, comparison, majority(agree, against, values.n),
                   values.n, run)


def kind_verdicts(claim: str, table: pd.DataFrame, column: str, run) -> pd.DataFrame:
    """Per model and kind of CLAIMED_SIGN (`msa` always, the others where present): `kind_verdict`."""
    if table.duplicated([column for column in ("model", "block") if column in table]).any():
        why = "more than one row per block of a model (Fig. 8 reads the table of fourier.highest_frequency)"
        return verdicts([undecided(claim, why, run)])
    rows = []
    for name, blocks in by_model(table):
        changes = block_changes(blocks.sort_values("block"), column)
        present = set(blocks["kind"])
        rows += [kind_verdict(claim, name, kind, changes, present, QUANTITIES[claim], run)
                 for kind in dict.fromkeys(["msa", *blocks["kind"]]) if kind in CLAIMED_SIGN]
    return verdicts(rows)


def fourier(table: pd.DataFrame, *, run=None) -> pd.DataFrame:
    """Fig. 2a / 8 from the table of `fourier.highest_frequency` (a row per block: `model`, `block`, `kind`, `shade`,
    `size`, `delta_log_amplitude`; not the whole `relative_log_amplitudes` table, which cannot decide). Per model and
    kind, over the changes across its blocks (`block_changes`): holds when more than half of them are negative for
    `msa` (low-pass) and positive for `conv` and `mlp` (high-pass); fails when fewer than half are, even counting
    changes of exactly zero for the claim; cannot decide when exactly half are, when the zeros decide, or when the
    model has no such block (a model without MSA blocks gets an `msa` row that cannot decide)."""
    reason = problem(table, ("block", "kind", "delta_log_amplitude"))
    return verdicts([undecided("fourier", reason, run)]) if reason else kind_verdicts(
        "fourier", table, "delta_log_amplitude", run)


def variance(table: pd.DataFrame, *, run=None) -> pd.DataFrame:
    """Fig. 9 from the table of `variance.variances` (`model`, `block`, `kind`, `shade`, `variance`): as `fourier`, on
    the changes of the feature-map variance (MSAs claimed to lower it, Convs and MLPs to raise it); subsampling blocks
    are left out."""
    reason = problem(table, ("block", "kind", "variance"))
    return verdicts([undecided("variance", reason, run)]) if reason else kind_verdicts(
        "variance", table, "variance", run)


# --- Sec. 4 and the accuracy table ---------------------------------------------------------------------------------

LESION_STATISTIC = "mean accuracy drop, last MSA of each stage (not of the model) minus the other MSAs"


def stage_end_verdict(name: str, blocks: pd.DataFrame, run):
    """One model's lesion verdict (see `lesion`)."""
    missing = blocks["stage_end"].isna()
    if missing.any():
        return undecided("lesion", f"the table is in error: stage_end is missing for {missing.sum()} blocks of {name} "
                                   "(lesion.drops marks every block)", run, name, LESION_STATISTIC)
    ends = blocks["stage_end"].map(lambda v: str(v).lower() == "true")
    if ends.sum() < 2:
        return undecided("lesion", f"{name} has a single stage: its last MSA ends the model, not a stage", run, name,
                         LESION_STATISTIC)
    stage = ends.shift(fill_value=False).cumsum()  # a stage ends at its stage_end row
    msa = blocks.assign(stage=stage)[blocks["kind"] == "msa"]
    if msa.empty:
        return undecided("lesion", f"{name} has no MSA block", run, name, LESION_STATISTIC)
    last = msa.groupby("stage").tail(1).index  # the last MSA of each stage, the model's own last among them
    at_ends, others = last.drop(msa.index[-1]), msa.index[~msa.index.isin(last)]
    if not len(at_ends) or not len(others):
        why = "no stage but the last has an MSA" if not len(at_ends) else "every MSA but the model's last ends a stage"
        return undecided("lesion", f"{name}: {why}", run, name, LESION_STATISTIC)
    at_ends, others = sample(msa["accuracy_drop"][at_ends]), sample(msa["accuracy_drop"][others])
    if not at_ends.n or not others.n:
        return undecided("lesion", f"{name}: the drops are not all computed yet", run, name, LESION_STATISTIC)
    high, low = at_ends.of(np.mean), others.of(np.mean)
    comparison = (f"{100 * high:.2f} % over {at_ends.n} stage-end MSAs vs {100 * low:.2f} % over the other "
                  f"{others.n}, the model's last MSA left out (claimed: larger at the stage ends)")
    decision = compare(high, low, "larger", ("the stage-end MSAs", "the other MSAs"))
    return verdict("lesion", name, LESION_STATISTIC, high - low, comparison, decision, at_ends.n + others.n, run)


def lesion(table: pd.DataFrame, *, run=None) -> pd.DataFrame:
    """Sec. 4 from `lesion.drops` (`model`, `kind`, `stage_end`, `accuracy_drop`, blocks in order). A stage is the
    blocks up to a `stage_end` row; the MSA at the end of a stage is its last MSA block (a transformer's stage ends
    with an MLP), except the model's last MSA, which ends the model, not a stage (the authors' README), and is left
    out of both groups. Per model: holds when the mean accuracy drop of the stage-end MSAs is larger than that of
    the other MSAs; fails when smaller; cannot decide on a tie, a single-stage model (ViT), a model without MSAs or
    without MSAs in both groups, or a table without `stage_end` for every block (an error in the table)."""
    reason = problem(table, ("model", "kind", "stage_end", "accuracy_drop"))
    if reason:
        return verdicts([undecided("lesion", reason, run)])
    return verdicts([stage_end_verdict(name, blocks, run) for name, blocks in by_model(table)])


def accuracy(table: pd.DataFrame, *, run=None, tolerance=1.0, percent=True) -> pd.DataFrame:
    """The accuracy table (`model`, `accuracy`, `paper_accuracy` in %, optionally `count`): in % as the notebook shows
    and saves it; `percent=False` for `train.accuracy_table`'s fractions. The paper gives no tolerance: per model,
    holds when ours is within `tolerance` points of the paper's, fails when further; a model the paper does not
    report, or without an accuracy, cannot decide."""
    reason = problem(table, ("model", "accuracy", "paper_accuracy"))
    if reason:
        return verdicts([undecided("accuracy", reason, run)])
    rows, statistic = [], "top-1 accuracy on the CIFAR-100 test set (%)"
    for row in table.to_dict("records"):
        name, ours, paper = row["model"], row["accuracy"] * (1 if percent else 100), row["paper_accuracy"]
        if pd.isna(paper) or pd.isna(ours):
            why = f"the paper reports no accuracy for {name}" if pd.isna(paper) else f"no accuracy for {name}"
            rows.append(undecided("accuracy", why, run, name, statistic))
            continue
        comparison = f"ours {ours:.2f} vs the paper's {paper:.1f}: {ours - paper:+.2f} points (claimed: within " \
                     f"±{tolerance:g})"
        count = None if pd.isna(row.get("count", math.nan)) else int(row["count"])
        rows.append(verdict("accuracy", name, statistic, ours, comparison, Decision(abs(ours - paper) <= tolerance),
                            count, run))
    return verdicts(rows)


JUDGES = {"fourier": fourier, "variance": variance, "hessian": hessian, "landscape": landscape,
          "robustness": robustness, "lesion": lesion, "accuracy": accuracy}  # claim name -> verdict function
PAIRED = {"hessian": lambda table: {name: value for by_loss in hessian_statistics(table).values()
                                    for name, value in by_loss.items()},
          "landscape": landscape_statistics, "robustness": robustness_statistics}  # statistics judged per pair


# --- each model's own numbers (diagnose.ipynb places a model between ResNet-50 and ViT-Ti by them) -----------------

def missing_value(claim, statistic, name):
    kinds = {kind_statistic(kind, QUANTITIES[claim]): kind for kind in CLAIMED_SIGN} if claim in QUANTITIES else {}
    why = f"{name} has no block of kind {kinds[statistic]}" if statistic in kinds else f"no value for {name}"
    return math.nan, None, f"cannot decide: {why}"


def measurements(claim: str, table: pd.DataFrame, *, msa_models=None) -> pd.DataFrame:
    """Each model's own value of every statistic of `claim` (a name of JUDGES) on `table`: a table of `figure`,
    `statistic`, `model`, `value` (NaN where the model has none, and `comparison` says why), `holds` (the model's
    own verdict for a statistic judged per model; None for one judged per pair) and `comparison`, a row for every
    statistic and model. Where no statistic can be computed, the reasons the verdicts give, as rows without statistic
    or model."""
    judged = JUDGES[claim](table, **({"msa_models": msa_models} if claim in PAIRED else {}))
    names = list(dict.fromkeys(table["model"])) if "model" in table else ["model"]
    found = {}  # statistic -> {model: (value, holds, comparison)}
    for row in judged[judged["models"].isin(names)].itertuples():
        found.setdefault(row.statistic, {})[row.models] = (row.value, row.holds, row.comparison)
    if claim in PAIRED and not (judged["models"] == "").all():
        for statistic, (claimed, measured) in PAIRED[claim](table).items():
            for name, m in measured.items():
                found.setdefault(statistic, {})[name] = (m.value, None, f"cannot decide: {m.note or 'no value'}"
                                                         if math.isnan(m.value) else f"claimed: {claimed} with MSAs")
    rows = [(statistic, name, *by_name.get(name, missing_value(claim, statistic, name)))
            for statistic, by_name in found.items() for name in names]
    rows = rows or [("", "", math.nan, None, comparison) for comparison in dict.fromkeys(judged["comparison"])]
    frame = pd.DataFrame(rows, columns=["statistic", "model", "value", "holds", "comparison"]).astype({"holds": object})
    return frame.assign(figure=CLAIMS[claim][0])[["figure", *frame.columns]]


# --- python -m helpers.claims: every saved figure table of a results folder --------------------------------------

SAVED = (  # (figure tables in the results folder, a pattern; the claims judged on them; the notebook that saves them)
    ("fourier_highest_frequency.csv", ("fourier",), "fourier_analysis.ipynb"),
    ("fourier_highest_frequency_imagenet.csv", ("fourier",), None),  # None: optional
    ("featuremap_variance.csv", ("variance",), "featuremap_variance.ipynb"),
    ("hessian_max_eigenvalues.csv", ("hessian",), "hessian.ipynb"),
    ("losslandscape.csv", ("landscape",), "losslandscape.ipynb"),
    ("robustness_frequency_noise.csv", ("robustness",), "robustness.ipynb"),
    ("lesion_accuracy_drop.csv", ("lesion",), "lesion.ipynb"),
    ("classification_accuracy.csv", ("accuracy",), "classification.ipynb"),
    ("diagnose_*_fourier_variance.csv", ("fourier", "variance"), None),  # diagnose.ipynb, one set per model
    ("diagnose_*_hessian.csv", ("hessian",), None),
    ("diagnose_*_lesion.csv", ("lesion",), None),
)


def read_table(path) -> pd.DataFrame:
    """A saved figure table: an empty file (a figure without rows) as an empty table, and cells that `plots.save`
    wrote as JSON lists (a batch's eigenvalues) as arrays again."""
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    for column in table.columns:
        cells = table[column].dropna()
        if len(cells) and cells.map(lambda v: isinstance(v, str) and v.startswith("[")).all():
            table[column] = table[column].map(lambda v: np.array(json.loads(v), dtype=float) if isinstance(v, str)
                                              else v)
    return table


def judge(results) -> tuple:
    """(the verdicts of every figure table saved in `results`, with `table`: its file; {figure: why it has none})."""
    found, absent = [], {}
    for pattern, names, notebook in SAVED:
        paths = sorted(Path(results).glob(pattern))
        for path, name in ((path, name) for path in paths for name in names):
            found.append(JUDGES[name](read_table(path), run=saved_run(path)).assign(table=path.name))
        if not paths and notebook:
            absent[CLAIMS[names[0]][0]] = f"no table yet ({notebook} saves {pattern})"
    return (pd.concat(found, ignore_index=True) if found else verdicts([]).assign(table=[])), absent


def report(table: pd.DataFrame, absent: dict, folder) -> str:
    """The verdicts as Markdown: one row per verdict, then why each figure without a table was not judged."""
    rows = readable(table).drop(columns="n")
    lines = ["# Does the claim hold?", "", f"Verdicts from the figure tables in {folder} (python -m helpers.claims). "
             "run: what the numbers rest on (smoke: meaningless; official: weights and data verified against the "
             "published digests; user: your own weights; unverified: files the digests cannot vouch for).", "",
             markdown(rows)]
    if absent:
        lines += ["", "Not judged:"] + [f"- {figure}: {why}" for figure, why in absent.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
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
