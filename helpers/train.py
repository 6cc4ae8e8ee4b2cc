"""Training and evaluation with the authors' recipes (classification.ipynb: the paper's accuracy table, AlterNet).

`train(model, train_set, test_set, name=...)` follows the authors' ops/trains.py with timm's parts: `warmup_epochs`
epochs of a learning rate rising linearly per step from 0, THEN `epochs` epochs of the recipe's schedule (cosine to
0, or steps at the milestones), changed once per epoch (so the strong recipe runs 5 + 300 epochs); Mixup/CutMix
with label smoothing and timm's soft-target cross-entropy; AdamW or SGD on every parameter (weight decay on biases
and norms too, as the authors do); gradient norm clipping. On CUDA it adds bf16 autocast and channels-last CNNs.
The recipe's learning rate is for its batch size; another (global) batch size scales it linearly.

Each epoch appends a row to a CSV log (training loss, learning rate, throughput, test metrics) and then writes
`{dataset}_{name}_last.pth.tar` in the official format (`name`, `state_dict`, `optimizer`, `epoch`, plus the step,
scheduler, recipe and every rank's RNG states), atomically; the end of warm-up is also kept as `..._warmup.pth.tar`
and the end of training as `{dataset}_{name}.pth.tar`. Rerunning with the same folder resumes from `_last`, with
the result an uninterrupted run would have given: the data order depends only on (seed, epoch) and the RNGs are
restored. Under `torchrun --nproc-per-node N -m helpers.train ...` it runs distributed data parallel (gloo on CPU,
nccl on CUDA), each rank taking 1/N of the batch, and test metrics are summed over ranks.
"""
import argparse
import json
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

import helpers
from helpers import data, models
from helpers.common import Rank, evaluating, rank
from helpers.common import save as save_checkpoint  # atomic; tests patch this name
from helpers.metrics import BINS, Accumulator
from helpers.recipes import RECIPES, STRONG
from helpers.sweep import Sweep

# Top-1 accuracy (%) on the CIFAR-100 test set reported in the paper, for the table beside ours
PAPER_ACCURACY = {"resnet_50": 82.9, "swin_ti": 76.9, "pit_ti": 76.2, "vit_ti": 66.6, "alternet_50": 84.0}
POSTFIX_EVERY = 20  # steps between progress-bar updates (each one waits for the device)


def build(name, recipe=STRONG, num_classes=100, **kw):
    """`models.create(name)` with the recipe's stochastic depth."""
    return models.create(name, num_classes=num_classes, sd=recipe.sd, **kw)


def checkpoint_path(folder, name, dataset="cifar100", stage=None):
    """`stage` None: the final checkpoint; "last": the latest epoch's; "warmup": the end of warm-up."""
    return Path(folder) / (f"{dataset}_{name}" + (f"_{stage}" if stage else "") + ".pth.tar")


def log_path(folder, name, dataset="cifar100"):
    return Path(folder) / f"{dataset}_{name}_log.csv"


# The recipe's parts

def optimizer_for(model, recipe, lr):
    fused = next(model.parameters()).device.type == "cuda"
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay, fused=fused)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    raise ValueError(f"recipe {recipe.name!r} has optimizer {recipe.optimizer!r}; expected 'adamw' or 'sgd'")


