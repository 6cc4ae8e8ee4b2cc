"""A model specification parsed once (`Spec`), how it builds its model, and the input size that model runs at.

The grammar (`helpers.models` resolves it): `TARGET(keywords)@SIZE`, where TARGET is a registry name, `timm:NAME`,
`timm:NAME.TAG`, `hf:ID_OR_FOLDER`, `MODULE:FUNCTION` or `path/to/file.py:FUNCTION`; the keywords in parentheses go to
its builder; `@SIZE` is the input size, `@224` (square) or `@224x160` (height x width).

A `Spec` is the text's meaning: how to build the model, its official weights, normalisation and plot style, never
the figure's classes (`spec.build(num_classes=...)`). The input size is decided once a model is built, by
`spec.sized(model)`, which returns the spec with `input_size` and `size_origin` set; that sized spec is what flows
down with the model (`helpers.blocks.Blocks.spec`, the data's resize and normalisation). The size comes from, in
this order: the size in the specification; its keywords `img_size` (timm) or `image_size` (torchvision's ViTs); the
model's `input_size` attribute, then its builder's; the model's own configuration (a timm model's patch embedding
or `pretrained_cfg`, a Hugging Face config's `image_size`, a torchvision ViT's `image_size`); the figure's default,
CIFAR's 3 x 32 x 32.
"""
import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

CIFAR_SIZE = (3, 32, 32)
PROBE_BATCH = 2  # images in a first forward pass

# (marker, colour) per registry family: the authors' diamonds for ResNet and circles for ViT, then ours; other
# models get one of the others, always the same for the same specification
STYLES = {"resnet": ("D", "tab:blue"), "vit": ("o", "tab:red"), "pit": ("s", "tab:green"),
          "swin": ("^", "tab:purple"), "alternet": ("v", "tab:orange")}
OTHER_MARKERS = ("P", "X", "*", "h", "p", "<", ">", "d")
OTHER_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "black", "gold", "teal")


class SpecificationError(ValueError):
    """A model specification that names nothing buildable; the message says what is wrong and what to do."""


