"""Every analysis on any model: the block split of the architectures the issue lists, each at its smallest variant and
a small input, against what the architecture is (its published depths and block types, counted here by hand)."""
import math

import pytest
import timm
import torch

from helpers import featuremaps, fourier, variance
from helpers.blocks import split

# name: (input side, {kind: count}, stage ends, removable blocks), each count from the architecture's definition:
ARCHITECTURES = {
    # 12 pre-norm blocks: an msa and an mlp half each, both residual; no subsampling: one stage
    "deit_tiny_patch16_224": (64, {"embed": 1, "msa": 12, "mlp": 12}, 1, 24),
    "vit_small_patch16_224": (64, {"embed": 1, "msa": 12, "mlp": 12}, 1, 24),
    "eva02_tiny_patch14_224": (56, {"embed": 1, "msa": 12, "mlp": 12}, 1, 24),
    "convit_tiny": (64, {"embed": 1, "msa": 12, "mlp": 12}, 1, 24),  # 10 gated positional + 2 plain MSAs
    # 24 blocks, then a class-attention stage of 2 blocks on the class token alone: one msa unit, not removable
    "cait_xxs24_224": (64, {"embed": 1, "msa": 25, "mlp": 24}, 1, 48),
    # 12 blocks of three branches (cross-covariance attention, a depthwise-conv patch interaction, an MLP), then 2
    # class-attention blocks that rewrite only the class token (no residual add of their own)
    "xcit_nano_12_p16_224": (64, {"embed": 1, "msa": 14, "conv": 12, "mlp": 12}, 1, 36),
    # depths (2, 2, 6, 2): residual ConvNeXt blocks (a depthwise 7x7 conv: conv), 3 downsampling layers
    "convnext_atto": (64, {"embed": 1, "conv": 12, "pool": 3}, 4, 12),
    # 16 MBConv blocks in 7 stages (1, 2, 2, 3, 3, 4, 1): the 9 that keep their shape are residual; of the 7 first
    # blocks 4 subsample (pool) and 3 do not (conv); then the 1x1 head conv (mlp) on a 2x2 map
    "efficientnet_b0": (64, {"embed": 1, "conv": 12, "pool": 4, "mlp": 1}, 5, 9),
    # stages of (1, 2, 3, 2, 3) blocks and a 1x1 conv: 6 residual; 4 first blocks subsample, 1 does not
    "mobilenetv3_small_100": (64, {"embed": 1, "conv": 7, "pool": 4, "mlp": 1}, 5, 6),
    # depths (1, 1, 4, 7), every block residual (projection shortcuts); the stem subsamples too: 5 stage ends
    "regnetx_002": (64, {"embed": 1, "conv": 13}, 5, 13),
    "resnet18": (64, {"embed": 1, "conv": 8}, 4, 8),
    # depths (1, 2, 3, 1): MBConv + window attention + grid attention per block, each attention with its MLP
    "maxvit_nano_rw_256": (64, {"embed": 1, "conv": 7, "msa": 14, "mlp": 14}, 5, 35),
    # depths (3, 4, 6, 3), stages C, C, T, T
    "coatnet_nano_rw_224": (64, {"embed": 1, "conv": 7, "msa": 9, "mlp": 9}, 5, 25),
    # depths (2, 2, 6, 2), 3 patch mergings
    "swinv2_tiny_window8_256": (64, {"embed": 1, "msa": 12, "mlp": 12, "pool": 3}, 4, 24),
    # depths (2, 3, 4); 2 downsamplings, each an attention with strided queries then a residual MLP
    "levit_128s": (128, {"embed": 1, "msa": 11, "mlp": 11}, 3, 20),
    # stages: 1 inverted residual, 3 (the first subsampling), then 3 x (a subsampling one, a MobileViT block), a 1x1 conv
    "mobilevit_xxs": (64, {"embed": 1, "conv": 3, "pool": 4, "msa": 3, "mlp": 1}, 5, 3),
    # depths (2, 2, 6, 2): pooling token mixer (conv) and MLP halves; 3 downsamplings
    "poolformer_s12": (64, {"embed": 1, "conv": 12, "mlp": 12, "pool": 3}, 4, 24),
    # depths (3, 4, 6, 3) and a conv position encoding after each stage's first block; 3 patch embeddings
    "twins_pcpvt_small": (64, {"embed": 1, "msa": 16, "mlp": 16, "conv": 4, "pool": 3}, 4, 36),
    # depths (2, 2, 2, 2); PVT v2's MLP holds a depthwise 3x3 conv: by the rule it is conv
    "pvt_v2_b0": (64, {"embed": 1, "msa": 8, "conv": 8, "pool": 3}, 4, 16),
    # depths (2, 2, 6, 2); the last block of stages 1-3 is a split transposed (XCA) block
    "edgenext_xx_small": (64, {"embed": 1, "conv": 9, "msa": 3, "pool": 3}, 4, 9),
    # depths (2, 2, 4, 2) of RepMixer (conv) + ConvMLP (a depthwise 7x7: conv) blocks; MobileOne 1x1 blocks with a BN
    # identity branch (mlp, residual) in the stem and after each downsampling conv (pool); a final conv
    "fastvit_t8": (64, {"embed": 1, "conv": 21, "mlp": 4, "pool": 3}, 4, 24),
    # depths (3, 2, 6, 4): pooling mixer (conv) + conv MLP (mlp) blocks, the last one an attention block
    "efficientformer_l1": (224, {"embed": 1, "conv": 14, "mlp": 15, "msa": 1, "pool": 3}, 4, 30),
    # depths (1, 2, 5, 2) of pooling-attention blocks
    "mvitv2_tiny": (64, {"embed": 1, "msa": 10, "mlp": 10}, 4, 20),
    # depths (3, 4, 10, 3): 16 conv blocks (conv attention + MLP), 4 transformer blocks; a patch embedding before a
    # block that changes width (mlp) or subsamples (pool)
    "nextvit_small": (64, {"embed": 1, "conv": 16, "mlp": 21, "msa": 4, "pool": 3}, 4, 32),
    # depths (2, 2, 14, 2) + 3 downsampling pre-blocks: 23 token mixers (conv) and channel mixers (mlp), 10 of them
    # with squeeze-excitation (mlp); each downsampling: a strided depthwise conv (pool), a 1x1 conv and an FFN (mlp)
    "repvit_m0_9": (64, {"embed": 1, "conv": 23, "mlp": 39, "pool": 3}, 4, 26),
    # 8 convs and 5 max-pools (the first joins the stem); no residual blocks
    "vgg11": (64, {"embed": 1, "conv": 7, "pool": 4}, 5, 0),
    # 4 dense blocks (conv) and 3 transitions (pool)
    "densenet121": (64, {"embed": 1, "conv": 4, "pool": 3}, 4, 0),
    # tokens kept in mask-unit order: read at its 4 stages through forward_intermediates, nothing removable
    "hiera_tiny_224": (128, {"msa": 4}, 4, 0),
}
PRE_NORM = ("deit_tiny_patch16_224", "vit_small_patch16_224", "eva02_tiny_patch14_224", "convit_tiny", "cait_xxs24_224")


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def built(request):
    """(name, model, its blocks, an input), made once: pytest runs every test of one architecture before building the
    next. Zero-initialised norms and layer scales (timm starts some branches at exactly 0) are drawn anew, so that
    every branch contributes."""
    name, side = request.param, ARCHITECTURES[request.param][0]
    torch.manual_seed(0)
    try:
        net = timm.create_model(name, num_classes=10, img_size=side)
    except TypeError:  # a model built for one size only
        net = timm.create_model(name, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1 and p.abs().max() < 1e-3:
                p.uniform_(0.5, 1.0)
    net.eval()
    return name, net, split(net, input_size=(3, side, side)), torch.randn(2, 3, side, side)


def test_blocks_compute_the_model_with_the_kinds_the_rule_gives(built):
    name, net, blocks, x = built
    _, kinds, stage_ends, removable = ARCHITECTURES[name]
    with torch.no_grad():
        logits = net(x)
        features = blocks.features(x)
        assert torch.equal(blocks(x), logits) and torch.equal(features[-1], logits)
        maps = blocks.feature_maps(x)
    assert {k: blocks.kinds.count(k) for k in set(blocks.kinds) - {"head"}} == kinds and blocks.kinds[-1] == "head"
    assert len(blocks.stage_ends()) == stage_ends
    assert sum(b.removable for b in blocks) == removable
    assert all(m.ndim == 4 and m.shape[0] == 2 and m.shape[-1] * m.shape[-2] >= 4 for m in maps)
    names = [b.name for b in blocks]
    assert len(set(names)) == len(names)
    sizes = [m.shape[-1] * m.shape[-2] for m in maps]  # a block downsamples where its map shrinks
    assert [b.downsamples for b in blocks.layers][1:] == [after < before for before, after in zip(sizes, sizes[1:])]


def test_removing_a_block_zeroes_its_branch(built):
    """Against the model run with the branch's module patched to return zeros at that call (no hooks), and, for the
    pre-norm transformers whose shortcut is the identity, against the stream before the block."""
    name, net, blocks, x = built
    with torch.no_grad():
        intact = net(x)
        before = blocks.features(x)
        for i, block in enumerate(blocks):
            if not block.removable:
                continue
            with blocks.lesioned(block.name):
                removed = net(x)
                features = blocks.features(x)
            assert not torch.equal(removed, intact), block.name  # the branch contributed
            assert torch.equal(removed, patched(net, block.branch, x)), block.name
            assert all(torch.equal(a, b) for a, b in zip(features[:i], before[:i]))
            if name in PRE_NORM and block.kind in ("msa", "mlp") and i:
                after, before_block = features[i], features[i - 1]
                if after.shape != before_block.shape:  # ConViT joins its class token here: the patches pass through
                    after = after[:, -before_block.shape[1]:]
                assert torch.equal(after, before_block), block.name


def patched(net, site, x):
    """`net(x)` with the `site.index`-th call (in the forward pass) of module `site.name` returning zeros."""
    module = net.get_submodule(site.name)
    forward, calls = module.forward, [0]

    def zeroing(*args, **kwargs):
        output = forward(*args, **kwargs)
        calls[0] += 1
        return torch.zeros_like(output) if calls[0] - 1 == site.index else output

    module.forward = zeroing
    try:
        return net(x)
    finally:
        del module.forward


def test_fourier_and_variance_run_on_every_block(built):
    name, net, blocks, x = built
    diagonals = fourier.spectra(blocks, [x])
    table = fourier.relative_log_amplitudes(blocks, diagonals)
    variances = variance.variances(blocks, [x])
    assert len(diagonals) == len(variances) == len(blocks.layers)
    assert table.delta_log_amplitude.map(math.isfinite).all() and (variances.variance > 0).all()
    both = blocks.average([x], featuremaps.diagonal_and_variance)  # both from one read of each map
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(both[0], diagonals))
    assert torch.allclose(torch.stack(both[1]).double(), torch.tensor(variances.variance.to_numpy()), rtol=1e-5)
