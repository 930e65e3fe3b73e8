"""Supermasks of frozen random weights (edge-popup), weight-agnostic evaluation, and the model
inits they use: unit checks, then a tiny real-MNIST supermask lineage chained in-process."""

import copy
import json
import math

import mlflow
import pytest
import torch
from torch import nn

from lottery import checkpoints, data, identity, lineage, lineage_catalog, masks, paths, supermask, validation, weight_agnostic
from lottery.models import catalog
from lottery.errors import ParamsError
from lottery.pruning import driver, rates, selection
from tests.conftest import default_params, lineage_in_process, tiny_params, with_overrides

SUPERMASK = {
    "prune.strategy": "edge_popup",
    "model.init": "signed_kaiming_constant",
    "supermask.iterations": 100,
    "compact.latency_repeats": 2,
}


def lenet(width=1.0, init="glorot", seed=0, input_shape=(1, 28, 28), classes=10):
    return catalog.build("lenet_300_100", input_shape, classes, seed=seed, width=width, init=init)


def test_signed_kaiming_constant_is_plus_or_minus_the_kaiming_std_with_mixed_signs():
    model = lenet(init="signed_kaiming_constant")
    for name, module in (("layers.1", model.layers[1]), ("layers.3", model.layers[3])):
        std = math.sqrt(2 / module.weight.shape[1])
        assert torch.allclose(module.weight.abs(), torch.full_like(module.weight, std)), name
        assert 0.45 < float((module.weight > 0).float().mean()) < 0.55, name
        assert not module.bias.any()


def test_kaiming_normal_has_the_fan_in_variance_and_glorot_the_default_one():
    kaiming, glorot = lenet(init="kaiming_normal").layers[1].weight, lenet().layers[1].weight
    assert float(kaiming.detach().std()) == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    assert float(glorot.detach().std()) == pytest.approx(math.sqrt(2 / (784 + 300)), rel=0.02)
    # The same generator draws: Kaiming is the Glorot draw rescaled, so the signs agree.
    assert torch.equal(kaiming.sign(), glorot.sign())


def test_a_wider_lenet_scales_both_hidden_layers_and_its_spec_rebuilds_its_init():
    model = lenet(width=2.0, init="kaiming_normal")
    assert [m.out_features for m in model.layers if isinstance(m, nn.Linear)] == [600, 200, 10]
    spec = checkpoints.model_spec("lenet_300_100", (1, 28, 28), 10, 2.0, "kaiming_normal")
    rebuilt = checkpoints.build(spec, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))
    assert "init" not in checkpoints.model_spec("lenet_300_100", (1, 28, 28), 10, 1.0)


@pytest.mark.parametrize("ties", [False, True])
def test_keep_top_keeps_exactly_the_layerwise_count_of_the_highest_scores(ties):
    generator = torch.Generator().manual_seed(0)
    score = torch.rand(50, 40, generator=generator)
    if ties:
        score = (score * 4).floor()  # four values only: the threshold falls inside a tie
    keep = torch.rand(50, 40, generator=generator) > 0.3
    drop = round(0.2 * int(keep.sum()))
    kept = selection.keep_top(score, keep, drop)
    assert int(kept.sum()) == int(keep.sum()) - drop
    assert not bool((kept & ~keep).any())  # pruned weights stay pruned
    assert float(score[kept].min()) >= float(score[keep & ~kept].max())
    # The same mask as the layerwise pruning of these scores.
    assert torch.equal(kept, selection.prune_lowest(score, keep, 0.2))


@pytest.mark.parametrize("order", ["random", "ties", "ascending", "descending"])
def test_kth_smallest_is_torch_kthvalue(order):
    generator = torch.Generator().manual_seed(1)
    values = torch.rand(100_000, generator=generator)
    values = {
        "random": values,
        "ties": (values * 7).floor(),
        "ascending": values.sort().values,
        "descending": values.sort(descending=True).values,
    }[order]
    for k in (1, 777, 33_333, 50_000, 99_999, 100_000):
        assert selection.kth_smallest(values, k) == torch.kthvalue(values, k).values, k


