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

HSIC sums add over batches, so a batch is the unit of the stored sweep (`run`, `python -m helpers.cka`): its row
holds the batch's HSIC of every pair of blocks of every pair of models, bound to the definition (`Config`: models,
weights, data, batch size, class token). Reruns resume, `torchrun` ranks share the batches, and the CKA is summed
from the rows in batch order, so it is the same bits whichever ranks computed them.
"""
import warnings
from dataclasses import dataclass
from itertools import combinations_with_replacement

import pandas as pd
import torch
from einops import rearrange
from torch.utils.data import DataLoader

from helpers import data, experiment
from helpers.blocks import Blocks, split
from helpers.common import pick_device
from helpers.experiment import Pretrained, positive, setting
from helpers.sweep import fill

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


GRAM_CHUNK_BYTES = 4 << 20  # on a CPU, the float64 copy of the features is made this much at a time


def gram(features: torch.Tensor) -> torch.Tensor:
    """The linear Gram matrix `X Xᵀ` of `B, D` features, in float64 (MPS has no float64: it is computed there in
    float32 and moved to the CPU). On a CPU the float64 copy of the features is made a few columns at a time and each
    part's product added up: the copy stays in the cache, and no copy of the whole (a block's output, twice its size)
    is allocated, which next to a forward pass costs as much as the product (benchmarks/cka.py)."""
    if features.device.type == "mps":
        return (features @ features.T).cpu().double()
    if features.device.type != "cpu" or features.dtype == torch.float64:
        features = features.double()
        return features @ features.T
    examples, dimensions = features.shape
    step = max(1, GRAM_CHUNK_BYTES // (8 * examples))
    part = features.new_empty(examples, min(step, dimensions), dtype=torch.float64)
    result = features.new_zeros(examples, examples, dtype=torch.float64)
    for start in range(0, dimensions, step):
        columns = part[:, :min(step, dimensions - start)]
        columns.copy_(features[:, start:start + step])  # exact: every float32 is a float64
        result.addmm_(columns, columns.T)
    return result


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

    def best_matches(self):
        """For each block of `a`, the block of `b` most similar to it: `block`, `kind`, `match`, `match_kind`, `cka`."""
        values, index = self.cka.max(dim=1)
        return pd.DataFrame({"block": self.names_a, "kind": self.kinds_a, "match": [self.names_b[i] for i in index],
                             "match_kind": [self.kinds_b[i] for i in index], "cka": values.numpy()})


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

    def hsic(self, images):
        """{pair: HSIC_1 of every block of a (rows) with every block of b} for one batch of `n` >= 4 images: a tensor
        for every model, or a dict of the same images prepared for each model (its input size and normalisation)."""
        images = images if isinstance(images, dict) else dict.fromkeys(self.blocks, images)
        n = next(iter(images.values())).shape[0]
        flat = {name: self.centered_grams(name, images[name]) for name in self.blocks}
        return {(a, b): (flat[a] @ flat[b].T).cpu() / (n * (n - 3)) for a, b in self.pairs}

    def add(self, images):
        """Add one batch of `n` images (`n` the same for every batch; a tensor or a dict, as `hsic` takes)."""
        self.add_hsic(self.hsic(images), next(iter(images.values())).shape[0] if isinstance(images, dict)
                      else images.shape[0])

    def add_hsic(self, hsic, n):
        if self.batch_size is not None and n != self.batch_size:
            raise ValueError(f"the minibatch estimator sums batches of one size: this one has {n} examples, "
                             f"the first had {self.batch_size}")
        for pair, values in hsic.items():
            self.cross[pair] += values
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


def transposed(similarity):
    s = similarity
    return Similarity(s.cka.T, s.names_b, s.names_a, s.kinds_b, s.kinds_a, s.batches, s.batch_size)


def minibatch_cka(models, batches, *, class_token="keep"):
    """`MinibatchCKA(models)` accumulated over `batches` (images, (images, labels) pairs, or a dict of each model's
    images, all of one size n >= 4), in memory. A batch of another size than the first is left out with a warning."""
    accumulator = MinibatchCKA(models, class_token=class_token)
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        size = len(next(iter(images.values()))) if isinstance(images, dict) else len(images)
        if accumulator.batch_size is not None and size != accumulator.batch_size:
            warnings.warn(f"left out a batch of {size} examples: the estimator sums batches of "
                          f"{accumulator.batch_size}")
            continue
        accumulator.add(images)
    return accumulator


def cka(model_a, model_b, batches, *, class_token="keep"):
    """CKA between every block of `model_a` and every block of `model_b` (the same model is compared with itself
    from one forward pass per batch); see `minibatch_cka`."""
    models = {"a": model_a} if model_b is model_a else {"a": model_a, "b": model_b}
    accumulator = minibatch_cka(models, batches, class_token=class_token)
    return accumulator.similarity("a", "b" if "b" in models else "a")


# The stored sweep: one row per batch, for the notebook and `python -m helpers.cka` alike

@dataclass
class Config(Pretrained):
    """CKA between every pair of blocks of every pair of `models`, on the CIFAR-100 test set."""
    models: list[str] = setting(["vit_ti", "resnet_50"], "models (every pair, and each model with itself, is compared)",
                                identity=False)
    batch_size: int = setting(250, "the fixed minibatch size n of the estimator (n >= 4)", smoke=8,
                              check=lambda n: None if n >= 4 else "must be at least 4 (the unbiased HSIC)")
    examples: int = setting(10000, "CIFAR-100 test images used, from the first (a partial last batch is left out)",
                            smoke=16, check=positive)
    class_token: str = setting("keep", "what ViT/PiT token blocks contribute: all tokens, none of the class tokens, "
                               "or only them", choices=CLASS_TOKEN)
    workers: int | None = setting(None, "data-loading processes (None: up to 4)", identity=False, smoke=0)


def test_images(config, nets):
    """{model: the first `config.examples` CIFAR-100 test images through that model's transform} (synthetic ones
    when smoke): the same images for every model, each at its own input size and normalisation (its split's
    sized spec, `nets[model].spec`)."""
    return {name: data.test_images(nets[name].spec, config.examples, root=config.data_root, mirror=config.mirror,
                                   smoke=config.smoke) for name in config.models}


def nets(config, device=None):
    """The split models of `config`, by name, on `device`."""
    return {name: split(config.pretrained(name, device), config.spec(name)) for name in config.models}


def run(config, *, progress=True):
    """This rank's unfinished batches of `config` computed and stored; returns the one `experiment.Outcome`."""
    config = config.resolved()
    device = pick_device()
    models = nets(config, device)
    images = test_images(config, models)
    count = min(len(i) for i in images.values())
    if count < config.batch_size:
        raise ValueError(f"{count} images make no batch of {config.batch_size}")
    name = "+".join(config.spec(n).slug for n in config.models)
    table = experiment.table(config, "cka", name, ("batch",), data={n: data.fingerprint(i) for n, i in images.items()},
                             weights={n: experiment.weights_digest(m) for n, m in models.items()})
    units = [{"batch": b} for b in range(count // config.batch_size)]
    accumulator = MinibatchCKA(models, class_token=config.class_token)
    todo = table.todo(units)
    sampler = [range(u["batch"] * config.batch_size, (u["batch"] + 1) * config.batch_size) for u in todo]
    loaders = {n: iter(DataLoader(i, batch_sampler=sampler, num_workers=data.worker_count(config.workers),
                                  pin_memory=device.type == "cuda")) for n, i in images.items()}

    def compute(unit):
        batch = {n: next(loader)[0] for n, loader in loaders.items()}
        hsic = accumulator.hsic(batch)
        return {"batch": unit["batch"], "size": config.batch_size,
                "hsic": {f"{a}|{b}": values.flatten().tolist() for (a, b), values in hsic.items()}}

    fill(table, units, compute, todo=todo, desc=f"CKA {table.folder.name}", progress=progress)
    return [experiment.Outcome("+".join(config.models), table, units)]


def similarities(outcome, models, *, class_token="keep"):
    """The `MinibatchCKA` of a stored run (`run(config)[0]`): the finished batches' HSIC rows summed in batch order,
    so the result does not depend on which ranks computed them. `models`: the same split models (`nets(config)`)."""
    accumulator = MinibatchCKA(models, class_token=class_token)
    for row in sorted(outcome.table.frame(outcome.units).to_dict("records"), key=lambda r: r["batch"]):
        hsic = {}
        for key, values in row["hsic"].items():
            a, b = key.split("|")
            hsic[a, b] = torch.tensor(values, dtype=torch.float64).view(len(accumulator.blocks[a]),
                                                                        len(accumulator.blocks[b]))
        accumulator.add_hsic(hsic, row["size"])
    return accumulator


def main(argv=None):
    return experiment.main(Config, run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
