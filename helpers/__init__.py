"""Helpers for the notebooks reproducing "How Do Vision Transformers Work?" (Park & Kim, ICLR 2022)."""
import os

import torch


def pick_device():
    """CUDA (this process's GPU under torchrun), then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
