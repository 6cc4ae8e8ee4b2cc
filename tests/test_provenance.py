"""helpers.provenance and checkpoints.weights_kind: what a figure's numbers rest on, from the files themselves (the
recipe's weights and a fake CIFAR-100 are what a mirror may hold; the published fingerprints and MD5s, patched to
theirs, are what makes the same files official)."""
import dataclasses
import hashlib

import numpy as np
import pytest
from fakes import cifar_archive, official_checkpoint
from official import official_state_dict

from helpers import checkpoints, data, models, provenance
from helpers.experiment import definition_digest
from helpers.sweep import Table


def test_a_figure_is_as_verified_as_its_least_verified_input():
    assert provenance.weakest("official", "user") == "user"
    assert provenance.weakest("official", "unverified", "user") == "unverified"
    assert provenance.weakest("official") == "official" and provenance.weakest("user", "smoke") == "smoke"
    with pytest.raises(ValueError, match="'real' is none of smoke, unverified, user, official"):
        provenance.weakest("official", "real")


def recipe_fingerprint(name):
    """L1 and L2 norm sums of the recipe's learned weights, by numpy (BatchNorm statistics are buffers)."""
    tensors = [v.numpy().astype(np.float64) for k, v in official_state_dict(name).items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    return sum(np.abs(t).sum() for t in tensors), sum(np.sqrt((t ** 2).sum()) for t in tensors)


def test_weights_are_official_only_when_the_published_fingerprints_match(tmp_path, monkeypatch):
    file = official_checkpoint(tmp_path / models.entry("vit_ti").file, "vit_ti")  # what a mirror may hold
    assert checkpoints.weights_kind("vit_ti", tmp_path) == "unverified"  # the recipe's weights are not the authors'
    entry = dataclasses.replace(models.entry("vit_ti"), fingerprint=recipe_fingerprint("vit_ti"))
    monkeypatch.setitem(models.REGISTRY, "vit_ti", entry)  # as if they were: the same file counts as official
    assert checkpoints.weights_kind("vit_ti", tmp_path) == "official"
    file.write_bytes(file.read_bytes()[:1000])  # another file under the same name: read again, and refused
    assert checkpoints.weights_kind("vit_ti", tmp_path) == "unverified"
    assert checkpoints.weights_kind("vit_ti", tmp_path / "empty") == "unverified"  # nothing there yet


def test_smoke_your_own_and_unfingerprinted_weights(tmp_path):
    assert checkpoints.weights_kind("vit_ti", tmp_path, smoke=True) == "smoke"
    assert checkpoints.weights_kind("vit_ti", tmp_path, path="mine.pth") == "user"
    assert checkpoints.weights_kind("resnet_18", tmp_path) == "user"  # no official weights: fresh ones
    assert checkpoints.weights_kind("timm:resnet18", tmp_path) == "user"
    official_checkpoint(tmp_path / models.entry("pit_ti").file, "pit_ti")
    assert checkpoints.weights_kind("pit_ti", tmp_path) == "unverified"  # nothing was published to check it by


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar_is_official_only_when_its_files_match_the_published_md5s(tmp_path, monkeypatch):
    assert provenance.data_kind("cifar100", tmp_path) == "unverified"  # not there yet
    cifar_archive(tmp_path, "cifar100")  # extracted, as torchvision leaves it: a mirror's fake
    assert provenance.data_kind("cifar100", tmp_path) == "unverified"
    folder, reader = tmp_path / "cifar-100-python", data.DATASETS["cifar100"]
    monkeypatch.setattr(reader, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(reader, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(reader, "meta", {**reader.meta, "md5": md5(folder / "meta")})
    assert provenance.data_kind("cifar100", tmp_path) == "official"
    assert provenance.run_kind(["resnet_18"], smoke=False, data_root=tmp_path) == "user"
    assert provenance.run_kind(["pit_ti"], smoke=False, data_root=tmp_path, checkpoint_root=tmp_path) == "unverified"
    assert provenance.run_kind([], smoke=False, data_root=tmp_path) == "official"
    assert provenance.run_kind(["resnet_18"], smoke=True, data_root=tmp_path) == "smoke"


def test_cifar100c_is_official_when_extracted_from_the_md5_checked_archive(tmp_path, monkeypatch):
    assert provenance.cifar100c_kind(tmp_path) == "unverified"
    (tmp_path / data.CIFAR100C_VERIFIED).write_text(data.CIFAR100C_MD5 + "\n")
    assert provenance.cifar100c_kind(tmp_path) == "official"
    (tmp_path / data.CIFAR100C_VERIFIED).write_text("0" * 32)
    assert provenance.cifar100c_kind(tmp_path) == "unverified"


def test_a_figure_table_carries_the_models_facts(tmp_path):
    definition = {"data": {"kind": "tensors", "size": 8, "digest": "abcd"}, "settings": {"seed": 0}}
    table = Table(tmp_path / "t", ("x",), definition)
    facts = provenance.facts(models.create("vit_ti"), table)
    assert facts == {"msa": True, "data": definition_digest(definition["data"]),
                     "settings": definition_digest(definition["settings"])}
    assert provenance.has_msa(models.create("resnet_18")) is False
