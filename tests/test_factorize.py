"""Factorized low-rank layers (Khodak et al. 2021): the math, the parameter matching, and a
factorized lineage through the pipeline's own stages."""

import copy

import pytest
import torch
from torch import nn

from lottery import checkpoints, hparams, identity, masks, paths, pipeline, training, validation
from lottery.errors import ParamsError
from lottery.factorize import decay, layers, plans
from lottery.io import read_json
from lottery.models import catalog
from lottery.pruning import driver
from tests.conftest import tiny_params

FACTORIZED = {"factorize.enabled": True, "weight_agnostic.values": [], "prune.rate": 0.5}


def make_hp(mnist_root, **overrides):
    return validation.from_dict(tiny_params(mnist_root, {**FACTORIZED, **overrides}))


def test_spectral_init_is_the_best_rank_r_approximation():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, generator=generator)
    sigma = torch.linalg.svdvals(weight.double())
    for rank in (1, 5, 23):
        u, v = layers.spectral_factors(weight, rank)
        error = (weight - u @ v.T).double()
        # Eckart-Young: the Frobenius error is the tail's energy, the spectral error the next value.
        assert torch.linalg.matrix_norm(error) ** 2 == pytest.approx(float((sigma[rank:] ** 2).sum()), rel=1e-4)
        assert torch.linalg.matrix_norm(error, ord=2) == pytest.approx(float(sigma[rank]), rel=1e-4)
        # Σ^½ on both sides: the factors carry the same singular values.
        assert torch.linalg.svdvals(u.double()) == pytest.approx(sigma[:rank].sqrt().tolist(), rel=1e-4)
        assert torch.linalg.svdvals(v.double()) == pytest.approx(sigma[:rank].sqrt().tolist(), rel=1e-4)


def test_spectral_init_of_a_model_approximates_each_layer_of_theta0():
    model = catalog.build("conv2", (1, 28, 28), 10, seed=3)
    dense = {name: layers.matrix(layer) for name, layer in layers.weight_layers(model).items()}
    ranks = plans.rank_plan(model, 0.25)
    assert ranks, "conv2 has layers worth factorizing at a quarter of their rank"
    layers.factorize(model, ranks)
    for name, rank in ranks.items():
        sigma = torch.linalg.svdvals(dense[name].double())
        error = torch.linalg.matrix_norm((dense[name] - layers.matrix(model.get_submodule(name))).double())
        assert error**2 == pytest.approx(float((sigma[rank:] ** 2).sum()), rel=1e-3)


@pytest.mark.parametrize(
    "geometry",
    [
        dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
        dict(in_channels=5, out_channels=7, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
        dict(in_channels=6, out_channels=4, kernel_size=1, stride=2, bias=False),  # a ResNet shortcut
    ],
)
def test_a_conv_at_full_rank_computes_what_the_dense_conv_computes(geometry):
    torch.manual_seed(0)
    conv = nn.Conv2d(**geometry)
    m, n = layers.shape(conv)
    layer = layers.FactorizedConv2d(conv, min(m, n))
    layer.set_factors(*layers.spectral_factors(layers.matrix(conv), min(m, n)))
    if conv.bias is not None:
        with torch.no_grad():
            layer.outer.bias.copy_(conv.bias)
    images = torch.randn(2, conv.in_channels, 11, 9)
    assert layer(images).shape == conv(images).shape
    assert (layer(images) - conv(images)).abs().max() < 1e-5
    rebuilt = layer.dense()  # and back: the dense layer the factors compute
    assert (rebuilt.weight - conv.weight).abs().max() < 1e-5 and rebuilt.stride == conv.stride


@pytest.mark.parametrize("name,width", [("lenet_300_100", 1.0), ("conv4", 1.0), ("vgg11", 0.25), ("resnet20", 0.5)])
def test_every_registered_kind_of_model_factorized_at_full_rank_computes_the_same(name, width):
    model = catalog.build(name, (1, 28, 28), 10, seed=0, width=width).eval()
    full = {layer: min(layers.shape(module)) for layer, module in layers.factorizable(model).items()}
    factorized = layers.factorize(copy.deepcopy(model), full).eval()
    assert set(layers.ranks(factorized)) == set(full)
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (factorized(images) - model(images)).abs().max() < 1e-3


def test_the_frobenius_decay_gradient_equals_autograds():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.Linear(12, 5))
    ranks = {"0": 2, "2": 3}
    layers.factorize(model, ranks, spectral=False, generator=torch.Generator().manual_seed(2), init="glorot")
    strength = 0.37
    penalty = sum(
        strength / 2 * (layer.factors()[0] @ layer.factors()[1].T).pow(2).sum()
        for layer in layers.weight_layers(model).values()
        if isinstance(layer, layers.Factorized)
    )
    factors = decay.factor_parameters(model)
    expected = torch.autograd.grad(penalty, factors)
    for param in factors:
        param.grad = torch.zeros_like(param)
    # Every other parameter (biases, the dense output layer) holds a gradient of its own already,
    # which the decay must leave exactly as it is.
    others = {name: param for name, param in model.named_parameters() if all(param is not f for f in factors)}
    assert {"3.weight", "3.bias", "0.outer.bias"} <= set(others)
    for param in others.values():
        param.grad = torch.randn_like(param)
    before = {name: param.grad.clone() for name, param in others.items()}
    decay.add_frobenius_decay_gradient(layers.factorized_layers(model), strength)
    for param, wanted in zip(factors, expected):
        assert torch.allclose(param.grad, wanted, rtol=1e-5, atol=1e-7)
        assert wanted.abs().max() > 0
    for name, param in others.items():
        assert torch.equal(param.grad, before[name]), name


