"""Cost of layer-by-layer CKA: all pairs of blocks of all pairs of models, as a ratio to the forward passes alone
(goal: at most 1.1).

Per batch, `MinibatchCKA.add` runs one forward pass per model, one float64 Gram matrix per block and one matrix
product for every pair of blocks; the baseline is the same forward passes (`Blocks.features`) with nothing else,
timed in the same process on the same batches. Each batch is timed both ways, which goes first alternating, and the
ratio is the median over batches of (CKA / the same batch's forward passes). Times are `timing.clock`'s: on a CPU
with one thread (the default), the thread's CPU time, which other processes on a shared machine disturb far less
than the wall clock; else wall time.

Any model specifications (`helpers.models`); each model gets synthetic images of its own input size.

    python benchmarks/cka.py                                   # CPU, 1 thread: ViT-Ti and ResNet-50, 5 batches of 16
    python benchmarks/cka.py --device cuda --batch-size 256 --models vit_ti pit_ti swin_ti resnet_50 alternet_50
"""
import argparse
import statistics

import torch

from helpers.blocks import split
from helpers.cka import MinibatchCKA
from timing import add_device_options, clock, device_of, model_of, parse_args, print_ratio, synthetic_batch, timed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_ti", "resnet_50"], help="model specifications")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (at least 4)")
    parser.add_argument("--batches", type=int, default=5)
    add_device_options(parser)
    args = parse_args(parser, models=["vit_ti", "resnet_18"], batch_size=4, batches=1)
    device = device_of(args)

    blocks = {name: split(*model_of(name, device)) for name in args.models}
    images = {name: synthetic_batch(b.spec, args.batch_size * args.batches, device)[0].split(args.batch_size)
              for name, b in blocks.items()}
    batches = [dict(zip(images, batch)) for batch in zip(*images.values())]  # each model's images, at its input size

    @torch.no_grad()
    def forward_only(images):
        for name, model in blocks.items():
            model.features(images[name])

    def warm_up():
        forward_only(batches[0])
        MinibatchCKA(blocks).add(batches[0])

    warm_up()
    accumulator = MinibatchCKA(blocks)
    forward, total = [], []
    for index, images in enumerate(batches):  # alternating, so that a change in machine load touches both alike
        for measure in ([forward_only, accumulator.add] if index % 2 == 0 else [accumulator.add, forward_only]):
            (forward if measure is forward_only else total).append(timed(measure, device, images, steady=True))
    pairs = sum(len(blocks[a]) * len(blocks[b]) for a, b in accumulator.pairs)
    grams = sum(len(b) for b in blocks.values())
    print(f"{', '.join(args.models)} on {device} ({torch.get_num_threads()} CPU threads): {args.batches} batches of "
          f"{args.batch_size}, {grams} Gram matrices and {pairs} block pairs per batch; medians of "
          f"{clock(device).__name__}")
    print(f"forward passes alone: {statistics.median(forward) * 1e3:.1f} ms/batch")
    print(f"CKA, all pairs:       {statistics.median(total) * 1e3:.1f} ms/batch")
    print_ratio("CKA / forward", statistics.median(t / f for t, f in zip(total, forward)), "<= 1.1")


if __name__ == "__main__":
    main()
