"""Fig. 2b and the CIFAR-100-C results: robustness to noise of one frequency band and to common corruptions.

- Fig. 2b (`frequency_noise_sweep`): the accuracy under random noise that holds a single frequency band
  (`helpers.noise`: the authors' `FreqAttack` band by default, eps = 0.7). The paper measures it on ImageNet:
  `imagenet` in the config (or timm's ImageNet models and `data.imagenet_images(folder, model)` by hand: the
  model's eval transform, ImageNet-1k labels) adds the noise at 224 x 224. `accuracy_drop` gives clean minus noisy
  accuracy.
- CIFAR-100-C (`corruption_sweep`): accuracy, NLL and ECE (the authors' 10 equal-width confidence bins) of a model
  on the clean CIFAR-100 test set and on each of the 19 corruptions at severities 1 to 5; `corruption_summary`
  gives the means over the 15 standard corruptions (the benchmark's number, and the paper's) and over all 19 as
  separate columns.

Images are read as uint8 N x 32 x 32 x 3 batches (memory-mapped for CIFAR-100-C), then moved, converted to
float N x 3 x 32 x 32 and normalised on the model's device; no per-image PIL step (ImageNet images, of various
sizes, do go through PIL in a `data.loader`). Each finished unit (a corruption at a severity, or a noise band) is
one row of a table bound to the experiment's definition (`Config`): a rerun skips it and `torchrun` splits the
units over ranks (`torchrun --nproc-per-node N -m helpers.robustness ...`).
"""
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers import checkpoints, data, experiment, metrics, models, provenance
from helpers.common import evaluating, pick_device
from helpers.experiment import Pretrained, positive, setting
from helpers.noise import BANDS, BANDWIDTH, band_limited_noise
from helpers.sweep import fill

BINS = metrics.BINS  # ECE bins: the authors' 10 equal-width bins (ops/tests.py), as everywhere here
EPSILON = 0.7        # eps: the authors' noise amplitude, in units of the normalised input
FREQUENCIES = tuple(round(0.1 * k, 1) for k in range(1, 10))  # Fig. 2b's band centres 0.1 pi, ..., 0.9 pi
METRICS = ("count", "accuracy", "nll", "ece")
SMOKE_CORRUPTIONS = ("gaussian_noise", "fog", "pixelate")  # a smoke run's, unless `corruptions` says otherwise


# --- the tensor pipeline ---------------------------------------------------------------------------------------

def model_input(images, device, *, dataset="cifar100", spec=None):
    """uint8 images N x H x W x 3 (numpy, memory map or tensor) -> normalised float N x 3 x H x W on `device`, resized
    to the input size of the model `spec` and normalised as its inputs are (`data.test_transform(dataset, spec)`'s
    resize and normalisation, on the device). Float tensors are taken to be model inputs already and are only moved.
    """
    if not torch.is_tensor(images):
        images = _host_tensor(np.asarray(images), pin=device.type == "cuda")
    if images.is_floating_point():
        return images.to(device)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3) or normalised float (N, 3, H, W); "
                         f"got {images.dtype} {tuple(images.shape)}")
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)  # N,H,W,3 -> N,3,H,W
    for resize in data.resized(spec):
        images = resize(images)
    normalization = data.normalize(dataset, spec)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (normalization.mean, normalization.std))
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
def evaluate(model, images, labels, *, batch_size=500, perturb=None, bins=BINS, dataset="cifar100", spec=None):
    """`metrics.Metrics` of `model` on `images` with class indices `labels`. `images` is what `model_input` takes
    (uint8 images, normalised tensors) or a dataset of (normalised image, label) pairs, e.g. `data.imagenet_images`.

    `perturb(inputs, start)` may change each normalised batch (`start`: index of its first image) before the
    model sees it. `spec` (the model's sized `helpers.spec.Spec`; None: CIFAR's 32 x 32 and normalisation) sets the
    input size and normalisation of uint8 images. The model is evaluated in eval mode and left in the mode it was in.
    """
    device = next(model.parameters()).device
    labels = labels.long() if torch.is_tensor(labels) else torch.tensor(np.array(labels), dtype=torch.long)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    accumulator = metrics.Accumulator(bins=bins, device=device)  # sums stay on the device: no sync per batch
    with evaluating(model):
        for start, batch in _batches(images, batch_size):
            inputs = model_input(batch, device, dataset=dataset, spec=spec)
            if perturb is not None:
                inputs = perturb(inputs, start)
            accumulator.update(model(inputs), labels[start:start + len(batch)].to(device, non_blocking=True))
    return accumulator.result()


