import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import cka as cka_module
from helpers import data, models
from helpers.blocks import Block, Blocks
from helpers.cka import MinibatchCKA, cka, flatten, merge, minibatch_cka
from helpers.sweep import Rank


def feature_blocks(*steps, counter=None):
    """A 'model' whose blocks apply `steps` in turn to rows of features (no parameters)."""
    def counted(step):
        def run(x):
            if counter is not None:
                counter[0] += 1
            return step(x)
        return run
    return Blocks(*[Block("mlp", f"f{i}", counted(step) if i == 0 else step, [], "logits")
                    for i, step in enumerate(steps)])


def unbiased_hsic(K, L):
    """HSIC_1 of Song et al. (2012), written from the formula: diagonals zeroed, three explicit terms."""
    n = K.shape[0]
    K = K.clone().fill_diagonal_(0)
    L = L.clone().fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=K.dtype)
    term = torch.trace(K @ L).item() + (one.T @ K @ one).item() * (one.T @ L @ one).item() / ((n - 1) * (n - 2)) \
        - 2 / (n - 2) * (one.T @ K @ L @ one).item()
    return term / (n * (n - 3))


def biased_hsic(K, L):
    n = K.shape[0]
    H = torch.eye(n, dtype=K.dtype) - 1 / n
    return torch.trace(K @ H @ L @ H).item() / (n - 1) ** 2


def direct_cka(X, Y, hsic=unbiased_hsic):
    X, Y = X.double().flatten(1), Y.double().flatten(1)
    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


def orthogonal(p, seed):
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed)))
    return q


def test_single_batch_equals_the_direct_full_batch_computation():
    torch.manual_seed(0)
    x = torch.randn(12, 7)
    steps = [lambda x: x, lambda x: torch.relu(x) @ torch.randn(7, 5, generator=torch.Generator().manual_seed(1)),
             lambda x: x ** 2 + 3]
    outputs = [x]
    for step in steps[1:]:
        outputs.append(step(outputs[-1]))
    similarity = cka(feature_blocks(*steps), feature_blocks(*steps[:2]), [x], progress=False)
    expected = torch.tensor([[direct_cka(a, b) for b in outputs[:2]] for a in outputs], dtype=torch.float64)
    assert similarity.cka.shape == (3, 2) and similarity.batches == 1
    assert torch.allclose(similarity.cka, expected, atol=1e-12)


def test_batches_sum_the_unbiased_hsic_of_each_batch():
    torch.manual_seed(0)
    batches = [torch.randn(6, 4) for _ in range(3)]
    square = lambda x: x ** 2  # noqa: E731
    similarity = cka(feature_blocks(lambda x: x), feature_blocks(square), batches, progress=False)
    grams = [(x.double() @ x.double().T, square(x).double() @ square(x).double().T) for x in batches]
    cross = sum(unbiased_hsic(K, L) for K, L in grams)
    self_a, self_b = sum(unbiased_hsic(K, K) for K, _ in grams), sum(unbiased_hsic(L, L) for _, L in grams)
    expected = cross / math.sqrt(self_a * self_b)
    assert similarity.cka.item() == pytest.approx(expected, rel=1e-10)


def test_identity_orthogonal_and_isotropic_scaling_give_one():
    torch.manual_seed(0)
    q = orthogonal(20, seed=3)
    blocks = feature_blocks(lambda x: x, lambda x: x @ q, lambda x: 7.5 * x @ q.T, lambda x: 1e-3 * x)
    similarity = cka(blocks, blocks, [torch.randn(16, 20) for _ in range(2)], progress=False)
    assert torch.allclose(similarity.cka, torch.ones(4, 4, dtype=torch.float64), atol=1e-10)


def test_independent_features_are_near_zero_unbiased_but_not_biased():
    torch.manual_seed(0)
    batches = [torch.randn(32, 2, 1000) for _ in range(16)]  # two independent halves of each example
    a, b = feature_blocks(lambda x: x[:, 0]), feature_blocks(lambda x: x[:, 1])
    similarity = cka(a, b, batches, progress=False)
    assert abs(similarity.cka.item()) < 0.05
    # the biased (plug-in) estimator is far from zero when there are many more features than examples
    assert direct_cka(batches[0][:, 0], batches[0][:, 1], hsic=biased_hsic) > 0.8


