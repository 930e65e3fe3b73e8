"""Factorized low-rank layers against pruning at equal weights (Khodak et al. 2021), on real data.

Khodak, Tenenholtz, Mackey and Fusi ("Initialization and Regularization of Factorized Neural
Layers", ICLR 2021) train networks whose layers are low-rank products UVᵀ and find that two
changes make them beat sparse lottery tickets at the same parameter count: spectral
initialization (SI, the factors of the ordinary init's truncated SVD) and Frobenius decay (FD,
weight decay on UVᵀ rather than on U and V). Their comparison: 10%, 5% and 2% of the dense
parameters, plain / SI / FD / SI+FD, learning rate ×0.1 at 50% and 75% of training.

Setups, every seed in `--seeds` side by side (one process and one thread each):

  lenet     LeNet-300-100 on MNIST (55k train / 5k validation / 10k test), SGD lr 0.05, batch 60
  vgg       VGG-11-BN, width 0.25, Kaiming θ0, on Fashion-MNIST (58k / 2k / 10k), SGD lr 0.1, batch 128
  vgg-0.5   the same at width 0.5 for 40 epochs (18,120 iterations): issue 27's GPU schedule

All: momentum 0.9, weight decay 5e-4, `--iterations` per training (0: the setup's own) with the
rate ×0.1 at 50% and 75%. `--preset cpu` (the default: lenet and vgg, the recorded runs'
settings) or `--preset gpu` (vgg-0.5, on the GPU where torch finds one: train.device auto).

The arms of each setup and seed, each on the pipeline's own stage functions (prune, rewind,
retrain, evaluate, compact) in a workspace of its own, kept in the arms file as it finishes
(bench/arms.py: a run cut short keeps them, the next does only the rest):

  dense     round 0
  IMP       iterative magnitude pruning, one global ranking of the conv and hidden fc weights
            (the output layer kept whole, as the factorized models keep it), rewound to θ0 each
            round and retrained on the dense schedule: rounds 1-2 take it to 10% of the weights
            (the 10% arm), round 3 to 5%, round 4 to 2% (each arm goes on from the one before)
  plain, SI, FD, SI+FD
            factorize.enabled, from θ0 (rewind.target init) at the rank scale whose factors store
            as many weights as a ticket at the ratio keeps (at most), trained on the dense schedule
  slim-dense, slim
            (not lenet: LeNet has no BatchNorm) Network Slimming: a second dense run with
            λ = 1e-3 on |γ| (bench/structured_fmnist.py's), one global γ threshold at the channel
            ratio whose compact model stores the ratio's weights (at most; bisected, at most 95%
            of any layer), then fine-tuned for `--iterations` at 0.01

"Weights" are the Linear and Conv2d weights (what masks count); biases and BatchNorm, the same in
every model, are left out. With the cpu preset, once the seeds finish, latency is measured in this
process with the machine otherwise idle: untrained models of the architectures seed 0's arms ship
(each arm's checkpoint spec: latency depends on the shapes alone), interleaved, batch 1 and 64,
medians. The gpu preset measures none (a small network's GPU latency is another question).
Writes bench/results/factorized_arms.json as arms finish, then factorized.{json,md,png} (the gpu
preset: factorized_gpu*), and prints the tables and the claim's verdict.
"""

import argparse
import copy
import dataclasses
import functools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from arms import (
    Arm, add_arm_options, apply_preset, arm_key, begin, child_arguments, evaluated_examples, run_seed_processes,
    report_stem, training_minutes, verdict,
)
from structured_fmnist import ROOT, copy_dense_run, enter_workspace, interleaved_latency, parse_seeded_args

from lottery import channels, checkpoints, compression, data, hparams, identity, masks, paths, pipeline  # noqa: E402
from lottery import records, report, tracking, validation  # noqa: E402
from lottery.factorize import layers, plans  # noqa: E402
from lottery.io import read_json, write_json, write_text  # noqa: E402
from lottery.models import catalog  # noqa: E402
from lottery.pruning import driver  # noqa: E402

