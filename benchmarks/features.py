"""Cost of extracting every block's features (Fig. 2a, Fig. 8, Fig. 9), as a ratio to a bare forward pass (goal: at most 1.1).

For each model, on one batch, in eval mode without autograd, in the same process: the bare `model(x)`, then
`split(model).features(x)` (every block's output, one pass) and `.feature_maps(x)` (the same as `B, C, H, W`
maps), and, for what the notebooks pay per batch, `fourier.spectra` (maps plus the diagonal of each block's
spectrum) and `variance.variances` (maps plus one variance per block). The measurements alternate in a rotating
order, one of each per round, so that a change in machine load touches all alike; each ratio is the median over
rounds of (time / the same round's forward pass), each time the median over rounds.

    python benchmarks/features.py                                            # CPU, 1 thread: ResNet-50, ViT-Ti, batch 8
    python benchmarks/features.py --device cuda --batch-size 256 --models resnet_50 alternet_50 vit_ti pit_ti swin_ti
"""
import argparse
import statistics

import torch

from helpers import fourier, models, variance
from helpers.blocks import split
from timing import add_device_options, device_of, parse_args, timed


def measurements(model):
    """The bare forward pass first (the baseline), then what is compared with it."""
    blocks = split(model)
    return {
        "forward": model,
        "features": blocks.features,
        "feature_maps": blocks.feature_maps,
        "spectra": lambda images: fourier.spectra(blocks, [images]),
        "variances": lambda images: variance.variances(blocks, [images]),
    }


def model_and_images(name, batch_size, device):
    """The model named `name` in eval mode and a batch of its input size: the one place that reads a model name."""
    torch.manual_seed(0)
    model = models.create(name).eval().to(device)
    return model, torch.randn(batch_size, 3, 32, 32, device=device)


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
            times[name].append(timed(functions[name], device, images))
    forward = times["forward"]
    return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, forward)))
            for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet_50", "vit_ti"], help="names for helpers.models.create")
    parser.add_argument("--batch-size", type=int, help="default: 8 on the CPU, 256 on a GPU")
    parser.add_argument("--repeats", type=int, default=10, help="rounds of alternating measurements")
    parser.add_argument("--warm-up", type=int, default=1, help="untimed rounds first")
    add_device_options(parser)
    args = parse_args(parser, models=["resnet_18", "vit_ti"], batch_size=2, repeats=1, warm_up=0)
    device = device_of(args)
    batch_size = args.batch_size or (8 if device.type == "cpu" else 256)

    print(f"{batch_size} images on {device} ({torch.get_num_threads()} CPU threads), median of {args.repeats} "
          f"alternating rounds; goal for every measurement: ratio <= 1.1")
    for name in args.models:
        model, images = model_and_images(name, batch_size, device)
        results = benchmark(model, images, repeats=args.repeats, warm_up=args.warm_up)
        forward = results.pop("forward")[0]
        print(f"{name:<12} forward {forward * 1e3:8.1f} ms   " + "   ".join(
            f"{what} {seconds * 1e3:8.1f} ms ({ratio:.3f})" for what, (seconds, ratio) in results.items()))


if __name__ == "__main__":
    main()
