"""Weight-agnostic evaluation with channel masks: only the prunable weights take the shared weight
w; every bias is 0 and BatchNorm is γ = 1, β = 0 (Gaier & Ha), though a channel mask also covers
biases and BatchNorm parameters. Models with random, non-zero biases (as if trained), so a bias
that took w or w·sign(bias) would show."""

import copy

import pytest
import torch
from torch import nn

from lottery import channels, data, training, validation, weight_agnostic
from tests.conftest import default_params, with_overrides
from tests.test_structured import VGG, random_channel_mask, trained_like

LENET = dict(name="lenet_300_100", input_shape=(1, 28, 28), num_classes=10, seed=0, width=0.1)
VALUES = (-1.0, 0.5)


@pytest.fixture(scope="module")
def test_split(mnist_root):
    hp = validation.from_dict(with_overrides(default_params(), {"data.train_subset": 100, "data.test_subset": 300}))
    return data.load(hp.data, mnist_root).test


def check_follows_the_rule(shared, model, mask, mode, value):
    """Each parameter of `shared` as Gaier & Ha's network has it, computed here from `model`."""
    weights, original = model.prunable_kinds(), dict(model.named_parameters())
    norms = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}
    for name, parameter in shared.named_parameters():
        if name in weights:
            factor = original[name].sign() if mode == "init" else 1.0
            assert torch.equal(parameter, value * factor * mask[name]), name
        elif name.endswith("bias"):
            assert not parameter.any(), name
        else:
            assert name in norms and bool((parameter == 1).all()), name


@pytest.mark.parametrize("mode", ["init", "none"])
@pytest.mark.parametrize("spec", [LENET, VGG], ids=["lenet", "vgg11"])
def test_every_evaluated_network_of_a_channel_mask_has_zero_biases_and_identity_batchnorm(spec, mode, test_split, monkeypatch):
    model = trained_like(spec)
    mask = random_channel_mask(model)
    assert channels.is_channel_mask(model, mask) and any(name.endswith("bias") for name in mask)
    assert all(bool(p.ne(0).all()) for name, p in model.named_parameters() if name.endswith("bias"))
    evaluated = []
    evaluate = training.evaluate

    def spy(network, split):  # the real evaluation, with a copy of the network it was given
        result = evaluate(network, split)
        evaluated.append((copy.deepcopy(network), result[1]))
        return result

    monkeypatch.setattr(training, "evaluate", spy)
    found = weight_agnostic.evaluate(model, mask, test_split, list(VALUES), mode)
    assert len(evaluated) == len(VALUES)
    for value, (shared, accuracy) in zip(VALUES, evaluated):
        check_follows_the_rule(shared, model, mask, mode, value)
        assert found["weight_agnostic_accuracy"][f"w{value:g}"] == accuracy
