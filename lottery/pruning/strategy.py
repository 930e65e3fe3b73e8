"""What a pruning strategy is: a `Strategy` subclass registered by name with `@register("name")`.
lottery.pruning.strategies imports every strategy module, which fills REGISTRY; read it from there.

A strategy names its `granularities` ('weight', 'channel') and has, for each, `weight_scores(model,
mask, generator) -> {param name: scores}` or `channel_scores(model, channel_groups, generator) ->
{group name: scores[size]}`; the lowest scores go. One whose scores only rank within a layer names
`scopes = ("layerwise",)`.

A strategy that learns its scores from data rather than reading them off the trained weights
(edge_popup) sets `learns_scores = True` and has `search(inputs, mask, drop, generator) -> mask`:
`inputs` is the lottery.pruning.driver.SearchInputs the prune step gathers, `drop` how many of each
layer's kept weights go (lottery.pruning.rates.drop_counts), and the returned mask keeps exactly the
others.
"""

import torch

from lottery import channels
from lottery.errors import ParamsError
from lottery.pruning.rates import check_channel_budget
from lottery.registry import Registry

REGISTRY = Registry()
register = REGISTRY.register


class Strategy:
    """The rules a strategy sets for the params that choose it; a subclass overrides what differs."""

    granularities = ()  # what it prunes: 'weight' and/or 'channel'
    scopes = ("layerwise", "global")  # the rankings its scores allow
    learns_scores = False  # True: it searches a mask (`search`) instead of scoring trained weights

    @classmethod
    def check_params(cls, hp, model):
        """Refuse, with a ParamsError naming the key, params this strategy cannot prune `model` with
        (the lineage's model); a strategy that needs more extends this."""
        name = hp.prune.strategy
        if hp.prune.granularity not in cls.granularities:
            raise ParamsError(f"prune.granularity = {hp.prune.granularity!r}: {name} prunes {' or '.join(cls.granularities)}s")
        if hp.prune.scope not in cls.scopes:
            raise ParamsError(f"prune.scope = {hp.prune.scope!r}: {name} ranks within each layer (use 'layerwise')")
        if hp.prune.granularity == "channel":
            cls._check_channels(hp, model)

    @classmethod
    def _check_channels(cls, hp, model):
        channel_groups = channels.groups(model)
        if not channel_groups:
            raise ParamsError(f"prune.granularity = 'channel': {hp.model.name} has no prunable channels")
        try:
            # A strategy that cannot score this model's channels (bn_slimming without BatchNorm) says so now.
            cls.channel_scores(model, channel_groups, torch.Generator())
            check_channel_budget(hp.prune, {g.name: g.size for g in channel_groups}, hp.rounds)
        except ValueError as err:
            raise ParamsError(str(err)) from None


def mean_channel_scores(model, channel_groups, layer_types, score, strategy):
    """{group: per channel, the mean of `score(weight)` over the group's `layer_types` layers whose
    outputs are its channels} (several layers share a channel on a residual stream)."""
    params = dict(model.named_parameters())
    scores = {}
    for group in channel_groups:
        weights = [name for layer in layer_types for name in group.output_weights(layer)]
        if not weights:
            kinds = " or ".join(layer.__name__ for layer in layer_types)
            raise ValueError(f"prune.strategy = {strategy!r}: {group.name} has no {kinds} layer to score")
        scores[group.name] = torch.stack([score(params[name].detach().cpu()) for name in weights]).mean(0)
    return scores
