import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from helpers import data, landscape, losses, plots
from helpers.common import Rank
from helpers.recipes import STRONG
from helpers.sweep import Table

WD = STRONG.weight_decay


class Tiny(nn.Module):
    """A conv, a BatchNorm (buffers), a position embedding, a class token and a head: every rule applies."""

    def __init__(self, classes=100):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.norm = nn.BatchNorm2d(4)
        self.pos_embed = nn.Parameter(torch.randn(1, 4, 8, 8) * 0.1)
        self.cls_token = nn.Parameter(torch.randn(1, 4))
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        x = self.norm(self.conv(x)) + self.pos_embed
        return self.head(x.mean((2, 3)) + self.cls_token)


def tiny(seed=0):
    torch.manual_seed(seed)
    model = Tiny().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.1, 0.1)
        model.norm.running_var.uniform_(0.5, 2)
    return model


def batches(n=8, batch_size=4, seed=0):
    return landscape.augmented_batches(data.synthetic(n), seed=seed, batch_size=batch_size,
                                       mixup=STRONG.mixup_fn(100), progress=False)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, before):
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


POINTS = landscape.grid_points(3)


def sweep(model, augmented, folder, points=POINTS, directions=None, rank_info=None):
    """The landscape of `model` in a table at `folder`, along `directions` (default: seed 0's of `tiny()`, drawn on a
    copy: finding its position tables runs a probe pass, which the tests' hooks on `model` would count)."""
    directions = directions or landscape.random_directions(tiny())
    return landscape.landscape(model, augmented, Table(folder, ("x", "y"), rank_info=rank_info), points, directions,
                               progress=False)


# Directions

def test_dim0_normalisation_by_hand():
    weight = torch.tensor([[3.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    direction = torch.tensor([[1.0, 2.0, 0.0], [0.0, 2.0, 2.0]])
    # column norms: weight (5, 1, 1), direction (1, sqrt 8, 2)
    expected = torch.tensor([[5.0, 2 / math.sqrt(8), 0.0], [0.0, 2 / math.sqrt(8), 1.0]])
    assert torch.allclose(landscape.filter_normalized_direction(direction, weight), expected, rtol=1e-6)
    # Li et al.: row norms: weight (sqrt 10, sqrt 17), direction (sqrt 5, sqrt 8)
    by_filter = torch.tensor([[1.0, 2.0, 0.0], [0.0, 2.0, 2.0]]) * torch.tensor([[math.sqrt(10 / 5)],
                                                                                [math.sqrt(17 / 8)]])
    assert torch.allclose(landscape.filter_normalized_direction(direction, weight, normalization="filter"),
                          by_filter, rtol=1e-6)
    with pytest.raises(ValueError, match="dim0"):
        landscape.filter_normalized_direction(direction, weight, normalization="layer")


def test_directions_move_only_weights_with_two_dimensions_and_match_their_norms():
    model = tiny()
    first, second = landscape.random_directions(model, seed=3)
    assert set(first) == set(second) == {"conv.weight", "cls_token", "head.weight"}  # no bias, norm, pos_embed
    for name, d in first.items():
        w = model.get_parameter(name).detach()
        assert torch.allclose(d.norm(dim=0), w.norm(dim=0), rtol=1e-5)
        assert not torch.equal(d, second[name])
    filters = landscape.random_directions(model, seed=3, normalization="filter")[0]["conv.weight"]
    assert torch.allclose(filters.flatten(1).norm(dim=1), model.conv.weight.detach().flatten(1).norm(dim=1))
    again = landscape.random_directions(model, seed=3)
    assert all(torch.equal(first[k], again[0][k]) for k in first)


def test_directions_regenerate_bit_for_bit_and_their_digest_knows_the_weights():
    digest = landscape.directions_digest(landscape.random_directions(tiny(), seed=1))
    assert landscape.directions_digest(landscape.random_directions(tiny(), seed=1)) == digest
    assert landscape.directions_digest(landscape.random_directions(tiny(), seed=2)) != digest
    assert landscape.directions_digest(landscape.random_directions(tiny(seed=5), seed=1)) != digest  # other weights
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 100))
    with pytest.raises(ValueError, match="do not fit"):
        landscape.check_fit(landscape.random_directions(tiny()), other)
    with pytest.raises(ValueError, match="does not run on inputs of .2, 3, 32, 32.*input_size"):
        landscape.check_fit(landscape.random_directions(tiny()), nn.Linear(3, 4))


def test_directions_are_the_same_bits_in_another_process():
    script = ("import sys, torch; sys.path.insert(0, 'tests'); from test_landscape import tiny; "
              "from helpers import landscape; torch.set_num_threads(1); "
              "print(landscape.directions_digest(landscape.random_directions(tiny(), seed=1)))")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[1])
    assert other.stdout.strip() == landscape.directions_digest(landscape.random_directions(tiny(), seed=1))


