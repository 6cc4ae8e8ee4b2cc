"""The fixture's official checkpoint format (tests/fixtures/official_checkpoints.json).

`official_state_dict(name)` fills the ORIGINAL key layout with the fixture's recipe, so a test can save it
under the official file name and check that our loader reproduces the original implementation's logits.
"""
import json
import math
from functools import lru_cache
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official_checkpoints.json"


@lru_cache(maxsize=None)
def fixture():
    return json.loads(FIXTURE.read_text())["models"]


def manifest(name):
    return [(key, tuple(shape), getattr(torch, dtype)) for key, shape, dtype in fixture()[name]["manifest"]]


def official_state_dict(name):
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, dtype in manifest(name):
        if not dtype.is_floating_point or key.endswith("attn_mask"):
            value = torch.zeros(shape, dtype=dtype)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=g) + 0.5
        elif len(shape) <= 1:
            value = (1.0 if key.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
        else:
            value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        state[key] = value
    return state


def reference_input():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def reference_logits(name):
    return torch.tensor(fixture()[name]["logits"])
