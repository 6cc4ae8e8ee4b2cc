"""Split any model into the sequence of blocks every analysis walks through, by one rule over what it computes.

`split(model)` returns `Blocks`: the model itself (`Blocks(x)` is `model(x)`, so it is exact by construction) and
the list of its `Block`s, in order. A block is a place in the model's own forward pass where the stream of features
can be read: removable hooks record each block's output there (`Blocks.features`), and the lesion study zeroes a
residual branch there (`Blocks.lesioned`). Nothing is copied and no forward is rewritten.

The rule, applied to one probe forward pass (`helpers.trace`), from the model down:

- A **residual branch** is a child module call whose output, through reshapes and scalings only (layer scale,
  drop-path), is added to another activation computed from the same stream (the shortcut: the stream itself, or a
  projection of it) and carries more weights than it. A module whose adds are a chain of such branches, each one
  computed from the previous sum, is a residual block; with two or more (a pre-norm transformer block, x + attn(...)
  then x + mlp(...)) each branch is its own block, whose output is read where the next branch's first module takes
  the stream. Removing a block zeroes its branch's output: the stream passes through its shortcut.
- A branch's **kind** is `msa` when it attends (weights computed from the input mix the positions: the rule stated
  in `split`'s docstring), `conv` when it mixes neighbouring positions otherwise (a convolution wider than 1, a
  pooling window: ConvNeXt's depthwise conv, PoolFormer's pooling, FastViT's RepMixer), and `mlp` when it mixes
  channels only (or tokens through a Linear, Mixer's token MLP).
- A module that is not residual is followed into its children when they are a sequence (each child's output is a
  cut: every path from the module's input to its output passes through it); otherwise it is one unit (a dense block,
  a MobileViT block). Units that are not residual blocks are grouped: a unit with weights (a convolution or linear
  layer) starts a group and the norms, activations and poolings after it join it; a unit that attends is its own
  `msa` block. The first group is the `embed`; the groups from the first whose output is no longer a feature map
  (pooled, or one position) are the `head`; a group in between is `pool` when it subsamples and `conv`, `msa` or
  `mlp` by what it computes.
- A block **downsamples** when its map has fewer positions than the previous block's; the stage ends are the blocks
  followed by one that downsamples, and the last.
- A timm model's split is checked against its own `forward_intermediates`: every intermediate it returns must be the
  map of one of our blocks. Where it is not (Hiera keeps its tokens in mask-unit order), or where no block can be
  found, the analyses run at stage level on `forward_intermediates`, with a printed note (`Blocks.stage_level`).

Your own model can declare its blocks: give it an attribute `analysis_blocks`, an ordered dict of module names to
kinds, e.g. `{"stem": "embed", "stages.0": "conv", "stages.1": "msa"}`; the head (the logits) is added after them.
`helpers.anatomy` (residual branches, units), `helpers.attention` (what attends) and `helpers.kinds` apply the rule.
"""
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn

from helpers import anatomy
from helpers import trace as tracing
from helpers.attention import attends
from helpers.common import evaluating
from helpers.kinds import Block, Site, collapse_notes, declared_blocks, rule_blocks, unfaithful  # noqa: F401 (Site)
from helpers.spec import PROBE_BATCH, Spec


