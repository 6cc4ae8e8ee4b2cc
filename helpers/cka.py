"""Layer-by-layer representation similarity: linear CKA between every block of one model and every block of
another (Raghu et al., NeurIPS 2021, "Do vision transformers see like convolutional neural networks?"), beyond
the figures of Park & Kim (ICLR 2022).

For blocks with features X (n x p) and Y (n x q) on a batch of n examples, K = X Xᵀ and L = Y Yᵀ are the linear
Gram matrices. HSIC is the unbiased estimator of Song et al. (2012): with the diagonals of K and L zeroed,

    HSIC_1(K, L) = [tr(KL) + 1ᵀK1 1ᵀL1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀKL1] / (n(n-3)),

and CKA is the minibatch estimator of Nguyen, Raghu and Kornblith (ICLR 2021), summed over batches of one fixed
size n >= 4 in float64:

    CKA(X, Y) = Σ_b HSIC_1(K_b, L_b) / sqrt(Σ_b HSIC_1(K_b, K_b) · Σ_b HSIC_1(L_b, L_b)).

HSIC_1 is bilinear, so it is computed as an inner product: each Gram matrix is "unbiased-centred" once per batch
(diagonal zeroed, row and column means of the off-diagonal part removed so that <K̃, L̃> / (n(n-3)) equals the
formula above), and one matrix product of the flattened centred Grams gives every pair of blocks of every pair of
models. Each batch costs one forward pass per model and one Gram matrix per block.

A block's output is flattened per example; the order of features does not matter to a linear Gram matrix, so
token grids, channels-first and channels-last maps need no reordering. `class_token` chooses what a token block
(`Block.layout == "BNC"` with `prefix_tokens`, i.e. ViT and PiT) contributes: "keep" all tokens, "drop" the class
tokens, or "class" only the class tokens; blocks without class tokens (ResNet, Swin, heads) always give their
whole output.

Under `torchrun` each rank takes every `world_size`-th batch and keeps its own resumable file of sums; HSIC sums
add over batches, so `merge` adds the ranks' files into the CKA of all the batches (`main` does it on rank 0).
"""
import argparse
import math
import warnings
from dataclasses import dataclass
from itertools import combinations_with_replacement
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from einops import rearrange
from tqdm.auto import tqdm

import helpers
from helpers import checkpoints, data
from helpers.blocks import Blocks, split
from helpers.common import Rank, rank
from helpers.losses import norm_sums

CLASS_TOKEN = ("keep", "drop", "class")


def flatten(block, output, *, class_token="keep"):
    """`output` of `block` as one row of features per example, `B, D`."""
    if class_token not in CLASS_TOKEN:
        raise ValueError(f"class_token={class_token!r}; choose one of {CLASS_TOKEN}")
    if block.layout == "BNC" and block.prefix_tokens:
        if class_token == "drop":
            output = output[:, block.prefix_tokens:]
        elif class_token == "class":
            output = output[:, :block.prefix_tokens]
    return output.flatten(1)  # b ... -> b (...)


def gram(features):
    """The linear Gram matrix `X Xᵀ` of `B, D` features, in float64 (MPS has no float64: it is computed there in
    float32 and moved to the CPU)."""
    if features.device.type == "mps":
        return (features @ features.T).cpu().double()
    features = features.double()
    return features @ features.T


def unbiased_centered(grams):
    """`..., n, n` Gram matrices centred so that `<K̃, L̃> / (n(n-3))` is the unbiased HSIC_1(K, L)."""
    n = grams.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs batches of at least 4 examples, got {n}")
    off_diagonal = 1 - torch.eye(n, dtype=grams.dtype, device=grams.device)
    grams = grams * off_diagonal
    means = grams.sum(-1) / (n - 2)
    means = means - means.sum(-1, keepdim=True) / (2 * (n - 1))
    return (grams - means[..., :, None] - means[..., None, :]) * off_diagonal