# Batches

class RandomlyShifted(Dataset):
    """Images shifted by torch, flipped by Python's `random`, scaled by NumPy: every generator a transform uses."""

    def __init__(self, n):
        self.images = torch.arange(n * 3 * 4 * 4, dtype=torch.float32).reshape(n, 3, 4, 4)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        import random
        image = self.images[i].roll(int(torch.randint(0, 4, ())), -1) * float(np.random.uniform(0.5, 1.5))
        return (image.flip(-1) if random.random() < 0.5 else image), i % 10


def test_batches_depend_on_the_seed_only():
    dataset = RandomlyShifted(12)
    mixup = STRONG.mixup_fn(10)
    one = landscape.augmented_batches(dataset, seed=4, batch_size=4, mixup=mixup, workers=0, progress=False)
    torch.manual_seed(123)
    np.random.seed(7)  # global state must not matter
    two = landscape.augmented_batches(dataset, seed=4, batch_size=4, mixup=mixup, workers=2, progress=False)
    other = landscape.augmented_batches(dataset, seed=5, batch_size=4, mixup=mixup, workers=0, progress=False)
    assert all(torch.equal(a, b) and torch.equal(s, t) for (a, s), (b, t) in zip(one, two))
    assert not torch.equal(one[0][0], other[0][0])
    targets = torch.cat([t for _, t in one])
    assert torch.allclose(targets.sum(1), torch.ones(12)) and targets.min() >= 0.1 / 10 - 1e-7  # smoothed
    with pytest.raises(ValueError, match="even"):
        landscape.augmented_batches(dataset, batch_size=5, mixup=mixup, progress=False)


# The grid

def test_centre_equals_the_models_own_loss_on_the_same_batches(tmp_path):
    model, augmented = tiny(), batches()
    table = sweep(model, augmented, tmp_path)
    centre = table[(table.x == 0) & (table.y == 0)].iloc[0]
    with torch.no_grad():
        per_batch = [-(t.double() * model(x).double().log_softmax(-1)).sum(-1).mean() for x, t in augmented]
        correct = sum((model(x).argmax(-1) == t.argmax(-1)).sum().item() for x, t in augmented)
    norms = [np.linalg.norm(p.detach().double().numpy().ravel()) for p in model.parameters()]
    assert centre.NLL == pytest.approx(float(torch.stack(per_batch).mean()), rel=1e-5)
    assert centre.l2 == pytest.approx(sum(norms), rel=1e-9)
    assert centre.l1 == pytest.approx(sum(np.abs(p.detach().double().numpy()).sum() for p in model.parameters()))
    assert centre.loss == pytest.approx(centre.NLL + WD * sum(norms), rel=1e-12)
    penalty = losses.l2_penalty(model.parameters(), WD, convention="norm_sum").item()
    assert centre.loss == pytest.approx(centre.NLL + penalty, rel=1e-6)
    assert centre.Acc == correct / 8
    assert list(table.columns) == list(landscape.COLUMNS) and len(table) == 9


