"""What every model offers the pruning code: which weights are prunable and of what kind, and
how its initial weights θ0 are drawn (params `model.init`)."""

import torch
from torch import nn

# The weight inits a model can be built with. Biases start at zero and BatchNorm at γ = 1, β = 0
# in every one of them.
INITS = ("glorot", "kaiming_normal", "signed_kaiming_constant")


def scaled(size, width):
    """A layer's channels or units at `width`, never below one."""
    return max(1, round(size * width))


def batchnorm_scales(model):
    """The γ of every BatchNorm layer."""
    return [module.weight for module in model.modules() if isinstance(module, nn.BatchNorm2d)]


@torch.no_grad()
def draw_layer(layer, generator, init, fans=None):
    """A Linear or Conv2d layer's weights drawn by `init` (PrunableModel.reset_parameters) from
    `generator`, with its own (fan_in, fan_out) unless `fans` gives others; its bias zeroed."""
    fan_in, fan_out = fans or nn.init._calculate_fan_in_and_fan_out(layer.weight)
    variance = 2.0 / (fan_in + fan_out) if init == "glorot" else 2.0 / fan_in
    layer.weight.normal_(0.0, variance**0.5, generator=generator)
    if init == "signed_kaiming_constant":
        layer.weight.copy_(layer.weight.sign() * variance**0.5)
    if layer.bias is not None:
        layer.bias.zero_()


class PrunableModel(nn.Module):
    """A classifier whose Linear and Conv2d weights are prunable; biases and BN never are."""

    # Per-round rate for conv layers when params leave prune.conv_rate null (LTH, Figure 2).
    paper_conv_rate = 0.1
    # The output layer's rate as a fraction of prune.rate when prune.output_rate is null: LTH
    # prunes LeNet's and Conv-2/4/6's output layer at half the rate.
    paper_output_factor = 0.5
    # Whether the constructor takes a `width` multiplier of its channels (params model.width).
    scalable = False
    # The init its papers draw θ0 from (params `model.init: paper`): Glorot, as LTH does for
    # LeNet and Conv-2/4/6.
    paper_init = "glorot"

    def prunable_kinds(self):
        """Parameter name -> 'conv', 'fc' or 'output' (the last Linear layer)."""
        kinds = {}
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                kinds[f"{name}.weight"] = "conv"
            elif isinstance(module, nn.Linear):
                kinds[f"{name}.weight"] = "fc"
        last_fc = [name for name, kind in kinds.items() if kind == "fc"][-1]
        kinds[last_fc] = "output"
        return kinds

    def reset_parameters(self, generator, init="glorot", fans=None):
        """Weights drawn from `generator`, zero biases. `init`: glorot, Gaussian with variance
        2 / (fan_in + fan_out) (the LTH paper's); kaiming_normal, Gaussian with variance 2 / fan_in
        (He et al.); signed_kaiming_constant, every weight ±√(2 / fan_in) with the sign of a
        kaiming_normal draw (Ramanujan et al.'s supermask init). `fans`: {weight name: (fan_in,
        fan_out)} to use instead of the layer's own (a narrower architecture's, lottery.channels)."""
        fans = fans or {}
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                draw_layer(module, generator, init, fans.get(f"{name}.weight"))
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()


class PooledConvNet(PrunableModel):
    """Convolutional `features`, then global average pooling and a single Linear output layer,
    which fits any input size (VGG and the CIFAR ResNets)."""

    def set_layers(self, features, channels, num_classes):
        """`features`: the conv layers in order; `channels`: what the last of them puts out."""
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
