"""The authors' CIFAR-100 checkpoints: download, verify, remap to timm 1.x, load.

The official files were saved by the authors' code with timm 0.5.4 as `{"name", "state_dict", "optimizer"}`.
Loading one goes: read with `weights_only=True` (a file that would run code is refused), take the state dict
(bare dicts and a `module.` prefix are accepted too), drop non-learned index/mask buffers (the model
recomputes them), remap the timm 0.5.4 layout to timm 1.x, compare keys and shapes with the model and name
every difference, then load strictly. A download from the official location is also checked against two
fingerprints of the real weights (sums of L1 and L2 norms) published with the authors' loss landscapes. The
official file names, URLs and fingerprints live in the model registry (`helpers.models.REGISTRY`).
"""
import functools
import math
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from timm.models import swin_transformer

from helpers import models
from helpers.common import file_digest
from helpers.download import download, source
from helpers.losses import norm_sums

FINGERPRINT_RTOL = 1e-5
NON_LEARNED = re.compile(r"(relative_position_index|attn_mask|rel_index)$")
SHOWN = 5  # differences listed per category in an error


class CheckpointError(RuntimeError):
    pass


def by_hand(spec):
    url = spec.entry.url if spec.entry else None
    return f"To place it by hand, download {url or '(no official file)'} and put it in checkpoints/ (see checkpoints/README.md)."


def load(spec, root="checkpoints", url=None, map_location=None, verbose=False, mirror=None):
    """The model of `spec` (a registry name with official weights, or any `helpers.models` specification with `url`)
    in eval mode with weights from `root`, downloaded first when the file is absent.

    The file comes from the official location, or from the mirror in effect (`mirror`, else $VITS_MIRROR; see
    `helpers.download`), or from `url`; only an official download is checked against the official fingerprints,
    the others are verified by structure.
    """
    spec = models.resolve(spec)
    if url is None and (spec.entry is None or spec.entry.file is None):
        raise CheckpointError(f"No official checkpoint was published for {spec.name!r} (there are: "
                              f"{', '.join(models.OFFICIAL)}). Train one with classification.ipynb and load it with "
                              f"load_file(path, {spec.name!r}).")
    url, official = (url, False) if url is not None else source(spec.entry.url, mirror)
    path = Path(root) / (spec.entry.file if official else Path(urlparse(url).path).name)
    if path.exists():
        if verbose:
            print(f"{path}: sha256 {file_digest(path)}")
        return load_file(path, spec, map_location=map_location)
    verified = []

    def verify(tmp):  # runs on the temporary file: a file that fails never reaches `path`
        model = load_file(tmp, spec)
        if official:
            check_fingerprint(model, spec, tmp)
        if verbose:
            print(f"{path.name}: sha256 {file_digest(tmp)}")
        verified.append(model)

    download(url, path, verify=verify, hint=by_hand(spec) if official else "")
    return verified[0].to(map_location) if map_location is not None else verified[0]


def pretrained(spec, root="checkpoints", path=None, smoke=False, map_location=None, mirror=None):
    """What a figure loads for a specification: the file at `path` (weights of your own, e.g. a trained AlterNet);
    else the official CIFAR-100 weights of a registry model, timm's hub weights of a pretrained tag, or fresh weights
    for another timm architecture or your own code (said in a note). With `smoke=True` fresh weights (always the
    same ones), so smoke runs need no download. In eval mode, on `map_location`."""
    spec = models.resolve(spec)
    if smoke and path is not None:
        raise ValueError(f"A smoke run uses fresh weights, so the checkpoint {path} would be ignored: "
                         "drop it, or run without smoke.")
    if path is not None:
        return load_file(path, spec, map_location=map_location)
    if spec.entry is not None and not smoke:
        return load(spec, root=root, map_location=map_location, mirror=mirror)
    if not smoke and not spec.pretrained:
        print(f"Note: {spec.name} has no official weights and no checkpoint was given: its weights are fresh "
              "(seeded); give a file in `checkpoints` to analyse trained ones.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same fresh weights in every run and on every torchrun rank
        model = spec.build(fresh=smoke)  # a pretrained tag's or Hugging Face's weights unless smoke
    return (model.to(map_location) if map_location is not None else model).eval()


def load_file(path, spec, map_location=None):
    """Load a checkpoint file already on disk into a fresh model of `spec`, in eval mode, moved to `map_location`
    if given (weights are read on the CPU, then the model moves once)."""
    spec = models.resolve(spec)
    model = spec.build(fresh=True)
    state_dict = remap(read_state_dict(path), spec, model)
    check_structure(state_dict, model.state_dict(), path, spec.name)
    model.load_state_dict(state_dict)
    return model.to(map_location).eval() if map_location is not None else model.eval()


def read_state_dict(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable checkpoint: {diagnose(path, error)} "
                              f"Delete it and download it again.") from error
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict: expected {{'state_dict': {{...}}}} or a dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}  # saved from nn.DataParallel


