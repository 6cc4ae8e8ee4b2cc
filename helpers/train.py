"""Training and evaluation with the authors' recipes (classification.ipynb: the paper's accuracy table, AlterNet).

`train(model, train_set, test_set, name=...)` follows the authors' ops/trains.py with timm's parts: `warmup_epochs`
epochs of a learning rate rising linearly per step from 0, THEN `epochs` epochs of the recipe's schedule (cosine to
0, or steps at the milestones), changed once per epoch (so the strong recipe runs 5 + 300 epochs); Mixup/CutMix
with label smoothing and timm's soft-target cross-entropy; AdamW or SGD on every parameter (weight decay on biases
and norms too, as the authors do); gradient norm clipping. On CUDA it adds bf16 autocast and channels-last CNNs.
The recipe's learning rate is for its batch size; another (global) batch size scales it linearly.

Each epoch writes `{dataset}_{name}_last.pth.tar` in the official format (`name`, `state_dict`, `optimizer`,
`epoch`, plus the step, scheduler, recipe, every rank's RNG states, the log of every epoch so far and the run's
definition), atomically, and the log as `{dataset}_{name}_log.csv` (training loss, learning rate, throughput, test
metrics); the end of warm-up is also kept as `..._warmup.pth.tar` and the end of training as
`{dataset}_{name}.pth.tar`. Rerunning with the same folder and definition resumes from `_last`, with the result an
uninterrupted run would have given: the data order depends only on (seed, epoch) and the RNGs are restored. A
`_last` made with other settings or data is refused with the setting that differs. Under `torchrun --nproc-per-node N -m helpers.train ...` it runs distributed data parallel (gloo on CPU,
nccl on CUDA), each rank taking 1/N of the batch, and test metrics are summed over ranks.
"""
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
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

from helpers import data, experiment
from helpers import models as models_module  # `models` is the name of a Config field
from helpers.common import Rank, evaluating, pick_device, rank, writing
from helpers.common import save as save_checkpoint  # atomic; tests patch this name
from helpers.experiment import Experiment, Pretrained, positive, setting
from helpers.metrics import BINS, Accumulator
from helpers.recipes import RECIPES, STRONG, Recipe

POSTFIX_EVERY = 20  # steps between progress-bar updates (each one waits for the device)


def build(name, recipe=STRONG, num_classes=100, **kw):
    """The model a specification names (`helpers.models`), fresh, with `num_classes`; a registry model with the
    recipe's stochastic depth unless `kw` gives its own `sd` (another model's is what its specification or `kw` say,
    e.g. drop_path_rate=0.1)."""
    spec = models_module.resolve(name)
    return spec.build(num_classes, **{**({"sd": recipe.sd} if spec.entry is not None else {}), **kw})


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
    return conv > models_module.count_parameters(model) / 2


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

def definition_of(name, recipe, dataset, epochs, warmup_epochs, batch_size, seed, train_set, test_set, extra=None):
    """Everything that changes a training run's numbers; stored in its checkpoints and checked on resume."""
    return {"model": name, "recipe": asdict(recipe), "dataset": dataset, "epochs": epochs,
            "warmup_epochs": warmup_epochs, "batch_size": batch_size, "seed": seed,
            "train": data.fingerprint(train_set), "test": data.fingerprint(test_set) if test_set is not None else None,
            **(extra or {})}


def check_resumable(checkpoint, definition, path):
    """Refuse to continue a run made with another definition, naming the first setting that differs."""
    changed = experiment.differences(checkpoint.get("definition") or {}, definition)
    if changed:
        raise ValueError(f"{path} was trained with other settings ({changed[0]}{' ...' if len(changed) > 1 else ''}):"
                         " run it with the same settings to resume it, or choose another folder (or delete it) to "
                         "start over.")


def training_loader(train_set, per_rank, place, *, mixup, seed, workers, device):
    """Batches of `per_rank` for this rank: the order depends on (seed, epoch) only, see `set_epoch`."""
    sampler = DistributedSampler(train_set, place.world_size, place.rank, shuffle=True, seed=seed)
    odd_last = len(sampler) % per_rank % 2 == 1  # timm's Mixup needs an even batch
    loader = DataLoader(train_set, per_rank, sampler=sampler, num_workers=workers, drop_last=mixup is not None
                        and odd_last, pin_memory=device.type == "cuda", generator=torch.Generator())
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training images make no batch of {per_rank} per process")
    return loader


def one_epoch(network, model, loader, optimizer, scheduler, criterion, mixup, recipe, step, *, warmup_epochs,
              channels_last, progress):
    """Train for one pass over `loader`; returns (steps done so far, (loss sum, images) as a device tensor, lr)."""
    device = next(model.parameters()).device
    loss_sum, seen, start, lr = torch.zeros((), device=device), 0, time.perf_counter(), None
    bar = tqdm(loader, desc="epoch", leave=False, disable=not progress)
    for images, labels in bar:
        images, targets = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = criterion(network(images), targets)
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]
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
    return step, torch.stack([loss_sum.double(), torch.tensor(seen, dtype=torch.float64, device=device)]), lr


