"""Time per landscape grid point, as a ratio to a bare eval pass over the same batches (goal: at most 1.05).

A grid point adds to the eval pass: moving the weights in place, the log-softmax NLL and accuracy, the L1/L2 norm
sums over all parameters and one appended CSV row. One-off costs (the directions, the augmented batches) are
left out. The per-point overhead is constant while the eval pass grows with the data, so small CPU sizes
overstate the ratio of the real run (50,000 images per point).

    python benchmarks/landscape.py                                   # small, CPU-friendly
    python benchmarks/landscape.py --model resnet_50 --images 9600 --batch-size 96 --device cuda
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

import helpers
from helpers import data, landscape, models
from helpers.recipes import STRONG
from timing import synchronize


@torch.no_grad()
def bare_pass(model, batches, device):
    start = time.perf_counter()
    for images, _ in batches:
        model(images)
    synchronize(device)
    return time.perf_counter() - start


def grid_pass(model, batches, directions, points, device):
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        landscape.landscape(model, batches, path=Path(folder) / "grid.csv", points=points, directions=directions,
                            progress=False)
        synchronize(device)
        return (time.perf_counter() - start) / len(points)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_18")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--points", type=int, default=4, help="grid points timed per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: CUDA, then MPS, then CPU")
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else helpers.pick_device()

    model = models.create(args.model).to(device).eval()
    batches = landscape.augmented_batches(data.synthetic(args.images), batch_size=args.batch_size,
                                          mixup=STRONG.mixup_fn(100), device=device, progress=False)
    directions = landscape.random_directions(model)
    points = landscape.grid_points(21)[:args.points]
    bare_pass(model, batches, device)  # warm-up
    grid_pass(model, batches, directions, points[:1], device)
    bare, grid = [], []
    for _ in range(args.repeats):  # interleaved, so that a load change hits both alike
        bare.append(bare_pass(model, batches, device))
        grid.append(grid_pass(model, batches, directions, points, device))
    print(f"{args.model}, {args.images} images in batches of {args.batch_size} on {device}: "
          f"bare eval pass {min(bare) * 1e3:.1f} ms, grid point {min(grid) * 1e3:.1f} ms, "
          f"ratio {min(grid) / min(bare):.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
