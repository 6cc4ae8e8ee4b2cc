"""Verdicts: the one value policy every claim follows, and the rows a verdict is written in.

A verdict is a measurement: `holds` (True), `fails` (False) or `cannot decide` (None, and the comparison says why).
Every claim of `helpers.claims` and `helpers.paired` takes its values through this policy:

- NaN is no value: it is dropped, and `n` counts only the values used (`Sample`); nothing left cannot decide.
- An infinite value is infinite (a loss that diverged): it enters the statistic as it is (a mean over an infinity
  is infinite), and the comparison says how many there were ("24 of 80 edge points infinite").
- Two values are compared only when both exist; equal values (a tie, or both infinite the same way) cannot decide
  (`compare`).
- A sign claim on a change or slope of exactly zero cannot decide (`signed`).
- A majority claim ("most blocks") counts a change of exactly zero for neither side: it holds when more than half of
  all the changes agree even without them, fails when fewer than half agree even with them, and otherwise (exactly
  half, or the zeros decide) cannot decide (`majority`).
"""
import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import pandas as pd

CLAIMS = {  # each claim's figure and the paper's claim, short
    "fourier": ("Fig. 2a/8", "MSAs are low-pass filters; Convs are high-pass filters"),
    "variance": ("Fig. 9", "MSAs reduce feature-map variance; Convs and MLPs increase it"),
    "hessian": ("Fig. 1c/4", "ViT's positive Hessian eigenvalues are smaller, and ViT has negative ones, which ResNet "
                             "hardly has"),
    "landscape": ("Fig. 1a", "MSAs flatten the loss landscape"),
    "robustness": ("Fig. 2b", "ViT is robust to high-frequency noise; ResNet is vulnerable to it"),
    "lesion": ("Sec. 4", "MSAs at the end of a stage (not of the model) matter most"),
    "accuracy": ("Accuracy", "the official checkpoints reach the paper's accuracy"),
}
VERDICTS = {True: "holds", False: "fails", None: "cannot decide"}
RUN_KINDS = ("smoke", "unverified", "user", "official")  # what numbers rest on (helpers.provenance), least verified first
SMOKE_NOTE = "SMOKE RUN: fresh weights and synthetic data, so these verdicts mean nothing."
UNVERIFIED_NOTE = ("UNVERIFIED: some weights or data could not be checked against published digests or fingerprints "
                   "(a mirror's or a cache's other files, or PiT-Ti's and Swin-Ti's weights, for which none were "
                   "published): run unverified.")


# --- the value policy ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """The values a statistic is taken over: NaN dropped (`dropped` of them), infinities kept."""
    values: np.ndarray
    dropped: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def infinite(self) -> int:
        return int(np.isinf(self.values).sum())

    def of(self, statistic) -> float:
        """`statistic` (np.mean, np.max, np.median, ...) of the values; NaN when there are none."""
        if not self.n:
            return math.nan
        with np.errstate(invalid="ignore"):  # +inf and -inf together: no mean, NaN
            return float(statistic(self.values))

    def note(self, what: str) -> str:
        """What the policy did, in words ("24 of 80 edge points infinite; 2 NaN dropped"), or ""."""
        parts = [f"{self.infinite} of {self.n} {what} infinite"] if self.infinite else []
        return "; ".join(parts + ([f"{self.dropped} NaN dropped"] if self.dropped else []))


def sample(values) -> Sample:
    """The `Sample` of `values` (anything array-like of numbers)."""
    values = np.asarray(values, dtype=float).ravel()
    kept = ~np.isnan(values)
    return Sample(values[kept], int((~kept).sum()))


@dataclass(frozen=True)
class Measured:
    """One model's value of a statistic, the values behind it (`n`) and what the policy did (`note`)."""
    value: float
    n: int
    note: str = ""


NOTHING = Measured(math.nan, 0)


class Decision(NamedTuple):
    holds: bool | None
    why: str = ""  # why it cannot decide


def compare(x: float, y: float, claimed: str, names=("the first", "the second")) -> Decision:
    """Whether `x` is `claimed` ("smaller" or "larger") than `y`; no value, a tie or two equal infinities cannot
    decide."""
    if math.isnan(x) or math.isnan(y):
        return Decision(None, f"no value for {names[0] if math.isnan(x) else names[1]}")
    if x == y:
        return Decision(None, "both are infinite" if math.isinf(x) else f"a tie: both are {x:.6g}")
    return Decision(bool(x < y) if claimed == "smaller" else bool(x > y))


def signed(value: float, sign: int, what: str = "the change") -> Decision:
    """Whether `value` has the claimed `sign` (+1 or -1); NaN or exactly zero cannot decide."""
    if math.isnan(value):
        return Decision(None, f"no value for {what}")
    if value == 0:
        return Decision(None, f"{what} is exactly zero")
    return Decision(bool(sign * value > 0))


