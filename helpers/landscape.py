"""Fig. 1a: the loss landscape, NLL + L2 on the augmented training data, along two random directions.

As the authors compute it (ops/loss_landscapes.py, ops/tests.py, losslandscape.ipynb):
- Two Gaussian directions, one entry per parameter with two or more dimensions whose name contains neither
  `pos_embed` nor `relative_position`; biases, norm weights and buffers are never moved. Each is rescaled as
  d <- ||w|| / (||d|| + 1e-7) * d with both norms over dim 0, one norm per position of the other dims: not the
  per-output-filter normalisation of Li et al. (2018), which `normalization="filter"` gives instead.
- At a grid point (x, y) the weights are w0 + x d1 + y d2, set in place (no copy of the model per point) and
  restored bit for bit afterwards, also after an error.
- The model, in eval mode, sees the whole shuffled training set with the strong recipe's crop, flip and
  RandAugment, in batches of 96 mixed by timm's Mixup/CutMix with label smoothing. NLL is the soft-target
  cross-entropy of the LOG OF THE SOFTMAX (it is inf where a probability underflows, as in the published
  grids), the mean over batches; Acc compares the argmax of the prediction with the argmax of the mixed target.
- The loss is NLL + weight decay (0.05) x the sum over all parameters of their unsquared L2 norms.

Our one departure: the authors drew new augmentations at every point; here every point sees the same
augmented batches, drawn once from `seed` (each image's crop/flip/RandAugment from RNGs seeded by
(seed, image index), each batch's Mixup from (seed, batch index)), so the landscape carries no sampling noise
and a point's value does not depend on the rank, worker count or resumption that computed it. They are kept
in memory on the model's device (CIFAR's 50,000 images: 0.6 GB), which makes a point cost one eval pass.

Points are rows of a CSV (`helpers.sweep`): reruns skip finished ones and `torchrun` ranks share them; the
directions are saved beside it so that every rank and every resumed run moves along the same ones.
"""
import argparse
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

import helpers
from helpers import checkpoints, data, losses
from helpers.download import download, sha256
from helpers.models import evaluating
from helpers.recipes import STRONG
from helpers.sweep import Sweep

EXCLUDED = ("pos_embed", "relative_position")  # the authors' `kws`
EPS = 1e-7
COLUMNS = ("x", "y", "l1", "l2", "NLL", "loss", "Acc")

# The authors' published grids, at a pinned commit of their repository, and the columns of those header-less
# CSVs (losslandscape.ipynb's `names`: tests.save_metrics writes the grid point, the norm sums, the metrics).
PUBLISHED_URL = ("https://raw.githubusercontent.com/xxxnell/how-do-vits-work/"
                 "9571ff1370f31af2f433558fbfa7bc87a97b0bab/resources/results/")
PUBLISHED = {
    "resnet_50": ("cifar100_resnet_dnn_50_losslandscape.csv",
                  "395072b64c65445dca7a94ab38f0d7042ebe0309538679fce22853dd73633c8f"),
    "vit_ti": ("cifar100_vit_ti_losslandscape.csv",
               "166207c69cb3055c171de3ad8bc98fed91f436367ccbede820265303c1c8ffb2"),
}
PUBLISHED_COLUMNS = ("x", "y", "l1", "l2", "NLL", "Cutoff1", "Cutoff2", "Acc", "Acc-90", "Unc", "Unc-90", "IoU",
                     "IoU-90", "Freq", "Freq-90", "Top-5", "Brier", "ECE", "ECSE")


# Directions

def perturbed_parameters(model, *, exclude=EXCLUDED):
    """The parameters the landscape moves, by name: two or more dimensions, no excluded word in the name."""
    return {name: p for name, p in model.named_parameters()
            if p.ndim >= 2 and not any(word in name for word in exclude)}


