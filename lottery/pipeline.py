"""What each DVC stage does, as plain functions of the hyperparameters and the round.

Stage scripts only parse arguments and call these; tests call them without DVC.
"""

import os

import torch

from lottery import checkpoints, data, masks, models, paths, pruning, report, tracking, training
from lottery.io import read_json, write_json, write_text


def fetch_data(hp):
    data.fetch(hp.data, paths.dataset_root(hp.data.dataset))


def init(hp):
    """θ0 of the lineage, and its MLflow parent run."""
    spec = data.DATASETS[hp.data.dataset]
    model = models.build(hp.model.name, spec.input_shape, spec.num_classes, seed=hp.seed)
    _save_weights(paths.init_checkpoint(), model, hp, round_=0, iteration=0)
    with tracking.parent_run(hp):
        pass


def train_dense(hp):
    """Round 0: train the dense network; keep θk for late rewinding; evaluate like any round."""
    model, _ = checkpoints.load_model(paths.init_checkpoint())
    mask = masks.ones(model)
    splits = _splits(hp)
    result = training.train(model, mask, splits, hp.train, hp.seed, snapshot_at=hp.rewind.iteration)
    rewind_model, _ = checkpoints.load_model(paths.init_checkpoint())
    rewind_model.load_state_dict(result.snapshot)
    _save_weights(paths.rewind_point(), rewind_model, hp, round_=0, iteration=hp.rewind.iteration)
    _save_training(hp, 0, model, mask, result)
    evaluate(hp, 0, splits=splits)


def prune(hp, round_):
    """Round r's mask: round r-1's mask less p% of its remaining weights, by the strategy."""
    trained, _ = checkpoints.load_model(paths.trained_weights(round_ - 1))
    previous = masks.load(paths.mask(round_ - 1), trained)
    mask = pruning.prune(hp.prune, trained, previous, seed=hp.seed + round_)
    sparsity = masks.sparsity_report(mask, trained.prunable_kinds())
    masks.save(mask, paths.mask(round_))
    write_json(paths.sparsity_report(round_), sparsity)
    rates = pruning.layer_rates(trained, hp.prune)
    with tracking.round_run(hp, round_, "prune") as run:
        params = {
            "round": round_,
            "prune.strategy": hp.prune.strategy,
            "prune.scope": hp.prune.scope,
            "rewind.iteration": hp.rewind.iteration,
        }
        params.update({f"rate.{name}": rate for name, rate in rates.items()})
        tracking.guarded(run.log, params=params, metrics={"weights_remaining": sparsity["weights_remaining"]})
        tracking.guarded(run.log_artifact, paths.mask(round_))
        tracking.guarded(run.log_artifact, paths.sparsity_report(round_))


def rewind(hp, round_):
    """Round r's start weights: θk (θ0 when k = 0) with the pruned weights zeroed."""
    model, _ = checkpoints.load_model(paths.rewind_point())
    mask = masks.load(paths.mask(round_), model)
    masks.apply(model, mask)
    _save_weights(paths.start_weights(round_), model, hp, round_=round_, iteration=hp.rewind.iteration)


def retrain(hp, round_):
    """Train the masked network from the rewind point with the dense run's schedule."""
    model, _ = checkpoints.load_model(paths.start_weights(round_))
    mask = masks.load(paths.mask(round_), model)
    result = training.train(model, mask, _splits(hp), hp.train, hp.seed, start_iteration=hp.rewind.iteration)
    _save_training(hp, round_, model, mask, result)


def evaluate(hp, round_, splits=None):
    """Round r's metrics: test accuracy and loss of the trained ticket, early stopping, sparsity."""
    model, _ = checkpoints.load_model(paths.trained_weights(round_))
    mask = masks.load(paths.mask(round_), model)
    check_pruned_weights_are_zero(model, mask)
    splits = splits or _splits(hp)
    device = training.device_for(hp.train.device)
    test_loss, test_accuracy = training.evaluate(model.to(device), splits.test.to(device))
    log = read_json(paths.training_log(round_))
    sparsity = masks.sparsity_report(mask, model.prunable_kinds())
    metrics = {
        "round": round_,
        "weights_remaining": sparsity["weights_remaining"],
        "weights_remaining_per_layer": {n: layer["weights_remaining"] for n, layer in sparsity["layers"].items()},
        "final_test_accuracy": test_accuracy,
        "final_test_loss": test_loss,
        **log["summary"],
    }
    write_text(paths.curve_plot_data(round_), report.curve_csv(log["curve"]))
    with tracking.round_run(hp, round_, "evaluate" if round_ else "train") as run:
        tracking.publish_metrics(paths.round_metrics(round_), metrics, run)
        tracking.guarded(run.log_curve, log["curve"])


def summarize(hp):
    """All rounds in one table and figure; the lineage in MLflow completed from DVC outputs."""
    rounds = [read_json(paths.round_metrics(r)) for r in range(hp.rounds + 1)]
    summary = report.summarize(rounds, hp.report.tolerance)
    write_json(paths.summary(), summary)
    write_text(paths.rounds_plot_data(), report.rounds_csv(rounds))
    report.figure(rounds, summary, paths.rounds_figure())
    round_run_ids = {}
    for round_, metrics in enumerate(rounds):
        with tracking.round_run(hp, round_, "report") as run:
            if not tracking.guarded(run.has_results):
                tracking.guarded(run.log, metrics=dict(tracking.numeric_metrics(metrics)))
                tracking.guarded(run.log_curve, report.read_curve_csv(paths.curve_plot_data(round_)))
            round_run_ids[round_] = run.run_id
    with tracking.parent_run(hp) as run:
        tracking.guarded(run.log, metrics=dict(tracking.numeric_metrics({"smallest_matching_ticket": summary["smallest_matching_ticket"] or {}})))
        tracking.guarded(run.log_artifact, paths.rounds_figure())
        tracking.guarded(run.log_artifact, paths.summary())
        tracking.write_lineage_file(paths.lineage_file(), run.run_id, round_run_ids, hp)


def check_pruned_weights_are_zero(model, mask):
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        alive = params[name].detach()[~keep]
        if alive.numel() and bool(alive.ne(0).any()):
            raise AssertionError(f"{name}: {int(alive.ne(0).sum())} pruned weights are not zero")


def _splits(hp):
    return data.load(hp.data, paths.dataset_root(hp.data.dataset))


def _save_weights(path, model, hp, round_, iteration):
    spec = data.DATASETS[hp.data.dataset]
    checkpoints.save(
        path,
        model,
        model_name=hp.model.name,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        round_=round_,
        iteration=iteration,
        params=hp.raw,
        lineage=hp.lineage_hash,
    )


def _save_training(hp, round_, model, mask, result):
    _save_weights(paths.trained_weights(round_), model, hp, round_=round_, iteration=hp.train.iterations)
    if round_ == 0:
        masks.save(mask, paths.mask(0))
    write_json(paths.training_log(round_), {"curve": result.curve, "summary": result.summary()})
