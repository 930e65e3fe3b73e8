"""What each DVC stage does, as plain functions of the hyperparameters and the round.

Stage scripts only parse arguments and call these; tests call them without DVC.
"""

import contextlib
import dataclasses

import torch

from lottery import (
    channels,
    checkpoints,
    compression,
    controls,
    data,
    early_bird,
    masks,
    paths,
    pruning,
    quantize,
    report,
    tracking,
    training,
)
from lottery.io import read_json, write_json, write_text


def fetch_data(hp):
    data.fetch(hp.data, paths.dataset_root(hp.data.dataset))


def init(hp):
    """θ0 of the lineage, and its MLflow parent run."""
    model = checkpoints.build(_model_spec(hp), seed=hp.seed)
    _save_weights(paths.init_checkpoint(), model, hp, round_=0, iteration=0, parents=[])
    tracking.open_lineage(hp)


def train_dense(hp):
    """Round 0: train the dense network (stopping at the Early-Bird ticket when searching for one);
    keep θk for late rewinding; evaluate like any round."""
    model, _ = checkpoints.load_model(paths.init_checkpoint())
    mask = masks.ones(model)
    splits = _splits(hp)
    search = early_bird.Search(hp.early_bird.epsilon, hp.early_bird.queue) if hp.early_bird.enabled else None
    bits = hp.early_bird.quantize_bits if search else 0
    with quantize.fake_quantized(model, bits) if bits else contextlib.nullcontext():
        result = training.train(
            model,
            mask,
            splits,
            hp.train,
            hp.seed,
            snapshot_at=hp.rewind.iteration,
            at_epoch_end=(lambda model, epoch: search.observe(early_bird.draw(model, hp.prune, hp.seed + 1)))
            if search
            else None,
        )
    if result.snapshot is None:
        raise ValueError(
            f"rewind.iteration = {hp.rewind.iteration}: the Early-Bird search stopped training at "
            f"iteration {result.iterations}, before it"
        )
    rewind_model, _ = checkpoints.load_model(paths.init_checkpoint())
    rewind_model.load_state_dict(result.snapshot)
    _save_weights(
        paths.rewind_point(), rewind_model, hp, round_=0, iteration=hp.rewind.iteration, parents=[paths.init_checkpoint()]
    )
    masks.save(mask, paths.mask(0))
    _save_training(hp, 0, model, result, parents=[paths.init_checkpoint()], iterations=result.iterations)
    _write_early_bird(hp, search, result, training.iterations_per_epoch(hp.train, splits))
    evaluate(hp, 0, splits=splits)


def _write_early_bird(hp, search, result, per_epoch):
    """metrics/early_bird.json and plots/early_bird/ (written, if empty, without a search, since
    they are DVC outputs of the train stage); per-epoch distances and the matrix go to MLflow."""
    plots = paths.early_bird_plots()
    plots.mkdir(parents=True, exist_ok=True)
    if search is None:
        write_json(paths.early_bird_report(), {"enabled": False})
        write_json(plots / "distances.json", [])
        return
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
        "mask_channels": int(search.history[-1].numel()) if search.history else 0,
        "mask_channels_kept": int(search.history[-1].sum()) if search.history else 0,
        "mask_sha256": early_bird.digest(search.history[-1]) if search.history else "",
        "distances": search.distances,
    }
    if not found:
        print(f"early bird: no ticket within ε = {hp.early_bird.epsilon} in {len(search.history)} epochs; prune@1 takes the last mask")
    write_json(paths.early_bird_report(), summary)
    write_json(plots / "distances.json", matrix)
    if matrix:
        early_bird.heatmap(matrix, hp.early_bird.epsilon, search.found_epoch, plots / "heatmap.png")
    with tracking.round_run(hp, 0, "train") as run:
        for epoch, distance in enumerate(search.distances, start=1):
            if distance is not None:
                tracking.guarded(run.log, metrics={"early_bird.distance": distance}, step=epoch)
        scalars = {key: summary[key] for key in ("found", "epochs_trained", "iterations_trained")}
        tracking.guarded(run.log, metrics={f"early_bird.{k}": float(v) for k, v in scalars.items()})
        for artifact in plots.iterdir():
            tracking.guarded(run.log_artifact, artifact)
        tracking.guarded(run.log_artifact, paths.early_bird_report())


