"""CIFAR ResNets (He et al. 2016): ResNet-20 (which the LTH paper calls Resnet-18) and ResNet-56."""

import torch
from torch import nn

from lottery.models.registry import register
from lottery.models.base import PooledConvNet, scaled


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


class CifarResNet(PooledConvNet):
    """A 3x3 conv, three stages of basic blocks at widths 16, 32 and 64 (the second and third
    halve the resolution), global average pooling and a single Linear output layer. Depth is
    6 x blocks_per_stage + 2; `width` scales every stage.

    The LTH paper prunes it globally, 20% per round: run it with `prune.scope: global`.
    `paper_conv_rate` is the same 20% for layerwise runs. The output layer is left
    alone (LTH Figure 2: FC 0%; open_lth ignores `fc.weight`) unless prune.output_rate says otherwise.
    """

    paper_conv_rate = 0.2
    paper_output_factor = 0.0
    paper_init = "kaiming_normal"  # open_lth's: He et al.'s init for ReLU nets, fan-in mode
    scalable = True
    widths = (16, 32, 64)
    blocks_per_stage = 3

    def __init__(self, input_shape, num_classes, width=1.0):
        super().__init__()
        widths = [scaled(w, width) for w in self.widths]
        channels = widths[0]
        layers = [nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        for stage, stage_width in enumerate(widths):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, stage_width, stride))
                channels = stage_width
        self.set_layers(layers, channels, num_classes)


@register("resnet20")
class ResNet20(CifarResNet):
    blocks_per_stage = 3


@register("resnet56")
class ResNet56(CifarResNet):
    blocks_per_stage = 9
