"""The model registry: `create(name)` builds a model in its CIFAR configuration.

The transformers come from timm 1.x with the authors' CIFAR hyper-parameters (patch size 2 for ViT and PiT,
1 for Swin, window 4); ResNet and AlterNet are our own re-implementations of the authors' code, so that
their `state_dict()` keys equal the official checkpoints'. `python -m helpers.models` prints a summary.
"""
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch.nn as nn
from timm.models.pit import PoolingVisionTransformer
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from helpers import alternet, resnet
from helpers.blocks import split

# Release v0.1 of the authors' storage repository, and their published landscape grids at a pinned commit
CHECKPOINT_URL = "https://github.com/xxxnell/how-do-vits-work-storage/releases/download/v0.1/"
GRID_URL = ("https://raw.githubusercontent.com/xxxnell/how-do-vits-work/"
            "9571ff1370f31af2f433558fbfa7bc87a97b0bab/resources/results/")


@dataclass(frozen=True)
class Entry:
    """Everything the project knows about one model, kept beside its builder (as timm's `default_cfg`)."""
    builder: Callable
    family: str                       # resnet, alternet, vit, pit or swin: key remaps and plot styles follow it
    file: str | None = None           # the official CIFAR-100 checkpoint's file name, if the authors published one
    fingerprint: tuple | None = None  # (sum of L1 norms, sum of L2 norms) of the official weights' parameters
    paper_accuracy: float | None = None  # top-1 on the CIFAR-100 test set reported in the paper (%)
    imagenet: str | None = None       # timm's ImageNet-1k counterpart, for the authors' ImageNet settings
    grid: tuple | None = None         # the authors' published loss-landscape grid: (file name, SHA-256)

    @property
    def url(self):
        return CHECKPOINT_URL + self.file if self.file else None

    @property
    def grid_url(self):
        return GRID_URL + self.grid[0] if self.grid else None


# img_size=32 for CIFAR; qkv_bias=False as in the authors' ViT-Ti and Swin-Ti
vit = partial(VisionTransformer, img_size=32, patch_size=2, qkv_bias=False)
pit = partial(PoolingVisionTransformer, img_size=32, patch_size=2, stride=1, mlp_ratio=4)
swin = partial(SwinTransformer, img_size=32, patch_size=1, window_size=4, qkv_bias=False)

REGISTRY = {
    "resnet_18": Entry(resnet.resnet_18, "resnet", imagenet="resnet18"),
    "resnet_34": Entry(resnet.resnet_34, "resnet", imagenet="resnet34"),
    # The fingerprints are the centre of the authors' published landscape grids (their `l1` and `l2` columns).
    "resnet_50": Entry(resnet.resnet_50, "resnet", file="resnet_50_cifar100_691cc9a9e4.pth.tar",
                       fingerprint=(508540.66, 1534.2001), paper_accuracy=82.9, imagenet="resnet50",
                       grid=("cifar100_resnet_dnn_50_losslandscape.csv",
                             "395072b64c65445dca7a94ab38f0d7042ebe0309538679fce22853dd73633c8f")),
    "resnet_101": Entry(resnet.resnet_101, "resnet", imagenet="resnet101"),
    "resnet_152": Entry(resnet.resnet_152, "resnet", imagenet="resnet152"),
    "alternet_18": Entry(alternet.alternet_18, "alternet"),
    "alternet_34": Entry(alternet.alternet_34, "alternet"),
    "alternet_50": Entry(alternet.alternet_50, "alternet", paper_accuracy=84.0),
    "alternet_101": Entry(alternet.alternet_101, "alternet"),
    "vit_ti": Entry(partial(vit, embed_dim=192, depth=12, num_heads=3), "vit", file="vit_ti_cifar100_9857b21357.pth.tar",
                    fingerprint=(130782.34, 769.4993), paper_accuracy=66.6, imagenet="vit_tiny_patch16_224",
                    grid=("cifar100_vit_ti_losslandscape.csv",
                          "166207c69cb3055c171de3ad8bc98fed91f436367ccbede820265303c1c8ffb2")),
    "vit_s": Entry(partial(vit, embed_dim=384, depth=12, num_heads=6), "vit", imagenet="vit_small_patch16_224"),
    "pit_ti": Entry(partial(pit, base_dims=[32, 32, 32], depth=[2, 6, 4], heads=[2, 4, 8]), "pit",
                    file="pit_ti_cifar100_0645889efb.pth.tar", paper_accuracy=76.2, imagenet="pit_ti_224"),
    "pit_s": Entry(partial(pit, base_dims=[48, 48, 48], depth=[2, 6, 4], heads=[3, 6, 12]), "pit",
                   imagenet="pit_s_224"),
    "swin_ti": Entry(partial(swin, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)), "swin",
                     file="swin_ti_cifar100_ec2894492b.pth.tar", paper_accuracy=76.9,
                     imagenet="swin_tiny_patch4_window7_224"),
    "swin_s": Entry(partial(swin, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)), "swin",
                    imagenet="swin_small_patch4_window7_224"),
}
NAMES = tuple(REGISTRY)
PAPER_NAMES = ("resnet_50", "alternet_50", "vit_ti", "pit_ti", "swin_ti")  # the five models of the figures
OFFICIAL = tuple(name for name, entry in REGISTRY.items() if entry.file)  # those with published weights


def entry(name):
    """The registry entry of `name`, or a ValueError listing the names there are."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(NAMES)}")
    return REGISTRY[name]


def create(name, num_classes=100, **kw):
    """Build `name` (one of `NAMES`) with freshly initialised weights; `kw` goes to the builder (e.g. `sd=0.1`)."""
    model_entry = entry(name)
    if model_entry.family in ("vit", "pit", "swin") and "sd" in kw:
        kw["drop_path_rate"] = kw.pop("sd")  # one name for stochastic depth across families
    return model_entry.builder(num_classes=num_classes, **kw)


def imagenet_model(name, *, pretrained=True):
    """timm's ImageNet-1k counterpart of `name` (its entry's `imagenet`, e.g. `vit_ti` -> `vit_tiny_patch16_224`),
    pretrained (downloaded from timm's hub) unless `pretrained=False`, in eval mode: the authors' ImageNet settings."""
    import timm

    counterpart = entry(name).imagenet
    if counterpart is None:
        having = [n for n, e in REGISTRY.items() if e.imagenet]
        raise ValueError(f"No ImageNet-pretrained timm model stands for {name!r}; choose one of: {', '.join(having)}.")
    return timm.create_model(counterpart, pretrained=pretrained).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(names=NAMES):
    """A header, then one line per model: name, official weights (*), parameters, the paper's accuracy, blocks by kind."""
    lines = [f"{'model':<13} {'official':<8} {'params':>7}  {'paper':>5}  blocks", "-" * 78]
    for name in names:
        model, model_entry = create(name), entry(name)
        kinds = Counter(block.kind for block in split(model))
        counts = " ".join(f"{kind}:{n}" for kind, n in kinds.items())
        accuracy = f"{model_entry.paper_accuracy:5.1f}" if model_entry.paper_accuracy else "    -"
        lines.append(f"{name:<13} {'*' if model_entry.file else '':<8} {count_parameters(model) / 1e6:6.2f}M  "
                     f"{accuracy}  {sum(kinds.values()):3d}: {counts}")
    lines.append("* official CIFAR-100 weights (helpers.checkpoints.load downloads them); paper: top-1 % in the paper")
    return "\n".join(lines)


def main():
    print(summary())


if __name__ == "__main__":
    main()
