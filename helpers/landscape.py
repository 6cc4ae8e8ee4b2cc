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
  The moved weights' L2 norms come from the inner products of w0, d1 and d2, taken once in float64: exact for
  w0 + x d1 + y d2, of which the float32 weights set differ by rounding only; their L1 norms are float32 sums over
  slices of dim 0 (relative error ~1e-8), added up in float64. The other parameters' norms are taken once.

Our one departure: the authors drew new augmentations at every point; here every point sees the same
augmented batches, drawn once from `seed` (each image's crop/flip/RandAugment from RNGs seeded by
(seed, image index), each batch's Mixup from (seed, batch index)), so the landscape carries no sampling noise
and a point's value does not depend on the rank, worker count or resumption that computed it. They are kept
in memory on the model's device (CIFAR's 50,000 images: 0.6 GB), which makes a point cost one eval pass.

Points are rows of a table bound to the experiment's definition (`Config`, `helpers.experiment`): reruns skip
finished ones and `torchrun` ranks share them (`python -m helpers.landscape`, `torchrun --nproc-per-node N -m
helpers.landscape`). The directions are not stored: every rank and every resumed run regenerates them bit for bit
from the seed on the CPU (norms in float64), and a digest of them is part of the definition, so rows moved along
other directions (other weights, seed or normalisation) are never read back.
"""
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from helpers import data, experiment, losses, provenance, trace
from helpers.common import evaluating, pick_device, seeded
from helpers.spec import Spec
from helpers.experiment import Pretrained, positive, setting
from helpers.recipes import STRONG
from helpers.sweep import fill

EXCLUDED = ("pos_embed", "relative_position", "rel_pos")  # the authors' `kws`, and timm's decomposed rel. positions
EPS = 1e-7
COLUMNS = ("x", "y", "l1", "l2", "NLL", "loss", "Acc")


@dataclass
class Config(Pretrained):
    """Fig. 1a, one landscape per model."""
    points: int = setting(21, "grid points per axis over [-span, span] (1: the centre only)", identity=False,
                          smoke=3, check=positive)
    span: float = setting(1.0, "the grid covers [-span, span]^2", identity=False,
                          check=lambda v: None if v > 0 else "must be positive")
    one_dimensional: bool = setting(False, "only the slice y = 0 of the grid", identity=False)
    images: int | None = setting(None, "training images, the first of a seeded shuffle (None: all 50,000; 4992: "
                                 "the size of the authors' published grids' sample)", smoke=8, check=positive)
    batch_size: int = setting(STRONG.batch_size, "images per batch (the strong recipe's)", smoke=4, check=positive)
    seed: int = setting(0, "draws the two directions and the augmented batches")
    normalization: str = setting("dim0", "direction scaling: the authors' norms over dim 0, or Li et al.'s per filter",
                                 choices=("dim0", "filter"))
    weight_decay: float = setting(STRONG.weight_decay, "L2 = weight decay x sum of the parameters' L2 norms")
    workers: int | None = setting(None, "data-loading processes (None: up to 4)", identity=False, smoke=0)
    authors: bool = setting(True, "also plot the authors' published grids (ResNet-50, ViT-Ti; not in smoke runs)",
                            identity=False)


# Directions

def excluded_parameters(model, inputs=None):
    """The names of the parameters the landscape never moves: the authors' (a word of EXCLUDED in the name: position
    embeddings and relative-position tables), and every position table the rule of `helpers.trace` finds in one probe
    pass on `inputs` (default: random ones of the model's input size; a table added to the activations: a learned
    position embedding, a bias table, Swin V2's position MLP)."""
    device = next(model.parameters()).device
    size = Spec.of(model).sized(model).input_size  # the model's own, else CIFAR's
    inputs = torch.randn(2, *size, device=device) if inputs is None else inputs[:2].to(device)
    try:
        probe = trace.probe(model, inputs)
    except Exception as error:
        raise ValueError(f"{type(model).__name__} does not run on inputs of {tuple(inputs.shape)} ({error}); give it "
                         "an `input_size` attribute, or the parameters never to move as `exclude`.") from error
    words = {name for name, _ in model.named_parameters() if any(word in name for word in EXCLUDED)}
    return frozenset(words | trace.position_parameters(probe))


def perturbed_parameters(model, *, exclude=None):
    """The parameters the landscape moves, by name: two or more dimensions, not `exclude`d (names; default:
    `excluded_parameters(model)`)."""
    exclude = excluded_parameters(model) if exclude is None else exclude
    return {name: p for name, p in model.named_parameters() if p.ndim >= 2 and name not in exclude}


def filter_normalized_direction(direction, weight, *, normalization="dim0"):
    """`direction` rescaled to the norms of `weight`: "dim0" (the authors') takes both norms over dim 0, one
    per position of the other dims; "filter" (Li et al. 2018) one per output filter (slice of dim 0). The norms
    and the scaling are computed in float64, so that the float32 result is the same bits on any CPU."""
    if normalization == "dim0":
        dims = (0,)
    elif normalization == "filter":
        dims = tuple(range(1, weight.ndim))
    else:
        raise ValueError(f"normalization must be 'dim0' (the authors') or 'filter' (Li et al.), not {normalization!r}")
    weight_norm = torch.linalg.vector_norm(weight.double(), dim=dims, keepdim=True)
    direction_norm = torch.linalg.vector_norm(direction.double(), dim=dims, keepdim=True)
    return (weight_norm / (direction_norm + EPS) * direction.double()).to(direction.dtype)


def random_directions(model, *, seed=0, normalization="dim0", exclude=None):
    """Two normalised Gaussian directions (dicts of float32 CPU tensors by parameter name), drawn on the CPU
    from `seed` so that every device, rank and resumed run regenerates the same bits."""
    generator = torch.Generator().manual_seed(seed)
    weights = {name: p.detach().float().cpu() for name, p in perturbed_parameters(model, exclude=exclude).items()}
    return [{name: filter_normalized_direction(torch.randn(w.shape, generator=generator), w,
                                               normalization=normalization) for name, w in weights.items()}
            for _ in range(2)]


def directions_digest(directions):
    """SHA-256 (16 hex digits) of the directions' names and bits: part of a landscape's definition."""
    digest = hashlib.sha256()
    for direction in directions:
        for name, tensor in direction.items():
            digest.update(name.encode() + tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_fit(directions, model, *, source="the directions", exclude=None):
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

class _SeededSamples(Dataset):
    """`dataset` whose random transform draws image i from generators seeded by (seed, i)."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with seeded(self.seed, 0, index):
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
            with seeded(seed, 1, index):  # timm's Mixup draws from NumPy's global generator
                images, labels = mixup(images, labels)
        batches.append((images, labels))
    return batches


# The grid

def grid_points(n=21, *, span=1.0, one_dimensional=False):
    """The authors' grid: x, y in np.linspace(-span, span, n), x varying fastest; or the slice y = 0. A grid of
    one point is the centre."""
    if n < 1:
        raise ValueError(f"a grid needs at least one point per axis, not {n}")
    xs = np.linspace(-span, span, n).tolist() if n > 1 else [0.0]
    return [{"x": x, "y": y} for y in ([0.0] if one_dimensional else xs) for x in xs]


class _Moved:
    """Sets the perturbed parameters to w0 + x d1 + y d2 in place; restores w0 bit for bit on exit. Each step is one
    foreach op over all of them (one kernel on CUDA, no Python per parameter), queued without waiting for the device;
    so are their L1 norms, and their L2 norms need no pass over the weights."""

    def __init__(self, parameters, directions):
        self.parameters = list(parameters.values())
        self.first, self.second = ([direction[name] for name in parameters] for direction in directions)

    @torch.no_grad()
    def __enter__(self):
        self.origin = [p.detach().clone() for p in self.parameters]
        # per tensor, <w0, w0>, <d1, d1>, <d2, d2>, <w0, d1>, <w0, d2>, <d1, d2> in float64 on the CPU, once
        self.products = torch.stack([inner_products(*tensors) for tensors in zip(self.origin, self.first, self.second)])
        return self

    @torch.no_grad()
    def to(self, x, y):
        torch._foreach_copy_(self.parameters, self.origin)
        torch._foreach_add_(self.parameters, self.first, alpha=x)
        torch._foreach_add_(self.parameters, self.second, alpha=y)

    @torch.no_grad()
    def l1_parts(self):
        """The float32 sums of |w| per slice of dim 0 of every moved tensor, on the device: a sum over one slice is
        one thread's, so the bits do not depend on the thread count, and short sums keep float32's rounding ~1e-8."""
        return torch.cat([magnitude.flatten(1).sum(1) for magnitude in torch._foreach_abs(self.parameters)])

    def l2(self, x, y):
        """The sum over the moved tensors of ||w0 + x d1 + y d2||, from their inner products (no device work)."""
        squares = self.products @ torch.tensor([1, x * x, y * y, 2 * x, 2 * y, 2 * x * y], dtype=torch.float64)
        return squares.clamp_min(0).sqrt().sum().item()  # clamped: rounding may take a zero norm's square below 0

    @torch.no_grad()
    def __exit__(self, *exc):
        torch._foreach_copy_(self.parameters, self.origin)


def inner_products(origin, first, second):
    """<w0, w0>, <d1, d1>, <d2, d2>, <w0, d1>, <w0, d2>, <d1, d2> of three tensors of one shape, float64, on the CPU."""
    w, a, b = (t.detach().cpu().double().flatten() for t in (origin, first, second))
    return torch.stack([w @ w, a @ a, b @ b, w @ a, w @ b, a @ b])


@torch.no_grad()
def evaluate(model, batches, *, log_of_softmax=True):
    """`[NLL averaged over batches, accuracy over images]` of `model` as it is, on (images, targets) batches: a
    float32 tensor on the model's device, returned without waiting for the device."""
    nll, correct, count, steps = 0.0, 0, 0, 0
    for images, targets in batches:
        logits = model(images)
        # log_softmax of log-probabilities is the identity, so `nll` applies to either
        nll = nll + losses.nll(logits.softmax(-1).log() if log_of_softmax else logits, targets)
        labels = targets.argmax(-1) if targets.ndim > 1 else targets
        correct = correct + (logits.argmax(-1) == labels).sum()
        count, steps = count + len(labels), steps + 1
    return torch.stack([nll / steps, correct / count])


def landscape(model, batches, table, points, directions, *, weight_decay=STRONG.weight_decay, log_of_softmax=True,
              exclude=None, progress=True):
    """Fill `table` (a `helpers.sweep.Table` keyed by x, y) with one row (COLUMNS) per grid point of `points` not
    there yet, this rank's share; return the finished rows of `points` as a DataFrame of floats, in their order.

    `batches` may be a callable returning them, called only if a point is left to compute. The model is evaluated
    in eval mode and handed back with its mode and bit-identical weights. `exclude`: the parameters never moved
    (default: those the directions do not hold; `run` gives `excluded_parameters(model)`).
    """
    if exclude is None:  # the directions say what moves
        exclude = frozenset(name for name, _ in model.named_parameters()) - set().union(*directions)
    check_fit(directions, model, exclude=exclude)
    parameters = perturbed_parameters(model, exclude=exclude)
    directions = [{name: d[name].to(p.device, p.dtype) for name, p in parameters.items()} for d in directions]
    if table.todo(points) and callable(batches):
        batches = batches()
    # the parameters that never move: their norms once, not at every point
    fixed_l1, fixed_l2 = losses.norm_sums(p for name, p in model.named_parameters() if name not in parameters)
    with evaluating(model), _Moved(parameters, directions) as moved:
        def compute(point):
            moved.to(point["x"], point["y"])
            metrics = evaluate(model, batches, log_of_softmax=log_of_softmax)
            # the point's one synchronisation
            nll, accuracy, *l1_parts = torch.cat([metrics, moved.l1_parts()]).tolist()
            l1, l2 = fixed_l1 + math.fsum(l1_parts), fixed_l2 + moved.l2(point["x"], point["y"])
            # the "norm_sum" L2 penalty, from the sum just taken, as the authors' notebook adds it
            return {**point, "l1": l1, "l2": l2, "NLL": nll, "loss": nll + weight_decay * l2, "Acc": accuracy}

        fill(table, points, compute, desc=f"landscape {table.folder.name}", progress=progress)
    return read(table, points)


def read(table, points=None):
    """The finished rows of `table` (of `points` only, in their order) as a DataFrame of floats, COLUMNS."""
    return table.frame(points).reindex(columns=list(COLUMNS)).astype(float)


def results(outcome):
    """The figure's table of one model (`run`'s outcome): `read`, with the outcome's facts (`msa`, `data`,
    `settings`: what its verdicts compare like with like) in every row."""
    return read(outcome.table, outcome.units).assign(**outcome.facts)


# The experiment: the notebook and `python -m helpers.landscape` both call `run`

def run(config, *, progress=True):
    """The landscape of every model of `config`: this rank's unfinished points computed and stored; returns one
    `experiment.Outcome` per model (`read(outcome.table, outcome.units)` is its table)."""
    config = config.resolved()
    device = pick_device()
    points = grid_points(config.points, span=config.span, one_dimensional=config.one_dimensional)
    outcomes = []
    for name in config.models:
        spec = config.spec(name)
        if spec.imagenet:
            raise ValueError(f"{name} classifies ImageNet: the landscape is of a CIFAR-100 loss; give a CIFAR model.")
        model = config.pretrained(name, device)
        spec = spec.sized(model)
        dataset = data.training_set(config, STRONG.train_transform("cifar100", spec), spec=spec)
        augmented = []

        def batches(dataset=dataset, augmented=augmented):  # drawn once, and only if some point is left to compute
            if not augmented:
                augmented.extend(augmented_batches(dataset, seed=config.seed, batch_size=config.batch_size,
                                                   mixup=STRONG.mixup_fn(data.NUM_CLASSES["cifar100"]), device=device,
                                                   workers=config.workers, progress=progress))
            return augmented

        exclude = excluded_parameters(model, torch.randn(2, *spec.input_size))
        directions = random_directions(model, seed=config.seed, normalization=config.normalization, exclude=exclude)
        weights = {"model": experiment.weights_digest(model), "directions": directions_digest(directions)}
        table = experiment.table(config, "landscape", spec.slug, ("x", "y"), data=data.fingerprint(dataset),
                                 weights=weights)
        landscape(model, batches, table, points, directions, weight_decay=config.weight_decay, exclude=exclude,
                  progress=progress)
        outcomes.append(experiment.Outcome(name, table, points, provenance.facts(model, table, spec)))
        del augmented[:]  # the next model draws its own, at its input size
    return outcomes


def main(argv=None):
    return experiment.main(Config, run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
