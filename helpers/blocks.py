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
- A branch's **kind** is `msa` when it attends (scaled-dot-product attention, or a softmax of a product of two
  activations: window, shifted-window, grid, pooling, class or cross-covariance attention alike), `conv` when it
  mixes neighbouring positions otherwise (a convolution wider than 1, a pooling window: ConvNeXt's depthwise conv,
  PoolFormer's pooling, FastViT's RepMixer), and `mlp` when it mixes channels only (or tokens through a Linear,
  Mixer's token MLP).
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
"""
import heapq
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange

from helpers import anatomy
from helpers.common import evaluating
from helpers import trace as tracing

KINDS = ("embed", "conv", "msa", "mlp", "pool", "head")
LAYOUTS = ("BCHW", "BHWC", "BNC", "vector", "logits")  # BNC: tokens on a square grid, `prefix_tokens` first
PROBE_BATCH = 2


@dataclass(frozen=True)
class Site:
    """The `index`-th call of the module `name` in a forward pass, its first tensor input or its output."""
    name: str
    index: int = 0
    where: str = "output"


@dataclass(eq=False)
class Block:
    """One block: its `kind`, `name`, where its output is read (`site`; None for the head: the model's output), where
    its residual branch ends (`branch`; None when it has none and cannot be removed), how its output is laid out."""
    kind: str
    name: str
    site: Site | None
    layout: str
    prefix_tokens: int = 0
    downsamples: bool = False
    branch: Site | None = None
    size: int = 0  # positions of its feature map (0: none)

    def __post_init__(self):
        if self.kind not in KINDS or self.layout not in LAYOUTS:
            raise ValueError(f"kind {self.kind!r} / layout {self.layout!r} not in {KINDS} / {LAYOUTS}")

    @property
    def removable(self):
        """Whether the lesion study can remove it: it has a residual branch."""
        return self.branch is not None

    def to_map(self, x):
        """This block's output as a `B, C, H, W` feature map (tokens on their square grid; class tokens dropped)."""
        if self.layout == "BCHW":
            return x
        if self.layout == "BHWC":
            return rearrange(x, "b h w c -> b c h w")
        if self.layout == "BNC":
            return tokens_to_map(x[:, self.prefix_tokens:])
        raise ValueError(f"{self.name} outputs {self.layout}, not a feature map")

    @property
    def shade(self):
        """The kind a figure shades this block as: every subsampling block (PiT/Swin pooling, a ResNet's strided
        bottleneck) is `pool`."""
        return "pool" if self.downsamples else self.kind


class Blocks(nn.Module):
    """A model and its blocks; `Blocks(x)` is `model(x)`. It iterates, indexes and counts like the list of blocks."""

    def __init__(self, model, blocks, *, stage_level=False):
        super().__init__()
        self.model = model
        self.blocks = list(blocks)
        self.stage_level = stage_level  # True: stage outputs of forward_intermediates, nothing removable

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


def tokens_to_map(x):
    height = math.isqrt(x.shape[1])
    if height * height != x.shape[1]:
        raise ValueError(f"{x.shape[1]} tokens do not form a square grid")
    return rearrange(x, "b (h w) c -> b c h w", h=height)


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


# The split: the rule of `helpers.anatomy` on one probe pass, checked against timm's own intermediates

def split(model, *, input_size=None):
    """The `Blocks` of `model` (see the module docstring), from one probe pass on `PROBE_BATCH` random inputs of
    `input_size` (C, H, W; default: `probe_size(model)`) on the model's device."""
    size = tuple(input_size or probe_size(model))
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.randn(PROBE_BATCH, *size, device=device)
    try:
        trace = tracing.probe(model, x)
    except Exception as error:
        raise ValueError(f"{type(model).__name__} does not run on a batch of {PROBE_BATCH} inputs of "
                         f"{' x '.join(map(str, size))} ({type(error).__name__}: {error}); give its input size: "
                         "split(model, input_size=...), or an `input_size` attribute on a model of your own.") from error
    logits = trace.root.output
    if logits is None or len(logits.shape) != 2 or logits.shape[0] != PROBE_BATCH:
        raise ValueError(f"{type(model).__name__} returns {tuple(logits.shape) if logits else 'no tensor'} for a "
                         f"batch of {PROBE_BATCH} images of {size}: a classifier returns (batch, classes).")
    declared = getattr(model, "analysis_blocks", None)
    blocks = declared_blocks(model, trace, declared) if declared else rule_blocks(model, trace)
    result = Blocks(model, blocks)
    problem = None if declared else unfaithful(result, model, x)
    if problem:
        print(f"Note: {type(model).__name__} is analysed at stage level ({problem}).")
        return stage_blocks(model, trace, x)
    return result


def probe_size(model):
    """The input size (C, H, W) a model expects: ours carry their specification's, yours may say it in an attribute
    `input_size`; timm's say it in their
    `patch_embed` (built for a fixed size) or their `pretrained_cfg`; else CIFAR's 3 x 32 x 32."""
    spec = getattr(model, "spec", None)
    if spec is not None:
        return spec.input_size
    if getattr(model, "input_size", None) is not None:
        return tuple(model.input_size)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        return (3, *((img_size, img_size) if isinstance(img_size, int) else img_size))
    return tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 32, 32)))


