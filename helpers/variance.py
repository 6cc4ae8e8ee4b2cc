"""Fig. 9: feature-map variance (MSAs reduce it, Convs and MLPs increase it).

As in the authors' `featuremap_variance.ipynb`: for feature maps `B, C, H, W` (token outputs become maps in
`helpers.blocks`, class tokens dropped), the variance of each map over its `H x W` spatial positions, per sample
and channel, with Bessel's correction (`torch.var`'s default, divisor `H*W - 1`), then the mean over samples and
channels (`feature_map_variance`, in `helpers.featuremaps`). It is computed with the corrected two-pass algorithm
(Chan, Golub & LeVeque 1983), as accurate as `torch.var` and on the CPU a fraction of the cost of its one-pass
Welford kernel. The mean is linear in the samples, so `variances` accumulates it batch by batch and gives exactly
the one-big-batch result (the authors used a single test batch of 256). With Fig. 2a's spectra it comes from the
same read of the maps: `table(blocks, values)` of `blocks.average(batches, featuremaps.diagonal_and_variance)`.
"""
import pandas as pd
import torch

from helpers.featuremaps import feature_map_variance  # noqa: F401 (the statistic of Fig. 9)


def variances(blocks, batches) -> pd.DataFrame:
    """Fig. 9 as a table, one row per non-head block: `block` (index), `depth` (block / (blocks - 1), the
    plots' axis), `name`, `kind`, `shade` (`pool` for every subsampling block, see `Block.shade`), `variance`.

    `blocks` is `helpers.blocks.split(model)`; `batches` yields image tensors or (images, labels) pairs (a
    DataLoader). Each batch goes through the model once (`Blocks.average`).
    """
    return table(blocks, blocks.average(batches, feature_map_variance))


def table(blocks, values) -> pd.DataFrame:
    """The table of `variances` from each non-head block's `feature_map_variance` (`values`, in order)."""
    layers = blocks.layers
    if len(values) != len(layers):
        raise ValueError(f"{len(values)} variances for {len(layers)} non-head blocks; compute them with "
                         f"blocks.average(batches, feature_map_variance).")
    values = torch.stack(list(values)).double().numpy()
    return pd.DataFrame({"block": range(len(layers)), "depth": blocks.depths(), "name": [b.name for b in layers],
                         "kind": [b.kind for b in layers], "shade": [b.shade for b in layers], "variance": values})
