"""Self-describing checkpoints: weights plus what built them, loadable with weights_only=True.

`model` describes the architecture: the registry name, input shape, classes and width, the init
its fresh weights are drawn by (absent: Glorot), and for a compact model the channels of every
layer (lottery.channels.shapes), and for a factorized model the rank of each factorized layer
(lottery.factorize.layers.ranks). A sparse checkpoint stores
its masked tensors as bitmask + kept values (lottery.compression.pack_state).

A checkpoint holds only what determines it (weights, architecture, round, iteration and the files
it came from), so its bytes are the same wherever and whenever the same weights are saved. The
params that made it are in dvc.lock (per stage) and in the lineage's MLflow runs.
"""

from lottery import channels, compression
from lottery.factorize import layers
from lottery.io import load_torch, save_torch
from lottery.models import catalog


def save(path, model, *, spec, round_, iteration, parents, sparse_mask=None):
    """`parents`: the files these weights were derived from, so any checkpoint traces its lineage.
    `sparse_mask`: store the masked tensors sparsely, so the file shrinks with the weights remaining."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ranks = layers.ranks(model)
    if ranks:  # the architecture saved is the factorized one, whatever spec it came from
        spec = {**spec, "ranks": ranks}
    payload = {
        "model": spec,
        "round": round_,
        "iteration": iteration,
        "parents": [str(parent) for parent in parents],
    }
    if sparse_mask is None:
        payload["state_dict"] = state
    else:
        payload["sparse_state"] = compression.pack_state(state, sparse_mask)
    save_torch(path, payload)


def load(path):
    return load_torch(path)


def model_spec(name, input_shape, num_classes, width, init="glorot", compact_of=None):
    """The architecture description `load_model` rebuilds from; `compact_of`: a channel-pruned
    model whose layer sizes it records."""
    spec = {"name": name, "input_shape": list(input_shape), "num_classes": num_classes, "width": width}
    # Glorot, the default, is left implicit: checkpoints from before model.init keep their bytes.
    if init != "glorot":
        spec["init"] = init
    if compact_of is not None:
        spec["channels"] = channels.shapes(compact_of)
    return spec


def build(spec, seed=0, fans=None):
    """A model of the described architecture, with weights drawn from `seed` (`fans`: see
    PrunableModel.reset_parameters)."""
    # Checkpoints written before model.width existed describe width-1 models.
    width = spec.get("width", 1.0)
    init = spec.get("init", "glorot")
    model = catalog.build(
        spec["name"], spec["input_shape"], spec["num_classes"], seed=seed, width=width, init=init, fans=fans
    )
    if "channels" in spec:
        channels.resize(model, spec["channels"])
    return layers.restructure(model, spec.get("ranks", {}))


def build_for_mask(spec, seed, mask):
    """A fresh draw from the model's init for the network `mask` leaves. A channel mask leaves a
    narrower architecture, and each layer's init sees that architecture's fans (its kept
    channels): Liu et al. train a pruned architecture from its own standard init. A weight mask
    leaves the architecture as it is, and a factorized one (lottery.factorize) is drawn dense, to be
    factorized by lottery.factorize.layers.to_mask."""
    model = build(spec, seed=seed)
    if layers.ranks_of_mask(mask) or not channels.is_channel_mask(model, mask):
        return model
    return build(spec, seed=seed, fans=channels.kept_fans(model, mask))


def load_model(path):
    """(model, checkpoint) from a checkpoint file alone."""
    checkpoint = load(path)
    model = build(checkpoint["model"])
    if "sparse_state" in checkpoint:
        state, _ = compression.unpack_state(checkpoint["sparse_state"], source=str(path))
    else:
        state = checkpoint["state_dict"]
    model.load_state_dict(state)
    return model, checkpoint
