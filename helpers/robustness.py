"""Fig. 5 and the CIFAR-100-C results: robustness to common corruptions and to noise of one frequency band.

- CIFAR-100-C (`corruption_sweep`): accuracy, NLL and ECE (the authors' 10 equal-width confidence bins) of a
  model on the clean CIFAR-100 test set and on each of the 19 corruptions at severities 1 to 5; `corruption_summary` gives
  the means over the 15 standard corruptions and over all 19 as separate columns.
- Fig. 5 (`frequency_noise_sweep`): the accuracy under random noise that holds a single frequency band. As the
  authors describe it (issue #44 of xxxnell/how-do-vits-work, and `FreqAttack` in their ops/adversarial.py), the
  noise is eps * sign(N(0, 1)) with eps = 0.7, drawn in the shape of the normalised input, Fourier-transformed,
  masked to a square ring of the shifted spectrum, transformed back and added to the normalised images.
  `accuracy_drop` reports clean accuracy minus noisy accuracy per band.

Two choices differ from the authors' snippet, each pinned by a test: their ring keeps frequencies within
s = 0.2 rad of the band centre, so bands 0.1 pi apart overlap by about one frequency bin; ours are half-open
rings of width `bandwidth` (0.1 pi) that tile 0 to pi, so different bands share no frequency and the bands' noises
add up to the full noise. Their even-sided square is one bin off centre and they keep the real part of the
result, which halves the boundary frequencies; our ring is symmetric, so the noise is real as it is.

Images are read as uint8 N x 32 x 32 x 3 batches (memory-mapped for CIFAR-100-C), then moved, converted to
float N x 3 x 32 x 32 and normalised on the model's device; no per-image PIL step. Each finished unit (a
corruption at a severity, or a noise band) is one row of a CSV (`helpers.sweep.Sweep`): a rerun skips it and
`torchrun` splits the units over ranks (`torchrun --nproc-per-node N -m helpers.robustness ...`).
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
EPSILON = 0.7        # the authors' noise amplitude, in units of the normalised input
BANDWIDTH = 0.1      # width of a frequency band, in units of pi
FREQUENCIES = tuple(round(BANDWIDTH * k, 1) for k in range(11))  # band centres 0, 0.1 pi, ..., pi
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


@torch.inference_mode()
def evaluate(model, images, labels, *, batch_size=500, perturb=None, bins=BINS, dataset="cifar100"):
    """`metrics.Metrics` of `model` on `images` (see `model_input`) with class indices `labels`.

    `perturb(inputs, start)` may change each normalised batch (`start`: index of its first image) before the
    model sees it. The model is evaluated in eval mode and left in the mode it was in.
    """
    device = next(model.parameters()).device
    labels = labels.long() if torch.is_tensor(labels) else torch.tensor(np.array(labels), dtype=torch.long)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    accumulator = metrics.Accumulator(bins=bins, device=device)  # sums stay on the device: no sync per batch
    with evaluating(model):
        for start in range(0, len(labels), batch_size):
            inputs = model_input(images[start:start + batch_size], device, dataset=dataset)
            if perturb is not None:
                inputs = perturb(inputs, start)
            accumulator.update(model(inputs), labels[start:start + batch_size].to(device, non_blocking=True))
    return accumulator.result()


def _row(unit, result):
    return {**unit, **{name: getattr(result, name) for name in METRICS}}


def _table(sweep, name, key):
    table = pd.DataFrame(sweep.rows())
    if table.empty:
        return table
    table = table[table["model"] == name].copy()
    for column in table.columns.drop(["model", "corruption"], errors="ignore"):
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


# --- Fig. 5: frequency-band noise --------------------------------------------------------------------------------

def band_mask(height, width, frequency, *, bandwidth=BANDWIDTH):
    """Boolean H x W mask, in `torch.fft.fft2`'s (unshifted) layout, of the frequencies whose Chebyshev radius
    max(|f_y|, |f_x|) (in units of pi; Nyquist = 1) lies in [frequency - bandwidth/2, frequency + bandwidth/2).

    In the shifted spectrum this is a square ring around the centre. Bands `bandwidth` apart share no frequency.
    """
    radius = torch.maximum(*torch.meshgrid(2 * torch.fft.fftfreq(height).abs(), 2 * torch.fft.fftfreq(width).abs(),
                                           indexing="ij"))  # H x W, in units of pi
    tolerance = 1e-9  # the same shift for both edges keeps neighbouring bands exactly complementary
    return (radius >= frequency - bandwidth / 2 - tolerance) & (radius < frequency + bandwidth / 2 - tolerance)


def band_limited_noise(shape, frequency, *, epsilon=EPSILON, bandwidth=BANDWIDTH, generator=None, device="cpu"):
    """epsilon * sign(N(0, 1)) noise of `shape` (..., H, W) with every frequency outside the band removed."""
    noise = epsilon * torch.randn(shape, generator=generator, device=device).sign()
    mask = band_mask(*shape[-2:], frequency, bandwidth=bandwidth).to(device)
    return torch.fft.ifft2(torch.fft.fft2(noise) * mask).real  # the mask is symmetric: the imaginary part is ~0


def _noise_seed(seed, frequency, start):
    return (seed * 1_000_003 + round(frequency * 1000)) * 1_000_003 + start


def frequency_noise_sweep(model, images, labels, path, *, name, frequencies=FREQUENCIES, epsilon=EPSILON,
                          bandwidth=BANDWIDTH, seed=0, batch_size=500, bins=BINS):
    """Evaluate `model` on `images` with noise of each frequency band added (rows epsilon, frequency) and
    without (the row epsilon = 0, frequency = 0), one CSV row each in `path`; returns this model's rows so far.

    The noise of a batch depends only on (seed, frequency, index of its first image), so reruns and ranks agree.
    """
    key = ("model", "epsilon", "frequency")
    sweep = Sweep(path, key)
    units = [{"model": name, "epsilon": 0.0, "frequency": 0.0}]
    units += [{"model": name, "epsilon": epsilon, "frequency": f} for f in frequencies]
    for unit in tqdm(sweep.todo(units), desc=f"{name} noise", leave=False):
        def perturb(inputs, start, unit=unit):
            if unit["epsilon"] == 0:
                return inputs
            generator = torch.Generator(inputs.device).manual_seed(_noise_seed(seed, unit["frequency"], start))
            return inputs + band_limited_noise(inputs.shape, unit["frequency"], epsilon=unit["epsilon"],
                                               bandwidth=bandwidth, generator=generator, device=inputs.device)
        sweep.add(_row(unit, evaluate(model, images, labels, batch_size=batch_size, perturb=perturb, bins=bins)))
    return _table(sweep, name, key)


def accuracy_drop(table):
    """Per model and noisy band: clean accuracy (the epsilon = 0 row) minus accuracy under the noise."""
    rows = []
    for name, group in table.groupby("model", sort=False):
        clean = group.loc[group["epsilon"] == 0, "accuracy"]
        noisy = group[group["epsilon"] != 0]
        rows += [{"model": name, "epsilon": r.epsilon, "frequency": r.frequency,
                  "accuracy_drop": (clean.iloc[0] if len(clean) else math.nan) - r.accuracy}
                 for r in noisy.itertuples()]
    return pd.DataFrame(rows, columns=["model", "epsilon", "frequency", "accuracy_drop"])


# --- command line: torchrun --nproc-per-node N -m helpers.robustness ... ----------------------------------------

def main(argv=None):
    from helpers import checkpoints, pick_device

    parser = argparse.ArgumentParser(description="CIFAR-100-C and frequency-noise sweeps (Fig. 5), resumable.")
    parser.add_argument("--models", nargs="+", default=["resnet_50", "vit_ti"])
    parser.add_argument("--sweeps", nargs="+", choices=["corruptions", "noise"], default=["corruptions", "noise"])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--cifar100c", default=None, help="a CIFAR-C folder to use instead of the download")
    parser.add_argument("--checkpoint-root", default="checkpoints")
    parser.add_argument("--results", default="results")
    parser.add_argument("--batch-size", type=int, default=500)
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
                                  name=name, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
