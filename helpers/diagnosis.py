"""What kind of model is yours? Where one model stands between the paper's ResNet-50 and ViT-Ti, claim by claim
(`diagnose.ipynb`).

The notebook measures the model and both references in the same run (their official weights; fresh ones in a smoke
run): the Fourier and variance analysis (Fig. 2a/8, Fig. 9), the lesion study (Sec. 4), a small certified Hessian
(Fig. 1c/4 on a few mini-batches) and CKA against both references. Each sweep goes through its figure's own
`run(Config(...))`, so its rows are stored, bound to their definition and resumed as in the figure's notebook;
`Config.sweep(figure_config, ...)` makes a figure's config of the three models from this run's settings.

`standing` places the model on every statistic that `helpers.claims.measurements` gives, from the same tables the
verdicts are computed from. With ResNet-50 at 0 and ViT-Ti at 1, the model's value sits at
`scale = (yours - ResNet-50) / (ViT-Ti - ResNet-50)`: "like resnet_50" below 1/3, "like vit_ti" above 2/3,
"between" in the middle third (the thirds are ours: the paper gives no threshold). A scale needs two references
that are finite and differ by more than `MARGIN` (5 %) of the larger magnitude; otherwise the model is not placed
("cannot place: resnet_50 and vit_ti do not differ here"). The 5 % is ours too: the diagnosis measures on a few
mini-batches and 2,000 test images, and a smaller gap would stretch their sampling noise over the whole scale, where
a model's place would be noise. A statistic of a block kind that
only one reference has (the share of MSA blocks that lower the highest frequency: ResNet-50 has no MSA) places the
model by the claim's own verdict instead: "like vit_ti" when the model's verdict and ViT-Ti's agree, "unlike vit_ti"
when they differ.
"""
import math
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from helpers import claims, models, provenance
from helpers.experiment import Experiment, Pretrained, positive, setting

REFERENCES = ("resnet_50", "vit_ti")  # 0 and 1 of the scale: the paper's CNN and its ViT
THIRDS = (1 / 3, 2 / 3)  # scale below the first: like the CNN; above the second: like the ViT; between: between
MARGIN = 0.05  # the references must differ by more than this share of the larger magnitude to span a scale


@dataclass
class Config(Experiment):
    """One model, diagnosed against the references; the sizes are kept small: a diagnosis, not the figures."""
    model: str = setting("swin_ti", "the model to diagnose: a registry name (python -m helpers.models lists them), "
                         "timm:NAME or file.py:FUNCTION", identity=False)
    checkpoint: str | None = setting(None, "its weights, a checkpoint file (None: official weights, else fresh ones)",
                                     identity=False)
    checkpoint_root: str = setting("checkpoints", "folder of the official checkpoints (downloaded there on first use)",
                                   identity=False)
    images: int = setting(2000, "CIFAR-100 test images of the spectra, variances, lesions and CKA, from the first",
                          smoke=4, check=positive)
    batch_size: int = setting(250, "images per batch; CKA's minibatch size n (at least 4)", smoke=4,
                              check=lambda n: None if n >= 4 else "must be at least 4 (CKA's unbiased HSIC)")
    hessian_batches: int = setting(4, "Hessian: augmented training mini-batches, one certified Lanczos run each",
                                   smoke=1, check=positive)
    hessian_batch_size: int = setting(16, "Hessian: images per mini-batch", smoke=2, check=positive)
    weight_decay: float = setting(0.05, "Hessian: the loss NLL + weight_decay x (1/2)|w|^2 (0: NLL alone)")
    k: int = setting(5, "Hessian: eigenvalues of largest magnitude per mini-batch (the paper's top-5)", smoke=1,
                     check=positive)
    max_steps: int = setting(128, "Hessian: Lanczos steps at most (memory: max_steps x parameters numbers)", smoke=1,
                             check=positive)
    workers: int | None = setting(None, "data-loading processes (None: up to 4)", identity=False, smoke=0)

    def __post_init__(self):
        super().__post_init__()
        if models.resolve(self.model).imagenet:
            raise ValueError(f"model={self.model!r} classifies ImageNet's 1,000 classes; the diagnosis measures "
                             "CIFAR-100 models: give a CIFAR model (a registry name, timm:NAME or your own file) and "
                             "its checkpoint.")
        if self.smoke and self.checkpoint:
            raise ValueError(f"checkpoint={self.checkpoint!r}: a smoke run uses fresh weights, so this file would be "
                             "ignored; drop it, or run without smoke")

    def names(self):
        """The line-up, in the order of the scale: the CNN, the model, the ViT (a model that is one of them once)."""
        return list(dict.fromkeys([REFERENCES[0], self.model, REFERENCES[1]]))

    def spec(self, name):
        """The resolved `helpers.models.Spec` of one of `names()` (built with the 100 CIFAR-100 classes)."""
        return models.resolve(name)

    def pretrained(self, name, device=None):
        """One of `names()` with its weights (see `experiment.Pretrained.pretrained`), in eval mode on `device`."""
        return self.sweep(Pretrained).pretrained(name, device)

    def run_kind(self):
        """What the diagnosis's numbers rest on (`helpers.provenance`): the three models' weights and the data."""
        return provenance.of(self.sweep(Pretrained))

    def figure_name(self, what):
        """The file name of one of the diagnosis's figures: `diagnose_<model>_<what>`, one set per model."""
        return f"diagnose_{self.spec(self.model).slug}_{what}"

    def sweep(self, figure_config, **settings):
        """`figure_config` (a figure's `Config`, or `experiment.Pretrained`) of the three models with this run's data,
        results, weights and `settings`, smoke caps applied."""
        return figure_config(smoke=self.smoke, results=self.results, data_root=self.data_root, mirror=self.mirror,
                             models=self.names(), checkpoints={self.model: self.checkpoint} if self.checkpoint else {},
                             checkpoint_root=self.checkpoint_root, **settings).resolved()


