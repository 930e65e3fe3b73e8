import dataclasses

import pytest
import torch

from lottery import callbacks, data, masks, pipeline, training
from lottery.errors import ParamsError
from lottery.models import catalog
from lottery.steps import common


@pytest.fixture
def splits(mnist_root, make_hp):
    return data.load(make_hp().data, mnist_root)


def lenet(seed=0):
    return catalog.build("lenet_300_100", (1, 28, 28), 10, seed=seed)


def half_mask(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = {name: torch.rand(keep.shape, generator=generator) < 0.5 for name, keep in masks.ones(model).items()}
    masks.apply(model, mask)
    return mask


def test_dense_training_learns(splits, make_hp):
    hp = make_hp(**{"train.iterations": 100})
    result = training.train(lenet(), masks.ones(lenet()), splits, hp.train, seed=0)
    assert result.curve[0]["test_accuracy"] < 0.3
    assert result.final["test_accuracy"] > 0.75
    assert [p["iteration"] for p in result.curve] == [0, 20, 40, 60, 80, 100]


@pytest.mark.parametrize("optimizer, momentum", [("adam", 0.0), ("sgd", 0.9)])
def test_pruned_weights_stay_exactly_zero(splits, make_hp, optimizer, momentum):
    hp = make_hp(**{"train.optimizer": optimizer, "train.momentum": momentum, "train.lr": 0.05 if optimizer == "sgd" else 0.0012})
    model = lenet()
    mask = half_mask(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    training.train(model, mask, splits, hp.train, seed=0)
    pipeline.check_pruned_weights_are_zero(model, mask)
    trained = model.state_dict()
    for name, keep in mask.items():
        assert not torch.equal(trained[name][keep], start[name][keep])  # kept weights did train


def test_same_seed_same_result_other_seed_other_order(splits, make_hp):
    hp = make_hp()
    runs = []
    for seed in (0, 0, 1):
        model = lenet()
        result = training.train(model, half_mask(model), splits, hp.train, seed=seed)
        runs.append((model.state_dict(), result.curve))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    assert runs[0][1] != runs[2][1]


def test_snapshot_at_k_is_the_state_after_k_iterations_and_resuming_replays_the_schedule(splits, make_hp):
    hp = make_hp(**{"train.optimizer": "sgd", "train.lr": 0.05})
    full = lenet()
    snapshot = callbacks.Snapshot(30)
    training.train(full, masks.ones(full), splits, hp.train, seed=0, callbacks=[snapshot])
    short = lenet()
    training.train(short, masks.ones(short), splits, dataclasses.replace(hp.train, iterations=30), seed=0)
    assert all(torch.equal(snapshot.weights[k], short.state_dict()[k]) for k in snapshot.weights)
    # Plain SGD has no state, so resuming from θ30 must land exactly where the full run did.
    resumed = lenet()
    resumed.load_state_dict(snapshot.weights)
    training.train(resumed, masks.ones(resumed), splits, hp.train, seed=0, start_iteration=30)
    assert all(torch.equal(resumed.state_dict()[k], full.state_dict()[k]) for k in full.state_dict())


def test_early_stop_is_the_lowest_validation_loss():
    result = training.TrainResult(
        curve=[
            {"iteration": 0, "validation_loss": 2.0, "test_accuracy": 0.1},
            {"iteration": 10, "validation_loss": 0.5, "test_accuracy": 0.8},
            {"iteration": 20, "validation_loss": 0.5, "test_accuracy": 0.85},
            {"iteration": 30, "validation_loss": 0.7, "test_accuracy": 0.9},
        ],
        iterations=30,
        device=torch.device("cpu"),
    )
    summary = result.summary()
    assert summary["early_stop_iteration"] == 10
    assert summary["test_accuracy_at_early_stop"] == 0.8
    assert result.final["test_accuracy"] == 0.9


def test_batch_larger_than_the_data_is_refused(splits, make_hp, monkeypatch):
    # Params validation refuses this against the dataset's size; data smaller than its registry
    # size (a local copy, say) is caught where the stages load it, in one line.
    hp = make_hp()
    hp = dataclasses.replace(hp, train=dataclasses.replace(hp.train, batch_size=5000))
    monkeypatch.setattr(data, "load", lambda data_hp, root: splits)
    with pytest.raises(ParamsError, match=r"^train.batch_size = 5000: larger than the training set \(1200 examples\)$"):
        common.splits(hp)


def test_evaluate_gives_exactly_the_numbers_of_a_per_batch_loop(splits):
    """Batches stay EVAL_BATCH; the float32 batch sums are added in order as Python floats, as
    a loop reading each one out with .item() adds them (a partial last batch included)."""
    model = lenet()
    split = data.Split(*(torch.cat([a, b]) for a, b in zip((splits.train.x, splits.train.y), (splits.test.x, splits.test.y))))
    assert len(split) == 2200  # three batches, the last one partial
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(split), training.EVAL_BATCH):
            logits = model.eval()(split.x[start : start + training.EVAL_BATCH])
            labels = split.y[start : start + training.EVAL_BATCH]
            loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
    assert training.evaluate(model.train(), split) == (loss / 2200, correct / 2200)
    assert model.training  # back in training mode


def on_split(split, splits):
    """'validation' or 'test': which of `splits` a split passed to `evaluate` is (train moves
    splits to its device, which on the CPU keeps the tensors)."""
    return "test" if split.y.data_ptr() == splits.test.y.data_ptr() else "validation"


def test_improvements_has_the_summary_validation_curve_and_weights_of_every_with_fewer_test_evaluations(
    splits, make_hp, monkeypatch
):
    measured = []
    evaluate = training.evaluate

    def counted(model, split):
        measured.append(on_split(split, splits))
        return evaluate(model, split)

    monkeypatch.setattr(training, "evaluate", counted)
    # A learning rate high enough that the validation loss goes up and down on the tiny data.
    hp = make_hp(**{"train.lr": 0.01, "train.iterations": 200, "train.eval_every": 10})
    runs = {}
    for test_curve in ("every", "improvements"):
        measured.clear()
        model = lenet()
        result = training.train(model, masks.ones(model), splits, dataclasses.replace(hp.train, test_curve=test_curve), seed=0)
        runs[test_curve] = result, model.state_dict(), measured.count("test")
    (every, every_weights, every_tests), (thin, thin_weights, thin_tests) = runs["every"], runs["improvements"]
    assert thin.summary() == every.summary()
    validation = ("iteration", "validation_loss", "validation_accuracy")
    assert [{k: p[k] for k in validation} for p in thin.curve] == [{k: p[k] for k in validation} for p in every.curve]
    assert all(torch.equal(thin_weights[k], every_weights[k]) for k in every_weights)
    # Tested: each point whose validation loss is below every earlier one's, and the last.
    best, expected = float("inf"), []
    for point in every.curve:
        if point["validation_loss"] < best:
            best = point["validation_loss"]
            expected.append(point["iteration"])
    expected += [every.final["iteration"]] if expected[-1] != every.final["iteration"] else []
    assert [p["iteration"] for p in thin.curve if "test_loss" in p] == expected
    assert all(p == every.curve[i] for i, p in enumerate(thin.curve) if "test_loss" in p)
    assert all(set(p) == set(validation) for p in thin.curve if "test_loss" not in p)
    assert every_tests == len(every.curve) == 21
    assert thin_tests == len(expected) < 21 - 5  # the loss went up often enough to save some


@pytest.mark.parametrize(
    "losses, tested, early_stop",
    [
        # A tie keeps the earlier point (no test there), NaN never wins, the end is always tested.
        ([2.0, 0.5, 0.5, float("nan"), 0.7, 0.4, 0.4], [0, 10, 50, 60], 50),
        ([float("nan"), 1.0, 0.5, 0.5, 0.5, 0.5, 0.9], [0, 60], 0),  # min() keeps a NaN first point
        ([3.0, 2.0, 1.0, 0.9, 0.8, 0.7, 0.6], [0, 10, 20, 30, 40, 50, 60], 60),
    ],
)
def test_improvements_tests_exactly_where_min_can_pick_the_early_stop(splits, make_hp, monkeypatch, losses, tested, early_stop):
    def scripted(model, split):
        if on_split(split, splits) == "test":
            return 1.0, len(calls) / 100  # the accuracy says which evaluation it was
        calls.append(None)
        return losses[len(calls) - 1], 0.5

    monkeypatch.setattr(training, "evaluate", scripted)
    hp = make_hp(**{"train.iterations": 60, "train.eval_every": 10})
    summaries = []
    for test_curve in ("improvements", "every"):
        calls = []
        result = training.train(lenet(), masks.ones(lenet()), splits, dataclasses.replace(hp.train, test_curve=test_curve), seed=0)
        summaries.append(result.summary())
        if test_curve == "improvements":
            assert [p["iteration"] for p in result.curve if "test_accuracy" in p] == tested
    assert summaries[0]["early_stop_iteration"] == early_stop
    assert summaries[0]["test_accuracy_at_early_stop"] == (early_stop // 10 + 1) / 100
    assert summaries[0] == summaries[1]  # (a NaN loss compares equal here: the same float object)