@pytest.mark.parametrize("name,width", [("lenet_300_100", 1.0), ("vgg11", 0.25), ("resnet20", 1.0)])
@pytest.mark.parametrize("ratio", [0.1, 0.05, 0.02])
def test_parameter_matching_hits_the_target_to_within_one_rank_of_any_layer(name, width, ratio):
    model = catalog.build(name, (1, 28, 28), 10, seed=0, width=width)
    target = round(ratio * plans.stored_weights(model, {}))
    scale, ranks = plans.matched_ranks(model, target)
    stored = plans.stored_weights(model, ranks)
    # The rank scale is the largest that fits: one step more stores more than the target.
    plan = plans.rank_plan(model, scale)
    assert plans.stored_weights(model, plan) <= target < plans.stored_weights(model, plans.rank_plan(model, scale * (1 + 1e-6)))
    # Then each layer takes at most one rank more, and a layer left at the scale's rank no longer fits.
    assert stored <= target and set(ranks) == set(plan)
    assert all(ranks[name] - plan[name] in (0, 1) for name in plan)
    steps = {name: sum(layers.shape(model.get_submodule(name))) for name in plan}
    assert all(steps[name] > target - stored for name in plan if ranks[name] == plan[name])
    with pytest.raises(ValueError, match="fewer than rank 1"):
        plans.matched_ranks(model, len(layers.weight_layers(model)))


def test_a_factorized_checkpoint_describes_its_ranks_and_loads_itself(tmp_path):
    model = catalog.build("vgg11", (1, 28, 28), 10, seed=0, width=0.25)
    spec = checkpoints.model_spec("vgg11", (1, 28, 28), 10, 0.25)
    layers.factorize(model, plans.rank_plan(model, 0.3))
    checkpoints.save(tmp_path / "f.pt", model, spec=spec, round_=1, iteration=0, parents=[])
    loaded, checkpoint = checkpoints.load_model(tmp_path / "f.pt")
    assert checkpoint["model"]["ranks"] == layers.ranks(model) and layers.ranks(loaded) == layers.ranks(model)
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model.eval()(images))


def test_plain_factors_are_drawn_independently_with_each_factors_own_fans():
    model = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0)
    ranks = {"layers.1": 60}
    plain = layers.factorize(copy.deepcopy(model), ranks, spectral=False, generator=torch.Generator().manual_seed(5), init="glorot")
    again = layers.factorize(copy.deepcopy(model), ranks, spectral=False, generator=torch.Generator().manual_seed(5), init="glorot")
    layer = plain.get_submodule("layers.1")
    assert torch.equal(layer.inner.weight, again.get_submodule("layers.1").inner.weight)
    # Glorot on each factor as a layer of its own: inner 784 -> 60, outer 60 -> 300.
    assert layer.inner.weight.std().item() == pytest.approx((2 / (784 + 60)) ** 0.5, rel=0.05)
    assert layer.outer.weight.std().item() == pytest.approx((2 / (60 + 300)) ** 0.5, rel=0.05)
    spectral = layers.factorize(copy.deepcopy(model), ranks)
    assert not torch.allclose(layers.matrix(spectral.get_submodule("layers.1")), layers.matrix(layer))


