"""Factorized low-rank layers against pruning at equal weights (Khodak et al. 2021), on real data.

Khodak, Tenenholtz, Mackey and Fusi ("Initialization and Regularization of Factorized Neural
Layers", ICLR 2021) train networks whose layers are low-rank products UVᵀ and find that two
changes make them beat sparse lottery tickets at the same parameter count: spectral
initialization (SI, the factors of the ordinary init's truncated SVD) and Frobenius decay (FD,
weight decay on UVᵀ rather than on U and V). Their comparison: 10%, 5% and 2% of the dense
parameters, plain / SI / FD / SI+FD, learning rate ×0.1 at 50% and 75% of training.

Two setups, every seed in `--seeds` side by side (one process and one thread each):

  lenet   LeNet-300-100 on MNIST (55k train / 5k validation / 10k test), SGD lr 0.05, batch 60
  vgg     VGG-11-BN, width 0.25, Kaiming θ0, on Fashion-MNIST (58k / 2k / 10k), SGD lr 0.1, batch 128

Both: momentum 0.9, weight decay 5e-4, `--iterations` per training with the rate ×0.1 at 50%
and 75%. Per setup, each on the pipeline's own stage functions (prune, rewind, retrain,
evaluate, compact) in a workspace of its own:

  dense     round 0
  IMP       iterative magnitude pruning, one global ranking of the conv and hidden fc weights
            (the output layer kept whole, as the factorized models keep it), rewound to θ0 each
            round and retrained on the dense schedule; rounds 1-2 take it to 10% of the weights,
            round 3 to 5%, round 4 to 2%
  plain, SI, FD, SI+FD
            factorize.enabled, from θ0 (rewind.target init) at the rank scale whose factors store
            as many weights as a ticket at the ratio keeps (at most), trained on the dense schedule
  slim      (vgg only: LeNet has no BatchNorm) Network Slimming: a second dense run with
            λ = 1e-3 on |γ| (bench/structured_fmnist.py's), one global γ threshold at the channel
            ratio whose compact model stores the ratio's weights (at most; bisected, at most 95%
            of any layer), then fine-tuned for `--iterations` at 0.01

"Weights" are the Linear and Conv2d weights (what masks count); biases and BatchNorm, the same in
every model, are left out. After the seeds finish, the latency of seed 0's dense and compact
models is measured in this process with the machine otherwise idle: interleaved, batch 1 and 64,
medians. Writes bench/results/factorized.{json,md,png} and prints the tables.
"""

import argparse
import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from structured_fmnist import (
    RESULTS, ROOT, copy_dense_run, enter_workspace, fresh_workdir, interleaved_latency, parse_seeded_args, run_seeds
)

from lottery import channels, checkpoints, factorize, hparams, masks, models, paths, pipeline, pruning  # noqa: E402
from lottery import records, report, tracking  # noqa: E402
from lottery.io import read_json, write_json, write_text  # noqa: E402

RATIOS = (0.10, 0.05, 0.02)
# name: (factorize.spectral_init, factorize.frobenius_decay)
VARIANTS = {"plain": (False, False), "SI": (True, False), "FD": (False, True), "SI+FD": (True, True)}
WEIGHT_DECAY = 5e-4
BN_L1 = 1e-3
SLIM_LR = 0.01
LATENCY_ROUNDS = 15


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
    return hparams.from_dict(raw)


def weight_counts(model):
    """(all Linear/Conv2d weights, the output layer's)."""
    weights = dict(model.named_parameters())
    output = sum(weights[name].numel() for name, kind in model.prunable_kinds().items() if kind == "output")
    return factorize.stored_weights(model, {}), output


def pooled_rate(model, current, target):
    """The global rate that takes a model storing `current` weights to `target`, the output layer
    kept whole (only the pooled weights lose any)."""
    _, output = weight_counts(model)
    return 1 - (target - output) / (current - output)


def one_seed(args):
    import torch

    torch.set_num_threads(1)
    for name in args.setups:
        run_setup(args, name, SETUPS[name])


PIPELINE_ROUND = (pipeline.prune, pipeline.rewind, pipeline.retrain, pipeline.evaluate, pipeline.compact)


