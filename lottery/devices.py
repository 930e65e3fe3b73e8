"""Where and how a stage computes: params `train.device`, `train.precision`, `train.tf32` and
`train.deterministic` turned into a torch device and the process's numeric settings."""

import contextlib
import os

import torch

from lottery import distributed

# cuBLAS repeats its results only with a fixed workspace (NVIDIA's cuBLAS docs, "Results
# reproducibility"); it reads this when its first handle is made.
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


def device_for(name):
    """`auto`: CUDA when torch finds a device, else the CPU; `cpu` and `cuda` as named. Under
    torchrun a CUDA process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.launched():
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


def prepare(train_hp):
    """The device of `train_hp`, with this process's TF32 and determinism flags set from it.

    TF32 off is torch's float32 matmul and convolution, bit for bit what the CPU computes up to
    rounding order; on makes Ampere and later GPUs' matmuls several times faster at a 10-bit
    mantissa. Deterministic: cuDNN picks only deterministic kernels, no autotuning, and torch
    warns (rather than stops) where an op has no deterministic version."""
    device = device_for(train_hp.device)
    torch.backends.cuda.matmul.allow_tf32 = train_hp.tf32
    torch.backends.cudnn.allow_tf32 = train_hp.tf32
    torch.backends.cudnn.benchmark = not train_hp.deterministic
    torch.backends.cudnn.deterministic = train_hp.deterministic
    if train_hp.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(train_hp.deterministic, warn_only=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def autocast(train_hp, device):
    """The forward passes' precision: bfloat16 autocast (matmuls and convolutions in bf16, the
    rest in float32) or plain float32."""
    if train_hp.precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
