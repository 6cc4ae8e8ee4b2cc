"""Wall-clock timing shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this imports as `timing`)."""
import time

import torch


def synchronize(device):
    """Wait for queued GPU work, so that a timer measures the work and not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device, *args):
    """Seconds that `function(*args)` takes on `device`, synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    function(*args)
    synchronize(device)
    return time.perf_counter() - start
