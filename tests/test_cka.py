import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import cka as cka_module
from helpers import data, models
from helpers.blocks import Block, Site
from fakes import chain
from helpers.cka import MinibatchCKA, cka, flatten, minibatch_cka
from helpers.sweep import SUFFIX


def feature_blocks(*steps, counter=None):
    """A 'model' whose blocks apply `steps` in turn to rows of features (no parameters)."""
    def counted(step):
        def run(x):
            if counter is not None:
                counter[0] += 1
            return step(x)
        return run
    return chain(*[("mlp", f"f{i}", counted(step) if i == 0 else step, "logits") for i, step in enumerate(steps)])


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
    similarity = cka(feature_blocks(*steps), feature_blocks(*steps[:2]), [x])
    expected = torch.tensor([[direct_cka(a, b) for b in outputs[:2]] for a in outputs], dtype=torch.float64)
    assert similarity.cka.shape == (3, 2) and similarity.batches == 1
    assert torch.allclose(similarity.cka, expected, atol=1e-12)


def test_batches_sum_the_unbiased_hsic_of_each_batch():
    torch.manual_seed(0)
    batches = [torch.randn(6, 4) for _ in range(3)]
    square = lambda x: x ** 2  # noqa: E731
    similarity = cka(feature_blocks(lambda x: x), feature_blocks(square), batches)
    grams = [(x.double() @ x.double().T, square(x).double() @ square(x).double().T) for x in batches]
    cross = sum(unbiased_hsic(K, L) for K, L in grams)
    self_a, self_b = sum(unbiased_hsic(K, K) for K, _ in grams), sum(unbiased_hsic(L, L) for _, L in grams)
    expected = cross / math.sqrt(self_a * self_b)
    assert similarity.cka.item() == pytest.approx(expected, rel=1e-10)


def test_identity_orthogonal_and_isotropic_scaling_give_one():
    torch.manual_seed(0)
    q = orthogonal(20, seed=3)
    blocks = feature_blocks(lambda x: x, lambda x: x @ q, lambda x: 7.5 * x @ q.T, lambda x: 1e-3 * x)
    similarity = cka(blocks, blocks, [torch.randn(16, 20) for _ in range(2)])
    assert torch.allclose(similarity.cka, torch.ones(4, 4, dtype=torch.float64), atol=1e-10)


def test_independent_features_are_near_zero_unbiased_but_not_biased():
    torch.manual_seed(0)
    batches = [torch.randn(32, 2, 1000) for _ in range(16)]  # two independent halves of each example
    a, b = feature_blocks(lambda x: x[:, 0]), feature_blocks(lambda x: x[:, 1])
    similarity = cka(a, b, batches)
    assert abs(similarity.cka.item()) < 0.05
    # the biased (plug-in) estimator is far from zero when there are many more features than examples
    assert direct_cka(batches[0][:, 0], batches[0][:, 1], hsic=biased_hsic) > 0.8


def test_class_token_options():
    block = Block("msa", "t", Site("t"), "BNC", prefix_tokens=1)
    x = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    assert torch.equal(flatten(block, x, class_token="keep"), x.reshape(2, 15))
    assert torch.equal(flatten(block, x, class_token="drop"), x[:, 1:].reshape(2, 12))
    assert torch.equal(flatten(block, x, class_token="class"), x[:, 0])
    maps = Block("conv", "c", Site("c"), "BCHW")
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


def test_a_short_last_batch_is_left_out_with_a_warning():
    torch.manual_seed(0)
    batches = [torch.randn(6, 4), torch.randn(6, 4), torch.randn(3, 4)]
    blocks = feature_blocks(lambda x: x, torch.sin)
    with pytest.warns(UserWarning, match="left out a batch of 3"):
        similarity = cka(blocks, blocks, batches)
    assert similarity.batches == 2 and similarity.batch_size == 6
    with warnings.catch_warnings(), pytest.raises(ValueError, match="at least 4"):
        cka(blocks, blocks, [torch.randn(3, 4)])


def test_vit_against_itself_from_a_data_loader():
    torch.manual_seed(0)
    net = models.create("vit_ti", depth=2).eval()
    loader = data.loader(data.synthetic(8), batch_size=4, workers=0)
    similarity = cka(net, net, loader, class_token="drop")
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


def smoke(results, **kw):
    return cka_module.Config(smoke=True, models=["resnet_18", "vit_ti"], results=str(results), **kw)


def stored(config):
    return cka_module.similarities(cka_module.run(config, progress=False)[0], cka_module.nets(config.resolved()))


def test_the_stored_run_equals_the_sums_in_memory_and_resumes(tmp_path):
    config = smoke(tmp_path)
    (outcome,) = cka_module.run(config, progress=False)
    assert outcome.table.computed == 2 and len(outcome.units) == 2  # 16 images in batches of 8
    nets = cka_module.nets(config.resolved())
    images = cka_module.test_images(config.resolved(), nets)  # each model's own, at its size and normalisation
    loaders = [data.loader(images[name], 8, workers=0) for name in images]
    in_memory = minibatch_cka(nets, ({name: b[0] for name, b in zip(images, batch)} for batch in zip(*loaders)))
    from_rows = cka_module.similarities(outcome, nets)
    for a, b in in_memory.pairs:  # JSON rows keep float64 exactly, summed in the same order
        assert torch.equal(from_rows.similarity(a, b).cka, in_memory.similarity(a, b).cka)
    (rows,) = outcome.table.folder.glob(f"*{SUFFIX}")
    rows.write_text(rows.read_text().splitlines(keepends=True)[0])  # killed after the first batch
    (again,) = cka_module.run(config, progress=False)
    assert again.table.computed == 1 and again.table.folder == outcome.table.folder
    assert torch.equal(cka_module.similarities(again, nets).cross["resnet_18", "vit_ti"],
                       in_memory.cross["resnet_18", "vit_ti"])


def test_torchrun_with_two_processes_gives_the_bits_of_one(tmp_path):
    args = ["--models", "resnet_18", "vit_ti", "--smoke", "--examples", "16", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    root = Path(__file__).resolve().parents[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "helpers.cka", *args, "--results", str(tmp_path / "two")],
                         env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("units finished") == 1 and "4 of 4 units finished (4 computed" in two.stdout
    one = subprocess.run([sys.executable, "-m", "helpers.cka", *args, "--results", str(tmp_path / "one")],
                         env=env, cwd=root, capture_output=True, text=True, timeout=300)  # the same thread count
    assert one.returncode == 0, one.stderr[-2000:]
    one, two = (stored(cka_module.Config(smoke=True, models=["resnet_18", "vit_ti"], examples=16, batch_size=4,
                                         results=str(tmp_path / run))) for run in ("one", "two"))
    for pair in one.pairs:  # float64 HSIC of each batch, summed in batch order: not a bit depends on the ranks
        assert torch.equal(one.cross[pair], two.cross[pair])


def test_best_matches_name_the_most_similar_block_of_the_other_model():
    similarity = cka_module.Similarity(torch.tensor([[0.2, 0.9, 0.1], [0.7, 0.3, 0.6]], dtype=torch.float64),
                                       ["a0", "a1"], ["b0", "b1", "b2"], ["embed", "msa"], ["embed", "conv", "pool"],
                                       batches=1, batch_size=4)
    matches = similarity.best_matches()
    assert matches.match.tolist() == ["b1", "b0"] and matches.match_kind.tolist() == ["conv", "embed"]
    assert matches.cka.tolist() == [0.9, 0.7] and matches.kind.tolist() == ["embed", "msa"]
