"""Pruning strategy registry: a strategy scores weights or channels; the lowest scores go.

Adding a strategy is one module with a `@register("name")` class that names its `granularities`
('weight', 'channel') and has, for each, `weight_scores(model, mask, generator) -> {param name:
scores}` or `channel_scores(model, channel_groups, generator) -> {group name: scores[size]}`. A
strategy whose scores only rank within a layer names `scopes = ("layerwise",)`.

A strategy that learns its scores from data rather than reading them off the trained weights
(edge_popup) sets `learns_scores = True` and has `search(inputs, mask, drop, generator) -> mask`:
`inputs` is the `SearchInputs` the prune step gathers, `drop` how many of each layer's kept
weights go, and the returned mask keeps exactly the others.
"""

import math
from dataclasses import dataclass

import torch

from lottery import channels, masks
from lottery.errors import UserError
from lottery.registry import Registry

REGISTRY = Registry()
register = REGISTRY.register


class PruningError(UserError, ValueError):
    """A pruning step the model cannot take, such as one that leaves a layer too few channels."""


@dataclass(frozen=True)
class SearchInputs:
    """What a strategy that learns its scores reads: the weights the round will start from (which
    the search freezes), the data splits, the lineage's params, and the search's in-round saves
    (lottery.resume; None: none)."""

    weights: object
    splits: object
    hp: object
    saves: object = None


def learns_scores(strategy):
    return getattr(REGISTRY[strategy], "learns_scores", False)


def layer_rates(model, prune_hp):
    """Per prunable weight (granularity weight) or channel group (channel), the fraction of its
    remaining weights or channels one round removes. Channel groups all take `prune.rate`. A global
    ranking of weights uses only the output layer's (see `_select`)."""
    if prune_hp.granularity == "channel":
        return {group.name: prune_hp.rate for group in channels.groups(model)}
    conv = prune_hp.conv_rate if prune_hp.conv_rate is not None else model.paper_conv_rate
    by_kind = {"fc": prune_hp.rate, "conv": conv, "output": output_rate(model, prune_hp)}
    return {name: by_kind[kind] for name, kind in model.prunable_kinds().items()}


def output_rate(model, prune_hp):
    """The output layer's rate per round: prune.output_rate, else the model's paper rule (LeNet and
    Conv-2/4/6: half of prune.rate; VGG and ResNet: 0, the layer is left alone)."""
    return prune_hp.output_rate if prune_hp.output_rate is not None else model.paper_output_factor * prune_hp.rate


def prune(prune_hp, model, mask, seed, rounds=1, search_inputs=None):
    """The new mask after `rounds` rounds' worth of pruning in one step (1 for iterative pruning;
    r for a one-shot ticket at round r's sparsity). Pruned weights and channels stay pruned.
    `search_inputs`: what a strategy that learns its scores needs (SearchInputs)."""
    strategy = REGISTRY[prune_hp.strategy]
    generator = torch.Generator().manual_seed(seed)
    if learns_scores(prune_hp.strategy):
        drop = drop_counts(mask, layer_rates(model, prune_hp), rounds)
        return strategy.search(search_inputs, mask, drop, generator)
    if prune_hp.granularity == "weight":
        scores = strategy.weight_scores(model, mask, generator)
        # The output layer is never pooled into a global ranking: it goes at its own rate.
        alone = [name for name, kind in model.prunable_kinds().items() if kind == "output"]
        return _select(prune_hp, scores, mask, layer_rates(model, prune_hp), rounds, alone)
    channel_groups = channels.groups(model)
    keep = channels.kept(channel_groups, mask)
    scores = strategy.channel_scores(model, channel_groups, generator)
    rates = {group.name: prune_hp.rate for group in channel_groups}
    floors = channel_floors(prune_hp, {group.name: group.size for group in channel_groups})
    protected = _protect_strongest(scores, keep, floors, prune_hp.scope)
    return channels.expand(model, channel_groups, _select(prune_hp, protected, keep, rates, rounds))


def kept_weights(prune_hp, model, round_, seed):
    """How many prunable weights round r's ticket keeps: `prune` run on `model`'s own weights as
    the pipeline runs it (r rounds of one, or one of r for a one-shot schedule). The count depends
    only on the counts before it, not on which weights the scores pick, so any weights do."""
    mask = masks.ones(model)
    steps = [1] * round_ if prune_hp.schedule == "iterative" else [round_]
    for rounds in steps:
        mask = prune(prune_hp, model, mask, seed, rounds=rounds)
    return sum(int(keep.sum()) for keep in mask.values())


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


def check_channel_budget(prune_hp, sizes, rounds):
    """Raise PruningError if pruning `rounds` rounds at `prune.rate` would leave any layer (layerwise)
    or the model (global) fewer channels than `prune.min_channels` allows. `sizes`: {group: channels}."""
    minimum = prune_hp.min_channels
    if prune_hp.scope == "layerwise":
        for name, size in sizes.items():
            crossed = _round_below(size, prune_hp.rate, rounds, minimum)
            if crossed:
                raise PruningError(
                    f"prune.rate = {prune_hp.rate}: round {crossed[0]} would leave {name} {crossed[1]} of {size} "
                    f"channels, below prune.min_channels = {minimum}"
                )
        return
    total, floor = sum(sizes.values()), sum(channel_floors(prune_hp, sizes).values())
    crossed = _round_below(total, prune_hp.rate, rounds, floor)
    if crossed:
        raise PruningError(
            f"prune.rate = {prune_hp.rate}: round {crossed[0]} would leave {crossed[1]} of {total} channels, fewer "
            f"than the {floor} that prune.min_channels = {minimum} and prune.max_layer_fraction = "
            f"{prune_hp.max_layer_fraction} keep across {len(sizes)} layers"
        )