def test_closed_form_on_a_linear_toy(tmp_path):
    # logits = (W0 + x d1 + y d2) v with W0 = 0, v = 1, d1 = (1, -1), d2 = (1, 1): logits (x + y, y - x), so
    # NLL of class 0 = log(1 + exp(-2x)) and the L2 norm sum = sqrt(2 x^2 + 2 y^2)
    model = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(model.weight)
    directions = [{"weight": torch.tensor([[1.0], [-1.0]])}, {"weight": torch.tensor([[1.0], [1.0]])}]
    ones = [(torch.ones(2, 1), torch.zeros(2, dtype=torch.long))]
    points = landscape.grid_points(5, span=2.0)
    table = sweep(model, ones, tmp_path, points, directions)
    x, y = table.x.to_numpy(), table.y.to_numpy()
    assert np.allclose(table.NLL, np.log1p(np.exp(-2 * x)), rtol=1e-5, atol=1e-6)
    assert np.allclose(table.loss, np.log1p(np.exp(-2 * x)) + WD * np.sqrt(2 * x ** 2 + 2 * y ** 2), rtol=1e-5)
    assert np.array_equal(table.Acc, (x >= 0).astype(float))  # a tie at x = 0 goes to class 0
    X, Y, Z = plots.as_grid(table)
    assert Z.shape == (5, 5) and np.array_equal(X[0], np.linspace(-2, 2, 5)) and np.array_equal(Y[:, 0], X[0])


def test_only_perturbed_parameters_move_and_all_come_back_bit_for_bit(tmp_path):
    model, augmented = tiny(), batches()
    model.train()
    before = snapshot(model)
    directions = landscape.random_directions(model)
    seen = []

    def check(module, inputs):
        state = module.state_dict()
        assert not module.training
        for k in ("conv.bias", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var", "pos_embed",
                  "head.bias"):
            assert torch.equal(state[k], before[k])
        seen.append({k: state[k].clone() for k in directions[0]})

    model.register_forward_pre_hook(check)
    sweep(model, augmented, tmp_path, directions=directions)
    assert len(seen) == 9 * len(augmented)
    at = seen[len(augmented) * 5]  # the sixth point: x = 1, y = 0
    for k, d in directions[0].items():
        assert torch.allclose(at[k], before[k] + d, rtol=1e-6, atol=1e-7)
    assert model.training
    assert_bit_identical(model, before)


def test_norm_columns_are_the_norm_sums_of_the_weights_at_each_point(tmp_path):
    model, augmented = tiny(), batches()
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(losses.norm_sums(module.parameters())))
    table = sweep(model, augmented, tmp_path)
    # float64 norms of the float32 weights as set, which differ from w0 + x d1 + y d2 by their rounding
    for row, (l1, l2) in zip(table.itertuples(), seen[::len(augmented)]):
        assert row.l1 == pytest.approx(l1, rel=1e-7) and row.l2 == pytest.approx(l2, rel=1e-7)


