"""helpers.hessian against dense Hessians of the flat loss (torch.autograd.functional.hessian, checked against
central finite differences of the gradient and against torch.func's forward-over-reverse hessian), and against
hand-derived curvature (L2 conventions), exact Gauss-quadrature moments and an uninterrupted run."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer
from torch.func import functional_call, grad
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers import data, hessian
from helpers.losses import nll
from helpers.recipes import STRONG


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)), torch.randn(12, 6)


def conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 3, 3, stride=2),
                          nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # running statistics far from batch statistics: eval mode matters
            module.running_mean.normal_(), module.running_var.uniform_(0.5, 2)
            module.weight.data.normal_(), module.bias.data.normal_()
    return model, torch.randn(12, 2, 8, 8)


def vit():
    """Two timm blocks, fused attention left at timm's default."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=4, patch_size=2, in_chans=1, embed_dim=4, depth=2, num_heads=2, mlp_ratio=1,
                              qkv_bias=False, num_classes=4)
    for p in model.parameters():  # away from timm's init (unit LayerNorm scales, zero biases): a generic point
        p.data.add_(0.3 * torch.randn_like(p))
    return model, torch.randn(12, 1, 4, 4)


MODELS = {"mlp": mlp, "conv": conv_net, "vit": vit}


def flat_loss(model, inputs, targets, penalty=lambda w: 0.0):
    """The loss as a function of one float64 vector of all parameters (model in eval mode, math attention)."""
    names, shapes = zip(*((name, p.shape) for name, p in model.named_parameters()))
    buffers = {name: b.double() if b.is_floating_point() else b for name, b in model.named_buffers()}

    def loss(w):
        pieces = torch.split(w, [shape.numel() for shape in shapes])
        parameters = {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes)}
        with sdpa_kernel(SDPBackend.MATH):
            return nll(functional_call(model.eval(), {**parameters, **buffers}, (inputs.double(),)), targets) + penalty(w)

    return loss, torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])


def dense_hessian(loss, w):
    # Row by row, reverse over reverse, without vmap: on torch 2.14 torch.func.hessian's vmap gives wrong entries
    # for timm's ViT (rows of the final LayerNorm's weight), as finite differences of the gradient show. The
    # tests check this reference against finite differences and, on the MLP, against torch.func.hessian.
    return torch.autograd.functional.hessian(loss, w)


