"""What each DVC stage does, as plain functions of the hyperparameters and the round.

Stage scripts only parse arguments and call these; tests call them without DVC.
"""

import torch

from lottery import checkpoints, controls, data, masks, models, paths, pruning, report, tracking, training
from lottery.io import read_json, write_json, write_text


def fetch_data(hp):
    data.fetch(hp.data, paths.dataset_root(hp.data.dataset))


def init(hp):
    """θ0 of the lineage, and its MLflow parent run."""
    spec = data.DATASETS[hp.data.dataset]
    model = models.build(hp.model.name, spec.input_shape, spec.num_classes, seed=hp.seed)
    _save_weights(paths.init_checkpoint(), model, hp, round_=0, iteration=0, parents=[])
    tracking.open_lineage(hp)


def train_dense(hp):
    """Round 0: train the dense network; keep θk for late rewinding; evaluate like any round."""
    model, _ = checkpoints.load_model(paths.init_checkpoint())
    mask = masks.ones(model)
    splits = _splits(hp)
    result = training.train(model, mask, splits, hp.train, hp.seed, snapshot_at=hp.rewind.iteration)
    rewind_model, _ = checkpoints.load_model(paths.init_checkpoint())
    rewind_model.load_state_dict(result.snapshot)
    _save_weights(
        paths.rewind_point(), rewind_model, hp, round_=0, iteration=hp.rewind.iteration, parents=[paths.init_checkpoint()]
    )
    masks.save(mask, paths.mask(0))
    _save_training(hp, 0, model, result, parents=[paths.init_checkpoint()])
    evaluate(hp, 0, splits=splits)


