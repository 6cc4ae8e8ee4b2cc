"""What the benchmark scripts share (run as `python benchmarks/NAME.py`, so this imports as `timing`): timing, the
device options, `--smoke`, the model and images of a specification, and the ratio lines they end with.

Every script ends by printing one line per ratio it measured (`print_ratio`), which `benchmarks/all.py` collects into
one table.
"""
import time
from collections.abc import Callable

import torch

import helpers
from helpers import data, models


def synchronize(device):
    """Wait for queued GPU work, so that a timer measures the work and not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock(device) -> Callable[[], float]:
    """The clock a ratio is read on: on a CPU with one torch thread, the CPU time of the calling thread, which does
    all the work and which other processes on a shared machine disturb far less than the wall clock (they only slow
    its memory); else the wall clock (a GPU's work, or several threads)."""
    if torch.device(device).type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def timed(function, device, *args, steady: bool = False) -> float:
    """Seconds that `function(*args)` takes on `device`, synchronised before and after: wall-clock seconds, or with
    `steady` the seconds of `clock(device)`."""
    now = clock(device) if steady else time.perf_counter
    synchronize(device)
    start = now()
    function(*args)
    synchronize(device)
    return now() - start


def add_device_options(parser):
    """--device and --threads, the options every benchmark takes."""
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads on the CPU; one is steadiest on a busy machine (0: torch's default)")
    parser.add_argument("--device", default=None, help="default: CUDA, then MPS, then CPU")


def device_of(args):
    """The device of `--device` (default: CUDA, then MPS, then CPU), with `--threads` applied on the CPU."""
    device = torch.device(args.device) if args.device else helpers.pick_device()
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    return device


def parse_args(parser, **smoke):
    """The parsed options, with `--smoke` added: it replaces the options named in `smoke` by their values, the
    smallest models and sizes that still print every line, so that a test runs the benchmark in seconds."""
    options = [f"--{name.replace('_', '-')} " + (" ".join(value) if isinstance(value, list) else str(value))
               for name, value in smoke.items()]
    parser.add_argument("--smoke", action="store_true",
                        help="a run of seconds that only checks the benchmark works: " + " ".join(options))
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(smoke)
    return args


def model_of(text, device):
    """(the model a specification names (`helpers.models`), with fresh seeded weights, in eval mode on `device`; its
    sized spec): the one place that reads a name."""
    torch.manual_seed(0)
    spec = models.resolve(text)
    model = spec.build().eval().to(device)
    return model, spec.sized(model)


def synthetic_batch(spec, n, device, *, seed=0):
    """`n` synthetic (images, labels) of the input size and normalisation of a sized `spec` (from `model_of`), on
    `device`."""
    images, labels = data.synthetic(n, spec=spec, seed=seed).tensors
    return images.to(device), labels.to(device)


def print_ratio(name, value, goal=None):
    """One of the lines a benchmark ends with, `ratio NAME: VALUE`, then its goal where it states one, e.g. "<= 1.1":
    `ratio resnet_50 spectra / forward: 1.032 (goal <= 1.1)` (the format of `RATIO_LINE` in `benchmarks/all.py`)."""
    print(f"ratio {name}: {value:.3f}" + (f" (goal {goal})" if goal else ""), flush=True)
