"""evaluate@r (and round 0 in train, a control in its own stage): a branch's metrics."""

from lottery import checkpoints, curves, devices, masks, paths, records, tracking, training, weight_agnostic
from lottery.factorize import layers, report
from lottery.io import read_json, write_json, write_text
from lottery.steps.common import test_split


def evaluate(hp, round_, test=None, control=None):
    """Round r's metrics (or a control's): test accuracy and loss, early stopping, sparsity, and
    the mask's weight-agnostic accuracies (params weight_agnostic; signs from the lineage's θ0).
    A factorized round's weights remaining count its factors against the dense layers, and it
    reports each factorized layer's rank."""
    model, _ = checkpoints.load_model(paths.trained_weights(round_, control))
    mask = masks.load(paths.mask(round_, control), model)
    check_pruned_weights_are_zero(model, mask)
    device = devices.prepare(hp.train)
    test = (test or test_split(hp)).to(device)
    test_loss, test_accuracy = training.evaluate(model.to(device), test)
    log = read_json(paths.training_log(round_, control))
    sparsity = report.sparsity_report(model, mask)
    ranks = layers.ranks(model)
    metrics = {
        "round": round_,
        "weights_remaining": sparsity["weights_remaining"],
        "weights_remaining_per_layer": {n: layer["weights_remaining"] for n, layer in sparsity["layers"].items()},
        "final_test_accuracy": test_accuracy,
        "final_test_loss": test_loss,
        **({"ranks_per_layer": ranks} if ranks else {}),
        **log["summary"],
        **_weight_agnostic(hp, model, mask, test, device),
    }
    write_json(paths.round_metrics(round_, control), metrics)
    write_text(paths.curve_plot_data(round_, control), curves.to_csv(log["curve"]))
    tracking.publish(hp, records.trained(hp, round_, control), records.evaluated(hp, round_, control))


def _weight_agnostic(hp, model, mask, test, device):
    if not hp.weight_agnostic.values:
        return {}
    theta0, _ = checkpoints.load_model(paths.init_checkpoint())
    return weight_agnostic.evaluate(
        model, mask, test, hp.weight_agnostic.values, hp.weight_agnostic.signs, signs_from=theta0.to(device)
    )


def check_pruned_weights_are_zero(model, mask):
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        alive = params[name].detach()[~keep]
        if alive.numel() and bool(alive.ne(0).any()):
            raise AssertionError(f"{name}: {int(alive.ne(0).sum())} pruned weights are not zero")
