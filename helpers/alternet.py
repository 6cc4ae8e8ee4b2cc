"""AlterNet (Park & Kim 2022, Sec. 4): a pre-activation ResNet whose late Conv blocks alternate with local MSA blocks.

An MSA block is a pre-activation bottleneck whose 3x3 conv is replaced by windowed self-attention with a learned
relative-position bias. Where the MSA blocks go is a `Layout`: a set of (stage, index) positions in the baseline
pre-activation ResNet, named like "c2.3+c3.5+c4.1+c4.3" ("resnet": none). The paper's AlterNets end each stage in
Conv, MSA, Conv, MSA, ... (`Layout.alternating`); the build-up rule (`helpers.buildup`) searches other layouts.
Module and attribute names follow the original implementation (`layer0.layer0.0.weight`,
`layer2.3.attn.attn.to_q.weight`, `classifier.0.dense.weight`, ...) so its state_dict keys, in order, are reproduced;
with no MSA they are those of the authors' PreResNet (`layer0.0.weight`, ...).
"""
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange
from timm.layers import DropPath

from helpers.resnet import stochastic_depths

# Blocks


def conv(in_channels, out_channels, kernel_size=1, stride=1):
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


def bn_relu_conv(in_channels, out_channels, kernel_size=1, stride=1):
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(), conv(in_channels, out_channels, kernel_size, stride))


def preactivate(x, norm, activation, shortcut):
    """Returns (activated input, skip). A projection shortcut reads the normalised, activated input (so the
    stage's first block shares its norm with the residual branch); an identity shortcut reads the raw input."""
    if len(shortcut) == 0:
        return activation(norm(x)), x
    x = activation(norm(x))
    return x, shortcut(x)


def projection(in_channels, out_channels, stride):
    # An empty Sequential rather than None keeps the original's `shortcut.0.weight` key where a projection exists.
    if stride == 1 and in_channels == out_channels:
        return nn.Sequential()
    return nn.Sequential(conv(in_channels, out_channels, stride=stride))


def drop_path(sd):
    return DropPath(sd) if sd > 0.0 else nn.Identity()


# The blocks below repeat each other's shape on purpose: each mirrors the original class whose attribute names
# (`shortcut`, `bn`, `conv1`, ..., `sd`) are the official AlterNet keys, so they are not folded into one. The
# post-activation blocks of helpers/resnet.py do the same for the official ResNet checkpoint.

class PreActBasicBlock(nn.Module):
    """Conv block of AlterNet-18/34: BN-ReLU-conv3x3 twice, stride on the first conv."""
    expansion = 1

    def __init__(self, in_channels, channels, stride=1, sd=0.0):
        super().__init__()
        out_channels = channels * self.expansion
        self.shortcut = projection(in_channels, out_channels, stride)
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv1 = conv(in_channels, channels, kernel_size=3, stride=stride)
        self.conv2 = bn_relu_conv(channels, out_channels, kernel_size=3)
        self.sd = drop_path(sd)

    def forward(self, x):
        x, skip = preactivate(x, self.bn, self.relu, self.shortcut)
        return self.sd(self.conv2(self.conv1(x))) + skip


class PreActBottleneck(nn.Module):
    """Conv block of AlterNet-50/101: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (carrying the stride), BN-ReLU-conv1x1."""
    expansion = 4

    def __init__(self, in_channels, channels, stride=1, sd=0.0):
        super().__init__()
        out_channels = channels * self.expansion
        self.shortcut = projection(in_channels, out_channels, stride)
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv1 = conv(in_channels, channels)
        self.conv2 = bn_relu_conv(channels, channels, kernel_size=3, stride=stride)
        self.conv3 = bn_relu_conv(channels, out_channels)
        self.sd = drop_path(sd)

    def forward(self, x):
        x, skip = preactivate(x, self.bn, self.relu, self.shortcut)
        return self.sd(self.conv3(self.conv2(self.conv1(x)))) + skip


class Attention2d(nn.Module):
    """Multi-head self-attention over all positions of a feature map, with 1x1-conv projections."""

    def __init__(self, in_channels, out_channels, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        inner = heads * dim_head
        self.to_q = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.to_kv = nn.Conv2d(in_channels, 2 * inner, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(inner, out_channels, 1),
                                    nn.Dropout(dropout) if dropout > 0.0 else nn.Identity())

    def forward(self, x, bias=None):
        height, width = x.shape[-2:]
        k, v = self.to_kv(x).chunk(2, dim=1)  # keys first, values second, as the checkpoint's weights are laid out
        q, k, v = (rearrange(t, "b (h d) x y -> b h (x y) d", h=self.heads) for t in (self.to_q(x), k, v))
        # Explicit softmax attention rather than F.scaled_dot_product_attention: the fused kernels lack the
        # double backward that Hessian-vector products need.
        logits = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        if bias is not None:
            logits = logits + bias  # (n, n) query x key, shared across batch and heads
        out = torch.einsum("bhij,bhjd->bhid", logits.softmax(dim=-1), v)
        return self.to_out(rearrange(out, "b h (x y) d -> b (h d) x y", x=height, y=width))


def relative_index(window_size):
    """(w*w, w*w, 2) index into the (2w-1, 2w-1) bias table: key position minus query position, shifted by w-1.
    Positions are numbered row-major, matching the `(x y)` flattening inside a window."""
    rows, cols = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=-1)  # (w*w, 2)
    return positions[None, :, :] - positions[:, None, :] + window_size - 1  # [query, key]


