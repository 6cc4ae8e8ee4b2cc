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


@torch.no_grad()
def variances(blocks, batches):
    """Fig. 9 as a table, one row per non-head block: `block` (index), `depth` (block / (blocks - 1), the
    plots' axis), `name`, `kind`, `variance`.

    `blocks` is `helpers.blocks.split(model)`; `batches` yields image tensors or (images, labels) pairs (a
    DataLoader). Each batch goes through the model once (`Blocks.feature_maps`); only per-block sums are kept.
    """
    device = next(blocks.parameters()).device
    sums, count = None, 0
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        batch_sums = torch.stack([feature_map_variance(m) * len(images) for m in blocks.feature_maps(images.to(device))])
        sums = batch_sums if sums is None else sums + batch_sums
        count += len(images)
    if not count:
        raise ValueError("No images: `batches` yielded nothing.")
    layers = [b for b in blocks if b.kind != "head"]
    depth = [index / max(len(layers) - 1, 1) for index in range(len(layers))]
    return pd.DataFrame({"block": range(len(layers)), "depth": depth, "name": [b.name for b in layers],
                         "kind": [b.kind for b in layers], "variance": (sums / count).cpu().double().numpy()})