@dataclass
class Similarity:
    """CKA between every block of model `a` (rows) and of model `b` (columns)."""
    cka: torch.Tensor  # len(names_a), len(names_b); float64
    names_a: list
    names_b: list
    kinds_a: list
    kinds_b: list
    batches: int
    batch_size: int

    def table(self):
        """The CKA matrix with block names: a column `block` of `a`'s blocks, then one column per block of `b`."""
        table = pd.DataFrame(self.cka.numpy(), columns=self.names_b)
        table.insert(0, "block", self.names_a)
        return table


class MinibatchCKA:
    """Sums of unbiased HSIC over batches, for every pair of blocks of every pair of `models` (a dict of name ->
    model or `Blocks`; a model is compared with itself and with every other). `add(images)` takes one batch;
    `similarity(a, b)` is the CKA so far."""

    def __init__(self, models, *, class_token="keep"):
        if class_token not in CLASS_TOKEN:
            raise ValueError(f"class_token={class_token!r}; choose one of {CLASS_TOKEN}")
        self.blocks = {name: m if isinstance(m, Blocks) else split(m) for name, m in models.items()}
        self.class_token = class_token
        self.pairs = list(combinations_with_replacement(self.blocks, 2))  # (a, b) in the dict's order, a before b
        self.cross = {pair: torch.zeros(len(self.blocks[pair[0]]), len(self.blocks[pair[1]]), dtype=torch.float64)
                      for pair in self.pairs}  # Σ_b HSIC_1 between the blocks of a and of b; diagonal pairs hold
        self.batches, self.batch_size = 0, None  # the self-HSICs Σ_b HSIC_1(K_b, K_b) on their diagonals

    @torch.no_grad()
    def centered_grams(self, name, images):
        """One forward pass of model `name`; its blocks' unbiased-centred Grams flattened, `blocks, n*n`."""
        blocks = self.blocks[name]
        device = next(iter(blocks.parameters()), images).device
        features = blocks.features(images.to(device))
        grams = torch.stack([gram(flatten(block, output, class_token=self.class_token))
                             for block, output in zip(blocks, features)])  # blocks, n, n
        return rearrange(unbiased_centered(grams), "l i j -> l (i j)")

    def add(self, images):
        """Add one batch of `n` images (`n` the same for every batch)."""
        n = images.shape[0]
        if self.batch_size is not None and n != self.batch_size:
            raise ValueError(f"the minibatch estimator sums batches of one size: this one has {n} examples, "
                             f"the first had {self.batch_size}")
        flat = {name: self.centered_grams(name, images) for name in self.blocks}
        scale = n * (n - 3)
        for a, b in self.pairs:
            self.cross[a, b] += (flat[a] @ flat[b].T).cpu() / scale
        self.batch_size, self.batches = n, self.batches + 1

    def similarity(self, a, b):
        """CKA between the blocks of model `a` (rows) and of model `b` (columns); NaN before any batch."""
        if (a, b) not in self.cross:
            if (b, a) not in self.cross:
                raise KeyError(f"no models {a!r} and {b!r}; have {list(self.blocks)}")
            return transposed(self.similarity(b, a))
        self_a, self_b = self.cross[a, a].diagonal(), self.cross[b, b].diagonal()
        cka = self.cross[a, b] / torch.sqrt(self_a[:, None] * self_b[None, :])
        blocks_a, blocks_b = self.blocks[a], self.blocks[b]
        return Similarity(cka, [b.name for b in blocks_a], [b.name for b in blocks_b], blocks_a.kinds, blocks_b.kinds,
                          self.batches, self.batch_size)

    def state_dict(self):
        return {"cross": [[a, b, sums] for (a, b), sums in self.cross.items()], "batches": self.batches,
                "batch_size": self.batch_size, "class_token": self.class_token,
                "blocks": {name: [b.name for b in blocks] for name, blocks in self.blocks.items()},
                "weights": {name: norm_sums(blocks.parameters())[1] for name, blocks in self.blocks.items()}}

    def load_state_dict(self, state, *, source="the saved state"):
        mine = self.state_dict()
        for key in ("class_token", "blocks"):
            if state[key] != mine[key]:
                raise ValueError(f"{source} was computed with {key}={state[key]!r}, not {mine[key]!r}; "
                                 "delete it or choose another path")
        for name, l2 in mine["weights"].items():  # the sum of parameter norms tells other weights apart
            if not math.isclose(state["weights"][name], l2, rel_tol=1e-6):
                raise ValueError(f"{source} was computed with other weights of {name!r}; "
                                 "delete it or choose another path")
        self.cross = {(a, b): sums for a, b, sums in state["cross"]}
        self.batches, self.batch_size = state["batches"], state["batch_size"]


