"""Fig. 9: feature-map variance (MSAs reduce it, Convs and MLPs increase it).

As in the authors' `featuremap_variance.ipynb`: for feature maps `B, C, H, W` (token outputs become maps in
`helpers.blocks`, class tokens dropped), the variance of each map over its `H x W` spatial positions, per sample
and channel, with Bessel's correction (`torch.var`'s default, divisor `H*W - 1`), then the mean over samples and
channels. The mean is linear in the samples, so `variances` accumulates it batch by batch and gives exactly the
one-big-batch result (the authors used a single test batch of 256).
"""
import pandas as pd
import torch


def feature_map_variance(x):
    """The mean over samples and channels of the spatial variance of `x` (`B, C, H, W`), as a 0-d tensor."""
    if x.ndim != 4:
        raise ValueError(f"Expected feature maps B, C, H, W, got shape {tuple(x.shape)}; "
                         f"turn tokens into maps with Block.to_map first.")
    if x.shape[-2] * x.shape[-1] < 2:
        raise ValueError(f"A {x.shape[-2]} x {x.shape[-1]} map has no spatial variance.")
    return x.float().var(dim=(-2, -1)).mean()  # B, C -> mean


def variances(blocks, batches):
    """Fig. 9 as a table, one row per non-head block: `block` (index), `depth` (block / (blocks - 1), the
    plots' axis), `name`, `kind`, `shade` (`pool` for every subsampling block, see `Block.shade`), `variance`.

    `blocks` is `helpers.blocks.split(model)`; `batches` yields image tensors or (images, labels) pairs (a
    DataLoader). Each batch goes through the model once (`Blocks.average`).
    """
    values = torch.stack(blocks.average(batches, feature_map_variance)).double().numpy()
    layers = blocks.layers
    return pd.DataFrame({"block": range(len(layers)), "depth": blocks.depths(), "name": [b.name for b in layers],
                         "kind": [b.kind for b in layers], "shade": [b.shade for b in layers], "variance": values})