def test_class_token_options():
    block = Block("msa", "t", lambda x: x, [], "BNC", prefix_tokens=1)
    x = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    assert torch.equal(flatten(block, x, class_token="keep"), x.reshape(2, 15))
    assert torch.equal(flatten(block, x, class_token="drop"), x[:, 1:].reshape(2, 12))
    assert torch.equal(flatten(block, x, class_token="class"), x[:, 0])
    maps = Block("conv", "c", lambda x: x, [], "BCHW")
    assert flatten(maps, x, class_token="class").shape == (2, 15)  # no class token: the whole output
    with pytest.raises(ValueError, match="class_token"):
        flatten(block, x, class_token="cls")


def test_one_forward_per_model_per_batch_and_every_pair():
    counts = {"a": [0], "b": [0]}
    accumulator = MinibatchCKA({name: feature_blocks(lambda x: x, torch.tanh, counter=counts[name])
                                for name in counts})
    for _ in range(3):
        accumulator.add(torch.randn(5, 3))
    assert counts == {"a": [3], "b": [3]}
    assert set(accumulator.cross) == {("a", "a"), ("a", "b"), ("b", "b")}
    ab, ba = accumulator.similarity("a", "b"), accumulator.similarity("b", "a")
    assert torch.equal(ab.cka.T, ba.cka) and ba.names_a == ["f0", "f1"]
    assert torch.allclose(ab.cka, accumulator.similarity("a", "a").cka, atol=1e-12)  # identical models
    assert torch.allclose(ab.cka.diagonal(), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_resume_continues_where_it_stopped(tmp_path):
    torch.manual_seed(0)
    batches = [torch.randn(6, 4) for _ in range(5)]
    steps = (lambda x: x, torch.sin, lambda x: x.abs())
    whole = cka(feature_blocks(*steps), feature_blocks(*steps[:2]), batches, progress=False).cka

    path = tmp_path / "cka.pt"
    counter = [0]
    cka(feature_blocks(*steps, counter=counter), feature_blocks(*steps[:2]), batches[:3], path=path, progress=False)
    resumed = cka(feature_blocks(*steps, counter=counter), feature_blocks(*steps[:2]), batches, path=path,
                  progress=False)
    assert counter == [5] and resumed.batches == 5  # the first three batches were not recomputed
    assert torch.allclose(resumed.cka, whole, atol=1e-12)
    assert not list(tmp_path.glob(".*.part"))

    with pytest.raises(ValueError, match="other data"):
        cka(feature_blocks(*steps), feature_blocks(*steps[:2]), [batches[1]] + batches, path=path, progress=False)
    with pytest.raises(ValueError, match="other data"):  # the same images in batches of another size
        cka(feature_blocks(*steps), feature_blocks(*steps[:2]), list(torch.cat(batches).split(5)), path=path,
            progress=False)
    with pytest.raises(ValueError, match="blocks"):
        cka(feature_blocks(*steps), feature_blocks(*steps), batches, path=path, progress=False)


def test_resume_refuses_sums_of_other_weights(tmp_path):
    torch.manual_seed(0)
    batches = [torch.randn(6, 4) for _ in range(3)]

    def linear_blocks(seed):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(4, 3)
        return Blocks(Block("mlp", "linear", layer, [layer], "logits"))

    cka(linear_blocks(0), linear_blocks(0), batches[:2], path=tmp_path / "cka.pt", progress=False)
    assert cka(linear_blocks(0), linear_blocks(0), batches, path=tmp_path / "cka.pt", progress=False).batches == 3
    with pytest.raises(ValueError, match="other weights"):
        cka(linear_blocks(1), linear_blocks(0), batches, path=tmp_path / "cka.pt", progress=False)


def test_a_short_last_batch_is_left_out_with_a_warning():
    torch.manual_seed(0)
    batches = [torch.randn(6, 4), torch.randn(6, 4), torch.randn(3, 4)]
    blocks = feature_blocks(lambda x: x, torch.sin)
    with pytest.warns(UserWarning, match="left out a batch of 3"):
        similarity = cka(blocks, blocks, batches, progress=False)
    assert similarity.batches == 2 and similarity.batch_size == 6
    with warnings.catch_warnings(), pytest.raises(ValueError, match="at least 4"):
        cka(blocks, blocks, [torch.randn(3, 4)], progress=False)


def test_vit_against_itself_from_a_data_loader():
    torch.manual_seed(0)
    net = models.create("vit_ti", depth=2).eval()
    loader = data.loader(data.synthetic(8), batch_size=4, workers=0)
    similarity = cka(net, net, loader, class_token="drop", progress=False)
    assert similarity.names_a[:3] == ["patch_embed", "blocks.0.attn", "blocks.0.mlp"]
    assert similarity.kinds_a == ["embed", "msa", "mlp", "msa", "mlp", "head"]
    assert torch.allclose(similarity.cka.diagonal(), torch.ones(6, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(similarity.cka, similarity.cka.T, atol=1e-12)
    table = similarity.table()
    assert list(table.columns) == ["block"] + similarity.names_b and len(table) == 6
    # the centring used by the module agrees with the three-term formula on a real model's Gram
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        f = [feature.double().flatten(1) for feature in cka_module.split(net).features(x)]
    centered = cka_module.unbiased_centered(torch.stack([f[1] @ f[1].T, f[2] @ f[2].T]))
    assert (centered[0] * centered[1]).sum().item() / (6 * 3) == pytest.approx(
        unbiased_hsic(f[1] @ f[1].T, f[2] @ f[2].T), rel=1e-9)


def test_two_ranks_merged_equal_one_process(tmp_path):
    torch.manual_seed(0)
    batches = [torch.randn(6, 4) for _ in range(5)]
    steps = (lambda x: x, torch.sin, lambda x: x.abs())
    counter = [0]
    models = {"a": feature_blocks(*steps, counter=counter), "b": feature_blocks(*steps[:2])}
    one = minibatch_cka(models, batches, path=tmp_path / "one.pt", rank_info=Rank(0, 1, 0), progress=False)
    counter[0] = 0
    minibatch_cka(models, batches, path=tmp_path / "two.pt", rank_info=Rank(0, 2, 0), progress=False)
    assert counter == [3]  # batches 0, 2, 4
    with pytest.raises(FileNotFoundError, match="rank 1 of 2"):
        merge(models, tmp_path / "two.pt", world_size=2)
    minibatch_cka(models, batches[:3], path=tmp_path / "two.pt", rank_info=Rank(1, 2, 1), progress=False)
    with pytest.raises(ValueError, match="stopped early"):  # rank 1 has seen 3 of the 5 batches
        merge(models, tmp_path / "two.pt", world_size=2)
    minibatch_cka(models, batches, path=tmp_path / "two.pt", rank_info=Rank(1, 2, 1), progress=False)
    assert counter == [3 + 2]  # rank 1 resumed: batch 1 once, then batch 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "two.rank0-of-2.pt", "two.rank1-of-2.pt"]

    merged = merge(models, tmp_path / "two.pt", world_size=2)
    assert (merged.batches, merged.batch_size) == (5, 6)
    for a, b in one.pairs:
        torch.testing.assert_close(merged.similarity(a, b).cka, one.similarity(a, b).cka, rtol=1e-12, atol=0)
    assert torch.equal(merge(models, tmp_path / "one.pt", world_size=1).cross["a", "b"], one.cross["a", "b"])


def test_torchrun_with_two_processes_gives_the_tables_of_one(tmp_path):
    args = ["--models", "resnet_18", "vit_ti", "--smoke", "--examples", "16", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    root = Path(__file__).resolve().parents[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "helpers.cka", *args, "--results", str(tmp_path / "two")],
                         env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "4 batches of 4 over 2 rank(s)" in two.stdout
    cka_module.main([*args, "--results", str(tmp_path / "one")])
    for pair in ("resnet_18_vs_resnet_18", "resnet_18_vs_vit_ti", "vit_ti_vs_vit_ti"):
        one, two = (pd.read_csv(tmp_path / run / f"cka_{pair}.csv") for run in ("one", "two"))
        assert list(one.columns) == list(two.columns) and list(one["block"]) == list(two["block"])
        np.testing.assert_allclose(two.drop(columns="block").to_numpy(), one.drop(columns="block").to_numpy(),
                                   rtol=1e-10, atol=0)
