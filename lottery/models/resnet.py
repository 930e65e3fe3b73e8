"""ResNet-20 for CIFAR-10 (He et al. 2016), which the LTH paper calls Resnet-18."""

import torch
from torch import nn

from lottery.models import register
from lottery.models.base import PrunableModel


class BasicBlock(nn.Module):
    """relu(branch(x) + shortcut(x)), the branch being two 3x3 conv + BatchNorm layers."""

    def __init__(self, channels_in, channels_out, stride):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(),
            nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels_out),
        )
        # x itself where the branch keeps its shape; where it does not, a 1x1 conv + BatchNorm
        # projection that matches the branch's channels and stride.
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x):
        return torch.relu(self.branch(x) + self.shortcut(x))


@register("resnet20")
class ResNet20(PrunableModel):
    """A 3x3 conv, three stages of three basic blocks at widths 16, 32 and 64 (the second and third
    halve the resolution), global average pooling and a single Linear output layer.

    The LTH paper prunes it globally, 20% per round: run it with `prune.scope: global`.
    `paper_conv_rate` is the same 20% for layerwise runs.
    """

    paper_conv_rate = 0.2
    widths = (16, 32, 64)
    blocks_per_stage = 3

    def __init__(self, input_shape, num_classes):
        super().__init__()
        channels = self.widths[0]
        layers = [nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
