"""Split a model into the sequence of blocks every analysis walks through.

`split(model)` returns `Blocks`, an `nn.Sequential` whose blocks share the model's modules (nothing is copied)
and whose composition computes exactly `model(x)`. Each `Block` knows its `kind` (`embed`, `conv`, `msa`, `mlp`,
`pool`, `head`), its `name` in the model, whether it `downsamples`, and how its output is laid out, so that
`Block.to_map` can turn any block's output into a `B, C, H, W` feature map (class tokens dropped). A
transformer block is two blocks, `x + attn(norm1(x))` (msa) and `x + mlp(norm2(x))` (mlp), as in the paper.
A residual block (conv, msa, mlp) also knows its `shortcut`: its output with the residual branch removed, which
the lesion study substitutes for it; embed, pool and head blocks have none (`shortcut is None`).

Supported: our ResNet and AlterNet, timm's ResNet, VisionTransformer, PoolingVisionTransformer (PiT) and
SwinTransformer, at any size.
"""
import math

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange
from timm.models.pit import PoolingVisionTransformer
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import Bottleneck as TimmBottleneck
from timm.models.resnet import ResNet as TimmResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from helpers import alternet, resnet

KINDS = ("embed", "conv", "msa", "mlp", "pool", "head")
LAYOUTS = ("BCHW", "BHWC", "BNC", "logits")  # BNC: tokens, `prefix_tokens` class/distillation tokens first


class Block(nn.Module):
    """One step of the model's forward pass. `parts` are registered (so `.parameters()` and `.to()` see them)
    but shared with the model; `step(x)` is the computation, written in terms of those same modules, and so is
    `shortcut(x)`, a plain function (None for a block without a residual branch)."""

    def __init__(self, kind, name, step, parts, layout, prefix_tokens=0, downsamples=False, shortcut=None):
        super().__init__()
        if kind not in KINDS or layout not in LAYOUTS:
            raise ValueError(f"kind {kind!r} / layout {layout!r} not in {KINDS} / {LAYOUTS}")
        self.kind, self.name, self.layout = kind, name, layout
        self.prefix_tokens, self.downsamples = prefix_tokens, downsamples
        self.parts = nn.ModuleList(p for p in parts if isinstance(p, nn.Module))
        self.params = nn.ParameterList(p for p in parts if isinstance(p, nn.Parameter))
        self.step = sequential(step) if isinstance(step, nn.Module) else step  # no second registration
        self.shortcut = shortcut

    def forward(self, x):
        return self.step(x)

    def to_map(self, x):
        """This block's output as a `B, C, H, W` feature map (tokens on a square grid; class tokens dropped)."""
        if self.layout == "BCHW":
            return x
        if self.layout == "BHWC":
            return rearrange(x, "b h w c -> b c h w")
        if self.layout == "BNC":
            return tokens_to_map(x[:, self.prefix_tokens:])
        raise ValueError(f"{self.name} outputs logits, not a feature map")

    @property
    def shade(self):
        """The kind a figure shades this block as: every subsampling block (PiT/Swin pooling, a ResNet's strided
        bottleneck) is `pool`."""
        return "pool" if self.downsamples else self.kind

    def extra_repr(self):
        return f"kind={self.kind}, name={self.name!r}, layout={self.layout}"


class Blocks(nn.Sequential):
    """The block sequence; `Blocks(x)` equals `model(x)` in eval mode."""

    def features(self, x):
        """The output of every block, in order, from one forward pass."""
        outputs = []
        for block in self:
            x = block(x)
            outputs.append(x)
        return outputs

    def feature_maps(self, x):
        """Every block's output but the head's (the logits), as `B, C, H, W` maps."""
        return [block.to_map(f) for block, f in zip(self, self.features(x)) if block.layout != "logits"]

    @torch.no_grad()
    def average(self, batches, statistic):
        """For every non-head block, the mean over all images of `statistic(feature_map)`, where `statistic`
        returns the mean over its batch; one forward pass per batch, only per-block sums kept. `batches` yields
        image tensors or (images, labels) pairs (a DataLoader)."""
        device = next(self.parameters()).device
        sums, count = None, 0
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            batch_sums = [statistic(m) * len(images) for m in self.feature_maps(images.to(device))]
            sums = batch_sums if sums is None else [s + b for s, b in zip(sums, batch_sums)]
            count += len(images)
        if not count:
            raise ValueError("No images: `batches` yielded nothing.")
        return [(s / count).cpu() for s in sums]

    @property
    def kinds(self):
        return [block.kind for block in self]

    @property
    def layers(self):
        """The blocks on the depth axis: all but the head (the logits), in order, one per `feature_maps` entry."""
        return [block for block in self if block.kind != "head"]

    def depths(self):
        """The normalised depth of each of `layers`: block i of n sits at i / (n - 1), from 0 to 1."""
        return normalized_depth(len(self.layers))

    def stage_ends(self):
        """Indices in `layers` of the blocks that end a stage: those followed by a subsampling block, and the last."""
        layers = self.layers
        return [i for i in range(len(layers)) if i + 1 == len(layers) or layers[i + 1].downsamples]


