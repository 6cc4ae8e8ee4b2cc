"""Files in the real formats, for the real download and loading code: CIFAR archives laid out as torchvision reads
them, a CIFAR-100-C tar, the official checkpoints filled by the fixture's recipe, and the authors' published grids
(their real files, in fixtures/authors_grids). `mirror(folder)` puts them all under their official names, as a
mirror (`VITS_MIRROR`) holds them."""
import pickle
import shutil
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from official import official_state_dict

from helpers import data, models
from helpers.blocks import Block, Blocks, Site

AUTHORS_GRIDS = Path(__file__).resolve().parent / "fixtures" / "authors_grids"
# name -> archive, folder inside it, {split file: train?}, meta file, label key, meta key
CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                {**{f"data_batch_{i}": True for i in range(1, 6)}, "test_batch": False},
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", {"train": True, "test": False},
                 "meta", "fine_labels", "fine_label_names"),
}


def cifar_archive(folder, name, per_file=12, *, seed=0):
    """Write `name`'s archive into `folder` as the originals are laid out (str keys, as torchvision reads the Python
    2 pickles with latin1), `per_file` images per split file whose labels cycle through every class; return
    {train: (uint8 N x 3 x 32 x 32 images, labels)}."""
    archive, base, files, meta, label_key, meta_key = CIFAR_LAYOUT[name]
    classes = data.NUM_CLASSES[name]
    rng = np.random.default_rng(seed)
    (folder / base).mkdir(parents=True)
    expected = {True: ([], []), False: ([], [])}
    for file, train in files.items():
        rows = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = (rng.permutation(per_file) % classes).tolist()
        entry = {"batch_label": file, "data": rows, label_key: labels,
                 "filenames": [f"{file}_{i}.png" for i in range(per_file)]}
        if name == "cifar100":
            entry["coarse_labels"] = [label // 5 for label in labels]
        (folder / base / file).write_bytes(pickle.dumps(entry, protocol=2))
        expected[train][0].append(rows.reshape(-1, 3, 32, 32))
        expected[train][1].extend(labels)
    names = {meta_key: [f"class_{i}" for i in range(classes)]}
    if name == "cifar100":
        names["coarse_label_names"] = [f"superclass_{i}" for i in range(20)]
    (folder / base / meta).write_bytes(pickle.dumps(names, protocol=2))
    with tarfile.open(folder / archive, "w:gz") as tar:
        tar.add(folder / base, arcname=base)
    return {train: (np.concatenate(images), labels) for train, (images, labels) in expected.items()}


def cifar100c_arrays(corruptions=data.ALL_CORRUPTIONS, n=2, seed=0):
    """({corruption: uint8 (5 n, 32, 32, 3)}, labels (5 n,)): `n` images per severity."""
    rng = np.random.default_rng(seed)
    labels = np.tile(rng.integers(0, 100, n), 5).astype(np.int64)
    return {name: rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8) for name in corruptions}, labels


def cifar100c_folder(folder, arrays, labels):
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", labels)
    for name, images in arrays.items():
        np.save(folder / f"{name}.npy", images)
    return folder


def cifar100c_tar(path, folder):
    """`folder` as CIFAR-100-C/ in the tar at `path`."""
    with tarfile.open(path, "w") as tar:
        tar.add(folder, arcname="CIFAR-100-C")
    return path


def official_checkpoint(path, name):
    """The recipe's weights of `name` in the official format: {"name", "state_dict", "optimizer"}."""
    torch.save({"name": name, "state_dict": official_state_dict(name), "optimizer": {"state": {}}}, path)
    return path


def mirror(folder, *, per_file=300, per_severity=2):
    """Every file a real run downloads, under its official name: CIFAR-100 (`per_file` images in each split, every
    class present), CIFAR-100-C (all 19 corruptions), the four official checkpoints (the recipe's weights, which the
    official fingerprints do not vouch for), and the authors' two published grids, their real files."""
    folder.mkdir(parents=True, exist_ok=True)
    cifar_archive(folder / "build", "cifar100", per_file)
    (folder / "build" / CIFAR_LAYOUT["cifar100"][0]).rename(folder / CIFAR_LAYOUT["cifar100"][0])
    cifar100c_tar(folder / "CIFAR-100-C.tar",
                  cifar100c_folder(folder / "build" / "CIFAR-100-C", *cifar100c_arrays(n=per_severity)))
    for name in models.OFFICIAL:
        official_checkpoint(folder / models.entry(name).file, name)
    for name, entry in models.REGISTRY.items():
        if entry.grid:
            shutil.copy(AUTHORS_GRIDS / entry.grid[0], folder / entry.grid[0])
    return folder


class Step(nn.Module):
    """A function as a module (holding `modules`, for parameters), so that a model can be made of functions."""

    def __init__(self, function, modules=()):
        super().__init__()
        self.function, self.held = function, nn.ModuleList(modules)

    def forward(self, x):
        return self.function(x)


def chain(*steps, modules=()):
    """`Blocks` of a model that applies functions in turn, each step (kind, name, function, layout[, Block fields]);
    a `head` step's output is the logits (no site). The last step holds `modules` (the model's parameters)."""
    last = steps[-1][1]
    model = nn.Sequential(OrderedDict((name, Step(function, modules if name == last else ()))
                                      for _, name, function, *_ in steps))
    return Blocks(model, [Block(kind, name, None if kind == "head" else Site(name), layout, **(more[0] if more else {}))
                          for kind, name, _, layout, *more in steps])