def _row(unit, result):
    return {**unit, **{name: getattr(result, name) for name in METRICS}}


def _frame(table, units):
    """The finished rows of `units` as a DataFrame in their order, numbers as numbers."""
    return table.frame(units).reset_index(drop=True)


# --- CIFAR-100-C -------------------------------------------------------------------------------------------------

def corruption_sweep(model, corrupted, clean_images, clean_labels, table, *, corruptions=data.ALL_CORRUPTIONS,
                     severities=data.SEVERITIES, batch_size=500, bins=BINS, progress=True, spec=None):
    """Evaluate `model` on the clean test set (corruption "clean", severity 0) and on every corruption x severity of
    `corrupted` (a `data.CorruptedCIFAR`), one row each in `table` (a `helpers.sweep.Table` keyed by corruption and
    severity). Finished rows are skipped; under `torchrun` this rank does its share. Returns the rows so far."""
    units = [{"corruption": "clean", "severity": 0}]
    units += [{"corruption": c, "severity": s} for c in corruptions for s in severities]

    def compute(unit):
        if unit["corruption"] == "clean":
            images, labels = clean_images, clean_labels
        else:
            images, labels = corrupted.images(unit["corruption"], unit["severity"]), corrupted.labels(unit["severity"])
        return _row(unit, evaluate(model, images, labels, batch_size=batch_size, bins=bins, spec=spec))

    fill(table, units, compute, desc=f"CIFAR-100-C {table.folder.name}", progress=progress)
    return _frame(table, units)


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

def _noise_seed(seed, frequency, start):
    return (seed * 1_000_003 + round(frequency * 1000)) * 1_000_003 + start


def frequency_noise_sweep(model, images, labels, table, *, band="authors", frequencies=FREQUENCIES, epsilon=EPSILON,
                          bandwidth=BANDWIDTH, seed=0, batch_size=500, bins=BINS, progress=True, spec=None):
    """Evaluate `model` on `images` (anything `evaluate` takes, e.g. `data.imagenet_images`) with `band`'s noise at
    each of `frequencies` (units of pi) added (rows epsilon, frequency) and without (the row epsilon = 0, frequency
    = 0), one row each in `table` (keyed by epsilon and frequency); returns the rows so far.

    The noise is drawn in the shape of each normalised batch (224 x 224 for timm's ImageNet models). The noise of
    a batch depends only on (seed, frequency, index of its first image), so reruns, ranks and bands agree.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}; got {band!r}")
    units = [{"epsilon": 0.0, "frequency": 0.0}] + [{"epsilon": epsilon, "frequency": f} for f in frequencies]

    def compute(unit):
        def perturb(inputs, start):
            if unit["epsilon"] == 0:
                return inputs
            generator = torch.Generator(inputs.device).manual_seed(_noise_seed(seed, unit["frequency"], start))
            return inputs + band_limited_noise(inputs.shape, unit["frequency"], band=band, epsilon=unit["epsilon"],
                                               bandwidth=bandwidth, generator=generator, device=inputs.device)
        return _row(unit, evaluate(model, images, labels, batch_size=batch_size, perturb=perturb, bins=bins,
                                   spec=spec))

    fill(table, units, compute, desc=f"noise {table.folder.name}", progress=progress)
    return _frame(table, units)


def accuracy_drop(table):
    """Per model and noisy frequency: clean accuracy (the epsilon = 0 row) minus accuracy under the noise, with the
    model's facts (`msa`, `data`, `settings`: `tables`) where the table has them."""
    facts = [column for column in ("msa", "data", "settings") if column in table]
    rows = []
    for name, group in table.groupby("model", sort=False):
        clean = group.loc[group["epsilon"] == 0, "accuracy"]
        noisy = group[group["epsilon"] != 0]
        rows += [{"model": name, "epsilon": r.epsilon, "frequency": r.frequency,
                  "accuracy_drop": (clean.iloc[0] if len(clean) else math.nan) - r.accuracy,
                  **{column: getattr(r, column) for column in facts}} for r in noisy.itertuples()]
    return pd.DataFrame(rows, columns=["model", "epsilon", "frequency", "accuracy_drop", *facts])


