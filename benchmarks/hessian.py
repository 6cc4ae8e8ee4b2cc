"""The paper's Hessian statistic, the 5 eigenvalues of largest magnitude of one batch's loss: our certified Lanczos
(helpers.hessian) against PyHessian 0.1 (power iteration with deflation, top_n=5) and hessian-eigenthings 1.0.0a5
(Lanczos, which="LM"), on the same models and batch, at EQUAL ACCURACY.

Accuracy is the largest relative error of the five against the exact eigenvalues of the dense float64 Hessian.
Ours runs at its defaults: it stops when the residual bounds certify tol=1e-4. PyHessian is tightened until it
reaches 1e-4 (its tolerance between consecutive Rayleigh quotients, by decades from 1e-3, maxIter=10000), which
only the exact Hessian can tell. hessian-eigenthings' Lanczos takes a fixed number of steps, with full
reorthogonalisation (off by default above 50 steps), and recomputes the forward pass and gradient in every
product. It appears twice: at the fewest steps that the exact Hessian shows to be accurate (which its user cannot
know), and at the fewest steps at which its own flags certify all five, by the same residual criterion as ours
(|beta_m s_m,i| < tol |theta_i|, its tol defaulting to 1e-4): equal certified accuracy. The fewest steps are
found by bisection; the cheapest setting found is timed, or "never" is said. which="LM" gives the paper's
statistic in one run; the two algebraic ends (our top and bottom panels) would take two runs ("LA" and "SA").

Models: a BatchNorm CNN and a timm ViT of about 10k parameters, weights moved away from their initialisation
to a generic point (at timm's init the head's near-uniform softmax makes the top eigenvalues near-degenerate
clusters), and ViT-Ti at CIFAR size (5.4M parameters): no dense Hessian there, so PyHessian and the "accurate"
hessian-eigenthings run at the settings that sufficed on the small ViT, and errors are against our values.
Loss: NLL, no L2 (PyHessian has no penalty), model in eval mode; all three use double-backward products in
float32.

Then the figure's workload, timed whole: `--workload-batches` mini-batches (8), each for NLL and NLL + L2 (squared,
the strong recipe's weight decay, added to each baseline's loss), the top-5 by magnitude of every (batch, loss)
accurate to 1e-4. Ours runs once per batch for both losses (helpers.hessian.losses_eigenvalues); each baseline once
per batch and loss, at the cheapest setting of its list (steps by bisection) that is accurate on EVERY problem, as
one setting serves a figure; "eigenthings_certified" at the fewest steps at which its flags certify every problem.
The reference of each problem is our Lanczos in float64 with the penalty in the loss (not the shift), from another
start, certified to 1e-10. Each method's decisive pass is its time (one pass: PyHessian's takes minutes). The
output ends with one line per baseline: `ratio <baseline> / ours on the figure's workload: X.Xx`. A baseline that
is not installed is said so, in its place and in that line.

    python benchmarks/hessian.py [--device cpu] [--threads 1] [--repeats 5] [--models cnn vit vit_ti] [--batch-size 16]
        [--baselines pyhessian eigenthings eigenthings_certified] [--workload-model vit] [--workload-batches 8]
    python benchmarks/hessian.py --smoke   # seconds: a 300-parameter CNN, 2 batches of 4; checks that it runs
"""
import argparse
import importlib

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer
from torch.func import functional_call

from helpers import hessian, models
from helpers.losses import l2_penalty, nll
from helpers.recipes import STRONG
from timing import add_device_options, device_of, parse_args, timed


