import dataclasses
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from fakes import official_checkpoint
from http_server import refusing, serve
from official import official_state_dict, reference_input, reference_logits

from helpers import checkpoints, download, models
from helpers.download import DownloadError

PAPER = ["resnet_50", "alternet_50", "vit_ti", "pit_ti", "swin_ti"]


def file_name(name):
    return models.entry(name).file or f"{name}_cifar100.pth.tar"  # AlterNet has no official file


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every architecture's recipe checkpoint under its official file name, in the official format."""
    folder = tmp_path_factory.mktemp("served")
    for name in PAPER:
        official_checkpoint(folder / file_name(name), name)
    return folder


def logits(model):
    with torch.no_grad():
        return model(reference_input())


@pytest.mark.parametrize("name", PAPER)
def test_downloaded_recipe_checkpoint_gives_the_original_logits(name, served, tmp_path):
    with serve(served) as base:
        model = checkpoints.load(name, root=tmp_path, url=f"{base}/{file_name(name)}")
    assert not model.training
    assert (logits(model) - reference_logits(name)).abs().max() < 1e-4
    assert sorted(os.listdir(tmp_path)) == [file_name(name)]  # nothing else left behind


def test_load_file_and_an_existing_file_need_no_network(served, tmp_path):
    path = tmp_path / file_name("vit_ti")
    path.write_bytes((served / file_name("vit_ti")).read_bytes())
    model = checkpoints.load("vit_ti", root=tmp_path)  # official name present: no download, no fingerprint
    assert (logits(model) - reference_logits("vit_ti")).abs().max() < 1e-4
    assert torch.equal(logits(checkpoints.load_file(path, "vit_ti")), logits(model))


def test_bare_state_dicts_and_data_parallel_prefixes_load(tmp_path):
    state = {f"module.{k}": v for k, v in official_state_dict("resnet_50").items()}
    torch.save(state, tmp_path / "bare.pth")
    model = checkpoints.load_file(tmp_path / "bare.pth", "resnet_50")
    assert (logits(model) - reference_logits("resnet_50")).abs().max() < 1e-4


def test_swin_index_and_mask_placeholders_are_never_loaded(served):
    model = checkpoints.load_file(served / file_name("swin_ti"), "swin_ti")
    index = model.layers[0].blocks[0].attn.relative_position_index
    assert index.abs().sum() > 0  # recomputed by the model, not the file's zeros
    assert model.layers[0].blocks[1].attn_mask.abs().sum() > 0


def test_map_location_moves_the_model(served):
    model = checkpoints.load_file(served / file_name("pit_ti"), "pit_ti", map_location="meta")
    assert next(model.parameters()).device.type == "meta"


