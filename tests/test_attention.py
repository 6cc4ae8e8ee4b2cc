"""Attention is found by what it computes (`helpers.attention`): every form of attention a model may write, and
none of the token or channel mixings whose weights are not computed from the input. Each case is a small network
written here, of two residual blocks whose token mixer is the case: it must show 2 msa blocks, or none."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.blocks import split

DIM, HEADS = 16, 2


def heads(x):
    """B, N, (h d) -> B, h, N, d"""
    return x.unflatten(-1, (HEADS, -1)).transpose(1, 2)


def merged(x):
    """B, h, N, d -> B, N, (h d)"""
    return x.transpose(1, 2).flatten(2)


class Projections(nn.Module):
    def __init__(self, dim=DIM):
        super().__init__()
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)


class SoftmaxAttention(Projections):
    """softmax(q k^T / sqrt(d)) v with heads, written out."""
    def forward(self, x):
        q, k, v = (heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(dim=-1)
        return self.out(merged(weights @ v))


class QuerySoftmaxEinsum(Projections):
    """einsum attention normalised over the queries, keys last in the product."""
    def forward(self, x):
        q, k, v = (heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        weights = torch.einsum("bhnd,bhmd->bhnm", q, k).softmax(dim=-2)
        return self.out(merged(torch.einsum("bhnm,bhmd->bhnd", weights, v)))


class Factorized(Projections):
    """Efficient (factorized) attention: softmax over the keys' positions, then q (k^T v)."""
    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        context = k.softmax(dim=1).transpose(1, 2) @ v  # B, d, d
        return self.out(q.softmax(dim=-1) @ context)


class LinearElu(Projections):
    """Linear attention with the elu + 1 feature map and no softmax (Katharopoulos et al.), in einsums."""
    def forward(self, x):
        q, k, v = (F.elu(t) + 1 for t in self.qkv(x).chunk(3, dim=-1))
        kv = torch.einsum("bnd,bne->bde", k, v)
        normaliser = 1 / (torch.einsum("bnd,bd->bn", q, k.sum(dim=1)) + 1e-6)
        return self.out(torch.einsum("bnd,bde,bn->bne", q, kv, normaliser))


class LinearRelu(Projections):
    """Kernel attention with a ReLU feature map, written with `.mT` and no normalisation."""
    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(q.relu() @ (k.relu().mT @ v) / x.shape[1])


class Separable(nn.Module):
    """Separable self-attention (MobileViTv2): a softmax over the positions of one context score per token weighs
    the keys into one context vector, which gates the values."""
    def __init__(self, dim=DIM):
        super().__init__()
        self.score, self.key, self.value, self.out = (nn.Linear(dim, n) for n in (1, dim, dim, dim))

    def forward(self, x):
        scores = self.score(x).softmax(dim=1)  # B, N, 1
        context = (self.key(x) * scores).sum(dim=1, keepdim=True)  # B, 1, C
        return self.out(self.value(x).relu() * context)


class Fused(Projections):
    """PyTorch's fused scaled-dot-product attention."""
    def forward(self, x):
        q, k, v = (heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        return self.out(merged(F.scaled_dot_product_attention(q, k, v)))


class Multihead(nn.Module):
    """nn.MultiheadAttention, sequence first (the probe sees F.multi_head_attention_forward as one call)."""
    def __init__(self, dim=DIM):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, HEADS)

    def forward(self, x):
        x = x.transpose(0, 1)
        return self.attention(x, x, x, need_weights=False)[0].transpose(0, 1)