def optional(module):
    """The module, or None when its package is not installed (the benchmark then says so)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


PYHESSIAN = optional("pyhessian.hessian")  # the module: the package's attribute of that name is its class
EIGENTHINGS = optional("hessian_eigenthings")
INSTALL = {"pyhessian": ("pyhessian", PYHESSIAN), "eigenthings": ("hessian-eigenthings", EIGENTHINGS),
           "eigenthings_certified": ("hessian-eigenthings", EIGENTHINGS)}  # baseline -> (pip package, module)
GOAL = {"pyhessian": 20, "eigenthings": 2.5, "eigenthings_certified": 2.5}  # issue 21's goals on the workload
ACCURACY = 1e-4  # relative error of the top-5 by magnitude that every method must reach
REFERENCE_TOL = 1e-10  # the workload's references: float64 runs certified this tightly
PYHESSIAN_TOLS = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]  # its default first
BASELINES = ["pyhessian", "eigenthings", "eigenthings_certified"]
EIGENTHINGS_STEPS = [10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200]  # its default (2k) first


def cnn(width=20, classes=10):
    """9.5k parameters with BatchNorm, for 16 x 16 images."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, classes))


def small_vit():
    """11.7k parameters: two timm blocks on 16 x 16 images."""
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, mlp_ratio=2,
                             num_classes=10)


def generic(model, scale=0.3):
    """Every parameter moved by Gaussian noise, as in tests/test_hessian.py: no symmetry of the init left."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


# name -> (description, builder, image size, classes, exact Hessian?)
MODELS = {"tiny": ("tiny BatchNorm CNN (smoke)", lambda: generic(cnn(width=2)), 8, 10, True),
          "cnn": ("BatchNorm CNN", lambda: generic(cnn()), 16, 10, True),
          "vit": ("timm ViT, 2 blocks", lambda: generic(small_vit()), 16, 10, True),
          "vit_ti": ("ViT-Ti (helpers.models)", lambda: models.create("vit_ti"), 32, 100, False)}


def by_magnitude(values):
    values = torch.as_tensor(values, dtype=torch.float64).cpu()
    return values[hessian.by_magnitude(values, len(values))]


def exact_top5(model, inputs, targets):
    """The 5 eigenvalues of largest magnitude of the dense float64 Hessian (reverse over reverse, row by row)."""
    names, shapes = zip(*((name, p.shape) for name, p in model.named_parameters()))
    buffers = {name: b.double() if b.is_floating_point() else b for name, b in model.named_buffers()}

    def loss(w):
        pieces = torch.split(w, [shape.numel() for shape in shapes])
        parameters = {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return nll(functional_call(model, {**parameters, **buffers}, (inputs.double(),)), targets)

    w = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    with hessian.math_attention():
        return by_magnitude(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w)))[:5]


def ours(model, inputs, targets, setting=None):
    spectrum = hessian.eigenvalues(model, inputs, targets, k=5, weight_decay=0,
                                   generator=torch.Generator().manual_seed(1))
    note = f"max bound {spectrum.max_bound:.1e}, {'certified' if spectrum.converged else 'NOT certified'}"
    return spectrum.magnitude, spectrum.steps, note, spectrum.converged


def loss_with(weight_decay, model):
    """NLL + the squared L2 of every parameter of `model`, as a (outputs, targets) criterion: a baseline's loss."""
    if not weight_decay:
        return nll
    return lambda outputs, targets: nll(outputs, targets) + l2_penalty(list(model.parameters()), weight_decay)


def pyhessian_power_iteration(model, inputs, targets, tol, weight_decay=0.0):
    calls, product = [0], PYHESSIAN.hessian_vector_product

    def counted(*args):  # counts its Hessian-vector products
        calls[0] += 1
        return product(*args)

    torch.manual_seed(1)
    PYHESSIAN.hessian_vector_product = counted
    try:
        with hessian.math_attention():
            computer = PYHESSIAN.hessian(model, loss_with(weight_decay, model), data=(inputs, targets),
                                         cuda=inputs.is_cuda)
            values, _ = computer.eigenvalues(maxIter=10_000, tol=tol, top_n=5)
    finally:
        PYHESSIAN.hessian_vector_product = product
        model.zero_grad(set_to_none=True)  # PyHessian leaves graph-carrying .grad behind
    return by_magnitude(values), calls[0], "", None


def eigenthings_lanczos(model, inputs, targets, steps, weight_decay=0.0):
    loss = EIGENTHINGS.supervised_loss(loss_with(weight_decay, model))
    operator = EIGENTHINGS.HessianOperator(model, [(inputs, targets)], loss)
    with hessian.math_attention():
        result = EIGENTHINGS.lanczos(operator, k=5, max_iter=steps, which="LM", reorthogonalize=True, seed=1)
    flags = result.converged.sum().item()
    return by_magnitude(result.eigenvalues), result.iterations, f"flags {flags}/5 converged", flags == 5