def filter_normalized_direction(direction, weight, *, normalization="dim0"):
    """`direction` rescaled to the norms of `weight`: "dim0" (the authors') takes both norms over dim 0, one
    per position of the other dims; "filter" (Li et al. 2018) one per output filter (slice of dim 0)."""
    if normalization == "dim0":
        dims = (0,)
    elif normalization == "filter":
        dims = tuple(range(1, weight.ndim))
    else:
        raise ValueError(f"normalization must be 'dim0' (the authors') or 'filter' (Li et al.), not {normalization!r}")
    weight_norm = torch.linalg.vector_norm(weight, dim=dims, keepdim=True)
    direction_norm = torch.linalg.vector_norm(direction, dim=dims, keepdim=True)
    return weight_norm / (direction_norm + EPS) * direction


def random_directions(model, *, seed=0, normalization="dim0", exclude=EXCLUDED):
    """Two normalised Gaussian directions (dicts of float32 CPU tensors by parameter name), drawn on the CPU
    from `seed` so that every device and every rank gets the same bits."""
    generator = torch.Generator().manual_seed(seed)
    weights = {name: p.detach().float().cpu() for name, p in perturbed_parameters(model, exclude=exclude).items()}
    return [{name: filter_normalized_direction(torch.randn(w.shape, generator=generator), w,
                                               normalization=normalization) for name, w in weights.items()}
            for _ in range(2)]


def saved_directions(model, path, *, seed=0, normalization="dim0", exclude=EXCLUDED):
    """The directions stored at `path`, or new ones from `seed`, saved there first (atomically: ranks racing
    here write the same bits). Refuses a file made with other settings, for other parameters or other weights."""
    path = Path(path)
    settings = {"seed": seed, "normalization": normalization, "exclude": list(exclude)}
    fingerprint = losses.norm_sums(model.parameters())[1]
    if not path.exists():
        directions = random_directions(model, seed=seed, normalization=normalization, exclude=exclude)
        checkpoints.save({**settings, "weights_l2": fingerprint, "directions": directions}, path)
        return directions
    saved = torch.load(path, map_location="cpu", weights_only=True)
    advice = f"delete {path} and the grid CSV beside it, or write to another results folder"
    if {k: saved.get(k) for k in settings} != settings:
        raise ValueError(f"{path} holds directions made with {({k: saved.get(k) for k in settings})}, "
                         f"not {settings}: {advice}.")
    check_fit(saved["directions"], model, source=str(path), exclude=exclude)
    if not np.isclose(saved["weights_l2"], fingerprint, rtol=1e-6, atol=0):
        raise ValueError(f"{path} was made for weights whose L2 norms sum to {saved['weights_l2']:.6g}; this "
                         f"model's sum to {fingerprint:.6g} (another checkpoint?): {advice}.")
    return saved["directions"]


def check_fit(directions, model, *, source="the directions", exclude=EXCLUDED):
    """Raise a ValueError naming every mismatch between `directions` and the model's perturbed parameters."""
    parameters = perturbed_parameters(model, exclude=exclude)
    for index, direction in enumerate(directions):
        missing, extra = sorted(parameters.keys() - direction.keys()), sorted(direction.keys() - parameters.keys())
        shapes = [f"{name} {tuple(direction[name].shape)} vs {tuple(p.shape)}" for name, p in parameters.items()
                  if name in direction and direction[name].shape != p.shape]
        if missing or extra or shapes:
            raise ValueError(f"{source} (direction {index + 1}) do not fit this model: missing {missing[:5]}, "
                             f"unknown {extra[:5]}, other shapes {shapes[:5]}. They were made for another model.")
    if len(directions) != 2:
        raise ValueError(f"{source} holds {len(directions)} directions, not 2.")


# Augmented batches, reproducible per image and per batch

