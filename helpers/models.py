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
- `MODULE:FUNCTION` or `path/to/file.py:FUNCTION` (keywords in parentheses too): your own code, called as
  `FUNCTION(num_classes=..., **keywords)`. The model may say its input size with an attribute `input_size`
  (C, H, W; default 3 x 32 x 32) and its blocks with `analysis_blocks` (see `helpers.blocks`).

`resolve(text)` parses a specification once into a `Spec`, which carries everything below it needs: how to build
the model, its input size and normalisation, its classes, its official weights (registry entry) and plot style.
"""
import ast
import difflib
import hashlib
import importlib
import importlib.util
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import torch

import torch.nn as nn
from timm.models.pit import PoolingVisionTransformer
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from helpers import alternet, resnet

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
CIFAR_SIZE = (3, 32, 32)
TIMM = "timm:"

# (marker, colour) per registry family: the authors' diamonds for ResNet and circles for ViT, then ours; other
# models get one of the others, always the same for the same specification
STYLES = {"resnet": ("D", "tab:blue"), "vit": ("o", "tab:red"), "pit": ("s", "tab:green"),
          "swin": ("^", "tab:purple"), "alternet": ("v", "tab:orange")}
OTHER_MARKERS = ("P", "X", "*", "h", "p", "<", ">", "d")
OTHER_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "black", "gold", "teal")


def style_of(text):
    """The (marker, colour) of a model outside the registry: one of the others, the same for the same text."""
    digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    return OTHER_MARKERS[digest % len(OTHER_MARKERS)], OTHER_COLORS[digest // 7 % len(OTHER_COLORS)]


class SpecificationError(ValueError):
    """A model specification that names nothing buildable; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Spec:
    """A model specification resolved once (see the module docstring)."""
    text: str                      # as the user wrote it: the model's name in tables, legends and titles
    source: str                    # "registry", "timm" or "code"
    builder: Callable = field(repr=False)  # (num_classes, **keywords) -> a model with fresh weights
    keywords: tuple = ()           # (name, value) pairs given in parentheses
    input_size: tuple = CIFAR_SIZE  # C, H, W
    mean: tuple | None = None      # normalisation; None: the dataset's (the authors' CIFAR mean and std)
    std: tuple | None = None
    num_classes: int = 100
    entry: Entry | None = None     # the registry's facts (official weights, paper accuracy, ...)
    pretrained: bool = False       # timm's ImageNet weights from its hub
    data_config: dict | None = field(default=None, hash=False, compare=False)  # timm's, for ImageNet images

    @property
    def name(self):
        return self.text

    @property
    def slug(self):
        """The specification as a file name: `timm-vit_tiny_patch16_224-img_size=32`, `mynet.py-build`."""
        text = self.text if self.source != "code" else self.text.replace("\\", "/").rsplit("/", 1)[-1]
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text.replace(":", "-")).strip("-")

    @property
    def imagenet(self):
        """Whether the model is an ImageNet classifier (timm's pretrained weights), not a CIFAR one."""
        return self.pretrained

    @property
    def style(self):
        """(marker, colour) of its lines and points."""
        return STYLES[self.entry.family] if self.entry is not None else style_of(self.text)

    def build(self, *, fresh=False, **keywords):
        """The model, carrying this spec as `.spec`: with fresh weights, or timm's hub weights for a pretrained tag
        unless `fresh`."""
        kw = {**dict(self.keywords), **keywords}
        if self.source == "timm":
            kw["pretrained"] = self.pretrained and not fresh
        if self.entry is not None and "sd" in kw and self.entry.family in ("vit", "pit", "swin"):
            kw["drop_path_rate"] = kw.pop("sd")  # one name for stochastic depth across families
        try:
            model = self.builder(num_classes=self.num_classes, **kw)
        except TypeError as error:
            if not self.keywords or "argument" not in str(error):
                raise
            raise SpecificationError(f"{self.text}: {error}; give only keywords its builder takes.") from error
        if not isinstance(model, torch.nn.Module):
            raise SpecificationError(f"{self.text} returned a {type(model).__name__}, not a torch.nn.Module.")
        model.spec = self
        return model