def error(values, reference):
    return ((values - reference).abs() / reference.abs()).max().item()


def cheapest(method, settings, accept, device, model, inputs, targets):
    """(setting, seconds, values, HVPs, note, errors tried) of the first of `settings` (cheapest first) whose result
    `accept`s; between two step counts, the fewest steps that do (by bisection), so that the baseline is not charged
    for the coarseness of the list. The run that decided is timed: it is one of the repeats."""

    def attempt(setting):
        results = []
        seconds = timed(lambda: results.append(method(model, inputs, targets, setting)), device)
        tried.append(setting)
        return (seconds, *results[0])

    tried, failed = [], None
    for setting in settings:
        result = attempt(setting)
        if accept(result[1:]):
            if isinstance(setting, int) and failed is not None:
                while setting - failed > 1:
                    middle = (failed + setting) // 2
                    trial = attempt(middle)
                    if accept(trial[1:]):
                        setting, result = middle, trial
                    else:
                        failed = middle
            return (setting, *result[:-1], tried)
        failed = setting
    return (None, *result[:-1], tried)


def row(name, setting, values, products, note, seconds, reference):
    return (f"  {name:<44} {setting:<14} {products:>6} {seconds:>9.3f} s   {error(values, reference):.1e}   {note}\n"
            f"  {'':<44} top-5 {[f'{v:.6g}' for v in values.tolist()]}")


def model_and_batches(name, batch_size, count, device):
    """(description, model in eval mode on `device`, `count` seeded mini-batches of its input size): the one place
    that reads a model name."""
    description, build, size, classes, _ = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device).eval()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch_size, 3, size, size, generator=generator).to(device),
                torch.randint(0, classes, (batch_size,), generator=generator).to(device)) for _ in range(count)]
    return description, model, batches


def compare(name, device, batch_size, repeats, settings, baselines):
    """Print one model's table; return the baselines' settings (for a model with no exact reference)."""
    description, model, [(inputs, targets)] = model_and_batches(name, batch_size, 1, device)
    exact = MODELS[name][4]
    parameters = sum(p.numel() for p in model.parameters())
    print(f"\n{description}: {parameters} parameters, batch {batch_size}, device {device}, best of {repeats}")
    ours_run = cheapest(ours, [None], lambda result: True, device, model, inputs, targets)  # timed, and the reference
    if exact:
        reference = exact_top5(model.cpu(), inputs.cpu(), targets.cpu())
        model.to(device)
        print(f"  exact top-5 by magnitude (dense float64 Hessian): {[f'{v:.6g}' for v in reference.tolist()]}")
    else:
        reference = ours_run[2].cpu().double()
        print(f"  no dense Hessian: errors are against our certified values ({ours_run[4]})")
    print(f"  {'method':<44} {'setting':<14} {'HVPs':>6} {'time':>11}   error     notes")

    def accurate(result):
        return error(result[0], reference) <= ACCURACY

    def self_certified(result):
        return bool(result[3])

    # key: (label, method, settings, accept); the last is ours: hessian-eigenthings flags a Ritz value converged by
    # our criterion (|beta_m s_m,i| < tol |theta_i|, its tol defaults to 1e-4), so its own flags certify as ours do
    runs = {"ours": ("ours (certified Lanczos)", ours, [None], None),
            "pyhessian": ("PyHessian 0.1 (power iteration)", pyhessian_power_iteration, PYHESSIAN_TOLS, accurate),
            "eigenthings": ("hessian-eigenthings, fewest accurate steps", eigenthings_lanczos, EIGENTHINGS_STEPS,
                            accurate),
            "eigenthings_certified": ("hessian-eigenthings, self-certified", eigenthings_lanczos, EIGENTHINGS_STEPS,
                                      self_certified)}
    seconds, chosen = {}, {}
    for key, (label, method, options, accept) in runs.items():
        if key not in baselines and key != "ours":
            continue
        if key != "ours" and INSTALL[key][1] is None:
            print(f"  {label:<44} missing: pip install {INSTALL[key][0]}")
            continue
        if not exact and accept is accurate:
            options = [settings[key]]  # no reference to tighten against
        setting, first, values, products, note, tried = ours_run if key == "ours" else cheapest(
            method, options, accept, device, model, inputs, targets)
        chosen[key] = setting if setting is not None else options[-1]
        seconds[key] = min([first] + [timed(method, device, model, inputs, targets, chosen[key])
                                      for _ in range(repeats - 1)])
        text = {None: "defaults"}.get(setting, f"tol={setting:g}" if key == "pyhessian" else f"steps={setting}")
        print(row(label, text if setting is not None or key == "ours" else "never", values.cpu().double(), products,
                  note, seconds[key], reference))
        if len(tried) > 1:
            print(f"  {'':<44} settings tried: {', '.join(f'{s:g}' for s in tried)}")
    for key in [key for key in seconds if key != "ours"]:
        print(f"  time ratio {runs[key][0] + ' / ours':<52} {seconds[key] / seconds['ours']:.1f}x")
    return chosen


