"""Time per landscape grid point, as a ratio to a bare eval pass over the same batches (goal: at most 1.05).

A grid point adds to the eval pass: moving the weights in place, the log-softmax NLL and accuracy, the L1/L2 norm
sums over all parameters and one appended row. A point's time is the time between two stored rows of one
`landscape` call, so one-off costs (the directions, the augmented batches, the set-up of each call) are left out,
as they are from a real sweep of 441 points. The per-point overhead is constant while the eval pass grows with the
data, so small CPU sizes overstate the ratio of the real run (50,000 images per point). Bare passes and sweeps
alternate, one of each per round, which goes first alternating too; the ratio is the median over rounds of (mean
time per point / the same round's bare pass).

    python benchmarks/landscape.py                                   # CPU, 1 thread: ResNet-18, 64 images, 4 points
    python benchmarks/landscape.py --model resnet_50 --images 9600 --batch-size 96 --device cuda
"""
import argparse
import statistics
import tempfile
import time

import torch

from helpers import data, landscape
from helpers.recipes import STRONG
from helpers.sweep import Table
from timing import add_device_options, device_of, model_of, parse_args, print_ratio, timed


class TimedTable(Table):
    """A landscape table that notes when each row is stored."""

    def __init__(self, folder):
        super().__init__(folder, ("x", "y"))
        self.stored = []

    def add(self, row):
        super().add(row)
        self.stored.append(time.perf_counter())


@torch.no_grad()
def bare_pass(model, batches):
    for images, _ in batches:
        model(images)


def seconds_per_point(model, batches, directions, points, exclude):
    """The mean time between consecutive rows of one `landscape` call over `points` (at least 2)."""
    with tempfile.TemporaryDirectory() as folder:
        table = TimedTable(folder)
        landscape.landscape(model, batches, table, points, directions, exclude=exclude, progress=False)
        return (table.stored[-1] - table.stored[0]) / (len(points) - 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_18", help="a model specification (helpers.models)")
    parser.add_argument("--images", type=int, default=64, help="images per grid point")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--points", type=int, default=4, help="grid points per sweep (at least 2)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of one bare pass and one sweep")
    add_device_options(parser)
    args = parse_args(parser, images=8, batch_size=4, points=2, repeats=1)
    device = device_of(args)

    model, spec = model_of(args.model, device)
    batches = landscape.augmented_batches(data.synthetic(args.images, spec=spec), batch_size=args.batch_size,
                                          mixup=STRONG.mixup_fn(100), device=device, progress=False)
    exclude = landscape.excluded_parameters(model)  # as `landscape.run` does
    directions = landscape.random_directions(model, exclude=exclude)
    points = landscape.grid_points(21)[:max(args.points, 2)]
    measurements = {"bare": lambda: timed(bare_pass, device, model, batches),
                    "grid": lambda: seconds_per_point(model, batches, directions, points, exclude)}
    for measure in measurements.values():  # warm-up
        measure()
    times = {name: [] for name in measurements}
    for round_ in range(args.repeats):
        for name in (["bare", "grid"] if round_ % 2 == 0 else ["grid", "bare"]):
            times[name].append(measurements[name]())
    bare, grid = times["bare"], times["grid"]
    ratio = statistics.median(g / b for g, b in zip(grid, bare))
    print(f"{args.model}, {args.images} images in batches of {args.batch_size} on {device} "
          f"({torch.get_num_threads()} CPU threads), median of {args.repeats} rounds: bare eval pass "
          f"{statistics.median(bare) * 1e3:.1f} ms, grid point {statistics.median(grid) * 1e3:.1f} ms")
    print_ratio(f"{args.model} grid point / eval pass, {args.images} images", ratio, "<= 1.05")


if __name__ == "__main__":
    main()
