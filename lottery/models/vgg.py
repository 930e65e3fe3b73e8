"""CIFAR-style VGG with BatchNorm: 3x3 conv + BN + ReLU layers, then one fc output layer.

Depths 11, 16 and 19 follow Simonyan & Zisserman's configurations A, D and E; `width` scales
every layer's channels, so a narrow VGG fits a CPU benchmark.
"""

from torch import nn

from lottery.models.registry import register
from lottery.models.base import PooledConvNet, scaled

# Output channels of each 3x3 conv layer; "M" is a 2x2 max-pooling.
PLANS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


class VGG(PooledConvNet):
    """Conv + BatchNorm + ReLU layers of the plan, then global average pooling and a single Linear
    output layer (open_lth's cifar_vgg layout). The last pooling of the ImageNet plan is left out:
    averaging what is left (2x2 from 32x32 inputs, 1x1 from 28x28) fits any input size.

    The LTH paper prunes VGG-19 globally, 20% per round: run it with `prune.scope: global`.
    `paper_conv_rate` is the same 20% for layerwise runs. The output layer is left
    alone (LTH Figure 2: FC 0%; open_lth ignores `fc.weight`) unless prune.output_rate says otherwise.
    """

    paper_conv_rate = 0.2
    paper_output_factor = 0.0
    paper_init = "kaiming_normal"  # open_lth's: He et al.'s init for ReLU nets, fan-in mode
    scalable = True
    depth = 19

    def __init__(self, input_shape, num_classes, width=1.0):
        super().__init__()
        channels = input_shape[0]
        layers = []
        for step in PLANS[self.depth]:
            if step == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = scaled(step, width)
            # BatchNorm subtracts each channel's mean, so a conv bias before it would never learn.
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.set_layers(layers, channels, num_classes)


@register("vgg11")
class VGG11(VGG):
    depth = 11


@register("vgg16")
class VGG16(VGG):
    depth = 16


@register("vgg19")
class VGG19(VGG):
    depth = 19