def reference_top5(model, inputs, targets, weight_decay):
    """The top-5 by magnitude of NLL + `weight_decay` x the squared L2: our Lanczos in float64 with the penalty in the
    loss (not a shift), from another start than ours, certified to REFERENCE_TOL."""
    with hessian.evaluating(model), hessian.math_attention():
        operator = hessian.HessianOperator(model, inputs, targets, weight_decay=weight_decay, dtype=torch.float64)
        run = hessian.lanczos(operator, operator.dim, k=5, tol=REFERENCE_TOL, max_steps=operator.dim,
                              generator=torch.Generator().manual_seed(12345), device=inputs.device,
                              dtype=torch.float64)
    spectrum = hessian.Spectrum.of(run, k=5, tol=REFERENCE_TOL)
    if not spectrum.converged:
        raise RuntimeError(f"the reference did not certify {REFERENCE_TOL:g} in {run.steps} steps")
    return spectrum.magnitude


def ours_over_batches(model, batches, weight_decays, setting=None):
    """Ours on the workload: one run per batch for every loss. (values per problem, products, note, certified)."""
    values, products, certified = [], 0, True
    for b, (inputs, targets) in enumerate(batches):
        spectra = hessian.losses_eigenvalues(model, inputs, targets, weight_decays=weight_decays, k=5,
                                             generator=torch.Generator().manual_seed(b))
        values += [spectrum.magnitude for spectrum in spectra]
        products += spectra[0].steps
        certified &= all(spectrum.converged for spectrum in spectra)
    return values, products, "certified" if certified else "NOT certified", certified


def over_batches(method):
    """A baseline on the workload: `method` once per batch and loss, as `cheapest` calls it (the batches passed as
    its `inputs`, with the losses' weight decays as its `targets`)."""
    def run(model, batches, weight_decays, setting):
        results = [method(model, inputs, targets, setting, weight_decay) for inputs, targets in batches
                   for weight_decay in weight_decays]
        flags = [result[3] for result in results]  # None: the method has no convergence flags
        note = "" if None in flags else f"flags certify {sum(flags)}/{len(flags)}"
        return [result[0] for result in results], sum(result[1] for result in results), note, all(flags)
    return run


