"""control@r-c: a control branch of round r, trained and evaluated like the ticket."""

from lottery import checkpoints, controls, masks, paths, resume, slimming, training
from lottery.steps.common import save_training, splits as load_splits
from lottery.steps.evaluate import evaluate
from lottery.steps.schedule import retrain_schedule


def control(hp, round_, name):
    """The control's start weights and mask (from the round's mask), trained and evaluated."""
    inputs = [paths.rewind_point(), paths.mask(round_)]
    with resume.kept_until_done(hp, f"control@{round_}-{name}", inputs) as saves:
        theta, checkpoint = checkpoints.load_model(paths.rewind_point())
        ticket_mask = masks.load(paths.mask(round_), theta)
        model, mask = controls.build(
            name, theta, checkpoint["model"], ticket_mask, hp.seed, round_, same_sign=hp.controls.same_sign
        )
        splits = load_splits(hp)
        schedule, start_iteration = retrain_schedule(hp, model, mask)
        plug_ins = [slimming.BatchNormL1(model, schedule.bn_l1)]
        result = training.train(
            model, mask, splits, schedule, hp.seed, start_iteration=start_iteration, callbacks=plug_ins, saves=saves
        )
        masks.save(mask, paths.mask(round_, name))  # after training: data-parallel followers end there
        save_training(hp, round_, model, result, parents=inputs, iterations=schedule.iterations, control=name)
        evaluate(hp, round_, test=splits.test, control=name)
