"""A pruning step: the registered strategy's scores or search, at the rates lottery.pruning.rates
gives, through the selection of lottery.pruning.selection."""

from dataclasses import dataclass

import torch

from lottery import channels, masks
from lottery.pruning import rates, selection, strategies


@dataclass(frozen=True)
class SearchInputs:
    """What a strategy that learns its scores reads: the weights the round will start from (which
    the search freezes), the data splits, the lineage's params, and the search's in-round saves
    (lottery.resume; None: none)."""

    weights: object
    splits: object
    hp: object
    saves: object = None


def prune(prune_hp, model, mask, seed, rounds=1, search_inputs=None):
    """The new mask after `rounds` rounds' worth of pruning in one step (1 for iterative pruning;
    r for a one-shot ticket at round r's sparsity). Pruned weights and channels stay pruned.
    `search_inputs`: what a strategy that learns its scores needs (SearchInputs)."""
    strategy = strategies.REGISTRY[prune_hp.strategy]
    generator = torch.Generator().manual_seed(seed)
    if strategy.learns_scores:
        drop = rates.drop_counts(mask, rates.layer_rates(model, prune_hp), rounds)
        return strategy.search(search_inputs, mask, drop, generator)
    if prune_hp.granularity == "weight":
        return _prune_weights(prune_hp, strategy, model, mask, generator, rounds)
    return _prune_channels(prune_hp, strategy, model, mask, generator, rounds)


def kept_weights(prune_hp, model, round_, seed):
    """How many prunable weights round r's ticket keeps: `prune` run on `model`'s own weights as
    the pipeline runs it (r rounds of one, or one of r for a one-shot schedule). The count depends
    only on the counts before it, not on which weights the scores pick, so any weights do."""
    mask = masks.ones(model)
    steps = [1] * round_ if prune_hp.schedule == "iterative" else [round_]
    for rounds in steps:
        mask = prune(prune_hp, model, mask, seed, rounds=rounds)
    return sum(int(keep.sum()) for keep in mask.values())


def _prune_weights(prune_hp, strategy, model, mask, generator, rounds):
    scores = strategy.weight_scores(model, mask, generator)
    # The output layer is never pooled into a global ranking: it goes at its own rate.
    alone = [name for name, kind in model.prunable_kinds().items() if kind == "output"]
    return _select(prune_hp, scores, mask, rates.layer_rates(model, prune_hp), rounds, alone)


def _prune_channels(prune_hp, strategy, model, mask, generator, rounds):
    channel_groups = channels.groups(model)
    keep = channels.kept(channel_groups, mask)
    scores = strategy.channel_scores(model, channel_groups, generator)
    group_rates = {group.name: prune_hp.rate for group in channel_groups}
    # Layerwise needs no floors: a rate that would cross prune.min_channels is refused up front
    # (rates.check_channel_budget). A global ranking keeps each layer's floor out of its reach.
    if prune_hp.scope == "global":
        floors = rates.channel_floors(prune_hp, {group.name: group.size for group in channel_groups})
        scores = selection.protect_strongest(scores, keep, floors)
    return channels.expand(model, channel_groups, _select(prune_hp, scores, keep, group_rates, rounds))


def _select(prune_hp, scores, keep, layer_rates, rounds, alone=()):
    """Layerwise, each layer loses its own rate; global, one ranking over every layer but those in
    `alone` takes `prune.rate`, and each of `alone` loses its own rate."""
    fractions = {name: rates.compound(layer_rates[name], rounds) for name in keep}
    pooled = rates.compound(prune_hp.rate, rounds) if prune_hp.scope == "global" else None
    return selection.select(scores, keep, fractions, pooled, alone)
