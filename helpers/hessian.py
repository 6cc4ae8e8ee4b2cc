"""Fig. 1c and Fig. 4: Hessian eigenvalue spectra of NLL + L2 on augmented mini-batches.

For one mini-batch of the training set, with the training augmentation (crop, flip, RandAugment, then
Mixup/CutMix, as the authors measured) and BatchNorm in eval mode, the loss is
`nll(model(inputs), targets) + l2_penalty(parameters, weight_decay, convention)` over every trainable parameter.
The paper's statistic (the authors' "Hessian max eigenvalue spectrum", their issue #12) is, per batch, the top-5
eigenvalues as PyHessian's power iteration with deflation returns them: the 5 of largest MAGNITUDE, which may be
negative, pooled over batches into one density. We get them by Lanczos (`helpers.lanczos`) with full
reorthogonalisation on the Hessian-vector products, stopped once they are certified: each Ritz value theta_i of the
projection T_m has the residual bound |beta_m s_{m,i}|, an exact eigenvalue lies within it, and the run stops when
every wanted bound is at most tol·|theta_i| and the next candidate inwards from each end cannot reach their
magnitude (`certified`). The bound is for the operator as computed; float32 products add their own rounding, about
1e-6 relative on the tests' ViT, far below the default tol, and so do the float32 inner products over millions of
parameters, summed pairwise (`inner_products`). Memory follows the steps: the basis grows as they are taken, up to
`basis` vectors; a run that needs more restarts thick (Wu & Simon 2000: the wanted Ritz vectors and the residual go
on, T becomes an arrowhead), so it holds (basis + 2) x parameters numbers at most (`memory`). The same run gives, as
our extra panels, the k largest and the k smallest eigenvalues with their bounds (stopping does not wait for those),
and the nodes and weights (first components squared of T's eigenvectors) of a stochastic Lanczos quadrature (SLQ) of
the spectral density, one node per step before any restart; `spectral_density` broadens them with Gaussians.

L2 conventions (helpers.losses): "squared" is the textbook (wd/2)·‖w‖², whose Hessian is the NLL Hessian plus
wd·I, so every eigenvalue shifts by wd. "norm_sum" is the authors' landscape convention wd·Σ‖w‖ (unsquared
norms per tensor); its Hessian per tensor is wd·(I - ŵŵᵀ)/‖w‖, which grows like wd/‖w‖ for tensors of small
norm. At an exactly-zero tensor (timm zero-initialises biases) ‖w‖ has a kink, not a curvature: it is linear
along every ray from 0, so we take its Hessian there as zero and leave such tensors out of the penalty
(autograd would give NaN).

timm's attention calls fused scaled-dot-product kernels that have no double backward on CPU; the math kernel
is forced for the duration of a computation (`math_attention`), then the previous choice is restored.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers import data, experiment, provenance
from helpers.common import evaluating, pick_device, seeded
from helpers.experiment import Pretrained, positive, setting
from helpers.lanczos import (BASIS, K, MAX_STEPS, TOL, by_magnitude, certified, lanczos, memory, quadrature, ritz,
                             smallest_basis, too_small)
from helpers.losses import l2_penalty, nll
from helpers.recipes import STRONG
from helpers.sweep import fill

BATCH_SIZE = 16   # small mini-batches ...
FRACTION = 0.1    # ... over about a tenth of the training set, as in the paper


@contextmanager
def math_attention():
    """Scaled-dot-product attention through its plain-operator kernel, which is twice differentiable."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


