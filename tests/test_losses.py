import math

import numpy as np
import pytest
import torch

from helpers import losses


def test_nll_of_hard_and_soft_targets_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    log_z = math.log(math.exp(2) + 1 + math.exp(-1))
    assert losses.nll(logits, torch.tensor([1])).item() == pytest.approx(log_z - 0.0)
    soft = torch.tensor([[0.5, 0.25, 0.25]])
    expected = 0.5 * (log_z - 2) + 0.25 * log_z + 0.25 * (log_z + 1)
    assert losses.nll(logits, soft).item() == pytest.approx(expected)


def test_norm_sums_by_numpy():
    tensors = [torch.randn(3, 4), torch.randn(5), torch.zeros(2)]
    l1, l2 = losses.norm_sums(tensors)
    assert l1 == pytest.approx(sum(np.abs(t.numpy()).sum() for t in tensors))
    assert l2 == pytest.approx(sum(np.sqrt((t.numpy().astype(np.float64) ** 2).sum()) for t in tensors))
    assert losses.norm_sums([]) == (0.0, 0.0)


def test_penalty_conventions():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    squared = losses.l2_penalty([w], 0.1)
    assert squared.item() == pytest.approx(0.05 * 25)
    assert torch.allclose(torch.autograd.grad(squared, w)[0], 0.1 * w)
    assert losses.l2_penalty([w], 0.1, convention="norm_sum").item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        losses.l2_penalty([w], 0.1, convention="l2")
