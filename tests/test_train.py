"""Training: the authors' schedules, overfitting a tiny set, official-format checkpoints, exact resume, torchrun."""
import dataclasses
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import checkpoints, data, experiment, models, train
from helpers.recipes import STRONG, WEAK

TINY = dict(depth=1, embed_dim=64, num_heads=2, patch_size=8, global_pool="avg")  # a ViT of 60k parameters
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    # two OpenMP threads on a busy 2-core machine spin against each other: 10x slower than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(models.REGISTRY, "tiny_vit", models.Entry(partial(models.vit, **TINY), "vit"))
    return "tiny_vit"


def lrs(recipe, *, epochs, warmup_epochs, steps_per_epoch):
    """The learning rate of every step, read from the scheduler the way train() drives it."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    scheduler = train.scheduler_for(optimizer, recipe, epochs=epochs, warmup_epochs=warmup_epochs,
                                    steps_per_epoch=steps_per_epoch)
    rates = []
    for step in range((epochs + warmup_epochs) * steps_per_epoch):
        scheduler.step_update(train.schedule_step(step, warmup_epochs=warmup_epochs, steps_per_epoch=steps_per_epoch))
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("recipe", [STRONG, WEAK], ids=["cosine", "step"])
def test_schedule_is_the_authors(recipe):
    # the authors: lr * t / T over the T warm-up steps (ops/schedulers.py), then torch's per-epoch scheduler
    epochs, warmup_epochs, steps = 8, 2, 3
    recipe = dataclasses.replace(recipe, milestones=(2, 5, 7))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    if recipe.scheduler == "cosine":
        torch_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0)
    else:
        torch_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    expected = [recipe.lr * t / (warmup_epochs * steps) for t in range(warmup_epochs * steps)]
    for _ in range(epochs):
        expected += [optimizer.param_groups[0]["lr"]] * steps
        optimizer.step()
        torch_scheduler.step()
    assert lrs(recipe, epochs=epochs, warmup_epochs=warmup_epochs, steps_per_epoch=steps) == pytest.approx(expected)


def test_a_tiny_model_overfits_a_tiny_set(tmp_path, tiny):
    recipe = dataclasses.replace(STRONG, mixup=0.0, cutmix=0.0, label_smoothing=0.0, lr=5e-3, batch_size=8,
                                 warmup_epochs=0)
    torch.manual_seed(0)
    model = models.create(tiny)
    log = train.train(model, data.synthetic(32), name=tiny, recipe=recipe, folder=tmp_path, epochs=10, workers=0,
                      progress=False)  # 40 steps
    assert list(log.epoch) == list(range(1, 11))
    assert log.train_loss.iloc[-1] < log.train_loss.iloc[0] / 2


def test_checkpoint_is_official_and_loads_through_load_file(tmp_path, tiny):
    recipe = dataclasses.replace(STRONG, batch_size=8)
    test_set = data.synthetic(16, seed=1)
    model = models.create(tiny)
    log = train.train(model, data.synthetic(16), test_set, name=tiny, recipe=recipe, folder=tmp_path, epochs=1,
                      warmup_epochs=1, workers=0, progress=False)
    for stage, epoch in (("warmup", 1), ("last", 2), (None, 2)):
        checkpoint = torch.load(train.checkpoint_path(tmp_path, tiny, stage=stage), weights_only=True)
        assert {"name", "state_dict", "optimizer", "epoch"} <= set(checkpoint)
        assert checkpoint["name"] == tiny and checkpoint["epoch"] == epoch
    loaded = checkpoints.load_file(train.checkpoint_path(tmp_path, tiny), tiny)
    images = test_set.tensors[0]
    assert torch.equal(loaded(images), model.eval()(images))
    # the log's test metrics are those of the saved weights
    evaluation = train.evaluate(loaded, test_set)
    assert log.test_nll.iloc[-1] == pytest.approx(evaluation.nll)
    assert log.test_accuracy.iloc[-1] == evaluation.accuracy
    assert list(log.phase) == ["warmup", "train"]


class Killed(Exception):
    pass


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, tiny, monkeypatch):
    # the strong recipe draws from every generator: Mixup/CutMix (numpy), stochastic depth (torch)
    recipe = dataclasses.replace(STRONG, batch_size=8)
    run = partial(train.train, train_set=data.synthetic(16), name=tiny, recipe=recipe, epochs=2, warmup_epochs=1,
                  workers=0, progress=False)
    torch.manual_seed(0)
    whole = models.create(tiny)
    whole_log = run(whole, folder=tmp_path / "whole")

    save = train.save_checkpoint

    def killed_after_epoch_2(checkpoint, path):
        save(checkpoint, path)
        if checkpoint["epoch"] == 2:
            raise Killed

    torch.manual_seed(0)
    monkeypatch.setattr(train, "save_checkpoint", killed_after_epoch_2)
    with pytest.raises(Killed):
        run(models.create(tiny), folder=tmp_path / "killed")
    monkeypatch.setattr(train, "save_checkpoint", save)
    torch.manual_seed(123), np.random.seed(123)  # a new process: other weights, other generator states
    resumed = models.create(tiny)
    resumed_log = run(resumed, folder=tmp_path / "killed")

    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    pd.testing.assert_frame_equal(resumed_log.drop(columns="train_throughput"),
                                  whole_log.drop(columns="train_throughput"))


def test_two_process_torchrun_matches_one_process_evaluation(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "helpers.train", "--model", "vit_ti", "--model-args", *(f"{k}={v}" for k, v in TINY.items()),
               "--smoke", "--results", str(tmp_path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    path = train.checkpoint_path(tmp_path / "smoke" / "trained", "vit_ti")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    model = models.create("vit_ti", **TINY)
    model.load_state_dict(checkpoints.read_state_dict(path))
    single = train.evaluate(model, data.synthetic(16, seed=1), batch_size=5)
    row = pd.read_csv(train.log_path(tmp_path / "smoke" / "trained", "vit_ti")).iloc[-1]
    assert row.test_count == 16
    for key in ("accuracy", "nll", "ece", "freq_90"):
        assert row[f"test_{key}"] == pytest.approx(getattr(single, key), rel=1e-6), key


def test_a_run_with_other_settings_is_refused_naming_the_setting(tmp_path, tiny):
    recipe = dataclasses.replace(STRONG, batch_size=8)
    run = partial(train.train, train_set=data.synthetic(16), name=tiny, recipe=recipe, warmup_epochs=0, workers=0,
                  folder=tmp_path, progress=False)
    run(models.create(tiny), epochs=1)
    with pytest.raises(ValueError, match="other settings \\(epochs: 1 -> 2\\)"):
        run(models.create(tiny), epochs=2)
    with pytest.raises(ValueError, match="train.digest"):
        run(models.create(tiny), epochs=1, train_set=data.synthetic(16, seed=5))
    assert len(run(models.create(tiny), epochs=1, resume=False)) == 1  # starting over is a choice


def test_the_command_line_is_the_notebooks_config(tmp_path):
    config = experiment.parse(train.Config, ["--model", "vit_ti", "--model-args", "depth=1", "global_pool=avg",
                                             "--smoke", "--results", str(tmp_path)])
    assert config.model_args == {"depth": 1, "global_pool": "avg"}
    assert config.resolved() == train.Config(model="vit_ti", model_args={"depth": 1, "global_pool": "avg"},
                                             smoke=True, results=str(tmp_path)).resolved()
    assert train.training_folder(config) == tmp_path / "smoke" / "trained"  # never beside real checkpoints


def test_bad_recipe_is_refused():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="scheduler 'linear'"):
        train.scheduler_for(optimizer, dataclasses.replace(WEAK, scheduler="linear"), epochs=1, warmup_epochs=0,
                            steps_per_epoch=1)