def style_of(text: str) -> tuple:
    """The (marker, colour) of a model outside the registry: one of the others, the same for the same text."""
    digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    return OTHER_MARKERS[digest % len(OTHER_MARKERS)], OTHER_COLORS[digest // 7 % len(OTHER_COLORS)]


@dataclass(frozen=True)
class Spec:
    """A model specification resolved once (see the module docstring)."""
    text: str                      # as the user wrote it: the model's name in tables, legends and titles
    source: str                    # "registry", "timm", "hf", "code", or "model" (a model given as an object)
    builder: Callable | None = field(default=None, repr=False)  # (num_classes, **keywords) -> a model
    keywords: tuple = ()           # (name, value) pairs given in parentheses
    size: tuple | None = None      # (H, W) given in the specification: `@224`, `@224x160`
    entry: object = None           # the registry's `Entry`: official weights, paper accuracy, family
    pretrained: bool = False       # the builder brings trained weights (timm's hub tag, a Hugging Face model)
    classes: int | None = None     # the classes those weights fix (timm's ImageNet 1,000); None: the figure's
    mean: tuple | None = None      # normalisation; None: the dataset's (the authors' CIFAR mean and std)
    std: tuple | None = None
    data_config: dict | None = field(default=None, hash=False, compare=False)  # timm's, for ImageNet images
    input_size: tuple | None = None  # C, H, W the model runs at: set by `sized`
    size_origin: str | None = None   # where `input_size` comes from, in words

    @classmethod
    def of(cls, model: nn.Module) -> "Spec":
        """The spec of a model given as an object, not by a text (`split(model)`)."""
        return cls(type(model).__name__, "model")

    @property
    def name(self) -> str:
        return self.text

    @property
    def slug(self) -> str:
        """The specification as a file name: `timm-vit_tiny_patch16_224-img_size=32`, `mynet.py-build`."""
        text = self.text if self.source != "code" else self.text.replace("\\", "/").rsplit("/", 1)[-1]
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text.replace(":", "-")).strip("-")

    @property
    def imagenet(self) -> bool:
        """Whether the model is an ImageNet classifier (timm's pretrained weights), not one of the figure's classes."""
        return self.classes is not None

    @property
    def style(self) -> tuple:
        """(marker, colour) of its lines and points."""
        return STYLES[self.entry.family] if self.entry is not None else style_of(self.text)

    def build(self, num_classes: int = 100, *, fresh: bool = False, **keywords) -> nn.Module:
        """The model with `num_classes` classes (unless its weights fix them): fresh weights, or the weights its
        builder brings (timm's hub, Hugging Face) unless `fresh`. A model of your own or of Hugging Face is run once
        at its input size: a forward that returns a `ModelOutput`, a dict or a tuple gives its logits from then on."""
        if self.builder is None:
            raise SpecificationError(f"{self.text} is a model given as an object: it cannot be built again.")
        kw = {**dict(self.keywords), **keywords}
        if self.source in ("timm", "hf"):
            kw["pretrained"] = self.pretrained and not fresh
        if self.entry is not None and "sd" in kw and self.entry.family in ("vit", "pit", "swin"):
            kw["drop_path_rate"] = kw.pop("sd")  # one name for stochastic depth across families
        try:
            model = self.builder(num_classes=self.classes or num_classes, **kw)
        except SpecificationError:
            raise
        except Exception as error:
            problem = self.failed(error)
            if problem is None:
                raise
            raise problem from error
        if not isinstance(model, nn.Module):
            raise SpecificationError(f"{self.text} returned a {type(model).__name__}, not a torch.nn.Module.")
        if self.source in ("code", "hf"):
            checked(self.sized(model), model, self.classes or num_classes)
        return model

    def failed(self, error: Exception) -> "SpecificationError | None":
        """The one or two lines for a builder that raised `error`: keywords it does not take, a builder of yours or
        Hugging Face's that failed; None for a failure of one of ours (a bug, with its traceback)."""
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if isinstance(error, TypeError) and "argument" in first and (self.keywords or self.source == "code"):
            how = "give only keywords its builder takes" if self.keywords else "it is called as FUNCTION(num_classes=N)"
            return SpecificationError(f"{self.text}: {first}; {how}.")
        if self.source in ("code", "hf"):
            return SpecificationError(f"{self.text} could not be built: {type(error).__name__}: {first}")
        return None

    def sized(self, model: nn.Module, input_size: tuple | None = None) -> "Spec":
        """This spec with the input size its built `model` runs at, and where that size comes from (see the module
        docstring); `input_size` (C, H, W) overrides them all."""
        if input_size is not None:
            return dataclasses.replace(self, input_size=tuple(input_size), size_origin="given")
        size, origin = decided_size(self, model)
        return dataclasses.replace(self, input_size=size, size_origin=origin)

    @property
    def unsized(self) -> str:
        """The text without its size: the one to write `@H` after for another size."""
        return re.sub(r"@\d+(x\d+)?$", "", self.text)

    def at(self, size: tuple) -> str:
        """How to ask for this model at `size` (H, W): its size keyword changed, `@H`, or for a model given as an
        object, `split`'s `input_size`."""
        height, width = size
        if self.source == "model":
            return f"split(model, input_size=(3, {height}, {width}))"
        for key in ("img_size", "image_size"):
            if self.size is None and isinstance(dict(self.keywords).get(key), int) and height == width:
                return re.sub(rf"\b{key}\s*=\s*\d+", f"{key}={height}", self.text)
        return f"{self.unsized}@{height}" + (f"x{width}" if width != height else "")

    def does_not_run(self, error: Exception) -> SpecificationError:
        """The error of a first forward pass that failed at this spec's size: the size, where it came from, and how
        to give another."""
        size = " x ".join(map(str, self.input_size))
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        how = ("split(model, input_size=(C, H, W)), or an `input_size` attribute on the model" if self.source == "model"
               else f"in the specification, e.g. {self.unsized}@224 (or @HxW), or as an `input_size` attribute "
               "(C, H, W) on the model your function returns")
        return SpecificationError(f"{self.text} does not run on a batch of {PROBE_BATCH} inputs of {size} "
                                  f"({self.size_origin}): {type(error).__name__}: {first}\nGive its input size {how}.")