def test_an_error_mid_sweep_restores_the_weights(tmp_path):
    model, augmented = tiny(), batches()
    before = snapshot(model)
    calls = []

    def fail_at_fifth_call(module, inputs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("killed")

    model.register_forward_pre_hook(fail_at_fifth_call)
    with pytest.raises(RuntimeError, match="killed"):
        sweep(model, augmented, tmp_path)
    assert_bit_identical(model, before)


def test_a_killed_run_resumes_to_the_same_table_computing_no_point_twice(tmp_path):
    augmented = batches()
    whole = sweep(tiny(), augmented, tmp_path / "whole")

    model, calls = tiny(), []
    hook = model.register_forward_pre_hook(lambda module, inputs: calls.append(1) if len(calls) < 8 else 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sweep(model, augmented, tmp_path / "killed")
    hook.remove()
    assert len(Table(tmp_path / "killed", ("x", "y")).rows()) == 4  # 8 forwards: 4 points of 2 batches
    calls.clear()
    model.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    resumed = sweep(model, augmented, tmp_path / "killed")
    assert len(calls) == 5 * len(augmented)
    pd.testing.assert_frame_equal(resumed, whole)


def test_two_ranks_fill_the_same_table_as_one(tmp_path):
    augmented = batches()
    one = sweep(tiny(), augmented, tmp_path / "one", rank_info=Rank(0, 1, 0))
    shares = [sweep(tiny(), augmented, tmp_path / "two", rank_info=Rank(r, 2, r)) for r in (1, 0)]
    assert len(shares[0]) == 4 and len(shares[1]) == 9
    pd.testing.assert_frame_equal(shares[1], one)


def test_one_dimensional_slice_shares_the_grids_points():
    line = landscape.grid_points(21, one_dimensional=True)
    assert [p["y"] for p in line] == [0.0] * 21
    assert all(p in landscape.grid_points(21) for p in line)
    assert landscape.grid_points(21)[:2] == [{"x": -1.0, "y": -1.0}, {"x": -0.9, "y": -1.0}]  # x fastest


def stored(results):
    (folder,) = (Path(results) / "sweeps" / "landscape").glob("resnet_18-*")
    return {(r["x"], r["y"]): r for r in Table(folder, ("x", "y")).rows()}


def test_torchrun_with_two_processes_gives_the_values_of_one(tmp_path):
    args = ["--models", "resnet_18", "--smoke", "--points", "2", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    root = Path(__file__).resolve().parents[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                          "helpers.landscape", *args, "--results", str(tmp_path / "two")],
                         env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("units finished") == 1 and "4 of 4 units finished (4 computed" in two.stdout  # rank 0
    assert landscape.main([*args, "--results", str(tmp_path / "one")]) == 0
    one, two = stored(tmp_path / "one"), stored(tmp_path / "two")
    assert len(one) == 4 and one.keys() == two.keys()
    for point in one:  # equal up to the order of float64 sums, which depends on the thread count
        for column in landscape.COLUMNS:
            assert two[point][column] == pytest.approx(one[point][column], rel=1e-12)


def test_a_rerun_with_another_weight_decay_or_data_size_recomputes(tmp_path, capsys):
    args = ["--models", "resnet_18", "--smoke", "--points", "1", "--workers", "0", "--results", str(tmp_path)]
    assert landscape.main(args) == 0
    first = capsys.readouterr().out
    assert "1 of 1 units finished (1 computed" in first
    for changed in (["--weight-decay", "0"], ["--images", "4"]):  # smoke vs real: tests/test_experiment.py
        assert landscape.main(args + changed) == 0
        assert "(1 computed by this run)" in capsys.readouterr().out
    assert landscape.main(args) == 0
    assert "(0 computed by this run)" in capsys.readouterr().out


def test_an_unwritable_results_folder_is_one_line_naming_it(tmp_path, capsys):
    blocked = tmp_path / "results"
    blocked.write_text("a file where the results folder should be")
    status = landscape.main(["--models", "resnet_18", "--smoke", "--points", "1", "--results", str(blocked)])
    err = capsys.readouterr().err.strip()
    assert status == 1 and err.startswith("error: [Errno") and f"Cannot write to {blocked}" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_ctrl_c_keeps_the_finished_points_and_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    args = ["--models", "resnet_18", "--smoke", "--points", "2", "--results", str(tmp_path)]
    calls, real = [], landscape.evaluate

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(landscape, "evaluate", interrupted)
    assert landscape.main(args) == 130
    out = capsys.readouterr().out
    assert "Interrupted: 2 of 4 units are saved in" in out and "run the same command (or cell) again to resume" in out
    monkeypatch.setattr(landscape, "evaluate", real)
    assert landscape.main(args) == 0
    assert "4 of 4 units finished (2 computed by this run)" in capsys.readouterr().out
