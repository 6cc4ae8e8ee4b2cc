"""The sources a specification can name besides the registry (`helpers.models.resolve` dispatches here): timm, Hugging
Face, and your own code, a module or a file. Each returns a `Spec` or raises a `SpecificationError` of one or two
lines that names the specification and what to do."""
import ast
import difflib
import importlib
import importlib.util
import re
import sys
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path

from helpers.spec import Spec, SpecificationError

TIMM, HF = "timm:", "hf:"


def parse(text: str) -> tuple:
    """(target, ((name, value), ...), (H, W) or None) of `target(name=value, ...)@HxW`; values are Python literals."""
    match = re.fullmatch(r"\s*([^()\s]+?)\s*(?:\((.*)\))?\s*(?:@\s*(\d+)(?:\s*x\s*(\d+))?)?\s*", text, flags=re.S)
    if not match:
        raise SpecificationError(f"{text!r} is not a model specification: write NAME, timm:NAME, hf:ID or "
                                 "FILE.py:FUNCTION, optionally with keywords in parentheses and a size: "
                                 "timm:NAME(img_size=32), torchvision.models:resnet18@224")
    target, arguments, height, width = match.groups()
    size = (int(height), int(width or height)) if height else None
    if size is not None and min(size) < 1:
        raise SpecificationError(f"{text}: the size after @ must be positive, as in @224 or @224x160.")
    if not arguments:
        return target, (), size
    try:
        call = ast.parse(f"f({arguments})", mode="eval").body
        if call.args:
            raise ValueError("positional arguments")
        keywords = tuple((k.arg, ast.literal_eval(k.value)) for k in call.keywords)
    except (SyntaxError, ValueError) as error:
        raise SpecificationError(f"The keywords of {text!r} must be name=value pairs of Python literals, as in "
                                 f"timm:NAME(img_size=32, patch_size=4) ({error}).") from None
    if "num_classes" in dict(keywords):
        raise SpecificationError(f"{text}: the figure sets num_classes (100 for CIFAR-100); drop it from the "
                                 "specification.")
    return target, keywords, size


def timm_spec(text, name, keywords, size):
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
    builder = partial(timm.create_model, name)
    if not tag:
        return Spec(text, "timm", builder, keywords, size)
    config = timm.models.get_pretrained_cfg(name)
    data_config = resolve_data_config(config.to_dict())
    return Spec(text, "timm", builder, keywords, size, pretrained=True, classes=config.num_classes or 1000,
                mean=tuple(data_config["mean"]), std=tuple(data_config["std"]), data_config=data_config)


def code_spec(text, target, keywords, size):
    """Your own builder: `path/to/file.py:FUNCTION` (relative to the working folder) or `package.module:FUNCTION`."""
    location, _, function = target.rpartition(":")
    if location.endswith(".py"):
        path = Path(location).expanduser()
        if not path.is_file():
            raise SpecificationError(f"{text}: there is no file {path.resolve()}.")
        try:
            module = file_module(path.resolve(), path.stat().st_mtime_ns)
        except SpecificationError as error:
            raise SpecificationError(f"{text}: {error}") from None
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            missing = getattr(error, "name", None) or location
            where = (f"no module named {missing!r} can be imported (is it on the path? a file is written "
                     f"path/to/file.py:{function})") if location.startswith(missing) else \
                f"{location} imports {missing!r}, which is not installed (pip install {missing.split('.')[0]})"
            raise SpecificationError(f"{text}: {where}.") from error
    builder = getattr(module, function, None)
    if not callable(builder):
        defined = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                   and str(getattr(v, "__module__", "")).startswith(module.__name__)]
        close = difflib.get_close_matches(function, defined, n=3)
        known = f"did you mean {', '.join(close)}?" if close else \
            f"it defines: {', '.join(defined[:12]) + (', ...' if len(defined) > 12 else '') or 'nothing callable'}"
        raise SpecificationError(f"{text}: {location} has no function {function!r}; {known}")
    return Spec(text, "code", builder, keywords, size)


@lru_cache(maxsize=None)
def file_module(path, modified):
    """The module of a Python file, run once per version of the file (`modified`: its mtime), with the file's folder
    on `sys.path` as when Python runs a file: a specification is resolved wherever a model is named, and a file's
    classes keep one identity."""
    name = f"vits_user_{path.stem}"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except ImportError as error:
        del sys.modules[name]
        missing = getattr(error, "name", None) or str(error)
        raise SpecificationError(f"{path.name} imports {missing!r}, which is neither installed nor beside it in "
                                 f"{path.parent}; install it or put it there.") from None
    except SyntaxError as error:
        del sys.modules[name]
        raise SpecificationError(f"{path.name}, line {error.lineno}: {error.msg}.") from None
    return module


def hf_spec(text, target, keywords, size):
    """A Hugging Face image classifier, `hf:ID` on the hub or `hf:FOLDER` saved with `save_pretrained`: built with
    the figure's classes (a new classifier where its own has others), normalised as its image processor says."""
    config = hf_config(text, target)
    mean, std = hf_normalization(target)
    return Spec(text, "hf", partial(hf_build, target, config.num_labels, text), keywords, size, pretrained=True,
                mean=mean, std=std)


@lru_cache(maxsize=None)
def hf_config(text, target):
    try:
        from transformers import AutoConfig
    except ImportError:
        raise SpecificationError(f"{text}: Hugging Face models need the transformers package: pip install "
                                 "transformers") from None
    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(target)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise SpecificationError(f"{text}: no Hugging Face model {target!r} (a hub ID or a folder saved with "
                                 f"save_pretrained): {first}") from None


@lru_cache(maxsize=None)
def hf_normalization(target):
    """(mean, std) of the model's image processor, or (None, None) where it has none."""
    from transformers import AutoImageProcessor

    try:
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(target)
    except (OSError, ValueError):
        return None, None
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    return (tuple(mean), tuple(std)) if mean is not None and std is not None else (None, None)


def hf_build(target, labels, text, num_classes, pretrained=True, **keywords):
    """`AutoModelForImageClassification` of `target` with `num_classes` classes: its weights (a new classifier when
    it has `labels` other ones, said in a note), or fresh ones from its config."""
    from transformers import AutoConfig, AutoModelForImageClassification

    with quiet_transformers():
        if not pretrained:
            config = AutoConfig.from_pretrained(target, num_labels=num_classes, **keywords)
            return AutoModelForImageClassification.from_config(config)
        model = AutoModelForImageClassification.from_pretrained(target, num_labels=num_classes,
                                                                ignore_mismatched_sizes=True, **keywords)
    if labels != num_classes:
        print(f"Note: {text} has a new classifier for the figure's {num_classes} classes (its own has {labels}).")
    return model


@contextmanager
def quiet_transformers():
    """transformers' own warnings off (the notes above say what matters)."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
