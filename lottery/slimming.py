"""Network Slimming's sparsity term (Liu et al. 2017), λ·Σ|γ| over the BatchNorm scales, as a
training-loop plug-in (lottery.callbacks). It drives the γ of unneeded channels towards zero so
a global threshold (prune.strategy bn_slimming) can remove them."""

import torch

from lottery.callbacks import Callback
from lottery.models.base import batchnorm_scales


@torch.no_grad()
def add_batchnorm_l1_gradient(scales, strength):
    """Add the subgradient of `strength`·Σ|γ| to each γ's gradient: `strength`·sign(γ), 0 where
    γ = 0. Added after backward rather than built into the loss, it costs no graph, and the
    gradient is the same float32 numbers: autograd too adds (float32 `strength`)·sign(γ) to the
    loss's gradient, in one rounding."""
    for gamma in scales:
        gamma.grad.add_(torch.sign(gamma), alpha=strength)


class BatchNormL1(Callback):
    """The term at `strength` (train.bn_l1) on `model`'s BatchNorm scales; 0: no term at all."""

    def __init__(self, model, strength):
        # Found once: the hot path only adds their gradients.
        self.scales, self.strength = (batchnorm_scales(model) if strength else []), strength

    def after_backward(self):
        add_batchnorm_l1_gradient(self.scales, self.strength)
