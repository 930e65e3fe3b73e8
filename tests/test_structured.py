"""Structured pruning: channel groups, the strategies, the layer-collapse guard, BN sparsity, the
compact model and the Rethinking retraining budgets."""

import dataclasses

import pytest
import torch
from torch import nn

from lottery import channels, checkpoints, compression, controls, hparams, masks, pipeline, slimming, training, validation
from lottery.errors import ParamsError
from lottery.models import base, catalog
from lottery.pruning import driver
from tests.conftest import default_params, with_overrides

VGG = dict(name="vgg11", input_shape=(1, 28, 28), num_classes=10, seed=0, width=0.25)
RESNET = dict(name="resnet20", input_shape=(3, 16, 16), num_classes=10, seed=0, width=0.5)


def hp_with(**overrides):
    return validation.from_dict(with_overrides(default_params(), overrides))


def channel_prune_hp(strategy, scope, rate=0.5, min_channels=1, max_layer_fraction=1.0):
    return hp_with(
        **{
            "model.name": "vgg11",
            "model.width": 0.25,
            "prune.strategy": strategy,
            "prune.granularity": "channel",
            "prune.scope": scope,
            "prune.rate": rate,
            "prune.min_channels": min_channels,
            "prune.max_layer_fraction": max_layer_fraction,
            "rounds": hparams.rounds_section(2),
        }
    ).prune