def test_drop_counts_follow_the_layer_rates_compounded_over_rounds(make_hp):
    hp = make_hp(**{"prune.strategy": "edge_popup"})
    model = lenet()
    mask = masks.ones(model)
    by_layer = rates.layer_rates(model, hp.prune)
    drop = rates.drop_counts(mask, by_layer, rounds=3)
    assert drop["layers.1.weight"] == round((1 - 0.8**3) * 784 * 300)
    assert drop["layers.5.weight"] == round((1 - 0.9**3) * 100 * 10)


def test_the_straight_through_gradient_reaches_each_score_through_its_magnitude():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 6, generator=generator)
    score = supermask.initial_scores(weight, generator).requires_grad_()
    candidates = torch.ones(4, 6, dtype=torch.bool)
    x = torch.randn(3, 6, generator=generator)
    effective = supermask.effective_weights({"w": weight}, {"w": score}, {"w": candidates}, {"w": 12}, 1.0)["w"]
    keep = selection.keep_top(score.detach().abs(), candidates, 12)
    assert torch.equal(effective.detach(), weight * keep)  # the forward pass uses exactly the kept weights
    (x @ effective.T).square().sum().backward()
    upstream = 2 * (x @ (weight * keep).T).T @ x  # d loss / d effective weight
    expected = upstream * weight * score.detach().sign()
    assert torch.allclose(score.grad, expected, atol=1e-5)
    assert bool((score.grad[~keep] != 0).any())  # pruned weights' scores learn too: they can come back


@pytest.fixture(scope="module")
def mnist_splits(mnist_root):
    hp = validation.from_dict(with_overrides(default_params(), {"data.train_subset": 2000, "data.test_subset": 1000}))
    return data.load(hp.data, mnist_root)


@pytest.mark.parametrize("agnostic", [False, True])
def test_score_training_leaves_every_weight_bit_identical_and_beats_its_starting_mask(mnist_splits, agnostic):
    hp = validation.from_dict(
        with_overrides(default_params(), {**SUPERMASK, "supermask.iterations": 150, "supermask.weight_agnostic": agnostic})
    )
    model = lenet(init="signed_kaiming_constant")
    before = copy.deepcopy(model.state_dict())
    dense = masks.ones(model)
    inputs = driver.SearchInputs(weights=model, splits=mnist_splits, hp=hp)
    mask = driver.prune(hp.prune, model, dense, seed=1, rounds=2, search_inputs=inputs)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    drop = rates.drop_counts(dense, rates.layer_rates(model, hp.prune), rounds=2)
    assert {name: int(keep.sum()) for name, keep in mask.items()} == {n: k.numel() - drop[n] for n, k in dense.items()}
    # The search's first selection, from the untrained scores, is a random mask of the same sizes.
    start = {n: selection.keep_top(supermask.initial_scores(model.get_parameter(n), torch.Generator().manual_seed(1)).abs(), k, drop[n]) for n, k in dense.items()}
    values = hp.weight_agnostic.values
    searched = weight_agnostic.evaluate(model, mask, mnist_splits.test, values, "init")["weight_agnostic_mean_accuracy"]
    random_start = weight_agnostic.evaluate(model, start, mnist_splits.test, values, "init")["weight_agnostic_mean_accuracy"]
    assert searched > random_start + 0.3, (searched, random_start)


def test_weight_agnostic_evaluation_computes_the_hand_computed_network():
    # LeNet on 2 inputs at width 0.01: 2 -> 3 -> 1 -> 2, biases (which take no part) set non-zero.
    model = lenet(width=0.01, seed=3, input_shape=(1, 1, 2), classes=2)
    first, second, output = (m for m in model.layers if isinstance(m, nn.Linear))
    with torch.no_grad():
        for layer in (first, second, output):
            layer.bias.fill_(5.0)
        first.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))
        second.weight.copy_(torch.tensor([[1.0, -1.0, 1.0]]))
        output.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    mask = {
        "layers.1.weight": torch.tensor([[True, False], [True, True], [False, True]]),
        "layers.3.weight": torch.tensor([[True, True, False]]),
        "layers.5.weight": torch.tensor([[True], [True]]),
    }
    x = torch.tensor([[2.0, 1.0]])

    def by_hand(w, signed):
        s = (lambda v: v) if signed else (lambda v: 1.0)
        relu = lambda v: max(v, 0.0)  # noqa: E731
        h = [relu(w * s(1.0) * 2.0), relu(w * s(-1.0) * 2.0 + w * s(1.0) * 1.0), relu(w * s(1.0) * 1.0)]
        g = relu(w * s(1.0) * h[0] + w * s(-1.0) * h[1])
        return [w * s(1.0) * g, w * s(-1.0) * g]

    for signed, mode in ((True, "init"), (False, "none")):
        factors = weight_agnostic.signs(model, mask, mode)
        for w in (-2.0, -0.5, 1.0):
            logits = weight_agnostic.shared_weight_model(model, factors, w)(x)
            assert logits.tolist() == [pytest.approx(by_hand(w, signed))], (mode, w)