class HessianOperator:
    """v -> H v for the loss of one mini-batch, on flat vectors of all trainable parameters, in `dtype`.

    The parameters are copied in `dtype`, so the model itself is left unchanged. Use it inside
    `math_attention()` and `evaluating(model)`, as `eigenvalues` does.
    """

    def __init__(self, model, inputs, targets, *, weight_decay=STRONG.weight_decay, convention="squared",
                 dtype=torch.float32):
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.parameters = [p.detach().to(dtype).requires_grad_() for _, p in named]
        self.dim = sum(p.numel() for p in self.parameters)
        buffers = {name: b.to(dtype) if b.is_floating_point() else b for name, b in model.named_buffers()}
        inputs = inputs.to(self.parameters[0].device, dtype)
        targets = targets.to(self.parameters[0].device)
        targets = targets.to(dtype) if targets.is_floating_point() else targets
        logits = functional_call(model, {**dict(zip(self.names, self.parameters)), **buffers}, (inputs,))
        self.loss = nll(logits, targets)
        penalised = self.parameters
        if convention == "norm_sum":  # see the module docstring: no curvature at an exactly-zero tensor
            penalised = [p for p in self.parameters if p.count_nonzero() > 0]
        if weight_decay:
            self.loss = self.loss + l2_penalty(penalised, weight_decay, convention)
        # Double backward through the gradient's graph, built once per batch, rather than torch.func's
        # jvp(grad): measured on CPU (2-block ViT and a BatchNorm conv net, batch 16) an HVP took 16 ms against
        # 66 ms and 30 ms with torch.func, because the forward and first backward are not redone per product.
        self.gradient = torch.autograd.grad(self.loss, self.parameters, create_graph=True)

    def __call__(self, vector):
        pieces = torch.split(vector, [p.numel() for p in self.parameters])
        pieces = [piece.view_as(p) for piece, p in zip(pieces, self.parameters)]
        products = torch.autograd.grad(self.gradient, self.parameters, pieces, retain_graph=True)
        return torch.cat([product.reshape(-1) for product in products])


@dataclass
class Spectrum:
    magnitude: torch.Tensor     # the k eigenvalues of largest magnitude, by decreasing |eigenvalue|: the paper's
    bounds: torch.Tensor        # ... statistic (PyHessian's top_n), and their residual bounds
    top: torch.Tensor           # the k largest eigenvalues, largest first, ...
    top_bounds: torch.Tensor    # ... and their bounds
    bottom: torch.Tensor        # the k smallest (most negative) eigenvalues, smallest first, ...
    bottom_bounds: torch.Tensor  # ... and their bounds
    nodes: torch.Tensor         # SLQ nodes, ascending: the Ritz values of the steps before any restart (`quadrature`)
    weights: torch.Tensor       # SLQ weights (sum to one)
    steps: int                  # Lanczos steps, i.e. Hessian-vector products
    restarts: int               # thick restarts (each when the basis was full)
    max_bound: float            # the largest bound of `magnitude` relative to its value
    converged: bool             # `certified`: every value of `magnitude` is within tol of an eigenvalue
    loss: float                 # the loss whose Hessian this is

    @classmethod
    def of(cls, run, *, shift=0.0, k=K, tol=TOL, loss=float("nan")):
        """The spectrum of the operator + `shift` I that a `Krylov` run gives (see `lanczos`)."""
        values, bounds = ritz(run, shift)
        nodes, weights = quadrature(run, shift)
        wanted, top, bottom = by_magnitude(values, k), values.argsort(descending=True)[:k], values.argsort()[:k]
        return cls(magnitude=values[wanted], bounds=bounds[wanted], top=values[top], top_bounds=bounds[top],
                   bottom=values[bottom], bottom_bounds=bounds[bottom], nodes=nodes, weights=weights,
                   steps=run.steps, restarts=run.restarts,
                   max_bound=(bounds[wanted] / values[wanted].abs()).max().item(),
                   converged=certified(run, shift=shift, k=k, tol=tol), loss=loss)


def eigenvalues(model, inputs, targets, *, weight_decay=STRONG.weight_decay, convention="squared", k=K, tol=TOL,
                max_steps=MAX_STEPS, basis=BASIS, dtype=torch.float32, generator=None):
    """The `Spectrum` of the Hessian of one mini-batch's loss NLL + `weight_decay` x L2 (`losses_eigenvalues` of
    that one loss)."""
    return losses_eigenvalues(model, inputs, targets, weight_decays=[weight_decay], convention=convention, k=k,
                              tol=tol, max_steps=max_steps, basis=basis, dtype=dtype, generator=generator)[0]


