"""Top-5 Hessian eigenvalues: our Lanczos (helpers.hessian) against PyHessian's power iteration, same model and batch.

PyHessian (`pip install pyhessian`, 0.1, run with cuda=False) finds each eigenvalue by power iteration with
deflation (up to 100 iterations, relative tolerance 1e-3); we run one Lanczos with full reorthogonalisation.
Both use double-backward Hessian-vector products on the same loss (NLL, no L2: PyHessian has no penalty), model
in eval mode. The error of each is measured against the exact eigenvalues of the dense float64 Hessian.

    python benchmarks/hessian.py [--device cpu] [--width 8] [--batch-size 32] [--steps 40] [--repeats 3]
"""
import argparse
import time

import torch
import torch.nn as nn
from pyhessian import hessian as PyHessian
from torch.func import functional_call

from helpers import hessian
from helpers.losses import nll


def small_conv_net(width, classes=10):
    """A small CNN with BatchNorm whose Hessian fits in memory (a few thousand parameters)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, classes)).eval()


def exact_eigenvalues(model, inputs, targets):
    names, shapes = zip(*((name, p.shape) for name, p in model.named_parameters()))
    buffers = {name: b.double() if b.is_floating_point() else b for name, b in model.named_buffers()}

    def loss(w):
        pieces = torch.split(w, [shape.numel() for shape in shapes])
        parameters = {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return nll(functional_call(model, {**parameters, **buffers}, (inputs.double(),)), targets)

    w = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w)).flip(0)  # largest first


def timed(function, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=8, help="channels of the first conv layer")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="Lanczos steps")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs is reported")
    parser.add_argument("--no-exact", action="store_true", help="skip the dense Hessian (large models)")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = small_conv_net(args.width).to(device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.batch_size, 3, 16, 16, generator=generator).to(device)
    targets = torch.randint(0, 10, (args.batch_size,), generator=generator).to(device)
    parameters = sum(p.numel() for p in model.parameters())

    def ours():
        return hessian.eigenvalues(model, inputs, targets, k=5, steps=args.steps, weight_decay=0,
                                   generator=torch.Generator().manual_seed(1)).top

    def theirs():
        torch.manual_seed(1)
        computer = PyHessian(model, nll, data=(inputs, targets), cuda=device.type == "cuda")
        values, _ = computer.eigenvalues(top_n=5)
        model.zero_grad(set_to_none=True)  # PyHessian leaves graph-carrying .grad behind
        return torch.tensor(values)

    our_time, our_values = timed(ours, args.repeats)
    their_time, their_values = timed(theirs, args.repeats)
    print(f"model: small conv net, {parameters} parameters, batch {args.batch_size}, device {device}")
    print(f"ours (Lanczos, {args.steps} steps, float32): {our_time:.3f} s  top-5 {our_values.tolist()}")
    print(f"PyHessian (power iteration, top_n=5):   {their_time:.3f} s  top-5 {their_values.tolist()}")
    print(f"time ratio PyHessian / ours: {their_time / our_time:.1f}x")
    if not args.no_exact:
        exact = exact_eigenvalues(model.cpu(), inputs.cpu(), targets.cpu())[:5]
        for name, values in (("ours", our_values), ("PyHessian", their_values)):
            error = ((values.cpu().double() - exact).abs() / exact.abs()).max().item()
            print(f"max relative error of {name} against the exact top-5 {exact.tolist()}: {error:.2e}")


if __name__ == "__main__":
    main()
