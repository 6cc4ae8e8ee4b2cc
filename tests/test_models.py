import pytest
import torch

from helpers import checkpoints, models
from official import manifest

# The paper's Table / the authors' model summaries, in millions of parameters
PARAMETERS = {"resnet_50": 23.7, "vit_ti": 5.4, "pit_ti": 4.58, "swin_ti": 27.6}


@pytest.mark.parametrize("name", models.PAPER_NAMES)
def test_state_dict_layout_is_the_official_one_after_the_documented_remaps(name):
    model = models.create(name)
    official = {key: torch.empty(shape, dtype=dtype) for key, shape, dtype in manifest(name)}
    remapped = checkpoints.remap(official, name, model)
    ours = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    if name in ("resnet_50", "alternet_50", "vit_ti"):  # no remap: even the order is the original's
        assert ours == [(key, shape) for key, shape, _ in manifest(name)]
    assert sorted(ours) == sorted((key, tuple(value.shape)) for key, value in remapped.items())


@pytest.mark.parametrize("name, millions", PARAMETERS.items())
def test_parameter_counts(name, millions):
    digits = len(str(millions).split(".")[1])
    assert round(models.count_parameters(models.create(name)) / 1e6, digits) == millions


@pytest.mark.parametrize("name", ["resnet_18", "resnet_34", "resnet_101", "alternet_18", "alternet_34", "vit_s"])
def test_other_sizes_run_on_cifar_images(name):
    model = models.create(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_stochastic_depth_has_one_name_across_families():
    vit = models.create("vit_ti", sd=0.1)
    resnet = models.create("resnet_50", sd=0.1)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert resnet.layer4[-1].sd.drop_prob == pytest.approx(0.1)
    assert isinstance(resnet.layer1[0].sd, torch.nn.Identity)  # the first block is never dropped


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="vit_ti"):
        models.create("vit_tiny")


def test_summary_prints_a_header_and_marks_the_official_weights():
    header, rule, pit, alternet, footnote = models.summary(["pit_ti", "alternet_50"]).splitlines()
    assert header.split()[:4] == ["model", "official", "params", "paper"] and set(rule) == {"-"}
    assert pit.split()[:4] == ["pit_ti", "*", "4.58M", "76.2"]  # official weights, the paper's accuracy
    assert alternet.split()[:3] == ["alternet_50", "34.06M", "84.0"]  # no official weights: no mark
    assert "msa:12" in pit and "mlp:12" in pit and "pool:2" in pit and footnote.startswith("*")


def test_every_registry_entry_builds_its_model_and_names_a_known_family():
    for name, entry in models.REGISTRY.items():
        assert entry.family in ("resnet", "alternet", "vit", "pit", "swin")
        assert (entry.url is None) == (entry.file is None) and (entry.grid_url is None) == (entry.grid is None)
    assert set(models.OFFICIAL) == {"resnet_50", "vit_ti", "pit_ti", "swin_ti"}  # the authors' four files
