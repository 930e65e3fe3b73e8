"""The LTH controls: other ways to train a round's sparsity pattern, which the ticket must beat.

A control is `build(theta, spec, ticket_mask, seed, generator, same_sign) -> (start model, mask)`:
`theta` is the model at the rewind point (θk; θ0 when k = 0), `spec` the checkpoint's model
description, and `seed`/`generator` belong to this round and control alone. A control never
changes the ticket's own mask or weights.
"""

import copy
import hashlib

import torch

from lottery import checkpoints, masks
from lottery.checks import one_of
from lottery.errors import ParamsError
from lottery.registry import Registry

REGISTRY = Registry()
register = REGISTRY.register


def check_params(hp, model):
    """The controls' rules: registered names; each retrains the ticket's sparsity pattern from the
    ticket's rewind point, so none runs beside another rewind target; random_sparse draws single
    weights, so it needs weight masks."""
    for name in hp.controls.run:
        one_of("controls.run", name, REGISTRY)
    if hp.controls.run and hp.rewind.target != "init":
        raise ParamsError(
            f"controls.run = {hp.controls.run}: the LTH controls need rewind.target 'init' "
            f"(not {hp.rewind.target!r}); compare targets as separate experiments"
        )
    if "random_sparse" in hp.controls.run and hp.prune.granularity == "channel":
        raise ParamsError("controls.run = ['random_sparse']: needs prune.granularity 'weight' (it breaks channels)")


def control_seed(seed, control, round_):
    """A seed of its own for each (lineage seed, control, round), unrelated to the seed of θ0."""
    digest = hashlib.sha256(f"{seed}/{control}/{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build(name, theta, spec, ticket_mask, seed, round_, same_sign):
    """Start weights (pruned weights zeroed) and mask of control `name` for one round."""
    own_seed = control_seed(seed, name, round_)
    generator = torch.Generator().manual_seed(own_seed)
    ticket_mask = {k: v.clone() for k, v in ticket_mask.items()}
    start, mask = REGISTRY[name](copy.deepcopy(theta), spec, ticket_mask, own_seed, generator, same_sign)
    masks.apply(start, mask)
    return start, mask


@register("reinit")
def reinit(theta, spec, ticket_mask, seed, generator, same_sign):
    """The ticket's mask on weights freshly drawn from the model's own init distribution (for a
    channel mask, the pruned architecture's: checkpoints.build_for_mask)."""
    return checkpoints.build_for_mask(spec, seed, ticket_mask), ticket_mask


@register("random_sparse")
def random_sparse(theta, spec, ticket_mask, seed, generator, same_sign):
    """θ with a random mask of exactly the ticket's per-layer sparsity."""
    mask = {}
    for name, keep in ticket_mask.items():
        chosen = torch.randperm(keep.numel(), generator=generator)[: int(keep.sum())]
        random_keep = torch.zeros(keep.numel(), dtype=torch.bool)
        random_keep[chosen] = True
        mask[name] = random_keep.view_as(keep)
    return theta, mask


@register("reinit_from_ticket")
def reinit_from_ticket(theta, spec, ticket_mask, seed, generator, same_sign):
    """Per layer, the kept weights redrawn from the ticket's own surviving initial values (LTH F.3).

    With `same_sign`, magnitudes are drawn and each weight keeps its original sign.
    """
    params = dict(theta.named_parameters())
    with torch.no_grad():
        for name, keep in ticket_mask.items():
            original = params[name][keep]
            pool = original.abs() if same_sign else original
            drawn = pool[torch.randint(len(pool), (len(pool),), generator=generator)]
            params[name][keep] = drawn * original.sign() if same_sign else drawn
    return theta, ticket_mask