def run_setup(args, name, setup):
    iterations = args.iterations or setup.iterations
    top = args.workdir / f"seed_{args.seed}" / name

    def hp(*overrides, rounds=1):
        return params(args.workdir / "params.base.yaml", args.seed, setup, iterations, overrides, rounds)

    def branch(workspace, dense, hp_of_round, rounds=(1,)):
        enter_workspace(top / workspace, setup.dataset)
        copy_dense_run(top / dense)
        started = time.perf_counter()
        for round_ in rounds:
            round_hp = hp_of_round(round_)
            for stage in PIPELINE_ROUND:
                stage(round_hp, round_)
        write_json(Path("bench_seconds.json"), {"seconds": time.perf_counter() - started})

    for dense, overrides in (("dense", ()), ("slim-dense", SLIM + (("train.bn_l1", BN_L1),)))[: 1 + setup.slimming]:
        enter_workspace(top / dense, setup.dataset)
        pipeline.init(hp(*overrides))
        pipeline.train_dense(hp(*overrides))
    theta0, _ = checkpoints.load_model(top / "dense" / paths.init_checkpoint())
    total, _ = weight_counts(theta0)
    wanted = {ratio: round(ratio * total) for ratio in RATIOS}
    # IMP: rounds 1-2 keep √10% each, then 5% and 2% of the weights.
    goals = [round(total * RATIOS[0] ** 0.5), wanted[0.10], wanted[0.05], wanted[0.02]]
    kept = [total]

    def imp_round(round_):
        kept.append(goals[round_ - 1])
        rate = pooled_rate(theta0, kept[round_ - 1], goals[round_ - 1])
        return hp(("prune.schedule", "iterative"), ("prune.rate", rate), rounds=round_)

    branch("imp", "dense", imp_round, rounds=range(1, len(goals) + 1))
    for round_, goal in enumerate(goals, start=1):
        measured = read_json(top / "imp" / paths.sparsity_report(round_))["kept"]
        if abs(measured - goal) > 1:
            raise AssertionError(f"IMP round {round_}: {measured} weights kept, {goal} wanted")
    for ratio in RATIOS:
        rate = ("prune.rate", pooled_rate(theta0, total, wanted[ratio]))
        for variant, (spectral, frobenius) in VARIANTS.items():
            switches = (("factorize.enabled", True), ("factorize.spectral_init", spectral), ("factorize.frobenius_decay", frobenius))
            branch(f"{variant}-{ratio:g}", "dense", lambda _, chosen=hp(rate, *switches): chosen)
    if setup.slimming:
        sparsity_trained, _ = checkpoints.load_model(top / "slim-dense" / paths.trained_weights(0))
        finetune = (("rewind.target", "finetune"), ("rewind.finetune_lr", SLIM_LR), ("rewind.finetune_iterations", iterations))
        for ratio in RATIOS:
            rate = slimming_rate(hp(*SLIM), sparsity_trained, wanted[ratio])
            branch(f"slim-{ratio:g}", "slim-dense", lambda _, chosen=hp(*SLIM, *finetune, ("prune.rate", rate)): chosen)


SLIM = (("prune.strategy", "bn_slimming"), ("prune.granularity", "channel"), ("prune.output_rate", None),
        ("prune.min_channels", 1), ("prune.max_layer_fraction", 0.95))


def slimming_rate(hp, trained, target):
    """The lowest Network Slimming channel rate (to 1e-4) whose compact model stores at most
    `target` weights."""

    def stored(rate):
        mask = pruning.prune(dataclasses.replace(hp.prune, rate=rate), trained, masks.ones(trained), seed=hp.seed + 1)
        return factorize.stored_weights(channels.compact(trained, mask), {})

    low, high = 0.0, 0.999
    if stored(high) > target:
        raise AssertionError(f"Network Slimming keeps more than {target} weights at every rate its per-layer cap allows")
    while high - low > 1e-4:
        middle = (low + high) / 2
        low, high = (middle, high) if stored(middle) > target else (low, middle)
    return high


def arms(setup):
    """{arm: {ratio: (workspace, round)}} of every compressed model of a setup."""
    found = {"IMP": {ratio: ("imp", round_) for ratio, round_ in zip(RATIOS, (2, 3, 4))}}
    for variant in VARIANTS:
        found[variant] = {ratio: (f"{variant}-{ratio:g}", 1) for ratio in RATIOS}
    if setup.slimming:
        found["slim"] = {ratio: (f"slim-{ratio:g}", 1) for ratio in RATIOS}
    return found


