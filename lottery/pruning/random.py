import torch

from lottery.pruning.strategy import Strategy, register


@register("random")
class Random(Strategy):
    """The baseline every criterion must beat: weights or channels chosen uniformly at random, at
    the same ratios, from the pruning step's own seed."""

    granularities = ("weight", "channel")

    @staticmethod
    def weight_scores(model, mask, generator):
        return {name: torch.rand(keep.shape, generator=generator) for name, keep in mask.items()}

    @staticmethod
    def channel_scores(model, channel_groups, generator):
        return {group.name: torch.rand(group.size, generator=generator) for group in channel_groups}
