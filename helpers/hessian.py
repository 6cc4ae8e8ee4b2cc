"""Fig. 1b, 3b and 4: Hessian eigenvalue spectra of NLL + L2 on augmented mini-batches.

For one mini-batch of the training set, with the training augmentation (crop, flip, RandAugment, then
Mixup/CutMix, as the authors measured) and BatchNorm in eval mode, the loss is
`nll(model(inputs), targets) + l2_penalty(parameters, weight_decay, convention)` over every trainable parameter.
Lanczos with full reorthogonalisation on its Hessian-vector products gives a tridiagonal matrix T whose
eigenvalues (Ritz values) approximate the k largest and the k most negative Hessian eigenvalues, and whose
eigenvectors' first components squared are the weights of a stochastic Lanczos quadrature (SLQ) of the spectral
density; `spectral_density` broadens those nodes with Gaussians. One Lanczos run per batch gives all three.

L2 conventions (helpers.losses): "squared" is the textbook (wd/2)·‖w‖², whose Hessian is the NLL Hessian plus
wd·I, so every eigenvalue shifts by wd. "norm_sum" is the authors' landscape convention wd·Σ‖w‖ (unsquared
norms per tensor); its Hessian per tensor is wd·(I - ŵŵᵀ)/‖w‖, which grows like wd/‖w‖ for tensors of small
norm. At an exactly-zero tensor (timm zero-initialises biases) ‖w‖ has a kink, not a curvature: it is linear
along every ray from 0, so we take its Hessian there as zero and leave such tensors out of the penalty
(autograd would give NaN).

timm's attention calls fused scaled-dot-product kernels that have no double backward on CPU; the math kernel
is forced for the duration of a computation (`math_attention`), then the previous choice is restored.
"""
import argparse
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from helpers.common import evaluating, seeded
from helpers.losses import l2_penalty, nll
from helpers.recipes import STRONG
from helpers.sweep import Sweep

K = 5           # eigenvalues kept at each end of the spectrum
STEPS = 64      # Lanczos steps: the basis holds STEPS x (number of parameters) numbers
BATCH_SIZE = 16  # small mini-batches ...
FRACTION = 0.1  # ... over about a tenth of the training set, as in the paper


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


def lanczos(operator, dim, *, steps=STEPS, generator=None, device=None, dtype=torch.float32):
    """The tridiagonal matrix T (steps x steps, float64) of Lanczos on the symmetric `operator` from a random
    unit Rademacher vector, with full reorthogonalisation (Gram-Schmidt twice against the whole basis).

    When the Krylov space is exhausted (beta ~ 0) the run restarts from a fresh random vector orthogonal to the
    basis, so eigenvalues of any multiplicity are found; T is then block diagonal and e1's weights stay in the
    first block. `steps` is capped at `dim`.
    """
    steps = min(steps, dim)
    basis = torch.zeros(steps, dim, device=device, dtype=dtype)
    alphas, betas = torch.zeros(steps, dtype=torch.float64), torch.zeros(max(steps - 1, 0), dtype=torch.float64)

    def random_vector():
        signs = torch.randint(0, 2, (dim,), generator=generator).to(device, dtype) * 2 - 1
        return signs / dim ** 0.5

    vector = random_vector()
    for j in range(steps):
        basis[j] = vector
        product = operator(vector)
        alphas[j] = torch.dot(product, vector).item()
        for _ in range(2):  # "twice is enough": the second pass removes what rounding left of the first
            product = product - basis[:j + 1].T @ (basis[:j + 1] @ product)
        if j + 1 == steps:
            break
        beta = torch.linalg.vector_norm(product).item()
        scale = max(alphas[:j + 1].abs().max().item(), betas[:j].max().item() if j else 0.0, 1e-30)
        if beta > 100 * torch.finfo(dtype).eps * scale:
            betas[j], vector = beta, product / beta
        else:  # invariant subspace found: continue in its orthogonal complement
            vector = random_vector()
            for _ in range(2):
                vector = vector - basis[:j + 1].T @ (basis[:j + 1] @ vector)
            vector = vector / torch.linalg.vector_norm(vector)
    return torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)


@dataclass
class Spectrum:
    top: torch.Tensor       # the k largest eigenvalues, largest first
    bottom: torch.Tensor    # the k most negative (smallest) eigenvalues, smallest first
    nodes: torch.Tensor     # SLQ nodes: all Ritz values, ascending
    weights: torch.Tensor   # SLQ weights (sum to one)
    loss: float             # the loss whose Hessian this is


def ritz(tridiagonal):
    """(Ritz values ascending, SLQ weights): T's eigenvalues and the squared first components of its eigenvectors."""
    values, vectors = torch.linalg.eigh(tridiagonal)
    return values, vectors[0] ** 2


