"""train: round 0, the dense network (stopping at the Early-Bird ticket when searching for one)."""

import contextlib

from lottery import callbacks, checkpoints, early_bird, masks, paths, quantize, records, resume, slimming, tracking, training
from lottery.errors import ParamsError
from lottery.io import write_json
from lottery.steps.common import save_training, save_weights, splits as load_splits
from lottery.steps.evaluate import evaluate


def train_dense(hp):
    """Train the dense network; keep θk for late rewinding; evaluate it like any round."""
    with resume.kept_until_done(hp, "train", inputs=[paths.init_checkpoint()]) as saves:
        _train_dense(hp, saves)


def _train_dense(hp, saves):
    model, _ = checkpoints.load_model(paths.init_checkpoint())
    mask = masks.ones(model)
    splits = load_splits(hp)
    search = early_bird.Search(hp.early_bird.epsilon, hp.early_bird.queue) if hp.early_bird.enabled else None
    snapshot = callbacks.Snapshot(hp.rewind.iteration)
    plug_ins = [snapshot, slimming.BatchNormL1(model, hp.train.bn_l1)]
    plug_ins += [early_bird.SearchCallback(search, hp.prune, hp.seed + 1)] if search else []
    bits = hp.early_bird.quantize_bits if search else 0
    with quantize.fake_quantized(model, bits) if bits else contextlib.nullcontext():
        result = training.train(model, mask, splits, hp.train, hp.seed, callbacks=plug_ins, saves=saves)
    if snapshot.weights is None:
        raise ParamsError(
            f"rewind.iteration = {hp.rewind.iteration}: the Early-Bird search stopped training at "
            f"iteration {result.iterations}, before it (lower rewind.iteration)"
        )
    rewind_model, _ = checkpoints.load_model(paths.init_checkpoint())
    rewind_model.load_state_dict(snapshot.weights)
    save_weights(
        paths.rewind_point(), rewind_model, hp, round_=0, iteration=hp.rewind.iteration, parents=[paths.init_checkpoint()]
    )
    masks.save(mask, paths.mask(0))
    save_training(hp, 0, model, result, parents=[paths.init_checkpoint()], iterations=result.iterations)
    _write_early_bird(hp, search, model, result, training.iterations_per_epoch(hp.train, splits))
    evaluate(hp, 0, test=splits.test)


def _final_mask(hp, search, model, result, per_epoch):
    """The channel vector prune@1 draws from the final weights: the search's last mask, unless
    training ran on past the last whole epoch (no ticket, and a budget of part epochs)."""
    if search.history and result.iterations % per_epoch == 0:
        return search.history[-1]
    return early_bird.draw(model, hp.prune, hp.seed + 1)


def _write_early_bird(hp, search, model, result, per_epoch):
    """metrics/early_bird.json and plots/early_bird/ (written, if empty, without a search, since
    they are DVC outputs of the train stage)."""
    plots = paths.early_bird_plots()
    plots.mkdir(parents=True, exist_ok=True)
    if search is None:
        write_json(paths.early_bird_report(), {"enabled": False})
        write_json(plots / "distances.json", [])
        return
    final = _final_mask(hp, search, model, result, per_epoch)
    matrix = early_bird.distance_matrix(search.history)
    found = search.found_epoch is not None
    summary = {
        "enabled": True,
        "found": found,
        "epoch": search.found_epoch,
        "epochs_trained": len(search.history),
        "epoch_budget": hp.train.iterations / per_epoch,
        "iterations_trained": result.iterations,
        "iterations_per_epoch": per_epoch,
        "ratio": hp.prune.rate,
        "epsilon": hp.early_bird.epsilon,
        "queue": hp.early_bird.queue,
        "quantize_bits": hp.early_bird.quantize_bits,
        "mask_channels": int(final.numel()),
        "mask_channels_kept": int(final.sum()),
        "mask_sha256": early_bird.digest(final),
        "distances": search.distances,
    }
    if not found:
        print(f"early bird: no ticket within ε = {hp.early_bird.epsilon} in {len(search.history)} epochs; prune@1 draws from the final weights")
    write_json(paths.early_bird_report(), summary)
    write_json(plots / "distances.json", matrix)
    if matrix:
        early_bird.heatmap(matrix, hp.early_bird.epsilon, search.found_epoch, plots / "heatmap.png")
    tracking.publish(hp, records.early_bird(hp))