def test_every_positive_shared_weight_predicts_alike_and_so_does_every_negative_one(mnist_splits):
    model = lenet(seed=5)
    mask = driver.prune(validation.from_dict(default_params()).prune, model, masks.ones(model), seed=0, rounds=4)
    found = weight_agnostic.evaluate(model, mask, mnist_splits.test, [-2.0, -1.0, -0.5, 0.5, 1.0, 2.0], "init")
    accuracy = found["weight_agnostic_accuracy"]
    assert accuracy["w0.5"] == accuracy["w1"] == accuracy["w2"]
    assert accuracy["w-0.5"] == accuracy["w-1"] == accuracy["w-2"]
    assert found["weight_agnostic_mean_accuracy"] == pytest.approx((accuracy["w1"] + accuracy["w-1"]) / 2)
    assert found["weight_agnostic_best_accuracy"] == max(accuracy.values())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rewind.target": "finetune"}, "rewind.target = 'finetune': prune.strategy 'edge_popup' searches a mask"),
        ({"prune.scope": "global"}, "prune.scope = 'global': edge_popup keeps each layer's top scores"),
        ({"prune.granularity": "channel"}, "prune.granularity = 'channel': edge_popup prunes weights"),
        ({"model.name": "vgg11", "model.width": 0.125}, "model.name = 'vgg11': has BatchNorm"),
        ({"supermask.weight_agnostic": True, "weight_agnostic.values": []}, "supermask.weight_agnostic = true"),
        ({"supermask.iterations": 0}, "supermask.iterations = 0: must be >= 1"),
        ({"weight_agnostic.values": [1.0, 0.0]}, "weight_agnostic.values[1] = 0: a shared weight of 0"),
        ({"weight_agnostic.signs": "random"}, "weight_agnostic.signs = 'random': unknown"),
        ({"model.init": "orthogonal"}, "model.init = 'orthogonal': unknown"),
    ],
)
def test_bad_supermask_params_raise_one_line_naming_the_key(overrides, message):
    with pytest.raises(ParamsError) as err:
        validation.from_dict(with_overrides(default_params(), {**SUPERMASK, **overrides}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_supermask_settings_name_the_lineage_only_when_the_search_runs():
    def params_hash(**overrides):
        return identity.params_hash(validation.from_dict(with_overrides(default_params(), overrides)))

    assert params_hash() == params_hash(**{"supermask.lr": 0.5, "weight_agnostic.signs": "none"})
    assert params_hash(**SUPERMASK) != params_hash(**{**SUPERMASK, "supermask.lr": 0.5})
    assert params_hash(**SUPERMASK) == params_hash(**{**SUPERMASK, "weight_agnostic.signs": "none"})
    agnostic = {**SUPERMASK, "supermask.weight_agnostic": True}
    assert params_hash(**agnostic) != params_hash(**{**agnostic, "weight_agnostic.values": [1.0, -1.0]})
    assert params_hash() != params_hash(**{"model.init": "kaiming_normal"})


SUPERMASK_LINEAGE = {**SUPERMASK, "controls.run": ["random_sparse"]}


@pytest.fixture(scope="module")
def built_supermask_lineage(tmp_path_factory, mnist_root):
    """A tiny supermask lineage, run once for the two tests that read it: its folder."""
    with lineage_in_process(tmp_path_factory.mktemp("supermask"), mnist_root, SUPERMASK_LINEAGE) as folder:
        yield folder


@pytest.fixture
def supermask_lineage(built_supermask_lineage, mnist_root, monkeypatch):
    """Its params, with its folder as the working directory and its store as the tracking store."""
    monkeypatch.chdir(built_supermask_lineage)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{built_supermask_lineage / 'mlflow.db'}")
    return validation.from_dict(tiny_params(mnist_root, SUPERMASK_LINEAGE))


def test_a_supermask_lineage_never_trains_a_weight_and_reports_its_weight_agnostic_accuracy(supermask_lineage):
    theta0 = checkpoints.load(paths.init_checkpoint())["state_dict"]
    for round_ in range(1, supermask_lineage.rounds + 1):
        mask = torch.load(paths.mask(round_), weights_only=True)
        trained, _ = checkpoints.load_model(paths.trained_weights(round_))
        for name, value in trained.state_dict().items():
            expected = theta0[name] * mask[name] if name in mask else theta0[name]
            assert torch.equal(value, expected), (round_, name)
        metrics = json.loads(paths.round_metrics(round_).read_text())
        assert metrics["weights_remaining_per_layer"]["layers.1.weight"] == pytest.approx(0.8**round_, abs=1e-4)
        assert metrics["early_stop_iteration"] == 0
        # Signed-constant weights are a shared weight times θ0's signs: every w > 0 is the supermask itself.
        assert metrics["weight_agnostic_accuracy"]["w1"] == metrics["final_test_accuracy"]
        control = json.loads(paths.round_metrics(round_, "random_sparse").read_text())
        assert metrics["final_test_accuracy"] > control["final_test_accuracy"] + 0.2
    summary = json.loads(paths.summary().read_text())
    assert summary["rounds"][1]["ticket"]["weight_agnostic_mean_accuracy"]["n"] == 1
    assert "weight_agnostic_mean_accuracy" in summary["dense"]
    assert "ticket_weight_agnostic_best_accuracy" in paths.rounds_plot_data().read_text().splitlines()[0]


def test_a_supermask_lineage_logs_the_weight_agnostic_accuracies_to_mlflow(supermask_lineage):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(supermask_lineage.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`lottery.kind` = 'round' and tags.`lottery.round` = '2'")
    (run,) = runs
    metrics = json.loads(paths.round_metrics(2).read_text())
    assert run.data.metrics["weight_agnostic_mean_accuracy"] == metrics["weight_agnostic_mean_accuracy"]
    assert run.data.metrics["weight_agnostic_accuracy.w-0.5"] == metrics["weight_agnostic_accuracy"]["w-0.5"]
    assert run.data.params["prune.strategy"] == "edge_popup"
    # `lottery lineage show` reads them back from the store.
    parent = json.loads(paths.lineage_file().read_text())["parent_run_id"]
    found = lineage_catalog.LineageCatalog(mlflow.get_tracking_uri(), supermask_lineage.tracking.experiment).find(parent)
    shown = {row["round"]: row for row in lineage.round_table(found)}
    assert shown[2]["weight_agnostic_best_accuracy"] == metrics["weight_agnostic_best_accuracy"]


def test_batchnorm_takes_no_part_in_a_shared_weight_network_it_normalises_each_batch():
    model = catalog.build("vgg11", (1, 28, 28), 10, seed=0, width=0.125)
    with torch.no_grad():  # trained-looking scales, shifts and statistics, which must not count
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(3.0), module.bias.fill_(-1.0), module.running_mean.fill_(5.0)
    factors = weight_agnostic.signs(model, masks.ones(model), "init")
    shared = weight_agnostic.shared_weight_model(model, factors, 1.0)
    norms = [module for module in shared.modules() if isinstance(module, nn.BatchNorm2d)]
    assert norms and all(bool((m.weight == 1).all()) and not m.bias.any() and m.running_mean is None for m in norms)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    evaluated = shared.eval()(x)
    assert torch.allclose(evaluated, shared.train()(x))  # the batch's own statistics, in eval mode too
    doubled = weight_agnostic.shared_weight_model(model, factors, 2.0).eval()(x)
    assert torch.equal(evaluated.argmax(1), doubled.argmax(1))
