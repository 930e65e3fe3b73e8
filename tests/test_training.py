import dataclasses

import pytest
import torch

from lottery import data, hparams, masks, models, pipeline, training


@pytest.fixture
def splits(mnist_root, make_hp):
    return data.load(make_hp().data, mnist_root)


def lenet(seed=0):
    return models.build("lenet_300_100", (1, 28, 28), 10, seed=seed)


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
    result = training.train(full, masks.ones(full), splits, hp.train, seed=0, snapshot_at=30)
    short = lenet()
    training.train(short, masks.ones(short), splits, dataclasses.replace(hp.train, iterations=30), seed=0)
    assert all(torch.equal(result.snapshot[k], short.state_dict()[k]) for k in result.snapshot)
    # Plain SGD has no state, so resuming from θ30 must land exactly where the full run did.
    resumed = lenet()
    resumed.load_state_dict(result.snapshot)
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
        snapshot=None,
        iterations=30,
        device=torch.device("cpu"),
    )
    summary = result.summary()
    assert summary["early_stop_iteration"] == 10
    assert summary["test_accuracy_at_early_stop"] == 0.8
    assert result.final["test_accuracy"] == 0.9


def test_batch_larger_than_the_data_is_refused(splits, make_hp):
    # Params validation refuses this against the dataset's size; data smaller than its registry
    # size (a local copy, say) is caught by the loop itself, in one line.
    train_hp = dataclasses.replace(make_hp().train, batch_size=5000)
    with pytest.raises(hparams.ParamsError, match=r"^train.batch_size = 5000: larger than the training set \(1200 examples\)$"):
        training.train(lenet(), masks.ones(lenet()), splits, train_hp, seed=0)
