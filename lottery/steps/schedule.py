"""How a round retrains: the rewind target decides the schedule and where it starts."""

import dataclasses

from lottery import compression
from lottery.pruning import strategies


def retrain_schedule(hp, model, mask):
    """(train hparams, first iteration) of a round's retraining. init replays the dense run's
    schedule from k; finetune trains at its own constant rate; scratch trains the dense run's
    schedule from 0, stretched for Scratch-B by dense / pruned FLOPs (at most max_budget_factor).
    Each keeps the sparsity term train.bn_l1 only when train.bn_l1_rounds is 'every'.
    A supermask is the rewind point's weights under the searched mask: its schedule ends where
    it starts, so the branch is only evaluated."""
    # One pass of Network Slimming: the sparsity term shapes only the dense run the mask is drawn
    # from. Its multi-pass scheme (bn_l1_rounds 'every') trains every round with it, so that each
    # round's mask is drawn from sparsity-trained weights too.
    repeats_sparsity = hp.train.bn_l1_rounds == "every"
    dense_schedule = hp.train if repeats_sparsity else dataclasses.replace(hp.train, bn_l1=0.0)
    if strategies.REGISTRY[hp.prune.strategy].learns_scores:
        return dataclasses.replace(dense_schedule, iterations=hp.rewind.iteration, milestones=[]), hp.rewind.iteration
    if hp.rewind.target == "init":
        return dense_schedule, hp.rewind.iteration
    if hp.rewind.target == "finetune":
        finetune = dataclasses.replace(
            dense_schedule,
            lr=hp.rewind.finetune_lr,
            iterations=hp.rewind.finetune_iterations,
            warmup_iterations=0,
            milestones=[],
        )
        return finetune, 0
    if hp.rewind.scratch_budget == "same":
        return dense_schedule, 0
    factor = min(hp.rewind.max_budget_factor, flops_ratio(model, mask))
    stretched = dataclasses.replace(
        dense_schedule,
        iterations=round(hp.train.iterations * factor),
        milestones=[round(milestone * factor) for milestone in hp.train.milestones],
    )
    return stretched, 0


def flops_ratio(model, mask):
    """Dense FLOPs over the masked model's (channel masks: the compact model's exactly)."""
    return compression.flops(model, model.input_shape) / compression.flops(model, model.input_shape, mask)