# --- the experiment: the notebook and `python -m helpers.robustness` both call `run` -----------------------------

@dataclass
class Config(Pretrained):
    """CIFAR-100-C and Fig. 2b for each model."""
    sweeps: list[str] = setting(["corruptions", "noise"], "which sweeps to run", identity=False,
                                choices=("corruptions", "noise"))
    corruptions: list[str] | None = setting(None, "CIFAR-100-C corruptions (None: all 19; a smoke run: 3)",
                                            identity=False, choices=data.ALL_CORRUPTIONS)
    images: int | None = setting(None, "clean CIFAR-100 test images, from the first (None: all 10,000), and "
                                 "CIFAR-100-C images per severity", smoke=8, check=positive)
    frequencies: list[float] = setting(list(FREQUENCIES), "noise band centres, in units of pi (the authors': 0.1 to "
                                       "0.9)", identity=False)
    band: str = setting("authors", "the noise's band: the authors' FreqAttack ring, or our disjoint rings at equal "
                        "power", choices=BANDS)
    epsilon: float = setting(EPSILON, "noise amplitude eps (sign noise, normalised input units); with "
                             "band='disjoint' each band's RMS (0.2 is about the authors' bands')")
    seed: int = setting(0, "draws the noise")
    batch_size: int = setting(500, "images per batch (the noise is drawn per batch)", smoke=8, check=positive)
    imagenet: str | None = setting(None, "a folder of ImageNet validation images (synset folders): the noise sweep on "
                                   "timm's ImageNet-pretrained models, as the paper's Fig. 2b", identity=False)
    cifar100c: str | None = setting(None, "a CIFAR-C folder to use instead of the download", identity=False)


def clean_test_set(config):
    """(uint8 images N x 32 x 32 x 3, labels) of the clean CIFAR-100 test set (random pixels for a smoke run)."""
    if config.smoke:
        return data.synthetic_pixels(config.images)
    test_set = data.dataset("cifar100", config.data_root, train=False, mirror=config.mirror)
    n = config.images or len(test_set)
    return test_set.data[:n], test_set.targets[:n]


def corrupted_set(config):
    """CIFAR-100-C (downloaded, given by `cifar100c`, or for a smoke run a small synthetic one, kept in the results
    folder so that every rank and every rerun reads the same images)."""
    if config.smoke:
        names = config.corruptions or SMOKE_CORRUPTIONS
        folder = config.results_folder() / "smoke" / f"CIFAR-100-C-{config.images}-{'-'.join(names)}"
        if not folder.is_dir():  # written aside, then renamed: ranks racing here each rename a whole folder
            folder.parent.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
            data.synthetic_cifar100c(partial, n=config.images, corruptions=names)
            try:
                os.rename(partial, folder)
            except OSError:  # another rank was first
                shutil.rmtree(partial, ignore_errors=True)
        return data.CorruptedCIFAR(folder)
    corrupted = data.CorruptedCIFAR(config.cifar100c) if config.cifar100c else data.cifar100c(
        config.data_root, mirror=config.mirror)
    return corrupted if config.images is None else corrupted.first(config.images)