@contextmanager
def _seeded(*entropy):
    """Seed Python's, NumPy's and torch's CPU generators from `entropy` (ints); restore them afterwards."""
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class _SeededSamples(Dataset):
    """`dataset` whose random transform draws image i from generators seeded by (seed, i)."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with _seeded(self.seed, 0, index):
            return self.dataset[index]


def augmented_batches(dataset, *, seed=0, batch_size=STRONG.batch_size, mixup=None, device="cpu", workers=None,
                      progress=True):
    """The whole of `dataset` in an order shuffled by `seed`, batched, mixed by `mixup` (e.g.
    `STRONG.mixup_fn(100)`), as a list of (images, targets) on `device`; the same for any `workers`."""
    last = len(dataset) % batch_size or batch_size
    if mixup is not None and (batch_size % 2 or last % 2):
        raise ValueError(f"Mixup/CutMix pairs the images of a batch, so batches need an even size: {len(dataset)} "
                         f"images in batches of {batch_size} end with a batch of {last}. Pick another batch size.")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    loader = data.loader(Subset(_SeededSamples(dataset, seed), order), batch_size, workers=workers)
    batches = []
    for index, (images, labels) in enumerate(tqdm(loader, desc="augmented batches", disable=not progress)):
        images, labels = images.to(device), labels.to(device)
        if mixup is not None:
            with _seeded(seed, 1, index):  # timm's Mixup draws from NumPy's global generator
                images, labels = mixup(images, labels)
        batches.append((images, labels))
    return batches


# The grid

def grid_points(n=21, *, span=1.0, one_dimensional=False):
    """The authors' grid: x, y in np.linspace(-span, span, n), x varying fastest; or the slice y = 0."""
    xs = np.linspace(-span, span, n).tolist()
    return [{"x": x, "y": y} for y in ([0.0] if one_dimensional else xs) for x in xs]


def grid_path(results, name, *, smoke=False):
    """Where the grid CSV of model `name` lives (its directions sit beside it, see `directions_path`)."""
    return Path(results) / f"losslandscape_{name}{'_smoke' if smoke else ''}_grid.csv"


def directions_path(path):
    return Path(path).with_name(Path(path).stem + "_directions.pt")


class _Moved:
    """Sets the perturbed parameters to w0 + x d1 + y d2 in place; restores w0 bit for bit on exit."""

    def __init__(self, parameters, directions):
        self.parameters, self.directions = parameters, directions

    @torch.no_grad()
    def __enter__(self):
        self.origin = {name: p.detach().clone() for name, p in self.parameters.items()}
        return self

    @torch.no_grad()
    def to(self, x, y):
        first, second = self.directions
        for name, p in self.parameters.items():
            torch.add(self.origin[name], first[name], alpha=x, out=p).add_(second[name], alpha=y)

    @torch.no_grad()
    def __exit__(self, *exc):
        for name, p in self.parameters.items():
            p.copy_(self.origin[name])


@torch.no_grad()
def evaluate(model, batches, *, log_of_softmax=True):
    """(NLL averaged over batches, accuracy over images) of `model` as it is, on (images, targets) batches."""
    nll, correct, count, steps = 0.0, 0, 0, 0
    for images, targets in batches:
        logits = model(images)
        # log_softmax of log-probabilities is the identity, so `nll` applies to either
        nll = nll + losses.nll(logits.softmax(-1).log() if log_of_softmax else logits, targets)
        labels = targets.argmax(-1) if targets.ndim > 1 else targets
        correct = correct + (logits.argmax(-1) == labels).sum()
        count, steps = count + len(labels), steps + 1
    return float(nll / steps), float(correct / count)  # one synchronisation per point


def landscape(model, batches, *, path, points=None, directions=None, seed=0, normalization="dim0",
              weight_decay=STRONG.weight_decay, log_of_softmax=True, rank_info=None, progress=True):
    """Fill the CSV at `path` with one row (COLUMNS) per grid point of `points` (default `grid_points()`) not
    there yet, this rank's share; return the finished rows of `points` as a DataFrame, in their order.

    `directions` default to `saved_directions(model, directions_path(path), seed=, normalization=)`. The model
    is evaluated in eval mode and handed back with its mode and bit-identical weights.
    """
    points = grid_points() if points is None else list(points)
    if directions is None:
        directions = saved_directions(model, directions_path(path), seed=seed, normalization=normalization)
    check_fit(directions, model)
    parameters = perturbed_parameters(model)
    directions = [{name: d[name].to(p.device, p.dtype) for name, p in parameters.items()} for d in directions]
    sweep = Sweep(path, ["x", "y"], rank_info)
    with evaluating(model), _Moved(parameters, directions) as moved:
        for point in tqdm(sweep.todo(points), desc=Path(path).stem, disable=not progress):
            moved.to(point["x"], point["y"])
            nll, accuracy = evaluate(model, batches, log_of_softmax=log_of_softmax)
            l1, l2 = losses.norm_sums(model.parameters())
            # the "norm_sum" L2 penalty, from the sum just taken, as the authors' notebook adds it
            sweep.add({**point, "l1": l1, "l2": l2, "NLL": nll, "loss": nll + weight_decay * l2, "Acc": accuracy})
    return read(path, points)