def diagnose(path, error):
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith(b"<"):  # <!DOCTYPE html>, <html>, <?xml ...>
        return "it is an HTML/XML page (a failed download or an error page), not PyTorch weights."
    if "weights only" in str(error).lower() or "weights_only" in str(error):
        return ("it contains Python objects other than tensors; it was refused unread because unpickling it "
                "could run code.")
    if head.startswith(b"pk"):
        return f"the zip archive is damaged or truncated ({error})."
    return f"{type(error).__name__}: {error}."


# Remaps from the original (timm 0.5.4 / authors' code) layout to ours, one small pure function per family

def remap_pit(state_dict, model):
    """timm 0.5.4 ends stage i with its pooling layer; timm 1.x starts stage i+1 with it."""
    stage_pool = re.compile(r"^transformers\.(\d+)\.pool\.")
    return {stage_pool.sub(lambda m: f"transformers.{int(m.group(1)) + 1}.pool.", k): v for k, v in state_dict.items()}


def remap_swin(state_dict, model):
    """timm's own filter: patch merging to the start of the next stage, `head.` to `head.fc.`."""
    return swin_transformer.checkpoint_filter_fn(state_dict, model)


REMAPS = {"pit": remap_pit, "swin": remap_swin}


def remap(state_dict, spec, model):
    """The registry families' remaps from the timm 0.5.4 layout; other models' files are taken as they are."""
    spec = models.resolve(spec)
    state_dict = {k: v for k, v in state_dict.items() if not NON_LEARNED.search(k)}
    family_remap = REMAPS.get(spec.entry.family) if spec.entry else None
    if family_remap is None:
        return state_dict
    try:
        return family_remap(state_dict, model)
    except Exception as error:  # timm's filter looks up submodules by key: a foreign file can break it
        raise CheckpointError(f"Could not convert the checkpoint to {spec.name}'s layout ({error}); "
                              f"is it a {spec.name} checkpoint?") from error


def check_structure(state_dict, expected, path, name):
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{path} does not fit {name}: {len(missing)} missing, {len(unexpected)} unexpected, "
             f"{len(misshaped)} mis-shaped keys (is it a checkpoint of another model?)"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            lines.append(f"  {label}: " + ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else ""))
    raise CheckpointError("\n".join(lines))


def fingerprint(model):
    """(sum of L1 norms, sum of L2 norms) over the model's parameters, as the authors' landscape tables record."""
    return norm_sums(model.parameters())


def fingerprint_matches(model, spec):
    """Whether the model's weights are the official ones of `spec` by the published fingerprints (False where none
    were published: PiT-Ti's and Swin-Ti's weights cannot be vouched for)."""
    known = spec.entry.fingerprint if spec.entry is not None else None
    return known is not None and all(math.isclose(f, k, rel_tol=FINGERPRINT_RTOL)
                                     for f, k in zip(fingerprint(model), known))


def check_fingerprint(model, spec, path):
    entry, name = spec.entry, spec.name
    if entry is None or entry.fingerprint is None:
        return
    if not fingerprint_matches(model, spec):
        found, known = fingerprint(model), entry.fingerprint
        raise CheckpointError(
            f"The downloaded {entry.file} is not the official {name} checkpoint: its parameters' L1/L2 norm sums "
            f"are {found[0]:.2f}/{found[1]:.4f}, the official weights' are {known[0]:.2f}/{known[1]:.4f} "
            f"(sha256 of the file: {file_digest(path)}). It was not saved. {by_hand(spec)}")


def weights_kind(spec, root="checkpoints", path=None, smoke=False):
    """What `pretrained(spec, root, path, smoke)` rests on (`helpers.provenance`): "smoke" (a smoke run's fresh
    weights), "user" (your file at `path`, or a model without official weights: timm's hub weights or fresh ones),
    "official" (the official file in `root`, wherever it came from, its weights matching the published fingerprints)
    or "unverified" (a file there that they do not vouch for: another file under the official name, or PiT-Ti's and
    Swin-Ti's, for which none were published). Each file is read once per process."""
    spec = models.resolve(spec)
    if smoke:
        return "smoke"
    if path is not None or spec.entry is None or spec.entry.file is None:
        return "user"
    file = Path(root) / spec.entry.file
    if spec.entry.fingerprint is None or not file.is_file():
        return "unverified"
    stat = file.stat()
    verified = verified_file(str(file.resolve()), stat.st_size, stat.st_mtime_ns, spec.text, spec.entry.fingerprint)
    return "official" if verified else "unverified"


@functools.lru_cache(maxsize=None)
def verified_file(path, size, modified, name, known):
    """Whether the checkpoint file at `path` (of this size and modification time) holds weights of `name` with the
    fingerprint `known`; a file that does not load does not."""
    try:
        found = fingerprint(load_file(path, name))
    except CheckpointError:
        return False
    return all(math.isclose(f, k, rel_tol=FINGERPRINT_RTOL) for f, k in zip(found, known))
