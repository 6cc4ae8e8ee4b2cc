"""Fig. 2b and the CIFAR-100-C results: robustness to noise of one frequency band and to common corruptions.

- Fig. 2b (`frequency_noise_sweep`): the accuracy under random noise that holds a single frequency band. As the
  authors describe it (issue #44 of xxxnell/how-do-vits-work; `Random` and `FreqAttack` in their
  ops/adversarial.py), the noise is eps * sign(N(0, 1)), eps = 0.7, drawn in the shape of the normalised input,
  Fourier-transformed, masked to a band, transformed back and added to the normalised images. The paper measures it
  on ImageNet: pass timm's ImageNet models and `data.imagenet_images(folder, model)` (the model's eval transform,
  ImageNet-1k labels), and the noise is added at 224 x 224. `accuracy_drop` gives clean minus noisy accuracy.
- CIFAR-100-C (`corruption_sweep`): accuracy, NLL and ECE (the authors' 10 equal-width confidence bins) of a
  model on the clean CIFAR-100 test set and on each of the 19 corruptions at severities 1 to 5; `corruption_summary` gives
  the means over the 15 standard corruptions and over all 19 as separate columns.

Frequencies are in units of pi (Nyquist = 1) in arguments and tables; the authors' band centre f is in radians,
f = frequency * pi. `band` picks the mask:

- "authors" (the default) is their `FreqAttack._fourier_mask`: in the spectrum shifted by their
  `torch.roll(x, (H/2, W/2))`, the centre square of side int((f + s) H / 2 pi) * 2 minus that of side
  int((f - s) H / 2 pi) * 2, s = 0.2 rad, so bands 0.1 pi apart overlap. We follow them where they differ from a
  textbook band: the even-sided squares sit one bin off centre, and keeping the real part of the result halves the
  frequencies whose mirror image is outside the ring (the noise's spectrum is the sign noise's times
  (M(k) + M(-k)) / 2); the noise power differs from band to band.
- "disjoint" (ours) are symmetric half-open square rings `bandwidth` (0.1 pi) wide that tile 0 to pi, so different
  bands share no frequency. They hold alternately one or two radii (24, 24, 72, 104, 64, ... frequencies at 32 x
  32), so each image's noise is scaled to RMS eps, the RMS of the unmasked sign noise: every band has equal power.

Images are read as uint8 N x 32 x 32 x 3 batches (memory-mapped for CIFAR-100-C), then moved, converted to
float N x 3 x 32 x 32 and normalised on the model's device; no per-image PIL step (ImageNet images, of various
sizes, do go through PIL in a `data.loader`). Each finished unit (a corruption at a severity, or a noise band) is
one row of a CSV (`helpers.sweep.Sweep`): a rerun skips it and `torchrun` splits the units over ranks
(`torchrun --nproc-per-node N -m helpers.robustness ...`).
"""
import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers import data, metrics
from helpers.common import evaluating
from helpers.sweep import Sweep

BINS = metrics.BINS  # ECE bins: the authors' 10 equal-width bins (ops/tests.py), as everywhere here
EPSILON = 0.7        # eps: the authors' noise amplitude, in units of the normalised input
BANDS = ("authors", "disjoint")  # the authors' overlapping rings (default); ours, disjoint and at equal power
SPREAD = 0.2         # s: the authors' band keeps frequencies within f +- s, in radians
BANDWIDTH = 0.1      # width of a disjoint band, in units of pi
FREQUENCIES = tuple(round(0.1 * k, 1) for k in range(1, 10))  # Fig. 2b's band centres 0.1 pi, ..., 0.9 pi
METRICS = ("count", "accuracy", "nll", "ece")


# --- the tensor pipeline ---------------------------------------------------------------------------------------

def model_input(images, device, *, dataset="cifar100"):
    """uint8 images N x H x W x 3 (numpy, memory map or tensor) -> normalised float N x 3 x H x W on `device`.

    Float tensors are taken to be model inputs already (normalised N x 3 x H x W) and are only moved.
    """
    if not torch.is_tensor(images):
        images = _host_tensor(np.asarray(images), pin=device.type == "cuda")
    if images.is_floating_point():
        return images.to(device)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3) or normalised float (N, 3, H, W); "
                         f"got {images.dtype} {tuple(images.shape)}")
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)  # N,H,W,3 -> N,3,H,W
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (data.MEAN[dataset], data.STD[dataset]))
    return images.sub_(mean).div_(std)