def prune(hp, round_):
    """Round r's mask: round r-1's mask less p% of its remaining weights (iterative), or the dense
    network pruned at once to round r's sparsity (oneshot)."""
    source = _pruned_from(hp, round_)
    trained, _ = checkpoints.load_model(paths.trained_weights(source))
    previous = masks.load(paths.mask(source), trained)
    mask = pruning.prune(hp.prune, trained, previous, seed=hp.seed + round_, rounds=round_ - source)
    if hp.early_bird.enabled and source == 0:
        _check_early_bird_mask(trained, mask)
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
            "prune.granularity": hp.prune.granularity,
            "rewind.target": hp.rewind.target,
            "rewind.iteration": hp.rewind.iteration,
        }
        params.update({f"rate.{name}": rate for name, rate in rates.items()})
        tracking.guarded(run.log, params=params, metrics={"weights_remaining": sparsity["weights_remaining"]})
        tracking.guarded(run.log_artifact, paths.mask(round_))
        tracking.guarded(run.log_artifact, paths.sparsity_report(round_))


def _check_early_bird_mask(model, mask):
    drawn = read_json(paths.early_bird_report()).get("mask_sha256")
    if drawn and early_bird.digest(early_bird.channel_vector(model, mask)) != drawn:
        raise AssertionError("prune: the mask differs from the Early-Bird ticket drawn in training")


def rewind(hp, round_):
    """Round r's start weights, pruned weights zeroed: θk (target init, θ0 when k = 0), the trained
    weights the mask was pruned from (finetune), or a fresh init of the same architecture (scratch)."""
    source = {
        "init": paths.rewind_point(),
        "finetune": paths.trained_weights(_pruned_from(hp, round_)),
        "scratch": paths.init_checkpoint(),
    }[hp.rewind.target]
    model, checkpoint = checkpoints.load_model(source)
    if hp.rewind.target == "scratch":
        model = checkpoints.build(checkpoint["model"], seed=controls.control_seed(hp.seed, "scratch", round_))
    mask = masks.load(paths.mask(round_), model)
    masks.apply(model, mask)
    _, start_iteration = retrain_schedule(hp, model, mask)
    _save_weights(
        paths.start_weights(round_), model, hp, round_=round_, iteration=start_iteration, parents=[source, paths.mask(round_)]
    )


def retrain_schedule(hp, model, mask):
    """(train hparams, first iteration) of a round's retraining. init replays the dense run's
    schedule from k; finetune trains at its own constant rate; scratch trains the dense run's
    schedule from 0, stretched for Scratch-B by dense / pruned FLOPs (at most max_budget_factor)."""
    # The sparsity term shapes the dense run that the mask is drawn from, not the retraining.
    dense_schedule = dataclasses.replace(hp.train, bn_l1=0.0)
    if hp.rewind.target == "init":
        return dense_schedule, hp.rewind.iteration
    if hp.rewind.target == "finetune":
        finetune = dataclasses.replace(
            dense_schedule,
            lr=hp.rewind.finetune_lr,
            iterations=hp.rewind.finetune_iterations,
            warmup_iterations=0,
            milestones=[],
        )
        return finetune, 0
    if hp.rewind.scratch_budget == "same":
        return dense_schedule, 0
    factor = min(hp.rewind.max_budget_factor, flops_ratio(model, mask))
    stretched = dataclasses.replace(
        dense_schedule,
        iterations=round(hp.train.iterations * factor),
        milestones=[round(milestone * factor) for milestone in hp.train.milestones],
    )
    return stretched, 0


def flops_ratio(model, mask):
    """Dense FLOPs over the masked model's (channel masks: the compact model's exactly)."""
    return compression.flops(model, model.input_shape) / compression.flops(model, model.input_shape, mask)


def retrain(hp, round_):
    """Train the masked network from its start weights on the rewind target's schedule."""
    model, _ = checkpoints.load_model(paths.start_weights(round_))
    mask = masks.load(paths.mask(round_), model)
    schedule, start_iteration = retrain_schedule(hp, model, mask)
    result = training.train(model, mask, _splits(hp), schedule, hp.seed, start_iteration=start_iteration)
    _save_training(
        hp, round_, model, result, parents=[paths.start_weights(round_), paths.mask(round_)], iterations=schedule.iterations
    )


