"""The build-up rule (Sec. 4, the README's "How to apply MSA to your own model"): where to put MSA blocks in a CNN.

The authors' rules: (1) alternately replace Conv blocks with MSA blocks from the end of a baseline CNN; (2) if the
added MSA does not improve predictive performance, replace a Conv block at the end of an earlier stage instead;
(3) use more heads and wider MSAs in later stages (AlterNet's `heads` per stage and its stage widths).

`build_up` walks rules 1 and 2 the way the authors' build-up animation of ResNet-50 on CIFAR-100 does
(resources/vit/buildup_v.key), which is what it reproduces step by step:

- start from the baseline, no MSA, and from its last stage;
- within a stage, add MSA blocks at every other position from its end (n-1, n-3, ...; never index 0, the block
  that changes channels and stride), each on top of the layout before it, whether or not that one improved;
- once the stage has no position left, go on at the end of the previous stage from the BEST layout so far; when
  the last MSA added did not improve on it, that is rule 2 (the step is flagged `rule_2`), otherwise it is rule 1
  going on from the end of the network;
- stop after the first stage. The best layout is the one with the highest accuracy (ties keep the earlier).

Each variant is one unit of work: `accuracy(layout)` trains it or reads its stored result, and the sequence of
layouts depends only on the accuracies returned, so a rerun backed by stored results visits the same layouts.
`run(Config(...))` is that with training: each variant trained by `helpers.train` with the authors' recipe for a
budget of epochs, its checkpoint kept and its row stored in a table bound to the definition (baseline, recipe,
budget, data). The build-up is sequential, so it runs in one process, not under torchrun.
"""
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from helpers import data, experiment, models, train
from helpers.alternet import Layout
from helpers.common import pick_device, rank
from helpers.experiment import positive, setting


@dataclass(frozen=True)
class Step:
    layout: Layout
    accuracy: float
    kept: bool      # better than every layout before it: the new best
    rule_2: bool    # the previous MSA did not help: back to the best layout, at the end of an earlier stage
    best: Layout    # the best layout so far, this one included


def positions(num_blocks, stage):
    """Rule 1 within `stage` (from 1): every other block from its end, never the first."""
    return range(num_blocks[stage - 1] - 1, 0, -2)


def build_up(num_blocks, accuracy):
    """Yields the `Step`s of the build-up rule on a baseline with `num_blocks` blocks per stage (e.g. AlterNet-50's
    (3, 4, 6, 4)), calling `accuracy(layout) -> float` once per visited layout; the last step's `best` is the
    result."""
    layout = best = Layout()
    best_accuracy = accuracy(layout)
    previous = Step(layout, best_accuracy, kept=True, rule_2=False, best=best)
    yield previous
    for stage in range(len(num_blocks), 0, -1):
        for n, index in enumerate(positions(num_blocks, stage)):
            rule_2 = n == 0 and not previous.kept
            layout = (best if n == 0 else layout).plus(stage, index)
            score = accuracy(layout)
            kept = score > best_accuracy
            if kept:
                best, best_accuracy = layout, score
            previous = Step(layout, score, kept, rule_2, best)
            yield previous


# The experiment: `buildup.ipynb` and `python -m helpers.buildup` both call `run`. It trains each variant with the
# training module (the strong recipe) and keeps its checkpoint and metrics: one stored row per visited layout.

@dataclass
class Config(train.Training):
    """The build-up rule from a baseline, each variant trained with the same recipe and budget."""
    baseline: str = setting("alternet_50", "the baseline: blocks per stage and block types of the variants (the "
                            "authors' animation: AlterNet-50's (3, 4, 6, 4) pre-activation bottlenecks)",
                            choices=("alternet_18", "alternet_34", "alternet_50", "alternet_101"))
    epochs: int | None = setting(30, "training epochs of each variant after warm-up (the paper: 300)", smoke=1,
                                 check=positive)
    warmup_epochs: int | None = setting(1, "warm-up epochs of each variant (the paper: 5)", smoke=0)
    folder: str = setting("checkpoints/buildup", "the variants' checkpoints, a folder per definition (a smoke run: "
                          "RESULTS/smoke/buildup)", identity=False)