def read(path, points=None):
    """The finished rows of the CSV at `path` (of `points` only, in their order) as floats."""
    rows = pd.DataFrame(Sweep(path, ["x", "y"]).rows(), columns=list(COLUMNS)).astype(float)
    if points is None:
        return rows
    wanted = pd.DataFrame(points).astype(float)
    return wanted.merge(rows.drop_duplicates(["x", "y"]), on=["x", "y"], how="inner")


def as_grid(table, column="loss"):
    """(X, Y, Z) 2-D arrays, rows along y and columns along x, from a table of grid points."""
    z = table.drop_duplicates(["x", "y"]).pivot(index="y", columns="x", values=column)
    x, y = np.meshgrid(z.columns.to_numpy(), z.index.to_numpy())
    return x, y, z.to_numpy()


def published(name, folder="results", *, url=None, weight_decay=STRONG.weight_decay):
    """The authors' published grid for `name` ("resnet_50" or "vit_ti"), downloaded into `folder` once (checked
    against its SHA-256 unless `url` points elsewhere), as a table of COLUMNS with loss = NLL + wd x l2."""
    if name not in PUBLISHED:
        raise ValueError(f"The authors published landscapes for {', '.join(PUBLISHED)} only, not {name!r}.")
    file, digest = PUBLISHED[name]
    path = Path(folder) / f"authors_{file}"

    def verify(tmp):
        if url is None and sha256(tmp) != digest:
            raise ValueError(f"{PUBLISHED_URL + file} changed: its SHA-256 is not {digest}.")

    if not path.exists():
        download(url or PUBLISHED_URL + file, path, verify=verify)
    table = pd.read_csv(path, names=list(PUBLISHED_COLUMNS), header=None)
    table["loss"] = table["NLL"] + weight_decay * table["l2"]
    return table[list(COLUMNS)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fig. 1a: the NLL + L2 loss landscape of one model on augmented "
                                     "CIFAR-100 (torchrun --nproc-per-node N -m helpers.landscape ... splits the points)")
    parser.add_argument("model", help="a registry name (python -m helpers.models lists them)")
    parser.add_argument("--checkpoint", help="a checkpoint file (default: the official weights)")
    parser.add_argument("--checkpoint-root", default="checkpoints")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--results", default="results")
    parser.add_argument("--points", type=int, default=21, help="points per axis")
    parser.add_argument("--span", type=float, default=1.0, help="the grid covers [-span, span]^2")
    parser.add_argument("--slice", action="store_true", help="only the 1-D slice y = 0")
    parser.add_argument("--seed", type=int, default=0, help="seeds the directions and the augmented batches")
    parser.add_argument("--batch-size", type=int, default=STRONG.batch_size)
    parser.add_argument("--normalization", choices=("dim0", "filter"), default="dim0")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="fresh weights and 8 synthetic images")
    args = parser.parse_args(argv)
    device = helpers.pick_device()
    if args.smoke:
        dataset, batch_size = data.synthetic(8), min(args.batch_size, 4)
    else:
        dataset = data.dataset("cifar100", args.data_root, train=True, transform=STRONG.train_transform("cifar100"))
        batch_size = args.batch_size
    model = checkpoints.pretrained(args.model, args.checkpoint_root, path=args.checkpoint, smoke=args.smoke,
                                   map_location=device)
    batches = augmented_batches(dataset, seed=args.seed, batch_size=batch_size,
                                mixup=STRONG.mixup_fn(data.NUM_CLASSES["cifar100"]), device=device,
                                workers=args.workers)
    path = grid_path(args.results, args.model, smoke=args.smoke)
    points = grid_points(args.points, span=args.span, one_dimensional=args.slice)
    table = landscape(model, batches, path=path, points=points, seed=args.seed, normalization=args.normalization)
    print(f"{path}: {len(table)} of {len(points)} points finished")


if __name__ == "__main__":
    main()
