"""What a figure's numbers rest on (its `run`), and the facts about a model that its figure tables carry.

Every figure table (`plots.save` records it beside the CSV) and every verdict says what its numbers rest on:

- "smoke": a smoke run: fresh weights and synthetic data, meaningless numbers;
- "official": the authors' weights and the official data, verified against what was published, wherever the files
  came from (a download, a mirror, the cache): ResNet-50's and ViT-Ti's weights by the L1/L2 fingerprints of the
  authors' grids (`checkpoints.weights_kind`), CIFAR-100 by its MD5s (`data_kind`), CIFAR-100-C by its archive's MD5
  (`cifar100c_kind`), the authors' grids by their SHA-256 (`published.grid` refuses any other file);
- "user": weights of your own: a checkpoint file, timm's hub weights, fresh weights of a model without official ones,
  or a folder of ImageNet images: nothing published can vouch for them;
- "unverified": files that pass by structure only: a mirror's or a cache's copies that the published digests do not
  match, and the official PiT-Ti and Swin-Ti weights, for which no digest or fingerprint was published.

A figure is as verified as the least verified of its inputs (`weakest`). A notebook asks once, after its sweep
(`of(config)`), and passes the answer to `plots.save` and to its verdicts.

The figure tables of the claims that pair models (`helpers.paired`) carry `facts`: whether the model has MSA blocks
(by the rule of `helpers.blocks`, so that no verdict rebuilds a model from its name) and digests of the data and the
settings its sweep was bound to (so that a verdict compares like with like).
"""
import functools
from pathlib import Path

from helpers import checkpoints, data
from helpers.blocks import split
from helpers.common import file_digest
from helpers.experiment import definition_digest
from helpers.verdict import RUN_KINDS, weakest  # noqa: F401  (one order of the kinds, for verdicts and figures)

def data_kind(name: str = "cifar100", root="data") -> str:
    """"official" when every extracted file of the dataset `name` in `root` matches its published MD5 (torchvision's
    list from the official site), wherever the archive came from; else "unverified" (a mirror's other files, or none
    yet). Each file is hashed once per process."""
    reader = data.DATASETS[name]
    listed = reader.train_list + reader.test_list + [[reader.meta["filename"], reader.meta["md5"]]]
    files = [(Path(root) / reader.base_folder / file, md5) for file, md5 in listed]
    if not all(file.is_file() for file, _ in files):
        return "unverified"
    return "official" if all(_md5_matches(str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns, md5)
                             for file, md5 in files) else "unverified"


@functools.lru_cache(maxsize=None)
def _md5_matches(path, size, modified, md5):
    return file_digest(path, "md5") == md5


def cifar100c_kind(folder) -> str:
    """"official" when the CIFAR-100-C `folder` was extracted from an archive that matched the published MD5
    (`data.cifar100c` records it there), else "unverified" (a folder of your own, or another archive)."""
    marker = Path(folder) / data.CIFAR100C_VERIFIED
    return "official" if marker.is_file() and marker.read_text().strip() == data.CIFAR100C_MD5 else "unverified"


def run_kind(models, checkpoint_files=None, *, smoke: bool, checkpoint_root="checkpoints", data_root="data",
             dataset="cifar100", also=()) -> str:
    """What a figure of `models` (specifications; `checkpoint_files`: {name: a file of yours}) on the CIFAR `dataset`
    in `data_root` rests on, with the kinds of its other inputs (`also`): the weakest of them all."""
    if smoke:
        return "smoke"
    files = checkpoint_files or {}
    weights = [checkpoints.weights_kind(name, checkpoint_root, files.get(name)) for name in models]
    return weakest(data_kind(dataset, data_root), *weights, *also)


def of(config, *also: str, models=None) -> str:
    """`run_kind` of a figure's config (its `names()`, or `models`; its checkpoints, folders and dataset)."""
    return run_kind(config.names() if models is None else models, getattr(config, "checkpoints", {}),
                    smoke=config.smoke, checkpoint_root=getattr(config, "checkpoint_root", "checkpoints"),
                    data_root=config.data_root, dataset=getattr(config, "dataset", "cifar100"), also=also)


def has_msa(model, spec=None) -> bool:
    """Whether the model has an MSA block, by the rule of `helpers.blocks` (at the size of its sized `spec`)."""
    return "msa" in split(model, spec).kinds


def facts(model, table, spec=None) -> dict:
    """The columns every row of a model's figure table carries (`experiment.Outcome.facts`): `msa` (whether it has
    MSA blocks), and the digests of the `data` and the `settings` of the sweep `table` is bound to."""
    definition = table.definition or {}
    return {"msa": has_msa(model, spec), "data": definition_digest(definition.get("data")),
            "settings": definition_digest(definition.get("settings"))}