def prune(hp, round_):
    """Round r's mask: round r-1's mask less p% of its remaining weights (iterative), or the dense
    network pruned at once to round r's sparsity (oneshot)."""
    source = 0 if hp.prune.schedule == "oneshot" else round_ - 1
    trained, _ = checkpoints.load_model(paths.trained_weights(source))
    previous = masks.load(paths.mask(source), trained)
    mask = pruning.prune(hp.prune, trained, previous, seed=hp.seed + round_, rounds=round_ - source)
    sparsity = masks.sparsity_report(mask, trained.prunable_kinds())
    masks.save(mask, paths.mask(round_))
    write_json(paths.sparsity_report(round_), sparsity)
    rates = pruning.layer_rates(trained, hp.prune)
    with tracking.round_run(hp, round_, "prune") as run:
        params = {
            "round": round_,
            "prune.strategy": hp.prune.strategy,
            "prune.scope": hp.prune.scope,
            "prune.schedule": hp.prune.schedule,
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
    _save_weights(
        paths.start_weights(round_),
        model,
        hp,
        round_=round_,
        iteration=hp.rewind.iteration,
        parents=[paths.rewind_point(), paths.mask(round_)],
    )


def retrain(hp, round_):
    """Train the masked network from the rewind point with the dense run's schedule."""
    model, _ = checkpoints.load_model(paths.start_weights(round_))
    mask = masks.load(paths.mask(round_), model)
    result = training.train(model, mask, _splits(hp), hp.train, hp.seed, start_iteration=hp.rewind.iteration)
    _save_training(hp, round_, model, result, parents=[paths.start_weights(round_), paths.mask(round_)])


def control(hp, round_, name):
    """A control branch of round r: its start weights and mask, trained and evaluated like the ticket."""
    theta, checkpoint = checkpoints.load_model(paths.rewind_point())
    ticket_mask = masks.load(paths.mask(round_), theta)
    model, mask = controls.build(
        name, theta, checkpoint["model"], ticket_mask, hp.seed, round_, same_sign=hp.controls.same_sign
    )
    masks.save(mask, paths.mask(round_, name))
    splits = _splits(hp)
    result = training.train(model, mask, splits, hp.train, hp.seed, start_iteration=hp.rewind.iteration)
    _save_training(hp, round_, model, result, parents=[paths.rewind_point(), paths.mask(round_)], control=name)
    evaluate(hp, round_, splits=splits, control=name)


def evaluate(hp, round_, splits=None, control=None):
    """Round r's metrics (or a control's): test accuracy and loss, early stopping, sparsity."""
    model, _ = checkpoints.load_model(paths.trained_weights(round_, control))
    mask = masks.load(paths.mask(round_, control), model)
    check_pruned_weights_are_zero(model, mask)
    splits = splits or _splits(hp)
    device = training.device_for(hp.train.device)
    test_loss, test_accuracy = training.evaluate(model.to(device), splits.test.to(device))
    log = read_json(paths.training_log(round_, control))
    sparsity = masks.sparsity_report(mask, model.prunable_kinds())
    metrics = {
        "round": round_,
        "weights_remaining": sparsity["weights_remaining"],
        "weights_remaining_per_layer": {n: layer["weights_remaining"] for n, layer in sparsity["layers"].items()},
        "final_test_accuracy": test_accuracy,
        "final_test_loss": test_loss,
        **log["summary"],
    }
    write_text(paths.curve_plot_data(round_, control), report.curve_csv(log["curve"]))
    stage = "control" if control else "evaluate" if round_ else "train"
    with tracking.round_run(hp, round_, stage, control=control) as run:
        tracking.publish_metrics(paths.round_metrics(round_, control), metrics, run)
        tracking.guarded(run.log_curve, log["curve"])
        tracking.guarded(run.log, tags={tracking.MASK_DIGEST_TAG: masks.digest(mask)})


def summarize(hp):
    """All rounds and controls in one table and figure; the lineage in MLflow completed from DVC
    outputs; the smallest matching ticket registered as a model."""
    measurements = {}
    for round_, name in hp.branches():
        measurements.setdefault(name or report.TICKET, {})[round_] = [read_json(paths.round_metrics(round_, name))]
    summary = report.summarize(measurements, hp.report.tolerance)
    write_json(paths.summary(), summary)
    write_text(paths.rounds_plot_data(), report.rounds_csv(summary))
    report.figure(summary, paths.rounds_figure())
    sync(hp, stage="report")
    ticket = summary["smallest_matching_ticket"]
    if hp.tracking.registered_model and ticket:
        model, _ = checkpoints.load_model(paths.trained_weights(ticket["round"]))
        tracking.guarded(tracking.register_ticket, hp, model, ticket["round"])
    print(report.format_table(summary))


def sync(hp, stage="sync"):
    """Complete the lineage's MLflow runs from the DVC outputs in the workspace.

    Idempotent: a run is created only when missing, and results and artifacts are logged only
    where absent, so it can run after every stage restored from DVC's cache or any tracking outage.
    """
    round_run_ids = {}
    for round_, name in hp.branches():
        if not paths.round_metrics(round_, name).exists():
            continue
        with tracking.round_run(hp, round_, stage, control=name) as run:
            tracking.guarded(_complete_run, run, round_, name)
            if name is None:
                round_run_ids[round_] = run.run_id
    with tracking.parent_run(hp) as run:
        if paths.summary().exists():
            smallest = {"smallest_matching_ticket": read_json(paths.summary())["smallest_matching_ticket"] or {}}
            tracking.guarded(run.log, metrics=dict(tracking.numeric_metrics(smallest)))
        for artifact in (paths.rounds_figure(), paths.summary()):
            if artifact.exists():
                tracking.guarded(run.log_artifact_once, artifact)
        tracking.write_lineage_file(paths.lineage_file(), run.run_id, round_run_ids, hp)
    return round_run_ids


def _complete_run(run, round_, name):
    if not run.has_results():
        run.log(metrics=dict(tracking.numeric_metrics(read_json(paths.round_metrics(round_, name)))))
        run.log_curve(report.read_curve_csv(paths.curve_plot_data(round_, name)))
    artifacts = [paths.mask(round_, name)] + ([paths.sparsity_report(round_)] if round_ and not name else [])
    for artifact in artifacts:
        if artifact.exists():
            run.log_artifact_once(artifact)
    if paths.mask(round_, name).exists():
        mask = torch.load(paths.mask(round_, name), weights_only=True)
        run.log(tags={tracking.MASK_DIGEST_TAG: masks.digest(mask)})


def run_lineage(hp):
    """Every stage of the lineage in-process, in the order `dvc repro` runs them, without DVC."""
    init(hp)
    train_dense(hp)
    for round_ in range(1, hp.rounds + 1):
        prune(hp, round_)
        rewind(hp, round_)
        retrain(hp, round_)
        evaluate(hp, round_)
        for name in hp.controls.run:
            control(hp, round_, name)
    summarize(hp)


def check_pruned_weights_are_zero(model, mask):
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        alive = params[name].detach()[~keep]
        if alive.numel() and bool(alive.ne(0).any()):
            raise AssertionError(f"{name}: {int(alive.ne(0).sum())} pruned weights are not zero")


def _splits(hp):
    return data.load(hp.data, paths.dataset_root(hp.data.dataset))


def _save_weights(path, model, hp, round_, iteration, parents):
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
        parents=parents,
    )


def _save_training(hp, round_, model, result, parents, control=None):
    trained = paths.trained_weights(round_, control)
    _save_weights(trained, model, hp, round_=round_, iteration=hp.train.iterations, parents=parents)
    write_json(paths.training_log(round_, control), {"curve": result.curve, "summary": result.summary()})
