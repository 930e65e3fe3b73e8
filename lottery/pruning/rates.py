"""How much a pruning step removes: each layer's rate per round, the fraction `rounds` rounds at
that rate compound to, the drop counts they give, and the channels a channel ranking must leave."""

import math

from lottery import channels
from lottery.errors import UserError


class PruningError(UserError, ValueError):
    """A pruning step the model cannot take, such as one that leaves a layer too few channels."""


def layer_rates(model, prune_hp):
    """Per prunable weight (granularity weight) or channel group (channel), the fraction of its
    remaining weights or channels one round removes. Channel groups all take `prune.rate`. A global
    ranking of weights uses only the output layer's (see lottery.pruning.driver)."""
    if prune_hp.granularity == "channel":
        return {group.name: prune_hp.rate for group in channels.groups(model)}
    conv = prune_hp.conv_rate if prune_hp.conv_rate is not None else model.paper_conv_rate
    by_kind = {"fc": prune_hp.rate, "conv": conv, "output": output_rate(model, prune_hp)}
    return {name: by_kind[kind] for name, kind in model.prunable_kinds().items()}


def output_rate(model, prune_hp):
    """The output layer's rate per round: prune.output_rate, else the model's paper rule (LeNet and
    Conv-2/4/6: half of prune.rate; VGG and ResNet: 0, the layer is left alone)."""
    return prune_hp.output_rate if prune_hp.output_rate is not None else model.paper_output_factor * prune_hp.rate


def compound(rate, rounds):
    """The fraction of its entries a layer loses over `rounds` rounds at `rate` each."""
    return 1 - (1 - rate) ** rounds


def drop_counts(mask, rates, rounds):
    """{layer: how many of its kept weights `rounds` rounds at its rate remove}, as layerwise pruning counts them."""
    return {name: round(compound(rates[name], rounds) * int(keep.sum())) for name, keep in mask.items()}


def channel_floors(prune_hp, sizes):
    """{group: the fewest channels a global threshold may leave it}, from {group: channels}:
    prune.min_channels, and the share that prune.max_layer_fraction keeps out of reach."""
    # round() first: (1 - 0.7) * 10 is 3.0000000000000004, which must not become 4 channels.
    kept_share = {name: math.ceil(round((1 - prune_hp.max_layer_fraction) * size, 9)) for name, size in sizes.items()}
    return {name: max(prune_hp.min_channels, share) for name, share in kept_share.items()}


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


def _round_below(size, rate, rounds, floor):
    """(round, channels left) of the first round that leaves fewer than `floor` of `size`, or None."""
    remaining = size
    for round_ in range(1, rounds + 1):
        remaining -= round(rate * remaining)
        if remaining < floor:
            return round_, remaining
    return None
