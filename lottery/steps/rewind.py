"""rewind@r: round r's start weights."""

from lottery import checkpoints, controls, masks, paths
from lottery.steps.common import pruned_from, save_weights
from lottery.steps.schedule import retrain_schedule


def rewind(hp, round_):
    """Round r's start weights, pruned weights zeroed: θk (target init, θ0 when k = 0), the trained
    weights the mask was pruned from (finetune), or a fresh init (scratch) of the architecture the
    mask leaves (channel masks: the narrower one's own init, checkpoints.build_for_mask)."""
    source = {
        "init": paths.rewind_point(),
        "finetune": paths.trained_weights(pruned_from(hp, round_)),
        "scratch": paths.init_checkpoint(),
    }[hp.rewind.target]
    model, checkpoint = checkpoints.load_model(source)
    mask = masks.load(paths.mask(round_), model)
    if hp.rewind.target == "scratch":
        seed = controls.control_seed(hp.seed, "scratch", round_)
        model = checkpoints.build_for_mask(checkpoint["model"], seed, mask)
    masks.apply(model, mask)
    _, start_iteration = retrain_schedule(hp, model, mask)
    save_weights(
        paths.start_weights(round_), model, hp, round_=round_, iteration=start_iteration, parents=[source, paths.mask(round_)]
    )