def rule_blocks(model, trace):
    units = anatomy.units(trace)
    groups = embedded(anatomy.groups(units, lambda value: layout_of(value, model)[2] >= 4))
    mapped = [layout_of(group.value, model) for group in groups]
    head = next((i for i, (layout, _, size) in enumerate(mapped) if i and size < 4), len(groups))
    blocks, previous, names = [], None, set()
    for i, (group, (layout, prefix, size)) in enumerate(zip(groups[:head], mapped[:head])):
        downsamples = previous is not None and size < previous
        kind = "embed" if i == 0 and not group.residual else kind_of(group, downsamples)
        if kind is None:
            continue  # glue between two residual blocks (an identity, a norm): read by the next block
        unit = group.units[-1] if group.residual else None
        name = group_name(group, units, names)
        blocks.append(Block(kind, name, Site(*group.site), layout, prefix, downsamples,
                            Site(unit.branch_end.name, unit.branch_end.index) if unit else None, size))
        previous = size
    return blocks + [Block("head", "head", None, "logits")]


def embedded(groups):
    """The groups with the embed first: the first group, and when the model has residual blocks, the layers after
    it that lie in the same module of the model (a stem of several layers, before its first block)."""
    if not groups or groups[0].residual or not any(group.residual for group in groups):
        return groups
    stem = groups[0].units[0].names[0].split(".")[0]
    end = 1
    while end < len(groups) and not groups[end].residual and not any(u.attending for u in groups[end].units) \
            and all(n.split(".")[0] == stem for u in groups[end].units if u.weighted for n in u.names):
        end += 1
    return [anatomy.Group([u for group in groups[:end] for u in group.units])] + groups[end:]


def kind_of(group, downsamples):
    """A residual block's kind is its branch's; other groups: attending `msa`, subsampling `pool`, weights that
    mix neighbouring positions `conv`, other weights `mlp`; a group without weights that keeps the map: None."""
    unit = group.units[0]
    if group.residual or unit.attending:
        return "msa" if unit.attending else "conv" if unit.spatial else "mlp"
    if downsamples:
        return "pool"
    if not any(u.weighted for u in group.units):
        return None
    return "conv" if any(u.spatial for u in group.units) else "mlp"


def group_name(group, units, taken):
    """The largest module that holds the group's weighted units (or all of them) and no unit of another group,
    else its first weighted unit's name; made unique with `#n`."""
    weighted = [n for u in group.units if u.weighted for n in u.names] or [n for u in group.units for n in u.names]
    others = [n for u in units if u not in group.units for n in u.names]
    parts = weighted[0].split(".")
    candidates = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    name = next((c for c in candidates if all(inside(n, c) for n in weighted) and not any(inside(o, c) for o in others)),
                weighted[0])
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}#{n}"
    taken.add(unique)
    return unique


def inside(name, module):
    return name == module or name.startswith(module + ".")


