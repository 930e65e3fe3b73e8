"""Frobenius decay (Khodak et al. 2021): train.weight_decay on a factorized layer's factors as
(λ/2)‖UVᵀ‖²_F instead of plain L2, a training-loop plug-in (lottery.callbacks)."""

import torch

from lottery.callbacks import Callback
from lottery.factorize.layers import factorized_layers


def factor_parameters(model):
    """The factors' weights: Frobenius decay replaces plain weight decay on them."""
    return [param for layer in factorized_layers(model) for param in (layer.inner.weight, layer.outer.weight)]


@torch.no_grad()
def add_frobenius_decay_gradient(factorized, strength):
    """Add the gradient of Frobenius decay, (strength/2)·‖UVᵀ‖²_F, to each factor's gradient of the
    `factorized` layers (factorized_layers, found once per training rather than every step):
    strength·U(VᵀV) for U and strength·V(UᵀU) for V. Built from r×r products, it never forms the
    m×n matrix UVᵀ."""
    for layer in factorized:
        u, v = layer.factors()
        layer.outer.weight.grad.add_(layer.outer_weight(u @ (v.T @ v)), alpha=strength)
        layer.inner.weight.grad.add_(layer.inner_weight(v @ (u.T @ u)), alpha=strength)


class FrobeniusDecay(Callback):
    """Frobenius decay at `strength` (train.weight_decay) on `model`'s factorized layers, whose
    factors the optimizer's plain L2 then spares; 0: no decay at all."""

    def __init__(self, model, strength):
        # Found once: the hot path only adds their gradients.
        self.layers, self.strength = (factorized_layers(model) if strength else []), strength
        self.factors = factor_parameters(model) if strength else []

    def exempt_from_weight_decay(self):
        return self.factors

    def after_backward(self):
        add_frobenius_decay_gradient(self.layers, self.strength)