class LocalAttention(nn.Module):
    """Attention2d inside non-overlapping windows of `window_size` x `window_size`, with a relative-position bias."""

    def __init__(self, in_channels, out_channels, window_size=7, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        self.window_size = window_size
        self.attn = Attention2d(in_channels, out_channels, heads=heads, dim_head=dim_head, dropout=dropout)
        self.pos_embedding = nn.Parameter(torch.randn(2 * window_size - 1, 2 * window_size - 1) * 0.02)
        # Derived from window_size alone, so not saved; a buffer still follows .to(device).
        self.register_buffer("rel_index", relative_index(window_size), persistent=False)

    def forward(self, x):
        p = self.window_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"window_size={p} must divide the feature map {tuple(x.shape[-2:])}")
        bias = self.pos_embedding[self.rel_index[..., 0], self.rel_index[..., 1]]  # (p*p, p*p)
        windows = rearrange(x, "b c (n1 p1) (n2 p2) -> (b n1 n2) c p1 p2", p1=p, p2=p)
        out = self.attn(windows, bias)
        return rearrange(out, "(b n1 n2) c p1 p2 -> b c (n1 p1) (n2 p2)", n1=x.shape[-2] // p, n2=x.shape[-1] // p)


class AttentionBlock(nn.Module):
    """MSA block with pre-activation: BN-GELU, conv1x1 down to the bottleneck width, BN, local attention back up.
    GELU here although the conv blocks use ReLU, and no activation between the second BN and the attention."""
    expansion = 4

    def __init__(self, in_channels, channels, stride=1, sd=0.0, heads=8, dim_head=64, window_size=7, dropout=0.0):
        super().__init__()
        if stride != 1:
            raise ValueError("attention blocks do not subsample; put a conv block first in the stage")
        out_channels = channels * self.expansion
        width = in_channels // self.expansion  # from the input, as the original: equals `channels` mid-stage
        self.shortcut = projection(in_channels, out_channels, stride)
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.GELU()  # named `relu` as in the original; it has no weights, so the name is free
        self.conv = conv(in_channels, width)
        self.norm2 = nn.BatchNorm2d(width)
        self.attn = LocalAttention(width, out_channels, window_size=window_size, heads=heads, dim_head=dim_head,
                                   dropout=dropout)
        self.sd = drop_path(sd)

    def forward(self, x):
        x, skip = preactivate(x, self.norm1, self.relu, self.shortcut)
        return self.sd(self.attn(self.norm2(self.conv(x)))) + skip


class AttentionBasicBlock(AttentionBlock):
    """The MSA block of AlterNet-18/34: no channel reduction around the attention."""
    expansion = 1


def stem_layers(in_channels, out_channels, pool=False):
    """A bare conv: the first block's pre-activation supplies the BN-ReLU."""
    if pool:  # ImageNet: 7x7 stride-2 conv and max-pool
        return nn.Sequential(conv(in_channels, out_channels, kernel_size=7, stride=2),
                             nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    return nn.Sequential(conv(in_channels, out_channels, kernel_size=3))  # CIFAR: one 3x3 conv, full resolution


class Stem(nn.Module):
    """AlterNet's wrapper around the stem layers (hence `layer0.layer0.0.weight`); PreResNet has them bare."""

    def __init__(self, in_channels, out_channels, pool=False):
        super().__init__()
        self.layer0 = stem_layers(in_channels, out_channels, pool)

    def forward(self, x):
        return self.layer0(x)


class BNGAPClassifier(nn.Module):
    """The final BN-ReLU that pre-activation blocks leave undone, then global average pooling and a linear layer."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_features)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.dense(self.gap(self.relu(self.bn(x))).flatten(1))  # B, C, 1, 1 -> B, C -> B, classes


# Model

BASELINE = "resnet"  # the name of the layout without MSA blocks


@dataclass(frozen=True)
class Layout:
    """Where the MSA blocks are: (stage, index) positions, stages numbered from 1, blocks within a stage from 0.
    Its `name` lists them in order, "c2.3+c3.5+c4.1+c4.3" ("resnet" for none): readable, and stable as a sweep key."""
    positions: frozenset = frozenset()

    def __post_init__(self):
        object.__setattr__(self, "positions", frozenset((int(stage), int(i)) for stage, i in self.positions))

    def __iter__(self):
        return iter(sorted(self.positions))

    @property
    def name(self):
        return "+".join(f"c{stage}.{i}" for stage, i in self) or BASELINE

    def __str__(self):
        return self.name

    @classmethod
    def parse(cls, name):
        if name == BASELINE:
            return cls()
        if not re.fullmatch(r"c\d+\.\d+(\+c\d+\.\d+)*", name):
            raise ValueError(f"{name!r} is not a layout name such as 'c3.5+c4.1+c4.3' or {BASELINE!r}")
        return cls(tuple(map(int, position[1:].split("."))) for position in name.split("+"))

    @classmethod
    def alternating(cls, num_blocks, num_msa_blocks):
        """The paper's AlterNets: stage i's last `2 * num_msa_blocks[i]` blocks alternate Conv, MSA, ..., MSA."""
        return cls((stage, n - 1 - 2 * k) for stage, (n, n_msa) in enumerate(zip(num_blocks, num_msa_blocks), 1)
                   for k in range(n_msa))

    def plus(self, stage, index):
        return Layout(self.positions | {(stage, index)})


def check_positions(layout, num_blocks):
    for stage, i in layout:
        if not 1 <= stage <= len(num_blocks) or not 0 <= i < num_blocks[stage - 1]:
            raise ValueError(f"c{stage}.{i} is not a block of stages with {tuple(num_blocks)} blocks")
        if i == 0:
            raise ValueError(f"c{stage}.0: the first block of a stage changes channels and stride; it stays a Conv")


class AlterNet(nn.Module):
    """A pre-activation ResNet with `num_blocks[i]` blocks in stage i + 1, whose blocks at `msa_positions` (a
    `Layout` or (stage, index) pairs) are MSA blocks with `heads[i]` heads (rule 3: more heads in later stages)."""

    def __init__(self, conv_block, msa_block, num_blocks, msa_positions, heads, num_classes=100, stem=False,
                 window_size=4, dim_head=64, sd=0.0, dropout=0.0):
        super().__init__()
        self.layout = Layout(msa_positions)
        check_positions(self.layout, num_blocks)
        self.layer0 = Stem(3, 64, pool=stem) if self.layout.positions else stem_layers(3, 64, pool=stem)
        rates = iter(stochastic_depths(sum(num_blocks), sd))
        channels = 64
        for stage, (width, n, h) in enumerate(zip((64, 128, 256, 512), num_blocks, heads), 1):
            blocks = []
            for i in range(n):
                if (stage, i) in self.layout.positions:
                    block = msa_block(channels, width, sd=next(rates), heads=h, dim_head=dim_head,
                                      window_size=window_size, dropout=dropout)
                else:
                    block = conv_block(channels, width, stride=2 if i == 0 and stage > 1 else 1, sd=next(rates))
                blocks.append(block)
                channels = width * type(block).expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.classifier = nn.Sequential(BNGAPClassifier(channels, num_classes))

    def forward(self, x):
        for layer in (self.layer0, self.layer1, self.layer2, self.layer3, self.layer4, self.classifier):
            x = layer(x)
        return x


# Builders: the paper's AlterNet-50 and what the same recipe gives for other depths. `msa_positions` puts the MSA
# blocks elsewhere in the same baseline (the build-up rule's variants); `Layout()` gives the bare PreResNet.

HEADS = (3, 6, 12, 24)


def alternet(conv_block, msa_block, num_blocks, num_msa_blocks, msa_positions=None, **kw):
    if msa_positions is None:
        msa_positions = Layout.alternating(num_blocks, num_msa_blocks)
    return AlterNet(conv_block, msa_block, num_blocks, msa_positions, HEADS, **kw)


def alternet_18(num_classes=100, stem=False, window_size=4, sd=0.0, **kw):
    return alternet(PreActBasicBlock, AttentionBasicBlock, (2, 2, 2, 2), (0, 1, 1, 1),
                    num_classes=num_classes, stem=stem, window_size=window_size, sd=sd, **kw)


def alternet_34(num_classes=100, stem=False, window_size=4, sd=0.0, **kw):
    return alternet(PreActBasicBlock, AttentionBasicBlock, (3, 4, 6, 4), (0, 1, 3, 2),
                    num_classes=num_classes, stem=stem, window_size=window_size, sd=sd, **kw)


def alternet_50(num_classes=100, stem=False, window_size=4, sd=0.0, **kw):
    return alternet(PreActBottleneck, AttentionBlock, (3, 4, 6, 4), (0, 1, 3, 2),
                    num_classes=num_classes, stem=stem, window_size=window_size, sd=sd, **kw)


def alternet_101(num_classes=100, stem=False, window_size=4, sd=0.0, **kw):
    return alternet(PreActBottleneck, AttentionBlock, (3, 4, 23, 4), (0, 1, 3, 2),
                    num_classes=num_classes, stem=stem, window_size=window_size, sd=sd, **kw)
