"""Lesion study (Sec. 4): remove one block at a time and measure what the model loses.

Removing a block drops its residual branch and keeps its shortcut: the block's output becomes `Block.shortcut(x)`
(identity for a transformer's msa/mlp block; act(shortcut(x)) for a post-activation ResNet block; the skip of
the pre-activation for an AlterNet block). Embed, pool (patch merging) and head blocks have no residual branch
and cannot be removed. Nothing is copied or changed in the model: `lesioned` composes the same modules anew.

A lesion sweep's unit is one removed block (`lesions(blocks)`, keyed by the block's name); `lesion_metrics`
computes one unit's row, test accuracy and mean NLL per image (`helpers.metrics`), and with `lesion=None` the
intact model's reference row.
"""
import torch

from helpers.blocks import Block, Blocks, split
from helpers.common import evaluating
from helpers.metrics import Accumulator


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
