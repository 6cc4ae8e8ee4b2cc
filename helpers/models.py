"""The model registry: `create(name)` builds a model in its CIFAR configuration.

The transformers come from timm 1.x with the authors' CIFAR hyper-parameters (patch size 2 for ViT and PiT,
1 for Swin, window 4); ResNet and AlterNet are our own re-implementations of the authors' code, so that
their `state_dict()` keys equal the official checkpoints'. `python -m helpers.models` prints a summary.
"""
from collections import Counter
from contextlib import contextmanager
from functools import partial

import torch.nn as nn
from timm.models.pit import PoolingVisionTransformer
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from helpers import alternet, resnet
from helpers.blocks import split

# img_size=32 for CIFAR; qkv_bias=False as in the authors' ViT-Ti and Swin-Ti
vit = partial(VisionTransformer, img_size=32, patch_size=2, qkv_bias=False)
pit = partial(PoolingVisionTransformer, img_size=32, patch_size=2, stride=1, mlp_ratio=4)
swin = partial(SwinTransformer, img_size=32, patch_size=1, window_size=4, qkv_bias=False)

BUILDERS = {
    "resnet_18": resnet.resnet_18,
    "resnet_34": resnet.resnet_34,
    "resnet_50": resnet.resnet_50,
    "resnet_101": resnet.resnet_101,
    "resnet_152": resnet.resnet_152,
    "alternet_18": alternet.alternet_18,
    "alternet_34": alternet.alternet_34,
    "alternet_50": alternet.alternet_50,
    "alternet_101": alternet.alternet_101,
    "vit_ti": partial(vit, embed_dim=192, depth=12, num_heads=3),
    "vit_s": partial(vit, embed_dim=384, depth=12, num_heads=6),
    "pit_ti": partial(pit, base_dims=[32, 32, 32], depth=[2, 6, 4], heads=[2, 4, 8]),
    "pit_s": partial(pit, base_dims=[48, 48, 48], depth=[2, 6, 4], heads=[3, 6, 12]),
    "swin_ti": partial(swin, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_s": partial(swin, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
}
NAMES = tuple(BUILDERS)
PAPER_NAMES = ("resnet_50", "alternet_50", "vit_ti", "pit_ti", "swin_ti")  # the five models of the figures


def create(name, num_classes=100, **kw):
    """Build `name` (one of `NAMES`) with freshly initialised weights; `kw` goes to the builder (e.g. `sd=0.1`)."""
    if name not in BUILDERS:
        raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(NAMES)}")
    if name.startswith(("vit", "pit", "swin")) and "sd" in kw:
        kw["drop_path_rate"] = kw.pop("sd")  # one name for stochastic depth across families
    return BUILDERS[name](num_classes=num_classes, **kw)


@contextmanager
def evaluating(model):
    """`model` in eval mode (BatchNorm running statistics, no dropout or drop-path) for the duration, then every
    submodule back in the mode it was in, also after an error."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.train(training)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(names=NAMES):
    """One line per model: name, parameters, number of blocks and how many of each kind."""
    lines = []
    for name in names:
        model = create(name)
        kinds = Counter(block.kind for block in split(model))
        counts = " ".join(f"{kind}:{n}" for kind, n in kinds.items())
        lines.append(f"{name:<13} {count_parameters(model) / 1e6:6.2f}M  {sum(kinds.values()):3d} blocks  {counts}")
    return "\n".join(lines)


def main():
    print(summary())


if __name__ == "__main__":
    main()
