"""VGG-19 for CIFAR-10 as the LTH paper trains it: conv + BatchNorm layers, then one fc output layer."""

from torch import nn

from lottery.models import register
from lottery.models.base import PrunableModel

# Output channels of each 3x3 conv layer; "M" is a 2x2 max-pooling.
PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)


@register("vgg19")
class VGG19(PrunableModel):
    """Sixteen 3x3 conv layers, each followed by BatchNorm and ReLU, then global average pooling
    and a single Linear output layer (open_lth's cifar_vgg_19).

    The LTH paper prunes it globally, 20% per round: run it with `prune.scope: global`.
    `paper_conv_rate` is the same 20% for layerwise runs.
    """

    paper_conv_rate = 0.2

    def __init__(self, input_shape, num_classes):
        super().__init__()
        channels = input_shape[0]
        layers = []
        for step in PLAN:
            if step == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            # BatchNorm subtracts each channel's mean, so a conv bias before it would never learn.
            layers += [nn.Conv2d(channels, step, 3, padding=1, bias=False), nn.BatchNorm2d(step), nn.ReLU()]
            channels = step
        self.features = nn.Sequential(*layers)
        # Averaging what is left (2x2 from 32x32 inputs, as open_lth does; 1x1 from 28x28) fits any input size.
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