class Blocks(nn.Module):
    """A model and its blocks; `Blocks(x)` is `model(x)`. It iterates, indexes and counts like the list of blocks."""

    def __init__(self, model, blocks, *, stage_level=False, spec=None):
        super().__init__()
        self.model = model
        self.blocks = list(blocks)
        self.stage_level = stage_level  # True: stage outputs of forward_intermediates, nothing removable
        self.spec = spec  # the sized `helpers.spec.Spec` of the model: its input size, where from, normalisation

    def forward(self, x):
        return self.model(x)

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, index):
        return self.blocks[index]

    @property
    def kinds(self):
        return [block.kind for block in self.blocks]

    @property
    def layers(self):
        """The blocks on the depth axis: all but the head (the logits), in order, one per `feature_maps` entry."""
        return [block for block in self.blocks if block.kind != "head"]

    def depths(self):
        """The normalised depth of each of `layers`: block i of n sits at i / (n - 1), from 0 to 1."""
        return normalized_depth(len(self.layers))

    def stage_ends(self):
        """Indices in `layers` of the blocks that end a stage: those followed by a subsampling block, and the last."""
        layers = self.layers
        return [i for i in range(len(layers)) if i + 1 == len(layers) or layers[i + 1].downsamples]

    def features(self, x):
        """The output of every block, in order, from one forward pass (the last one is the model's output)."""
        outputs = {}
        with self.reading(lambda i, output: outputs.__setitem__(i, output)):
            logits = self.model(x)
        return [outputs[i] if block.kind != "head" else logits for i, block in enumerate(self.blocks)]

    def feature_maps(self, x):
        """Every block's output but the head's (the logits), as `B, C, H, W` maps."""
        return [block.to_map(f) for block, f in zip(self.blocks, self.features(x)) if block.kind != "head"]

    @torch.no_grad()
    def average(self, batches, statistic):
        """For every non-head block, the mean over all images of `statistic(feature_map)`, where `statistic`
        returns the mean over its batch: a tensor, or a tuple of tensors (then one list per tensor, e.g.
        `diagonals, variances = blocks.average(batches, featuremaps.diagonal_and_variance)`). One forward pass per
        batch, the statistic taken as each block's output appears and summed on the device (no map is kept); a
        statistic in two steps (`helpers.featuremaps.MapStatistic`) is `read` there and `finish`ed for all blocks
        after the pass. `batches` yields image tensors or (images, labels)."""
        device = next(self.parameters()).device
        read, finish = two_steps(statistic)
        layers = [i for i, block in enumerate(self.blocks) if block.kind != "head"]
        sums, count = [None] * len(layers), 0
        reads = {}
        with self.reading(lambda index, output: reads.__setitem__(index, read(self.blocks[index].to_map(output))),
                          maps_only=True):
            for batch in batches:
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                self.model(images.to(device))
                values = finish([reads.pop(i) for i in layers])
                sums = [weighted_sum(total, value, len(images)) for total, value in zip(sums, values)]
                count += len(images)
        return averages(sums, count)

    def reading(self, record, *, maps_only=False):
        """Hooks that call `record(block index, output)` as each block's output appears in a forward pass."""
        sites = {block.site: i for i, block in enumerate(self.blocks) if block.site is not None
                 and not (maps_only and block.kind == "head")}
        return hooked(self.model, {site: (lambda value, i=i: record(i, value)) for site, i in sites.items()})

    def lesioned(self, name):
        """A context in which the model runs with the residual branch of the block `name` zeroed (its output is
        its shortcut's); the model itself is left unchanged."""
        names = [block.name for block in self.blocks]
        if name not in names:
            raise KeyError(f"no block named {name!r}; the blocks are {names}")
        block = self.blocks[names.index(name)]
        if not block.removable:
            raise ValueError(f"{block.name} is a {block.kind} block without a residual branch to remove; "
                             f"removable are the blocks of lesions(model)")
        return hooked(self.model, {block.branch: torch.zeros_like}, replace=True)


def normalized_depth(n):
    """Block i of n sits at depth i / (n - 1): 0 for the first block, 1 for the last."""
    return np.arange(n) / max(n - 1, 1)