def pair(size) -> tuple:
    return (size, size) if isinstance(size, int) else tuple(size)[-2:]


def decided_size(spec: Spec, model: nn.Module) -> tuple:
    """((C, H, W), where it comes from) of a built model (see the module docstring): the one place it is decided."""
    if spec.size is not None:
        height, width = spec.size
        return (3, height, width), f"the specification's @{height}" + (f"x{width}" if width != height else "")
    keywords = dict(spec.keywords)
    for key in ("img_size", "image_size"):
        if keywords.get(key) is not None:
            return (3, *pair(keywords[key])), f"its keyword {key}={keywords[key]!r}"
    if getattr(model, "input_size", None) is not None:
        return tuple(model.input_size), "the model's input_size attribute"
    if spec.source == "code" and getattr(spec.builder, "input_size", None) is not None:
        return tuple(spec.builder.input_size), "its builder's input_size attribute"
    configured = configured_size(model)
    if configured is not None:
        return configured
    return CIFAR_SIZE, "the figure's default, CIFAR's 32 x 32"


def configured_size(model):
    """((C, H, W), origin) from a model's own configuration, or None: timm's patch embedding (built for one size)
    or `pretrained_cfg`, a Hugging Face config's `image_size`, a torchvision ViT's `image_size`."""
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        return (3, *pair(img_size)), "its patch embedding's img_size"
    config = getattr(model, "config", None)
    if getattr(config, "image_size", None) is not None:
        return (getattr(config, "num_channels", 3), *pair(config.image_size)), "its Hugging Face config's image_size"
    if isinstance(getattr(model, "image_size", None), int):
        return (3, *pair(model.image_size)), "its image_size attribute"
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(cfg["input_size"]), "timm's pretrained_cfg"
    return None


# The first forward pass of a model of your own or of Hugging Face

def checked(spec: Spec, model: nn.Module, num_classes: int) -> None:
    """Run `model` once on a batch of `spec`'s size: a (batch, classes) tensor passes; a `ModelOutput` or dict with
    `logits`, or a tuple whose first item is the logits, makes the model return those from now on (a forward hook,
    said in one line); anything else, or a failure, is a `SpecificationError` that says what to do."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros(PROBE_BATCH, *spec.input_size, device=device))
    except Exception as error:
        raise spec.does_not_run(error) from error
    finally:
        model.train(was_training)
    expected = (PROBE_BATCH, num_classes)
    take, logits = logits_in(output)
    if take is not None and tuple(logits.shape) == expected:
        model.register_forward_hook(take)
        print(f"Note: the figures read the {'logits' if take is logits_item else 'first item (the logits)'} of "
              f"{spec.text}'s {type(output).__name__} output.")
        return
    if torch.is_tensor(output) and tuple(output.shape) == expected:
        return
    shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
    raise SpecificationError(f"{spec.text} returns {shape} for a batch of {PROBE_BATCH} images of "
                             f"{' x '.join(map(str, spec.input_size))}; a classifier for this figure returns "
                             f"(batch, classes) = {expected}.")


def logits_item(module, args, output):
    """A forward hook: the `logits` of a `ModelOutput` or dict (a tensor passes through)."""
    return None if torch.is_tensor(output) else output["logits"]


def first_item(module, args, output):
    """A forward hook: the first item of a tuple (a tensor passes through)."""
    return None if torch.is_tensor(output) else output[0]


def logits_in(output):
    """(the hook that takes the logits out of `output`, those logits), or (None, None) for a tensor or no logits."""
    if isinstance(output, dict) and torch.is_tensor(output.get("logits")):
        return logits_item, output["logits"]
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return first_item, output[0]
    return None, None
