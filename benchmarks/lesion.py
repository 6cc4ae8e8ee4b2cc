"""Cost of a lesion sweep per removed block, as a ratio to one bare evaluation pass (goal: at most 1.05).

A sweep's unit, `lesion.lesion_metrics(blocks, batches, lesion=block)`, runs the model with one block's residual
branch zeroed (a hook) over every batch and accumulates accuracy and NLL; as in `lesion.run`, the model is split
once (`split(model)`: a probe pass) and every unit reuses its blocks. The baseline is the bare intact
`model(images)` over the same batches (eval mode, no autograd), with no metrics. For every removable block, in the
same process, the bare pass and the unit are timed back to back, in alternating order, so a change in machine
load touches both alike. Printed: the whole sweep's time / (number of units x bare pass), summed over the pairs,
and the median and largest per-unit ratio.

Any model specifications (`helpers.models`), on synthetic images of each one's input size.

    python benchmarks/lesion.py                                    # CPU, 1 thread: ResNet-18 and ViT-Ti
    python benchmarks/lesion.py --device cuda --batch-size 500 --batches 20 --models resnet_50 alternet_50 vit_ti
"""
import argparse
import statistics

import torch

from helpers import lesion
from helpers.blocks import split
from timing import add_device_options, device_of, model_of, parse_args, print_ratio, synthetic_batch, timed


@torch.no_grad()
def bare_pass(model, batches):
    for images, _ in batches:
        model(images)


def benchmark(model, batches, *, warm_up):
    """(sweep seconds, bare seconds summed over the units, per-unit ratios)."""
    device = batches[0][0].device
    blocks = split(model)
    units = [unit["block"] for unit in lesion.lesions(blocks)]
    for _ in range(warm_up):
        bare_pass(model, batches)
        lesion.lesion_metrics(blocks, batches, lesion=units[0])
    sweep, bare, ratios = 0.0, 0.0, []
    for i, unit in enumerate(units):
        functions = {"bare": lambda: bare_pass(model, batches),
                     "unit": lambda unit=unit: lesion.lesion_metrics(blocks, batches, lesion=unit)}
        order = ("bare", "unit") if i % 2 else ("unit", "bare")  # neither always runs first
        seconds = {what: timed(functions[what], device) for what in order}
        sweep, bare = sweep + seconds["unit"], bare + seconds["bare"]
        ratios.append(seconds["unit"] / seconds["bare"])
    return sweep, bare, ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_18", "vit_ti"], help="model specifications")
    parser.add_argument("--batch-size", type=int, help="default: 16 on the CPU, 500 on a GPU")
    parser.add_argument("--batches", type=int, default=2, help="batches per evaluation pass")
    parser.add_argument("--warm-up", type=int, default=1, help="untimed bare and lesioned passes first")
    add_device_options(parser)
    args = parse_args(parser, models=["resnet_18", "vit_ti(depth=1)"], batch_size=2, batches=1, warm_up=0)
    device = device_of(args)
    batch_size = args.batch_size or (16 if device.type == "cpu" else 500)

    print(f"{args.batches} batches of {batch_size} images on {device} "
          f"({torch.get_num_threads()} CPU threads); goal: sweep / (units x bare pass) <= 1.05")
    totals, width = {}, max(map(len, args.models))
    for name in args.models:
        model, spec = model_of(name, device)
        images, labels = synthetic_batch(spec, batch_size * args.batches, device)
        batches = list(zip(images.split(batch_size), labels.split(batch_size)))
        sweep, bare, ratios = benchmark(model, batches, warm_up=args.warm_up)
        totals[name] = sweep / bare
        print(f"{name:<{width}} {len(ratios):3d} units   bare pass {bare / len(ratios) * 1e3:8.1f} ms   "
              f"sweep {sweep:7.2f} s   ratio {sweep / bare:.3f}   "
              f"per unit: median {statistics.median(ratios):.3f}, max {max(ratios):.3f}")
    for name, ratio in totals.items():
        print_ratio(f"{name} sweep / (units x bare pass)", ratio, "<= 1.05")


if __name__ == "__main__":
    main()
