import pytest
import torch

from lottery import masks, validation
from lottery.models import catalog
from lottery.pruning import driver, rates, strategies, strategy
from tests.conftest import default_params, with_overrides
from lottery.errors import ParamsError


def prune_hp(**overrides):
    return validation.from_dict(with_overrides(default_params(), {f"prune.{k}": v for k, v in overrides.items()})).prune


def train_like(model, seed):
    """Stand-in trained weights: fresh random values, so every round ranks a new order."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))


def imp(model_name, rounds, hp, input_shape=(1, 28, 28)):
    model = catalog.build(model_name, input_shape, 10, seed=0)
    mask = masks.ones(model)
    history = [mask]
    for round_ in range(1, rounds + 1):
        train_like(model, seed=round_)
        masks.apply(model, mask)
        mask = driver.prune(hp, model, mask, seed=round_)
        history.append(mask)
    return model, history


@pytest.mark.parametrize("rounds", [1, 3, 5])
def test_layerwise_density_is_one_minus_rate_to_the_rounds(rounds):
    hp = prune_hp(rate=0.2)
    model, history = imp("lenet_300_100", rounds, hp)
    by_layer = rates.layer_rates(model, hp)
    assert by_layer == {"layers.1.weight": 0.2, "layers.3.weight": 0.2, "layers.5.weight": 0.1}
    for name, keep in history[-1].items():
        expected = (1 - by_layer[name]) ** rounds
        assert keep.float().mean().item() == pytest.approx(expected, abs=rounds / keep.numel() + 1e-9)


def test_conv_layers_use_the_models_paper_rate_unless_set():
    model = catalog.build("conv6", (3, 32, 32), 10, seed=0)
    kinds = model.prunable_kinds()
    by_layer = rates.layer_rates(model, prune_hp(rate=0.2))
    assert {by_layer[n] for n, k in kinds.items() if k == "conv"} == {0.15}
    assert [k for k in kinds.values()].count("output") == 1
    by_layer = rates.layer_rates(model, prune_hp(rate=0.2, conv_rate=0.05, output_rate=0.3))
    assert {by_layer[n] for n, k in kinds.items() if k == "conv"} == {0.05}
    assert by_layer["classifier.5.weight"] == 0.3


def test_pruned_weights_are_never_revived():
    _, history = imp("lenet_300_100", 4, prune_hp(rate=0.3))
    for before, after in zip(history, history[1:]):
        for name in before:
            assert not bool((after[name] & ~before[name]).any()), name


def test_magnitude_removes_the_smallest_remaining_weights():
    model = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0)
    train_like(model, seed=1)
    mask = driver.prune(prune_hp(rate=0.2), model, masks.ones(model), seed=1)
    weight = dict(model.named_parameters())["layers.1.weight"].detach().abs()
    keep = mask["layers.1.weight"]
    assert weight[~keep].max() <= weight[keep].min()


def test_global_scope_pools_the_hidden_layers_and_prunes_the_output_layer_on_its_own():
    model = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0)
    train_like(model, seed=3)
    with torch.no_grad():
        dict(model.named_parameters())["layers.5.weight"].abs_().add_(10)  # the output layer is large
        dict(model.named_parameters())["layers.3.weight"].abs_().add_(10)  # and so is the second layer
    mask = driver.prune(prune_hp(rate=0.2, scope="global"), model, masks.ones(model), seed=1)
    pooled = ("layers.1.weight", "layers.3.weight")
    removed = sum(int((~mask[name]).sum()) for name in pooled)
    assert removed == round(0.2 * sum(mask[name].numel() for name in pooled))
    assert bool(mask["layers.3.weight"].all())  # large weights survive the pooled ranking
    # Large as they are, the output weights lose LeNet's paper rate for them: half of prune.rate.
    assert int((~mask["layers.5.weight"]).sum()) == round(0.1 * mask["layers.5.weight"].numel())


@pytest.mark.parametrize("model_name", ["vgg11", "resnet20"])
def test_global_scope_leaves_the_output_layer_of_vgg_and_resnet_alone_unless_told(model_name):
    model = catalog.build(model_name, (1, 28, 28), 10, seed=0, width=0.25)
    train_like(model, seed=2)
    output = next(name for name, kind in model.prunable_kinds().items() if kind == "output")
    mask = driver.prune(prune_hp(rate=0.2, scope="global"), model, masks.ones(model), seed=1)
    assert bool(mask[output].all())  # LTH's VGG-19 and ResNet runs: conv 20% per round, FC 0%
    convs = [name for name, kind in model.prunable_kinds().items() if kind == "conv"]
    assert sum(int((~mask[n]).sum()) for n in convs) == round(0.2 * sum(mask[n].numel() for n in convs))
    told = driver.prune(prune_hp(rate=0.2, scope="global", output_rate=0.1), model, masks.ones(model), seed=1)
    assert int((~told[output]).sum()) == round(0.1 * told[output].numel())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"scope": "global", "conv_rate": 0.1}, "prune.conv_rate = 0.1: prune.scope 'global' ranks the conv and fc"),
        ({"granularity": "channel", "strategy": "l1_filter", "conv_rate": 0.1}, "prune.conv_rate = 0.1: every channel group"),
        ({"granularity": "channel", "strategy": "l1_filter", "output_rate": 0.1}, "prune.output_rate = 0.1: the output"),
        ({"max_layer_fraction": 0.5}, "prune.max_layer_fraction = 0.5: caps a global channel threshold only"),
    ],
)
def test_a_rate_the_scope_ignores_is_refused(overrides, message):
    with pytest.raises(ParamsError, match=message):
        prune_hp(**overrides)


def test_pruning_is_deterministic():
    _, first = imp("lenet_300_100", 2, prune_hp(rate=0.2))
    _, second = imp("lenet_300_100", 2, prune_hp(rate=0.2))
    for name in first[-1]:
        assert torch.equal(first[-1][name], second[-1][name])


def test_every_registered_model_builds_and_exposes_prunable_weights():
    for name in catalog.REGISTRY:
        model = catalog.build(name, (1, 28, 28), 10, seed=0)
        out = model(torch.zeros(2, 1, 28, 28))
        assert out.shape == (2, 10)
        kinds = model.prunable_kinds()
        assert list(kinds.values())[-1] == "output"
        assert not any(n.endswith("bias") for n in kinds)


def test_same_seed_same_init_other_seed_other_init():
    a = catalog.build("conv2", (1, 28, 28), 10, seed=4).state_dict()
    b = catalog.build("conv2", (1, 28, 28), 10, seed=4).state_dict()
    c = catalog.build("conv2", (1, 28, 28), 10, seed=5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])


def test_unknown_model_is_a_clear_error():
    with pytest.raises(KeyError, match="model.name = 'vgg99': unknown"):
        catalog.build("vgg99", (1, 28, 28), 10, seed=0)


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_every_registered_strategy_states_its_rules_and_scores_what_it_names(name):
    found = strategies.REGISTRY[name]
    assert issubclass(found, strategy.Strategy)
    assert found.granularities and set(found.granularities) <= {"weight", "channel"}
    assert found.scopes and set(found.scopes) <= {"layerwise", "global"}
    needed = ["search"] if found.learns_scores else [f"{granularity}_scores" for granularity in found.granularities]
    assert all(callable(getattr(found, method, None)) for method in needed)