def layout_of(value, model):
    """(layout, prefix tokens, positions of the map) of a probe value: `BCHW` or `BHWC` maps (told apart by their
    square spatial dims, then by the operation that made them), `BNC` tokens whose count, less a few class or
    register tokens, is a square; else `vector` with no positions."""
    shape = value.shape
    if not shape or shape[0] != PROBE_BATCH:
        return "vector", 0, 0
    if len(shape) == 4:
        channels_last = shape[1] == shape[2] != shape[3] or (shape[1] == shape[2] == shape[3] and last_dim_op(value))
        return ("BHWC", 0, shape[1] * shape[2]) if channels_last else ("BCHW", 0, shape[2] * shape[3])
    if len(shape) == 3:
        declared = getattr(model, "num_prefix_tokens", 0)
        for prefix in dict.fromkeys([0, declared, *range(1, 9)]):
            side = math.isqrt(max(shape[1] - prefix, 0))
            if side and side * side == shape[1] - prefix:
                return "BNC", prefix, side * side
    return "vector", 0, 0


def last_dim_op(value):
    """Whether the latest operation that fixes a layout, among those `value` was made from, works on the last
    dimension (layer norm, linear: channels last) rather than on channels first (convolution, batch norm, pooling)."""
    frontier, seen = [(-value.order, 0, value)], {id(value)}
    while frontier:
        _, _, current = heapq.heappop(frontier)  # the most recent first
        if current.op is None:
            continue
        name = current.op.name
        if name in ("layer_norm", "linear"):
            return True
        if name.startswith(("conv", "batch_norm")) or "pool" in name:
            return False
        for operand in current.op.operands:
            if operand.activation and id(operand) not in seen:
                seen.add(id(operand))
                heapq.heappush(frontier, (-operand.order, len(seen), operand))
    return False


def declared_blocks(model, trace, declared):
    """The blocks a model declares in `analysis_blocks` (module name -> kind), read at those modules' outputs; one
    that is a single residual block (see `helpers.anatomy`) can be removed; the head is added."""
    calls = {}
    for call in trace.root.walk():
        calls.setdefault(call.name, call)
    blocks, previous = [], None
    for name, kind in declared.items():
        if name not in calls:
            known = [n for n in calls if n]
            raise ValueError(f"analysis_blocks names {name!r}, which is not a module the model calls; it calls "
                             f"{', '.join(known[:12])}{', ...' if len(known) > 12 else ''}")
        if kind not in KINDS[:-1]:
            raise ValueError(f"analysis_blocks gives {name!r} the kind {kind!r}; choose one of {KINDS[:-1]}")
        call = calls[name]
        layout, prefix, size = layout_of(call.output, model)
        merges = anatomy.chain(call)
        branch = Site(merges[0].end.name, merges[0].end.index) if len(merges) == 1 else None
        blocks.append(Block(kind, name, Site(name, call.index), layout, prefix,
                            previous is not None and size < previous, branch, size))
        previous = size
    return blocks + [Block("head", "head", None, "logits")]


def unfaithful(blocks, model, x):
    """None when the blocks are what the model computes; else why not: fewer than two feature maps, or a map of
    timm's `forward_intermediates` that one of our blocks holds with its positions in another order (Hiera keeps its
    tokens in mask-unit order): the same values per image and channel, not at the same places."""
    if sum(block.size >= 4 for block in blocks.layers) < 2:
        return "no sequence of blocks was found in it"
    if not hasattr(model, "forward_intermediates"):
        return None
    with torch.no_grad(), evaluating(model):
        try:
            intermediates = model.forward_intermediates(x, intermediates_only=True)
        except Exception:  # a timm model whose intermediates need other arguments: nothing to compare with
            return None
        maps = blocks.feature_maps(x)
    for i, intermediate in enumerate(intermediates):
        alike = [m for m in maps if m.shape == intermediate.shape and m.ndim == 4]
        if any(torch.allclose(m, intermediate) for m in alike):
            continue
        ordered = intermediate.flatten(2).sort().values
        if any(torch.allclose(m.flatten(2).sort().values, ordered) for m in alike):
            return (f"the positions of its forward_intermediates' map {i}, {tuple(intermediate.shape[1:])}, are in "
                        "another order in the blocks' outputs")
    return None


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


def stage_blocks(model, trace, x):
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
        attending = call is not None and tracing.attends(anatomy.window_ops(call))
        size = stage.shape[-2] * stage.shape[-1]
        blocks.append(Block("msa" if attending else "conv", name, None, "BCHW", downsamples=previous is not None
                            and size < previous, size=size))
        previous = size
    return StageBlocks(model, blocks + [Block("head", "head", None, "logits")], stage_level=True)
