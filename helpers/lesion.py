"""Lesion study (Sec. 4): remove one block at a time and measure what the model loses.

Removing a block drops its residual branch and keeps its shortcut: the block's output becomes `Block.shortcut(x)`
(identity for a transformer's msa/mlp block; act(shortcut(x)) for a post-activation ResNet block; the skip of
the pre-activation for an AlterNet block). Embed, pool (patch merging) and head blocks have no residual branch
and cannot be removed. Nothing is copied or changed in the model: `lesioned` composes the same modules anew.

A lesion sweep's unit is one removed block (`lesions(blocks)`, keyed by the block's name); `lesion_metrics`
computes one unit's row, test accuracy and mean NLL per image (`helpers.metrics`), and with `lesion=None` the
intact model's reference row. `run(Config(...))` stores the rows of every model in tables bound to the definition
(the notebook and `[torchrun --nproc-per-node N] python -m helpers.lesion` share it; ranks share the blocks), and
`drops` turns them into the figure's table.

The paper's reading (Sec. 4): multi-stage networks behave like a series of small models, and the MSAs at the end
of a stage matter most, so removing them costs the most accuracy. The authors add (their issue #41) that this holds
for shallow transformers and for Swin, a series of shallow ones, but that in a deep ViT the middle MSAs matter more
than the last ones, which suffer "attention collapse" (their maps stop depending on the query).
"""
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from helpers import data, experiment
from helpers.blocks import Block, Blocks, split
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
            for i, block in enumerate(as_blocks(model)) if block.shortcut is not None]


def lesioned(model, block_name):
    """The block sequence of `model` with the block named `block_name` replaced by its shortcut. It shares the
    model's modules; the model itself is left as it is."""
    blocks = as_blocks(model)
    names = [block.name for block in blocks]
    if block_name not in names:
        raise KeyError(f"no block named {block_name!r}; the blocks are {names}")
    index = names.index(block_name)
    block = blocks[index]
    if block.shortcut is None:
        raise ValueError(f"{block.name} is a {block.kind} block, without a residual branch to remove; "
                         f"removable are the blocks of lesions(model)")
    removed = Block(block.kind, block.name, block.shortcut, [], block.layout, block.prefix_tokens,
                    block.downsamples, shortcut=block.shortcut)
    return Blocks(*blocks[:index], removed, *blocks[index + 1:])


@torch.no_grad()
def lesion_metrics(model, batches, *, lesion=None):
    """`helpers.metrics.Metrics` (accuracy, NLL, ...) of `model` with the block named `lesion` removed (None: the
    intact model), in eval mode, over `batches` of (images, labels), e.g. a DataLoader or `[(images, labels)]`.
    Runs on the device of the model's parameters."""
    blocks = as_blocks(model)
    forward = blocks if lesion is None else lesioned(blocks, lesion)
    device = next(blocks.parameters()).device
    accumulator = Accumulator(device=device)
    with evaluating(blocks):
        for images, labels in batches:
            accumulator.update(forward(images.to(device)), labels.to(device))
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


def evaluation_batches(config, device):
    """The test images of `config` as (images, labels) batches held on `device`: each unit reads them again."""
    if config.smoke:
        images = data.synthetic(config.images)
    else:
        test_set = data.dataset("cifar100", config.data_root, train=False, transform=data.test_transform("cifar100"),
                                mirror=config.mirror)
        images = Subset(test_set, range(min(config.images or len(test_set), len(test_set))))
    loader = DataLoader(images, config.batch_size, num_workers=data.worker_count(config.workers))
    return images, [(x.to(device), y.to(device)) for x, y in loader]


def run(config, *, progress=True):
    """Every model of `config` (and every other name of `checkpoints`), intact and with each removable block
    removed: this rank's unfinished units computed and stored; returns one `experiment.Outcome` per model."""
    config = config.resolved()
    device, outcomes = pick_device(), []
    images, batches = evaluation_batches(config, device)
    for name in config.models + [n for n in config.checkpoints if n not in config.models]:
        blocks = split(config.pretrained(name, device))
        table = experiment.table(config, "lesion", name, ("block",), data=data.fingerprint(images),
                                 weights=experiment.weights_digest(blocks))
        units = [{"block": INTACT}] + [{"block": unit["block"]} for unit in lesions(blocks)]

        def compute(unit, blocks=blocks):
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
                      "shade": block.shade, "removable": block.shortcut is not None, "stage_end": i in ends,
                      "accuracy_drop": intact["accuracy"] - rows.loc[block.name, "accuracy"] if done else np.nan,
                      "nll_increase": rows.loc[block.name, "nll"] - intact["nll"] if done else np.nan})
    return pd.DataFrame(table)


def main(argv=None):
    return experiment.main(Config, run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