def transposed(similarity):
    s = similarity
    return Similarity(s.cka.T, s.names_b, s.names_a, s.kinds_b, s.kinds_a, s.batches, s.batch_size)


def shard_path(path, rank_info):
    """Where one rank keeps its sums: `path` itself for a single process, else e.g. `cka.rank0-of-2.pt`, so
    runs with different world sizes never mix."""
    path, r, w = Path(path), rank_info.rank, rank_info.world_size
    return path if w == 1 else path.with_name(f"{path.stem}.rank{r}-of-{w}{path.suffix}")


def minibatch_cka(models, batches, *, class_token="keep", path=None, rank_info=None, progress=True):
    """Accumulate `MinibatchCKA(models)` over `batches` (images, or (images, labels) pairs, all of one size).

    With `path`, the sums are saved there after every batch and a rerun resumes from them, skipping as many
    batches as were done: give it the same data in the same order (the first batch is checked). A batch of
    another size than the first (a dataset that is not a multiple of the batch size) is left out with a warning.

    Under `torchrun` (or with `rank_info`, a `helpers.sweep.Rank`) only this rank's batches, those whose index
    modulo `world_size` is `rank`, are added, and the sums go to `shard_path(path, rank_info)`; every rank still
    iterates over all batches (loading is cheap next to the forward passes). `merge` adds the ranks' files.
    """
    share = rank_info or rank()
    path = None if path is None else shard_path(path, share)
    accumulator = MinibatchCKA(models, class_token=class_token)
    state = read(accumulator, path) if path is not None and path.exists() else {"read": 0, "first_sum": None}

    def save():
        if path is not None:
            save({"sums": accumulator.state_dict(), "stream": state}, path)

    total = len(batches) if hasattr(batches, "__len__") else None
    for index, batch in enumerate(tqdm(batches, total=total, desc="CKA batches", disable=not progress)):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if index == 0:  # every rank reads the first batch: it fixes the batch size and identifies the data
            first_sum, size = images.double().sum().item(), images.shape[0]
            if state["first_sum"] is not None and not math.isclose(first_sum, state["first_sum"], rel_tol=1e-9):
                raise ValueError(f"{path} was computed on other data (its first batch differs: other images, order "
                                 "or batch size); delete it to start again or give the same batches in the same order")
            state["first_sum"] = first_sum
        mine = index >= state["read"] and index % share.world_size == share.rank
        if mine and images.shape[0] != size:
            warnings.warn(f"left out a batch of {images.shape[0]} examples: the estimator sums batches of {size}")
        elif mine:
            accumulator.add(images)
        state["read"] = max(state["read"], index + 1)
        if mine:
            save()
    save()  # with the whole stream read, which `merge` checks
    return accumulator


