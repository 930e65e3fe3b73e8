"""Masks: a dict of 0/1 tensors keyed by parameter name, validated against the model on load."""

import hashlib

import torch

from lottery.io import atomic_path


class MaskError(ValueError):
    """A mask that does not fit the model it is applied to."""


def ones(model):
    """The dense mask: every prunable weight kept."""
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in model.prunable_kinds()}


def validate(mask, model):
    params = dict(model.named_parameters())
    expected = set(model.prunable_kinds())
    if set(mask) != expected:
        raise MaskError(f"mask keys {sorted(mask)} are not the model's prunable weights {sorted(expected)}")
    for name, keep in mask.items():
        if keep.shape != params[name].shape:
            raise MaskError(f"mask[{name!r}] has shape {tuple(keep.shape)}, the weight {tuple(params[name].shape)}")
        if keep.dtype != torch.bool:
            raise MaskError(f"mask[{name!r}] has dtype {keep.dtype}, expected torch.bool")
    return mask


def save(mask, path):
    with atomic_path(path) as tmp:
        torch.save({name: keep.cpu() for name, keep in mask.items()}, tmp)


def load(path, model):
    return validate(torch.load(path, weights_only=True, map_location="cpu"), model)


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


def weights_remaining(mask):
    """Fraction of prunable weights kept, over all layers."""
    kept = sum(int(keep.sum()) for keep in mask.values())
    return kept / sum(keep.numel() for keep in mask.values())


def sparsity_report(mask, kinds):
    """Per layer and in total: weights, weights kept and the fraction remaining."""
    layers = {
        name: {
            "kind": kinds[name],
            "weights": keep.numel(),
            "kept": int(keep.sum()),
            "weights_remaining": int(keep.sum()) / keep.numel(),
        }
        for name, keep in mask.items()
    }
    total = sum(layer["weights"] for layer in layers.values())
    kept = sum(layer["kept"] for layer in layers.values())
    return {"layers": layers, "weights": total, "kept": kept, "weights_remaining": kept / total}