def stage_sizes(baseline):
    """Blocks per stage of a registry AlterNet, e.g. (3, 4, 6, 4) for alternet_50."""
    model = models.create(baseline, msa_positions=Layout())
    return tuple(len(getattr(model, f"layer{stage}")) for stage in range(1, 5))


def train_variant(config, layout, folder, train_set, test_set, *, progress=True):
    """Train the baseline with MSA blocks at `layout` (resuming its checkpoint in `folder`); its stored row."""
    recipe = train.RECIPES[config.recipe]
    torch.manual_seed(config.seed)
    model = train.build(config.baseline, recipe, data.NUM_CLASSES[config.dataset], msa_positions=layout)
    log = train.train(model.to(pick_device()), train_set, test_set, name=layout.name, recipe=recipe,
                      dataset=config.dataset, folder=folder, epochs=config.epochs,
                      warmup_epochs=config.warmup_epochs, batch_size=config.batch_size, seed=config.seed,
                      workers=config.workers, progress=progress,
                      extra={"baseline": config.baseline, "smoke": config.smoke})
    last = log.iloc[-1]
    return {"layout": layout.name, "accuracy": float(last.test_accuracy), "nll": float(last.test_nll),
            "ece": float(last.test_ece), "epochs": int(last.epoch),
            "checkpoint": str(train.checkpoint_path(folder, layout.name, config.dataset))}


def run(config, *, progress=True):
    """Walk the build-up rule from `config.baseline`, training each variant it visits (or reading its stored
    row); returns the one `experiment.Outcome`, whose units are the visited layouts in order."""
    config = config.resolved()
    if rank().world_size > 1:
        raise ValueError("the build-up is sequential (each step depends on the accuracies before it): run it in one "
                         "process; `python -m helpers.train` trains one variant on several GPUs")
    # every variant is an AlterNet of the baseline's registry entry: CIFAR images at their size and normalisation
    baseline = models.resolve(config.baseline)
    spec = baseline.sized(baseline.build(data.NUM_CLASSES[config.dataset]))
    train_set, test_set = train.datasets_of(config, spec)
    table = experiment.table(config, "buildup", config.baseline, ("layout",), weights=None,
                             data={"train": data.fingerprint(train_set), "test": data.fingerprint(test_set)})
    folder = (config.results_folder() / "smoke" / "buildup" if config.smoke else Path(config.folder)) / table.folder.name
    stored, visited = {row["layout"]: row for row in table.rows()}, []

    def accuracy(layout):
        visited.append({"layout": layout.name})
        if layout.name not in stored:
            stored[layout.name] = train_variant(config, layout, folder, train_set, test_set, progress=progress)
            table.add(stored[layout.name])
        return stored[layout.name]["accuracy"]

    try:
        for _ in build_up(stage_sizes(config.baseline), accuracy):
            pass
    except KeyboardInterrupt:
        print(f"\nInterrupted: {len(stored)} trained variants are saved in {table.folder}; run the same command "
              "(or cell) again to resume (an unfinished variant resumes from its last epoch).", flush=True)
        raise
    return [experiment.Outcome(config.baseline, table, visited)]


def steps(outcome, baseline):
    """The figure's table of a finished build-up: one row per visited layout, in order, with its accuracy, NLL, the
    number of MSAs, the layout it was built on (`parent`), whether it was kept, whether rule 2 led there."""
    rows = {row["layout"]: row for row in outcome.table.rows()}
    walk = build_up(stage_sizes(baseline), lambda layout: rows[layout.name]["accuracy"])
    table, seen = [], []
    for number, step in enumerate(walk):
        parent = next((s for s in reversed(seen) if s.positions < step.layout.positions
                       and len(s.positions) == len(step.layout.positions) - 1), None)
        row = rows[step.layout.name]
        table.append({"step": number, "layout": step.layout.name, "msas": len(step.layout.positions),
                      "parent": parent.name if parent else "", "accuracy": row["accuracy"], "nll": row["nll"],
                      "kept": step.kept, "rule_2": step.rule_2, "best": step.best.name})
        seen.append(step.layout)
    return pd.DataFrame(table)


def main(argv=None):
    return experiment.main(Config, run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