def _host_tensor(array, *, pin):
    """One copy of `array` (e.g. a slice of a read-only memory map) into a fresh, pinned when `pin`, tensor."""
    if array.dtype != np.uint8:
        return torch.from_numpy(np.array(array))
    tensor = torch.empty(array.shape, dtype=torch.uint8, pin_memory=pin)
    tensor.numpy()[...] = array
    return tensor


def _batches(images, batch_size):
    """(index of the first image, batch) of an array or tensor, or of a dataset of (image, label) pairs."""
    if isinstance(images, torch.utils.data.Dataset):
        start = 0
        for batch, _ in data.loader(images, batch_size):
            yield start, batch
            start += len(batch)
    else:
        for start in range(0, len(images), batch_size):
            yield start, images[start:start + batch_size]


@torch.inference_mode()
def evaluate(model, images, labels, *, batch_size=500, perturb=None, bins=BINS, dataset="cifar100"):
    """`metrics.Metrics` of `model` on `images` with class indices `labels`. `images` is what `model_input` takes
    (uint8 images, normalised tensors) or a dataset of (normalised image, label) pairs, e.g. `data.imagenet_images`.

    `perturb(inputs, start)` may change each normalised batch (`start`: index of its first image) before the
    model sees it. The model is evaluated in eval mode and left in the mode it was in.
    """
    device = next(model.parameters()).device
    labels = labels.long() if torch.is_tensor(labels) else torch.tensor(np.array(labels), dtype=torch.long)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    accumulator = metrics.Accumulator(bins=bins, device=device)  # sums stay on the device: no sync per batch
    with evaluating(model):
        for start, batch in _batches(images, batch_size):
            inputs = model_input(batch, device, dataset=dataset)
            if perturb is not None:
                inputs = perturb(inputs, start)
            accumulator.update(model(inputs), labels[start:start + len(batch)].to(device, non_blocking=True))
    return accumulator.result()


def _row(unit, result):
    return {**unit, **{name: getattr(result, name) for name in METRICS}}


def _table(sweep, name, key):
    table = pd.DataFrame(sweep.rows())
    if table.empty:
        return table
    table = table[table["model"] == name].copy()
    for column in table.columns.drop(["model", "corruption", "band"], errors="ignore"):
        table[column] = pd.to_numeric(table[column])
    return table.sort_values(list(key[1:])).reset_index(drop=True)


# --- CIFAR-100-C -------------------------------------------------------------------------------------------------

def corruption_sweep(model, corrupted, clean_images, clean_labels, path, *, name, corruptions=data.ALL_CORRUPTIONS,
                     severities=data.SEVERITIES, batch_size=500, bins=BINS):
    """Evaluate `model` (called `name` in the table) on the clean test set (corruption "clean", severity 0) and
    on every corruption x severity of `corrupted` (a `data.CorruptedCIFAR`), one CSV row each in `path`.

    Finished rows are skipped; under `torchrun` this rank does its share. Returns this model's rows so far.
    """
    key = ("model", "corruption", "severity")
    sweep = Sweep(path, key)
    units = [{"model": name, "corruption": "clean", "severity": 0}]
    units += [{"model": name, "corruption": c, "severity": s} for c in corruptions for s in severities]
    for unit in tqdm(sweep.todo(units), desc=f"{name} CIFAR-100-C", leave=False):
        if unit["corruption"] == "clean":
            images, labels = clean_images, clean_labels
        else:
            images, labels = corrupted.images(unit["corruption"], unit["severity"]), corrupted.labels(unit["severity"])
        sweep.add(_row(unit, evaluate(model, images, labels, batch_size=batch_size, bins=bins)))
    return _table(sweep, name, key)


def corruption_summary(table):
    """Per model: clean accuracy, NLL, ECE and their means over the 15 standard corruptions (`*_15`) and over
    all 19 (`*_19`) at all severities; a mean is NaN unless every corruption x severity it needs is in `table`."""
    rows = []
    for name, group in table.groupby("model", sort=False):
        clean = group[group["corruption"] == "clean"]
        row = {"model": name, **{f"clean_{m}": clean[m].mean() if len(clean) else math.nan for m in METRICS[1:]}}
        for suffix, names in (("15", data.CORRUPTIONS), ("19", data.ALL_CORRUPTIONS)):
            part = group[group["corruption"].isin(names)]
            complete = len(part) == len(names) * len(data.SEVERITIES)
            row.update({f"{m}_{suffix}": part[m].mean() if complete else math.nan for m in METRICS[1:]})
        rows.append(row)
    return pd.DataFrame(rows)


# --- Fig. 2b: frequency-band noise ------------------------------------------------------------------------------

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


