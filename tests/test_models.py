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


def test_summary_prints_name_parameters_and_block_kinds():
    line = models.summary(["pit_ti"])
    assert line.split()[:2] == ["pit_ti", "4.58M"]
    assert "msa:12" in line and "mlp:12" in line and "pool:2" in line
