"""Masks: a dict of bool tensors keyed by parameter name, validated against the model on load.

A mask covers every prunable weight. A channel mask (lottery.channels) also covers the biases and
BatchNorm parameters of the channels it prunes, so a pruned channel outputs exactly zero.
"""

import hashlib

import torch

from lottery.errors import UserError
from lottery.io import load_torch, save_torch


class MaskError(UserError, ValueError):
    """A mask that does not fit the model it is applied to."""


def ones(model):
    """The dense mask: every prunable weight kept. Masks live on the CPU, wherever the model is
    (pruning scores them there, and they are saved from there)."""
    params = dict(model.named_parameters())
    return {name: torch.ones(params[name].shape, dtype=torch.bool) for name in model.prunable_kinds()}


def validate(mask, model):
    params = dict(model.named_parameters())
    missing, unknown = set(model.prunable_kinds()) - set(mask), set(mask) - set(params)
    if missing or unknown:
        raise MaskError(f"mask lacks the prunable weights {sorted(missing)} or names unknown parameters {sorted(unknown)}")
    for name, keep in mask.items():
        if keep.shape != params[name].shape:
            raise MaskError(f"mask[{name!r}] has shape {tuple(keep.shape)}, the weight {tuple(params[name].shape)}")
        if keep.dtype != torch.bool:
            raise MaskError(f"mask[{name!r}] has dtype {keep.dtype}, expected torch.bool")
    return mask


def save(mask, path):
    save_torch(path, {name: keep.cpu() for name, keep in mask.items()})


def load(path, model):
    return validate(load_torch(path), model)


def apply(model, mask):
    """Zero the pruned weights of `model` in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, keep in mask.items():
            params[name].mul_(keep.to(params[name].device))


def digest(mask):
    """sha256 of the mask's names, shapes and bits: equal masks hash equal, however they were saved."""
    hasher = hashlib.sha256()
    for name in sorted(mask):
        keep = mask[name].cpu().contiguous()
        hasher.update(f"{name}:{tuple(keep.shape)}:".encode())
        hasher.update(keep.numpy().tobytes())
    return hasher.hexdigest()


def weights_remaining(mask, kinds):
    """Fraction of the prunable weights (`kinds`: the model's prunable_kinds) kept, over all layers."""
    return sparsity_report(mask, kinds)["weights_remaining"]


def sparsity_report(mask, kinds):
    """Per prunable layer and in total: weights, weights kept and the fraction remaining."""
    layers = {
        name: {
            "kind": kinds[name],
            "weights": mask[name].numel(),
            "kept": int(mask[name].sum()),
            "weights_remaining": int(mask[name].sum()) / mask[name].numel(),
        }
        for name in kinds
    }
    total = sum(layer["weights"] for layer in layers.values())
    kept = sum(layer["kept"] for layer in layers.values())
    return {"layers": layers, "weights": total, "kept": kept, "weights_remaining": kept / total}