def test_weight_decay_spares_the_factors_when_frobenius_decay_takes_its_place(mnist_root):
    hp = make_hp(mnist_root, **{"train.weight_decay": 1e-3})
    model = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0)
    layers.factorize(model, {"layers.1": 20})
    factors = {id(param) for param in decay.factor_parameters(model)}
    groups = training.make_optimizer(hp.train, model, decay.FrobeniusDecay(model, 1e-3).exempt_from_weight_decay()).param_groups
    assert [group["weight_decay"] for group in groups] == [1e-3, 0.0]
    assert {id(param) for param in groups[1]["params"]} == factors
    (plain,) = training.make_optimizer(hp.train, model).param_groups
    assert plain["weight_decay"] == 1e-3 and len(plain["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"prune.granularity": "channel", "prune.strategy": "l1_filter", "prune.output_rate": None}, "prune.granularity = 'channel'"),
        ({"controls.run": ["reinit"]}, "controls.run = \\['reinit'\\]"),
        ({"weight_agnostic.values": [1.0]}, "weight_agnostic.values = \\[1.0\\]"),
        ({"rewind.target": "finetune", "factorize.spectral_init": False}, "factorize.spectral_init = false"),
        ({"rewind.target": "scratch", "rewind.scratch_budget": "flops"}, "rewind.scratch_budget = 'flops'"),
        # 235,200 + 30,000 hidden weights lose 99% twice, the 1,000 output ones 49.5% twice: 24 + 3 + 255 kept;
        # rank 1 stores 784 + 300 and 300 + 100, and the output layer stays whole.
        ({"prune.rate": 0.99}, "prune.rate = 0.99: round 2's ticket keeps 282 weights: fewer than rank 1 in every factorizable layer stores \\(2484\\)"),
    ],
)
def test_settings_a_factorized_lineage_cannot_use_are_refused_naming_the_key(mnist_root, overrides, message):
    with pytest.raises(ParamsError, match=message):
        make_hp(mnist_root, **overrides)


def test_factorize_stays_out_of_the_lineage_name_until_it_is_enabled(mnist_root):
    plain = validation.from_dict(tiny_params(mnist_root, {}))
    # Lineages named before the section (and train.weight_decay) existed keep their names.
    assert "factorize" not in identity.of(plain) and "weight_decay" not in identity.of(plain)["train"]
    switched_off = validation.from_dict(tiny_params(mnist_root, {"factorize.spectral_init": False, "factorize.frobenius_decay": False}))
    assert identity.params_hash(plain) == identity.params_hash(switched_off)
    assert identity.params_hash(make_hp(mnist_root)) != identity.params_hash(validation.from_dict(tiny_params(mnist_root, {"weight_agnostic.values": [], "prune.rate": 0.5})))
    # Without weight decay, Frobenius decay has nothing to apply: the same lineage either way.
    assert identity.params_hash(make_hp(mnist_root)) == identity.params_hash(make_hp(mnist_root, **{"factorize.frobenius_decay": False}))
    decayed = {"train.weight_decay": 1e-4}
    assert identity.params_hash(make_hp(mnist_root, **decayed)) != identity.params_hash(make_hp(mnist_root, **decayed, **{"factorize.frobenius_decay": False}))