def control(hp, round_, name):
    """A control branch of round r: its start weights and mask, trained and evaluated like the ticket."""
    theta, checkpoint = checkpoints.load_model(paths.rewind_point())
    ticket_mask = masks.load(paths.mask(round_), theta)
    model, mask = controls.build(
        name, theta, checkpoint["model"], ticket_mask, hp.seed, round_, same_sign=hp.controls.same_sign
    )
    masks.save(mask, paths.mask(round_, name))
    splits = _splits(hp)
    schedule, start_iteration = retrain_schedule(hp, model, mask)
    result = training.train(model, mask, splits, schedule, hp.seed, start_iteration=start_iteration)
    _save_training(
        hp,
        round_,
        model,
        result,
        parents=[paths.rewind_point(), paths.mask(round_)],
        iterations=schedule.iterations,
        control=name,
    )
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


# The bar for "the compact model computes what the masked one does".
EQUIVALENCE_TOLERANCE = 1e-4
LATENCY_BATCHES = (1, 64)


def compact(hp, round_):
    """Round r's ticket made physically small: a channel mask's pruned channels removed from every
    layer (a smaller dense model), or a weight mask's ticket stored sparse. Checked to compute what
    the masked model computes, then measured against the dense model of round 0."""
    model, checkpoint = checkpoints.load_model(paths.trained_weights(round_))
    mask = masks.load(paths.mask(round_), model)
    model.eval()
    probe = _splits(hp).test.x[:256]
    if channels.is_channel_mask(model, mask):
        shipped, sparse_mask = channels.compact(model, mask), None
        spec = _model_spec(hp, compact_of=shipped)
    else:
        shipped, sparse_mask, spec = model, mask, checkpoint["model"]
    _check_equivalent(model, shipped, probe, round_)
    _save_weights(
        paths.compact_model(round_),
        shipped,
        hp,
        round_=round_,
        iteration=checkpoint["iteration"],
        parents=[paths.trained_weights(round_), paths.mask(round_)],
        spec=spec,
        sparse_mask=sparse_mask,
    )
    loaded, _ = checkpoints.load_model(paths.compact_model(round_))
    difference = _check_equivalent(model, loaded.eval(), probe, round_)
    dense, _ = checkpoints.load_model(paths.trained_weights(0))
    measured = compression_report(hp, round_, dense, loaded, mask, sparse_mask is None)
    measured["max_abs_difference"] = difference
    write_json(paths.compression_report(round_), measured)
    with tracking.round_run(hp, round_, "compact") as run:
        tracking.guarded(run.log, metrics=dict(tracking.numeric_metrics({"compression": measured})))
        tracking.guarded(run.log_artifact, paths.compression_report(round_))


def compression_report(hp, round_, dense, shipped, mask, structured):
    """Parameters, FLOPs, bytes on disk and median CPU latency (batch 1 and 64) of the dense model
    and the shipped one, with the FLOPs speedup beside the measured ones."""
    input_shape = dense.input_shape

    def measure(model, path, parameters, flops):
        figures = {"parameters": parameters, "flops": flops, "bytes": compression.file_bytes(path)}
        for batch in LATENCY_BATCHES:
            seconds = compression.latency(model, input_shape, batch, repeats=hp.compact.latency_repeats)
            figures[f"latency_ms_batch_{batch}"] = 1000 * seconds
        return figures

    dense_figures = measure(
        dense, paths.trained_weights(0), compression.parameter_count(dense), compression.flops(dense, input_shape)
    )
    # A sparse file stores only the kept values of its masked tensors.
    pruned = 0 if structured else sum(keep.numel() - int(keep.sum()) for keep in mask.values())
    shipped_parameters = compression.parameter_count(shipped) - pruned
    shipped_flops = compression.flops(shipped, input_shape, None if structured else mask)
    compact_figures = measure(shipped, paths.compact_model(round_), shipped_parameters, shipped_flops)
    report_ = {
        "round": round_,
        "form": "channels_removed" if structured else "sparse_file",
        "dense": dense_figures,
        "compact": compact_figures,
        "flops_speedup": dense_figures["flops"] / compact_figures["flops"],
        "parameter_ratio": compact_figures["parameters"] / dense_figures["parameters"],
        "bytes_ratio": compact_figures["bytes"] / dense_figures["bytes"],
    }
    for batch in LATENCY_BATCHES:
        key = f"latency_ms_batch_{batch}"
        report_[f"measured_speedup_batch_{batch}"] = dense_figures[key] / compact_figures[key]
    return report_