def write_log(rows, path):
    """The log's rows as a CSV, replaced whole (the checkpoint holds the same rows: the two never disagree)."""
    partial = Path(path).with_name(Path(path).name + ".partial")
    with writing(path):
        pd.DataFrame(rows).to_csv(partial, index=False)
        os.replace(partial, path)


@dataclass
class _Run:
    """What the steps of one training run share (see `train`): its settings and its recipe's parts."""
    model: nn.Module
    place: Rank
    name: str
    recipe: Recipe
    dataset: str
    folder: object
    epochs: int
    warmup_epochs: int
    seed: int
    definition: dict
    mixup: object
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    criterion: nn.Module
    channels_last: bool

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def last(self):
        return checkpoint_path(self.folder, self.name, self.dataset, "last")


def train(model, train_set, test_set=None, *, name, recipe=STRONG, dataset="cifar100", folder="checkpoints/trained",
          epochs=None, warmup_epochs=None, batch_size=None, seed=0, workers=None, resume=True, extra=None,
          progress=True):
    """Train `model` (in place, on its device) on `train_set` of (image, label) pairs, whose transform is the
    caller's (e.g. `recipe.train_transform(dataset)`); evaluate on `test_set` after every epoch. Seeds torch,
    numpy and random with `seed` (plus the rank). `epochs`, `warmup_epochs`, `batch_size` (global, over all
    ranks) default to the recipe's. With `resume`, an existing `_last` checkpoint in `folder` is continued if it
    was made with the same definition (`definition_of`, plus `extra`), and refused otherwise; without one, or
    without `resume`, training (and its log) starts over.
    Returns the log, one row per epoch, as a DataFrame (on rank 0; None on the others)."""
    run = set_up(model, train_set, test_set, name=name, recipe=recipe, dataset=dataset, folder=folder, epochs=epochs,
                 warmup_epochs=warmup_epochs, batch_size=batch_size, seed=seed, workers=workers, extra=extra)
    finished, step, log = resumed(run) if resume and run.last.exists() else (0, 0, [])
    run.scheduler.step_update(schedule_step(step, warmup_epochs=run.warmup_epochs, steps_per_epoch=len(run.loader)))
    place, total = run.place, run.warmup_epochs + run.epochs
    network = DistributedDataParallel(model, [run.device.index] if run.device.type == "cuda" else None) \
        if place.world_size > 1 else model
    try:
        for epoch in tqdm(range(finished, total), desc=name, initial=finished, total=total,
                          disable=not progress or place.rank != 0):
            step, row = train_epoch(run, network, epoch, step, progress=progress and place.rank == 0)
            if test_set is not None:
                row |= test_metrics(model, test_set, recipe, workers)
            log = log + [row]
            save_epoch(run, epoch, step, log)
    except KeyboardInterrupt:
        if place.rank == 0:
            print(f"\nInterrupted: {len(log)} finished epochs are saved in {run.last}; run the same command (or cell) "
                  "again to resume.", flush=True)
        raise
    if place.world_size > 1:
        dist.barrier()
    return pd.DataFrame(log) if place.rank == 0 else None


