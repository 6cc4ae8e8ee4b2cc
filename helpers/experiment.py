"""One definition per figure: the experiment config that the notebook, the command line and the stored results
are all read from.

Each figure module defines `Config`, a dataclass extending `Experiment`, with every setting of the figure, each
with its default and a one-line doc (`setting`). The notebook's `parameters` cell assigns exactly those names
and builds the config with `Config.from_namespace(globals())`; `python -m helpers.X` builds its options from the
same fields (`--batch-size` for `batch_size`, the docs as `--help`); smoke mode caps the same sizes on both
sides (`Config.resolved`). A stored sweep lives in the folder `table` computes from its full definition: the
settings that change its numbers, the smoke flag, the data's identity and size, and a digest of the weights. A
run with another definition gets another folder (and a note naming what differs), so it never reuses a row.
"""
import argparse
import ast
import copy
import dataclasses
import hashlib
import json
import os
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from helpers import models
from helpers.common import rank
from helpers.sweep import Table

RESULTS_VARIABLE = "VITS_RESULTS"


def setting(default, doc, *, identity=True, smoke=None, check=None, choices=None):
    """A config field: `doc` (one line, the --help text); `identity`: whether it changes the stored numbers (then
    it is part of the definition); `smoke`: the cap on this count in smoke mode; `check(value)`: None or what is
    wrong; `choices`: the allowed values."""
    metadata = {"doc": doc, "identity": identity, "smoke": smoke, "check": check, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def positive(value):
    return None if value is None or value >= 1 else "must be at least 1"


@dataclass
class Experiment:
    """The settings every figure shares."""
    smoke: bool = setting(False, "fresh weights, synthetic data, tiny sizes: checks that everything runs "
                          "(meaningless numbers)")
    results: str | None = setting(None, "folder of figures, tables and sweeps (None: results/ in the project "
                                  f"folder, or ${RESULTS_VARIABLE})", identity=False)
    data_root: str = setting("data", "folder of the datasets (downloaded there on first use)", identity=False)
    mirror: str | None = setting(None, "base URL or folder holding the official files under their official names, "
                                 "for every download (None: $VITS_MIRROR, else the official locations)",
                                 identity=False)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            problem = type_problem(value, hints[field.name])
            values = value if isinstance(value, (list, tuple)) else [value]  # a list: each item is a choice
            if problem is None and meta.get("choices") and value is not None and not set(values) <= set(meta["choices"]):
                problem = f"must be one of {', '.join(map(repr, meta['choices']))}"
            if problem is None and meta.get("check"):
                problem = meta["check"](value)
            if problem:
                raise ValueError(f"{field.name}={value!r}: {problem}")

    @classmethod
    def from_namespace(cls, namespace):
        """The config from a notebook's variables (the `parameters` cell assigns every field)."""
        return cls(**{field.name: namespace[field.name] for field in dataclasses.fields(cls)})

    def resolved(self):
        """This config with the smoke caps applied to its counts when `smoke` (the same on every side)."""
        if not self.smoke:
            return self
        caps = {f.name: f.metadata["smoke"] for f in dataclasses.fields(self) if f.metadata.get("smoke") is not None}
        values = {name: cap if getattr(self, name) is None else min(getattr(self, name), cap)
                  for name, cap in caps.items()}
        return dataclasses.replace(self, **values)

    def settings(self):
        """The fields that change the stored numbers, by name: the definition's settings."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["identity"]}

    def results_folder(self):
        """The absolute folder of this experiment's figures, tables and sweeps (see `results_folder`)."""
        return results_folder(self.results)


@dataclass
class Pretrained(Experiment):
    """The settings of a figure of pretrained models: which ones, and where their weights come from."""
    models: list[str] = setting(["resnet_50", "vit_ti"], "model specifications: registry names (python -m "
                                "helpers.models lists them), timm:NAME, hf:ID, file.py:FUNCTION, each with an "
                                "optional @SIZE", identity=False)
    checkpoints: dict[str, str] = setting({}, "model name -> checkpoint file to use instead of the official weights "
                                          "(e.g. a trained AlterNet)", identity=False)
    checkpoint_root: str = setting("checkpoints", "folder of the official checkpoints (downloaded there on first use)",
                                   identity=False)

    def __post_init__(self):
        super().__post_init__()
        if self.smoke and self.checkpoints:
            raise ValueError(f"checkpoints={self.checkpoints!r}: a smoke run uses fresh weights, so these files "
                             "would be ignored; drop them, or run without smoke")
        for text in [*self.models, *self.checkpoints]:
            models.resolve(text)  # a specification that names nothing fails here, before anything is computed

    def names(self):
        """Every model of the figure: `models`, then the other specifications of `checkpoints`."""
        return self.models + [name for name in self.checkpoints if name not in self.models]

    def spec(self, name):
        """The resolved `helpers.models.Spec` of a specification (the figure builds it with CIFAR-100's 100 classes;
        `spec.sized(model)` gives the size the built model runs at)."""
        return models.resolve(name)

    def pretrained(self, name, device=None):
        """The model `name` names with its weights: the file of `checkpoints`, else official (downloaded, mirror
        honoured), timm's hub weights or fresh ones (see `helpers.checkpoints.pretrained`), and fresh ones for a
        smoke run; in eval mode on `device`."""
        from helpers.checkpoints import pretrained

        return pretrained(self.spec(name), self.checkpoint_root, path=self.checkpoints.get(name), smoke=self.smoke,
                          map_location=device, mirror=self.mirror)


def type_problem(value, annotation):
    """None when `value` fits `annotation` (bool, int, float, str, lists and dicts of them, `X | None`)."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        return None if type(None) in options else "must not be None"
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is bool and isinstance(value, bool):
            return None
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if origin in (int, str) and isinstance(value, origin) and not isinstance(value, bool):
            return None
        if origin in (list, dict) and isinstance(value, (list, tuple) if origin is list else dict):
            return None
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    return f"must be {names} (True/False for a flag)" if bool in options else f"must be {names}"


# --- where results live ------------------------------------------------------------------------------------------

def project_root():
    """The checkout the package runs from (the folder with the notebooks), or the working folder for an install."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and any(root.glob("*.ipynb")) else Path.cwd()


def results_folder(results=None):
    """The absolute results folder: `results` (relative to the working folder), else $VITS_RESULTS, else results/
    in the project folder, so that the notebooks and the command line meet wherever they are started."""
    results = results or os.environ.get(RESULTS_VARIABLE) or project_root() / "results"
    return Path(results).expanduser().resolve()


def weights_digest(model):
    """SHA-256 (first 16 hex digits) of the model's state dict: names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def definition_digest(definition):
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:12]


def differences(old, new, prefix=""):
    """`key: old -> new` for every leaf that differs between two nested dicts."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def table(config, figure, name, key, *, data, weights, rank_info=None):
    """The one place the rows of `figure` for model (or model set) `name` under `config` live: a folder under
    results/sweeps/figure/ named by the digest of the full definition (settings, smoke, data, weights)."""
    definition = {"figure": figure, "model": name, "settings": config.settings(), "data": data, "weights": weights}
    base = config.results_folder() / "sweeps" / figure
    folder = base / f"{name}-{definition_digest(definition)}"
    if not folder.exists() and (rank_info or rank()).rank == 0:
        others = sorted(base.glob(f"{name}-*/definition.json"), key=lambda p: p.stat().st_mtime)
        if others:
            changed = differences(json.loads(others[-1].read_text()), definition)
            print(f"Note: {others[-1].parent} holds {name}'s rows for another definition ({'; '.join(changed[:4])}); "
                  f"this one is computed anew in {folder}.", flush=True)
    return Table(folder, key, definition, rank_info)


# --- the command line --------------------------------------------------------------------------------------------

def parse_bool(text):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise argparse.ArgumentTypeError(f"{text!r} is not True or False")


def pair_parser(value_type):
    """NAME=VALUE -> (name, value); values of a `dict[str, str]` stay strings, others are Python literals. NAME may be
    a model specification with keywords, `timm:NAME(img_size=32)=FILE`: it ends at its closing parenthesis."""
    def parse_pair(text):
        cut = text.find(")") + 1 if "(" in text.partition("=")[0] else 0
        key, sep, value = text[cut:].partition("=")
        key = text[:cut] + key
        if not sep:
            raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
        if value_type is not str:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        return key, value
    return parse_pair


def converter(kind):
    """A string -> value parser for an annotation (of a list: for its items); optional values accept "None"."""
    optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
    bare = [o for o in typing.get_args(kind) if o is not type(None)][0] if optional else kind
    item = (typing.get_args(bare) or (str,))[0] if typing.get_origin(bare) is list else bare
    parse = parse_bool if item is bool else item
    if not optional:
        return parse

    def parse_optional(text):
        return None if text.lower() == "none" else parse(text)
    return parse_optional


def parser(config_class, description=None, prog=None):
    """argparse options for every field of `config_class`: `--name-with-dashes`, the doc as help."""
    arguments = argparse.ArgumentParser(prog=prog, description=description,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(config_class)
    defaults = config_class()
    for field in dataclasses.fields(config_class):
        kind, default = hints[field.name], getattr(defaults, field.name)
        option = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata['doc']} (default: {default!r})"
        bare = [o for o in typing.get_args(kind) if o is not type(None)][0] if isinstance(kind, types.UnionType) else kind
        if bare is bool:
            arguments.add_argument(option, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(bare) is dict:
            arguments.add_argument(option, nargs="*", type=pair_parser(typing.get_args(bare)[1]), default=None,
                                   metavar="NAME=VALUE", help=help_text)
        elif typing.get_origin(bare) is list:
            arguments.add_argument(option, nargs="+", type=converter(kind), default=default, help=help_text,
                                   choices=field.metadata.get("choices"))
        else:
            arguments.add_argument(option, type=converter(kind), default=default, help=help_text,
                                   choices=field.metadata.get("choices"))
    return arguments


def parse(config_class, argv=None, description=None, prog=None):
    """The config from command-line arguments; a bad value ends the program with a one-line usage error."""
    arguments = parser(config_class, description, prog)
    values = vars(arguments.parse_args(argv))
    for field in dataclasses.fields(config_class):  # NAME=VALUE pairs -> dict; lists of one None -> None
        value = values[field.name]
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            values[field.name] = dict(value)
        elif value is None and typing.get_origin(typing.get_type_hints(config_class)[field.name]) is dict:
            values[field.name] = {}
        elif isinstance(value, list) and value == [None]:
            values[field.name] = None
    try:
        return config_class(**values)
    except ValueError as error:
        arguments.error(str(error))


@dataclass
class Outcome:
    """What a sweep run left in one table: the model (or models) it is of, its units, the table, and the columns
    every row of its figure table carries (`helpers.provenance.facts`: whether the model has MSA blocks, ...)."""
    name: str
    table: Table
    units: list
    facts: dict = dataclasses.field(default_factory=dict)

    def summary(self, computed=None):
        done = self.table.done()
        finished = sum(self.table.unit_key(unit) in done for unit in self.units)
        computed = self.table.computed if computed is None else computed
        return f"{self.table.folder}: {finished} of {len(self.units)} units finished ({computed} computed by this run)"


def summary(outcomes):
    """One line per table filled: where it is, how many units are finished, how many this run computed."""
    return "\n".join(outcome.summary() for outcome in outcomes)


def main(config_class, run, argv=None, description=None):
    """`python -m helpers.X [options]`, also under `torchrun`: parse, `run(config) -> [Outcome]`, then one summary
    from rank 0 once every rank is done. Ctrl-C and unwritable results end with one line, not a traceback."""
    from helpers.checkpoints import CheckpointError
    from helpers.download import DownloadError
    from helpers.sweep import TableError

    summary_line = (description or "").strip().split("\n\n")[0]  # the module docstring's first paragraph
    module = sys.modules[run.__module__]  # "__main__" under python -m; its spec keeps the name that was typed
    config = parse(config_class, argv, summary_line, prog=f"python -m {getattr(module.__spec__, 'name', module.__name__)}")
    place = rank()
    if place.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # only for the barrier and the counts: units are shared by the tables
    try:
        outcomes = run(config)
    except KeyboardInterrupt:  # `sweep.fill` has said what is kept
        return 130
    except (OSError, TableError, DownloadError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = torch.tensor([outcome.table.computed for outcome in outcomes], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(counts)  # also the barrier: every rank is done
    if place.rank == 0:
        print("\n".join(o.summary(int(c)) for o, c in zip(outcomes, counts.tolist())), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
