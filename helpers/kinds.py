"""The blocks of a model from the rule's units (`helpers.anatomy`): their kinds, names and layouts, the embed and the
head, or the blocks a model declares; their check against timm's `forward_intermediates`; and the notes on a model
whose maps collapse at the size it runs at. `helpers.blocks` states the rule."""
import heapq
import math
from dataclasses import dataclass

import torch
from einops import rearrange

from helpers import anatomy
from helpers.common import evaluating
from helpers.spec import PROBE_BATCH

KINDS = ("embed", "conv", "msa", "mlp", "pool", "head")
LAYOUTS = ("BCHW", "BHWC", "BNC", "vector", "logits")  # BNC: tokens on a square grid, `prefix_tokens` first


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



def tokens_to_map(x):
    height = math.isqrt(x.shape[1])
    if height * height != x.shape[1]:
        raise ValueError(f"{x.shape[1]} tokens do not form a square grid")
    return rearrange(x, "b (h w) c -> b c h w", h=height)



def rule_blocks(model, trace):
    """(the blocks the rule finds, the groups read as part of the head that held a feature map)."""
    units = anatomy.units(trace)
    groups = embedded(anatomy.groups(units, lambda value: layout_of(value, model)[2] >= 4))
    mapped = [layout_of(group.value, model) for group in groups]
    head = next((i for i, (layout, _, size) in enumerate(mapped) if i and size < 4), len(groups))
    folded = [group for group, (_, _, size) in zip(groups[head:], mapped[head:]) if size and collapsing(group)]
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
    return blocks + [Block("head", "head", None, "logits")], folded


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
    holding = [c for c in candidates if all(inside(n, c) for n in weighted) and not any(inside(o, c) for o in others)]
    name = holding[0] if holding else weighted[0]
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


# A model run at a size too small for it

def collapsing(group):
    """Whether a group that holds a map of 1 to 3 positions is a stage of the model (residual, attending or spatial),
    not a layer of its head after global pooling."""
    return any(unit.residual or unit.attending or unit.spatial for unit in group.units)


def collapse_notes(spec, blocks, folded):
    """One line per way the model collapses at `spec`'s size, naming the stage and the size that avoids it: deepest
    maps of 1 x 1 (read as part of the head), a token grid under 4 x 4 (too small for the Fourier panel)."""
    channels, height, width = spec.input_size
    at = f"at {height} x {width} ({spec.size_origin}), {spec.text}'s"
    lines = []
    if folded:
        names = [n for group in folded for unit in group.units for n in unit.names]
        stage = common_prefix(names) or f"{names[0]} to {names[-1]}"
        shape, layout = folded[0].value.shape, layout_of(folded[0].value, None)[0]
        sides = shape[2:4] if layout == "BCHW" else shape[1:3] if layout == "BHWC" else (1, 1)
        lines.append(f"Note: {at} {stage} has {sides[0]} x {sides[1]} maps, read as part of the head; give it a larger "
                     f"input: {spec.at(larger(spec, sides, 2))}.")
    small = [block for block in blocks if block.layout == "BNC" and block.kind != "embed" and 0 < block.size < 16]
    if small:
        side = math.isqrt(small[0].size)
        lines.append(f"Note: {at} tokens lie on a {side} x {side} grid from {small[0].name} on, too few for the "
                     f"Fourier panel; give it a larger input: {spec.at(larger(spec, (side, side), 4))}.")
    return lines


def larger(spec, sides, least):
    """(H, W) at which maps now `sides` large are at least `least` x `least`."""
    return tuple(math.ceil(least * size / max(side, 1)) for size, side in zip(spec.input_size[1:], sides))


def common_prefix(names):
    parts = [name.split(".") for name in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)
