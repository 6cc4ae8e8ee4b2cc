"""AlterNet against the original implementation's key layout and logits (tests/fixtures)."""
import json
from pathlib import Path

import pytest
import torch
from official import manifest, official_state_dict, reference_input, reference_logits

from helpers.alternet import (HEADS, AlterNet, AttentionBlock, Layout, PreActBottleneck, alternet_18, alternet_34,
                              alternet_50, alternet_101, relative_index)

PRERESNET_50 = Path(__file__).resolve().parent / "fixtures" / "preresnet_50.json"


def keys(model):
    return [(key, tuple(value.shape), value.dtype) for key, value in model.state_dict().items()]


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


def test_explicit_msa_positions_give_the_official_alternet_50():
    positions = [(2, 3), (3, 1), (3, 3), (3, 5), (4, 1), (4, 3)]  # the paper's Fig. 12, stages from 1
    model = AlterNet(PreActBottleneck, AttentionBlock, (3, 4, 6, 4), positions, HEADS)
    assert keys(model) == manifest("alternet_50")
    assert model.layout == alternet_50().layout == Layout.parse("c2.3+c3.1+c3.3+c3.5+c4.1+c4.3")


def test_no_msa_positions_give_the_authors_preresnet_50():
    expected = [(key, tuple(shape), getattr(torch, dtype))
                for key, shape, dtype in json.loads(PRERESNET_50.read_text())["preresnet_50"]]
    model = AlterNet(PreActBottleneck, AttentionBlock, (3, 4, 6, 3), Layout(), HEADS)
    assert keys(model) == expected


def test_paper_alternets_are_points_of_the_builder():
    assert alternet_18().layout.name == "c2.1+c3.1+c4.1"
    assert alternet_34().layout.name == alternet_50().layout.name == "c2.3+c3.1+c3.3+c3.5+c4.1+c4.3"
    assert alternet_101().layout.name == "c2.3+c3.18+c3.20+c3.22+c4.1+c4.3"


def test_msa_positions_choose_the_blocks_and_heads_grow_per_stage():
    model = alternet_50(msa_positions=Layout.parse("c2.3+c3.5+c4.1+c4.3"))
    kinds = ["".join("M" if isinstance(b, AttentionBlock) else "C" for b in getattr(model, f"layer{i}"))
             for i in range(1, 5)]
    assert kinds == ["CCC", "CCCM", "CCCCCM", "CMCM"]
    assert [model.layer2[3].attn.attn.heads, model.layer3[5].attn.attn.heads, model.layer4[3].attn.attn.heads] == \
        [6, 12, 24]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_a_stage_keeps_its_first_block_a_conv():
    with pytest.raises(ValueError, match="first block of a stage"):
        alternet_50(msa_positions=[(3, 0)])
    with pytest.raises(ValueError, match="not a block"):
        alternet_50(msa_positions=[(4, 4)])
    with pytest.raises(ValueError, match="not a block"):
        alternet_50(msa_positions=[(5, 1)])


def test_layout_names_are_sorted_and_round_trip():
    layout = Layout([(4, 3), (2, 3), (4, 1), (3, 5)])
    assert layout.name == str(layout) == "c2.3+c3.5+c4.1+c4.3"
    assert Layout.parse(layout.name) == layout and Layout.parse("resnet") == Layout()
    assert Layout().name == "resnet" and Layout().plus(4, 3).plus(4, 1).name == "c4.1+c4.3"
    assert Layout.parse("c3.11+c3.9").name == "c3.9+c3.11"  # numeric order, not string order
    with pytest.raises(ValueError, match="not a layout name"):
        Layout.parse("c3.5,c4.1")
