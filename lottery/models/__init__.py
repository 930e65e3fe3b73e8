"""Model registry: adding a model is one module with a `@register("name")` class."""

import importlib

import torch

from lottery.registry import Registry

REGISTRY = Registry()
register = REGISTRY.register


def build(name, input_shape, num_classes, seed):
    """The named model with its initial weights θ0 drawn from `seed` alone."""
    if name not in REGISTRY:
        raise KeyError(f"model.name = {name!r}: unknown (expected one of {sorted(REGISTRY)})")
    model = REGISTRY[name](tuple(input_shape), num_classes)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


for _module in ("lenet", "conv", "vgg", "resnet"):
    importlib.import_module(f"lottery.models.{_module}")
