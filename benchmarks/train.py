"""Images per second of our training step, as a ratio to a bare PyTorch loop on the same model and data (goal: >= 0.95).

Ours: `helpers.train.train` for one epoch (no warm-up, no test set) on synthetic images; its speed is the log's
`train_throughput`, which times the epoch's loop only (loading, Mixup/CutMix, forward, loss, backward, clipping,
optimizer step, scheduler, loss sum), not the set-up before it nor the checkpoint written after it.
Two hand-written loops, each timed over the same epoch: a fresh copy of the same initial model (the recipe's
stochastic depth included), the recipe's optimizer (`optimizer_for`: same type and hyper-parameters), the same
images, batch size and loader, and on CUDA the same bf16 autocast:
  same step  forward, loss, backward, optimizer step with the recipe's parts (timm's Mixup/CutMix, soft-target
             cross-entropy, gradient clipping; channels-last where ours uses it): the ratio is our loop's overhead;
  bare       forward, cross-entropy, backward, optimizer step: the ratio adds what the recipe's parts cost.
The three alternate in a rotating order, one epoch of each per round; each ratio is the median over rounds of
the per-round ratio, each speed the median over rounds. Every epoch starts from the initial weights and a fresh
optimizer, so each includes the optimizer's first-step state allocation alike.

    python benchmarks/train.py                                   # CPU, 1 thread: ViT-Ti, 16 images in batches of 8
    python benchmarks/train.py --device cuda --model alternet_50 --images 9600 --batch-size 96 --workers 4
"""
import argparse
import copy
import json
import statistics
import tempfile
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from helpers import data, models
from helpers import train as training
from helpers.recipes import RECIPES
from timing import add_device_options, device_of, parse_args, print_ratio, synchronize


def hand_written(model, train_set, recipe, *, batch_size, workers, same_step):
    """Images per second of one epoch of a plain loop (see the module docstring)."""
    device = next(model.parameters()).device
    loader = DataLoader(train_set, batch_size, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda")
    optimizer = training.optimizer_for(model, recipe, recipe.lr * batch_size / recipe.batch_size)
    mixup = recipe.mixup_fn(data.NUM_CLASSES["cifar100"]) if same_step else None
    criterion = training.criterion_for(recipe, mixup) if same_step else nn.CrossEntropyLoss()
    channels_last = same_step and training.prefers_channels_last(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    seen = 0
    synchronize(device)
    start = time.perf_counter()
    for images, labels in loader:
        images, targets = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if same_step and recipe.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
        optimizer.step()
        seen += len(images)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def ours(model, train_set, recipe, *, batch_size, workers, folder, progress):
    """Images per second of one epoch of `helpers.train.train`, from its log (checkpoint writing excluded)."""
    log = training.train(model, train_set, name="benchmark", recipe=recipe, folder=folder, epochs=1, warmup_epochs=0,
                         batch_size=batch_size, workers=workers, resume=False, progress=progress)
    return float(log["train_throughput"].iloc[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_ti", help="a model specification (helpers.models)")
    parser.add_argument("--model-args", default="{}", help='JSON keywords for its builder, e.g. \'{"depth": 2}\'')
    parser.add_argument("--recipe", default="strong", choices=sorted(RECIPES))
    parser.add_argument("--images", type=int, default=16, help="synthetic images per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (in-memory images need none)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of alternating epochs")
    parser.add_argument("--progress", action="store_true",
                        help="ours with its progress bars, as users run it (they read the loss every 20 steps)")
    add_device_options(parser)
    args = parse_args(parser, model_args='{"depth": 1}', images=4, batch_size=2, repeats=1)
    device = device_of(args)
    if args.images % args.batch_size:
        raise SystemExit(f"--images {args.images} is not a multiple of --batch-size {args.batch_size}: the last, "
                         f"smaller batch would be dropped by one loop and not the other")

    recipe = RECIPES[args.recipe]
    torch.manual_seed(0)
    initial = training.build(args.model, recipe, **json.loads(args.model_args)).to(device)
    train_set = data.synthetic(args.images, spec=models.resolve(args.model).sized(initial))
    sizes = dict(batch_size=args.batch_size, workers=args.workers)
    with tempfile.TemporaryDirectory() as folder:
        runs = {
            "bare": lambda model: hand_written(model, train_set, recipe, same_step=False, **sizes),
            "same step": lambda model: hand_written(model, train_set, recipe, same_step=True, **sizes),
            "ours": lambda model: ours(model, train_set, recipe, folder=folder, progress=args.progress, **sizes),
        }
        names = list(runs)
        for name in names:  # warm-up
            runs[name](copy.deepcopy(initial))
        speeds = {name: [] for name in names}
        for round_ in range(args.repeats):
            shift = round_ % len(names)  # a rotating order: no run always follows the same one
            for name in names[shift:] + names[:shift]:
                speeds[name].append(runs[name](copy.deepcopy(initial)))

    def ratio(baseline):
        return statistics.median(a / b for a, b in zip(speeds["ours"], speeds[baseline]))

    median = {name: statistics.median(s) for name, s in speeds.items()}
    print(f"{args.model}, {recipe.name} recipe, {args.images} images in batches of {args.batch_size} on {device} "
          f"({torch.get_num_threads()} CPU threads), median of {args.repeats} alternating rounds:")
    print(f"images/s: bare loop {median['bare']:.1f}, same step by hand {median['same step']:.1f}, "
          f"ours {median['ours']:.1f}")
    print_ratio(f"{args.model} ours / same step by hand, images/s", ratio("same step"), ">= 0.95")
    print_ratio(f"{args.model} ours / bare loop, images/s", ratio("bare"))


if __name__ == "__main__":
    main()