def read(accumulator, path):
    """Load the sums saved at `path` into `accumulator`; return their stream (batches read, first batch's sum)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    accumulator.load_state_dict(saved["sums"], source=str(path))
    return saved["stream"]


def merge(models, path, *, world_size, class_token="keep"):
    """The sums of all `world_size` ranks' files of a finished `minibatch_cka(models, ..., path=path)` run added
    up, as one `MinibatchCKA` (`world_size=1` reads `path` itself)."""
    total, streams = MinibatchCKA(models, class_token=class_token), []
    for r in range(world_size):
        shard = shard_path(path, Rank(r, world_size, r))
        if not shard.exists():
            raise FileNotFoundError(f"no {shard}: rank {r} of {world_size} has not run; rerun with "
                                    f"--nproc-per-node {world_size} (finished batches are kept)")
        part = MinibatchCKA(total.blocks, class_token=class_token)
        streams.append(read(part, shard))
        for pair, sums in part.cross.items():
            total.cross[pair] += sums
        total.batches, total.batch_size = total.batches + part.batches, total.batch_size or part.batch_size
    if any(stream != streams[0] for stream in streams):  # also rules out other batch sizes: other first batches
        raise ValueError(f"the ranks' files of {path} read other streams of batches: {streams}; a rank was stopped "
                         "early or ran on other data. Rerun the same command to finish, or delete them")
    return total


def cka(model_a, model_b, batches, *, class_token="keep", path=None, rank_info=None, progress=True):
    """CKA between every block of `model_a` and every block of `model_b` (the same model is compared with itself
    from one forward pass per batch); see `minibatch_cka` (under torchrun: this rank's share only)."""
    models = {"a": model_a} if model_b is model_a else {"a": model_a, "b": model_b}
    accumulator = minibatch_cka(models, batches, class_token=class_token, path=path, rank_info=rank_info,
                                progress=progress)
    return accumulator.similarity("a", "b" if "b" in models else "a")


def main(argv=None):
    parser = argparse.ArgumentParser(description="CKA of every pair of blocks of --models on the CIFAR-100 test "
                                     "set, as cka_A_vs_B.csv (torchrun --nproc-per-node N splits the batches)")
    parser.add_argument("--models", nargs="+", default=["vit_ti", "resnet_50"])
    parser.add_argument("--batch-size", type=int, default=250, help="the fixed minibatch size n (n >= 4)")
    parser.add_argument("--examples", type=int, default=10000, help="test images used, from the first")
    parser.add_argument("--class-token", choices=CLASS_TOKEN, default="keep")
    parser.add_argument("--results", default="results")
    parser.add_argument("--checkpoint-root", default="checkpoints")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--smoke", action="store_true", help="fresh weights, <= 16 synthetic images, batches <= 8")
    args = parser.parse_args(argv)
    share, device = rank(), helpers.pick_device()
    if args.smoke:
        args.batch_size, args.examples = min(args.batch_size, 8), min(args.examples, 16)
    dataset = (data.synthetic(args.examples) if args.smoke else
               data.dataset("cifar100", args.data_root, train=False, transform=data.test_transform("cifar100")))
    dataset = torch.utils.data.Subset(dataset, range(min(args.examples, len(dataset))))
    nets = {}
    for name in args.models:
        nets[name] = split(checkpoints.pretrained(name, args.checkpoint_root, smoke=args.smoke, map_location=device))
    path = Path(args.results) / f"cka_{'_'.join(args.models)}_{args.class_token}{'_smoke' if args.smoke else ''}.pt"
    loader = data.loader(dataset, args.batch_size, workers=0 if args.smoke else None)
    # The ranks' files (kept anyway for resuming; in one shared folder, as for every sweep) are the merge's only
    # input, so `merge` gives the same tables here and in a notebook after the run, with no all_reduce beside it.
    # The process group is just the barrier before rank 0 reads them (gloo: a barrier needs no GPU).
    distributed = share.world_size > 1
    if distributed:
        dist.init_process_group("gloo")
    minibatch_cka(nets, loader, class_token=args.class_token, path=path, rank_info=share)
    if distributed:
        dist.barrier()
    if share.rank == 0:
        accumulator = merge(nets, path, world_size=share.world_size, class_token=args.class_token)
        for a, b in accumulator.pairs:
            accumulator.similarity(a, b).table().to_csv(Path(args.results) / f"cka_{a}_vs_{b}.csv", index=False)
        print(f"{path}: {accumulator.batches} batches of {accumulator.batch_size} over {share.world_size} rank(s)")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
