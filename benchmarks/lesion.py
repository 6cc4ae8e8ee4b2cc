"""Cost of a lesion sweep per removed block, as a ratio to one bare evaluation pass (goal: at most 1.05).

A sweep's unit, `lesion.lesion_metrics(model, batches, lesion=block)`, runs the block sequence with one block
replaced by its shortcut over every batch and accumulates accuracy and NLL. The baseline is the bare intact
`model(images)` over the same batches (eval mode, no autograd), with no metrics. For every removable block, in the
same process, the bare pass and the unit are timed back to back, in alternating order, so a change in machine
load touches both alike. Printed: the whole sweep's time / (number of units x bare pass), summed over the pairs,
and the median and largest per-unit ratio.

    python benchmarks/lesion.py                                    # CPU, 1 thread: ResNet-18 and ViT-Ti
    python benchmarks/lesion.py --device cuda --batch-size 500 --batches 20 --models resnet_50 alternet_50 vit_ti
"""
import argparse
import statistics

import torch

from helpers import lesion, models
from timing import add_device_options, device_of, timed


@torch.no_grad()
def bare_pass(model, batches):
    for images, _ in batches:
        model(images)


def benchmark(model, batches, *, warm_up):
    """(sweep seconds, bare seconds summed over the units, per-unit ratios)."""
    device = batches[0][0].device
    units = [unit["block"] for unit in lesion.lesions(model)]
    for _ in range(warm_up):
        bare_pass(model, batches)
        lesion.lesion_metrics(model, batches, lesion=units[0])
    sweep, bare, ratios = 0.0, 0.0, []
    for i, unit in enumerate(units):
        functions = {"bare": lambda: bare_pass(model, batches),
                     "unit": lambda unit=unit: lesion.lesion_metrics(model, batches, lesion=unit)}
        order = ("bare", "unit") if i % 2 else ("unit", "bare")  # neither always runs first
        seconds = {what: timed(functions[what], device) for what in order}
        sweep, bare = sweep + seconds["unit"], bare + seconds["bare"]
        ratios.append(seconds["unit"] / seconds["bare"])
    return sweep, bare, ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_18", "vit_ti"], choices=models.NAMES)
    parser.add_argument("--batch-size", type=int, help="default: 16 on the CPU, 500 on a GPU")
    parser.add_argument("--batches", type=int, default=2, help="batches per evaluation pass")
    parser.add_argument("--warm-up", type=int, default=1, help="untimed bare and lesioned passes first")
    add_device_options(parser)
    args = parser.parse_args()
    device = device_of(args)
    batch_size = args.batch_size or (16 if device.type == "cpu" else 500)

    print(f"{args.batches} batches of {batch_size} images of 32 x 32 on {device} "
          f"({torch.get_num_threads()} CPU threads); goal: sweep / (units x bare pass) <= 1.05")
    for name in args.models:
        torch.manual_seed(0)
        model = models.create(name).eval().to(device)
        batches = [(torch.randn(batch_size, 3, 32, 32, device=device),
                    torch.randint(0, 100, (batch_size,), device=device)) for _ in range(args.batches)]
        sweep, bare, ratios = benchmark(model, batches, warm_up=args.warm_up)
        print(f"{name:<12} {len(ratios):3d} units   bare pass {bare / len(ratios) * 1e3:8.1f} ms   "
              f"sweep {sweep:7.2f} s   ratio {sweep / bare:.3f}   "
              f"per unit: median {statistics.median(ratios):.3f}, max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
