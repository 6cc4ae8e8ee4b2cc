"""The shared utilities: eval mode for the duration, seeding, atomic saves and their one-line failures, digests."""
import errno
import hashlib
import random

import numpy as np
import pytest
import torch

from helpers import common, models


def test_evaluating_restores_every_module_mode_even_after_an_error():
    model = models.create("resnet_18").train()
    model.layer1.eval()  # a mixed state, e.g. frozen BatchNorm statistics
    with pytest.raises(RuntimeError):
        with common.evaluating(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("interrupted")
    assert model.training and model.layer2.training and not model.layer1.training


def test_seeded_draws_repeat_and_leave_the_global_generators_alone():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    draws = []
    for _ in range(2):
        with common.seeded(3, 7):
            draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    with common.seeded(3, 8):
        assert (random.random(), np.random.rand(), torch.rand(1).item()) != draws[0]
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_save_is_atomic(tmp_path):
    path = tmp_path / "state.pt"
    common.save({"step": torch.tensor(1)}, path)
    with pytest.raises(Exception):
        common.save({"step": lambda: 2}, path)  # fails mid-way: the previous file stays whole
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_a_failed_save_names_the_folder_and_the_cause(tmp_path, monkeypatch, code, cause):
    def refuse(obj, f, *args, **kwargs):
        raise OSError(code, "refused")

    monkeypatch.setattr(torch, "save", refuse)
    with pytest.raises(common.ResultsError) as error:
        common.save({"x": torch.ones(1)}, tmp_path / "sub" / "state.pt")
    assert f"Cannot write to {tmp_path / 'sub'}: {cause}" in str(error.value) and "\n" not in str(error.value)
    assert isinstance(error.value.__cause__, OSError)  # the original error is chained, not hidden
    assert not list((tmp_path / "sub").iterdir())


def test_torch_reporting_a_full_disk_as_a_runtime_error_says_disk_full(tmp_path, monkeypatch):
    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nfile write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(common.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1024})())
    with pytest.raises(common.ResultsError, match=f"Cannot write to {tmp_path}: the disk is full"):
        common.save({}, tmp_path / "state.pt")


def test_file_digests_equal_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 5000)
    assert common.file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert common.file_digest(path, "md5") == hashlib.md5(path.read_bytes()).hexdigest()