def trained_like(spec, seed=1):
    """A model with random weights and BatchNorm statistics, as if trained: no ties, no identity BN."""
    model = catalog.build(**spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            # Weights keep their init's scale, so activations stay in range through the layers.
            scale = param.std() if param.dim() > 1 else 0.5
            param.copy_(scale * torch.randn(param.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def random_channel_mask(model, seed=0, fraction=0.5):
    channel_groups = channels.groups(model)
    generator = torch.Generator().manual_seed(seed)
    keep = {}
    for group in channel_groups:
        keep[group.name] = torch.rand(group.size, generator=generator) < fraction
        keep[group.name][0] = True  # never an empty layer
    return channels.expand(model, channel_groups, keep)


def channel_counts(model, mask):
    return {name: int(keep.sum()) for name, keep in channels.kept(channels.groups(model), mask).items()}


@pytest.mark.parametrize(
    "strategy, scope",
    [("l1_filter", "layerwise"), ("bn_slimming", "layerwise"), ("bn_slimming", "global"), ("random", "layerwise"), ("random", "global")],
)
def test_each_channel_strategy_removes_the_ratio_asked(strategy, scope):
    model = trained_like(VGG)
    sizes = {group.name: group.size for group in channels.groups(model)}
    mask = masks.ones(model)
    for round_ in (1, 2):
        mask = driver.prune(channel_prune_hp(strategy, scope, rate=0.3), model, mask, seed=round_)
        masks.apply(model, mask)
        counts = channel_counts(model, mask)
        if scope == "layerwise":
            expected = dict(sizes)
            for _ in range(round_):
                expected = {name: kept - round(0.3 * kept) for name, kept in expected.items()}
            assert counts == expected
        else:
            total = sum(sizes.values())
            for _ in range(round_):
                total -= round(0.3 * total)
            assert sum(counts.values()) == total


def test_random_weight_pruning_matches_magnitudes_ratios():
    model = trained_like(VGG)
    hp = hp_with(**{"model.name": "vgg11", "model.width": 0.25, "prune.strategy": "random"}).prune
    by_random = driver.prune(hp, model, masks.ones(model), seed=0)
    by_magnitude = driver.prune(dataclasses.replace(hp, strategy="magnitude"), model, masks.ones(model), seed=0)
    assert {n: int(k.sum()) for n, k in by_random.items()} == {n: int(k.sum()) for n, k in by_magnitude.items()}
    assert any(not torch.equal(by_random[n], by_magnitude[n]) for n in by_random)


def test_l1_filter_removes_the_filters_with_the_smallest_l1_norm():
    model = trained_like(VGG)
    conv = model.features[4]  # features.4: the second conv layer
    norms = conv.weight.detach().abs().flatten(1).sum(1)
    mask = driver.prune(channel_prune_hp("l1_filter", "layerwise"), model, masks.ones(model), seed=0)
    kept = channels.kept(channels.groups(model), mask)["features.4.weight"]
    assert kept.sum() == conv.out_channels // 2
    assert norms[kept].min() >= norms[~kept].max()


def test_bn_slimming_uses_one_global_threshold_on_gamma():
    model = trained_like(VGG)
    with torch.no_grad():
        model.features[1].weight.mul_(100)  # the first layer's γ are all large: none of it goes
    mask = driver.prune(channel_prune_hp("bn_slimming", "global"), model, masks.ones(model), seed=0)
    params = dict(model.named_parameters())
    gammas = {
        group.name: params[group.output_weights(nn.BatchNorm2d)[0]].detach().abs() for group in channels.groups(model)
    }
    kept = channels.kept(channels.groups(model), mask)
    assert bool(kept["features.0.weight"].all())
    survivors = torch.cat([gammas[name][keep] for name, keep in kept.items()])
    removed = torch.cat([gammas[name][~keep] for name, keep in kept.items()])
    assert survivors.min() >= removed.max()


def test_a_pruned_channel_is_zero_in_its_conv_batchnorm_and_the_next_layer():
    model = trained_like(VGG)
    mask = driver.prune(channel_prune_hp("l1_filter", "layerwise"), model, masks.ones(model), seed=0)
    kept = channels.kept(channels.groups(model), mask)["features.4.weight"]
    pruned = (~kept).nonzero().flatten()
    assert not mask["features.4.weight"][pruned].any()
    assert mask["features.4.weight"][kept].flatten(1).any(1).all()  # kept filters lose only pruned inputs
    assert not mask["features.5.weight"][pruned].any() and not mask["features.5.bias"][pruned].any()
    assert not mask["features.8.weight"][:, pruned].any()  # the next conv's input channels


def test_residual_channels_are_pruned_together_across_every_added_tensor():
    model = trained_like(RESNET)
    stage_groups = [g for g in channels.groups(model) if len(g.output_weights(nn.Conv2d)) > 1]
    # One residual stream per stage; the second and third stages include the 1x1 projection.
    assert len(stage_groups) == 3
    added = stage_groups[1].output_weights(nn.Conv2d)
    assert "features.6.shortcut.0.weight" in added
    assert {"features.6.branch.3.weight", "features.7.branch.3.weight", "features.8.branch.3.weight"} <= set(added)
    keep = {g.name: torch.ones(g.size, dtype=torch.bool) for g in channels.groups(model)}
    keep[stage_groups[1].name][[1, 5]] = False
    mask = channels.expand(model, channels.groups(model), keep)
    for name in added:
        assert not mask[name][[1, 5]].any() and mask[name][[0, 2]].all(), name


@pytest.mark.parametrize("spec", [VGG, RESNET], ids=["vgg", "resnet"])
def test_compact_model_computes_what_the_masked_model_computes(spec):
    model = trained_like(spec)
    mask = random_channel_mask(model)
    masks.apply(model, mask)
    small = channels.compact(model, mask)
    x = torch.randn(16, *spec["input_shape"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        difference = (model(x) - small(x)).abs().max().item()
    assert difference < 1e-4
    assert compression.parameter_count(small) < 0.5 * compression.parameter_count(model)
    assert compression.flops(small, spec["input_shape"]) == compression.flops(model, spec["input_shape"], mask)


def test_compact_checkpoint_loads_on_its_own(tmp_path):
    model = trained_like(RESNET)
    mask = random_channel_mask(model, seed=4)
    masks.apply(model, mask)
    small = channels.compact(model, mask)
    spec = checkpoints.model_spec("resnet20", RESNET["input_shape"], 10, 0.5, compact_of=small)
    checkpoints.save(tmp_path / "compact.pt", small, spec=spec, round_=1, iteration=0, parents=[])
    torch.load(tmp_path / "compact.pt", weights_only=True)
    loaded, _ = checkpoints.load_model(tmp_path / "compact.pt")
    x = torch.randn(4, *RESNET["input_shape"])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), small(x))
    assert channels.shapes(loaded) == channels.shapes(small)


def test_sparse_checkpoint_loads_back_to_identical_weights(tmp_path):
    model = trained_like(VGG)
    mask = driver.prune(hp_with().prune, model, masks.ones(model), seed=0, rounds=5)
    masks.apply(model, mask)
    spec = checkpoints.model_spec("vgg11", VGG["input_shape"], 10, 0.25)
    save = dict(spec=spec, round_=5, iteration=0, parents=[])
    checkpoints.save(tmp_path / "dense.pt", model, **save)
    checkpoints.save(tmp_path / "sparse.pt", model, sparse_mask=mask, **save)
    loaded, _ = checkpoints.load_model(tmp_path / "sparse.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    kept = masks.weights_remaining(mask, model.prunable_kinds())
    ratio = compression.file_bytes(tmp_path / "sparse.pt") / compression.file_bytes(tmp_path / "dense.pt")
    assert ratio < kept + 0.1  # values plus a 1-bit mask per weight


def test_layerwise_ratio_that_would_empty_a_layer_is_refused_up_front():
    overrides = {
        "model.name": "vgg11",
        "model.width": 0.125,  # the first layer has 8 channels
        "prune.strategy": "l1_filter",
        "prune.granularity": "channel",
        "prune.rate": 0.5,
        "prune.min_channels": 2,
    }
    hp_with(**overrides, rounds=hparams.rounds_section(2))  # 8 -> 4 -> 2: allowed
    with pytest.raises(ParamsError, match=r"prune.rate = 0.5: round 3 would leave features.0.weight 1 of 8"):
        hp_with(**overrides, rounds=hparams.rounds_section(3))


def test_a_global_threshold_keeps_the_minimum_in_every_layer():
    model = trained_like(VGG)
    with torch.no_grad():
        model.features[5].weight.mul_(1e-6)  # every γ of one layer below every other layer's
    hp = channel_prune_hp("bn_slimming", "global", rate=0.5, min_channels=3)
    mask = driver.prune(hp, model, masks.ones(model), seed=0)
    assert channel_counts(model, mask)["features.4.weight"] == 3


@pytest.mark.parametrize("rounds", [1, 2])
def test_a_global_threshold_takes_at_most_max_layer_fraction_of_any_layer(rounds):
    """Early-Bird's 70% collapse: a layer whose γ all fell below the others' kept only
    min_channels. A cap on the pruned fraction keeps it routing signal."""
    model = trained_like(VGG)
    with torch.no_grad():
        model.features[5].weight.mul_(1e-6)  # features.4: 32 channels, every γ below every other layer's
    uncapped = channel_prune_hp("bn_slimming", "global", rate=0.3)
    uncapped = driver.prune(uncapped, model, masks.ones(model), seed=0, rounds=rounds)
    assert channel_counts(model, uncapped)["features.4.weight"] == 1
    hp = channel_prune_hp("bn_slimming", "global", rate=0.3, max_layer_fraction=0.7)
    capped = driver.prune(hp, model, masks.ones(model), seed=0, rounds=rounds)
    counts = channel_counts(model, capped)
    assert counts["features.4.weight"] == 10  # ceil(0.3 × 32): at most 70% of it is pruned
    kept, total = sum(counts.values()), sum(g.size for g in channels.groups(model))
    assert total - kept == round((1 - 0.7**rounds) * total)  # the model still loses exactly the rate


def test_a_cap_that_leaves_the_rate_unreachable_is_refused_up_front():
    with pytest.raises(ParamsError, match=r"prune.rate = 0.5: round 2 would leave .* fewer than the .* prune.max_layer_fraction = 0.6"):
        channel_prune_hp("bn_slimming", "global", max_layer_fraction=0.6)


def test_params_refuse_what_a_model_or_strategy_cannot_do():
    with pytest.raises(ParamsError, match="prune.granularity = 'weight': l1_filter prunes channels"):
        hp_with(**{"prune.strategy": "l1_filter"})
    with pytest.raises(ParamsError, match="has no BatchNorm2d layer"):
        hp_with(**{"prune.strategy": "bn_slimming", "prune.granularity": "channel"})  # LeNet
    with pytest.raises(ParamsError, match="model.width = 0.5: conv2 has fixed widths"):
        hp_with(**{"model.name": "conv2", "model.width": 0.5})
    with pytest.raises(ParamsError, match="rewind.iteration = 100: only rewind.target 'init'"):
        hp_with(**{"rewind.target": "finetune", "rewind.iteration": 100})


@pytest.mark.parametrize("strength", [1e-4, 1e-3, 1 / 3, 0.5])
def test_bn_l1_added_to_the_gradient_is_bit_for_bit_the_gradient_of_the_loss_term(strength):
    """Network Slimming's λ·Σ|γ|: λ·sign(γ) added after backward gives exactly the gradients of
    the loss with the term built in, pruned (zero) γ included."""
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    gradients = {}
    for form in ("none", "loss", "gradient"):
        model = trained_like(VGG).train()
        scales = base.batchnorm_scales(model)
        with torch.no_grad():
            scales[0][:3] = 0  # channels pruned away: sign(0) = 0, no pull either way
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        if form == "loss":
            loss = loss + strength * sum(gamma.abs().sum() for gamma in scales)
        loss.backward()
        if form == "gradient":
            slimming.add_batchnorm_l1_gradient(scales, strength)
        gradients[form] = {name: param.grad for name, param in model.named_parameters()}
    assert gradients["loss"].keys() == gradients["gradient"].keys()
    assert all(torch.equal(gradients["loss"][name], gradients["gradient"][name]) for name in gradients["loss"])
    first_gamma = [grads["features.1.weight"] for grads in gradients.values()]
    assert torch.equal(first_gamma[0][:3], first_gamma[2][:3])  # the zero γ
    assert not torch.equal(first_gamma[0][3:], first_gamma[2][3:])  # the others: the term did act


def test_bn_l1_in_the_training_loop_moves_gamma_by_lr_times_lambda_times_sign(mnist_root, make_hp):
    """One SGD step with and without the term: γ differs by exactly lr·λ·sign(γ)."""
    from lottery import data

    hp = make_hp(**{"model.name": "vgg11", "model.width": 0.125, "train.optimizer": "sgd", "train.lr": 0.1,
                    "train.iterations": 1, "train.eval_every": 1, "train.batch_size": 8})
    splits = data.load(hp.data, mnist_root)
    runs = {}
    for bn_l1 in (0.0, 0.5):
        model = catalog.build("vgg11", (1, 28, 28), 10, seed=0, width=0.125)
        training.train(model, masks.ones(model), splits, hp.train, seed=0, callbacks=[slimming.BatchNormL1(model, bn_l1)])
        runs[bn_l1] = model.features[1].weight.detach()
    start = catalog.build("vgg11", (1, 28, 28), 10, seed=0, width=0.125).features[1].weight.detach()
    assert torch.allclose(runs[0.0] - runs[0.5], 0.1 * 0.5 * start.sign(), atol=1e-6)


def test_retraining_budgets_follow_the_rewind_target():
    base = {"model.name": "vgg11", "model.width": 0.25, "prune.strategy": "l1_filter", "prune.granularity": "channel",
            "prune.rate": 0.5, "train.iterations": 1000, "train.milestones": [500, 750], "train.bn_l1": 1e-4,
            "rounds": hparams.rounds_section(1)}
    model = trained_like(VGG)
    mask = driver.prune(hp_with(**base).prune, model, masks.ones(model), seed=0)
    ratio = pipeline.flops_ratio(model, mask)
    assert 2.5 < ratio < 4.5  # half the channels: about a quarter of the conv FLOPs

    init, start = pipeline.retrain_schedule(hp_with(**base, **{"rewind.iteration": 100}), model, mask)
    assert (init.iterations, start, init.bn_l1, init.milestones) == (1000, 100, 0.0, [500, 750])
    finetune, start = pipeline.retrain_schedule(
        hp_with(**base, **{"rewind.target": "finetune", "rewind.finetune_lr": 0.003, "rewind.finetune_iterations": 300}),
        model,
        mask,
    )
    assert (finetune.lr, finetune.iterations, finetune.milestones, start) == (0.003, 300, [], 0)
    scratch_e, _ = pipeline.retrain_schedule(hp_with(**base, **{"rewind.target": "scratch"}), model, mask)
    assert scratch_e.iterations == 1000
    scratch_b, _ = pipeline.retrain_schedule(
        hp_with(**base, **{"rewind.target": "scratch", "rewind.scratch_budget": "flops", "rewind.max_budget_factor": 10.0}),
        model,
        mask,
    )
    assert scratch_b.iterations == round(1000 * ratio)
    assert scratch_b.milestones == [round(500 * ratio), round(750 * ratio)]
    capped, _ = pipeline.retrain_schedule(
        hp_with(**base, **{"rewind.target": "scratch", "rewind.scratch_budget": "flops"}), model, mask
    )
    assert capped.iterations == 2000  # max_budget_factor 2, as the default params say


@pytest.mark.parametrize("target", ["init", "finetune", "scratch"])
def test_multi_pass_slimming_keeps_the_sparsity_term_in_every_rounds_retraining(target):
    """Network Slimming's multi-pass scheme: sparsity training, pruning and fine-tuning repeat, so
    every round after the first is drawn from weights trained with λ·Σ|γ| too."""
    base = {"model.name": "vgg11", "model.width": 0.25, "prune.strategy": "bn_slimming", "prune.granularity": "channel",
            "prune.scope": "global", "train.bn_l1": 1e-4, "rewind.target": target, "rounds": hparams.rounds_section(2)}
    model = trained_like(VGG)
    mask = masks.ones(model)
    one_pass, _ = pipeline.retrain_schedule(hp_with(**base), model, mask)
    multi_pass, _ = pipeline.retrain_schedule(hp_with(**base, **{"train.bn_l1_rounds": "every"}), model, mask)
    assert (one_pass.bn_l1, multi_pass.bn_l1) == (0.0, 1e-4)
    with pytest.raises(ParamsError, match="train.bn_l1_rounds = 'every': repeats the sparsity term, and train.bn_l1 is 0"):
        hp_with(**{**base, "train.bn_l1": 0.0, "train.bn_l1_rounds": "every"})


@pytest.mark.parametrize("init", ["glorot", "kaiming_normal"])
def test_scratch_and_reinit_of_a_channel_mask_draw_from_the_pruned_architectures_own_init(init):
    """Liu et al.'s Scratch-E/B (and the reinit control of a structured ticket) train the pruned
    architecture from its standard init, whose fans are the kept channels', not the full model's."""
    spec = checkpoints.model_spec("vgg11", (1, 28, 28), 10, 0.25, init)
    full = checkpoints.build(spec, seed=5)
    mask = random_channel_mask(full, fraction=0.4)
    fresh = checkpoints.build_for_mask(spec, 5, mask)
    small = channels.compact(fresh, mask)
    variance = {
        "glorot": lambda fan_in, fan_out: 2 / (fan_in + fan_out),
        "kaiming_normal": lambda fan_in, fan_out: 2 / fan_in,
    }[init]
    full_params, fresh_params = dict(full.named_parameters()), dict(fresh.named_parameters())
    scales = []
    for name, small_weight in small.named_parameters():
        if name not in full.prunable_kinds():
            continue
        # The same draws, each scaled to the narrow layer's init: √(its variance / the full layer's).
        scale = (
            variance(*nn.init._calculate_fan_in_and_fan_out(small_weight))
            / variance(*nn.init._calculate_fan_in_and_fan_out(full_params[name]))
        ) ** 0.5
        scales.append(scale)
        assert torch.allclose(fresh_params[name], full_params[name] * scale, rtol=1e-5, atol=0), name
    # 40% of the channels kept: every layer's fans differ (but Kaiming's fan-in of the image layer).
    assert sum(abs(scale - 1) > 0.05 for scale in scales) >= len(scales) - 1
    control, control_mask = controls.REGISTRY["reinit"](full, spec, mask, 5, None, False)
    assert all(torch.equal(a, b) for a, b in zip(control.state_dict().values(), fresh.state_dict().values()))
    weight_mask = masks.ones(full)  # a weight mask leaves the architecture, and its init, as it is
    dense = checkpoints.build_for_mask(spec, 5, weight_mask).state_dict()
    assert all(torch.equal(dense[k], v) for k, v in full.state_dict().items())


def test_slimming_finetune_and_compact_end_to_end(workdir, make_hp):
    """The stage functions in DVC's order: sparsity training, bn_slimming, fine-tuning, compact."""
    import mlflow
    import mlflow.pytorch

    from lottery import data, paths
    from lottery.io import read_json

    hp = make_hp(
        **{
            "model.name": "vgg11",
            "model.width": 0.125,
            "train.optimizer": "sgd",
            "train.lr": 0.05,
            "train.momentum": 0.9,
            "train.bn_l1": 1e-4,
            "prune.strategy": "bn_slimming",
            "prune.granularity": "channel",
            "prune.scope": "global",
            "prune.rate": 0.4,
            "rewind.target": "finetune",
            "rewind.finetune_lr": 0.01,
            "rewind.finetune_iterations": 40,
            "compact.latency_repeats": 2,
            "tracking.registered_model": "slim-ticket",
            "report.tolerance": 1.0,  # any round "matches": the smallest one gets registered
            # No accuracy is checked: evaluation sets of 200 images, no weight-agnostic evaluation
            # (on VGG, nearly half of the lineage's CPU time).
            "data.test_subset": 200,
            "data.validation_size": 200,
            "weight_agnostic.values": [],
        }
    )
    pipeline.run_lineage(hp)
    splits = data.load(hp.data, paths.dataset_root("mnist"))
    for round_ in (1, 2):
        report = read_json(paths.compression_report(round_))
        assert report["form"] == "channels_removed" and report["max_abs_difference"] < 1e-4
        assert report["compact"]["parameters"] < report["dense"]["parameters"]
        assert report["compact"]["bytes"] < report["dense"]["bytes"]
        assert report["flops_speedup"] > 1
        metrics = read_json(paths.round_metrics(round_))
        assert metrics["early_stop_iteration"] <= 40  # fine-tuned for finetune_iterations
        masked, _ = checkpoints.load_model(paths.trained_weights(round_))
        small, _ = checkpoints.load_model(paths.compact_model(round_))
        with torch.no_grad():
            x = splits.test.x[:64]
            assert (masked.eval()(x) - small.eval()(x)).abs().max() < 1e-4
    channels_1 = channel_counts(*_trained_with_mask(1))
    channels_2 = channel_counts(*_trained_with_mask(2))
    assert sum(channels_2.values()) < sum(channels_1.values())  # iterative: round 2 prunes round 1 further

    client = mlflow.MlflowClient()
    (version,) = client.search_model_versions("name = 'slim-ticket'")
    assert version.tags["lottery.round"] == "2"
    registered = mlflow.pytorch.load_model(f"models:/slim-ticket/{version.version}")
    assert compression.parameter_count(registered) == read_json(paths.compression_report(2))["compact"]["parameters"]
    run_id = read_json(paths.lineage_file())["round_run_ids"]["2"]
    assert client.get_run(run_id).data.metrics["compression.flops_speedup"] > 1


def _trained_with_mask(round_):
    from lottery import paths

    model, _ = checkpoints.load_model(paths.trained_weights(round_))
    return model, masks.load(paths.mask(round_), model)
