from torch import nn

from lottery.pruning.strategy import Strategy, mean_channel_scores, register


@register("l1_filter")
class L1Filter(Strategy):
    """Li et al. 2017: the filters with the smallest L1 norm go, at a predefined ratio per layer.
    Where layers share channels (a residual stream), a channel scores the mean of its filters'
    norms over the group's conv and Linear layers."""

    granularities = ("channel",)
    # Li et al. rank filters within each layer. Raw L1 norms are not comparable across layers (they
    # grow with fan-in, which differs up to ~500x between VGG's layers): no global ranking.
    scopes = ("layerwise",)

    @staticmethod
    def channel_scores(model, channel_groups, generator):
        return mean_channel_scores(
            model, channel_groups, (nn.Conv2d, nn.Linear), lambda weight: weight.abs().flatten(1).sum(1), "l1_filter"
        )
