"""Fig. 2a and Fig. 8: relative log amplitude of Fourier-transformed feature maps (MSAs are low-pass filters).

For a batch of feature maps `B, C, H, W` (token outputs become maps in `helpers.blocks`, class tokens dropped)
we follow the authors' `fourier_analysis.ipynb`: the 2-D FFT over `H, W`; the log of the amplitude plus 1e-6;
the mean over the batch and the channels; the spectrum shifted so that the zero frequency sits at
`(H // 2, W // 2)` (their `torch.roll` by `(int(h/2), int(w/2))`, which is `fftshift`); then the main diagonal
from the zero frequency outward, `diagonal[H // 2:]`, minus its first entry. Entry `k` of that half diagonal
is the frequency `(2πk/H, 2πk/H)`: `k` cycles per `H` points along both axes. It has `ceil(H/2)` entries, so
the last one is `π (H - 1)/H` for odd `H` and `π (1 - 2/H)` for even `H`: for even sizes the shift sends the
Nyquist frequency π (a checkerboard) to the corner `(0, 0)`, which the half diagonal never reaches.
`shifted_frequencies(H)` gives the frequency of every row of the shifted spectrum, in units of π; the authors'
plot instead spreads each curve evenly over 0 to 1π. "The highest frequency" of Fig. 8 (the depth plot) is the
last entry, so it depends on the map's size: π(1 - 2/H) is 0.94π for a 32 x 32 map but 0.5π for a 4 x 4 one.
The authors measured Fig. 2a and Fig. 8 on ImageNet (224 x 224 inputs, 56 x 56 to 7 x 7 maps); on CIFAR the
deeper stages' maps are 8 x 8 and 4 x 4, whose "highest frequency" is much lower (the table keeps each map's `size`).

The figures need the diagonal only, so `spectra` computes nothing else: the diagonal of a 2-D DFT is the 1-D DFT
of the map's wrapped anti-diagonal sums, F(k, k) = sum_j s[j] e^(-2πikj/H) with s[j] the sum of x[m, n] over
m + n = j (mod H), taken per image and channel before the log and the mean, as above (`log_amplitude_diagonal`, in
`helpers.featuremaps`). That costs one read of the map instead of a 2-D FFT and a log per entry;
`log_amplitude_spectrum` gives the whole 2-D spectrum for display.
The half diagonal is defined for square maps only (H = W, as in every model of the paper): on an H x W map the
frequency (k, k) would be k cycles per H rows but per W columns, so a non-square map raises a ValueError.

The mean of log amplitudes over images is linear, so `spectra` accumulates it batch by batch and gives exactly
the one-big-batch result. `imagenet_images` (at the end) and `helpers.models.imagenet_spec` are the authors' own
setting: timm's ImageNet-pretrained models on ImageNet validation images.
"""
import math

import pandas as pd
import torch

from helpers import data
from helpers.featuremaps import EPSILON, check_maps, log_amplitude_diagonal  # noqa: F401 (the statistic of Fig. 2a)