def losses_eigenvalues(model, inputs, targets, *, weight_decays=(0.0, STRONG.weight_decay), convention="squared",
                       k=K, tol=TOL, max_steps=MAX_STEPS, basis=BASIS, dtype=torch.float32, generator=None):
    """One `Spectrum` per loss NLL + wd x L2 of `weight_decays` (see the module docstring), on one mini-batch, each
    stopped once its own k Ritz values of largest magnitude have an exact eigenvalue within `tol` times their
    magnitude, or after `max_steps` with `converged` False.

    Under "squared" the Hessian of NLL + L2 is NLL's plus wd I: the same Krylov space, T + wd I, the same bounds.
    So ONE Lanczos run on NLL's Hessian serves every loss, continued until each loss's own top-k by magnitude (which
    the shift can change) is certified. "norm_sum" is no shift: one run per loss, each from the same start vector.
    Memory: `memory(parameters, basis=basis, dtype=dtype)`, e.g. 6.3 GB for ResNet-50 in float32 at basis 64.
    """
    if max_steps < k:
        raise ValueError(f"max_steps={max_steps} Lanczos steps cannot give k={k} eigenvalues; use max_steps >= k")
    shared = convention == "squared"
    if basis < smallest_basis(k, len(weight_decays) if shared else 1):
        raise ValueError(too_small(basis, k, len(weight_decays) if shared else 1))
    start = generator.get_state() if generator is not None else None
    options = dict(k=k, tol=tol, max_steps=max_steps, basis=basis, dtype=dtype, generator=generator)
    if shared:
        return one_run(model, inputs, targets, weight_decays, convention, options)
    spectra = []
    for weight_decay in weight_decays:
        if start is not None:
            generator.set_state(start)  # every loss's run from the same start vector, as in a run of its own
        spectra += one_run(model, inputs, targets, [weight_decay], convention, options)
    return spectra


def one_run(model, inputs, targets, weight_decays, convention, options):
    """The spectra of one Lanczos run: on the Hessian of NLL with each squared weight decay as a shift, or on the
    Hessian of the one loss NLL + wd x L2 of `weight_decays`."""
    shifts = weight_decays if convention == "squared" else [0.0]
    penalty = 0.0 if convention == "squared" else weight_decays[0]
    device = next(model.parameters()).device
    with evaluating(model), math_attention():
        operator = HessianOperator(model, inputs.to(device), targets.to(device), weight_decay=penalty,
                                   convention=convention, dtype=options["dtype"])
        run = lanczos(operator, operator.dim, shifts=shifts, device=device, **options)
        with torch.no_grad():  # the shifts' penalties (wd/2)|w|^2; a loss of its own has its penalty inside
            losses = [operator.loss.item() + l2_penalty(operator.parameters, shift).item() for shift in shifts]
    return [Spectrum.of(run, shift=shift, k=options["k"], tol=options["tol"], loss=value)
            for shift, value in zip(shifts, losses)]


def memory_plan(config):
    """Per model of `config`, before any is loaded: its trainable parameters and the bytes its Lanczos runs hold
    (`memory`), each model built on the meta device (shapes, no numbers)."""
    config = config.resolved()
    dtype = torch.float64 if config.float64 else torch.float32
    rows = []
    for name in config.names():
        with torch.device("meta"):  # fresh weights: nothing downloaded
            parameters = sum(p.numel() for p in config.spec(name).build(fresh=True).parameters() if p.requires_grad)
        rows.append({"model": name, "parameters": parameters, "basis": min(config.basis, parameters),
                     "dtype": str(dtype).removeprefix("torch."),
                     "memory_GB": round(memory(parameters, basis=config.basis, dtype=dtype) / 1e9, 2)})
    return pd.DataFrame(rows)


def spectral_density(nodes, weights, grid, *, sigma):
    """SLQ density on `grid`: sum_j w_j N(grid; node_j, sigma^2), averaged over the runs when `nodes` and
    `weights` are lists (one entry per run/batch). Integrates to one over a grid wide enough for the Gaussians."""
    if isinstance(nodes, torch.Tensor):
        nodes, weights = [nodes], [weights]
    grid = torch.as_tensor(grid, dtype=torch.float64)
    density = torch.zeros_like(grid)
    for run_nodes, run_weights in zip(nodes, weights):
        run_nodes = torch.as_tensor(run_nodes, dtype=torch.float64)  # lists of floats: float64, not the default
        run_weights = torch.as_tensor(run_weights, dtype=torch.float64)
        gaussians = torch.exp(-(grid[:, None] - run_nodes[None]) ** 2 / (2 * sigma ** 2)) / (sigma * (2 * np.pi) ** 0.5)
        density += gaussians @ run_weights  # (grid, runs) @ (runs,)
    return density / len(nodes)


def batch_indices(dataset, *, batch_size=BATCH_SIZE, fraction=FRACTION, seed=0):
    """The dataset indices of each mini-batch: a fixed random `fraction` of the set, in batches of `batch_size`."""
    count = max(1, round(fraction * len(dataset) / batch_size))
    if count * batch_size > len(dataset):
        raise ValueError(f"{count} batches of {batch_size} need more than the {len(dataset)} examples in the dataset")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return order[:count * batch_size].view(count, batch_size).tolist()  # (batches, batch_size)


