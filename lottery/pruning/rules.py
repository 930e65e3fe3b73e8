"""What pruning needs of the params: a registered strategy that prunes at the asked granularity and
scope, channels the model has and the strategy can score, enough of them for every round, and
whatever the strategy itself asks (its optional `check_params(hp, model)`)."""

import torch

from lottery import channels
from lottery.checks import one_of
from lottery.errors import ParamsError
from lottery.pruning import REGISTRY, check_channel_budget


def check_params(hp, model):
    one_of("prune.strategy", hp.prune.strategy, REGISTRY)
    strategy = REGISTRY[hp.prune.strategy]
    if hp.prune.granularity not in strategy.granularities:
        raise ParamsError(
            f"prune.granularity = {hp.prune.granularity!r}: {hp.prune.strategy} prunes {' or '.join(strategy.granularities)}s"
        )
    if hp.prune.scope not in getattr(strategy, "scopes", ("layerwise", "global")):
        raise ParamsError(f"prune.scope = {hp.prune.scope!r}: {hp.prune.strategy} ranks within each layer (use 'layerwise')")
    if hp.prune.granularity == "channel":
        _check_channels(hp, model, strategy)
    if hasattr(strategy, "check_params"):
        strategy.check_params(hp, model)


def _check_channels(hp, model, strategy):
    channel_groups = channels.groups(model)
    if not channel_groups:
        raise ParamsError(f"prune.granularity = 'channel': {hp.model.name} has no prunable channels")
    try:
        # A strategy that cannot score this model's channels (bn_slimming without BatchNorm) says so now.
        strategy.channel_scores(model, channel_groups, torch.Generator())
        check_channel_budget(hp.prune, {g.name: g.size for g in channel_groups}, hp.rounds)
    except ValueError as err:
        raise ParamsError(str(err)) from None
