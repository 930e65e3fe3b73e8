from torch import nn

from lottery.models import register
from lottery.models.base import PrunableModel


@register("lenet_300_100")
class LeNet300100(PrunableModel):
    """Fully-connected 300-100 network of the LTH paper's MNIST experiments."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        channels, height, width = input_shape
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x):
        return self.layers(x)
