"""Fig. 9: feature-map variance (MSAs reduce it, Convs and MLPs increase it).

As in the authors' `featuremap_variance.ipynb`: for feature maps `B, C, H, W` (token outputs become maps in
`helpers.blocks`, class tokens dropped), the variance of each map over its `H x W` spatial positions, per sample
and channel, with Bessel's correction (`torch.var`'s default, divisor `H*W - 1`), then the mean over samples and
channels. We compute it with the corrected two-pass algorithm (Chan, Golub & LeVeque 1983), as accurate as
`torch.var` and on the CPU about a tenth of the cost of its one-pass Welford kernel (`benchmarks/features.py`).
The mean is linear in the samples, so `variances` accumulates it batch by batch and gives exactly the one-big-batch
result (the authors used a single test batch of 256).
"""
import pandas as pd
import torch


def feature_map_variance(x):
    """The mean over samples and channels of the spatial variance of `x` (`B, C, H, W`), as a 0-d tensor."""
    if x.ndim != 4:
        raise ValueError(f"Expected feature maps B, C, H, W, got shape {tuple(x.shape)}; "
                         f"turn tokens into maps with Block.to_map first.")
    positions = x.shape[-2] * x.shape[-1]
    if positions < 2:
        raise ValueError(f"A {x.shape[-2]} x {x.shape[-1]} map has no spatial variance.")
    # `rounding`, the sum of the deviations from the rounded mean, corrects for that rounding (Chan et al.'s
    # correction): with it a constant map gives exactly 0, as torch.var does
    x = x.float()
    deviations = x - x.mean(dim=(-2, -1), keepdim=True)  # B, C, H, W
    rounding = deviations.sum(dim=(-2, -1))  # B, C
    squares = deviations.square_().sum(dim=(-2, -1))  # B, C
    return ((squares - rounding.square() / positions) / (positions - 1)).mean()


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