def eigenvalues(model, inputs, targets, *, k=K, steps=STEPS, weight_decay=STRONG.weight_decay,
                convention="squared", dtype=torch.float32, generator=None):
    """The `Spectrum` of the Hessian of one mini-batch's loss (see the module docstring) by one Lanczos run."""
    if steps < k:
        raise ValueError(f"steps={steps} Lanczos steps cannot give k={k} eigenvalues; use steps >= k (64 is typical)")
    device = next(model.parameters()).device
    with evaluating(model), math_attention():
        operator = HessianOperator(model, inputs.to(device), targets.to(device), weight_decay=weight_decay,
                                   convention=convention, dtype=dtype)
        nodes, weights = ritz(lanczos(operator, operator.dim, steps=steps, generator=generator, device=device,
                                      dtype=dtype))
    return Spectrum(top=nodes.flip(0)[:k], bottom=nodes[:k], nodes=nodes, weights=weights, loss=operator.loss.item())


def spectral_density(nodes, weights, grid, *, sigma):
    """SLQ density on `grid`: sum_j w_j N(grid; node_j, sigma^2), averaged over the runs when `nodes` and
    `weights` are lists (one entry per run/batch). Integrates to one over a grid wide enough for the Gaussians."""
    if isinstance(nodes, torch.Tensor):
        nodes, weights = [nodes], [weights]
    grid = torch.as_tensor(grid, dtype=torch.float64)
    density = torch.zeros_like(grid)
    for run_nodes, run_weights in zip(nodes, weights):
        run_nodes, run_weights = torch.as_tensor(run_nodes).double(), torch.as_tensor(run_weights).double()
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


def spectra(model, dataset, path, *, batch_size=BATCH_SIZE, fraction=FRACTION, k=K, steps=STEPS,
            weight_decay=STRONG.weight_decay, convention="squared", mixup_fn=None, dtype=torch.float32, seed=0,
            progress=True):
    """Eigenvalues of every mini-batch, one CSV row per batch at `path`: columns `batch`, `loss`, `top_1..k`,
    `bottom_1..k`, and the SLQ `nodes` and `weights` (space-separated). Finished batches are skipped on rerun,
    and under `torchrun` each rank takes its share; returns the whole table (all ranks' finished rows).

    `dataset` carries the training transform (e.g. `STRONG.train_transform()`); `mixup_fn` e.g.
    `STRONG.mixup_fn(100)`. Batch b's images, augmentation and Lanczos start depend only on (`seed`, b).
    """
    sweep = Sweep(path, ["batch"])
    batches = batch_indices(dataset, batch_size=batch_size, fraction=fraction, seed=seed)
    units = [{"batch": b} for b in range(len(batches))]
    for unit in tqdm(sweep.todo(units), desc=f"Hessian batches ({path})", disable=not progress):
        b = unit["batch"]
        inputs, targets = augmented_batch(dataset, batches[b], mixup_fn=mixup_fn, seed=seed * 100_003 + b)
        spectrum = eigenvalues(model, inputs, targets, k=k, steps=steps, weight_decay=weight_decay,
                               convention=convention, dtype=dtype,
                               generator=torch.Generator().manual_seed(seed * 100_003 + b))
        sweep.add({"batch": b, "loss": spectrum.loss,
                   **{f"top_{i + 1}": value.item() for i, value in enumerate(spectrum.top)},
                   **{f"bottom_{i + 1}": value.item() for i, value in enumerate(spectrum.bottom)},
                   "nodes": " ".join(repr(x) for x in spectrum.nodes.tolist()),
                   "weights": " ".join(repr(x) for x in spectrum.weights.tolist())})
    return table(path)


def table(path):
    """The rows of a `spectra` CSV as a DataFrame sorted by batch, with `nodes` and `weights` as float arrays."""
    frame = pd.DataFrame(Sweep(path, ["batch"]).rows())
    if frame.empty:
        return frame
    for column in frame.columns.drop(["nodes", "weights"]):
        frame[column] = pd.to_numeric(frame[column])
    for column in ("nodes", "weights"):
        frame[column] = [np.array(text.split(), dtype=float) for text in frame[column]]
    return frame.sort_values("batch", ignore_index=True)


def main(argv=None):
    """`[torchrun --nproc-per-node N] python -m helpers.hessian --model vit_ti`: fill the CSV of one model."""
    from helpers import checkpoints, data, pick_device

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", default=None, help="a checkpoint file instead of the official weights")
    parser.add_argument("--output", default=None, help="CSV path (default results/hessian_MODEL_CONVENTION.csv)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--checkpoint-root", default="checkpoints")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--fraction", type=float, default=FRACTION)
    parser.add_argument("--k", type=int, default=K)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--weight-decay", type=float, default=STRONG.weight_decay)
    parser.add_argument("--convention", choices=["squared", "norm_sum"], default="squared")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="fresh weights, synthetic data")
    args = parser.parse_args(argv)
    device = pick_device()
    model = checkpoints.pretrained(args.model, root=args.checkpoint_root, path=args.checkpoint, smoke=args.smoke,
                                   map_location=device)
    dataset = (data.synthetic(4 * args.batch_size) if args.smoke else
               data.dataset("cifar100", args.data_root, train=True, transform=STRONG.train_transform("cifar100")))
    output = args.output or f"results/hessian_{args.model}_{args.convention}.csv"
    spectra(model, dataset, output, batch_size=args.batch_size, fraction=args.fraction, k=args.k, steps=args.steps,
            weight_decay=args.weight_decay, convention=args.convention, mixup_fn=STRONG.mixup_fn(100),
            dtype=torch.float64 if args.float64 else torch.float32)


if __name__ == "__main__":
    main()