def test_a_factorized_lineage_matches_each_rounds_ticket_and_lowers_its_ranks(workdir, mnist_root):
    hp = make_hp(mnist_root, **{"train.weight_decay": 1e-3})
    pipeline.run_lineage(hp)
    theta0, _ = checkpoints.load_model(paths.init_checkpoint())
    dense_weights = plans.stored_weights(theta0, {})
    previous = None
    for round_ in (1, 2):
        # The round's ticket (prune.* as written) would keep this many weights; the factors store at most that.
        ticket = driver.prune(hp.prune, theta0, masks.ones(theta0), seed=0, rounds=round_)
        ticket_weights = sum(int(keep.sum()) for keep in ticket.values())
        sparsity = read_json(paths.sparsity_report(round_))
        metrics = read_json(paths.round_metrics(round_))
        trained, checkpoint = checkpoints.load_model(paths.trained_weights(round_))
        stored = plans.stored_weights(trained, layers.ranks(trained))
        assert sparsity["ticket_weights"] == ticket_weights and 0.9 * ticket_weights <= stored <= ticket_weights
        assert metrics["weights_remaining"] == pytest.approx(stored / dense_weights)
        assert metrics["ranks_per_layer"] == sparsity["ranks"] == checkpoint["model"]["ranks"]
        if previous:
            assert all(metrics["ranks_per_layer"][name] < rank for name, rank in previous.items())
        previous = metrics["ranks_per_layer"]
        # rewind: θ0 spectrally initialised at the round's ranks.
        start, _ = checkpoints.load_model(paths.start_weights(round_))
        for name, rank in sparsity["ranks"].items():
            sigma = torch.linalg.svdvals(layers.matrix(theta0.get_submodule(name)).double())
            error = layers.matrix(theta0.get_submodule(name)) - layers.matrix(start.get_submodule(name))
            assert torch.linalg.matrix_norm(error.double()) ** 2 == pytest.approx(float((sigma[rank:] ** 2).sum()), rel=1e-3)
        # compact: the factorized network is shipped as it is, and it is smaller and cheaper.
        report = read_json(paths.compression_report(round_))
        assert report["form"] == "factorized" and report["max_abs_difference"] < 1e-4
        assert report["flops_speedup"] > 1.5 and report["parameter_ratio"] < 0.55
    assert read_json(paths.summary())["rounds"]


def test_finetune_truncates_the_trained_weights_and_plain_draws_fresh_factors(workdir, mnist_root):
    hp = make_hp(mnist_root, **{"rewind.target": "finetune", "rewind.finetune_iterations": 20, "rounds": hparams.rounds_section(1)})
    pipeline.init(hp)
    pipeline.train_dense(hp)
    pipeline.prune(hp, 1)
    pipeline.rewind(hp, 1)
    dense, _ = checkpoints.load_model(paths.trained_weights(0))
    start, _ = checkpoints.load_model(paths.start_weights(1))
    ranks = read_json(paths.sparsity_report(1))["ranks"]
    for name, rank in ranks.items():
        u, v = layers.spectral_factors(layers.matrix(dense.get_submodule(name)), rank)
        assert torch.allclose(layers.matrix(start.get_submodule(name)), u @ v.T, atol=1e-5)
    plain_hp = make_hp(mnist_root, **{"factorize.spectral_init": False, "rounds": hparams.rounds_section(1)})
    pipeline.rewind(plain_hp, 1)
    plain, _ = checkpoints.load_model(paths.start_weights(1))
    theta0, _ = checkpoints.load_model(paths.init_checkpoint())
    for name in ranks:
        assert (layers.matrix(plain.get_submodule(name)) - layers.matrix(theta0.get_submodule(name))).abs().mean() > 1e-3
    pipeline.rewind(plain_hp, 1)
    again, _ = checkpoints.load_model(paths.start_weights(1))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), again.state_dict().values()))


def test_frobenius_decay_changes_training_and_repeats_exactly(workdir, mnist_root):
    decayed = {"train.weight_decay": 0.05, "rounds": hparams.rounds_section(1)}
    trained = {}
    for frobenius in (True, False, True):
        hp = make_hp(mnist_root, **decayed, **{"factorize.frobenius_decay": frobenius})
        if not trained:
            pipeline.init(hp)
            pipeline.train_dense(hp)
            pipeline.prune(hp, 1)
            pipeline.rewind(hp, 1)
        pipeline.retrain(hp, 1)
        model, _ = checkpoints.load_model(paths.trained_weights(1))
        trained.setdefault(frobenius, []).append(model.state_dict())
    first, repeat = trained[True]
    assert all(torch.equal(first[key], repeat[key]) for key in first)
    assert any(not torch.equal(first[key], trained[False][0][key]) for key in first)
