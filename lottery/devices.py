"""Where a stage computes: params `train.device` resolved to a torch device."""

import torch


def device_for(name):
    """`auto`: CUDA when torch finds a device, else the CPU; `cpu` and `cuda` as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
