"""Throughput of the CIFAR-100-C sweep as a ratio to bare inference, and its peak memory against one file.

The sweep's unit, `robustness.evaluate` on one (corruption, severity), reads uint8 rows from a memory-mapped
`.npy`, converts and normalises them on the device and accumulates accuracy, NLL and ECE. The baseline runs
the same model on the same images already converted and resident on the device, so the ratio is what the
pipeline costs on top of the forward passes (for a model of another input size, the resize to it too). Both are
timed alternately in one process (median of repeats). Any model specification (`helpers.models`).

    python benchmarks/robustness.py                              # CPU, 1 thread: ResNet-18, 256 images
    python benchmarks/robustness.py --device cuda --model resnet_50 --images 10000 --batch-size 500
"""
import argparse
import resource
import statistics
import tempfile

import torch

from helpers import data, robustness
from timing import add_device_options, device_of, model_of, parse_args, print_ratio, timed


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_18", help="a model specification (helpers.models)")
    parser.add_argument("--images", type=int, default=256, help="images per severity (CIFAR-100-C: 10000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    add_device_options(parser)
    args = parse_args(parser, images=8, batch_size=4, repeats=1)
    device = device_of(args)

    folder = tempfile.mkdtemp()
    corrupted = data.synthetic_cifar100c(folder, n=args.images, corruptions=("fog",))
    images, labels = corrupted.images("fog", 1), corrupted.labels(1)
    model, spec = model_of(args.model, device)
    resident = robustness.model_input(images, device, spec=spec)

    @torch.inference_mode()
    def bare():
        for start in range(0, len(resident), args.batch_size):
            model(resident[start:start + args.batch_size])

    def sweep():
        robustness.evaluate(model, images, labels, batch_size=args.batch_size, spec=spec)

    before = peak_memory_mb(device)
    bare(), sweep()  # warm-up
    times = {"bare": [], "sweep": []}
    for _ in range(args.repeats):
        times["bare"].append(timed(bare, device))
        times["sweep"].append(timed(sweep, device))
    bare_time, sweep_time = statistics.median(times["bare"]), statistics.median(times["sweep"])
    file_mb = (corrupted.folder / "fog.npy").stat().st_size / 2**20
    print(f"{args.model} on {device}, {len(images)} images, batch {args.batch_size}")
    print(f"  bare inference {len(images) / bare_time:8.1f} images/s")
    print(f"  sweep          {len(images) / sweep_time:8.1f} images/s")
    print(f"  peak memory {peak_memory_mb(device):.0f} MB (before the runs {before:.0f} MB); "
          f"one corruption file {file_mb:.1f} MB (5 severities)")
    print_ratio(f"{args.model} sweep / bare inference, images/s", bare_time / sweep_time, ">= 0.9")


if __name__ == "__main__":
    main()