def test_truncated_file(served, tmp_path):
    good = (served / file_name("vit_ti")).read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(good[: len(good) // 2])
    with pytest.raises(checkpoints.CheckpointError, match=r"cut\.pth\.tar.*(truncated|damaged)"):
        checkpoints.load_file(tmp_path / "cut.pth.tar", "vit_ti")


def test_html_error_page_saved_as_checkpoint(tmp_path):
    page = tmp_path / file_name("vit_ti")
    page.write_text("<!DOCTYPE html><html><body>Rate limit exceeded</body></html>")
    with pytest.raises(checkpoints.CheckpointError, match="HTML"):
        checkpoints.load_file(page, "vit_ti")


def test_html_error_page_served_at_the_url_is_not_kept(tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "page.pth.tar").write_text("<html>Not Found</html>")
    root = tmp_path / "checkpoints"
    with serve(tmp_path / "srv") as base, pytest.raises(checkpoints.CheckpointError, match="HTML"):
        checkpoints.load("vit_ti", root=root, url=f"{base}/page.pth.tar")
    assert list(root.iterdir()) == []


def test_checkpoint_of_another_architecture_lists_the_differences(served):
    path = served / file_name("vit_ti")
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_file(path, "pit_ti")
    message = str(error.value)
    assert str(path) in message and "does not fit pit_ti" in message
    assert "missing: " in message and "unexpected: " in message and "mis-shaped: " in message
    assert "blocks.0.attn.qkv.weight" in message  # an unexpected ViT key is named


def test_interrupted_download_leaves_nothing(served, tmp_path):
    size = (served / file_name("vit_ti")).stat().st_size
    with serve(served, truncate=size // 3) as base, pytest.raises(DownloadError, match="interrupted"):
        checkpoints.load("vit_ti", root=tmp_path, url=f"{base}/{file_name('vit_ti')}")
    assert list(tmp_path.iterdir()) == []


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    RunsCode.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": RunsCode()}, path)
    with pytest.raises(checkpoints.CheckpointError, match="could run code"):
        checkpoints.load_file(path, "vit_ti")
    assert not RunsCode.marker.exists()
    legacy = tmp_path / "legacy.pth.tar"  # the pre-zip pickle format too
    legacy.write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.load_file(legacy, "vit_ti")
    assert not RunsCode.marker.exists()


def norm_sums(state_dict):
    """L1 and L2 norm sums over learned parameters, computed with numpy (BatchNorm statistics are buffers)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    tensors = [v.numpy().astype(np.float64) for k, v in state_dict.items() if not k.endswith(buffers)]
    return sum(np.abs(t).sum() for t in tensors), sum(np.sqrt((t ** 2).sum()) for t in tensors)


@pytest.mark.parametrize("name", ["vit_ti", "resnet_50"])
def test_official_downloads_are_fingerprinted(name, served, tmp_path, monkeypatch, capsys):
    path = served / file_name(name)
    with serve(served) as base:
        monkeypatch.setattr(models, "CHECKPOINT_URL", base + "/")
        with pytest.raises(checkpoints.CheckpointError) as error:  # the recipe weights are not the real ones
            checkpoints.load(name, root=tmp_path / "a")
        assert hashlib.sha256(path.read_bytes()).hexdigest() in str(error.value)
        assert "130782.34" in str(error.value) or "508540.66" in str(error.value)
        assert not (tmp_path / "a" / file_name(name)).exists()

        entry = dataclasses.replace(models.entry(name), fingerprint=norm_sums(official_state_dict(name)))
        monkeypatch.setitem(models.REGISTRY, name, entry)
        model = checkpoints.load(name, root=tmp_path / "b", verbose=True)
    assert (logits(model) - reference_logits(name)).abs().max() < 1e-4
    assert hashlib.sha256(path.read_bytes()).hexdigest() in capsys.readouterr().out


def test_offline_official_download_says_how_to_place_the_file(tmp_path, monkeypatch):
    with refusing() as base:
        monkeypatch.setattr(models, "CHECKPOINT_URL", base + "/")
        with pytest.raises(DownloadError, match="checkpoints/README.md"):
            checkpoints.load("swin_ti", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["environment", "argument", "folder"])
def test_a_mirror_serves_the_official_names_and_is_checked_by_structure(how, served, tmp_path, monkeypatch):
    monkeypatch.delenv(download.MIRROR_VARIABLE, raising=False)
    with serve(served) as base, refusing() as nowhere:
        monkeypatch.setattr(models, "CHECKPOINT_URL", nowhere + "/")  # the official site is out of reach
        mirror = {"environment": None, "argument": base, "folder": str(served)}[how]
        if how == "environment":
            monkeypatch.setenv(download.MIRROR_VARIABLE, base + "/")
        model = checkpoints.load("vit_ti", root=tmp_path, mirror=mirror)  # recipe weights: no fingerprint check
    assert (logits(model) - reference_logits("vit_ti")).abs().max() < 1e-4
    assert os.listdir(tmp_path) == [file_name("vit_ti")]
    (served / "broken.pth.tar").write_text("<html>mirror error</html>")
    monkeypatch.setitem(models.REGISTRY, "vit_ti", dataclasses.replace(models.entry("vit_ti"), file="broken.pth.tar"))
    with pytest.raises(checkpoints.CheckpointError, match="HTML"):
        checkpoints.load("vit_ti", root=tmp_path / "b", mirror=str(served))
    assert not (tmp_path / "b" / "broken.pth.tar").exists()


def test_alternet_has_no_official_file():
    with pytest.raises(checkpoints.CheckpointError, match="load_file"):
        checkpoints.load("alternet_50")


def test_pretrained_in_smoke_mode_needs_no_file(tmp_path):
    model = checkpoints.pretrained("swin_ti", root=tmp_path / "none", smoke=True)
    assert not model.training and not (tmp_path / "none").exists()
    state = torch.random.get_rng_state()
    again = checkpoints.pretrained("swin_ti", smoke=True)  # the same weights every time: saved sweeps stay valid
    assert torch.equal(torch.random.get_rng_state(), state)  # and the global generator is left alone
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_pretrained_loads_a_given_file(served):
    model = checkpoints.pretrained("alternet_50", path=served / file_name("alternet_50"))
    assert (logits(model) - reference_logits("alternet_50")).abs().max() < 1e-4