def scheduler_for(optimizer, recipe, *, epochs, warmup_epochs, steps_per_epoch):
    """timm's scheduler, updated per step with `schedule_step(step)`: the step during warm-up, the first step of
    the current epoch afterwards, so that (as in the authors' code) the rate changes once per epoch after warm-up."""
    warmup = dict(warmup_t=warmup_epochs * steps_per_epoch, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    if recipe.scheduler == "cosine":
        return CosineLRScheduler(optimizer, t_initial=epochs * steps_per_epoch, lr_min=0.0, **warmup)
    if recipe.scheduler == "step":
        # timm applies milestone m at t == m - 1; + 1 moves it to the first step of epoch m, as torch's MultiStepLR
        decay = [m * steps_per_epoch + 1 for m in recipe.milestones]
        return MultiStepLRScheduler(optimizer, decay_t=decay, decay_rate=recipe.gamma, **warmup)
    raise ValueError(f"recipe {recipe.name!r} has scheduler {recipe.scheduler!r}; expected 'cosine' or 'step'")


def schedule_step(step, *, warmup_epochs, steps_per_epoch):
    warmup = warmup_epochs * steps_per_epoch
    return step if step < warmup else warmup + (step - warmup) // steps_per_epoch * steps_per_epoch


def criterion_for(recipe, mixup):
    if mixup is not None:
        return SoftTargetCrossEntropy()  # Mixup makes the (label-smoothed) soft targets
    if recipe.label_smoothing:
        return LabelSmoothingCrossEntropy(recipe.label_smoothing)
    return nn.CrossEntropyLoss()


def prefers_channels_last(model):
    """CNNs on CUDA: most of the parameters sit in convolutions."""
    if next(model.parameters()).device.type != "cuda":
        return False
    conv = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    return conv > models.count_parameters(model) / 2


# Checkpoints and RNG states (tensors, ints and tuples only, so that `weights_only=True` reads them)

def rng_state():
    kind, key, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(key.astype(np.int64)), position, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}  # this process's GPU


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, key, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), position, has_gauss, gauss))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def keep_copy(path, copy):
    """`copy` becomes a hard link to the file now at `path` (no second write; `path` is later replaced, not
    rewritten in place, so the copy keeps this epoch's weights), or a plain copy where links are not supported."""
    partial = Path(copy).with_name(Path(copy).name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(path, partial)
    except OSError:
        shutil.copyfile(path, partial)
    os.replace(partial, copy)


def gathered(obj, place):
    if place.world_size == 1:
        return [obj]
    objects = [None] * place.world_size
    dist.all_gather_object(objects, obj)
    return objects


# Evaluation

@torch.no_grad()
def evaluate(model, dataset, *, batch_size=256, workers=0, bins=BINS, mixed_precision=False, progress=False):
    """Accuracy, NLL, ECE, Acc-90, Freq-90, reliability bins and throughput of `model` on `dataset` of
    (image, label) pairs. Under torch.distributed each rank takes every N-th image and the sums are reduced,
    so every rank gets the metrics of the whole set (no image counted twice)."""
    device = next(model.parameters()).device
    place = rank() if dist.is_initialized() else Rank()
    shard = Subset(dataset, range(place.rank, len(dataset), place.world_size))
    loader = DataLoader(shard, batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    channels_last = prefers_channels_last(model)
    accumulator = Accumulator(bins, device=device)
    start = time.perf_counter()
    with evaluating(model):
        for images, labels in tqdm(loader, desc="evaluate", leave=False, disable=not progress or place.rank != 0):
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=mixed_precision and device.type == "cuda"):
                logits = model(images)
            accumulator.update(logits, labels.to(device, non_blocking=True))
    accumulator.reduce()  # also waits for the device, before the clock stops
    images_per_second = len(dataset) / (time.perf_counter() - start)
    return accumulator.result(throughput=images_per_second)


# Training

def train(model, train_set, test_set=None, *, name, recipe=STRONG, dataset="cifar100", folder="checkpoints/trained",
          epochs=None, warmup_epochs=None, batch_size=None, seed=0, workers=None, resume=True, progress=True):
    """Train `model` (in place, on its device) on `train_set` of (image, label) pairs, whose transform is the
    caller's (e.g. `recipe.train_transform(dataset)`); evaluate on `test_set` after every epoch. Seeds torch,
    numpy and random with `seed` (plus the rank). `epochs`, `warmup_epochs`, `batch_size` (global, over all
    ranks) default to the recipe's. With `resume`, an existing `_last` checkpoint in `folder` is continued;
    otherwise, or without one, training (and its log) starts over.
    Returns the log, one row per epoch, as a DataFrame (on rank 0; None on the others)."""
    epochs = recipe.epochs if epochs is None else epochs
    warmup_epochs = recipe.warmup_epochs if warmup_epochs is None else warmup_epochs
    batch_size = recipe.batch_size if batch_size is None else batch_size
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    place = rank() if dist.is_initialized() else Rank()
    if batch_size % place.world_size:
        raise ValueError(f"batch size {batch_size} does not split over {place.world_size} processes: "
                         f"pick a multiple of {place.world_size}")
    device = next(model.parameters()).device
    num_classes = data.NUM_CLASSES[dataset]
    seed_everything(seed + place.rank)

    # data: the order depends on (seed, epoch) only; workers are seeded from (seed, epoch, rank)
    per_rank = batch_size // place.world_size
    sampler = DistributedSampler(train_set, place.world_size, place.rank, shuffle=True, seed=seed)
    mixup = recipe.mixup_fn(num_classes)
    if mixup is not None and per_rank % 2:
        raise ValueError(f"timm's Mixup/CutMix needs an even batch per process, not {per_rank}: "
                         f"pick a batch size that is an even multiple of {place.world_size}")
    odd_last = len(sampler) % per_rank % 2 == 1  # timm's Mixup needs an even batch
    loader = DataLoader(train_set, per_rank, sampler=sampler, num_workers=workers, drop_last=mixup is not None
                        and odd_last, pin_memory=device.type == "cuda", generator=torch.Generator())
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training images make no batch of {per_rank} per process")

    lr = recipe.lr * batch_size / recipe.batch_size
    optimizer = optimizer_for(model, recipe, lr)
    scheduler = scheduler_for(optimizer, recipe, epochs=epochs, warmup_epochs=warmup_epochs,
                              steps_per_epoch=len(loader))
    criterion = criterion_for(recipe, mixup)
    channels_last = prefers_channels_last(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    last = checkpoint_path(folder, name, dataset, "last")
    finished, step = 0, 0
    if resume and last.exists():
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        finished, step = checkpoint["epoch"], checkpoint["step"]
        if checkpoint["world_size"] == place.world_size:
            set_rng_state(checkpoint["rng"][place.rank])
        else:  # another number of processes: each step still sees the same images, augmented otherwise
            seed_everything(seed + place.rank + 1000 * finished)
    scheduler.step_update(schedule_step(step, warmup_epochs=warmup_epochs, steps_per_epoch=len(loader)))

    network = DistributedDataParallel(model, [device.index] if device.type == "cuda" else None) \
        if place.world_size > 1 else model
    log = Sweep(log_path(folder, name, dataset), ("epoch",), Rank())
    if finished == 0 and place.rank == 0:
        log.path.unlink(missing_ok=True)  # a fresh start: rows of an earlier run would mislead
    logged = {int(epoch) for epoch, in log.done()}
    total = warmup_epochs + epochs
    for epoch in tqdm(range(finished, total), desc=name, initial=finished, total=total,
                      disable=not progress or place.rank != 0):
        sampler.set_epoch(epoch)
        loader.generator.manual_seed(seed + 1000 * epoch + place.rank)
        model.train()
        loss_sum, seen = torch.zeros((), device=device), 0
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress or place.rank != 0)
        for images, labels in bar:
            images, targets = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if mixup is not None:
                images, targets = mixup(images, targets)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                loss = criterion(network(images), targets)
            optimizer.zero_grad(set_to_none=True)
            lr_used = optimizer.param_groups[0]["lr"]
            loss.backward()
            if recipe.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            optimizer.step()
            step += 1
            scheduler.step_update(schedule_step(step, warmup_epochs=warmup_epochs, steps_per_epoch=len(loader)))
            loss_sum += loss.detach() * len(images)
            seen += len(images)
            if not bar.disable and step % POSTFIX_EVERY == 1:
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
        totals = torch.stack([loss_sum.double(), torch.tensor(seen, dtype=torch.float64, device=device)])
        if place.world_size > 1:
            dist.all_reduce(totals)
            for buffer in model.buffers():  # BatchNorm statistics: rank 0's, as the checkpoint will hold
                dist.broadcast(buffer, 0)
        row = {"epoch": epoch + 1, "phase": "warmup" if epoch < warmup_epochs else "train",
               "lr": lr_used, "train_loss": (totals[0] / totals[1]).item(),
               "train_throughput": totals[1].item() / (time.perf_counter() - start)}
        if test_set is not None:
            metrics = evaluate(model, test_set, batch_size=recipe.eval_batch_size, workers=workers).row()
            row |= {f"test_{key}": value for key, value in metrics.items()}
        rngs = gathered(rng_state(), place)
        if place.rank == 0:
            if epoch + 1 not in logged:  # a run killed after its row and before its checkpoint redoes the epoch
                log.add(row)
            checkpoint = {"name": name, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "epoch": epoch + 1, "step": step, "scheduler": scheduler.state_dict(),
                          "recipe": asdict(recipe), "seed": seed, "world_size": place.world_size, "rng": rngs,
                          "metrics": row}
            save_checkpoint(checkpoint, last)
            if epoch + 1 == warmup_epochs:
                keep_copy(last, checkpoint_path(folder, name, dataset, "warmup"))
            if epoch + 1 == total:
                keep_copy(last, checkpoint_path(folder, name, dataset))
    if place.world_size > 1:
        dist.barrier()
    return pd.read_csv(log.path) if place.rank == 0 and log.path.exists() else None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a model on CIFAR with the authors' recipe; under "
                                     "torchrun --nproc-per-node N, on N processes.")
    parser.add_argument("--model", default="alternet_50", choices=models.NAMES)
    parser.add_argument("--model-args", default="{}", help='JSON keywords for models.create, e.g. \'{"depth": 1}\'')
    parser.add_argument("--dataset", default="cifar100", choices=sorted(data.NUM_CLASSES))
    parser.add_argument("--recipe", default="strong", choices=sorted(RECIPES))
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--folder", default="checkpoints/trained")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--warmup-epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global, over all processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--synthetic", type=int, metavar="N", help="N random images instead of the dataset")
    args = parser.parse_args(argv)

    place = rank()
    if place.world_size > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    recipe = RECIPES[args.recipe]
    if args.synthetic:
        train_set = data.synthetic(args.synthetic, args.dataset, seed=0)
        test_set = data.synthetic(args.synthetic, args.dataset, seed=1)
    else:
        train_set = data.dataset(args.dataset, args.data_root, train=True,
                                 transform=recipe.train_transform(args.dataset))
        test_set = data.dataset(args.dataset, args.data_root, train=False, transform=data.test_transform(args.dataset))
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = build(args.model, recipe, data.NUM_CLASSES[args.dataset], **json.loads(args.model_args))
    model.to(helpers.pick_device())
    log = train(model, train_set, test_set, name=args.model, recipe=recipe, dataset=args.dataset, folder=args.folder,
                epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, seed=args.seed,
                workers=args.workers, resume=not args.no_resume)
    if log is not None:
        print(log.tail(1).to_string(index=False))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
