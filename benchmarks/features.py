"""Cost of every block's statistics (Fig. 2a, Fig. 8, Fig. 9), as a ratio to a bare forward pass (goal: at most 1.1
for each statistic, 1.2 for both).

For each model, on one batch, in eval mode without autograd, in the same process: the bare `model(x)`, then
`split(model).features(x)` (every block's output, one pass) and `.feature_maps(x)` (the same as `B, C, H, W`
maps), and what the notebooks pay per batch: `fourier.spectra` (the diagonal of each block's spectrum),
`variance.variances` (one variance per block) and both from one pass (`featuremaps.diagonal_and_variance`, what
diagnose.ipynb computes; its goal is the two statistics' budgets of 0.1 each, in one pass instead of two). The
measurements alternate in a rotating order, one of each per round, so that a change in machine load touches all
alike; each ratio is the median over rounds of (time / the same round's forward pass), each time the median over
rounds. Times are `timing.clock`'s: on a CPU with one thread (the default), the thread's CPU
time, which other processes on a shared machine disturb far less than the wall clock; else wall time.

Any model specification works (`helpers.models`); the default adds two timm ImageNet models at their own 224 x 224
input, a ViT and a ConvNeXt, with fresh weights (no download).

    python benchmarks/features.py                      # CPU, 1 thread: ResNet-50, ViT-Ti, DeiT-Ti, ConvNeXt-Atto
    python benchmarks/features.py --device cuda --batch-size 256 --models resnet_50 alternet_50 vit_ti pit_ti swin_ti
"""
import argparse
import statistics

import torch

from helpers import featuremaps, fourier, variance
from helpers.blocks import split
from timing import add_device_options, clock, device_of, model_of, parse_args, print_ratio, synthetic_batch, timed

# issue 19: timm's own ViT and ConvNeXt at ImageNet size; at --smoke the smallest input each takes
TIMM_MODELS = ["timm:deit_tiny_patch16_224", "timm:convnext_atto"]
SMOKE_TIMM_MODELS = ["timm:deit_tiny_patch16_224(img_size=32)", "timm:convnext_atto"]


def measurements(model):
    """The bare forward pass first (the baseline), then what is compared with it."""
    blocks = split(model)
    return {
        "forward": model,
        "features": blocks.features,
        "feature_maps": blocks.feature_maps,
        "spectra": lambda images: fourier.spectra(blocks, [images]),
        "variances": lambda images: variance.variances(blocks, [images]),
        "spectra+variances": lambda images: blocks.average([images], featuremaps.diagonal_and_variance),
    }


GOALS = {"spectra+variances": "<= 1.2"}  # else "<= 1.1"


@torch.no_grad()
def benchmark(model, images, *, repeats, warm_up):
    """Per measurement: the median time (s) and the median ratio to the same round's forward pass."""
    device = images.device
    functions = measurements(model)
    names = list(functions)
    for _ in range(warm_up):
        for name in names:
            functions[name](images)
    times = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)  # a rotating order: no measurement always runs right after the same one
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(functions[name], device, images, steady=True))
    forward = times["forward"]
    return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, forward)))
            for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_50", "vit_ti", *TIMM_MODELS],
                        help="model specifications (helpers.models)")
    parser.add_argument("--batch-size", type=int, help="default: 8 on the CPU, 256 on a GPU")
    parser.add_argument("--repeats", type=int, default=10, help="rounds of alternating measurements")
    parser.add_argument("--warm-up", type=int, default=1, help="untimed rounds first")
    add_device_options(parser)
    args = parse_args(parser, models=["resnet_18", "vit_ti", *SMOKE_TIMM_MODELS], batch_size=2, repeats=1, warm_up=0)
    device = device_of(args)
    batch_size = args.batch_size or (8 if device.type == "cpu" else 256)

    print(f"{batch_size} images on {device} ({torch.get_num_threads()} CPU threads), median of {args.repeats} "
          f"alternating rounds of {clock(device).__name__}")
    ratios, width = {}, max(map(len, args.models))
    for name in args.models:
        model, spec = model_of(name, device)
        images, _ = synthetic_batch(spec, batch_size, device)
        results = benchmark(model, images, repeats=args.repeats, warm_up=args.warm_up)
        forward = results.pop("forward")[0]
        print(f"{name:<{width}} forward {forward * 1e3:8.1f} ms   " + "   ".join(
            f"{what} {seconds * 1e3:8.1f} ms ({ratio:.3f})" for what, (seconds, ratio) in results.items()))
        ratios.update({f"{name} {what} / forward": (ratio, GOALS.get(what, "<= 1.1"))
                       for what, (_, ratio) in results.items()})
    for name, (ratio, goal) in ratios.items():
        print_ratio(name, ratio, goal)


if __name__ == "__main__":
    main()