def measure_latency(top, setup):
    """{(workspace, round): {batch: median ms}} of seed `top`'s dense model and each arm's shipped
    one (IMP's sparse file runs as the dense model it loads into), all interleaved so any drift in
    the machine's speed hits them alike."""
    shipped = {("dense", 0): checkpoints.load_model(top / "dense" / paths.trained_weights(0))[0]}
    for arm, by_ratio in arms(setup).items():
        if arm in ("plain", "SI", "FD"):  # SI+FD's architecture: the same ranks
            continue
        for workspace, round_ in by_ratio.values():
            shipped[(workspace, round_)] = checkpoints.load_model(top / workspace / paths.compact_model(round_))[0]
    return interleaved_latency(shipped, LATENCY_ROUNDS)


def full_width_latency():
    """{model: {batch: median ms}} of an untrained full-width VGG-11 (the paper's size) on
    Fashion-MNIST's input: dense, and factorized at each ratio, interleaved. Latency depends on
    the shapes alone, so no training is needed to time the width the benchmark cannot train here."""
    dense = models.build("vgg11", (1, 28, 28), 10, seed=0, width=1.0).eval()
    total = factorize.stored_weights(dense, {})
    timed = {"dense": dense}
    for ratio in RATIOS:
        _, ranks = factorize.matched_ranks(dense, round(ratio * total))
        timed[f"factorized {100 * ratio:g}%"] = factorize.factorize(copy.deepcopy(dense), ranks).eval()
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


def collect(args, name, setup):
    """The setup's dense and arm figures: accuracy per seed, weights, parameters, FLOPs, latency."""
    tops = {seed: args.workdir / f"seed_{seed}" / name for seed in args.seeds}
    latency = measure_latency(tops[args.seeds[0]], setup)
    first = tops[args.seeds[0]]

    def figures(workspace, round_):
        metrics = {seed: read_json(top / workspace / paths.round_metrics(round_)) for seed, top in tops.items()}
        found = {
            "accuracy": {seed: m["final_test_accuracy"] for seed, m in metrics.items()},
            "accuracy_at_early_stop": {seed: m["test_accuracy_at_early_stop"] for seed, m in metrics.items()},
            "weights_remaining": metrics[args.seeds[0]]["weights_remaining"],
        }
        if round_:
            compressed = read_json(first / workspace / paths.compression_report(round_))
            found.update(parameters=compressed["compact"]["parameters"], flops=compressed["compact"]["flops"])
            found["seconds"] = {seed: read_json(top / workspace / "bench_seconds.json")["seconds"] for seed, top in tops.items()}
        if (workspace, round_) in latency:
            found["latency_ms"] = latency[(workspace, round_)]
        if "ranks_per_layer" in metrics[args.seeds[0]]:
            found["ranks"] = metrics[args.seeds[0]]["ranks_per_layer"]
        return found

    dense = figures("dense", 0)
    dense_report = read_json(first / "imp" / paths.compression_report(2))["dense"]
    dense.update(parameters=dense_report["parameters"], flops=dense_report["flops"])
    results = {"dense": dense, "arms": {}}
    for arm, by_ratio in arms(setup).items():
        results["arms"][arm] = {ratio: figures(*where) for ratio, where in by_ratio.items()}
        for ratio, measured in results["arms"][arm].items():
            measured.setdefault("latency_ms", latency[arms(setup)["SI+FD"][ratio]] if arm in VARIANTS else None)
    if setup.slimming:
        results["dense_sparsity_trained"] = figures("slim-dense", 0)
    return results


def mean(per_seed):
    return statistics.fmean(per_seed.values())


def accuracy_cell(per_seed):
    return f"{100 * mean(per_seed):.2f}% ({', '.join(f'{100 * a:.2f}' for a in per_seed.values())})"


def table(title, results):
    dense = results["dense"]
    dense_latency = dense["latency_ms"]
    lines = [
        f"**{title}**",
        "",
        "| arm | weights remaining | final test acc. (mean; per seed) | Δ vs dense | params | MFLOPs "
        "| latency b1 / b64 (ms) | b64 vs dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| dense | 100.00% | {accuracy_cell(dense['accuracy'])} | | {dense['parameters']:,} | "
        f"{dense['flops'] / 1e6:.2f} | {dense_latency[1]:.3f} / {dense_latency[64]:.2f} | 1.00× |",
    ]
    for ratio in RATIOS:
        for arm, by_ratio in results["arms"].items():
            measured = by_ratio[ratio]
            latency = measured["latency_ms"]
            lines.append(
                f"| {arm} {100 * ratio:g}% | {100 * measured['weights_remaining']:.2f}% | {accuracy_cell(measured['accuracy'])} "
                f"| {100 * (mean(measured['accuracy']) - mean(dense['accuracy'])):+.2f} pp | {measured['parameters']:,} "
                f"| {measured['flops'] / 1e6:.2f} | {latency[1]:.3f} / {latency[64]:.2f} "
                f"| {latency[64] / dense_latency[64]:.2f}× |"
            )
    return "\n".join(lines)


