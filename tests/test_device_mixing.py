"""Device mixing, caught without a GPU. Masks live on the CPU wherever the model is (they are made
and saved there); on CUDA, torch refuses an op between a CPU tensor and a model's tensors. The
`meta` device refuses them the same way and needs no GPU, so each test here runs one function
that crosses devices with the model on meta beside CPU masks. Nothing data-dependent (.item(),
.tolist(), bool() of a tensor) can run on meta: test the functions that cross, not whole stages."""

import pytest
import torch

from lottery import weight_agnostic
from lottery.models import catalog
from tests.test_structured import VGG, random_channel_mask, trained_like


def on_meta(model, mask=None, seed=0):
    """`model` moved to the meta device, and a mask of it on the CPU: `mask` (build it from the
    model before the move: pruning reads weights), else one that keeps about half of every
    prunable weight."""
    if mask is None:
        generator = torch.Generator().manual_seed(seed)
        params = dict(model.named_parameters())
        mask = {name: torch.rand(params[name].shape, generator=generator) < 0.5 for name in model.prunable_kinds()}
    return model.to("meta"), mask


def lenet_with_a_weight_mask():
    return on_meta(catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0, width=0.1))


def vgg_with_a_channel_mask():
    model = trained_like(VGG)
    return on_meta(model, random_channel_mask(model))


@pytest.mark.parametrize("mode", ["init", "none"])
@pytest.mark.parametrize("build", [lenet_with_a_weight_mask, vgg_with_a_channel_mask], ids=["lenet", "vgg11"])
def test_the_weight_agnostic_network_is_built_on_the_models_device_from_cpu_masks(build, mode):
    model, mask = build()
    factors = weight_agnostic.signs(model, mask, mode)  # θ0's signs times the round's mask
    assert {factor.device.type for factor in factors.values()} == {"meta"}
    shared = weight_agnostic.shared_weight_model(model, factors, 0.5)
    logits = shared.eval()(torch.empty(2, *model.input_shape, device="meta"))
    assert logits.shape == (2, 10) and logits.device.type == "meta"
    assert {keep.device.type for keep in mask.values()} == {"cpu"}  # the masks stay where they are saved from
