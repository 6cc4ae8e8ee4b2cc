"""helpers.variance against hand computations and numpy."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import variance
from fakes import chain


def test_constant_map_has_zero_variance():
    assert variance.feature_map_variance(torch.full((2, 3, 5, 5), 4.2)) == 0


def test_scaling_by_s_scales_the_variance_by_s_squared():
    x = torch.randn(4, 3, 8, 8)
    assert torch.isclose(variance.feature_map_variance(3 * x), 9 * variance.feature_map_variance(x), rtol=1e-5)


def test_hand_computed_unbiased_spatial_variance_averaged_over_channels():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 5.0]]]])  # B=1, C=2, 2x2
    # channel 0: mean 1.5, squares 2.25+0.25+0.25+2.25 = 5, / (4-1); channel 1: mean 2, squares 1+1+1+9 = 12, / 3
    assert torch.isclose(variance.feature_map_variance(x), torch.tensor((5 / 3 + 12 / 3) / 2))


def test_matches_numpy_over_samples_and_channels():
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    expected = x.numpy().reshape(3, 4, 36).var(axis=-1, ddof=1).mean()
    assert np.isclose(variance.feature_map_variance(x).item(), expected)


def test_a_large_offset_loses_no_precision():
    x = 1000 + 0.01 * torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # float32 maps
    exact = x.double().var(dim=(-2, -1)).mean()
    assert torch.isclose(variance.feature_map_variance(x).double(), exact, rtol=1e-5)
    tokens = x.flatten(2).transpose(1, 2)  # B, HW, C: a token block's map is a strided view of these
    assert torch.isclose(variance.feature_map_variance(tokens.transpose(1, 2).unflatten(-1, (16, 16))).double(), exact,
                         rtol=1e-5)


def blur(x):
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="circular"), 3, stride=1)


def toy_blocks():
    return chain(("embed", "stem", lambda x: x, "BCHW"), ("conv", "blur", blur, "BCHW"),
                 ("head", "head", lambda x: x.mean(dim=(1, 2, 3)), "logits"), modules=[nn.Linear(1, 1)])


def test_table_over_batches_equals_one_batch_and_a_blur_lowers_variance():
    images = torch.randn(10, 3, 8, 8)
    batched = variance.variances(toy_blocks(), [(images[:4], None), (images[4:], None)])
    whole = variance.variances(toy_blocks(), [images])
    assert list(batched.columns) == ["block", "depth", "name", "kind", "shade", "variance"]
    assert batched["name"].tolist() == ["stem", "blur"]  # the head (logits) is dropped
    assert np.allclose(batched["variance"], whole["variance"])
    assert np.isclose(whole["variance"][0], variance.feature_map_variance(images).item())
    assert whole["variance"][1] < whole["variance"][0] / 3


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="B, C, H, W"):
        variance.feature_map_variance(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="no spatial variance"):
        variance.feature_map_variance(torch.randn(2, 5, 1, 1))
    with pytest.raises(ValueError, match="No images"):
        variance.variances(toy_blocks(), [])


def test_a_subsampling_block_is_shaded_pool_and_keeps_its_kind():
    blocks = chain(("embed", "stem", lambda x: x, "BCHW"),
                   ("conv", "strided", lambda x: F.avg_pool2d(x, 2), "BCHW", {"downsamples": True}),
                   ("head", "head", lambda x: x.mean(dim=(1, 2, 3)), "logits"), modules=[nn.Linear(1, 1)])
    table = variance.variances(blocks, [torch.randn(2, 3, 8, 8)])
    assert table["kind"].tolist() == ["embed", "conv"] and table["shade"].tolist() == ["embed", "pool"]