def channel_floors(prune_hp, sizes):
    """{group: the fewest channels a global threshold may leave it}, from {group: channels}:
    prune.min_channels, and the share that prune.max_layer_fraction keeps out of reach."""
    # round() first: (1 - 0.7) * 10 is 3.0000000000000004, which must not become 4 channels.
    kept_share = {name: math.ceil(round((1 - prune_hp.max_layer_fraction) * size, 9)) for name, size in sizes.items()}
    return {name: max(prune_hp.min_channels, share) for name, share in kept_share.items()}


def drop_counts(mask, rates, rounds):
    """{layer: how many of its kept weights `rounds` rounds at its rate remove}, as layerwise pruning counts them."""
    return {name: round(_compound(rates[name], rounds) * int(keep.sum())) for name, keep in mask.items()}


def keep_top(score, keep, drop):
    """`keep` less its `drop` lowest-scoring entries: the mask `_drop` gives (layerwise pruning's),
    found without sorting. Everything above the drop-th lowest score stays; of the entries tied
    at that score, the stable sort would drop the earliest, so the latest ones stay."""
    if drop == 0:
        return keep.clone()
    flat_score, flat_keep = score.flatten(), keep.flatten()
    kept = int(flat_keep.sum())
    candidates = flat_score if kept == flat_score.numel() else flat_score[flat_keep]
    threshold = kth_smallest(candidates, drop)
    new = flat_keep & (flat_score > threshold)
    missing = kept - drop - int(new.sum())
    if missing:
        tied = torch.nonzero(flat_keep & (flat_score == threshold)).flatten()
        new[tied[len(tied) - missing :]] = True
    return new.view_as(keep)


def kth_smallest(values, k, stride=16):
    """torch.kthvalue(values, k).values of a 1-d tensor, faster where a supermask search needs it
    at every step. On CUDA a full sort (for 940,800 scores on an H100: 0.11 ms against kthvalue's
    4.5 ms). On the CPU kthvalue beats a sort (4.6 ms against 30 ms for 235,200 here), and runs on
    less: a strided sample brackets the k-th value, and only the values inside the bracket are
    searched (2.1 ms; 9.3 against 16.7 ms for 940,800)."""
    if values.is_cuda:
        return torch.sort(values).values[k - 1]
    sample = values[::stride]
    if sample.numel() < 1024:
        return torch.kthvalue(values, k).values
    # ±4 standard deviations of the sample quantile's rank: the bracket rarely misses the k-th
    # value, and when it does the whole tensor is searched, so the answer is exact either way.
    position, margin = k / values.numel() * sample.numel(), 4 * math.sqrt(sample.numel()) + 1
    low = torch.kthvalue(sample, max(1, math.floor(position - margin))).values
    high = torch.kthvalue(sample, min(sample.numel(), math.ceil(position + margin))).values
    below = int((values < low).sum())
    inside = values[(values >= low) & (values <= high)]
    if below < k <= below + inside.numel():
        return torch.kthvalue(inside, k - below).values
    return torch.kthvalue(values, k).values


def _round_below(size, rate, rounds, floor):
    """(round, channels left) of the first round that leaves fewer than `floor` of `size`, or None."""
    remaining = size
    for round_ in range(1, rounds + 1):
        remaining -= round(rate * remaining)
        if remaining < floor:
            return round_, remaining
    return None


def _select(prune_hp, scores, keep, rates, rounds, alone=()):
    """The new keep-masks. Layerwise, each layer loses its own rate; global, one ranking over every
    layer but those in `alone` takes `prune.rate`, and each of `alone` loses its own rate."""
    pooled = {name: kept for name, kept in keep.items() if name not in alone} if prune_hp.scope == "global" else {}
    new = _prune_global(scores, pooled, _compound(prune_hp.rate, rounds)) if pooled else {}
    for name, kept in keep.items():
        if name not in pooled:
            new[name] = _prune_lowest(scores[name], kept, _compound(rates[name], rounds))
    return {name: new[name] for name in keep}


def _protect_strongest(scores, keep, floors, scope):
    """Scores with each layer's `floors[layer]` best kept channels raised out of reach, so no layer
    is pruned below it (a layerwise rate that would cross prune.min_channels is refused up front)."""
    if scope == "layerwise":
        return scores
    protected = {}
    for name, score in scores.items():
        candidates = torch.where(keep[name], score.float(), torch.full_like(score.float(), -float("inf")))
        best = torch.sort(candidates, descending=True, stable=True).indices[: floors[name]]
        protected[name] = score.float().clone()
        protected[name][best] = float("inf")
    return protected


def _compound(rate, rounds):
    return 1 - (1 - rate) ** rounds


def _prune_lowest(score, keep, rate):
    count = round(rate * int(keep.sum()))
    return _drop(score.flatten(), keep.flatten(), count).view_as(keep)


def _prune_global(scores, mask, rate):
    names = list(mask)
    flat_keep = torch.cat([mask[n].flatten() for n in names])
    flat_score = torch.cat([scores[n].flatten().float() for n in names])
    flat_new = _drop(flat_score, flat_keep, round(rate * int(flat_keep.sum())))
    return {n: part.view_as(mask[n]) for n, part in zip(names, flat_new.split([mask[n].numel() for n in names]))}


def _drop(score, keep, count):
    # Pruned entries score +inf so they are never chosen again; a stable sort makes ties
    # (and so the mask) deterministic.
    candidates = torch.where(keep, score, torch.full_like(score, float("inf")))
    order = torch.sort(candidates, stable=True).indices
    new = keep.clone()
    new[order[:count]] = False
    return new


# Each module registers its strategy on import (plain imports, so lottery.deps sees them).
from lottery.pruning import bn_slimming, edge_popup, l1_filter, magnitude, random  # noqa: E402, F401
