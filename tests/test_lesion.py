"""Lesion study: a removed block against a model whose residual branch is silenced by zeroing its last layer."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from helpers import alternet, models, resnet
from helpers.blocks import split
from helpers.lesion import lesion_metrics, lesions

MODELS = ("resnet_50", "vit_ti", "pit_ti", "swin_ti", "alternet_50")
NOT_REMOVABLE = {"embed", "pool", "head"}


def last_layer(model, block_name):
    """The layer that ends the residual branch of `block_name`, written out per block type, independently of the
    shortcuts in helpers.blocks: zeroing its weight and bias makes the branch output exactly 0."""
    if block_name.endswith(".attn"):  # timm ViT / PiT / Swin blocks
        return model.get_submodule(block_name).proj
    if block_name.endswith(".mlp"):
        return model.get_submodule(block_name).fc2
    module = model.get_submodule(block_name)
    last = {
        resnet.Bottleneck: lambda m: m.conv3[1],              # its BN, before the add and the ReLU
        alternet.PreActBottleneck: lambda m: m.conv3[2],      # BN-ReLU-conv: the conv
        alternet.AttentionBlock: lambda m: m.attn.attn.to_out[0],
        timm.models.resnet.BasicBlock: lambda m: m.bn2,
    }
    return last[type(module)](module)


def silence(model, block_name):
    layer = last_layer(model, block_name)
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            if p is not None:
                p.zero_()


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return request.param, models.create(request.param).eval()


def test_a_removed_block_equals_a_model_with_its_branch_zeroed(model):
    _, net = model
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert_removal_is_silencing(net, x)


def assert_removal_is_silencing(net, x):
    units = lesions(net)
    assert units and all(u["kind"] not in NOT_REMOVABLE for u in units)
    silenced, blocks = copy.deepcopy(net), split(net)
    with torch.no_grad():
        intact = net(x)
        for unit in units:
            original = {k: v.clone() for k, v in last_layer(silenced, unit["block"]).state_dict().items()}
            silence(silenced, unit["block"])
            with blocks.lesioned(unit["block"]):
                removed = net(x)
            assert torch.equal(removed, silenced(x)), unit["block"]
            assert not torch.equal(removed, intact), unit["block"]  # the branch did contribute
            last_layer(silenced, unit["block"]).load_state_dict(original)  # one block silenced at a time


def test_removable_blocks_are_the_residual_ones(model):
    _, net = model
    blocks = split(net)
    names = [u["block"] for u in lesions(blocks)]
    assert names == [b.name for b in blocks if b.kind not in NOT_REMOVABLE]
    assert [u["index"] for u in lesions(net)] == [i for i, b in enumerate(blocks) if b.name in names]
    for block in blocks:
        if block.kind in NOT_REMOVABLE:
            with pytest.raises(ValueError, match="without a residual branch"):
                blocks.lesioned(block.name)
    with pytest.raises(KeyError, match="no block named"):
        blocks.lesioned("layer9.9")


def test_timm_resnet_blocks_are_removable_too():
    # zero_init_last=False: timm starts each branch at exactly 0, which would make removing it a no-op
    net = timm.create_model("resnet18", pretrained=False, num_classes=10, zero_init_last=False).eval()
    assert_removal_is_silencing(net, torch.randn(1, 3, 64, 64))


def test_lesions_leave_the_model_unchanged():
    net = models.create("alternet_50").train()  # also: the mode is restored after the eval-mode measurement
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    state = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        before = net.eval()(x)
    net.train()
    for unit in lesions(net):
        lesion_metrics(net, [(x, labels)], lesion=unit["block"])
    assert all(m.training for m in net.modules())
    after_state = net.state_dict()
    assert list(after_state) == list(state)
    assert all(torch.equal(after_state[k], state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), before)


def test_intact_metrics_are_accuracy_and_mean_nll():
    torch.manual_seed(0)
    net = models.create("resnet_18", num_classes=10).eval()
    x, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        logits = net(x)
    metrics = lesion_metrics(net, [(x[:4], labels[:4]), (x[4:], labels[4:])])
    assert metrics.count == 6
    assert metrics.accuracy == pytest.approx((logits.argmax(1) == labels).double().mean().item())
    assert metrics.nll == pytest.approx(F.cross_entropy(logits.double(), labels).item())


def one_carrier_vit():
    """A 3-block ViT with class-token pooling whose residual branches are all exactly zero except the MSA of block
    1. Only an MSA moves image information into the class token the head reads, so without that one branch the
    prediction is the same for every image: block 1's MSA carries the prediction, by construction."""
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=4, global_pool="token").eval()
    for unit in lesions(net):
        if unit["block"] != "blocks.1.attn":
            silence(net, unit["block"])
    return net


def test_the_block_that_carries_the_prediction_has_the_largest_drop():
    net = one_carrier_vit()
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = net(images).argmax(1)  # the intact model is right on every image
    assert len(labels.unique()) > 1
    batches = [(images[:32], labels[:32]), (images[32:], labels[32:])]
    intact = lesion_metrics(net, batches)
    assert intact.accuracy == 1.0
    drops = {u["block"]: intact.accuracy - lesion_metrics(net, batches, lesion=u["block"]).accuracy
             for u in lesions(net)}
    assert max(drops, key=drops.get) == "blocks.1.attn"
    largest_class_share = labels.bincount().max().item() / len(labels)
    assert drops["blocks.1.attn"] >= 1 - largest_class_share - 1e-12  # one prediction left for every image
    assert all(drop == 0.0 for block, drop in drops.items() if block != "blocks.1.attn")


def test_the_stored_sweep_resumes_and_its_figure_table_marks_what_cannot_be_removed(tmp_path):
    from helpers import lesion

    config = lesion.Config(smoke=True, models=["pit_ti"], results=str(tmp_path))
    (outcome,) = lesion.run(config, progress=False)
    assert outcome.table.computed == len(outcome.units) == 1 + 24  # intact, then 12 msa and 12 mlp blocks
    (again,) = lesion.run(config, progress=False)
    assert again.table.computed == 0 and again.table.folder == outcome.table.folder
    blocks = split(config.resolved().pretrained("pit_ti"))
    table = lesion.drops(outcome, blocks)
    assert list(table.block) == [b.name for b in blocks.layers]
    assert set(table[~table.removable].kind) == {"embed", "pool"} and table[~table.removable].accuracy_drop.isna().all()
    assert table[table.removable].accuracy_drop.notna().all()
    intact = outcome.table.frame(outcome.units).set_index("block").loc[lesion.INTACT]
    row = table[table.block == "transformers.1.blocks.0.attn"].iloc[0]
    removed = lesion_metrics(blocks, lesion.evaluation_batches(config.resolved(), blocks.spec, "cpu")[1],
                             lesion="transformers.1.blocks.0.attn")
    assert row.accuracy_drop == pytest.approx(intact.accuracy - removed.accuracy)
    assert list(table[table.stage_end].block) == ["transformers.0.blocks.1.mlp", "transformers.1.blocks.5.mlp",
                                                  "transformers.2.blocks.3.mlp"]
