from torch import nn

from lottery.models.registry import register
from lottery.models.base import PrunableModel, scaled


@register("lenet_300_100")
class LeNet300100(PrunableModel):
    """Fully-connected 300-100 network of the LTH paper's MNIST experiments; `width` scales both
    hidden layers (2.0: 600-200, the wider random networks of the supermask experiments)."""

    scalable = True

    def __init__(self, input_shape, num_classes, width=1.0):
        super().__init__()
        channels, height, image_width = input_shape
        hidden = (scaled(300, width), scaled(100, width))
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * image_width, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x):
        return self.layers(x)
