"""Models: the registry of the paper's models, and the one specification grammar that names any model.

A model is named everywhere (figure settings, command lines, `create`) by a specification:

- a registry name, `vit_ti`, `resnet_50`, ... (`python -m helpers.models` lists them): the paper's models in their
  CIFAR configuration. The transformers come from timm 1.x with the authors' CIFAR hyper-parameters (patch size 2
  for ViT and PiT, 1 for Swin, window 4); ResNet and AlterNet are our re-implementations of the authors' code, so
  that their `state_dict()` keys equal the official checkpoints';
- `timm:NAME` for any timm architecture, with fresh weights and the figure's number of classes, at timm's input
  size; keywords in parentheses go to `timm.create_model`: `timm:vit_tiny_patch16_224(img_size=32, patch_size=4)`
  is a ViT for CIFAR images;
- `timm:NAME.TAG` (a pretrained tag, `timm:convnext_tiny.fb_in1k`): timm's ImageNet weights from its hub, with
  timm's own data config (input size, crop, mean and std) and its 1,000 classes;
- `hf:ID_OR_FOLDER`: a Hugging Face image classifier (`AutoModelForImageClassification`), from the hub or from a
  folder saved with `save_pretrained`, with its weights and a new classifier for the figure's classes (needs
  `pip install transformers`);
- `MODULE:FUNCTION` or `path/to/file.py:FUNCTION` (keywords in parentheses too): your own code, torchvision's
  included (`torchvision.models:resnet18`), called as `FUNCTION(num_classes=..., **keywords)`. The model may say
  its input size with an attribute `input_size` (C, H, W) and its blocks with `analysis_blocks` (`helpers.blocks`).

Any of them may end with an input size, `@224` or `@224x160` (height x width): `torchvision.models:vit_b_16@224`.
Where none is given the model's own is used, else the figure's 32 x 32 (`helpers.spec` says in which order).

`resolve(text)` parses a specification once into a `Spec` (`helpers.spec`), which carries everything below it needs:
how to build the model (`spec.build(num_classes=...)`), its normalisation, its official weights (registry entry)
and plot style; `spec.sized(model)` adds the input size its built model runs at.
"""
import difflib
import sys
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch.nn as nn
from timm.models.pit import PoolingVisionTransformer
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from helpers import alternet, resnet, sources
from helpers import spec as spec_module
from helpers.spec import STYLES, Spec, SpecificationError, style_of  # noqa: F401  (the names every caller uses)

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
CIFAR_SIZE = spec_module.CIFAR_SIZE


def resolve(spec: "str | Spec") -> Spec:
    """The `Spec` of a specification (a `Spec` passes through); a `SpecificationError` says what is wrong."""
    if isinstance(spec, Spec):
        return spec
    text = str(spec).strip()
    target, keywords, size = sources.parse(text)
    if target.startswith(sources.TIMM):
        return sources.timm_spec(text, target[len(sources.TIMM):], keywords, size)
    if target.startswith(sources.HF):
        return sources.hf_spec(text, target[len(sources.HF):], keywords, size)
    if ":" in target:
        return sources.code_spec(text, target, keywords, size)
    if target not in REGISTRY:
        close = difflib.get_close_matches(target, NAMES, n=3)
        raise SpecificationError(f"Unknown model {target!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                                 + f"; choose one of: {', '.join(NAMES)}, or timm:NAME, hf:ID, or "
                                 "your_file.py:FUNCTION.")
    return Spec(text, "registry", REGISTRY[target].builder, keywords, size, entry=REGISTRY[target])


def entry(name):
    """The registry entry of `name`, or a SpecificationError listing the names there are."""
    spec = resolve(name)
    if spec.entry is None:
        raise SpecificationError(f"{name} is not one of the paper's models ({', '.join(NAMES)}).")
    return spec.entry


def create(name: str, num_classes: int = 100, **kw) -> nn.Module:
    """Build the model a specification names, with fresh weights (see the module docstring); `kw` goes to the builder
    (e.g. `sd=0.1`, stochastic depth, for the registry's models)."""
    return resolve(name).build(num_classes, **kw)


def imagenet_spec(name):
    """The specification of timm's ImageNet-1k counterpart of a registry model, pretrained (`vit_ti` ->
    `timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k`, timm's default weights): the authors' ImageNet settings."""
    import timm

    counterpart = entry(name).imagenet
    if counterpart is None:
        having = [n for n, e in REGISTRY.items() if e.imagenet]
        raise SpecificationError(f"No ImageNet-pretrained timm model stands for {name!r}; choose one of: "
                                 f"{', '.join(having)}.")
    return resolve(f"{sources.TIMM}{counterpart}.{timm.models.get_pretrained_cfg(counterpart).tag}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(names=NAMES) -> str:
    """A header, then one line per model: name, official weights (*), parameters, paper's accuracy, blocks by kind."""
    from helpers.blocks import split

    lines = [f"{'model':<13} {'official':<8} {'params':>7}  {'paper':>5}  blocks", "-" * 78]
    for name in names:
        spec = resolve(name)
        model = spec.build()
        kinds = Counter(block.kind for block in split(model, spec))
        counts = " ".join(f"{kind}:{n}" for kind, n in kinds.items())
        official = spec.entry is not None and spec.entry.file
        accuracy = f"{spec.entry.paper_accuracy:5.1f}" if spec.entry and spec.entry.paper_accuracy else "    -"
        lines.append(f"{name:<13} {'*' if official else '':<8} {count_parameters(model) / 1e6:6.2f}M  "
                     f"{accuracy}  {sum(kinds.values()):3d}: {counts}")
    lines.append("* official CIFAR-100 weights (helpers.checkpoints.load downloads them); paper: top-1 % in the paper")
    return "\n".join(lines)


def describe(text: str) -> str:
    """How a specification splits: its input size and where it comes from, then one line per block (kind, map,
    whether the lesion study can remove it, name), then the blocks by kind. Notes on the way (a stage that collapses
    at that size, logits taken from a `ModelOutput`) are printed as they arise."""
    import torch

    from helpers.blocks import split

    spec = resolve(text)
    model = spec.build(fresh=True).eval()  # the structure only: nothing downloaded
    blocks = split(model, spec)
    sized = blocks.spec
    with torch.no_grad():
        maps = blocks.feature_maps(torch.zeros(1, *sized.input_size))
    size = " x ".join(map(str, sized.input_size))
    lines = [f"{spec.text}: {count_parameters(model) / 1e6:.2f}M parameters, input {size} ({sized.size_origin})"
             + (", analysed at stage level" if blocks.stage_level else ""),
             f"{'':>3}  {'kind':<5} {'map (C x H x W)':<17} {'removable':<9}  block"]
    for i, block in enumerate(blocks):
        shape = " x ".join(map(str, maps[i].shape[1:])) if i < len(maps) else "logits"
        lines.append(f"{i:>3}  {block.kind:<5} {shape:<17} {'yes' if block.removable else '':<9}  {block.name}")
    kinds = Counter(blocks.kinds)
    lines.append("blocks: " + ", ".join(f"{kind} {n}" for kind, n in kinds.items()) +
                 f"; removable: {sum(block.removable for block in blocks)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """`python -m helpers.models [SPEC ...]`: the registry, or how each specification named splits."""
    names = sys.argv[1:] if argv is None else argv
    try:
        for text in names or [None]:
            print(summary(NAMES) if text is None else describe(text) + "\n", flush=True)
    except ValueError as error:  # a SpecificationError, or a model the rule cannot read
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
