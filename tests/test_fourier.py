"""helpers.fourier against analytic spectra and an independent transcription of the authors' procedure."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from helpers import fourier, models
from fakes import chain


def authors_curve(x):
    """The authors' steps, written out: log(|fft2| + 1e-6), roll by (h/2, w/2), mean over B, C, half diagonal."""
    b, c, h, w = x.shape
    log_amplitude = (torch.fft.fft2(x).abs() + 1e-6).log()
    shifted = torch.roll(log_amplitude, shifts=(int(h / 2), int(w / 2)), dims=(2, 3)).mean(dim=(0, 1))
    half = shifted.diag()[int(h / 2):]
    return half - half[0]


@pytest.mark.parametrize("size", [7, 8, 14, 16])
def test_equals_the_authors_procedure(size):
    # seeded: two float32 computations of the statistic (theirs, a 2-D FFT; ours, 1-D DFTs of anti-diagonal sums)
    # agree to 1e-5 but for maps with an amplitude near 0, where both stray from the float64 value by up to 2e-4
    # (about 1 draw in 250 of these sizes)
    x = torch.randn(3, 5, size, size, generator=torch.Generator().manual_seed(size))
    assert torch.allclose(fourier.relative_log_amplitude(x), authors_curve(x), atol=1e-5)


def textbook_spectrum(x):
    """The whole complex 2-D FFT in float64, then the steps of `log_amplitude_spectrum`."""
    return torch.fft.fftshift((torch.fft.fft2(x.double()).abs() + 1e-6).log().mean(dim=(0, 1)), dim=(-2, -1))


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (7, 7), (8, 8), (4, 6), (5, 8)])
def test_spectrum_from_the_real_fft_equals_the_complex_one(shape):
    x = torch.randn(3, 5, *shape, generator=torch.Generator().manual_seed(0))  # seeded: see the test above
    assert torch.allclose(fourier.log_amplitude_spectrum(x).double(), textbook_spectrum(x), atol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 16, 32])
def test_diagonal_from_anti_diagonal_sums_equals_the_2d_spectrums(size):
    generator = torch.Generator().manual_seed(0)  # seeded: see test_equals_the_authors_procedure
    x = torch.randn(3, 5, size, size, generator=generator)
    assert torch.allclose(fourier.log_amplitude_diagonal(x).double(), textbook_spectrum(x).diagonal(), atol=1e-5)
    tokens = torch.randn(2, size * size, 6, generator=generator)  # B, HW, C
    maps = tokens.transpose(1, 2).unflatten(-1, (size, size))  # a token block's map: a strided view, B, C, H, W
    assert torch.allclose(fourier.log_amplitude_diagonal(maps).double(), textbook_spectrum(maps).diagonal(), atol=1e-5)


def test_frequencies_of_the_half_diagonal_by_hand():
    assert fourier.frequencies(8).tolist() == [0, 0.25, 0.5, 0.75]  # Nyquist (1.0) is not on the half diagonal
    assert torch.allclose(fourier.frequencies(7), torch.tensor([0, 2 / 7, 4 / 7, 6 / 7]))
    assert fourier.shifted_frequencies(4).tolist() == [-1, -0.5, 0, 0.5]
    assert len(fourier.relative_log_amplitude(torch.randn(1, 1, 9, 9))) == len(fourier.frequencies(9)) == 5


def test_constant_map_has_a_flat_bottom_far_below_zero():
    x = torch.full((2, 3, 8, 8), 0.7)
    curve = fourier.relative_log_amplitude(x)
    expected = math.log(1e-6) - math.log(0.7 * 8 * 8)  # only the zero frequency, amplitude 0.7 * H * W
    assert curve[0] == 0
    assert torch.allclose(curve[1:], torch.full((3,), expected), atol=1e-3)


def test_checkerboard_sits_at_nyquist_in_the_corner_off_the_half_diagonal():
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checkerboard = ((-1.0) ** (i + j)).expand(1, 1, 8, 8)
    spectrum = fourier.log_amplitude_spectrum(checkerboard)
    assert divmod(spectrum.argmax().item(), 8) == (0, 0)
    assert fourier.shifted_frequencies(8)[0] == -1  # -π, the same frequency as π
    assert torch.allclose(fourier.relative_log_amplitude(checkerboard), torch.zeros(4), atol=1e-4)