def normalized_depth(n):
    """Block i of n sits at depth i / (n - 1): 0 for the first block, 1 for the last."""
    return np.arange(n) / max(n - 1, 1)


def tokens_to_map(x):
    height = math.isqrt(x.shape[1])
    if height * height != x.shape[1]:
        raise ValueError(f"{x.shape[1]} tokens do not form a square grid")
    return rearrange(x, "b (h w) c -> b c h w", h=height)


def sequential(*modules):
    def step(x):
        for module in modules:
            x = module(x)
        return x
    return step


def residual(*modules):
    inner = sequential(*modules)
    return lambda x: x + inner(x)


def identity(x):
    return x


def strided(module):
    return any(m.stride[0] > 1 for m in module.modules() if isinstance(m, nn.Conv2d))


# CNNs: a stem, stages of residual blocks, a classifier

def preactivated_skip(module, norm):
    """AlterNet: the skip of `preactivate` (a projection reads the normalised, activated input, an identity the raw)."""
    return lambda x: alternet.preactivate(x, norm, module.relu, module.shortcut)[1]


def post_activated_skip(shortcut, activation):
    """Post-activation blocks, ours and timm's: act(branch(x) + shortcut(x)) without the branch."""
    return sequential(*([] if shortcut is None else [shortcut]), activation)


SHORTCUTS = (  # each residual CNN block type -> its output with the residual branch removed
    ((resnet.BasicBlock, resnet.Bottleneck), lambda m: post_activated_skip(m.shortcut, m.relu)),
    ((alternet.PreActBasicBlock, alternet.PreActBottleneck), lambda m: preactivated_skip(m, m.bn)),
    (alternet.AttentionBlock, lambda m: preactivated_skip(m, m.norm1)),
    (TimmBasicBlock, lambda m: post_activated_skip(m.downsample, m.act2)),
    (TimmBottleneck, lambda m: post_activated_skip(m.downsample, m.act3)),
)


def shortcut_of(module):
    for family, shortcut in SHORTCUTS:
        if isinstance(module, family):
            return shortcut(module)
    raise TypeError(f"No shortcut known for a {type(module).__name__} block")


def split_residual_stages(model, stem, stem_modules, head_name, head, head_modules):
    blocks = [Block("embed", stem, sequential(*stem_modules), stem_modules, "BCHW")]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, module in enumerate(getattr(model, stage)):
            kind = "msa" if isinstance(module, alternet.AttentionBlock) else "conv"
            blocks.append(Block(kind, f"{stage}.{i}", module, [module], "BCHW", downsamples=strided(module),
                                shortcut=shortcut_of(module)))
    blocks.append(Block("head", head_name, head, head_modules, "logits"))
    return blocks


def split_resnet(model):  # ours and AlterNet
    return split_residual_stages(model, "layer0", [model.layer0], "classifier", model.classifier, [model.classifier])


def split_timm_resnet(model):
    stem = [model.conv1, model.bn1, model.act1, model.maxpool]
    return split_residual_stages(model, "stem", stem, "fc", model.forward_head, [model.global_pool, model.fc])


# Transformers: the residual branches of each block become an msa and an mlp block

