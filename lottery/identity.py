"""Which params name a lineage: an explicit, versioned schema.

A lineage is named by the params that can change what the pipeline computes (its identity) and
by its code (lottery.provenance). The schema says, key by key, why a key stays out of the name:

- NOT_COMPUTED: the key never changes a weight, mask or metric (where the data came from, the
  device, how densely the test curve is sampled, deterministic kernels, which compute the same
  values in a fixed order);
- ADDED: the key was added after lineages were already named; it joins the name only when it
  differs from the value those lineages computed with, so their names stay;
- USED_WHEN: the key is read only when another setting asks for it (SGD's momentum, the rewind
  target's own keys, a method that is switched off).

Sections outside IDENTITY_SECTIONS do not change what a lineage's tickets are (adding rounds or
controls extends a lineage rather than starting a new one; the number of processes, like the
device, is recorded with each run's environment), except that a supermask search's settings and
factorize's join the name when those methods are on.

SCHEMA_VERSION 1 is the schema every lineage so far was named with, and its names carry no
version. A later schema that names lineages differently raises the version, which then becomes
part of the digested identity, so a name made by one schema can never be taken for another's.
"""

import dataclasses
import hashlib
import json

from lottery import data
from lottery.models import catalog
from lottery.pruning import strategies

SCHEMA_VERSION = 1

IDENTITY_SECTIONS = ("data", "model", "train", "prune", "rewind", "early_bird")

NOT_COMPUTED = {
    "data": ("source", "local_root"),
    "train": ("device", "test_curve", "deterministic"),
}

# key: the value every lineage named before the key existed computed with.
ADDED = {
    "model": {"init": "glorot"},  # the init that is drawn (model.init 'paper' resolved), not its spelling
    "train": {"precision": "float32", "tf32": False, "bn_l1_rounds": "dense", "weight_decay": 0.0},
    "prune": {"max_layer_fraction": 1.0},
}

# key: whether the key is read, given the params.
USED_WHEN = {
    ("data", "augmentation"): lambda hp: data.augments(hp.data.dataset, hp.data.augmentation),
    ("train", "momentum"): lambda hp: hp.train.optimizer == "sgd",
    ("rewind", "finetune_lr"): lambda hp: hp.rewind.target == "finetune",
    ("rewind", "finetune_iterations"): lambda hp: hp.rewind.target == "finetune",
    ("rewind", "scratch_budget"): lambda hp: hp.rewind.target == "scratch",
    ("rewind", "max_budget_factor"): lambda hp: hp.rewind.target == "scratch",
}


def of(hp):
    """The params that determine the results, typed: the seed and each identity section's keys
    that the schema keeps, and the switched-on methods' own sections."""
    tree = {"seed": hp.seed, **{name: _section(hp, name) for name in IDENTITY_SECTIONS}}
    if not hp.early_bird.enabled:
        tree["early_bird"] = {"enabled": False}
    if hp.factorize.enabled:
        tree["factorize"] = factorize_keys(hp)
    if strategies.REGISTRY[hp.prune.strategy].learns_scores:
        tree["supermask"] = _fields(hp.supermask)
        if hp.supermask.weight_agnostic:
            tree["supermask"]["shared_weights"] = _fields(hp.weight_agnostic)
    return tree if SCHEMA_VERSION == 1 else {"schema": SCHEMA_VERSION, **tree}


def factorize_keys(hp):
    """The factorize keys that name a factorized lineage ({} when factorize is off)."""
    if not hp.factorize.enabled:
        return {}
    # Without weight decay, Frobenius decay has no decay to replace: the same lineage either way.
    return _fields(hp.factorize) if hp.train.weight_decay else {"spectral_init": hp.factorize.spectral_init}


def params_hash(hp):
    """Digest of the identity: equal for params files that compute the same thing."""
    return digest(of(hp))


def digest(tree):
    """A short, stable digest of a JSON-able tree (key order does not matter)."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def _section(hp, name):
    values = _fields(getattr(hp, name))
    if name == "model":
        values["init"] = catalog.weights_init(hp.model.name, hp.model.init)
    for key in NOT_COMPUTED.get(name, ()):
        del values[key]
    for key, earlier in ADDED.get(name, {}).items():
        if values[key] == earlier:
            del values[key]
    for (section, key), used in USED_WHEN.items():
        if section == name and not used(hp):
            del values[key]
    return values


def _fields(section):
    return {field.name: getattr(section, field.name) for field in dataclasses.fields(section)}