def verdicts(tables, *, run=None):
    """The verdicts of `helpers.claims` on every table of `tables` ({claim name: its figure table}), as one table;
    `run`: what the numbers rest on (`helpers.provenance`)."""
    return pd.concat([claims.JUDGES[claim](table, run=run) for claim, table in tables.items()], ignore_index=True)


def block_counts(blocks):
    """{name: `Blocks`} -> a table of each model's parameters (millions) and blocks of each kind."""
    kinds = {name: Counter(b.kinds) for name, b in blocks.items()}
    table = pd.DataFrame(kinds).T.fillna(0).astype(int)
    table.insert(0, "parameters (M)", [round(models.count_parameters(b) / 1e6, 2) for b in blocks.values()])
    return table


@dataclass(frozen=True)
class Measure:
    """One model's value of one statistic, its own verdict (None: judged per pair), and why it has no value."""
    name: str
    value: float
    holds: bool | None
    why: str = ""


def measure(measured, name):
    """The `Measure` of model `name` among the rows of one statistic of `claims.measurements`."""
    rows = measured[measured.model == name]
    if rows.empty:
        return Measure(name, math.nan, None, f"{name} is not in the table")
    row = rows.iloc[0]
    why = row.comparison.removeprefix("cannot decide: ") if math.isnan(row.value) else ""
    return Measure(name, float(row.value), None if pd.isna(row.holds) else bool(row.holds), why)


def scale_problem(cnn, vit):
    """Why the references `cnn` and `vit` (`Measure`s with values) span no scale (see the module docstring), or ""."""
    infinite = [m.name for m in (cnn, vit) if math.isinf(m.value)]
    if infinite:
        return f"the value of {' and '.join(infinite)} is infinite"
    if abs(vit.value - cnn.value) <= MARGIN * max(abs(cnn.value), abs(vit.value)):
        return (f"{cnn.name} and {vit.name} do not differ here ({cnn.value:.4g} vs {vit.value:.4g}: by "
                f"{MARGIN:.0%} of the larger or less)")
    return ""


def place(yours, cnn, vit):
    """(scale, position, basis) of one statistic from the `Measure`s of the model and of the references."""
    measured = [m for m in (cnn, vit) if not math.isnan(m.value)]
    if math.isnan(yours.value):
        return math.nan, "not measured", yours.why
    if len(measured) == 2:
        apart = scale_problem(cnn, vit)
        if apart:
            return math.nan, "cannot place", apart
        scale = (yours.value - cnn.value) / (vit.value - cnn.value)
        position = f"like {cnn.name}" if scale < THIRDS[0] else f"like {vit.name}" if scale > THIRDS[1] else "between"
        return scale, position, f"scale: {cnn.name} 0, {vit.name} 1"
    missing = "; ".join(m.why for m in (cnn, vit) if m.why)
    if len(measured) == 1 and yours.holds is not None and measured[0].holds is not None:
        other = measured[0]
        position = f"like {other.name}" if yours.holds == other.holds else f"unlike {other.name}"
        return math.nan, position, (f"the claim {claims.VERDICTS[yours.holds]} for it and "
                                    f"{claims.VERDICTS[other.holds]} for {other.name} ({missing})")
    return math.nan, "cannot place", missing or "no verdict to compare"


def standing(tables, model, *, references=REFERENCES, msa_models=None):
    """Where `model` stands between `references` (the CNN at 0, the ViT at 1) on each statistic of the claims of
    `tables` ({claim name of `helpers.claims.CLAIMS`: the figure table of the model and both references}): a table of
    `figure`, `statistic`, the references' values and the model's (`yours`), `scale`, `position` and its `basis` (see
    the module docstring)."""
    rows = []
    for claim, table in tables.items():
        measured = claims.measurements(claim, table, msa_models=msa_models)
        for (figure, statistic), group in measured.groupby(["figure", "statistic"], sort=False):
            if not statistic:  # the table as a whole cannot be judged (empty, a column missing)
                rows.append({"figure": figure, "statistic": claims.CLAIMS[claim][1], "position": "cannot place",
                             "basis": group.comparison.iloc[0].removeprefix("cannot decide: ")})
                continue
            yours, cnn, vit = (measure(group, name) for name in (model, *references))
            scale, position, basis = place(yours, cnn, vit)
            rows.append({"figure": figure, "statistic": statistic, references[0]: cnn.value, "yours": yours.value,
                         references[1]: vit.value, "scale": scale, "position": position, "basis": basis})
    return pd.DataFrame(rows, columns=["figure", "statistic", references[0], "yours", references[1], "scale",
                                       "position", "basis"])