def targets_for(inputs):
    return torch.randint(0, 4, (len(inputs),), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    model, inputs = MODELS[request.param]()
    targets = targets_for(inputs)
    loss, w = flat_loss(model, inputs, targets)
    return request.param, model, inputs, targets, dense_hessian(loss, w), loss, w


def operator(model, inputs, targets, **kw):
    with hessian.evaluating(model), hessian.math_attention():
        return hessian.HessianOperator(model, inputs, targets, dtype=torch.float64, **kw)


def test_hessian_vector_products_equal_the_dense_hessian(case):
    name, model, inputs, targets, dense, loss, w = case
    model.train()  # eigenvalues and the operator must switch BatchNorm to eval themselves
    product = operator(model, inputs, targets, weight_decay=0)
    assert model.training
    v = torch.randn(product.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(product(v), dense @ v, rtol=1e-9, atol=1e-9 * (dense @ v).abs().max().item())
    # and the dense reference against central finite differences of the gradient
    eps = 1e-5
    finite = (grad(loss)(w + eps * v) - grad(loss)(w - eps * v)) / (2 * eps)
    torch.testing.assert_close(dense @ v, finite, rtol=1e-5, atol=1e-5 * finite.abs().max().item())


def test_the_dense_reference_equals_forward_over_reverse_ad_on_the_mlp():
    model, inputs = mlp()
    loss, w = flat_loss(model, inputs, targets_for(inputs))
    torch.testing.assert_close(dense_hessian(loss, w), torch.func.hessian(loss)(w), rtol=1e-10, atol=1e-12)


def test_fused_attention_lacks_double_backward_and_is_left_on():
    model, inputs = vit()
    assert model.blocks[0].attn.fused_attn
    loss = nll(model(inputs), targets_for(inputs))
    first = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):  # the reason for math_attention
        torch.autograd.grad(first[0].sum(), list(model.parameters()))
    hessian.eigenvalues(model, inputs, targets_for(inputs), k=2, max_steps=4)
    assert model.blocks[0].attn.fused_attn


def test_lanczos_finds_the_extreme_eigenvalues(case):
    name, model, inputs, targets, dense, loss, w = case
    exact = torch.linalg.eigvalsh(dense)
    assert (exact[:5] < 0).all()  # a non-convex case: five negative eigenvalues to find
    steps = {"mlp": 60, "conv": 60, "vit": 150}[name]  # fewer steps than parameters
    spectrum = hessian.eigenvalues(model, inputs, targets, k=5, tol=0, max_steps=steps, weight_decay=0,
                                   dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert spectrum.steps == steps  # tol=0: a fixed number of steps
    torch.testing.assert_close(spectrum.top, exact.flip(0)[:5], rtol=1e-4, atol=0)
    torch.testing.assert_close(spectrum.bottom, exact[:5], rtol=1e-4, atol=0)
    for values, bounds in ((spectrum.top, spectrum.top_bounds), (spectrum.bottom, spectrum.bottom_bounds)):
        assert within_bounds(values, bounds, exact)


def within_bounds(values, bounds, exact):
    """Whether an exact eigenvalue lies within each value's bound (up to float64 rounding of the products)."""
    distances = (values[:, None] - exact[None]).abs().min(1).values
    return bool((distances <= bounds + 1e-9 * exact.abs().max()).all())


@pytest.fixture(scope="module")
def negative():
    """The two-block ViT, whose two eigenvalues of largest magnitude are negative, and its exact eigenvalues."""
    model, inputs = vit()
    targets = targets_for(inputs)
    exact = torch.linalg.eigvalsh(dense_hessian(*flat_loss(model, inputs, targets)))
    by_magnitude = exact[exact.abs().argsort(descending=True)]
    assert (by_magnitude[:2] < 0).all() and (by_magnitude[2:5] > 0).any()  # the precondition, checked: mixed signs
    return model, inputs, targets, exact, by_magnitude[:5]


def test_the_statistic_is_the_top_k_by_magnitude_even_when_negative(negative):
    model, inputs, targets, exact, expected = negative
    spectrum = hessian.eigenvalues(model, inputs, targets, k=5, weight_decay=0, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(0))
    assert spectrum.converged and 5 <= spectrum.steps < len(exact) / 4  # certified long before the whole space
    torch.testing.assert_close(spectrum.magnitude, expected, rtol=1e-4, atol=0)
    assert spectrum.bounds.shape == (5,) and (spectrum.bounds <= 1e-4 * spectrum.magnitude.abs()).all()
    assert spectrum.max_bound == pytest.approx((spectrum.bounds / spectrum.magnitude.abs()).max().item())
    assert spectrum.top[0] == pytest.approx(exact[-1].item(), rel=1e-4)  # the algebraic ends are there too
    assert spectrum.bottom[0] == pytest.approx(exact[0].item(), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_certified_eigenvalues_are_within_their_bounds_of_the_exact_ones(negative, dtype):
    model, inputs, targets, exact, expected = negative
    for seed in range(3):
        spectrum = hessian.eigenvalues(model, inputs, targets, k=5, weight_decay=0, dtype=dtype,
                                       generator=torch.Generator().manual_seed(seed))
        assert spectrum.converged
        relative = ((spectrum.magnitude - expected) / expected).abs()
        if dtype == torch.float64:  # the bound is for the operator as computed: float32 adds its own rounding
            assert within_bounds(spectrum.magnitude, spectrum.bounds, exact)
            assert (relative <= spectrum.bounds / expected.abs() + 1e-12).all()
        assert (relative <= 1e-4).all()


def test_every_ritz_value_is_within_its_bound_at_every_step(negative):
    model, inputs, targets, exact, expected = negative
    product = operator(model, inputs, targets, weight_decay=0)
    for steps in (3, 8, 20, 40):
        values, bounds = hessian.ritz(hessian.lanczos(product, product.dim, tol=0, max_steps=steps,
                                                      dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        assert len(values) == steps and within_bounds(values, bounds, exact)


def test_a_step_limit_too_small_to_certify_is_flagged(negative):
    model, inputs, targets, exact, expected = negative
    spectrum = hessian.eigenvalues(model, inputs, targets, k=5, max_steps=6, weight_decay=0, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(0))
    assert spectrum.steps == 6 and not spectrum.converged
    assert spectrum.max_bound > 1e-4 and len(spectrum.magnitude) == 5


class Designed:
    """v -> R diag(eigenvalues) R v, with R the reflection taking the (first) start vector to one whose squared
    components along the eigenvectors are `weights`: Lanczos runs as if from that start."""

    def __init__(self, eigenvalues, weights):
        self.eigenvalues, self.start, self.normal = eigenvalues, (weights / weights.sum()).sqrt(), None

    def __call__(self, vector):
        if self.normal is None:
            self.normal = (vector - self.start) / (vector - self.start).norm()
        reflect = lambda x: x - 2 * self.normal * (self.normal @ x)  # noqa: E731
        return reflect(self.eigenvalues * reflect(vector))


def test_an_end_still_moving_outwards_blocks_certification():
    # five positive outliers found fast; -65, the fifth by magnitude, has a tiny weight in the start vector, so
    # the smallest Ritz value is still moving out of the bulk (-58..20) when the positive ones are certified
    eigenvalues = torch.cat([torch.tensor([100., 90, 80, 70, 60, -65], dtype=torch.float64),
                             torch.linspace(-58, 20, 194, dtype=torch.float64)])
    weights = torch.ones(200, dtype=torch.float64)
    weights[5] = 10 ** -5.5
    run = dict(dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    spectrum = hessian.Spectrum.of(hessian.lanczos(Designed(eigenvalues, weights), 200, **run))
    assert spectrum.converged
    torch.testing.assert_close(spectrum.magnitude, torch.tensor([100., 90, 80, 70, -65], dtype=torch.float64))
    early = hessian.lanczos(Designed(eigenvalues, weights), 200, tol=0, max_steps=19, **run)
    values, bounds = hessian.ritz(early)
    wanted = hessian.by_magnitude(values, 5)
    assert (bounds[wanted] <= 1e-4 * values[wanted].abs()).all()  # the five largest so far are certified ...
    assert values.min() > -60 and not hessian.certified(early)  # ... but the bottom end is still in motion


def test_an_exhausted_krylov_space_restarts_and_finds_a_repeated_eigenvalue_twice():
    eigenvalues = torch.tensor([-3, -3, 2, 1.5, 1, .5, .4, .3, .2, .1, .05, .01], dtype=torch.float64)
    run = hessian.lanczos(lambda vector: eigenvalues * vector, 12, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0))
    assert 0 in run.betas[:-1] and run.block > 0  # a diagonal operator and a Rademacher start: -3 seen once, then anew
    spectrum = hessian.Spectrum.of(run)
    torch.testing.assert_close(spectrum.magnitude, torch.tensor([-3, -3, 2, 1.5, 1], dtype=torch.float64))


def test_float32_eigenvalues_of_millions_of_parameters_are_within_their_bounds():
    # a diagonal operator, its outliers first: a running float32 sum (BLAS dot, CPU vector_norm) absorbs the small
    # terms that follow them, which put these values 6e-4 off at 1M dimensions while certifying 1e-4
    dim, top = 2_000_000, torch.tensor([1000., 900, 800, 700, -600])
    eigenvalues = torch.linspace(-1, 1, dim)
    eigenvalues[:5] = top
    spectrum = hessian.Spectrum.of(hessian.lanczos(lambda vector: eigenvalues * vector, dim,
                                                   generator=torch.Generator().manual_seed(0)))
    assert spectrum.converged and spectrum.magnitude.dtype == torch.float64
    assert ((spectrum.magnitude - top).abs() <= spectrum.bounds + 1e-6 * top.abs()).all()


# A run on 50M numbers in float32 in a process of its own, whose peak virtual memory counts every allocation, even
# one never touched (torch.empty by max_steps was one): the memory it took is measured, not inferred from the code.
MEMORY = """
import json, re, torch
from helpers import hessian

def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

dim, top = 50_000_000, torch.tensor([1e4, 9e3, 8e3, 7e3, -6e3])
eigenvalues = torch.linspace(-1, 1, dim)
eigenvalues[:5] = top
before = status("VmSize")
run = hessian.lanczos(lambda vector: eigenvalues * vector, dim, generator=torch.Generator().manual_seed(0))
grown = status("VmPeak") - before
untouched = torch.empty(20, dim)  # the probe: an allocation never touched shows in the peak
spectrum = hessian.Spectrum.of(run)
print(json.dumps({"grown": grown, "probed": status("VmPeak") - before, "held": run.held, "steps": run.steps,
                  "restarts": run.restarts, "converged": spectrum.converged, "magnitude": spectrum.magnitude.tolist(),
                  "bounds": spectrum.bounds.tolist(), "top": top.tolist()}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from Linux's /proc")
def test_memory_follows_the_steps_taken_on_50_million_parameters():
    result = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    run = json.loads(result.stdout)
    vector = 50_000_000 * 4  # bytes, float32
    top, magnitude, bounds = (torch.tensor(run[key], dtype=torch.float64) for key in ("top", "magnitude", "bounds"))
    assert run["converged"] and ((magnitude - top).abs() <= bounds + 1e-6 * top.abs()).all()
    assert run["held"] < run["steps"] + 8 and run["steps"] < hessian.BASIS  # held: as the steps went, 8 at a time
    assert run["grown"] <= hessian.memory(50_000_000, basis=run["held"]) + vector // 2  # and all it took
    assert run["probed"] >= 20 * vector  # and the probe does see untouched memory


def test_a_capped_basis_restarts_and_still_matches_the_exact_hessian(case):
    name, model, inputs, targets, dense, loss, w = case
    exact = torch.linalg.eigvalsh(dense)
    expected = exact[hessian.by_magnitude(exact, 5)]
    basis = hessian.smallest_basis(5) + 2  # room for 2 steps between restarts
    spectrum = hessian.eigenvalues(model, inputs, targets, k=5, weight_decay=0, basis=basis, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(0))
    assert spectrum.converged and spectrum.restarts > 0
    assert ((spectrum.magnitude - expected).abs() <= spectrum.bounds + 1e-9 * exact.abs().max()).all()
    assert (spectrum.bounds <= 1e-4 * spectrum.magnitude.abs()).all()


def test_a_basis_too_small_for_k_is_a_clear_error():
    model, inputs = mlp()
    with pytest.raises(ValueError, match=r"basis=7 vectors cannot hold the 5 wanted .* use basis >= 8"):
        hessian.eigenvalues(model, inputs, targets_for(inputs), k=5, basis=7)
    with pytest.raises(ValueError, match=r"of each of 2 losses.* use basis >= 13"):  # squared: one run for both
        hessian.losses_eigenvalues(model, inputs, targets_for(inputs), weight_decays=[0, 0.05], k=5, basis=12)
    hessian.losses_eigenvalues(model, inputs, targets_for(inputs), weight_decays=[0, 0.05], k=5, basis=12,
                               convention="norm_sum", max_steps=8)  # a run per loss
    with pytest.raises(ValueError, match=r"use basis >= 13"):
        hessian.Config(basis=12)


def test_one_run_serves_every_squared_weight_decay_each_certifying_its_own_top_k(negative):
    model, inputs, targets, exact, _ = negative
    weight_decays = [0.0, 0.1]  # 0.1 lifts 3.18 above -3.33 in magnitude: the two losses' top-5 differ
    assert set(hessian.by_magnitude(exact, 5).tolist()) != set(hessian.by_magnitude(exact + 0.1, 5).tolist())
    seed = torch.Generator().manual_seed
    shared = hessian.losses_eigenvalues(model, inputs, targets, weight_decays=weight_decays, dtype=torch.float64,
                                        generator=seed(0))
    assert shared[0].steps == shared[1].steps  # one run
    for spectrum, weight_decay in zip(shared, weight_decays):
        product = operator(model, inputs, targets, weight_decay=weight_decay)  # the penalty in the loss: a run alone
        alone = hessian.Spectrum.of(hessian.lanczos(product, product.dim, dtype=torch.float64, generator=seed(0)),
                                    loss=product.loss.item())
        assert spectrum.converged and alone.converged
        assert ((spectrum.magnitude - alone.magnitude).abs() <= spectrum.bounds + alone.bounds + 1e-12).all()
        assert spectrum.loss == pytest.approx(alone.loss, rel=1e-12)
        shifted = exact + weight_decay
        expected = shifted[hessian.by_magnitude(shifted, 5)]
        assert ((spectrum.magnitude - expected).abs() <= spectrum.bounds + 1e-9 * exact.abs().max()).all()


def test_squared_l2_shifts_every_eigenvalue_by_the_weight_decay():
    model, inputs = mlp()
    targets = targets_for(inputs)
    plain, penalised = (operator(model, inputs, targets, weight_decay=wd) for wd in (0, 0.05))
    v = torch.randn(plain.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(penalised(v), plain(v) + 0.05 * v, rtol=0, atol=1e-12)  # the Hessian plus wd I ...
    run = dict(tol=0, max_steps=20, dtype=torch.float64)
    alone = [hessian.Spectrum.of(hessian.lanczos(product, product.dim, generator=torch.Generator().manual_seed(0),
                                                 **run)) for product in (plain, penalised)]
    torch.testing.assert_close(alone[1].nodes, alone[0].nodes + 0.05, rtol=0, atol=1e-12)  # ... so the same run
    torch.testing.assert_close(alone[1].weights, alone[0].weights, rtol=0, atol=1e-10)      # shifted


def test_norm_sum_penalty_has_the_curvature_of_a_norm_and_none_at_a_zero_tensor():
    model, inputs = mlp()
    model[2].bias.data.zero_()  # as timm initialises biases
    targets, wd = targets_for(inputs), 0.05
    loss, w = flat_loss(model, inputs, targets)
    expected = dense_hessian(loss, w)
    start = 0
    for p in model.parameters():  # wd (I - u u^T) / |w| per nonzero tensor, by hand
        n, tensor = p.numel(), p.detach().double().reshape(-1)
        norm = tensor.norm()
        if norm > 0:
            unit = tensor / norm
            expected[start:start + n, start:start + n] += wd * (torch.eye(n, dtype=torch.float64)
                                                                - torch.outer(unit, unit)) / norm
        start += n
    product = operator(model, inputs, targets, weight_decay=wd, convention="norm_sum")
    v = torch.randn(product.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    result = product(v)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, expected @ v, rtol=1e-9, atol=1e-12)


def test_slq_quadrature_reproduces_the_moments_of_its_start_vector():
    torch.manual_seed(0)
    a = torch.randn(40, 40, dtype=torch.float64)
    matrix = (a + a.T) / 2
    calls = []

    def product(vector):
        calls.append(vector)
        return matrix @ vector

    nodes, weights = hessian.quadrature(hessian.lanczos(product, 40, tol=0, max_steps=6, dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(0)))
    start = calls[0]
    assert weights.sum().item() == pytest.approx(1, abs=1e-12)
    for power in range(2 * 6):  # Gauss quadrature with 6 nodes is exact up to degree 11
        exact = start @ torch.linalg.matrix_power(matrix, power) @ start
        assert (weights * nodes ** power).sum().item() == pytest.approx(exact.item(), rel=1e-9, abs=1e-9)


def test_slq_density_integrates_to_one_and_matches_the_exact_spectrum_in_its_moments():
    model, inputs = mlp()
    targets = targets_for(inputs)
    loss, w = flat_loss(model, inputs, targets)
    exact = torch.linalg.eigvalsh(dense_hessian(loss, w))
    runs = [hessian.eigenvalues(model, inputs, targets, tol=0, max_steps=8, weight_decay=0, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(seed)) for seed in range(60)]
    sigma = 0.01
    grid = torch.linspace(exact[0] - 1, exact[-1] + 1, 20001, dtype=torch.float64)
    density = hessian.spectral_density([r.nodes for r in runs], [r.weights for r in runs], grid, sigma=sigma)
    assert torch.trapezoid(density, grid).item() == pytest.approx(1, abs=1e-6)
    mean = torch.trapezoid(grid * density, grid).item()
    second = torch.trapezoid(grid ** 2 * density, grid).item()
    # Hutchinson: E[v^T H v] = tr(H) / n; the Gaussians add sigma^2 to the second moment
    spread = exact.abs().max().item()
    assert mean == pytest.approx(exact.mean().item(), abs=0.05 * spread)
    assert second - sigma ** 2 == pytest.approx((exact ** 2).mean().item(), rel=0.1)
    # and the density puts its mass where the exact histogram does
    inside = (grid >= exact[0] - 3 * sigma) & (grid <= exact[-1] + 3 * sigma)
    assert torch.trapezoid(density * inside, grid).item() > 0.999


def test_steps_fewer_than_k_is_a_clear_error():
    model, inputs = mlp()
    with pytest.raises(ValueError, match="max_steps >= k"):
        hessian.eigenvalues(model, inputs, targets_for(inputs), k=5, max_steps=3)


# A model and data built the same way in this process and in torchrun's workers.
SCRIPT = """
import sys, torch, torch.nn as nn
from helpers import data, hessian
from helpers.recipes import STRONG
from helpers.sweep import Table
torch.manual_seed(0)
model = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(48, 6), nn.Tanh(), nn.Linear(6, 10))
dataset = data.synthetic(32, "cifar10")
def run(folder, **kw):
    return hessian.spectra(model, dataset, Table(folder, ("weight_decay", "batch")), weight_decays=(0.0, 0.05),
                           batch_size=4, fraction=0.25, k=2, max_steps=6, mixup_fn=STRONG.mixup_fn(10),
                           dtype=torch.float64, progress=False, **kw)
if __name__ == "__main__":
    run(sys.argv[1])
"""


def same_tables(a, b):
    assert list(a["batch"]) == list(b["batch"]) == [0, 1] * 2 and list(a["weight_decay"]) == [0.0] * 2 + [0.05] * 2
    for column in a.columns.drop("converged"):
        assert np.allclose(np.stack(a[column]), np.stack(b[column]), rtol=1e-12, atol=1e-15), column
    assert list(a["converged"]) == list(b["converged"])


def test_resume_and_torchrun_give_the_same_eigenvalues_as_one_run(tmp_path, monkeypatch):
    script = tmp_path / "spectra.py"
    script.write_text(SCRIPT)
    namespace = {}
    exec(compile(SCRIPT, str(script), "exec"), namespace)
    uninterrupted = namespace["run"](tmp_path / "one")
    assert {"magnitude", "bounds", "top", "bottom", "steps", "max_bound", "converged"} <= set(uninterrupted)
    assert uninterrupted["converged"].dtype == bool and (uninterrupted["steps"] <= 6).all()
    assert all(len(values) == 2 for values in uninterrupted["magnitude"])

    calls, real = [], hessian.losses_eigenvalues

    def crashing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second batch: one Lanczos run for both losses of a batch
        return real(*args, **kw)

    monkeypatch.setattr(hessian, "losses_eigenvalues", crashing)
    with pytest.raises(KeyboardInterrupt):
        namespace["run"](tmp_path / "resumed")
    monkeypatch.setattr(hessian, "losses_eigenvalues", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    resumed = namespace["run"](tmp_path / "resumed")
    assert len(calls) == 2 + 1  # the finished batch (both its losses) was not redone
    same_tables(uninterrupted, resumed)

    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
                          str(tmp_path / "torchrun")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list((tmp_path / "torchrun").glob("*.rows"))) == 2  # one file per rank
    same_tables(uninterrupted, namespace["run"](tmp_path / "torchrun"))  # read back: nothing left to compute


def test_augmented_batches_are_mixed_and_reproducible():
    dataset = data.synthetic(16, "cifar10")
    batches = hessian.batch_indices(dataset, batch_size=4, fraction=0.5, seed=0)
    assert len(batches) == 2 and len({i for b in batches for i in b}) == 8
    inputs, targets = hessian.augmented_batch(dataset, batches[0], mixup_fn=STRONG.mixup_fn(10), seed=5)
    again = hessian.augmented_batch(dataset, batches[0], mixup_fn=STRONG.mixup_fn(10), seed=5)
    assert targets.shape == (4, 10) and torch.equal(inputs, again[0]) and torch.equal(targets, again[1])
    assert targets.sum(1).allclose(torch.ones(4)) and (targets.max(1).values < 1).all()  # soft, smoothed
    with pytest.raises(ValueError, match="examples"):
        hessian.batch_indices(dataset, batch_size=32, fraction=1.0)


ROOT = Path(__file__).resolve().parents[1]
BASELINES = {"pyhessian": "pyhessian", "eigenthings": "hessian_eigenthings",
             "eigenthings_certified": "hessian_eigenthings"}  # the benchmark's baselines and their modules
BLOCKED = ("import runpy, sys; sys.modules.update(pyhessian=None, hessian_eigenthings=None); "  # imports then fail
           "sys.path.insert(0, 'benchmarks'); sys.argv = ['hessian.py', '--smoke']; "
           "runpy.run_path('benchmarks/hessian.py', run_name='__main__')")


@pytest.mark.parametrize("baselines", ["as installed", "blocked"])
def test_benchmark_smoke(baselines):
    command = ["benchmarks/hessian.py", "--smoke"] if baselines == "as installed" else ["-c", BLOCKED]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, *command], cwd=ROOT, env=environment, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    last = run.stdout.strip().splitlines()[-len(BASELINES):]
    for line, (baseline, module) in zip(last, BASELINES.items()):
        installed = baselines == "as installed" and importlib.util.find_spec(module) is not None
        said = r">?\d+\.\dx" if installed else r"missing \(pip install "  # a ratio, never its value
        assert re.match(rf"ratio {baseline} / ours on the figure's workload: {said}", line), run.stdout[-3000:]