@contextmanager
def hooked(model, actions, *, replace=False):
    """Within the context, `actions[site](tensor)` runs on each `Site`'s tensor in every forward pass of `model`;
    with `replace`, an output site's result replaces the module's output. Hooks are removed on exit."""
    by_module = {}
    for site, action in actions.items():
        by_module.setdefault(site.name, []).append((site, action))
    calls = {name: 0 for name in by_module}
    handles = []

    def before(name):
        def hook(module, args, kwargs):
            index = calls[name]
            calls[name] = index + 1
            for site, action in by_module[name]:
                if site.where == "input" and site.index == index:
                    action(first_tensor((args, kwargs)))
        return hook

    def after(name):
        def hook(module, args, output):
            for site, action in by_module[name]:
                if site.where == "output" and site.index == calls[name] - 1:
                    result = action(output if torch.is_tensor(output) else first_tensor(output))
                    if replace:
                        return result
        return hook

    try:
        for name in by_module:
            try:  # not named_modules(): a walk of the whole model at every call, 1% of a ResNet-50's pass of 8 images
                module = model.get_submodule(name)
            except AttributeError:
                raise KeyError(f"the model has no module {name!r}") from None
            handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True, prepend=True))
            handles.append(module.register_forward_hook(after(name)))
        # registered last and put first: each forward pass of the model counts its calls from zero
        handles.append(model.register_forward_pre_hook(lambda *_: calls.update(dict.fromkeys(calls, 0)),
                                                       prepend=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def first_tensor(obj):
    tensors = tracing.tensors_in(obj)
    return tensors[0] if tensors else None


# The split: the rule on one probe pass, checked against timm's own intermediates

def split(model: nn.Module, spec: Spec | None = None, *, input_size: tuple | None = None) -> "Blocks":
    """The `Blocks` of `model` by the rule of the module docstring, from one probe pass on random inputs of its size:
    that of a sized `spec`, else the one `spec.sized(model)` decides (`input_size`, C x H x W, overrides it; without a
    spec, the model's own or the figure's 32 x 32). `Blocks.spec` is that sized spec (`helpers.spec`).

    A branch or unit is `msa` when it attends (`helpers.attention`): token mixing whose weights are computed from the
    input, that is a product of two input-dependent values that contracts over positions, whatever the normalisation
    (softmax over the queries or the keys, a kernel feature map, none) and the layout (heads, windows, pooled or
    strided keys, class tokens): `F.scaled_dot_product_attention`, `nn.MultiheadAttention`, softmax(q k^T) v written
    out, factorized, linear or kernel, separable, cross-covariance and Hugging Face attention (eager or sdpa); never
    channel gating (squeeze-and-excitation, ECA, split attention, selective kernels) nor token mixing with static
    weights (gMLP's spatial gating unit, MLP-Mixer's token MLP, pooling, convolutions). Where the deepest maps
    collapse to 1 x 1 at that size, or tokens lie on a grid under 4 x 4, a note names the stage and the size that
    avoids it.
    """
    spec = spec or Spec.of(model)
    spec = spec if spec.input_size is not None and input_size is None else spec.sized(model, input_size)
    x = torch.randn(PROBE_BATCH, *spec.input_size, device=next(iter(model.parameters()), torch.empty(0)).device)
    try:
        trace = tracing.probe(model, x)
    except Exception as error:
        raise spec.does_not_run(error) from error
    logits = trace.root.output
    if logits is None or len(logits.shape) != 2 or logits.shape[0] != PROBE_BATCH:
        raise ValueError(f"{spec.text} returns {tuple(logits.shape) if logits else 'no tensor'} for a batch of "
                         f"{PROBE_BATCH} images of {spec.input_size}: a classifier returns (batch, classes).")
    declared = getattr(model, "analysis_blocks", None)
    blocks, folded = (declared_blocks(model, trace, declared), []) if declared else rule_blocks(model, trace)
    result = Blocks(model, blocks, spec=spec)
    problem = None if declared else unfaithful(result, model, x)
    for line in [] if problem else collapse_notes(spec, blocks, folded):
        print(line)
    if problem:
        print(f"Note: {spec.text} is analysed at stage level ({problem}).")
        return stage_blocks(model, trace, x, spec)
    return result


class StageBlocks(Blocks):
    """A model read at the stages of timm's `forward_intermediates` (NCHW maps), then its head: nothing to remove."""

    def features(self, x):
        final, intermediates = self.model.forward_intermediates(x)
        return [*intermediates, self.model.forward_head(final)]

    @torch.no_grad()
    def average(self, batches, statistic):
        device = next(self.parameters()).device
        read, finish = two_steps(statistic)
        sums, count = None, 0
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            maps = self.model.forward_intermediates(images.to(device), intermediates_only=True)
            values = finish([read(m) for m in maps])
            sums = [weighted_sum(total, value, len(images)) for total, value in zip(sums or [None] * len(maps), values)]
            count += len(images)
        return averages(sums or [], count)


def two_steps(statistic) -> tuple:
    """(read, finish) of a statistic: its own for one in two steps (`MapStatistic`), else (itself, the identity)."""
    if hasattr(statistic, "finish"):
        return statistic.read, statistic.finish
    return statistic, lambda values: values


def weighted_sum(total, value, weight: int):
    """`total` (None at first) plus `weight` x `value`, tensor by tensor where `value` is a tuple of tensors."""
    if isinstance(value, tuple):
        return tuple(weighted_sum(t, v, weight) for t, v in zip(total or [None] * len(value), value))
    return value * weight if total is None else total + value * weight


def averages(sums: list, count: int):
    """The per-block sums of `Blocks.average` divided by the image `count`, on the CPU: a list of tensors, or for a
    statistic that returns a tuple, one such list per entry of the tuple."""
    if not count:
        raise ValueError("No images: `batches` yielded nothing.")
    if sums and isinstance(sums[0], tuple):
        return tuple([(s / count).cpu() for s in entry] for entry in zip(*sums))
    return [(s / count).cpu() for s in sums]


def stage_blocks(model, trace, x, spec=None):
    """The stage-level `StageBlocks` of a timm model: one `conv` or `msa` block per stage of its `feature_info`
    (by whether the stage attends), in the order of `forward_intermediates`."""
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"{type(model).__name__} cannot be split into blocks by the rule of helpers.blocks and has no "
                         "forward_intermediates: declare its blocks with an `analysis_blocks` attribute (module name "
                         "-> kind, see helpers.blocks)")
    with torch.no_grad(), evaluating(model):
        maps = model.forward_intermediates(x, intermediates_only=True)
    calls = {call.name: call for call in trace.root.walk()}
    stages = [info.get("module", "") for info in getattr(model, "feature_info", [])]
    stages = stages if len(stages) == len(maps) else [f"stage {i}" for i in range(len(maps))]
    blocks, previous = [], None
    for name, stage in zip(stages, maps):
        call = calls.get(name)
        attending = call is not None and attends(anatomy.window_ops(call))
        size = stage.shape[-2] * stage.shape[-1]
        blocks.append(Block("msa" if attending else "conv", name, None, "BCHW", downsamples=previous is not None
                            and size < previous, size=size))
        previous = size
    return StageBlocks(model, blocks + [Block("head", "head", None, "logits")], stage_level=True, spec=spec)