def resolve(spec, num_classes=100):
    """The `Spec` of a specification (a `Spec` passes through); a `SpecificationError` says what is wrong."""
    if isinstance(spec, Spec):
        return spec
    text = str(spec).strip()
    target, keywords = parse_keywords(text)
    if target.startswith(TIMM):
        return timm_spec(text, target[len(TIMM):], keywords, num_classes)
    if ":" in target:
        return code_spec(text, target, keywords, num_classes)
    if target not in REGISTRY:
        close = difflib.get_close_matches(target, NAMES, n=3)
        raise SpecificationError(f"Unknown model {target!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                                 + f"; choose one of: {', '.join(NAMES)}, or timm:NAME, or your_file.py:FUNCTION.")
    return Spec(text, "registry", REGISTRY[target].builder, keywords, num_classes=num_classes,
                entry=REGISTRY[target])


def parse_keywords(text):
    """("target", ((name, value), ...)) of `target(name=value, ...)`; values are Python literals."""
    match = re.fullmatch(r"\s*([^()\s]+)\s*(?:\((.*)\))?\s*", text, flags=re.S)
    if not match:
        raise SpecificationError(f"{text!r} is not a model specification: write NAME, timm:NAME or FILE.py:FUNCTION, "
                                 "optionally with keywords in parentheses: timm:NAME(img_size=32)")
    target, arguments = match.groups()
    if not arguments:
        return target, ()
    try:
        call = ast.parse(f"f({arguments})", mode="eval").body
        if call.args:
            raise ValueError("positional arguments")
        return target, tuple((k.arg, ast.literal_eval(k.value)) for k in call.keywords)
    except (SyntaxError, ValueError) as error:
        raise SpecificationError(f"The keywords of {text!r} must be name=value pairs of Python literals, as in "
                                 f"timm:NAME(img_size=32, patch_size=4) ({error}).") from None


def timm_spec(text, name, keywords, num_classes):
    import timm
    from timm.data import resolve_data_config

    architecture, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5)
        raise SpecificationError(f"timm has no model {architecture!r}" + (f"; close: {', '.join(close)}" if close
                                 else "") + " (timm.list_models('*pattern*') lists them).")
    if tag and name not in timm.list_pretrained(f"{architecture}.*"):
        raise SpecificationError(f"timm has no pretrained weights {name!r}; it has: "
                                 f"{', '.join(timm.list_pretrained(f'{architecture}.*')[:8]) or 'none'}.")
    config = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(architecture)
    size = dict(keywords).get("img_size")
    input_size = (3, size, size) if isinstance(size, int) else (3, *size) if size else tuple(config.input_size)
    builder = partial(timm.create_model, name)
    if not tag:
        return Spec(text, "timm", builder, keywords, input_size, num_classes=num_classes)
    data_config = resolve_data_config(config.to_dict())
    return Spec(text, "timm", builder, keywords, tuple(data_config["input_size"]), tuple(data_config["mean"]),
                tuple(data_config["std"]), config.num_classes or 1000, pretrained=True, data_config=data_config)


def code_spec(text, target, keywords, num_classes):
    """Your own builder: `path/to/file.py:FUNCTION` (relative to the working folder) or `package.module:FUNCTION`."""
    location, _, function = target.rpartition(":")
    if location.endswith(".py"):
        path = Path(location).expanduser()
        if not path.is_file():
            raise SpecificationError(f"{text}: there is no file {path.resolve()}.")
        module = file_module(path.resolve(), path.stat().st_mtime_ns)
    else:
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as error:
            raise SpecificationError(f"{text}: no module named {error.name!r} can be imported (is it on the path? a "
                                     f"file is written path/to/file.py:{function}).") from error
    builder = getattr(module, function, None)
    if not callable(builder):
        defined = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                   and getattr(v, "__module__", None) == module.__name__]
        raise SpecificationError(f"{text}: {location} has no function {function!r}; it defines: "
                                 f"{', '.join(defined) or 'nothing callable'}.")
    input_size = tuple(getattr(builder, "input_size", CIFAR_SIZE))
    return Spec(text, "code", checked(builder, text), keywords, input_size, num_classes=num_classes)