def augmented_batch(dataset, indices, *, mixup_fn=None, seed=0):
    """(inputs, targets) of `indices` through the dataset's transform and `mixup_fn`, the same for the same seed."""
    with seeded(seed):
        images, labels = zip(*(dataset[i] for i in indices))
        inputs, targets = torch.stack(images), torch.as_tensor([int(label) for label in labels])
        if mixup_fn is not None:
            inputs, targets = mixup_fn(inputs, targets)
    return inputs, targets


def spectrum_row(spectrum):
    """One batch's stored row of one loss (without its unit key): the paper's statistic with its bounds, our extra
    panels' eigenvalues, the convergence and restarts, the SLQ nodes and weights."""
    return {"loss": spectrum.loss, "magnitude": spectrum.magnitude.tolist(), "bounds": spectrum.bounds.tolist(),
            "top": spectrum.top.tolist(), "bottom": spectrum.bottom.tolist(), "steps": spectrum.steps,
            "restarts": spectrum.restarts, "max_bound": spectrum.max_bound, "converged": spectrum.converged,
            "max_bound_top": (spectrum.top_bounds / spectrum.top.abs()).max().item(),
            "max_bound_bottom": (spectrum.bottom_bounds / spectrum.bottom.abs()).max().item(),
            "nodes": spectrum.nodes.tolist(), "weights": spectrum.weights.tolist()}


def spectra(model, dataset, table, *, weight_decays=(0.0, STRONG.weight_decay), batch_size=BATCH_SIZE,
            fraction=FRACTION, k=K, tol=TOL, max_steps=MAX_STEPS, basis=BASIS, convention="squared", mixup_fn=None,
            dtype=torch.float32, seed=0, progress=True):
    """Eigenvalues of every mini-batch for each loss NLL + wd x L2 of `weight_decays`, one row per (weight decay,
    batch) in `table` (a `helpers.sweep.Table` keyed by weight_decay and batch; see `spectrum_row`). Finished
    units are skipped on rerun, and under `torchrun` each rank takes its share; returns the rows of these units.

    Under "squared" a batch's losses share one Lanczos run (`losses_eigenvalues`): the batch is the unit of work
    (a rank takes whole batches), and a batch with any loss unfinished is run for all of them. So a loss's row
    depends on the other losses of the definition, within the certified bounds (and in its step count).

    `dataset` carries the training transform (e.g. `STRONG.train_transform()`); `mixup_fn` e.g.
    `STRONG.mixup_fn(100)`. Batch b's images, augmentation and Lanczos start depend only on (`seed`, b).
    """
    batches = batch_indices(dataset, batch_size=batch_size, fraction=fraction, seed=seed)
    units = [{"weight_decay": wd, "batch": b} for wd in weight_decays for b in range(len(batches))]
    shared = convention == "squared"
    work = [[unit for unit in units if unit["batch"] == b] for b in range(len(batches))] if shared else [
        [unit] for unit in units]  # the units of one Lanczos run
    done, rows = table.done(), {}
    todo = [unit for group in work[table.rank.rank::table.rank.world_size] for unit in group
            if table.unit_key(unit) not in done]

    def compute(unit):
        if table.unit_key(unit) not in rows:  # the first unit of its run: every loss of the run at once
            b = unit["batch"]
            losses = weight_decays if shared else [unit["weight_decay"]]
            inputs, targets = augmented_batch(dataset, batches[b], mixup_fn=mixup_fn, seed=seed * 100_003 + b)
            found = losses_eigenvalues(model, inputs, targets, weight_decays=losses, convention=convention, k=k,
                                       tol=tol, max_steps=max_steps, basis=basis, dtype=dtype,
                                       generator=torch.Generator().manual_seed(seed * 100_003 + b))
            for wd, spectrum in zip(losses, found):
                key = {"weight_decay": wd, "batch": b}
                rows[table.unit_key(key)] = {**key, **spectrum_row(spectrum)}
        return rows.pop(table.unit_key(unit))

    fill(table, units, compute, todo=todo, desc=f"Hessian {table.folder.name}", progress=progress)
    return table.frame(units)


# The experiment: the notebook and `python -m helpers.hessian` both call `run`

