"""Cost of layer-by-layer CKA: all pairs of blocks of all pairs of models, as a ratio to the forward passes alone.

Per batch, `MinibatchCKA.add` runs one forward pass per model, one float64 Gram matrix per block and one matrix
product for every pair of blocks; the baseline is the same forward passes (`Blocks.features`) with nothing else,
timed in the same process on the same batches.

    python benchmarks/cka.py                                   # CPU, ViT-Ti and ResNet-50, 3 batches of 16
    python benchmarks/cka.py --device cuda --batch-size 256 --models vit_ti pit_ti swin_ti resnet_50 alternet_50
"""
import argparse

import torch

from helpers import models
from helpers.blocks import split
from helpers.cka import MinibatchCKA
from timing import timed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_ti", "resnet_50"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    blocks = {name: split(models.create(name).eval().to(device)) for name in args.models}
    batches = [torch.randn(args.batch_size, 3, 32, 32, device=device) for _ in range(args.batches)]

    @torch.no_grad()
    def forward_only(images):
        for model in blocks.values():
            model.features(images)

    def warm_up():
        forward_only(batches[0])
        MinibatchCKA(blocks).add(batches[0])

    warm_up()
    accumulator = MinibatchCKA(blocks)
    forward = total = 0.0
    for images in batches:  # alternating, so that a change in machine load touches both alike
        forward += timed(forward_only, device, images)
        total += timed(accumulator.add, device, images)
    pairs = sum(len(blocks[a]) * len(blocks[b]) for a, b in accumulator.pairs)
    grams = sum(len(b) for b in blocks.values())
    print(f"{', '.join(args.models)} on {device}: {args.batches} batches of {args.batch_size}, "
          f"{grams} Gram matrices and {pairs} block pairs per batch")
    print(f"forward passes alone: {forward / args.batches * 1e3:.1f} ms/batch")
    print(f"CKA, all pairs:       {total / args.batches * 1e3:.1f} ms/batch")
    print(f"ratio CKA / forward:  {total / forward:.2f}")


if __name__ == "__main__":
    main()
