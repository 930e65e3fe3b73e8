"""Pruning strategy registry: a strategy scores the prunable weights; the lowest scores go.

Adding a strategy is one module with a `@register("name")` function
`score(model, mask, generator) -> {param name: scores}`.
"""

import importlib

import torch

from lottery.registry import Registry

REGISTRY = Registry()
register = REGISTRY.register


def layer_rates(model, prune_hp):
    """Per prunable weight, the fraction of its remaining weights one round removes."""
    conv = prune_hp.conv_rate if prune_hp.conv_rate is not None else model.paper_conv_rate
    output = prune_hp.output_rate if prune_hp.output_rate is not None else prune_hp.rate / 2
    by_kind = {"fc": prune_hp.rate, "conv": conv, "output": output}
    return {name: by_kind[kind] for name, kind in model.prunable_kinds().items()}


def prune(prune_hp, model, mask, seed, rounds=1):
    """The new mask after `rounds` rounds' worth of pruning in one step (1 for iterative pruning;
    r for a one-shot ticket at round r's sparsity). Pruned weights stay pruned."""
    scores = REGISTRY[prune_hp.strategy](model, mask, torch.Generator().manual_seed(seed))
    if prune_hp.scope == "global":
        return _prune_global(scores, mask, _compound(prune_hp.rate, rounds))
    rates = layer_rates(model, prune_hp)
    return {name: _prune_lowest(scores[name], keep, _compound(rates[name], rounds)) for name, keep in mask.items()}


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


for _module in ("magnitude",):
    importlib.import_module(f"lottery.pruning.{_module}")