def majority(agree: int, against: int, total: int) -> Decision:
    """Whether more than half of `total` agree, `total - agree - against` of them (exactly zero) counting for
    neither side: undecided when exactly half agree or when those zeros decide it."""
    zeros = total - agree - against
    if total == 0:
        return Decision(None, "no value")
    if 2 * agree > total:
        return Decision(True)
    if 2 * (agree + zeros) < total:
        return Decision(False)
    if not zeros:
        return Decision(None, f"exactly half ({agree} of {total}) agree")
    return Decision(None, f"{agree} of {total} agree and {zeros} change by exactly zero, which count for neither "
                          "side and decide it")


def weakest(*kinds: str) -> str:
    """The least verified of `kinds` (RUN_KINDS): what numbers resting on all of them rest on."""
    unknown = [kind for kind in kinds if kind not in RUN_KINDS]
    if unknown:
        raise ValueError(f"run kind {unknown[0]!r} is none of {', '.join(RUN_KINDS)}")
    return min(kinds, key=RUN_KINDS.index)


# --- verdict rows --------------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    figure: str
    claim: str
    models: str          # the model, or "A vs B": the one with MSA blocks against the one without
    statistic: str
    value: float
    comparison: str      # what is compared, in numbers; "cannot decide: why; ..." where holds is None
    holds: bool | None
    n: int | None        # blocks, eigenvalues, grid points, bands or test images behind the value
    run: str | None      # what the numbers rest on: smoke, official, user, unverified (helpers.provenance); None


COLUMNS = tuple(field.name for field in fields(Verdict))


def verdict(claim: str, names: str, statistic: str, value: float, comparison: str, decision: Decision, n,
            run: str | None) -> Verdict:
    """A verdict row of `claim` (a name of CLAIMS); an undecided `decision` puts its reason first in the comparison."""
    if decision.holds is None:
        comparison = f"cannot decide: {decision.why}" + (f"; {comparison}" if comparison else "")
    return Verdict(*CLAIMS[claim], names, statistic, float(value), comparison, decision.holds, n, run)


def undecided(claim: str, reason: str, run: str | None, names: str = "", statistic: str = "") -> Verdict:
    return verdict(claim, names, statistic, math.nan, "", Decision(None, reason), 0, run)


def verdicts(rows) -> pd.DataFrame:
    """The rows as a table of COLUMNS; `holds`, `n` and `run` keep None (not known) apart from False and 0."""
    return pd.DataFrame({column: pd.Series([getattr(row, column) for row in rows],
                                           dtype=object if column in ("holds", "n", "run") else None)
                         for column in COLUMNS})


def problem(table: pd.DataFrame, columns) -> str | None:
    """Why `table` cannot be judged at all (no rows, or lacking some of `columns`), or None."""
    if len(table) == 0:
        return "the table is empty"
    missing = [column for column in columns if column not in table]
    return f"the table has no column {', '.join(missing)}" if missing else None


def by_model(table: pd.DataFrame):
    """The rows of each model, in order of appearance; a table without a `model` column is one model, "model"."""
    table = table.reset_index(drop=True)  # concatenated tables repeat their indices
    return (table if "model" in table else table.assign(model="model")).groupby("model", sort=False)


# --- verdicts in words ---------------------------------------------------------------------------------------------

def known(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The verdicts in words: figure, claim, verdict (holds, fails, cannot decide), models, statistic, comparison, n,
    run (smoke, official, user, unverified, or unknown) and, where `table` has it, the table they come from."""
    words = pd.DataFrame({"figure": table["figure"], "claim": table["claim"],
                          "verdict": [VERDICTS[None if known(h) is None else bool(h)] for h in table["holds"]],
                          "models": table["models"], "statistic": table["statistic"],
                          "comparison": table["comparison"], "n": table["n"],
                          "run": [known(run) or "unknown" for run in table["run"]]})
    return words.assign(table=table["table"]) if "table" in table else words


def notes(table: pd.DataFrame) -> list[str]:
    """The warnings the verdicts of `table` need: a smoke run's mean nothing; unverified files are said."""
    runs = set(table["run"])
    return [note for kind, note in (("smoke", SMOKE_NOTE), ("unverified", UNVERIFIED_NOTE)) if kind in runs]


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """Verdicts as a notebook shows them below its figure (`readable`, without the claim, which the notebook states),
    after the `notes` they need."""
    for note in notes(table):
        print(note)
    return readable(table).drop(columns="claim").reset_index(drop=True)


def markdown(rows: pd.DataFrame) -> str:
    """`rows` (a DataFrame of strings) as a Markdown table, its columns padded to one width."""
    cells = [list(rows.columns)] + [[str(v).replace("|", "\\|") for v in row] for row in rows.to_numpy()]
    widths = [max(len(row[i]) for row in cells) for i in range(len(rows.columns))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines[:1] + ["|" + "|".join("-" * (w + 2) for w in widths) + "|"] + lines[1:])
