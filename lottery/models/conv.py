"""Conv-2, Conv-4 and Conv-6 of the LTH paper: VGG-like 3x3 stacks, then fc 256-256-classes."""

from torch import nn

from lottery.models.registry import register
from lottery.models.base import PrunableModel


class ConvNet(PrunableModel):
    # Output channels per conv layer, one inner list per block that ends in 2x2 max-pooling.
    blocks = ()

    def __init__(self, input_shape, num_classes):
        super().__init__()
        channels, height, width = input_shape
        layers = []
        for block in self.blocks:
            for width_out in block:
                layers += [nn.Conv2d(channels, width_out, 3, padding=1), nn.ReLU()]
                channels = width_out
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register("conv2")
class Conv2(ConvNet):
    blocks = ([64, 64],)
    paper_conv_rate = 0.1


@register("conv4")
class Conv4(ConvNet):
    blocks = ([64, 64], [128, 128])
    paper_conv_rate = 0.1


@register("conv6")
class Conv6(ConvNet):
    blocks = ([64, 64], [128, 128], [256, 256])
    paper_conv_rate = 0.15
