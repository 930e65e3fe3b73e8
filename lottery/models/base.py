"""What every model offers the pruning code: which weights are prunable and of what kind."""

import torch
from torch import nn


class PrunableModel(nn.Module):
    """A classifier whose Linear and Conv2d weights are prunable; biases and BN never are."""

    # Per-round rate for conv layers when params leave prune.conv_rate null (LTH, Figure 2).
    paper_conv_rate = 0.1
    # Whether the constructor takes a `width` multiplier of its channels (params model.width).
    scalable = False

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

    def reset_parameters(self, generator):
        """Gaussian Glorot weights and zero biases, as in the LTH paper, drawn from `generator`."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
                std = (2.0 / (fan_in + fan_out)) ** 0.5
                with torch.no_grad():
                    module.weight.normal_(0.0, std, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
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