def transformer_blocks(block, name, layout, prefix_tokens=0):
    """timm's ViT/PiT/Swin block: x + drop_path(ls(attn(norm1(x)))), then x + drop_path(ls(mlp(norm2(x))))."""
    ls1, ls2 = getattr(block, "ls1", nn.Identity()), getattr(block, "ls2", nn.Identity())
    attn = getattr(block, "_attn", block.attn)  # Swin's shifted-window partition lives in `_attn`
    return [
        Block("msa", f"{name}.attn", residual(block.norm1, attn, ls1, block.drop_path1),
              [block.norm1, block.attn, ls1, block.drop_path1], layout, prefix_tokens, shortcut=identity),
        Block("mlp", f"{name}.mlp", residual(block.norm2, block.mlp, ls2, block.drop_path2),
              [block.norm2, block.mlp, ls2, block.drop_path2], layout, prefix_tokens, shortcut=identity),
    ]


def split_vit(model):
    def embed(x):
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    prefix = model.num_prefix_tokens
    parts = [model.patch_embed, model.norm_pre, model.cls_token, model.reg_token, model.pos_embed]
    blocks = [Block("embed", "patch_embed", embed, parts, "BNC", prefix)]
    for i, block in enumerate(model.blocks):
        blocks += transformer_blocks(block, f"blocks.{i}", "BNC", prefix)
    head = [model.norm, model.attn_pool, model.fc_norm, model.head]
    blocks.append(Block("head", "head", lambda x: model.forward_head(model.norm(x)), head, "logits"))
    return blocks


def split_pit(model):
    prefix = model.cls_token.shape[1]

    def embed(x):
        x = model.pos_drop(model.patch_embed(x) + model.pos_embed)
        tokens = rearrange(x, "b c h w -> b (h w) c")
        return torch.cat([model.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)

    def pool(stage):
        def step(x):  # tokens -> (map, class tokens) -> pooled -> tokens
            x, cls_tokens = tokens_to_map(x[:, prefix:]), x[:, :prefix]
            x, cls_tokens = stage.pool(x, cls_tokens)
            return stage.norm(torch.cat([cls_tokens, rearrange(x, "b c h w -> b (h w) c")], dim=1))
        return step

    blocks = [Block("embed", "patch_embed", embed, [model.patch_embed, model.pos_embed, model.cls_token], "BNC", prefix)]
    for i, stage in enumerate(model.transformers):
        if stage.pool is not None:
            blocks.append(Block("pool", f"transformers.{i}.pool", pool(stage), [stage.pool, stage.norm], "BNC", prefix,
                                downsamples=True))
        elif not isinstance(stage.norm, nn.Identity):
            raise NotImplementedError("a PiT stage with a norm but no pooling layer")
        for j, block in enumerate(stage.blocks):
            blocks += transformer_blocks(block, f"transformers.{i}.blocks.{j}", "BNC", prefix)
    head = [model.norm, model.head, model.head_dist]
    blocks.append(Block("head", "head", lambda x: model.forward_head(model.norm(x[:, :prefix])), head, "logits"))
    return blocks


def split_swin(model):
    blocks = [Block("embed", "patch_embed", model.patch_embed, [model.patch_embed], "BHWC")]
    for i, stage in enumerate(model.layers):
        if not isinstance(stage.downsample, nn.Identity):
            blocks.append(Block("pool", f"layers.{i}.downsample", stage.downsample, [stage.downsample], "BHWC",
                                downsamples=True))
        for j, block in enumerate(stage.blocks):
            blocks += transformer_blocks(block, f"layers.{i}.blocks.{j}", "BHWC")
    head = [model.norm, model.head]
    blocks.append(Block("head", "head", lambda x: model.forward_head(model.norm(x)), head, "logits"))
    return blocks


SPLITTERS = (
    (resnet.ResNet, split_resnet),
    (alternet.AlterNet, split_resnet),
    (TimmResNet, split_timm_resnet),
    (VisionTransformer, split_vit),
    (PoolingVisionTransformer, split_pit),
    (SwinTransformer, split_swin),
)


def split(model):
    """The block sequence of `model` (see the module docstring); it shares the model's parameters."""
    for family, splitter in SPLITTERS:
        if isinstance(model, family):
            return Blocks(*splitter(model))
    raise TypeError(f"Cannot split a {type(model).__name__}; supported: "
                    f"{', '.join(family.__name__ for family, _ in SPLITTERS)}")