def set_up(model, train_set, test_set, *, name, recipe, dataset, folder, epochs, warmup_epochs, batch_size, seed,
           workers, extra):
    """`train`'s settings resolved and checked, the RNGs seeded, the loader, optimizer and scheduler made."""
    epochs = recipe.epochs if epochs is None else epochs
    warmup_epochs = recipe.warmup_epochs if warmup_epochs is None else warmup_epochs
    batch_size = recipe.batch_size if batch_size is None else batch_size
    place = rank() if dist.is_initialized() else Rank()
    if batch_size % place.world_size:
        raise ValueError(f"batch size {batch_size} does not split over {place.world_size} processes: "
                         f"pick a multiple of {place.world_size}")
    per_rank, device = batch_size // place.world_size, next(model.parameters()).device
    mixup = recipe.mixup_fn(data.NUM_CLASSES[dataset])
    if mixup is not None and per_rank % 2:
        raise ValueError(f"timm's Mixup/CutMix needs an even batch per process, not {per_rank}: "
                         f"pick a batch size that is an even multiple of {place.world_size}")
    definition = definition_of(name, recipe, dataset, epochs, warmup_epochs, batch_size, seed, train_set, test_set,
                               extra)
    seed_everything(seed + place.rank)
    loader = training_loader(train_set, per_rank, place, mixup=mixup, seed=seed, workers=data.worker_count(workers),
                             device=device)
    optimizer = optimizer_for(model, recipe, recipe.lr * batch_size / recipe.batch_size)
    scheduler = scheduler_for(optimizer, recipe, epochs=epochs, warmup_epochs=warmup_epochs,
                              steps_per_epoch=len(loader))
    channels_last = prefers_channels_last(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return _Run(model, place, name, recipe, dataset, folder, epochs, warmup_epochs, seed, definition, mixup, loader,
                optimizer, scheduler, criterion_for(recipe, mixup), channels_last)


def resumed(run):
    """(finished epochs, steps, log) of the run's `_last` checkpoint, whose weights, optimizer, scheduler and RNG
    states it loads; refused if it was made with another definition."""
    checkpoint = torch.load(run.last, map_location="cpu", weights_only=True)
    check_resumable(checkpoint, run.definition, run.last)
    run.model.load_state_dict(checkpoint["state_dict"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    finished = checkpoint["epoch"]
    if checkpoint["world_size"] == run.place.world_size:
        set_rng_state(checkpoint["rng"][run.place.rank])
    else:  # another number of processes: each step still sees the same images, augmented otherwise
        seed_everything(run.seed + run.place.rank + 1000 * finished)
    return finished, checkpoint["step"], checkpoint["log"]


def train_epoch(run, network, epoch, step, *, progress):
    """Epoch `epoch` (from 0) of training, summed over ranks; returns (steps done so far, the log's row of it)."""
    place, model = run.place, run.model
    run.loader.sampler.set_epoch(epoch)
    run.loader.generator.manual_seed(run.seed + 1000 * epoch + place.rank)
    model.train()
    start = time.perf_counter()
    step, totals, lr = one_epoch(network, model, run.loader, run.optimizer, run.scheduler, run.criterion, run.mixup,
                                 run.recipe, step, warmup_epochs=run.warmup_epochs, channels_last=run.channels_last,
                                 progress=progress)
    if place.world_size > 1:
        dist.all_reduce(totals)
        for buffer in model.buffers():  # BatchNorm statistics: rank 0's, as the checkpoint will hold
            dist.broadcast(buffer, 0)
    return step, {"epoch": epoch + 1, "phase": "warmup" if epoch < run.warmup_epochs else "train", "lr": lr,
                  "train_loss": (totals[0] / totals[1]).item(),
                  "train_throughput": totals[1].item() / (time.perf_counter() - start)}


def test_metrics(model, test_set, recipe, workers):
    """The log's test columns: `evaluate`'s metrics on `test_set`, each named test_{metric}."""
    metrics = evaluate(model, test_set, batch_size=recipe.eval_batch_size, workers=data.worker_count(workers)).row()
    return {f"test_{key}": value for key, value in metrics.items()}


def save_epoch(run, epoch, step, log):
    """The checkpoint `_last` and the log after epoch `epoch` (from 0), written by rank 0 (every rank's RNG states
    gathered into it); at the end of warm-up and of training, also their copies."""
    rngs = gathered(rng_state(), run.place)
    if run.place.rank != 0:
        return
    folder, name, dataset = run.folder, run.name, run.dataset
    checkpoint = {"name": name, "state_dict": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                  "epoch": epoch + 1, "step": step, "scheduler": run.scheduler.state_dict(),
                  "recipe": asdict(run.recipe), "seed": run.seed, "world_size": run.place.world_size, "rng": rngs,
                  "metrics": log[-1], "log": log, "definition": run.definition}
    save_checkpoint(checkpoint, run.last)
    write_log(log, log_path(folder, name, dataset))
    if epoch + 1 == run.warmup_epochs:
        keep_copy(run.last, checkpoint_path(folder, name, dataset, "warmup"))
    if epoch + 1 == run.warmup_epochs + run.epochs:
        keep_copy(run.last, checkpoint_path(folder, name, dataset))


# The experiment: the classification notebook and `python -m helpers.train` both read `Config`

@dataclass
class Training(Experiment):
    """How a model is trained with the authors' recipe, and on what: shared by the training and the build-up."""
    dataset: str = setting("cifar100", "the dataset", choices=tuple(data.NUM_CLASSES))
    recipe: str = setting("strong", "the authors' training recipe: strong (AdamW, cosine) or weak (SGD, steps)",
                          choices=tuple(RECIPES))
    epochs: int | None = setting(None, "epochs after warm-up (None: the recipe's, 300 for the strong one)", smoke=1,
                                 check=positive)
    warmup_epochs: int | None = setting(None, "warm-up epochs (None: the recipe's, 5 for the strong one)", smoke=0)
    batch_size: int | None = setting(None, "global batch size over all processes (None: the recipe's; the learning "
                                     "rate scales with it)", smoke=8, check=positive)
    images: int | None = setting(None, "training images, the first of a seeded shuffle (None: all)", smoke=8,
                                 check=positive)
    test_images: int | None = setting(None, "test images evaluated, from the first (None: all)", smoke=16,
                                      check=positive)
    eval_batch_size: int = setting(256, "images per evaluation batch", identity=False, check=positive)
    seed: int = setting(0, "initial weights, data order and augmentations")
    workers: int | None = setting(None, "data-loading processes (None: up to 4)", identity=False, smoke=0)
    folder: str = setting("checkpoints/trained", "training checkpoints and log (a smoke run uses "
                          "RESULTS/smoke/trained)", identity=False)


@dataclass
class Config(Training, Pretrained):
    """The accuracy table of `models` (official weights or `checkpoints`) and the training of `model`."""
    models: list[str] = setting(["resnet_50", "swin_ti", "pit_ti", "vit_ti"],
                                "models evaluated with their official weights (or the files of `checkpoints`)",
                                identity=False)
    model: str = setting("alternet_50", "the model to train: a specification (registry name, timm:NAME, "
                         "file.py:FUNCTION)", check=lambda text: models_module.resolve(text) and None)
    model_args: dict[str, object] = setting({}, "keywords for helpers.models.create (on the command line: depth=1 "
                                            "embed_dim=64)")


def training_folder(config):
    """Where `config`'s training writes: `folder`, or for a smoke run smoke/trained in the results folder (so fresh
    weights never land beside real checkpoints)."""
    return config.results_folder() / "smoke" / "trained" if config.smoke else Path(config.folder)


def test_set_of(config, spec):
    """The test set of `config` at the input size and normalisation of the model `spec` (synthetic when smoke)."""
    if spec.imagenet:
        raise ValueError(f"{spec.name} classifies ImageNet: the authors' recipe trains and tests on {config.dataset}; "
                         "give a CIFAR model (a registry name, timm:NAME without a pretrained tag, or your own file).")
    return data.test_images(spec, config.test_images, root=config.data_root, mirror=config.mirror, smoke=config.smoke,
                            name=config.dataset, seed=config.seed + 1)


def datasets_of(config, spec=None):
    """(training set with the recipe's transform, test set) at the input size of the model `spec` (sized; default:
    the model to train, sized by one build), or synthetic stand-ins when smoke."""
    if spec is None:
        spec = models_module.resolve(config.model)
        spec = spec.sized(build(spec, RECIPES[config.recipe], data.NUM_CLASSES[config.dataset], **config.model_args))
    test_set = test_set_of(config, spec)
    train_set = data.training_set(config, RECIPES[config.recipe].train_transform(config.dataset, spec),
                                  config.dataset, spec=spec)
    return train_set, test_set


def accuracy_table(config, *, progress=True):
    """One row per evaluated model (`models`, then the other names of `checkpoints`): the paper's accuracy beside
    ours, NLL, ECE, Acc-90, Freq-90 and throughput on this device."""
    config = config.resolved()
    device, rows = pick_device(), []
    for name in config.names():
        net = config.pretrained(name, device)
        spec = config.spec(name).sized(net)
        test_set = test_set_of(config, spec)
        metrics = evaluate(net, test_set, batch_size=config.eval_batch_size, workers=data.worker_count(config.workers),
                           progress=progress)
        paper = spec.entry.paper_accuracy if spec.entry else None
        rows.append({"model": name, "paper_accuracy": paper, **metrics.row()})
    return pd.DataFrame(rows)


def run(config, *, progress=True):
    """Train `config.model` with its recipe (resuming its last checkpoint); returns (model, log) on rank 0. Its files
    are named after the specification (`Spec.slug`: `cifar100_timm-convnext_atto.pth.tar`)."""
    config = config.resolved()
    spec = models_module.resolve(config.model)
    recipe = RECIPES[config.recipe]
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build(spec, recipe, data.NUM_CLASSES[config.dataset], **config.model_args).to(pick_device())
    train_set, test_set = datasets_of(config, spec.sized(model))
    log = train(model, train_set, test_set, name=spec.slug, recipe=recipe, dataset=config.dataset,
                folder=training_folder(config), epochs=config.epochs, warmup_epochs=config.warmup_epochs,
                batch_size=config.batch_size, seed=config.seed, workers=config.workers, progress=progress,
                extra={"model_args": config.model_args, "smoke": config.smoke})
    return model, log


def main(argv=None):
    """`[torchrun --nproc-per-node N] python -m helpers.train --model alternet_50`: distributed data parallel on N
    processes (nccl on CUDA, gloo on the CPU)."""
    config = experiment.parse(Config, argv, "Train a model with the authors' recipe (resumable).",
                              prog="python -m helpers.train")
    place = rank()
    if place.world_size > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        _, log = run(config)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if log is not None:
        print(log.tail(1).to_string(index=False))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
