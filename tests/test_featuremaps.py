"""helpers.featuremaps: the one-read statistics against float64 references computed here (the whole 2-D FFT, torch.var),
in every layout a block's map comes in, in chunks, and in the two steps Blocks.average takes them apart into."""
import math

import pytest
import torch
import torch.nn as nn

from helpers import featuremaps
from fakes import chain


def reference_diagonal(x):
    """The diagonal of the shifted mean log-amplitude spectrum from the whole complex 2-D FFT, in float64."""
    spectrum = (torch.fft.fft2(x.double()).abs() + 1e-6).log().mean(dim=(0, 1))
    return torch.fft.fftshift(spectrum, dim=(-2, -1)).diagonal()


def reference_variance(x):
    return x.double().var(dim=(-2, -1)).mean()


def layouts(x):
    """`x` (`B, C, H, W`) as the maps of the three layouts of helpers.blocks: a contiguous map, a token block's (a
    strided view of `B, 1 + H*W, C` tokens behind a class token) and a channels-last map (`Block.to_map` of BHWC)."""
    batch, channels, height, width = x.shape
    tokens = torch.cat([torch.randn(batch, 1, channels), x.flatten(2).transpose(1, 2)], dim=1)  # B, 1 + HW, C
    token_map = tokens[:, 1:].transpose(1, 2).unflatten(-1, (height, width))
    channels_last = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert featuremaps.channels_inner(token_map) and featuremaps.channels_inner(channels_last)
    return {"contiguous": x, "tokens": token_map, "channels last": channels_last}


@pytest.mark.parametrize("size", [1, 2, 7, 8, 16])
def test_each_statistic_and_both_equal_the_references_in_every_layout(size):
    x = torch.randn(3, 5, size, size, generator=torch.Generator().manual_seed(size)) + 2
    for layout, maps in layouts(x).items():
        diagonal = featuremaps.log_amplitude_diagonal(maps)
        assert torch.allclose(diagonal.double(), reference_diagonal(x), atol=1e-5), layout
        if size > 1:  # a 1 x 1 map has no variance
            variance = featuremaps.feature_map_variance(maps)
            assert torch.isclose(variance.double(), reference_variance(x), rtol=1e-6), layout
            both = featuremaps.diagonal_and_variance(maps)
            assert torch.allclose(both[0], diagonal, atol=1e-6) and torch.isclose(both[1], variance, rtol=1e-6), layout


def test_maps_read_in_many_chunks_give_what_one_chunk_gives(monkeypatch):
    x = torch.randn(9, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for layout, maps in layouts(x).items():
        whole = featuremaps.diagonal_and_variance(maps)
        monkeypatch.setattr(featuremaps, "CHUNK_BYTES", 1)  # one image at a time
        chunked = featuremaps.diagonal_and_variance(maps)
        monkeypatch.undo()
        assert torch.allclose(chunked[0], whole[0], atol=1e-6) and torch.isclose(chunked[1], whole[1], rtol=1e-6)


def test_a_large_mean_against_the_spread_loses_no_precision_when_both_come_from_one_read():
    # float32 maps of mean 1000 and spread 0.01: a sum of squares less the squared sum would lose every digit
    x = 1000 + 0.01 * torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for layout, maps in layouts(x).items():
        _, variance = featuremaps.diagonal_and_variance(maps)
        assert torch.isclose(variance.double(), reference_variance(x), rtol=1e-5), layout


def test_constant_and_checkerboard_maps_in_token_layout():
    constant = torch.full((2, 3, 8, 8), 0.7)
    for layout, maps in layouts(constant).items():
        diagonal, variance = featuremaps.diagonal_and_variance(maps)
        assert variance == 0, layout  # Chan et al.'s correction: exactly 0, as torch.var gives
        half = diagonal[4:] - diagonal[4]  # only the zero frequency, amplitude 0.7 * 8 * 8
        assert torch.allclose(half[1:], torch.full((3,), math.log(1e-6) - math.log(0.7 * 64)), atol=1e-3), layout
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checkerboard = ((-1.0) ** (i + j)).expand(2, 3, 8, 8)  # all its amplitude at Nyquist, (-4, -4) after the shift
    for layout, maps in layouts(checkerboard.contiguous()).items():
        diagonal = featuremaps.log_amplitude_diagonal(maps)
        assert math.isclose(diagonal[0], math.log(64), abs_tol=1e-5), layout
        assert torch.allclose(diagonal[1:], torch.full((7,), math.log(1e-6)), atol=1e-4), layout


def test_two_steps_over_maps_of_several_shapes_give_each_maps_statistic():
    generator = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, c, h, h, generator=generator) for c, h in [(3, 8), (5, 4), (3, 8), (3, 8), (2, 7)]]
    maps[2] = layouts(maps[2])["tokens"]  # the same shape in another layout
    reads = [featuremaps.diagonal_and_variance.read(m) for m in maps]
    for m, (diagonal, variance) in zip(maps, featuremaps.diagonal_and_variance.finish(reads)):
        assert torch.allclose(diagonal.double(), reference_diagonal(m), atol=1e-5)
        assert torch.isclose(variance.double(), reference_variance(m), rtol=1e-6)


def test_blocks_average_a_statistic_of_two_values_over_batches():
    blocks = chain(("embed", "stem", lambda x: x, "BCHW"), ("conv", "pool", lambda x: nn.functional.avg_pool2d(x, 2),
                   "BCHW"), ("head", "head", lambda x: x.mean(dim=(1, 2, 3)), "logits"), modules=[nn.Linear(1, 1)])
    images = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    diagonals, variances = blocks.average([(images[:4], None), (images[4:], None)], featuremaps.diagonal_and_variance)
    maps = [images, nn.functional.avg_pool2d(images, 2)]
    assert [d.shape for d in diagonals] == [(8,), (4,)] and [v.shape for v in variances] == [(), ()]
    assert all(torch.allclose(d.double(), reference_diagonal(m), atol=1e-5) for d, m in zip(diagonals, maps))
    assert all(torch.isclose(v.double(), reference_variance(m), rtol=1e-5) for v, m in zip(variances, maps))


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="B, C, H, W"):
        featuremaps.diagonal_and_variance(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="square"):
        featuremaps.diagonal_and_variance(torch.randn(1, 2, 4, 6))
    with pytest.raises(ValueError, match="no spatial variance"):
        featuremaps.diagonal_and_variance(torch.randn(1, 2, 1, 1))
    assert featuremaps.feature_map_variance(torch.randn(1, 2, 4, 6)).ndim == 0  # a variance needs no square map