class PooledKeys(Projections):
    """Spatial-reduction attention (PVT): keys and values from an average-pooled grid."""
    def forward(self, x):
        q = heads(self.qkv(x)[..., :DIM])
        side = int(x.shape[1] ** 0.5)
        pooled = F.avg_pool2d(x.transpose(1, 2).unflatten(-1, (side, side)), 2).flatten(2).transpose(1, 2)
        k, v = (heads(t) for t in self.qkv(pooled)[..., DIM:].chunk(2, dim=-1))
        return self.out(merged((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v))


class SpatialGating(nn.Module):
    """gMLP's spatial gating unit: a learned, static token-mixing matrix gates half the channels."""
    def __init__(self, dim=DIM, tokens=64):
        super().__init__()
        self.norm, self.tokens, self.out = nn.LayerNorm(dim // 2), nn.Linear(tokens, tokens), nn.Linear(dim // 2, dim)

    def forward(self, x):
        u, v = x.chunk(2, dim=-1)
        return self.out(u * self.tokens(self.norm(v).transpose(1, 2)).transpose(1, 2))


class TokenMlp(nn.Module):
    """MLP-Mixer's token-mixing MLP."""
    def __init__(self, dim=DIM, tokens=64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(tokens, 32), nn.GELU(), nn.Linear(32, tokens))

    def forward(self, x):
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)


class Gram(nn.Module):
    """The tokens' second moment x^T x (a product of a value with itself) mixes channels, not positions."""
    def __init__(self, dim=DIM):
        super().__init__()
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        return self.out(x @ (x.mT @ x).softmax(dim=-1) / x.shape[1])


class TokenNet(nn.Module):
    """A 4 x 4 patch embedding of 32 x 32 images (8 x 8 tokens), two pre-norm blocks x + mixer(norm(x)),
    x + mlp(norm(x)), and a mean-pooled linear head."""
    def __init__(self, mixer):
        super().__init__()
        self.embed = nn.Conv2d(3, DIM, 4, 4)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.LayerNorm(DIM), mixer(), nn.LayerNorm(DIM), nn.Sequential(
            nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))]) for _ in range(2))
        self.head = nn.Linear(DIM, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # B, N, C
        for norm, mix, norm2, mlp in self.blocks:
            x = x + mix(norm(x))
            x = x + mlp(norm2(x))
        return self.head(x.mean(dim=1))


class NonLocal(nn.Module):
    """Attention on a channels-first map (a non-local block): 1x1 convolutions, positions flattened last."""
    def __init__(self, dim=DIM):
        super().__init__()
        self.q, self.k, self.v = (nn.Conv2d(dim, dim, 1) for _ in range(3))

    def forward(self, x):
        q, k, v = (f(x).flatten(2) for f in (self.q, self.k, self.v))  # B, C, N
        weights = (q.transpose(1, 2) @ k).softmax(dim=-1)  # B, N, N
        return (v @ weights.transpose(1, 2)).view_as(x)


class SqueezeExcite(nn.Module):
    def __init__(self, dim=DIM):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(dim, 4, 1), nn.Conv2d(4, dim, 1)

    def forward(self, x):
        return x * self.expand(self.reduce(x.mean((2, 3), keepdim=True)).relu()).sigmoid()


class Eca(nn.Module):
    """Efficient channel attention: a 1-D convolution across the pooled channels."""
    def __init__(self, dim=DIM):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        gate = self.conv(x.mean((2, 3)).unsqueeze(1)).squeeze(1).sigmoid()  # B, C
        return x * gate[:, :, None, None]


class SplitAttention(nn.Module):
    """ResNeSt's split attention, radix 2: a softmax over the two splits gates and sums them."""
    def __init__(self, dim=DIM):
        super().__init__()
        self.conv = nn.Conv2d(dim, 2 * dim, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(dim, 8, 1), nn.Conv2d(8, 2 * dim, 1)

    def forward(self, x):
        splits = self.conv(x).unflatten(1, (2, DIM))  # B, 2, C, H, W
        gap = splits.sum(dim=1).mean((2, 3), keepdim=True)
        gates = self.fc2(self.fc1(gap).relu()).view(x.shape[0], 2, DIM, 1, 1).softmax(dim=1)
        return (splits * gates).sum(dim=1)


class SelectiveKernel(nn.Module):
    """SKNet: two kernel sizes, a softmax over the paths gates and sums them."""
    def __init__(self, dim=DIM):
        super().__init__()
        self.paths = nn.ModuleList([nn.Conv2d(dim, dim, 3, padding=1), nn.Conv2d(dim, dim, 5, padding=2)])
        self.fc, self.select = nn.Linear(dim, 8), nn.Linear(8, 2 * dim)

    def forward(self, x):
        paths = torch.stack([path(x) for path in self.paths], dim=1)  # B, 2, C, H, W
        gates = self.select(self.fc(paths.sum(1).mean((2, 3))).relu()).view(-1, 2, DIM, 1, 1).softmax(dim=1)
        return torch.sum(paths * gates, dim=1)


class Pooling(nn.Module):
    """PoolFormer's token mixer."""
    def forward(self, x):
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x


class Depthwise(nn.Module):
    def __init__(self, dim=DIM):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)

    def forward(self, x):
        return self.conv(x)


class MapNet(nn.Module):
    """A 2 x 2 patch embedding (16 x 16 maps) and two residual blocks x + mixer(norm(x)), then an MLP."""
    def __init__(self, mixer):
        super().__init__()
        self.embed = nn.Conv2d(3, DIM, 2, 2)
        self.blocks = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(DIM), mixer()) for _ in range(2))
        self.mlp = nn.Sequential(nn.Conv2d(DIM, DIM, 1), nn.GELU())
        self.head = nn.Linear(DIM, 10)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.mlp(x).mean((2, 3)))