@lru_cache(maxsize=None)
def file_module(path, modified):
    """The module of a Python file, run once per version of the file (`modified`: its mtime): a specification is
    resolved wherever a model is named, and a file's classes keep one identity."""
    module_spec = importlib.util.spec_from_file_location(f"vits_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module


def checked(builder, text):
    """`builder`, whose model must map a batch of its input size to (batch, num_classes) logits."""
    def build(num_classes, **keywords):
        model = builder(num_classes=num_classes, **keywords)
        size = tuple(getattr(model, "input_size", getattr(builder, "input_size", CIFAR_SIZE)))
        with torch.no_grad():
            was_training = model.training
            output = model.eval()(torch.zeros(2, *size, device=next(iter(model.parameters()), torch.empty(0)).device))
            model.train(was_training)
        if not torch.is_tensor(output) or tuple(output.shape) != (2, num_classes):
            shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise SpecificationError(f"{text} returns {shape} for a batch of 2 images of {size}; a classifier for "
                                     f"this figure returns (batch, classes) = (2, {num_classes}).")
        return model
    return build


def entry(name):
    """The registry entry of `name`, or a SpecificationError listing the names there are."""
    spec = resolve(name)
    if spec.entry is None:
        raise SpecificationError(f"{name} is not one of the paper's models ({', '.join(NAMES)}).")
    return spec.entry


def create(name, num_classes=100, **kw):
    """Build the model a specification names, with fresh weights (see the module docstring); `kw` goes to the builder
    (e.g. `sd=0.1`, stochastic depth, for the registry's models)."""
    return resolve(name, num_classes).build(**kw)


def imagenet_spec(name):
    """The specification of timm's ImageNet-1k counterpart of a registry model, pretrained (`vit_ti` ->
    `timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k`, timm's default weights): the authors' ImageNet settings."""
    import timm

    counterpart = entry(name).imagenet
    if counterpart is None:
        having = [n for n, e in REGISTRY.items() if e.imagenet]
        raise SpecificationError(f"No ImageNet-pretrained timm model stands for {name!r}; choose one of: "
                                 f"{', '.join(having)}.")
    return resolve(f"{TIMM}{counterpart}.{timm.models.get_pretrained_cfg(counterpart).tag}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(names=NAMES):
    """A header, then one line per model: name, official weights (*), parameters, the paper's accuracy, blocks by kind."""
    from helpers.blocks import split

    lines = [f"{'model':<13} {'official':<8} {'params':>7}  {'paper':>5}  blocks", "-" * 78]
    for name in names:
        spec = resolve(name)
        model = spec.build()
        kinds = Counter(block.kind for block in split(model))
        counts = " ".join(f"{kind}:{n}" for kind, n in kinds.items())
        official = spec.entry is not None and spec.entry.file
        accuracy = f"{spec.entry.paper_accuracy:5.1f}" if spec.entry and spec.entry.paper_accuracy else "    -"
        lines.append(f"{name:<13} {'*' if official else '':<8} {count_parameters(model) / 1e6:6.2f}M  "
                     f"{accuracy}  {sum(kinds.values()):3d}: {counts}")
    lines.append("* official CIFAR-100 weights (helpers.checkpoints.load downloads them); paper: top-1 % in the paper")
    return "\n".join(lines)


def main(argv=None):
    """`python -m helpers.models [SPEC ...]`: the registry, or the models named."""
    names = sys.argv[1:] if argv is None else argv
    try:
        print(summary(names or NAMES))
    except SpecificationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
