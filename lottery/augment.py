"""Training-set augmentation on the device: the random crops and flips the CIFAR papers train with.

Each batch is augmented where it already lies (no per-sample PIL work, no host round trip), from
draws that depend on (seed, iteration) alone: a run resumed at iteration k (late rewinding) sees
the augmented batches a run from 0 saw from k on, and data-parallel ranks each take their rows
of the same draws.
"""

import torch
import torch.nn.functional as F


class CropFlip:
    """Pad an image by `padding` pixels of black, cut a random crop of its own size, and mirror it
    left to right with probability 1/2 (He et al. 2016's CIFAR augmentation, which LTH, Rethinking
    and Network Slimming train with: padding 4)."""

    def __init__(self, padding, black):
        self.padding = padding
        self.black = tuple(black)  # per channel, a black pixel in normalised units
        self._on_device = {}

    def __call__(self, x, seed, iteration, batch_size, rows=slice(None)):
        """`x`: this process's `rows` of an iteration's `batch_size` images (N x C x H x W)."""
        generator, black, images, planes, down, across = self._constants(x)
        generator.manual_seed(seed * 1_000_003 + iteration)
        span = 2 * self.padding + 1
        offsets = torch.randint(span, (batch_size, 2), generator=generator, device=x.device)[rows]
        mirrored = torch.randint(2, (batch_size, 1), generator=generator, device=x.device, dtype=torch.bool)[rows]
        count, _, height, width = x.shape
        padded = F.pad(x - black, (self.padding,) * 4) + black
        columns = torch.where(mirrored, width - 1 - across, across) + offsets[:, 1:]
        lines = down + offsets[:, :1]
        return padded[images, planes, lines.view(count, 1, height, 1), columns.view(count, 1, 1, width)]

    def _constants(self, x):
        # Made once per device and batch shape: the training loop calls this every iteration, and
        # a tensor built from Python values there is a host-to-device copy each time.
        key = (x.device, x.dtype, tuple(x.shape))
        if key not in self._on_device:
            count, channels, height, width = x.shape
            self._on_device[key] = (
                torch.Generator(device=x.device),
                torch.tensor(self.black, device=x.device, dtype=x.dtype).view(1, -1, 1, 1),
                torch.arange(count, device=x.device).view(-1, 1, 1, 1),
                torch.arange(channels, device=x.device).view(1, -1, 1, 1),
                torch.arange(height, device=x.device),
                torch.arange(width, device=x.device),
            )
        return self._on_device[key]