def log_amplitude_spectrum(x):
    """The shifted 2-D spectrum `H, W` of `x` (`B, C, H, W`): log(|FFT| + 1e-6) averaged over batch and channels."""
    check_maps(x)
    height, width = x.shape[-2:]
    half = (torch.fft.rfft2(x.float()).abs() + EPSILON).log().mean(dim=(0, 1))  # H, W//2 + 1: columns 0 to W//2
    # a real map's amplitude at (-k1, -k2) is the one at (k1, k2): the other columns are mirrored rows and columns
    rows = -torch.arange(height, device=half.device) % height
    columns = width - torch.arange(width // 2 + 1, width, device=half.device)
    spectrum = torch.cat([half, half[rows][:, columns]], dim=-1)  # H, W
    return torch.fft.fftshift(spectrum, dim=(-2, -1))  # zero frequency at (H//2, W//2)


def half_diagonal(spectrum):
    """Entries `(H//2 + k, H//2 + k)` of a shifted square spectrum, minus the zero frequency's: `ceil(H/2)` values."""
    height, width = spectrum.shape[-2:]
    if height != width:
        raise ValueError(f"The half diagonal needs a square spectrum, got {height} x {width}.")
    return from_zero_frequency(spectrum.diagonal(dim1=-2, dim2=-1))


def from_zero_frequency(diagonal):
    """Entries `H//2 + k` of the diagonal `H` of a shifted spectrum, minus the zero frequency's: `ceil(H/2)` values."""
    half = diagonal[..., diagonal.shape[-1] // 2:]
    return half - half[..., :1]


def relative_log_amplitude(x):
    """The authors' Fig. 2a curve of the feature maps `x` (`B, C, H, W`): Δ log amplitude at `frequencies(H)`."""
    return from_zero_frequency(log_amplitude_diagonal(x))


def shifted_frequencies(size):
    """The frequency of each row (column) of a shifted spectrum of `size`, in units of π: 2(j - size//2)/size."""
    return 2 * (torch.arange(size) - size // 2) / size


def frequencies(size):
    """The frequency of each entry of the half diagonal, in units of π: 2k/size for k < ceil(size/2)."""
    return shifted_frequencies(size)[size // 2:]


def spectra(blocks, batches):
    """The diagonal of the mean shifted log-amplitude spectrum (`log_amplitude_diagonal`, `H` values for `H x H`
    maps) of every non-head block's feature maps over all images: what Fig. 2a and Fig. 8 need, without the rest of
    the 2-D spectrum (`log_amplitude_spectrum`, for display).

    `blocks` is `helpers.blocks.split(model)`; `batches` yields image tensors or (images, labels) pairs (a
    DataLoader). Each batch goes through the model once (`Blocks.average`).
    """
    return blocks.average(batches, log_amplitude_diagonal)


def relative_log_amplitudes(blocks, spectra):
    """Fig. 2a as a table, one row per (block, frequency): `block` (index among the non-head blocks), `depth`
    (block / (blocks - 1), the plots' axis), `name`, `kind`, `shade` (`pool` for every subsampling block, see
    `Block.shade`), `size` (the map's height H), `entry` (k), `frequency` (in units of π) and `delta_log_amplitude`;
    `spectra` are the diagonals of `spectra(blocks, ...)`."""
    rows = []
    layers, depths = blocks.layers, blocks.depths()
    if len(layers) != len(spectra) or any(diagonal.ndim != 1 for diagonal in spectra):
        raise ValueError(f"{len(spectra)} spectra of shapes {sorted({tuple(d.shape) for d in spectra})} for "
                         f"{len(layers)} non-head blocks; compute their diagonals with spectra(blocks, ...).")
    for index, (block, diagonal) in enumerate(zip(layers, spectra)):
        size = diagonal.shape[-1]
        for entry, (frequency, value) in enumerate(zip(frequencies(size), from_zero_frequency(diagonal))):
            rows.append({"block": index, "depth": depths[index], "name": block.name, "kind": block.kind,
                         "shade": block.shade, "size": size, "entry": entry, "frequency": frequency.item(),
                         "delta_log_amplitude": value.item()})
    return pd.DataFrame(rows)


def highest_frequency(table):
    """Fig. 8: each block's row at its last (highest) frequency, from `relative_log_amplitudes`."""
    return table.sort_values(["block", "entry"]).groupby("block", as_index=False).last()


def note_too_small(blocks):
    """Print one line when no block's map is large enough for a frequency above zero (2 x 2 or smaller): the Fourier
    panels of that model would be empty."""
    sides = [math.isqrt(block.size) for block in blocks.layers]
    if sides and max(sides) < 3:
        name = blocks.spec.text if blocks.spec is not None else type(blocks.model).__name__
        print(f"Note: {name}'s largest feature map is {max(sides)} x {max(sides)}: the Fourier panels have no "
              "frequency above 0 to show; give it a larger input (see helpers.models: NAME@SIZE).")


# The authors' own setting: ImageNet-pretrained timm models on ImageNet validation images (needs the hub)

def imagenet_images(folder, model, n=None):
    """The first `n` images of `folder` (an ImageFolder tree of synset folders or a flat folder of images) through
    `model`'s timm eval transform (resize, 224 centre crop, the normalisation of its data config); labels unused."""
    return data.imagenet_images(folder, model, n, labelled=False)