def noise_model_and_images(config, name, device):
    """(model, its sized spec, images, labels) of the noise sweep: a CIFAR model and the clean CIFAR-100 test set;
    with `imagenet`, an ImageNet model (a pretrained timm tag, or timm's counterpart of a registry model) and that
    folder's first `images` images through its own transform."""
    spec = config.spec(name)
    if config.imagenet is None or config.smoke:
        if spec.imagenet and not config.smoke:
            raise ValueError(f"{name} classifies ImageNet: set `imagenet` to a folder of ImageNet validation images.")
        model = config.pretrained(name, device)
        data.say_size(spec.sized(model), config.smoke)
        return (model, spec.sized(model), *clean_test_set(config))
    if not spec.imagenet:
        spec = models.imagenet_spec(name)  # the registry's counterpart; other CIFAR models have none: an error
    model = checkpoints.pretrained(spec, map_location=device)  # timm's hub weights
    images = data.imagenet_images(config.imagenet, model, config.images)
    return model, spec.sized(model), images, images.labels


def run(config, *, progress=True):
    """Every sweep of `config` for every model: this rank's unfinished units computed and stored; returns one
    `experiment.Outcome` per (sweep, model), named "corruptions model" or "noise model". CIFAR-100-C is for CIFAR
    models: an ImageNet model (a pretrained timm tag) has its noise sweep only."""
    config = config.resolved()
    device, outcomes = pick_device(), []
    cifar = [name for name in config.models if not config.spec(name).imagenet]
    if "corruptions" in config.sweeps and cifar:
        corrupted, (images, labels) = corrupted_set(config), clean_test_set(config)
        fingerprint = {"clean": identity(images, labels), "corrupted": corrupted.fingerprint()}
        names = [c for c in config.corruptions or data.ALL_CORRUPTIONS if c in corrupted.corruptions]
        for name in cifar:
            model = config.pretrained(name, device)
            spec = config.spec(name).sized(model)
            data.say_size(spec, config.smoke)  # the uint8 images are resized batch by batch (`model_input`)
            table = experiment.table(config, "robustness_cifar100c", spec.slug, ("corruption", "severity"),
                                     data=fingerprint, weights=experiment.weights_digest(model))
            corruption_sweep(model, corrupted, images, labels, table, corruptions=names,
                             batch_size=config.batch_size, progress=progress, spec=spec)
            outcomes.append(experiment.Outcome(f"corruptions {name}", table, corruption_units(names)))
    if "noise" in config.sweeps:
        for name in config.models:
            model, spec, images, labels = noise_model_and_images(config, name, device)
            table = experiment.table(config, "robustness_noise", spec.slug + ("_imagenet" if config.imagenet
                                     else ""), ("epsilon", "frequency"), data=identity(images, labels),
                                     weights=experiment.weights_digest(model))
            frequency_noise_sweep(model, images, labels, table, band=config.band, frequencies=config.frequencies,
                                  epsilon=config.epsilon, seed=config.seed, batch_size=config.batch_size,
                                  progress=progress, spec=spec)
            units = [{"epsilon": 0.0, "frequency": 0.0}] + [{"epsilon": config.epsilon, "frequency": f}
                                                           for f in config.frequencies]
            outcomes.append(experiment.Outcome(f"noise {name}", table, units, provenance.facts(model, table, spec)))
    return outcomes


def identity(images, labels):
    """`data.fingerprint` of images (arrays, tensors or a dataset of pairs) and their labels."""
    if isinstance(images, torch.utils.data.Dataset):
        return data.fingerprint(images)
    return data.fingerprint(torch.utils.data.TensorDataset(torch.as_tensor(np.asarray(images)),
                                                           torch.as_tensor(np.asarray(labels))))


def corruption_units(corruptions):
    return [{"corruption": "clean", "severity": 0}] + [{"corruption": c, "severity": s} for c in corruptions
                                                        for s in data.SEVERITIES]


def tables(outcomes):
    """(CIFAR-100-C table, noise table) of `run`'s outcomes, one row per unit with a `model` column and the
    outcome's facts."""
    parts = {"corruptions": [], "noise": []}
    for outcome in outcomes:
        sweep, name = outcome.name.split(" ", 1)
        parts[sweep].append(_frame(outcome.table, outcome.units).assign(model=name, **outcome.facts))
    return tuple(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame() for frames in parts.values())


def main(argv=None):
    return experiment.main(Config, run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
