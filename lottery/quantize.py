"""Fake quantisation for a low-precision Early-Bird search: Conv2d and Linear layers see their
weights and inputs rounded to `bits`-bit integers (symmetric, per tensor) in the forward pass,
while gradients pass straight through to the full-precision weights."""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def fake_quantize(tensor, bits):
    """`tensor` rounded onto 2^bits evenly spaced levels symmetric about 0 (straight-through grads).

    The scale stays a (float32) tensor on the tensor's device: reading it out as a Python number
    would make the host wait for the device at every layer of every step. The kernel computes
    with the same float32 scale either way."""
    top = 2 ** (bits - 1) - 1
    scale = tensor.detach().abs().max().clamp(min=1e-12) / top
    zero_point = torch.zeros((), dtype=torch.int32, device=tensor.device)
    return torch.fake_quantize_per_tensor_affine(tensor, scale.float(), zero_point, -top - 1, top)


@contextlib.contextmanager
def fake_quantized(model, bits):
    """Within the block, every Conv2d and Linear of `model` computes on quantised weights and
    inputs. Parameter names and the state dict are untouched; leaving the block restores
    full-precision forwards."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        layer.forward = _quantized_forward(layer, bits)
    try:
        yield model
    finally:
        for layer in layers:
            del layer.forward


def _quantized_forward(layer, bits):
    if isinstance(layer, nn.Conv2d):
        return lambda x: layer._conv_forward(fake_quantize(x, bits), fake_quantize(layer.weight, bits), layer.bias)
    return lambda x: F.linear(fake_quantize(x, bits), fake_quantize(layer.weight, bits), layer.bias)
