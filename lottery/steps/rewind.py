"""rewind@r: round r's start weights."""

import torch

from lottery import checkpoints, controls, masks, paths
from lottery.factorize import layers
from lottery.io import load_torch
from lottery.steps.common import pruned_from, save_weights
from lottery.steps.schedule import retrain_schedule


def rewind(hp, round_):
    """Round r's start weights, pruned weights zeroed: θk (target init, θ0 when k = 0), the trained
    weights the mask was pruned from (finetune), or a fresh init (scratch) of the architecture the
    mask leaves (channel masks: the narrower one's own init, checkpoints.build_for_mask).

    A factorized round's mask names its ranks: those weights are factorized at them, by truncated
    SVD (spectral initialization of θk or of the fresh draw; for finetune, compression of the
    trained weights), or, with factorize.spectral_init false, with factors drawn independently
    from the model's init (the paper's plain ablation)."""
    source = {
        "init": paths.rewind_point(),
        "finetune": paths.trained_weights(pruned_from(hp, round_)),
        "scratch": paths.init_checkpoint(),
    }[hp.rewind.target]
    model, checkpoint = checkpoints.load_model(source)
    structure = load_torch(paths.mask(round_))
    if hp.rewind.target == "scratch":
        seed = controls.control_seed(hp.seed, "scratch", round_)
        model = checkpoints.build_for_mask(checkpoint["model"], seed, structure)
    plain_factors = torch.Generator().manual_seed(controls.control_seed(hp.seed, "plain_factors", round_))
    init = checkpoint["model"].get("init", "glorot")
    layers.to_mask(model, structure, hp.factorize.spectral_init, plain_factors, init)
    mask = masks.validate(structure, model)
    masks.apply(model, mask)
    _, start_iteration = retrain_schedule(hp, model, mask)
    save_weights(
        paths.start_weights(round_), model, hp, round_=round_, iteration=start_iteration, parents=[source, paths.mask(round_)]
    )
