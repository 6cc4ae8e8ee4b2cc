"""Fig. 2b's noise: eps * sign(N(0, 1)) keeping one frequency band, as the authors make it, or in disjoint rings.

As the authors describe it (issue #44 of xxxnell/how-do-vits-work; `Random` and `FreqAttack` in their
ops/adversarial.py), the noise is eps * sign(N(0, 1)), drawn in the shape of the normalised input,
Fourier-transformed, masked to a band, transformed back, and added to the normalised images. Frequencies are in
units of pi (Nyquist = 1) here; the authors' band centre f is in radians, f = frequency * pi. `band` picks the mask:

- "authors" (the default) is their `FreqAttack._fourier_mask`: in the spectrum shifted by their
  `torch.roll(x, (H/2, W/2))`, the centre square of side int((f + s) H / 2 pi) * 2 minus that of side
  int((f - s) H / 2 pi) * 2, s = 0.2 rad, so bands 0.1 pi apart overlap. We follow them where they differ from a
  textbook band: the even-sided squares sit one bin off centre, and keeping the real part of the result halves the
  frequencies whose mirror image is outside the ring (the noise's spectrum is the sign noise's times
  (M(k) + M(-k)) / 2); the noise power differs from band to band (RMS 0.08 at 0.1 pi to 0.28 at 0.9 pi at 32 x 32).
- "disjoint" (ours, an option) are symmetric half-open square rings `bandwidth` (0.1 pi) wide that tile 0 to pi, so
  different bands share no frequency. They hold alternately one or two radii (24, 24, 72, 104, 64, ... frequencies
  at 32 x 32), so each image's noise is scaled to RMS eps, the RMS of the unmasked sign noise: every band has equal
  power (with eps = 0.7 it is much stronger than the authors' bands; eps = 0.2 is comparable).
"""
import math

import torch

BANDS = ("authors", "disjoint")  # the authors' overlapping rings (default); ours, disjoint and at equal power
SPREAD = 0.2         # s: the authors' band keeps frequencies within f +- s, in radians
BANDWIDTH = 0.1      # width of a disjoint band, in units of pi


def authors_band_mask(height, width, frequency, *, spread=SPREAD):
    """0/1 float H x W mask, in `torch.fft.fft2`'s (unshifted) layout, of the authors' band at `frequency` (pi units).

    Their `FreqAttack._fourier_mask`: in the spectrum shifted by `torch.roll(x, (H/2, W/2))` (zero frequency at
    (H/2, W/2)), the centre square of side int((f + s) H / 2 pi) * 2 minus the one of side int((f - s) H / 2 pi) * 2,
    sides clamped to [0, H], with f = frequency * pi and s = `spread`, both in radians. A square of even side 2d
    covers the offsets -d, ..., d - 1 from the zero frequency: one bin off centre, as theirs. Rolled back by the
    same roll, which is its own inverse for even sizes.
    """
    if height != width or height % 2:
        raise ValueError(f"the authors' band needs square images of even size (their mask is built from H alone and "
                         f"centred by an even padding); got {height} x {width}")
    f = frequency * math.pi  # their f, in radians
    outer = _centre_square(int(((f + spread) * height) / (2 * math.pi)) * 2, height)
    inner = _centre_square(int(((f - spread) * height) / (2 * math.pi)) * 2, height)
    return torch.roll(outer - inner, (height // 2, width // 2), dims=(0, 1))  # shifted layout -> fft2's


def _centre_square(side, size):
    """size x size zeros with a side x side square of ones (side clamped to [0, size]) padded evenly on all sides."""
    side = min(max(side, 0), size)
    square, start = torch.zeros(size, size), (size - side) // 2
    square[start:start + side, start:start + side] = 1
    return square


def band_mask(height, width, frequency, *, bandwidth=BANDWIDTH):
    """Boolean H x W mask, in `torch.fft.fft2`'s (unshifted) layout, of the frequencies whose Chebyshev radius
    max(|f_y|, |f_x|) (in units of pi; Nyquist = 1) lies in [frequency - bandwidth/2, frequency + bandwidth/2).

    In the shifted spectrum this is a square ring around the centre. Bands `bandwidth` apart share no frequency.
    """
    radius = torch.maximum(*torch.meshgrid(2 * torch.fft.fftfreq(height).abs(), 2 * torch.fft.fftfreq(width).abs(),
                                           indexing="ij"))  # H x W, in units of pi
    tolerance = 1e-9  # the same shift for both edges keeps neighbouring bands exactly complementary
    return (radius >= frequency - bandwidth / 2 - tolerance) & (radius < frequency + bandwidth / 2 - tolerance)


def band_limited_noise(shape, frequency, *, band="authors", epsilon=0.7, bandwidth=BANDWIDTH, generator=None,
                       device="cpu"):
    """The authors' noise epsilon * sign(N(0, 1)) of `shape` (N, C, H, W) keeping one band at `frequency` (pi units).

    band="authors": the real part of the sign noise masked to `authors_band_mask`, as their `FreqAttack`.
    band="disjoint": the sign noise masked to `band_mask` (`bandwidth` wide), then each image's noise (the last three
    dimensions) scaled to RMS `epsilon`, that of the unmasked sign noise, so that every band has the same power.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}; got {band!r}")
    noise = epsilon * torch.randn(shape, generator=generator, device=device).sign()
    height, width = shape[-2:]
    if band == "authors":
        mask = authors_band_mask(height, width, frequency).to(device)
        return torch.fft.ifft2(torch.fft.fft2(noise) * mask).real  # their real part: an asymmetric ring
    mask = band_mask(height, width, frequency, bandwidth=bandwidth).to(device)
    if not mask.any():
        raise ValueError(f"no frequency of a {height} x {width} image is in the band {frequency} +- {bandwidth / 2} pi")
    noise = torch.fft.ifft2(torch.fft.fft2(noise) * mask).real  # the mask is symmetric: the imaginary part is ~0
    rms = noise.pow(2).mean(dim=(-3, -2, -1), keepdim=True).sqrt()  # one per image
    return noise * (epsilon / rms.clamp_min(torch.finfo(noise.dtype).tiny))
