"""Lesion study (Sec. 4): remove one block at a time and measure what the model loses.

Removing a block zeroes the output of its residual branch, so that the stream passes through its shortcut alone
(identity for a transformer's msa/mlp block; act(shortcut(x)) for a post-activation ResNet block; the skip of
the pre-activation for an AlterNet block), by a removable hook in the model's own forward pass (`Blocks.lesioned`).
Blocks without a residual branch (embedding, pooling or patch merging, a block without a shortcut, the head)
cannot be removed. Nothing is copied or changed in the model.

A lesion sweep's unit is one removed block (`lesions(blocks)`, keyed by the block's name); `lesion_metrics`
computes one unit's row, test accuracy and mean NLL per image (`helpers.metrics`), and with `lesion=None` the
intact model's reference row. `run(Config(...))` stores the rows of every model in tables bound to the definition
(the notebook and `[torchrun --nproc-per-node N] python -m helpers.lesion` share it; ranks share the blocks), and
`drops` turns them into the figure's table. Any model specification works (`helpers.models`); a model of timm's
ImageNet weights has no CIFAR-100 classes and is refused.

The paper's reading (Sec. 4): multi-stage networks behave like a series of small models, and the MSAs at the end
of a stage matter most, so removing them costs the most accuracy. The authors add (their issue #41) that this holds
for shallow transformers and for Swin, a series of shallow ones, but that in a deep ViT the middle MSAs matter more
than the last ones, which suffer "attention collapse" (their maps stop depending on the query).
"""
import contextlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from helpers import data, experiment
from helpers.blocks import Blocks, split
from helpers.common import evaluating, pick_device
from helpers.experiment import Pretrained, positive, setting
from helpers.metrics import Accumulator
from helpers.sweep import fill

INTACT = "intact"  # the unit of the model with nothing removed


def as_blocks(model):
    return model if isinstance(model, Blocks) else split(model)


def lesions(model):
    """The units of a lesion sweep, in block order: one dict per block that can be removed, with its `block`
    name (the unit key), `index` in `split(model)` and `kind`."""
    return [{"block": block.name, "index": i, "kind": block.kind}
            for i, block in enumerate(as_blocks(model)) if block.removable]


@torch.no_grad()
def lesion_metrics(model, batches, *, lesion=None):
    """`helpers.metrics.Metrics` (accuracy, NLL, ...) of `model` with the block named `lesion` removed (None: the
    intact model), in eval mode, over `batches` of (images, labels), e.g. a DataLoader or `[(images, labels)]`.
    Runs on the device of the model's parameters."""
    blocks = as_blocks(model)
    device = next(blocks.parameters()).device
    accumulator = Accumulator(device=device)
    with evaluating(blocks), blocks.lesioned(lesion) if lesion is not None else contextlib.nullcontext():
        for images, labels in batches:
            accumulator.update(blocks(images.to(device)), labels.to(device))
    return accumulator.result()


# The experiment: the notebook and `python -m helpers.lesion` both call `run`

@dataclass
class Config(Pretrained):
    """One block removed at a time, for every model, on the CIFAR-100 test set."""
    models: list[str] = setting(["resnet_50", "vit_ti", "pit_ti", "swin_ti"],
                                "models (a trained AlterNet: add it with its file in `checkpoints`)", identity=False)
    images: int | None = setting(None, "CIFAR-100 test images, from the first (None: all 10,000)", smoke=8,
                                 check=positive)
    batch_size: int = setting(500, "images per batch", smoke=4, check=positive)
    workers: int | None = setting(None, "data-loading processes (None: up to 4)", identity=False, smoke=0)


def evaluation_batches(config, spec, device):
    """The test images of `config` for the model `spec` as (images, labels) batches held on `device`: each unit reads
    them again."""
    if spec.imagenet:
        raise ValueError(f"{spec.name} classifies ImageNet's 1,000 classes: the lesion study measures CIFAR-100 "
                         "accuracy; give a CIFAR model (a registry name, timm:NAME or your own file).")
    images = data.test_images(spec, config.images, root=config.data_root, mirror=config.mirror, smoke=config.smoke)
    loader = DataLoader(images, config.batch_size, num_workers=data.worker_count(config.workers))
    return images, [(x.to(device), y.to(device)) for x, y in loader]


def run(config, *, progress=True):
    """Every model of `config` (and every other name of `checkpoints`), intact and with each removable block
    removed: this rank's unfinished units computed and stored; returns one `experiment.Outcome` per model."""
    config = config.resolved()
    device, outcomes = pick_device(), []
    for name in config.names():
        blocks = split(config.pretrained(name, device), config.spec(name))
        spec = blocks.spec  # sized: the images at the size the model runs at
        images, batches = evaluation_batches(config, spec, device)
        table = experiment.table(config, "lesion", spec.slug, ("block",), data=data.fingerprint(images),
                                 weights=experiment.weights_digest(blocks))
        units = [{"block": INTACT}] + [{"block": unit["block"]} for unit in lesions(blocks)]
        if len(units) == 1:
            print(f"Note: {spec.text} has no removable block (none is a residual branch): the lesion study has nothing "
                  "to remove and measures the intact model only.")

        def compute(unit, blocks=blocks, batches=batches):
            removed = None if unit["block"] == INTACT else unit["block"]
            result = lesion_metrics(blocks, batches, lesion=removed)
            return {**unit, "accuracy": result.accuracy, "nll": result.nll, "ece": result.ece, "count": result.count}

        fill(table, units, compute, desc=f"lesion {table.folder.name}", progress=progress)
        outcomes.append(experiment.Outcome(name, table, units))
    return outcomes


def drops(outcome, blocks):
    """The figure's table of one model: a row per block on the depth axis (`blocks.layers`) with its `depth`,
    `kind`, `shade`, whether it is `removable`, whether it ends a stage, and the accuracy drop and NLL increase
    that removing it causes (NaN where it cannot be removed or is not computed yet)."""
    rows = outcome.table.frame(outcome.units).set_index("block")
    intact = rows.loc[INTACT] if INTACT in rows.index else None
    ends = set(blocks.stage_ends())
    table = []
    for i, (block, depth) in enumerate(zip(blocks.layers, blocks.depths())):
        done = block.name in rows.index and intact is not None
        table.append({"model": outcome.name, "block": block.name, "depth": depth, "kind": block.kind,
                      "shade": block.shade, "removable": block.removable, "stage_end": i in ends,
                      "accuracy_drop": intact["accuracy"] - rows.loc[block.name, "accuracy"] if done else np.nan,
                      "nll_increase": rows.loc[block.name, "nll"] - intact["nll"] if done else np.nan})
    return pd.DataFrame(table)


def main(argv=None):
    return experiment.main(Config, run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
