"""Small pieces every analysis module uses: the device, the torchrun rank, eval mode for the duration, seeded random
generators, atomic saves that fail with a clear message, file digests, and the record beside a figure's table of
what its numbers rest on."""
import errno
import hashlib
import json
import os
import random
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CHUNK = 1 << 20


def pick_device():
    """CUDA (this process's GPU under torchrun), then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def rank():
    """This process's place under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    return Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


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


@contextmanager
def seeded(*entropy):
    """Python's, NumPy's and torch's global CPU generators seeded from the integers `entropy` for the duration, then
    restored: augmentations (torchvision, RandAugment, timm's Mixup) draw from all three."""
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class ResultsError(OSError):
    """A results or checkpoint folder that cannot be written (read-only, full, missing permission)."""


def write_failure(path, error):
    """A `ResultsError` naming the folder of `path` and the cause of `error` in one line."""
    folder = Path(path).parent
    code = getattr(error, "errno", None)
    try:
        free = shutil.disk_usage(folder if folder.exists() else Path.cwd()).free
    except OSError:
        free = None
    if code == errno.ENOSPC or (free is not None and free < 16 * CHUNK):
        cause = f"the disk is full ({(free or 0) / CHUNK:.0f} MB free); free some space and run again"
    elif code == errno.EROFS:
        cause = "read-only file system; choose another folder"
    elif code in (errno.EACCES, errno.EPERM):
        cause = "permission denied; choose a folder you can write to"
    else:
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ResultsError(code or errno.EIO, f"Cannot write to {folder}: {cause}")


@contextmanager
def writing(path):
    """Turn a failed write of `path` into a one-line `ResultsError` (the original error stays chained)."""
    try:
        yield
    except ResultsError:
        raise
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        if isinstance(error, RuntimeError) and "write" not in str(error).lower():
            raise
        raise write_failure(path, error) from error


def save(obj, path):
    """`torch.save` to a temporary name beside `path`, then rename: a killed run never leaves half a file, a
    resumed one finds the previous whole file, and processes racing to write the same file each rename a whole one."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(obj, partial)
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def file_digest(path, algorithm="sha256"):
    """The hex digest of the file at `path` (`algorithm`: any of hashlib's, e.g. "sha256" or "md5")."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def provenance_path(table_path):
    """The record beside a figure's table `NAME.csv` (written by `plots.save`): `NAME.json`, {"run": KIND}."""
    return Path(table_path).with_suffix(".json")


def saved_run(table_path):
    """What the figure table at `table_path` rests on, as recorded beside it: "smoke", "official", "user" or
    "unverified" (`helpers.provenance`); None when there is no readable record (a table saved by other code, or
    before the run was recorded: an older record says only whether a smoke run made it)."""
    try:
        record = json.loads(provenance_path(table_path).read_text())
        return str(record["run"]) if "run" in record else "smoke" if record["smoke"] is True else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