@pytest.mark.parametrize("size", [8, 9])
def test_diagonal_cosine_peaks_at_its_frequency(size):
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for k in range(1, len(fourier.frequencies(size))):
        wave = (1 + torch.cos(2 * math.pi * k * (i + j) / size)).expand(2, 1, size, size)
        curve = fourier.relative_log_amplitude(wave)
        assert curve[1:].argmax() + 1 == k  # entry 0, the zero frequency, is 0 by construction
        assert math.isclose(fourier.frequencies(size)[k].item(), 2 * k / size, rel_tol=1e-6)
        assert math.isclose(curve[k].item(), math.log(1 / 2), abs_tol=1e-4)  # amplitude H²/2 against H² at zero
        assert (curve[1:k] < -10).all() and (curve[k + 1:] < -10).all()


def blur(x):  # 3x3 box filter with wrap-around, channel by channel
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), torch.full((x.shape[1], 1, 3, 3), 1 / 9),
                    groups=x.shape[1])


def test_low_pass_lowers_and_high_pass_raises_the_highest_frequency():
    white = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    high = {name: fourier.relative_log_amplitude(x)[-1]
            for name, x in [("white", white), ("smoothed", blur(white)), ("sharpened", white - blur(white))]}
    assert high["smoothed"] < high["white"] - 1 < high["sharpened"] - 1


def toy_blocks(layer):
    return chain(("embed", "stem", lambda x: x, "BCHW"), ("conv", "filter", layer, "BCHW"),
                 ("head", "head", lambda x: x.mean(dim=(1, 2, 3)), "logits"), modules=[nn.Linear(1, 1)])


def test_blur_block_lowers_and_identity_minus_blur_raises_the_delta():
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for layer, sign in [(blur, -1), (lambda x: x - blur(x), 1)]:
        blocks = toy_blocks(layer)
        table = fourier.relative_log_amplitudes(blocks, fourier.spectra(blocks, [images]))
        before, after = fourier.highest_frequency(table)["delta_log_amplitude"]
        assert sign * (after - before) > 0.5
    assert list(table.columns) == ["block", "depth", "name", "kind", "shade", "size", "entry", "frequency",
                                   "delta_log_amplitude"]
    assert table["size"].unique().tolist() == [16]  # each map's height: its highest frequency is pi (1 - 2/16)
    assert table["name"].unique().tolist() == ["stem", "filter"]  # the head (logits) is dropped
    assert table["shade"].unique().tolist() == ["embed", "conv"]  # a block that does not subsample keeps its kind
    assert table["depth"].unique().tolist() == [0, 1]


def test_the_table_of_diagonals_equals_the_half_diagonals_of_whole_spectra():
    blocks = toy_blocks(blur)
    images = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    diagonals = fourier.spectra(blocks, [images])
    assert [d.shape for d in diagonals] == [(10,), (10,)]
    table = fourier.relative_log_amplitudes(blocks, diagonals)
    whole = [fourier.half_diagonal(fourier.log_amplitude_spectrum(m)) for m in blocks.feature_maps(images)]
    assert torch.allclose(torch.tensor(table["delta_log_amplitude"].to_numpy()), torch.cat(whole).double(), atol=1e-5)
    assert table["size"].unique().tolist() == [10] and table["entry"].max() == 4


def test_spectra_accumulated_over_batches_equal_one_big_batch():
    blocks = toy_blocks(blur)
    images = torch.randn(10, 3, 12, 12)
    batched = fourier.spectra(blocks, [(images[:3], None), (images[3:], None)])  # (images, labels) like a loader
    whole = fourier.spectra(blocks, [images])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(batched, whole))


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="B, C, H, W"):
        fourier.relative_log_amplitude(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="square"):
        fourier.relative_log_amplitude(torch.randn(1, 1, 4, 6))
    with pytest.raises(ValueError, match="No images"):
        fourier.spectra(toy_blocks(blur), [])
    with pytest.raises(ValueError, match="No ImageNet-pretrained timm model stands for 'alternet_50'"):
        models.imagenet_spec("alternet_50")


@pytest.mark.parametrize("nested", [False, True])
def test_imagenet_images_from_a_flat_or_class_folder(tmp_path, nested):
    import timm

    folder = tmp_path / "val"
    for index in range(3):
        path = folder / (f"n0{index}" if nested else "") / f"ILSVRC2012_val_{index}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (300, 260), (40 * index, 80, 120)).save(path)
    model = timm.create_model("resnet18", pretrained=False)  # no hub: only its data config is read
    images = fourier.imagenet_images(folder, model, n=2)
    assert len(images) == 2 and images[0][0].shape == (3, 224, 224)
    with pytest.raises(FileNotFoundError, match="ImageNet"):
        fourier.imagenet_images(tmp_path / "missing", model)
