"""The quantities the paper's loss landscapes and Hessians are made of.

NLL is the cross-entropy of the softmax against (possibly Mixup/CutMix-mixed, label-smoothed) soft targets.
The authors' "L2" is not the usual squared norm: their tables record weight decay times the SUM OF UNSQUARED
L2 norms of all parameters (ops/norm.py); `norm_sums` gives those sums, `l2_penalty` either convention.
"""
import torch
import torch.nn.functional as F


def nll(logits, targets):
    """Mean cross-entropy; `targets` are class indices or soft targets of shape `B, classes`."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def norm_sums(parameters):
    """(sum of L1 norms, sum of L2 norms) over `parameters`, in float64: the authors' `l1` and `l2` columns."""
    parameters = [p.detach() for p in parameters]
    if not parameters:
        return 0.0, 0.0
    sums = [torch.stack([torch.linalg.vector_norm(p, order, dtype=torch.float64) for p in parameters]).sum()
            for order in (1, 2)]  # one device sync per sum, not per parameter
    return sums[0].item(), sums[1].item()


def l2_penalty(parameters, weight_decay, convention="squared"):
    """`squared`: (wd / 2) * sum ||w||^2, the textbook penalty whose gradient is wd * w.
    `norm_sum`: wd * sum ||w||, the authors' landscape convention (no second derivative at w = 0)."""
    if convention == "squared":
        return weight_decay / 2 * sum(p.pow(2).sum() for p in parameters)
    if convention == "norm_sum":
        return weight_decay * sum(torch.linalg.vector_norm(p) for p in parameters)
    raise ValueError(f"convention must be 'squared' or 'norm_sum', not {convention!r}")
