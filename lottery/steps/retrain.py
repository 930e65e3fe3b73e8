"""retrain@r: the masked network trained from its start weights (it logs nothing: evaluate@r
publishes its training record)."""

from lottery import checkpoints, masks, paths, resume, slimming, training
from lottery.factorize import decay
from lottery.steps.common import save_training, splits
from lottery.steps.schedule import retrain_schedule


def retrain(hp, round_):
    """Train the masked network from its start weights on the rewind target's schedule."""
    inputs = [paths.start_weights(round_), paths.mask(round_)]
    with resume.kept_until_done(hp, f"retrain@{round_}", inputs) as saves:
        model, _ = checkpoints.load_model(paths.start_weights(round_))
        mask = masks.load(paths.mask(round_), model)
        schedule, start_iteration = retrain_schedule(hp, model, mask)
        plug_ins = [slimming.BatchNormL1(model, schedule.bn_l1)]
        if hp.factorize.frobenius_decay:
            plug_ins.append(decay.FrobeniusDecay(model, schedule.weight_decay))
        result = training.train(
            model, mask, splits(hp), schedule, hp.seed, start_iteration=start_iteration, callbacks=plug_ins, saves=saves
        )
        save_training(hp, round_, model, result, parents=inputs, iterations=schedule.iterations)