def goals(results):
    """The issue's goals, each measured: SI+FD against plain at every ratio; at 10%, SI+FD against
    dense and against the IMP ticket; the 10% factorized model's batch-64 latency against dense."""
    arms_, dense = results["arms"], results["dense"]
    at_10 = arms_["SI+FD"][0.10]
    return {
        "si_fd_minus_plain_pp": {
            ratio: 100 * (mean(arms_["SI+FD"][ratio]["accuracy"]) - mean(arms_["plain"][ratio]["accuracy"])) for ratio in RATIOS
        },
        "si_fd_minus_dense_pp_at_10": 100 * (mean(at_10["accuracy"]) - mean(dense["accuracy"])),
        "si_fd_minus_imp_pp_at_10": 100 * (mean(at_10["accuracy"]) - mean(arms_["IMP"][0.10]["accuracy"])),
        "latency_b64_vs_dense_at_10": at_10["latency_ms"][64] / dense["latency_ms"][64],
    }


def figure(all_results, seeds, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(6.5 * len(all_results), 4.8))
    axes = list(axes) if len(all_results) > 1 else [axes]
    for axis, (name, results) in zip(axes, all_results.items()):
        dense = results["dense"]
        axis.axhline(100 * mean(dense["accuracy"]), color="black", ls=":", label="dense")
        for arm, by_ratio in results["arms"].items():
            points = [by_ratio[ratio] for ratio in RATIOS]
            accuracy = [[100 * a for a in p["accuracy"].values()] for p in points]
            centre = [statistics.fmean(a) for a in accuracy]
            spread = [[c - min(a) for c, a in zip(centre, accuracy)], [max(a) - c for c, a in zip(centre, accuracy)]]
            remaining = [100 * p["weights_remaining"] for p in points]
            style = "--" if arm in ("IMP", "slim") else "-"
            axis.errorbar(remaining, centre, yerr=spread, marker="o", capsize=3, ls=style, label=arm)
        axis.set_title(f"{name}: {SETUPS[name].model} on {SETUPS[name].dataset}")
        axis.set_ylabel("final test accuracy (%)")
    report.save_density_figure(fig, axes, f"factorized vs pruned at equal weights, {len(seeds)} seed(s); bars: min-max", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=0, help="every training (0: lenet 5000, vgg 1000)")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    args = parse_seeded_args(parser, Path("/tmp/lottery-factorized"))
    if args.seed is not None:
        return one_seed(args)

    base = fresh_workdir(args.workdir)
    store_params = params(base, args.seeds[0], SETUPS[args.setups[0]], 10)
    tracking.publish(store_params, records.lineage(store_params))  # create the store once
    start = time.perf_counter()
    arguments = ["--iterations", str(args.iterations), "--workdir", str(args.workdir), "--setups", *args.setups]
    run_seeds(__file__, args.seeds, arguments)
    trained_minutes = (time.perf_counter() - start) / 60
    all_results = {name: collect(args, name, SETUPS[name]) for name in args.setups}
    titles = {
        name: f"{SETUPS[name].model} (width {SETUPS[name].width:g}) on {SETUPS[name].dataset}, "
        f"{args.iterations or SETUPS[name].iterations} iterations per training"
        for name in args.setups
    }
    width_latency = full_width_latency()
    text = "\n\n".join([*(table(titles[name], results) for name, results in all_results.items()), full_width_table(width_latency)])
    result = {
        "settings": {
            "seeds": args.seeds,
            "iterations": {name: args.iterations or SETUPS[name].iterations for name in args.setups},
            "weight_decay": WEIGHT_DECAY,
            "ratios": RATIOS,
            "setups": {name: dataclasses.asdict(SETUPS[name]) for name in args.setups},
            "training_minutes": trained_minutes,
        },
        "goals": {name: goals(results) for name, results in all_results.items()},
        "results": all_results,
        "full_width_vgg11_latency_ms": width_latency,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "factorized.json", result)
    write_text(RESULTS / "factorized.md", text + "\n")
    figure(all_results, args.seeds, RESULTS / "factorized.png")
    print(text)
    print(yaml.safe_dump({"settings": result["settings"], "goals": result["goals"]}, sort_keys=False))


if __name__ == "__main__":
    main()
