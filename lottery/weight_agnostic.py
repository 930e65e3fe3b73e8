"""Weight-agnostic evaluation (Gaier & Ha 2019): how well a mask classifies when every kept weight
is replaced by one shared value w, so only the mask's structure (and, with signs 'init', the signs
of θ0) carries the skill.

A kept weight becomes w (signs 'none', WANN's networks) or w·sign(θ0) (signs 'init'); a pruned one
stays 0. Biases take no part (they are set to 0), and BatchNorm layers normalise with each
evaluation batch's own statistics with γ = 1 and β = 0, since their trained statistics and scales
belong to other weights.

No per-layer scale is offered because none could change a prediction: with zero biases a ReLU
network is positively homogeneous in each layer's weights, so scaling a layer by c > 0 scales the
logits by c. For the same reason every w > 0 gives the predictions of w = 1 and every w < 0 those
of w = -1: over WANN's values the mean accuracy is the mean of the two sign classes, and the best
value is the better of them. That holds for every kind of mask (ticket, control, supermask).
"""

import copy

import torch
from torch import nn

from lottery import training

# The shared weights of WANN's evaluation.
WANN_VALUES = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)


def signs(model, mask, mode):
    """{prunable weight: the factor w multiplies}, on the device of `model`'s weights: the sign of
    each weight (mode 'init'), or 1 (mode 'none'); 0 where the mask prunes. A channel mask's
    entries for biases and BatchNorm parameters give no factor: those take no shared weight."""
    params = dict(model.named_parameters())
    factors = {}
    for name in model.prunable_kinds():
        weight = params[name].detach()
        keep = mask[name].to(weight.device, weight.dtype)  # masks stay on the CPU, wherever the model is
        factors[name] = weight.sign() * keep if mode == "init" else keep
    return factors


def shared_weight_model(model, factors, value):
    """A copy of `model` whose prunable weights are `value`·factors, biases 0, and BatchNorm
    normalising with batch statistics (γ = 1, β = 0)."""
    shared = copy.deepcopy(model)
    params = dict(shared.named_parameters())
    with torch.no_grad():
        for name, parameter in params.items():
            if name in factors:
                parameter.copy_(value * factors[name].to(parameter.device))
            elif name.endswith("bias"):
                parameter.zero_()
        for module in shared.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.track_running_stats = False
                module.running_mean = module.running_var = None
    return shared


def evaluate(model, mask, split, values, mode, signs_from=None):
    """Accuracy on `split` per shared weight in `values`, their mean, and the best value (the
    first of equals). `signs_from`: the model whose weights give the signs (θ0; default `model`)."""
    factors = signs(signs_from or model, mask, mode)
    accuracy = {}
    for value in values:
        _, accuracy[value] = training.evaluate(shared_weight_model(model, factors, value), split)
    best = max(values, key=lambda value: accuracy[value])
    return {
        "weight_agnostic_accuracy": {f"w{value:g}": accuracy[value] for value in values},
        "weight_agnostic_mean_accuracy": sum(accuracy.values()) / len(values),
        "weight_agnostic_best_accuracy": accuracy[best],
        "weight_agnostic_best_value": best,
    }
