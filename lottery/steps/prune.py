"""prune@r: round r's mask (for a factorized lineage, the mask of its factorized architecture)."""

import contextlib

from lottery import checkpoints, early_bird, identity, masks, paths, records, resume, tracking
from lottery.pruning import driver, rates, strategies
from lottery.factorize import layers, plans, report
from lottery.io import read_json, write_json
from lottery.steps.common import pruned_from, splits


def prune(hp, round_):
    """Round r-1's mask less p% of its remaining weights (iterative), or the dense network pruned
    at once to round r's sparsity (oneshot). sparsity.json also records the method and the
    per-layer rates, which become the round's MLflow params.

    With factorize.enabled, the round's network is factorized instead, at ranks whose factors
    store at most as many weights as the round's ticket would keep (plans.matched_ranks); its
    mask keeps every factor weight and names the ranks (lottery.factorize)."""
    mask, sparsity = _factorized(hp, round_) if hp.factorize.enabled else _pruned(hp, round_)
    sparsity["method"] = {
        "prune.strategy": hp.prune.strategy,
        "prune.scope": hp.prune.scope,
        "prune.schedule": hp.prune.schedule,
        "prune.granularity": hp.prune.granularity,
        "rewind.target": hp.rewind.target,
        "rewind.iteration": hp.rewind.iteration,
        **{f"factorize.{key}": value for key, value in identity.factorize_keys(hp).items()},
    }
    masks.save(mask, paths.mask(round_))
    write_json(paths.sparsity_report(round_), sparsity)
    tracking.publish(hp, records.pruned(hp, round_))


def _pruned(hp, round_):
    source = pruned_from(hp, round_)
    trained, _ = checkpoints.load_model(paths.trained_weights(source))
    previous = masks.load(paths.mask(source), trained)
    searching = strategies.REGISTRY[hp.prune.strategy].learns_scores  # a supermask search trains, and so saves as it goes
    inputs = [paths.rewind_point(), paths.trained_weights(source), paths.mask(source)]
    with resume.kept_until_done(hp, f"prune@{round_}", inputs) if searching else contextlib.nullcontext() as saves:
        search_inputs = _search_inputs(hp, saves) if searching else None
        mask = driver.prune(hp.prune, trained, previous, seed=hp.seed + round_, rounds=round_ - source, search_inputs=search_inputs)
    if hp.early_bird.enabled and round_ == 1:  # a one-shot round r > 1 prunes round 0 further than the search did
        _check_early_bird_mask(trained, mask)
    sparsity = masks.sparsity_report(mask, trained.prunable_kinds())
    sparsity["rates"] = rates.layer_rates(trained, hp.prune)
    return mask, sparsity


def _factorized(hp, round_):
    # The ticket's count needs the dense architecture, which the rewind point always has.
    dense, _ = checkpoints.load_model(paths.rewind_point())
    ticket_weights = driver.kept_weights(hp.prune, dense, round_, seed=hp.seed + round_)
    scale, ranks = plans.matched_ranks(dense, ticket_weights)
    structure = layers.restructure(dense, ranks)
    mask = masks.ones(structure)
    sparsity = report.sparsity_report(structure, mask)
    sparsity.update(ranks=ranks, rank_scale=scale, ticket_weights=ticket_weights)
    return mask, sparsity


def _search_inputs(hp, saves):
    """A supermask search's inputs: the rewind point it searches on, the data, and where it saves."""
    weights, _ = checkpoints.load_model(paths.rewind_point())
    return driver.SearchInputs(weights=weights, splits=splits(hp), hp=hp, saves=saves)


def _check_early_bird_mask(model, mask):
    drawn = read_json(paths.early_bird_report()).get("mask_sha256")
    if drawn and early_bird.digest(early_bird.channel_vector(model, mask)) != drawn:
        raise AssertionError("prune: the mask differs from the Early-Bird ticket drawn in training")