@torch.no_grad()
def _check_equivalent(masked, compact_model, probe, round_):
    difference = (masked(probe) - compact_model(probe)).abs().max().item()
    if difference > EQUIVALENCE_TOLERANCE:
        raise AssertionError(f"round {round_}: the compact model differs from the masked one by {difference:.2e}")
    return difference


def summarize(hp):
    """All rounds and controls in one table and figure; the lineage in MLflow completed from DVC
    outputs; the smallest matching ticket's compact model registered; the compression table and
    the Early-Bird's savings."""
    measurements = {}
    for round_, name in hp.branches():
        measurements.setdefault(name or report.TICKET, {})[round_] = [read_json(paths.round_metrics(round_, name))]
    summary = report.summarize(measurements, hp.report.tolerance)
    summary["early_bird"] = _early_bird_savings(hp)
    write_json(paths.summary(), summary)
    write_text(paths.rounds_plot_data(), report.rounds_csv(summary))
    report.figure(summary, paths.rounds_figure())
    compressions = [read_json(paths.compression_report(round_)) for round_ in range(1, hp.rounds + 1)]
    write_text(paths.compression_plot_data(), report.compression_csv(compressions))
    sync(hp, stage="report")
    ticket = summary["smallest_matching_ticket"]
    if hp.tracking.registered_model and ticket:
        # The compact form: channels removed, or the sparse ticket loaded back to its masked weights.
        model, _ = checkpoints.load_model(paths.compact_model(ticket["round"]))
        tracking.guarded(tracking.register_ticket, hp, model, ticket["round"])
    print(report.format_table(summary))
    print(report.format_compression_table(compressions))
    if summary["early_bird"]:
        print(report.format_early_bird(summary["early_bird"]))


def _early_bird_savings(hp):
    """The Early-Bird's compute against full training, both followed by round 1's retraining."""
    searched = read_json(paths.early_bird_report())
    if not searched["enabled"]:
        return None
    curve = read_json(paths.training_log(1))["curve"]
    flops = read_json(paths.compression_report(1))
    saved = early_bird.savings(
        searched,
        retrain_iterations=curve[-1]["iteration"] - curve[0]["iteration"],
        dense_flops=flops["dense"]["flops"],
        pruned_flops=flops["compact"]["flops"],
        full_iterations=hp.train.iterations,
        batch_size=hp.train.batch_size,
    )
    return {"epoch": searched["epoch"], **saved}


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
        for artifact in (paths.rounds_figure(), paths.summary(), paths.compression_plot_data()):
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
        compact(hp, round_)
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


def _pruned_from(hp, round_):
    """The round whose trained weights round r's mask is pruned from."""
    return 0 if hp.prune.schedule == "oneshot" else round_ - 1


def _model_spec(hp, compact_of=None):
    spec = data.DATASETS[hp.data.dataset]
    return checkpoints.model_spec(hp.model.name, spec.input_shape, spec.num_classes, hp.model.width, compact_of)


def _save_weights(path, model, hp, round_, iteration, parents, spec=None, sparse_mask=None):
    checkpoints.save(
        path,
        model,
        spec=spec or _model_spec(hp),
        round_=round_,
        iteration=iteration,
        params=hp.raw,
        lineage=hp.lineage_hash,
        parents=parents,
        sparse_mask=sparse_mask,
    )


def _save_training(hp, round_, model, result, parents, iterations, control=None):
    trained = paths.trained_weights(round_, control)
    _save_weights(trained, model, hp, round_=round_, iteration=iterations, parents=parents)
    write_json(paths.training_log(round_, control), {"curve": result.curve, "summary": result.summary()})