RATIOS = (0.10, 0.05, 0.02)
# name: (factorize.spectral_init, factorize.frobenius_decay)
VARIANTS = {"plain": (False, False), "SI": (True, False), "FD": (False, True), "SI+FD": (True, True)}
WEIGHT_DECAY = 5e-4
BN_L1 = 1e-3
SLIM_LR = 0.01
LATENCY_ROUNDS = 15
TEST_EXAMPLES = 10_000  # MNIST's and Fashion-MNIST's test sets


@dataclass(frozen=True)
class Setup:
    dataset: str
    model: str
    width: float
    lr: float
    batch_size: int
    validation_size: int
    iterations: int  # default --iterations
    slimming: bool  # has BatchNorm, so Network Slimming applies


SETUPS = {
    "lenet": Setup("mnist", "lenet_300_100", 1.0, 0.05, 60, 5000, 5000, slimming=False),
    "vgg": Setup("fashion_mnist", "vgg11", 0.25, 0.1, 128, 2000, 1000, slimming=True),
    # 40 epochs of the 58,000 training images at batch 128 (453 iterations each).
    "vgg-0.5": Setup("fashion_mnist", "vgg11", 0.5, 0.1, 128, 2000, 40 * (58_000 // 128), slimming=True),
}
PRESETS = {
    "cpu": {"setups": ["lenet", "vgg"], "latency": True},
    "gpu": {"setups": ["vgg-0.5"], "latency": False},
}


def params(base, seed, setup, iterations, overrides=(), rounds=1):
    """`base`: the project's params.yaml as the run started (so editing it mid-run changes nothing)."""
    raw = yaml.safe_load(base.read_text())
    raw["seed"] = seed
    root = ROOT / "data" / setup.dataset
    raw["data"].update(dataset=setup.dataset, source="local", local_root=str(root), validation_size=setup.validation_size)
    raw["model"].update(name=setup.model, width=setup.width, init="paper")
    raw["train"].update(
        optimizer="sgd",
        lr=setup.lr,
        momentum=0.9,
        batch_size=setup.batch_size,
        iterations=iterations,
        eval_every=max(1, iterations // 4),
        milestones=[iterations // 2, iterations * 3 // 4],
        gamma=0.1,
        warmup_iterations=0,
        weight_decay=WEIGHT_DECAY,
        bn_l1=0.0,
    )
    raw["prune"].update(
        strategy="magnitude", granularity="weight", scope="global", schedule="oneshot", conv_rate=None, output_rate=0.0
    )
    raw["rewind"].update(target="init", iteration=0)
    raw["controls"]["run"] = []
    raw["early_bird"]["enabled"] = False
    raw["weight_agnostic"]["values"] = []  # evaluations this bench does not use
    raw["compact"]["latency_repeats"] = 3  # the figures that count are measured at the end, machine idle
    raw["tracking"].update(experiment="factorized-bench", registered_model="")
    raw["rounds"] = hparams.rounds_section(rounds)
    for dotted, value in overrides:
        section, key = dotted.split(".")
        raw[section][key] = value
    return validation.from_dict(raw)


def weight_counts(model):
    """(all Linear/Conv2d weights, the output layer's)."""
    weights = dict(model.named_parameters())
    output = sum(weights[name].numel() for name, kind in model.prunable_kinds().items() if kind == "output")
    return plans.stored_weights(model, {}), output


def pooled_rate(model, current, target):
    """The global rate that takes a model storing `current` weights to `target`, the output layer
    kept whole (only the pooled weights lose any)."""
    _, output = weight_counts(model)
    return 1 - (target - output) / (current - output)


PIPELINE_ROUND = (pipeline.prune, pipeline.rewind, pipeline.retrain, pipeline.evaluate, pipeline.compact)
SLIM = (("prune.strategy", "bn_slimming"), ("prune.granularity", "channel"), ("prune.output_rate", None),
        ("prune.min_channels", 1), ("prune.max_layer_fraction", 0.95))


def setup_arms(args, base, seed, name):
    """The arms of one setup and seed, in the order they run (the recorded runs' order): dense,
    Network Slimming's sparsity-trained dense run, IMP at 10, 5 and 2%, each factorized variant at
    each ratio, then the slimmed models at each ratio. An arm's settings: the digest of the params of every training it and the
    arms it needs run (the slim arms' rate is left out: it is bisected from the trained weights)."""
    setup = SETUPS[name]
    iterations = args.iterations or setup.iterations
    top = args.workdir / f"seed_{seed}" / name
    spec = data.DATASETS[setup.dataset]
    # θ0's shapes: what the weight counts depend on.
    shapes = catalog.build(setup.model, spec.input_shape, spec.num_classes, seed=seed, width=setup.width)

    def hp(*overrides, rounds=1):
        return params(base, seed, setup, iterations, overrides, rounds)

    dense_hp = hp()
    one_training = training_minutes(
        compression.flops(shapes, shapes.input_shape), setup.batch_size, iterations, evaluated_examples(dense_hp.train, setup.validation_size, TEST_EXAMPLES)
    )
    found = []

    def add(method, ratio, run, trained_with, needs=(), trainings=1):
        coordinates = {"setup": name, "seed": seed, "method": method, "ratio": ratio}
        settings = {"params": identity.digest([identity.of(trained) for trained in trained_with])}
        found.append(Arm(coordinates, settings, run, trainings * one_training, tuple(needs)))
        return found[-1].key

    def branch(workspace, dense, round_hp):
        enter_workspace(top / workspace, setup.dataset)
        copy_dense_run(top / dense)
        for stage in PIPELINE_ROUND:
            stage(round_hp, 1)
        return figures(top / workspace, 1)

    def dense_run(workspace, dense_run_hp):
        enter_workspace(top / workspace, setup.dataset)
        pipeline.init(dense_run_hp)
        pipeline.train_dense(dense_run_hp)
        return figures(top / workspace, 0)

    dense = add("dense", 1.0, functools.partial(dense_run, "dense", dense_hp), [dense_hp])
    if setup.slimming:
        sparsity_hp = hp(*SLIM, ("train.bn_l1", BN_L1))
        slim_dense = add("slim-dense", 1.0, functools.partial(dense_run, "slim-dense", sparsity_hp), [sparsity_hp])
    total, _ = weight_counts(shapes)
    wanted = {ratio: round(ratio * total) for ratio in RATIOS}
    # IMP: rounds 1-2 keep √10% each, then 5% and 2% of the weights.
    goals = [round(total * RATIOS[0] ** 0.5), wanted[0.10], wanted[0.05], wanted[0.02]]
    kept = [total, *goals]
    imp_hps = {
        round_: hp(("prune.schedule", "iterative"), ("prune.rate", pooled_rate(shapes, kept[round_ - 1], kept[round_])), rounds=round_)
        for round_ in range(1, len(goals) + 1)
    }

    def imp_run(rounds):
        enter_workspace(top / "imp", setup.dataset)
        if rounds[0] == 1:
            copy_dense_run(top / "dense")
        for round_ in rounds:
            for stage in PIPELINE_ROUND:
                stage(imp_hps[round_], round_)
            measured = read_json(paths.sparsity_report(round_))["kept"]
            if abs(measured - kept[round_]) > 1:
                raise AssertionError(f"IMP round {round_}: {measured} weights kept, {kept[round_]} wanted")
        return figures(top / "imp", rounds[-1])

    previous, trained_with = dense, [dense_hp]
    for ratio, rounds in zip(RATIOS, ((1, 2), (3,), (4,))):
        trained_with = trained_with + [imp_hps[round_] for round_ in rounds]
        previous = add("IMP", ratio, functools.partial(imp_run, rounds), trained_with, (previous,), len(rounds))
    for ratio in RATIOS:
        rate = ("prune.rate", pooled_rate(shapes, total, wanted[ratio]))
        for variant, (spectral, frobenius) in VARIANTS.items():
            switches = (("factorize.enabled", True), ("factorize.spectral_init", spectral), ("factorize.frobenius_decay", frobenius))
            chosen = hp(rate, *switches)
            add(variant, ratio, functools.partial(branch, f"{variant}-{ratio:g}", "dense", chosen), [dense_hp, chosen], (dense,))
    if setup.slimming:
        finetune = (("rewind.target", "finetune"), ("rewind.finetune_lr", SLIM_LR), ("rewind.finetune_iterations", iterations))

        def slim_run(ratio):
            sparsity_trained, _ = checkpoints.load_model(top / "slim-dense" / paths.trained_weights(0))
            rate = slimming_rate(hp(*SLIM), sparsity_trained, wanted[ratio])
            return branch(f"slim-{ratio:g}", "slim-dense", hp(*SLIM, *finetune, ("prune.rate", rate)))

        for ratio in RATIOS:
            add("slim", ratio, functools.partial(slim_run, ratio), [sparsity_hp, hp(*SLIM, *finetune)], (slim_dense,))
    return found


def all_arms(args, base):
    return [arm for seed in args.seeds for name in args.setups for arm in setup_arms(args, base, seed, name)]


def figures(workspace, round_):
    """An arm's figures from its workspace: test accuracy (final and at the early stop), weights
    remaining, and the parameters, FLOPs and architecture (checkpoint spec) of the model it ships."""
    metrics = read_json(workspace / paths.round_metrics(round_))
    found = {
        "accuracy": metrics["final_test_accuracy"],
        "accuracy_at_early_stop": metrics["test_accuracy_at_early_stop"],
        "weights_remaining": metrics["weights_remaining"],
    }
    if round_:
        compact = read_json(workspace / paths.compression_report(round_))["compact"]
        shipped_spec = checkpoints.load(workspace / paths.compact_model(round_))["model"]
        found.update(parameters=compact["parameters"], flops=compact["flops"], spec=shipped_spec)
    else:
        model, checkpoint = checkpoints.load_model(workspace / paths.trained_weights(0))
        found.update(
            parameters=compression.parameter_count(model), flops=compression.flops(model, model.input_shape), spec=checkpoint["model"]
        )
    if "ranks_per_layer" in metrics:
        found["ranks"] = metrics["ranks_per_layer"]
    return found


def slimming_rate(hp, trained, target):
    """The lowest Network Slimming channel rate (to 1e-4) whose compact model stores at most
    `target` weights."""

    def stored(rate):
        mask = driver.prune(dataclasses.replace(hp.prune, rate=rate), trained, masks.ones(trained), seed=hp.seed + 1)
        return plans.stored_weights(channels.compact(trained, mask), {})

    low, high = 0.0, 0.999
    if stored(high) > target:
        raise AssertionError(f"Network Slimming keeps more than {target} weights at every rate its per-layer cap allows")
    while high - low > 1e-4:
        middle = (low + high) / 2
        low, high = (middle, high) if stored(middle) > target else (low, middle)
    return high


def methods(setup):
    return ["IMP", *VARIANTS, *(["slim"] if setup.slimming else [])]


def collect(finished, seeds, name):
    """A setup's figures from its finished arms ({key: entry}): accuracy and time per seed done,
    weights, parameters, FLOPs and architecture of the first such seed's model; an arm no seed has
    done is left out (the dense run: None)."""

    def gathered(method, ratio):
        done = {seed: finished.get(arm_key({"setup": name, "seed": seed, "method": method, "ratio": ratio})) for seed in seeds}
        done = {seed: entry for seed, entry in done.items() if entry}
        if not done:
            return None
        first = next(iter(done.values()))["result"]
        found = {
            "accuracy": {seed: entry["result"]["accuracy"] for seed, entry in done.items()},
            "accuracy_at_early_stop": {seed: entry["result"]["accuracy_at_early_stop"] for seed, entry in done.items()},
            "seconds": {seed: entry["seconds"] for seed, entry in done.items()},
        }
        found.update({key: first[key] for key in ("weights_remaining", "parameters", "flops", "spec", "ranks") if key in first})
        return found

    setup = SETUPS[name]
    results = {"dense": gathered("dense", 1.0), "arms": {}}
    for method in methods(setup):
        by_ratio = {ratio: gathered(method, ratio) for ratio in RATIOS}
        results["arms"][method] = {ratio: measured for ratio, measured in by_ratio.items() if measured}
    if setup.slimming:
        results["dense_sparsity_trained"] = gathered("slim-dense", 1.0)
    return results


def add_latency(all_results):
    """Each shipped model's latency_ms ({batch: median ms}): one untrained model per distinct
    architecture (the factorized variants share SI+FD's, IMP's sparse file runs as the dense model
    it loads into), all interleaved so any drift in the machine's speed hits them alike."""
    shipped = [
        measured
        for results in all_results.values()
        for measured in [results["dense"], *(m for by_ratio in results["arms"].values() for m in by_ratio.values())]
        if measured
    ]
    specs = {identity.digest(measured["spec"]): measured["spec"] for measured in shipped}
    timed = interleaved_latency({key: checkpoints.build(spec).eval() for key, spec in specs.items()}, LATENCY_ROUNDS)
    for measured in shipped:
        measured["latency_ms"] = timed[identity.digest(measured["spec"])]


def full_width_latency():
    """{model: {batch: median ms}} of an untrained full-width VGG-11 (the paper's size) on
    Fashion-MNIST's input: dense, and factorized at each ratio, interleaved. Latency depends on
    the shapes alone, so no training is needed to time the width the benchmark cannot train here."""
    dense = catalog.build("vgg11", (1, 28, 28), 10, seed=0, width=1.0).eval()
    total = plans.stored_weights(dense, {})
    timed = {"dense": dense}
    for ratio in RATIOS:
        _, ranks = plans.matched_ranks(dense, round(ratio * total))
        timed[f"factorized {100 * ratio:g}%"] = layers.factorize(copy.deepcopy(dense), ranks).eval()
    return interleaved_latency(timed, LATENCY_ROUNDS, passes=5)


def full_width_table(latency):
    dense = latency["dense"]
    lines = [
        "**VGG-11 at full width (untrained, latency only)**",
        "",
        "| model | latency b1 / b64 (ms) | b1 vs dense | b64 vs dense |",
        "|---|---:|---:|---:|",
    ]
    for key, measured in latency.items():
        lines.append(
            f"| {key} | {measured[1]:.2f} / {measured[64]:.1f} | {measured[1] / dense[1]:.2f}× | {measured[64] / dense[64]:.2f}× |"
        )
    return "\n".join(lines)


def mean(per_seed):
    return statistics.fmean(per_seed.values())


def accuracy_cell(per_seed, seeds):
    cell = f"{100 * mean(per_seed):.2f}% ({', '.join(f'{100 * a:.2f}' for a in per_seed.values())})"
    return cell if len(per_seed) == len(seeds) else f"{cell}, {len(per_seed)} of {len(seeds)} seeds"


def table(title, results, seeds):
    dense = results["dense"]
    if dense is None:
        return f"**{title}**\n\nno arm done yet"
    timed = "latency_ms" in dense
    lines = [
        f"**{title}**",
        "",
        "| arm | weights remaining | final test acc. (mean; per seed) | Δ vs dense | params | MFLOPs "
        + ("| latency b1 / b64 (ms) | b64 vs dense |" if timed else "|"),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if timed else ""),
        f"| dense | 100.00% | {accuracy_cell(dense['accuracy'], seeds)} | | {dense['parameters']:,} | {dense['flops'] / 1e6:.2f} |"
        + (f" {dense['latency_ms'][1]:.3f} / {dense['latency_ms'][64]:.2f} | 1.00× |" if timed else ""),
    ]
    for ratio in RATIOS:
        for arm, by_ratio in results["arms"].items():
            if ratio not in by_ratio:
                continue
            measured = by_ratio[ratio]
            row = (
                f"| {arm} {100 * ratio:g}% | {100 * measured['weights_remaining']:.2f}% | {accuracy_cell(measured['accuracy'], seeds)} "
                f"| {100 * (mean(measured['accuracy']) - mean(dense['accuracy'])):+.2f} pp | {measured['parameters']:,} "
                f"| {measured['flops'] / 1e6:.2f} |"
            )
            if timed:
                latency = measured["latency_ms"]
                row += f" {latency[1]:.3f} / {latency[64]:.2f} | {latency[64] / dense['latency_ms'][64]:.2f}× |"
            lines.append(row)
    return "\n".join(lines)


def complete(measured, seeds):
    return measured is not None and len(measured["accuracy"]) == len(seeds)


def goals(results, seeds):
    """The issue's goals, each measured where every seed has done its arms (else left out): SI+FD
    against plain at every ratio; at 10%, SI+FD against dense and against the IMP ticket; the 10%
    factorized model's batch-64 latency against dense."""
    arms_, dense = results["arms"], results["dense"]
    found = {"si_fd_minus_plain_pp": {}}
    for ratio in RATIOS:
        si_fd, plain = arms_["SI+FD"].get(ratio), arms_["plain"].get(ratio)
        if complete(si_fd, seeds) and complete(plain, seeds):
            found["si_fd_minus_plain_pp"][ratio] = 100 * (mean(si_fd["accuracy"]) - mean(plain["accuracy"]))
    at_10 = arms_["SI+FD"].get(0.10)
    if complete(at_10, seeds) and complete(dense, seeds):
        found["si_fd_minus_dense_pp_at_10"] = 100 * (mean(at_10["accuracy"]) - mean(dense["accuracy"]))
        if "latency_ms" in at_10:
            found["latency_b64_vs_dense_at_10"] = at_10["latency_ms"][64] / dense["latency_ms"][64]
    if complete(at_10, seeds) and complete(arms_["IMP"].get(0.10), seeds):
        found["si_fd_minus_imp_pp_at_10"] = 100 * (mean(at_10["accuracy"]) - mean(arms_["IMP"][0.10]["accuracy"]))
    return found


def claim(title, results, seeds):
    """One line: Khodak et al.'s claim against the ticket, SI+FD above the IMP ticket at every
    ratio (mean over the seeds), with the gaps; pending while an arm of it is not done."""
    name = f"{title}: SI+FD above the IMP ticket at equal weights (Khodak et al.)"
    gaps = {}
    for ratio in RATIOS:
        si_fd, imp = results["arms"]["SI+FD"].get(ratio), results["arms"]["IMP"].get(ratio)
        if complete(si_fd, seeds) and complete(imp, seeds):
            gaps[ratio] = 100 * (mean(si_fd["accuracy"]) - mean(imp["accuracy"]))
    if len(gaps) < len(RATIOS):
        return f"{name}: pending ({len(gaps)} of {len(RATIOS)} ratios done by every seed)"
    gap_text = ", ".join(f"{gap:+.2f} pp at {100 * ratio:g}%" for ratio, gap in gaps.items())
    return f"{name}: {verdict(all(gap > 0 for gap in gaps.values()))} (SI+FD − IMP: {gap_text})"


def figure(all_results, seeds, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(6.5 * len(all_results), 4.8))
    axes = list(axes) if len(all_results) > 1 else [axes]
    for axis, (name, results) in zip(axes, all_results.items()):
        if results["dense"]:
            axis.axhline(100 * mean(results["dense"]["accuracy"]), color="black", ls=":", label="dense")
        for arm, by_ratio in results["arms"].items():
            points = [by_ratio[ratio] for ratio in RATIOS if ratio in by_ratio]
            if not points:
                continue
            accuracy = [[100 * a for a in p["accuracy"].values()] for p in points]
            centre = [statistics.fmean(a) for a in accuracy]
            spread = [[c - min(a) for c, a in zip(centre, accuracy)], [max(a) - c for c, a in zip(centre, accuracy)]]
            remaining = [100 * p["weights_remaining"] for p in points]
            style = "--" if arm in ("IMP", "slim") else "-"
            axis.errorbar(remaining, centre, yerr=spread, marker="o", capsize=3, ls=style, label=arm)
        axis.set_title(f"{name}: {SETUPS[name].model} (width {SETUPS[name].width:g}) on {SETUPS[name].dataset}")
        axis.set_ylabel("final test accuracy (%)")
    report.save_density_figure(fig, axes, f"factorized vs pruned at equal weights, {len(seeds)} seed(s); bars: min-max", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=0, help="every training (0: the setup's own: lenet 5000, vgg 1000, vgg-0.5 18120)")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), help="default: the preset's (cpu: lenet vgg; gpu: vgg-0.5)")
    add_arm_options(parser, PRESETS)
    args = parse_seeded_args(parser, Path("/tmp/lottery-factorized"))
    apply_preset(args, PRESETS)
    begun = begin(args, "factorized", all_arms)
    if begun is None:
        return
    stem, arms_file, base, arms = begun
    store_params = params(base, args.seeds[0], SETUPS[args.setups[0]], 10)
    tracking.publish(store_params, records.lineage(store_params))  # create the store once
    start = time.perf_counter()
    options = child_arguments(args, "iterations", "workdir", "setups", "preset", "out", "max_arms")
    finished_run = run_seed_processes(__file__, args.seeds, options)
    run_minutes = (time.perf_counter() - start) / 60
    finished = arms_file.finished_entries(arms)
    all_results = {name: collect(finished, args.seeds, name) for name in args.setups}
    timed = args.latency and finished_run  # a stopped run reports at once
    if timed:
        add_latency(all_results)
    titles = {
        name: f"{SETUPS[name].model} (width {SETUPS[name].width:g}) on {SETUPS[name].dataset}, "
        f"{args.iterations or SETUPS[name].iterations} iterations per training"
        for name in args.setups
    }
    tables = [table(titles[name], results, args.seeds) for name, results in all_results.items()]
    width_latency = full_width_latency() if timed else None
    if width_latency:
        tables.append(full_width_table(width_latency))
    claims = {name: claim(titles[name], results, args.seeds) for name, results in all_results.items()}
    text = "\n\n".join([*tables, *claims.values()])
    result = {
        "settings": {
            "preset": args.preset,
            "seeds": args.seeds,
            "iterations": {name: args.iterations or SETUPS[name].iterations for name in args.setups},
            "weight_decay": WEIGHT_DECAY,
            "ratios": RATIOS,
            "setups": {name: dataclasses.asdict(SETUPS[name]) for name in args.setups},
            "arms_file": arms_file.path.name,
            "arms_done": f"{len(finished)} of {len(arms)}",
            "minutes_this_run": run_minutes,
        },
        "claims": claims,
        "goals": {name: goals(results, args.seeds) for name, results in all_results.items()},
        "results": all_results,
        "full_width_vgg11_latency_ms": width_latency,
    }
    stem = report_stem(stem, finished, arms)
    write_json(args.out / f"{stem}.json", result)
    write_text(args.out / f"{stem}.md", text + "\n")
    figure(all_results, args.seeds, args.out / f"{stem}.png")
    print(text)
    print(yaml.safe_dump({"settings": result["settings"], "goals": result["goals"]}, sort_keys=False))


if __name__ == "__main__":
    main()