def workload(name, device, batch_size, count, baselines):
    """Print the figure's workload table; return {method: (seconds, whether its setting was accurate)}."""
    description, model, batches = model_and_batches(name, batch_size, count, device)
    weight_decays = [0.0, STRONG.weight_decay]
    print(f"\nThe figure's workload: {description}, {count} batches of {batch_size}, NLL and NLL + L2 (squared, wd "
          f"{STRONG.weight_decay}):\n  {2 * count} top-5 by magnitude to {ACCURACY:g}, device {device}, one timed pass")
    references = [reference_top5(model, inputs, targets, wd) for inputs, targets in batches for wd in weight_decays]

    def worst(values):
        return max(error(value.cpu().double(), reference) for value, reference in zip(values, references))

    runs = {"ours": ("ours (one certified run per batch)", ours_over_batches, [None], lambda result: True),
            "pyhessian": ("PyHessian 0.1 (power iteration)", over_batches(pyhessian_power_iteration), PYHESSIAN_TOLS,
                          lambda result: worst(result[0]) <= ACCURACY),
            "eigenthings": ("hessian-eigenthings, fewest accurate steps", over_batches(eigenthings_lanczos),
                            EIGENTHINGS_STEPS, lambda result: worst(result[0]) <= ACCURACY),
            "eigenthings_certified": ("hessian-eigenthings, self-certified", over_batches(eigenthings_lanczos),
                                      EIGENTHINGS_STEPS, lambda result: bool(result[3]))}
    print(f"  {'method':<44} {'setting':<14} {'HVPs':>6} {'time':>11}   max error   notes")
    timings = {}
    for key, (label, method, options, accept) in runs.items():
        if key != "ours" and key not in baselines:
            continue
        if key != "ours" and INSTALL[key][1] is None:
            print(f"  {label:<44} missing: pip install {INSTALL[key][0]}")
            continue
        setting, seconds, values, products, note, tried = cheapest(method, options, accept, device, model, batches,
                                                                   weight_decays)
        text = {None: "defaults" if key == "ours" else "never"}.get(
            setting, f"tol={setting:g}" if key == "pyhessian" else f"steps={setting}")
        print(f"  {label:<44} {text:<14} {products:>6} {seconds:>9.3f} s   {worst(values):.1e}     {note}")
        if len(tried) > 1:
            print(f"  {'':<44} settings tried: {', '.join(f'{s:g}' for s in tried)}")
        timings[key] = (seconds, setting is not None)
    return timings


def ratio_lines(timings, baselines):
    """The last lines: one per baseline, its time over ours on the figure's workload, and the issue's goal."""
    ours = timings["ours"][0]
    for key in baselines:
        line = f"ratio {key} / ours on the figure's workload: "
        if INSTALL[key][1] is None:
            print(line + f"missing (pip install {INSTALL[key][0]})")
        elif timings[key][1]:
            print(line + f"{timings[key][0] / ours:.1f}x (goal >= {GOAL[key]})")
        else:  # not accurate on every problem at its tightest setting: its time there is a lower bound
            print(line + f">{timings[key][0] / ours:.1f}x (goal >= {GOAL[key]}) (never accurate to {ACCURACY:g} on "
                  "every problem; its tightest setting)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_options(parser)
    parser.add_argument("--repeats", type=int, default=5, help="the best of this many timed runs is reported")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["cnn", "vit", "vit_ti"])
    parser.add_argument("--batch-size", type=int, default=hessian.BATCH_SIZE)
    parser.add_argument("--baselines", nargs="+", choices=BASELINES, default=BASELINES,
                        help="PyHessian takes about 1,400 products: hours for ViT-Ti on a CPU (some 9 s a product on "
                             "one thread)")
    parser.add_argument("--workload-model", choices=list(MODELS), default="vit",
                        help="the model of the figure's workload (vit_ti: its size, for a GPU)")
    parser.add_argument("--workload-batches", type=int, default=8, help="mini-batches of the figure's workload")
    args = parse_args(parser, models=["tiny"], batch_size=4, repeats=1, workload_model="tiny", workload_batches=2)
    # Where no dense Hessian is computed (ViT-Ti), the baselines run at the settings that sufficed on the small ViT:
    # found in this run when it includes "vit", else these, found so on a CPU.
    device, settings = device_of(args), {"pyhessian": 1e-6, "eigenthings": 16}
    for name in args.models:
        chosen = compare(name, device, args.batch_size, args.repeats, settings, args.baselines)
        if name == "vit":
            settings = chosen  # the settings ViT-Ti runs at
    timings = workload(args.workload_model, device, args.batch_size, args.workload_batches, args.baselines)
    ratio_lines(timings, args.baselines)


if __name__ == "__main__":
    main()
