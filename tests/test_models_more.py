"""The CIFAR models of the LTH paper: VGG-19 and ResNet-20."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery import validation
from lottery.models import catalog
from lottery.models.resnet import BasicBlock
from tests.test_pruning import train_like

CONV_LAYERS = {"vgg19": 16, "resnet20": 21}  # ResNet-20: 19 3x3 and two 1x1 projections


@pytest.mark.parametrize("name", CONV_LAYERS)
@pytest.mark.parametrize("input_shape", [(3, 32, 32), (1, 28, 28)])
def test_one_logit_per_class_for_cifar_and_mnist_inputs(name, input_shape):
    model = catalog.build(name, input_shape, 10, seed=0)
    assert model(torch.randn(2, *input_shape)).shape == (2, 10)


@pytest.mark.parametrize("name, convs", CONV_LAYERS.items())
def test_prunable_weights_are_every_conv_layer_and_the_output_layer(name, convs):
    model = catalog.build(name, (3, 32, 32), 10, seed=0)
    kinds = model.prunable_kinds()
    assert list(kinds.values()) == ["conv"] * convs + ["output"]
    batchnorm = {
        f"{module_name}.{param}"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d)
        for param in ("weight", "bias")
    }
    assert batchnorm and not batchnorm & set(kinds)
    assert not any(name.endswith("bias") for name in kinds)


@pytest.mark.parametrize("name", CONV_LAYERS)
def test_same_seed_same_init_and_batchnorm_starts_at_one_and_zero(name):
    first, again, other = (catalog.build(name, (3, 32, 32), 10, seed=seed) for seed in (4, 4, 5))
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in first.prunable_kinds())
    for module in first.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert bool((module.weight == 1).all()) and bool((module.bias == 0).all())


@pytest.mark.parametrize(
    "name, expected",
    [("vgg11", "kaiming_normal"), ("resnet20", "kaiming_normal"), ("conv2", "glorot"), ("lenet_300_100", "glorot")],
)
def test_the_paper_init_is_kaiming_for_vgg_and_resnet_and_glorot_for_the_lth_nets(name, expected):
    from lottery import checkpoints
    from lottery.steps.common import model_spec
    from tests.conftest import default_params, with_overrides

    hp = validation.from_dict(with_overrides(default_params(), {"model.name": name, "model.init": "paper"}))
    assert catalog.weights_init(hp.model.name, hp.model.init) == expected
    spec = model_spec(hp)  # what the init stage saves θ0 with
    assert spec.get("init", "glorot") == expected
    model = checkpoints.build(spec, seed=hp.seed)
    weight = max((p for n, p in model.named_parameters() if n in model.prunable_kinds()), key=torch.numel)
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    variance = 2 / fan_in if expected == "kaiming_normal" else 2 / (fan_in + fan_out)
    assert weight.detach().std().item() == pytest.approx(variance**0.5, rel=0.05)


def test_vgg19_follows_the_lth_plan_with_batchnorm_after_every_conv():
    model = catalog.build("vgg19", (3, 32, 32), 10, seed=0)
    layers = list(model.features)
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]
    assert [layers[i].out_channels for i in convs] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert all(isinstance(layers[i + 1], nn.BatchNorm2d) for i in convs)
    assert sum(isinstance(layer, nn.MaxPool2d) for layer in layers) == 4


def resnet20_blocks():
    model = catalog.build("resnet20", (3, 32, 32), 10, seed=0)
    return [module for module in model.modules() if isinstance(module, BasicBlock)]


def test_resnet20_projects_the_shortcut_exactly_where_the_shape_changes():
    projections = {
        index: (block.shortcut[0].in_channels, block.shortcut[0].out_channels, block.shortcut[0].stride)
        for index, block in enumerate(resnet20_blocks())
        if not isinstance(block.shortcut, nn.Identity)
    }
    assert projections == {3: (16, 32, (2, 2)), 6: (32, 64, (2, 2))}


def conv_bn(x, conv, bn):
    x = F.conv2d(x, conv.weight, stride=conv.stride, padding=conv.padding)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


@pytest.mark.parametrize("index", [1, 3])  # an identity shortcut, then a projection
def test_resnet20_block_is_relu_of_its_branch_plus_its_shortcut(index):
    block = resnet20_blocks()[index].eval()
    train_like(block, seed=index)
    with torch.no_grad():
        for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    conv1, bn1, _, conv2, bn2 = block.branch
    x = torch.randn(2, 16, 8, 8)
    shortcut = x if isinstance(block.shortcut, nn.Identity) else conv_bn(x, *block.shortcut)
    by_hand = F.relu(conv_bn(F.relu(conv_bn(x, conv1, bn1)), conv2, bn2) + shortcut)
    assert torch.allclose(block(x), by_hand, atol=1e-5)