def band_limited_noise(shape, frequency, *, band="authors", epsilon=EPSILON, bandwidth=BANDWIDTH, generator=None,
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


def _noise_seed(seed, frequency, start):
    return (seed * 1_000_003 + round(frequency * 1000)) * 1_000_003 + start


def frequency_noise_sweep(model, images, labels, path, *, name, band="authors", frequencies=FREQUENCIES,
                          epsilon=EPSILON, bandwidth=BANDWIDTH, seed=0, batch_size=500, bins=BINS):
    """Evaluate `model` on `images` (anything `evaluate` takes, e.g. `data.imagenet_images`) with `band`'s noise at
    each of `frequencies` (units of pi) added (rows band, epsilon, frequency) and without (the row band,
    epsilon = 0, frequency = 0), one CSV row each in `path`; returns this model's rows of this band so far.

    The noise is drawn in the shape of each normalised batch (224 x 224 for timm's ImageNet models). The noise of
    a batch depends only on (seed, frequency, index of its first image), so reruns, ranks and bands agree.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}; got {band!r}")
    key = ("model", "band", "epsilon", "frequency")
    sweep = Sweep(path, key)
    units = [{"model": name, "band": band, "epsilon": 0.0, "frequency": 0.0}]
    units += [{"model": name, "band": band, "epsilon": epsilon, "frequency": f} for f in frequencies]
    for unit in tqdm(sweep.todo(units), desc=f"{name} noise", leave=False):
        def perturb(inputs, start, unit=unit):
            if unit["epsilon"] == 0:
                return inputs
            generator = torch.Generator(inputs.device).manual_seed(_noise_seed(seed, unit["frequency"], start))
            return inputs + band_limited_noise(inputs.shape, unit["frequency"], band=band, epsilon=unit["epsilon"],
                                               bandwidth=bandwidth, generator=generator, device=inputs.device)
        sweep.add(_row(unit, evaluate(model, images, labels, batch_size=batch_size, perturb=perturb, bins=bins)))
    table = _table(sweep, name, key)
    return table[table["band"] == band].reset_index(drop=True) if len(table) else table


def accuracy_drop(table):
    """Per model, band and noisy frequency: clean accuracy (the epsilon = 0 row) minus accuracy under the noise."""
    rows = []
    for (name, band), group in table.groupby(["model", "band"], sort=False):
        clean = group.loc[group["epsilon"] == 0, "accuracy"]
        noisy = group[group["epsilon"] != 0]
        rows += [{"model": name, "band": band, "epsilon": r.epsilon, "frequency": r.frequency,
                  "accuracy_drop": (clean.iloc[0] if len(clean) else math.nan) - r.accuracy}
                 for r in noisy.itertuples()]
    return pd.DataFrame(rows, columns=["model", "band", "epsilon", "frequency", "accuracy_drop"])


# --- command line: torchrun --nproc-per-node N -m helpers.robustness ... ----------------------------------------

def main(argv=None):
    from helpers import checkpoints, pick_device

    parser = argparse.ArgumentParser(description="CIFAR-100-C and frequency-noise sweeps (Fig. 2b), resumable.")
    parser.add_argument("--models", nargs="+", default=["resnet_50", "vit_ti"])
    parser.add_argument("--sweeps", nargs="+", choices=["corruptions", "noise"], default=["corruptions", "noise"])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--cifar100c", default=None, help="a CIFAR-C folder to use instead of the download")
    parser.add_argument("--checkpoint-root", default="checkpoints")
    parser.add_argument("--results", default="results")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--band", choices=BANDS, default="authors", help="the noise's band (see the module)")
    parser.add_argument("--smoke", action="store_true", help="fresh weights (seed 0) and synthetic clean images")
    args = parser.parse_args(argv)

    device = pick_device()
    if args.smoke:
        clean_images, clean_labels = data.synthetic(8).tensors
    else:
        test_set = data.dataset("cifar100", args.data_root, train=False)
        clean_images, clean_labels = test_set.data, test_set.targets
    corrupted = (data.CorruptedCIFAR(args.cifar100c) if args.cifar100c
                 else data.cifar100c(args.data_root) if "corruptions" in args.sweeps else None)
    results = Path(args.results)
    for name in args.models:
        model = checkpoints.pretrained(name, args.checkpoint_root, smoke=args.smoke, map_location=device)
        if "corruptions" in args.sweeps:
            corruption_sweep(model, corrupted, clean_images, clean_labels, results / "robustness_cifar100c.csv",
                             name=name, corruptions=corrupted.corruptions, batch_size=args.batch_size)
        if "noise" in args.sweeps:
            frequency_noise_sweep(model, clean_images, clean_labels, results / "robustness_frequency_noise.csv",
                                  name=name, band=args.band, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
