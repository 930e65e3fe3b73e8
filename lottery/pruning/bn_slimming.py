from torch import nn

from lottery.pruning.strategy import Strategy, mean_channel_scores, register


@register("bn_slimming")
class BNSlimming(Strategy):
    """Network Slimming (Liu et al. 2017): channels go in order of their BatchNorm scale |γ|, under
    one threshold over the whole model with `prune.scope: global` (train with `train.bn_l1` to make
    γ sparse first). A channel shared by several BatchNorm layers scores their mean |γ|."""

    granularities = ("channel",)

    @staticmethod
    def channel_scores(model, channel_groups, generator):
        return mean_channel_scores(model, channel_groups, (nn.BatchNorm2d,), lambda gamma: gamma.abs(), "bn_slimming")