@dataclass
class Config(Pretrained):
    """Fig. 1c and Fig. 4: Hessian eigenvalue spectra of every model, for each loss."""
    weight_decays: list[float] = setting([0.0, STRONG.weight_decay], "the losses, NLL + weight decay x L2 (0: NLL "
                                         "alone); each is a panel (one Lanczos run serves them all, so they "
                                         "are part of the definition)")
    convention: str = setting("squared", "L2: the textbook (wd/2)|w|^2, or the authors' landscape wd sum|w|",
                              choices=("squared", "norm_sum"))
    images: int | None = setting(None, "training images, the first of a seeded shuffle (None: all 50,000)", smoke=8,
                                 check=positive)
    batch_size: int = setting(BATCH_SIZE, "images per mini-batch", smoke=2, check=positive)
    fraction: float = setting(FRACTION, "share of the training images in mini-batches (the paper: a tenth)",
                              check=lambda f: None if 0 < f <= 1 else "must be in (0, 1]")
    k: int = setting(K, "eigenvalues of largest magnitude per batch (the paper's top-5), and at each end",
                     smoke=2, check=positive)
    tol: float = setting(TOL, "a Ritz value is certified when its residual bound is at most tol x its magnitude",
                         check=lambda t: None if t > 0 else "must be positive")
    max_steps: int = setting(MAX_STEPS, "Lanczos steps (Hessian-vector products) at most", smoke=4, check=positive)
    basis: int = setting(BASIS, "Lanczos vectors held at most, thick restart beyond (memory: about (basis + 2) x "
                         "parameters numbers, see hessian.memory)", check=positive)
    float64: bool = setting(False, "Lanczos in float64 (twice the memory)")
    seed: int = setting(0, "draws the mini-batches, their augmentation and the Lanczos starts")

    def __post_init__(self):
        super().__post_init__()
        if self.max_steps < self.k:
            raise ValueError(f"max_steps={self.max_steps}: Lanczos needs at least k={self.k} steps for k eigenvalues")
        losses = len(self.weight_decays) if self.convention == "squared" else 1  # squared: one run for all losses
        if self.basis < smallest_basis(self.k, losses):
            raise ValueError(too_small(self.basis, self.k, losses))


def run(config, *, progress=True):
    """Every model's spectra for every loss of `config`: this rank's unfinished units computed and stored; returns
    one `experiment.Outcome` per model."""
    config = config.resolved()
    device, outcomes = pick_device(), []
    for name in config.names():
        spec = config.spec(name)
        if spec.imagenet:
            raise ValueError(f"{spec.name} classifies ImageNet's 1,000 classes: the Hessian is of the CIFAR-100 "
                             "training loss; give a CIFAR model (a registry name, timm:NAME or your own file).")
        model = config.pretrained(name, device)
        spec = spec.sized(model)  # the training images at this model's input size and normalisation
        dataset = data.training_set(config, STRONG.train_transform("cifar100", spec), spec=spec)
        units = [{"weight_decay": wd, "batch": b} for wd in config.weight_decays for b in range(len(
            batch_indices(dataset, batch_size=config.batch_size, fraction=config.fraction, seed=config.seed)))]
        table = experiment.table(config, "hessian", spec.slug, ("weight_decay", "batch"),
                                 data=data.fingerprint(dataset), weights=experiment.weights_digest(model))
        spectra(model, dataset, table, weight_decays=config.weight_decays, batch_size=config.batch_size,
                fraction=config.fraction, k=config.k, tol=config.tol, max_steps=config.max_steps, basis=config.basis,
                convention=config.convention, mixup_fn=STRONG.mixup_fn(data.NUM_CLASSES["cifar100"]),
                dtype=torch.float64 if config.float64 else torch.float32, seed=config.seed, progress=progress)
        outcomes.append(experiment.Outcome(name, table, units, provenance.facts(model, table, spec)))
        del model
    return outcomes


def results(outcome):
    """The stored rows of one model (`run`'s outcome) as a DataFrame, lists as arrays, in unit order, with the
    outcome's facts (`msa`, `data`, `settings`) in every row."""
    frame = outcome.table.frame(outcome.units)
    for column in ("magnitude", "bounds", "top", "bottom", "nodes", "weights"):
        if column in frame:
            frame[column] = [np.asarray(values, dtype=float) for values in frame[column]]
    return frame.assign(model=outcome.name, **outcome.facts)


def main(argv=None):
    return experiment.main(Config, run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
