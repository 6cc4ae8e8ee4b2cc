"""Time per landscape grid point, as a ratio to a bare eval pass over the same images (goal: at most 1.02 at the
published grids' sample, 4,992 images per point).

A grid point adds to the eval pass: moving the weights in place, the log-softmax NLL and accuracy of each batch, the
L1/L2 norm sums over all parameters and one stored row. Most of that is a fixed cost per point, so its share
shrinks as the sample grows: the ratio a user waits for is the one at the figure's sample, `published.SAMPLE`
(52 batches of 96, the size behind the authors' published grids; the figure's default, all 50,000, is larger still).
On a CPU an eval pass of ResNet-50 over 4,992 images takes minutes, and next to a pass of seconds the fixed cost is
below the noise of a shared machine, so the script measures, per model:

- the overhead of a grid point: the time between two stored rows of one `landscape` call (so one-off costs, such as
  the directions and the augmented batches, are left out, as in a sweep of 441 points) with the model's forward
  replaced by a lookup of ready logits: all that a point adds to the eval pass (the weight moves, the per-batch
  metrics, the norms, the stored row), at `--images` (64) and at `--sample` (4,992) images;
- the bare eval pass at `--images`, and over the figure's sample from a bare pass over one batch of
  `--sample-batch-size` (96) images: the pass is that batch's forward `--sample / --sample-batch-size` times;
- as a check, a real grid point at `--images` (the forward included), which should be the pass plus the overhead.

Each ratio is (pass + overhead) / pass. The measurements alternate, one of each per round, and each is the median
over rounds; times are `timing.clock`'s (on a CPU with one thread, the thread's CPU time).

    python benchmarks/landscape.py                       # CPU, 1 thread: ResNet-50 and ViT-Ti (the figure's)
    python benchmarks/landscape.py --models resnet_50 --images 9600 --batch-size 96 --device cuda
"""
import argparse
import statistics
import tempfile

import torch

from helpers import data, landscape, published
from helpers.recipes import STRONG
from helpers.sweep import Table
from timing import add_device_options, clock, device_of, model_of, parse_args, print_ratio, timed


class TimedTable(Table):
    """A landscape table that notes when each row is stored."""

    def __init__(self, folder, now):
        super().__init__(folder, ("x", "y"))
        self.now, self.stored = now, []

    def add(self, row):
        super().add(row)
        self.stored.append(self.now())


@torch.no_grad()
def bare_pass(model, batches):
    for images, _ in batches:
        model(images)


def seconds_per_point(model, batches, directions, points, exclude, now) -> float:
    """The mean time between consecutive rows of one `landscape` call over `points` (at least 2)."""
    with tempfile.TemporaryDirectory() as folder:
        table = TimedTable(folder, now)
        landscape.landscape(model, batches, table, points, directions, exclude=exclude, progress=False)
        return (table.stored[-1] - table.stored[0]) / (len(points) - 1)


def without_forward(model, batches, directions, points, exclude, now) -> float:
    """`seconds_per_point` with the model's forward replaced by ready logits (random, of 100 classes): what a grid
    point costs beside its forward passes. `batches` hold the images' count only."""
    logits = torch.randn(max(len(images) for images, _ in batches), 100, device=next(model.parameters()).device)
    model.forward = lambda images: logits[:len(images)]  # an instance attribute, deleted below: the model's own again
    try:
        return seconds_per_point(model, batches, directions, points, exclude, now)
    finally:
        del model.forward


def figure_sample(spec, device, args) -> tuple[list, list, int]:
    """(stand-in batches of the figure's sample for `without_forward`, one real batch of its batch size)."""
    batch = landscape.augmented_batches(data.synthetic(args.sample_batch_size, spec=spec), batch_size=
                                        args.sample_batch_size, mixup=STRONG.mixup_fn(100), device=device,
                                        progress=False)
    count = args.sample // args.sample_batch_size
    images, targets = batch[0]
    return [(images[:, :0, 0, 0], targets)] * count, batch, count  # B, 0 stand-ins: no pixels are read


def measure(name: str, device, args) -> dict[str, float]:
    """{measurement: median seconds} of one model (see the module docstring)."""
    model, spec = model_of(name, device)
    now = clock(device)
    small = landscape.augmented_batches(data.synthetic(args.images, spec=spec), batch_size=args.batch_size,
                                        mixup=STRONG.mixup_fn(100), device=device, progress=False)
    stand_ins, one_batch, count = figure_sample(spec, device, args)
    exclude = landscape.excluded_parameters(model)  # as `landscape.run` does
    directions = landscape.random_directions(model, exclude=exclude)
    points = landscape.grid_points(21)[:max(args.points, 2)]
    measurements = {
        "bare": lambda: timed(bare_pass, device, model, small, steady=True),
        "overhead": lambda: without_forward(model, small, directions, points, exclude, now),
        "sample overhead": lambda: without_forward(model, stand_ins, directions, points, exclude, now),
        "sample pass": lambda: count * timed(bare_pass, device, model, one_batch, steady=True),
        "grid": lambda: seconds_per_point(model, small, directions, points, exclude, now),
    }
    for what in ("bare", "overhead", "sample pass"):  # warm-up
        measurements[what]()
    times = {what: [] for what in measurements}
    names = list(measurements)
    for round_ in range(args.repeats):
        shift = round_ % len(names)
        for what in names[shift:] + names[:shift]:
            times[what].append(measurements[what]())
    return {what: statistics.median(t) for what, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_50", "vit_ti"], help="model specifications")
    parser.add_argument("--images", type=int, default=64, help="images per grid point of the measured sweep")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--points", type=int, default=2, help="grid points per sweep (at least 2)")
    parser.add_argument("--sample", type=int, default=published.SAMPLE, help="the figure's images per point")
    parser.add_argument("--sample-batch-size", type=int, default=STRONG.batch_size, help="the figure's batch size")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of alternating measurements")
    add_device_options(parser)
    args = parse_args(parser, models=["resnet_18"], images=8, batch_size=4, points=2, sample=16, sample_batch_size=4,
                      repeats=1)
    device = device_of(args)

    ratios = {}
    for name in args.models:
        t = measure(name, device, args)
        print(f"{name} on {device} ({torch.get_num_threads()} CPU threads), medians of {args.repeats} rounds of "
              f"{clock(device).__name__}:\n"
              f"  {args.images} images in batches of {args.batch_size}: bare eval pass {t['bare'] * 1e3:.1f} ms, "
              f"per-point overhead {t['overhead'] * 1e3:.1f} ms (check: a grid point takes {t['grid'] * 1e3:.1f} ms, "
              f"the pass plus the overhead {(t['bare'] + t['overhead']) * 1e3:.1f} ms)\n"
              f"  {args.sample} images in batches of {args.sample_batch_size}: eval pass {t['sample pass']:.1f} s, "
              f"per-point overhead {t['sample overhead'] * 1e3:.1f} ms", flush=True)
        ratios[f"{name} grid point / eval pass, {args.images} images"] = ((t["bare"] + t["overhead"]) / t["bare"],
                                                                           None)
        ratios[f"{name} grid point / eval pass, {args.sample} images"] = (
            (t["sample pass"] + t["sample overhead"]) / t["sample pass"], "<= 1.02")
    for what, (value, goal) in ratios.items():
        print_ratio(what, value, goal)


if __name__ == "__main__":
    main()
