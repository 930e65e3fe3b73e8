"""Every model, by name: `build` draws one, `REGISTRY` lists them. Adding a model is one module with
a `@register("name")` class (lottery.models.registry) and its name in the import at the bottom."""

import torch

from lottery.checks import one_of
from lottery.errors import ParamsError
from lottery.models.base import INITS
from lottery.models.registry import REGISTRY


def build(name, input_shape, num_classes, seed, width=1.0, init="glorot", fans=None):
    """The named model with its initial weights θ0 drawn from `seed` alone by `init` (base.INITS;
    `fans`: see PrunableModel.reset_parameters)."""
    if name not in REGISTRY:
        raise KeyError(f"model.name = {name!r}: unknown (expected one of {sorted(REGISTRY)})")
    cls = REGISTRY[name]
    if width != 1.0 and not cls.scalable:
        raise ValueError(f"model.width = {width!r}: {name} has fixed widths (use 1.0)")
    model = cls(tuple(input_shape), num_classes, width=width) if cls.scalable else cls(tuple(input_shape), num_classes)
    # Tracing the channel graph and counting FLOPs need an example input of the right shape.
    model.input_shape = tuple(input_shape)
    model.reset_parameters(torch.Generator().manual_seed(seed), init, fans)
    return model


def weights_init(name, init):
    """The init θ0 of model `name` is drawn with (base.INITS), for params `model.init` = `init`:
    `paper` resolves to the model's own."""
    return REGISTRY[name].paper_init if init == "paper" else init


def check_params(hp):
    """The model section's rules: a registered name, a width the model can scale to, a known init."""
    one_of("model.name", hp.model.name, REGISTRY)
    if hp.model.width != 1.0 and not REGISTRY[hp.model.name].scalable:
        raise ParamsError(f"model.width = {hp.model.width!r}: {hp.model.name} has fixed widths (use 1.0)")
    one_of("model.init", hp.model.init, ("paper", *INITS))


# Each module registers its models on import. Plain imports (not importlib) let lottery.deps see
# that a stage using the registry runs all of them.
from lottery.models import conv, lenet, resnet, vgg  # noqa: E402, F401
