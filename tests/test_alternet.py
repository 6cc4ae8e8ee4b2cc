"""AlterNet against the original implementation's key layout and logits (tests/fixtures)."""
import pytest
import torch
from official import manifest, official_state_dict, reference_input, reference_logits

from helpers.alternet import AttentionBlock, PreActBottleneck, alternet_18, alternet_50, relative_index


@pytest.fixture(scope="module")
def model():
    return alternet_50(num_classes=100)


def test_state_dict_matches_manifest(model):
    ours = [(key, tuple(value.shape), value.dtype) for key, value in model.state_dict().items()]
    assert ours == manifest("alternet_50")


def test_official_weights_give_reference_logits(model):
    model.load_state_dict(official_state_dict("alternet_50"), strict=True)
    with torch.no_grad():
        logits = model.eval()(reference_input())
    assert (logits - reference_logits("alternet_50")).abs().max() < 1e-4


def test_stages_alternate_conv_and_msa_at_their_ends(model):
    kinds = ["".join("M" if isinstance(b, AttentionBlock) else "C" for b in getattr(model, f"layer{i}"))
             for i in range(1, 5)]
    assert kinds == ["CCC", "CCCM", "CMCMCM", "CMCM"]
    blocks = [b for i in range(1, 5) for b in getattr(model, f"layer{i}")]
    assert all(isinstance(b, (AttentionBlock, PreActBottleneck)) for b in blocks)


def test_relative_index_is_key_minus_query():
    index = relative_index(2)  # positions (0,0) (0,1) (1,0) (1,1), shift w-1 = 1
    assert index[0, 3].tolist() == [2, 2]  # query (0,0), key (1,1): offset (+1, +1)
    assert index[3, 0].tolist() == [0, 0]
    assert index[1, 2].tolist() == [2, 0]  # query (0,1), key (1,0): offset (+1, -1)


def test_alternet_18_runs_and_drop_path_rises_to_sd():
    model = alternet_18(num_classes=100, sd=0.1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert isinstance(model.layer1[0].sd, torch.nn.Identity)  # rate 0 at the first block
    assert model.layer4[-1].sd.drop_prob == pytest.approx(0.1)
