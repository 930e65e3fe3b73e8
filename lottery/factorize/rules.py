"""What factorizing needs of the params: weight-level tickets to match, no mask-only options, and
a last round whose ticket keeps enough weights for a rank of at least 1 in every layer."""

from lottery.errors import ParamsError
from lottery.factorize.plans import matched_ranks
from lottery.pruning import driver, strategies


def check_params(hp, model):
    """A factorized round stores as many weights as the round's weight-pruned ticket would keep
    (lottery.pruning.driver.kept_weights); what only applies to masks is refused rather than ignored."""
    if not hp.factorize.enabled:
        return
    needs = {
        "prune.granularity": (hp.prune.granularity, "weight", "it matches the weights a weight-pruned ticket keeps"),
        "controls.run": (hp.controls.run, [], "the controls retrain a mask's sparsity pattern"),
        "weight_agnostic.values": (hp.weight_agnostic.values, [], "it evaluates masks of θ0's weights"),
    }
    for key, (value, wanted, reason) in needs.items():
        if value != wanted:
            raise ParamsError(f"{key} = {value!r}: factorize.enabled trains factorized layers and {reason}; use {wanted!r}")
    if strategies.REGISTRY[hp.prune.strategy].learns_scores:
        raise ParamsError(f"prune.strategy = {hp.prune.strategy!r}: searches a mask; factorize.enabled trains factorized layers")
    if hp.rewind.target == "finetune" and not hp.factorize.spectral_init:
        raise ParamsError(
            "factorize.spectral_init = false: rewind.target 'finetune' factorizes the trained weights by truncated SVD; "
            "plain factors would discard them (use 'init' or 'scratch')"
        )
    if hp.rewind.target == "scratch" and hp.rewind.scratch_budget == "flops":
        raise ParamsError("rewind.scratch_budget = 'flops': Scratch-B stretches a mask's budget; use 'same' with factorize.enabled")
    target = driver.kept_weights(hp.prune, model, hp.rounds, seed=0)
    try:
        matched_ranks(model, target)
    except ValueError as err:
        raise ParamsError(f"prune.rate = {hp.prune.rate}: round {hp.rounds}'s ticket keeps {err}") from None
