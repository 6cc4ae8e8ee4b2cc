import pytest
import timm
import torch

from helpers import models
from helpers.blocks import Block, Site, split

STAGES = {  # the paper's layouts, written out independently of the splitter
    "resnet_50": ["embed"] + ["conv"] * 16 + ["head"],
    "alternet_50": ["embed"] + ["conv"] * 3 + ["conv"] * 3 + ["msa"] + ["conv", "msa"] * 3 + ["conv", "msa"] * 2
                   + ["head"],
    "vit_ti": ["embed"] + ["msa", "mlp"] * 12 + ["head"],
    "pit_ti": ["embed"] + ["msa", "mlp"] * 2 + ["pool"] + ["msa", "mlp"] * 6 + ["pool"] + ["msa", "mlp"] * 4
              + ["head"],
    "swin_ti": ["embed"] + ["msa", "mlp"] * 2 + ["pool"] + ["msa", "mlp"] * 2 + ["pool"] + ["msa", "mlp"] * 6
               + ["pool"] + ["msa", "mlp"] * 2 + ["head"],
}


@pytest.fixture(scope="module", params=list(STAGES))
def model(request):
    torch.manual_seed(0)
    return request.param, models.create(request.param).eval()


def test_blocks_compute_the_model(model):
    name, net = model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (split(net)(x) - net(x)).abs().max() < 1e-5


def test_kind_sequence_and_names(model):
    name, net = model
    blocks = split(net)
    assert blocks.kinds == STAGES[name]
    modules = dict(net.named_modules())
    assert all(block.name in modules or block.name == "head" for block in blocks)
    assert all(block.name.rsplit(".", 1)[0] in modules for block in blocks if block.kind in ("msa", "mlp"))


def test_blocks_share_the_model_parameters(model):
    name, net = model
    blocks = split(net)
    owned = {p.data_ptr() for p in net.parameters()}
    assert {p.data_ptr() for p in blocks.parameters()} == owned and blocks.model is net
    assert sum(p.numel() for p in blocks.parameters()) == models.count_parameters(net)


def test_features_are_every_block_output_from_one_pass(model):
    name, net = model
    blocks = split(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = blocks.features(x)
        assert len(features) == len(blocks)
        assert torch.equal(features[-1], blocks(x))
        maps = blocks.feature_maps(x)
    assert len(maps) == len(blocks) - 1
    assert all(m.ndim == 4 and m.shape[0] == 2 for m in maps)


def test_vit_features_equal_hooked_transformer_blocks():
    net = models.create("vit_ti").eval()
    hooked = []
    handle = net.blocks[3].register_forward_hook(lambda module, args, out: hooked.append(out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        net(x)
        features = split(net).features(x)
    handle.remove()
    block = split(net)[1 + 2 * 3 + 1]  # embed, then (msa, mlp) per transformer block
    assert block.name == "blocks.3.mlp"
    assert torch.equal(features[1 + 2 * 3 + 1], hooked[0])
    tokens = hooked[0][:, 1:]  # class token dropped, 16 x 16 patches of 192 channels
    expected = tokens.reshape(2, 16, 16, 192).permute(0, 3, 1, 2)
    assert torch.equal(block.to_map(hooked[0]), expected)


def test_swin_features_are_channels_last_maps():
    net = models.create("swin_ti").eval()
    blocks = split(net)
    with torch.no_grad():
        maps = blocks.feature_maps(torch.randn(1, 3, 32, 32))
    sizes = [tuple(m.shape[1:]) for m, b in zip(maps, blocks) if b.kind == "pool"]
    assert sizes == [(192, 16, 16), (384, 8, 8), (768, 4, 4)]


def test_to_map_on_hand_made_tokens():
    tokens = torch.arange(2 * 5 * 3.).reshape(2, 5, 3)  # B=2, a class token + 2x2 grid, C=3
    block = Block("msa", "x", Site("x"), "BNC", prefix_tokens=1)
    grid = block.to_map(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert grid[1, 2, 1, 0] == tokens[1, 1 + 2 * 1 + 0, 2]
    with pytest.raises(ValueError, match="square"):
        Block("msa", "x", Site("x"), "BNC").to_map(tokens[:, :3])


def test_resnet_marks_its_strided_blocks_as_downsampling():
    blocks = split(models.create("resnet_50"))
    assert [b.name for b in blocks if b.downsamples] == ["layer2.0", "layer3.0", "layer4.0"]


def test_a_model_that_does_not_run_on_its_input_size_is_named():
    with pytest.raises(ValueError, match="Linear does not run on a batch of 2 inputs of 3 x 32 x 32"):
        split(torch.nn.Linear(2, 2))


def test_a_model_that_is_no_classifier_says_what_it_returns():
    with pytest.raises(ValueError, match=r"returns \(2, 4, 32, 32\).*\(batch, classes\)"):
        split(torch.nn.Conv2d(3, 4, 3, padding=1))


class Declared(torch.nn.Module):
    """A model of one's own that names its blocks: the rule is not asked."""
    analysis_blocks = {"stem": "embed", "body": "conv", "mixer": "msa"}

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.mixer = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.mixer(self.body(self.stem(x)).relu())
        return self.head(x.mean((2, 3)))


def test_a_model_can_declare_its_blocks():
    net = Declared().eval()
    blocks = split(net)
    assert blocks.kinds == ["embed", "conv", "msa", "head"] and [b.name for b in blocks][:3] == ["stem", "body", "mixer"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = net.stem(x)
        expected = [stem, net.body(stem), net.mixer(net.body(stem).relu()), net(x)]
        assert all(torch.equal(f, e) for f, e in zip(blocks.features(x), expected))
    net.analysis_blocks = {"stem": "embed", "nothing": "conv"}
    with pytest.raises(ValueError, match="'nothing', which is not a module the model calls"):
        split(net)
