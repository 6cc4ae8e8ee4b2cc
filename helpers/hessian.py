"""Fig. 1c and Fig. 4: Hessian eigenvalue spectra of NLL + L2 on augmented mini-batches.

For one mini-batch of the training set, with the training augmentation (crop, flip, RandAugment, then
Mixup/CutMix, as the authors measured) and BatchNorm in eval mode, the loss is
`nll(model(inputs), targets) + l2_penalty(parameters, weight_decay, convention)` over every trainable parameter.
The paper's statistic (the authors' "Hessian max eigenvalue spectrum", their issue #12) is, per batch, the top-5
eigenvalues as PyHessian's power iteration with deflation returns them: the 5 of largest MAGNITUDE, which may be
negative, pooled over batches into one density. We get them by Lanczos with full reorthogonalisation on the
Hessian-vector products, stopped once they are certified: each Ritz value theta_i of the tridiagonal T_m has the
residual bound |beta_m s_{m,i}|, an exact eigenvalue lies within it, and the run stops when every wanted bound
is at most tol·|theta_i| (`certified`). The bound is for the operator as computed; float32 products add their
own rounding, about 1e-6 relative on the tests' ViT, far below the default tol, and so do the float32 inner
products over millions of parameters, summed pairwise (`inner_products`). The same run gives, as our extra
panels, the k largest and the k smallest eigenvalues with their bounds (stopping does not wait for those), and
the nodes and weights (first components squared of T's eigenvectors) of a stochastic Lanczos quadrature (SLQ)
of the spectral density, one node per step; `spectral_density` broadens them with Gaussians.

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
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers import data, experiment
from helpers.common import evaluating, pick_device, seeded
from helpers.experiment import Pretrained, positive, setting
from helpers.losses import l2_penalty, nll
from helpers.recipes import STRONG
from helpers.sweep import fill

K = 5             # the k eigenvalues of largest magnitude (the paper's statistic), and k at each end of the spectrum
TOL = 1e-4        # a Ritz value is certified when its residual bound is at most TOL times its magnitude
MAX_STEPS = 128   # Lanczos steps at most; the basis holds MAX_STEPS x (number of parameters) numbers
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


def lanczos(operator, dim, *, k=K, tol=TOL, max_steps=MAX_STEPS, generator=None, device=None,
            dtype=torch.float32):
    """Lanczos coefficients `(alphas, betas)` (float64, m of each) of the symmetric `operator` from a random unit
    Rademacher vector, with full reorthogonalisation, stopped at the first step m where `certified(alphas, betas,
    k=k, tol=tol)`, or after `max_steps` (capped at `dim`). T_m is tridiagonal with diagonal `alphas` and
    off-diagonal `betas[:-1]`; `betas[-1]` is beta_m, the norm of the residual left after step m. `tol=0` runs
    exactly `max_steps` steps (a fixed-step quadrature).

    Memory: the basis holds max_steps x dim numbers of `dtype`, e.g. 128 x 23.7M (ResNet-50) in float32 = 12.1 GB,
    128 x 5.4M (ViT-Ti) = 2.8 GB. When the Krylov space is exhausted (beta ~ 0) the run restarts from a fresh
    random vector orthogonal to the basis, so that copies of a multiple eigenvalue are found; T is then block
    diagonal (that beta is stored as 0) and e1's SLQ weights stay in the first block.
    """
    steps = min(max_steps, dim)
    basis = torch.empty(steps, dim, device=device, dtype=dtype)
    alphas, betas = [], []
    vector = random_unit_vector(dim, generator, device, dtype)
    for j in range(steps):
        basis[j] = vector
        residual = operator(vector)
        alphas.append(inner_products(vector[None], residual).item())
        residual -= alphas[-1] * vector  # the three-term recurrence ...
        if j:
            residual -= betas[-1] * basis[j - 1]
        beta = orthogonalise(residual, basis[:j + 1])  # ... then against the whole basis, as rounding requires
        exhausted = beta <= 100 * torch.finfo(dtype).eps * max(max(map(abs, alphas)), max(betas, default=0), 1e-30)
        betas.append(0.0 if exhausted else beta)
        if j + 1 == steps or (tol > 0 and not exhausted and certified(alphas, betas, k=k, tol=tol)):
            break
        vector = fresh_vector(basis[:j + 1], generator) if exhausted else residual / beta
    return torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64)


def random_unit_vector(dim, generator, device, dtype):
    signs = torch.randint(0, 2, (dim,), generator=generator).to(device, dtype) * 2 - 1
    return signs / dim ** 0.5


def fresh_vector(basis, generator):
    """A random unit vector orthogonal to `basis`, to continue in the orthogonal complement of an invariant
    subspace; drawn again while it lies (numerically) in the span, as a Rademacher vector can exactly."""
    norm = 0.0
    while norm <= torch.finfo(basis.dtype).eps ** 0.5:
        vector = random_unit_vector(basis.shape[1], generator, basis.device, basis.dtype)
        norm = orthogonalise(vector, basis)
    return vector / norm


def orthogonalise(vector, basis):
    """Remove from `vector`, in place, its components along the orthonormal rows of `basis`; return its new norm.

    One classical Gram-Schmidt pass (two matrix-vector products), and a second only when the first removed most
    of the vector (norm below 1/sqrt(2) of what it was): then what rounding left of the first pass is no longer
    small against the remainder ("twice is enough", Kahan and Parlett).
    """
    before = norm(vector)
    for _ in range(2):
        vector.addmv_(basis.T, inner_products(basis, vector), alpha=-1)
        after = norm(vector)
        if after > before / 2 ** 0.5:
            break
        before = after
    return after


def inner_products(rows, vector):
    """rows @ vector, each sum over the dimension by torch's pairwise reduction: BLAS's dot and gemv, and torch's
    vector_norm on the CPU, sum in a running float32 total that absorbs the small terms following a large one. On a
    10M-dimensional diagonal operator with its outliers first, they put the certified eigenvalues 6e-3 off (the
    bound holds for the T computed, not for H); this, 1e-6."""
    return torch.stack([torch.sum(row * vector) for row in rows])


def norm(vector):
    return inner_products(vector[None], vector).sqrt().item()


def ritz(alphas, betas):
    """(Ritz values ascending, SLQ weights, residual bounds) of the Lanczos coefficients.

    The values are T_m's eigenvalues theta_i; the weights the squared first components of its eigenvectors s_i;
    the bound of theta_i is |beta_m s_{m,i}|, the norm of H y_i - theta_i y_i for its Ritz vector y_i, so some
    eigenvalue of H lies within it of theta_i.
    """
    tridiagonal = torch.diag(alphas) + torch.diag(betas[:-1], 1) + torch.diag(betas[:-1], -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    return values, vectors[0] ** 2, (betas[-1] * vectors[-1]).abs()


def by_magnitude(values, k):
    """Indices of the k `values` of largest magnitude, largest first: what power iteration with deflation finds."""
    return values.abs().argsort(descending=True, stable=True)[:k]


def certified(alphas, betas, *, k=K, tol=TOL):
    """Whether the k Ritz values of largest magnitude are certified: each one's bound is at most `tol` times its
    magnitude, and neither end of the current Krylov block (the part after the last restart) holds an
    uncertified Ritz value whose interval theta +- bound reaches the k-th magnitude, as an end still moving
    outwards to an eigenvalue of larger magnitude would.

    Like every single-vector Krylov method this cannot see an eigenvalue whose eigenvector is orthogonal to the
    Krylov space, nor the second copy of a multiple one before that space is exhausted.
    """
    alphas, betas = torch.as_tensor(alphas, dtype=torch.float64), torch.as_tensor(betas, dtype=torch.float64)
    values, _, bounds = ritz(alphas, betas)
    wanted = by_magnitude(values, k)
    if len(wanted) < k or (bounds[wanted] > tol * values[wanted].abs()).any():
        return False
    smallest_wanted = values[wanted].abs().min()
    restarts = (betas[:-1] == 0).nonzero()
    if len(restarts):
        block = restarts[-1].item() + 1
        values, _, bounds = ritz(alphas[block:], betas[block:])
    ends, end_bounds = values[[0, -1]], bounds[[0, -1]]
    reaching = (end_bounds > tol * ends.abs()) & (ends.abs() + end_bounds >= smallest_wanted)
    return not reaching.any()


@dataclass
class Spectrum:
    magnitude: torch.Tensor     # the k eigenvalues of largest magnitude, by decreasing |eigenvalue|: the paper's
    bounds: torch.Tensor        # ... statistic (PyHessian's top_n), and their residual bounds
    top: torch.Tensor           # the k largest eigenvalues, largest first, ...
    top_bounds: torch.Tensor    # ... and their bounds
    bottom: torch.Tensor        # the k smallest (most negative) eigenvalues, smallest first, ...
    bottom_bounds: torch.Tensor  # ... and their bounds
    nodes: torch.Tensor         # SLQ nodes: all Ritz values, ascending
    weights: torch.Tensor       # SLQ weights (sum to one)
    steps: int                  # Lanczos steps, i.e. Hessian-vector products
    max_bound: float            # the largest bound of `magnitude` relative to its value
    converged: bool             # `certified`: every value of `magnitude` is within tol of an eigenvalue
    loss: float                 # the loss whose Hessian this is

    @classmethod
    def of(cls, alphas, betas, *, k=K, tol=TOL, loss=float("nan")):
        """The spectrum that Lanczos coefficients give (see `lanczos`)."""
        nodes, weights, bounds = ritz(alphas, betas)
        wanted, top, bottom = by_magnitude(nodes, k), nodes.argsort(descending=True)[:k], nodes.argsort()[:k]
        return cls(magnitude=nodes[wanted], bounds=bounds[wanted], top=nodes[top], top_bounds=bounds[top],
                   bottom=nodes[bottom], bottom_bounds=bounds[bottom], nodes=nodes, weights=weights,
                   steps=len(alphas), max_bound=(bounds[wanted] / nodes[wanted].abs()).max().item(),
                   converged=certified(alphas, betas, k=k, tol=tol), loss=loss)


def eigenvalues(model, inputs, targets, *, k=K, tol=TOL, max_steps=MAX_STEPS, weight_decay=STRONG.weight_decay,
                convention="squared", dtype=torch.float32, generator=None):
    """The `Spectrum` of the Hessian of one mini-batch's loss (see the module docstring) by one Lanczos run that
    stops once each of the k Ritz values of largest magnitude has an exact eigenvalue within `tol` times its
    magnitude, or after `max_steps` with `converged` False. The basis holds max_steps x parameters numbers of
    `dtype`: 12.1 GB for ResNet-50 (23.7M parameters) in float32 at the default 128 steps."""
    if max_steps < k:
        raise ValueError(f"max_steps={max_steps} Lanczos steps cannot give k={k} eigenvalues; use max_steps >= k")
    device = next(model.parameters()).device
    with evaluating(model), math_attention():
        operator = HessianOperator(model, inputs.to(device), targets.to(device), weight_decay=weight_decay,
                                   convention=convention, dtype=dtype)
        alphas, betas = lanczos(operator, operator.dim, k=k, tol=tol, max_steps=max_steps, generator=generator,
                                device=device, dtype=dtype)
    return Spectrum.of(alphas, betas, k=k, tol=tol, loss=operator.loss.item())


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
    """One batch's stored row (without its unit key): the paper's statistic with its bounds, our extra panels'
    eigenvalues, the convergence, the SLQ nodes and weights."""
    return {"loss": spectrum.loss, "magnitude": spectrum.magnitude.tolist(), "bounds": spectrum.bounds.tolist(),
            "top": spectrum.top.tolist(), "bottom": spectrum.bottom.tolist(), "steps": spectrum.steps,
            "max_bound": spectrum.max_bound, "converged": spectrum.converged,
            "max_bound_top": (spectrum.top_bounds / spectrum.top.abs()).max().item(),
            "max_bound_bottom": (spectrum.bottom_bounds / spectrum.bottom.abs()).max().item(),
            "nodes": spectrum.nodes.tolist(), "weights": spectrum.weights.tolist()}


def spectra(model, dataset, table, *, weight_decays=(0.0, STRONG.weight_decay), batch_size=BATCH_SIZE,
            fraction=FRACTION, k=K, tol=TOL, max_steps=MAX_STEPS, convention="squared", mixup_fn=None,
            dtype=torch.float32, seed=0, progress=True):
    """Eigenvalues of every mini-batch for each loss NLL + wd x L2 of `weight_decays`, one row per (weight decay,
    batch) in `table` (a `helpers.sweep.Table` keyed by weight_decay and batch; see `spectrum_row`). Finished
    units are skipped on rerun, and under `torchrun` each rank takes its share; returns the rows of these units.

    `dataset` carries the training transform (e.g. `STRONG.train_transform()`); `mixup_fn` e.g.
    `STRONG.mixup_fn(100)`. Batch b's images, augmentation and Lanczos start depend only on (`seed`, b).
    """
    batches = batch_indices(dataset, batch_size=batch_size, fraction=fraction, seed=seed)
    units = [{"weight_decay": wd, "batch": b} for wd in weight_decays for b in range(len(batches))]

    def compute(unit):
        b = unit["batch"]
        inputs, targets = augmented_batch(dataset, batches[b], mixup_fn=mixup_fn, seed=seed * 100_003 + b)
        spectrum = eigenvalues(model, inputs, targets, k=k, tol=tol, max_steps=max_steps,
                               weight_decay=unit["weight_decay"], convention=convention, dtype=dtype,
                               generator=torch.Generator().manual_seed(seed * 100_003 + b))
        return {**unit, **spectrum_row(spectrum)}

    fill(table, units, compute, desc=f"Hessian {table.folder.name}", progress=progress)
    return table.frame(units)


# The experiment: the notebook and `python -m helpers.hessian` both call `run`

@dataclass
class Config(Pretrained):
    """Fig. 1c and Fig. 4: Hessian eigenvalue spectra of every model, for each loss."""
    weight_decays: list[float] = setting([0.0, STRONG.weight_decay], "the losses, NLL + weight decay x L2 (0: NLL "
                                         "alone); each is a panel", identity=False)
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
    max_steps: int = setting(MAX_STEPS, "Lanczos steps at most (memory: max_steps x parameters numbers)", smoke=4,
                             check=positive)
    float64: bool = setting(False, "Lanczos in float64 (twice the memory)")
    seed: int = setting(0, "draws the mini-batches, their augmentation and the Lanczos starts")

    def __post_init__(self):
        super().__post_init__()
        if self.max_steps < self.k:
            raise ValueError(f"max_steps={self.max_steps}: Lanczos needs at least k={self.k} steps for k eigenvalues")


def run(config, *, progress=True):
    """Every model's spectra for every loss of `config`: this rank's unfinished units computed and stored; returns
    one `experiment.Outcome` per model."""
    config = config.resolved()
    device, outcomes = pick_device(), []
    dataset = data.training_set(config, STRONG.train_transform("cifar100"))
    units = [{"weight_decay": wd, "batch": b} for wd in config.weight_decays for b in range(len(
        batch_indices(dataset, batch_size=config.batch_size, fraction=config.fraction, seed=config.seed)))]
    for name in config.models:
        model = config.pretrained(name, device)
        table = experiment.table(config, "hessian", name, ("weight_decay", "batch"), data=data.fingerprint(dataset),
                                 weights=experiment.weights_digest(model))
        spectra(model, dataset, table, weight_decays=config.weight_decays, batch_size=config.batch_size,
                fraction=config.fraction, k=config.k, tol=config.tol, max_steps=config.max_steps,
                convention=config.convention, mixup_fn=STRONG.mixup_fn(data.NUM_CLASSES["cifar100"]),
                dtype=torch.float64 if config.float64 else torch.float32, seed=config.seed, progress=progress)
        outcomes.append(experiment.Outcome(name, table, units))
        del model
    return outcomes


def results(outcome):
    """The stored rows of one model (`run`'s outcome) as a DataFrame, lists as arrays, in unit order."""
    frame = outcome.table.frame(outcome.units)
    for column in ("magnitude", "bounds", "top", "bottom", "nodes", "weights"):
        if column in frame:
            frame[column] = [np.asarray(values, dtype=float) for values in frame[column]]
    return frame.assign(model=outcome.name)


def main(argv=None):
    return experiment.main(Config, run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