CASES = {  # module: (network, msa blocks)
    SoftmaxAttention: (TokenNet, 2), QuerySoftmaxEinsum: (TokenNet, 2), Factorized: (TokenNet, 2),
    LinearElu: (TokenNet, 2), LinearRelu: (TokenNet, 2), Separable: (TokenNet, 2), Fused: (TokenNet, 2),
    Multihead: (TokenNet, 2), PooledKeys: (TokenNet, 2), NonLocal: (MapNet, 2),
    SpatialGating: (TokenNet, 0), TokenMlp: (TokenNet, 0), Gram: (TokenNet, 0), SqueezeExcite: (MapNet, 0),
    Eca: (MapNet, 0), SplitAttention: (MapNet, 0), SelectiveKernel: (MapNet, 0), Pooling: (MapNet, 0),
    Depthwise: (MapNet, 0),
}


@pytest.mark.parametrize("mixer", list(CASES), ids=lambda m: m.__name__)
def test_attention_is_what_mixes_positions_with_weights_computed_from_the_input(mixer):
    network, msa = CASES[mixer]
    torch.manual_seed(0)
    net = network(mixer).eval()
    blocks = split(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(blocks(x), net(x))
    assert blocks.kinds.count("msa") == msa, blocks.kinds
    assert sum(block.removable for block in blocks) >= 2  # the two mixers are residual branches


# Real models: torchvision's (nn.MultiheadAttention; Swin's shifted windows) and Hugging Face's (eager and sdpa)

def test_torchvision_vit_b_16_shows_its_12_attention_blocks():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.vit_b_16().eval()
    with torch.no_grad():
        net.heads.head.weight.normal_(std=0.02)  # torchvision starts the head at zero: every output would be zero
    blocks = split(net)  # at its own image_size, 224
    assert blocks.spec.input_size == (3, 224, 224)
    assert blocks.kinds == ["embed"] + ["msa", "mlp"] * 12 + ["head"]
    assert blocks[1].name == "encoder.layers.encoder_layer_0.self_attention"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        intact = net(x)
        with blocks.lesioned("encoder.layers.encoder_layer_11.self_attention"):
            assert not torch.equal(net(x), intact)


def test_torchvision_swin_t_keeps_its_12_attention_blocks_in_4_stages():
    import torchvision

    blocks = split(torchvision.models.swin_t().eval(), input_size=(3, 224, 224))
    assert blocks.kinds.count("msa") == 12 and blocks.kinds.count("mlp") == 12
    assert len(blocks.stage_ends()) == 4


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_hugging_face_attention_eager_or_fused(implementation):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                       intermediate_size=64, num_labels=10, attn_implementation=implementation)
    net = ViTForImageClassification(config).eval()
    assert net.config._attn_implementation == implementation
    blocks = split(net)  # at its config's image_size; the probe reads the logits of its ImageClassifierOutput
    assert blocks.spec.input_size == (3, 32, 32) and blocks.kinds == ["embed"] + ["msa", "mlp"] * 3 + ["head"]


def test_positions_are_followed_through_windows_reshapes_reductions_and_einsums():
    """Which dimensions hold the input's positions, written out by hand for each step of a window partition."""
    from helpers import trace
    from helpers.positions import positions

    class Windows(nn.Module):
        def forward(self, x):  # 2, 3, 8, 8
            x = x.permute(0, 2, 3, 1)  # B, H, W, C
            windows = x.view(2, 2, 4, 2, 4, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, 16, 3)  # (B h w), (4 4), C
            scores = torch.einsum("...nc,...mc->...nm", windows, windows.flip(-1))  # (B h w), 16, 16
            pooled = scores.mean(dim=-1)  # (B h w), 16
            return self.head(pooled[:, None, :4].flatten(1).mT.mT)  # 2 x 4 logits

        head = nn.Identity()

    record = trace.probe(Windows(), torch.randn(2, 3, 8, 8))
    made = {op.name: op.results[0] for op in record.root.ops}
    first = next(op for op in record.root.ops if op.name == "permute").results[0]
    assert positions(first) == (False, True, True, False)  # B, H, W, C
    assert positions(made["permute"]) == (False, True, True, True, True, False)  # the windows' permute
    assert positions(made["view"]) == (False, True, True, True, True, False)
    assert positions(made["reshape"]) == (True, True, False)
    assert positions(made["einsum"]) == (True, True, True)
    assert positions(made["mean"]) == (True, True)
    assert positions(made["__getitem__"]) == (True, False, True)
    assert positions(made["mT"]) == (True, True)
