"""Rethinking the value of network pruning: does the winning ticket's init matter only at a small
learning rate? On real Fashion-MNIST.

Liu et al. (2019, "Rethinking the Value of Network Pruning", section 6) found that, with
unstructured pruning, a winning ticket (the pruned mask on its original init θ0) beats a random
re-initialisation of the same mask only at a small initial learning rate (0.01), and that the
small rate's accuracy is below the usual large one's (0.1); with structured pruning (L1-norm
filters) the original init did not help. The lottery ticket paper's answer for VGG-19 was a
learning-rate warmup at 0.1 (10k of its 112k iterations).

The small BatchNorm VGG-11 of bench/structured_fmnist.py (width 0.25, Kaiming-normal θ0), SGD
with momentum 0.9, batch 128, `--iterations` per training, learning rate ×0.1 at 50% and 75%.
For every seed in `--seeds`, side by side:

  lr-0.1          unstructured: global magnitude pruning of the conv weights (the output layer
                  at VGG's default rate), one-shot from the dense weights, 75% per round for 2
                  rounds (25% and 6.25% of the conv weights remain); the ticket is rewound to
                  θ0 and retrained on the dense schedule, and so is the control, the same mask
                  on a fresh init (reinit)
  lr-0.01         the same at learning rate 0.01
  lr-0.1-warmup   the same at 0.1 with a linear warmup over the first 10% of the iterations
                  (the paper's 10k of 112k is 9%), in the dense run and in every retraining
  l1-50           structured at 0.1: l1_filter, 50% of each layer's filters, one round, ticket
                  against reinit; it shares lr-0.1's dense run

Every branch runs the pipeline's own stage functions in a workspace of its own, one process and
one thread per seed. A seed trains 17 times (3 dense runs, 12 retrainings, 2 of l1-50) at about
8.8 it/s on one core here, and evaluation costs about as much again: each training measures the
validation split (2,000 held-out images) 5 times and the full test set wherever the validation
loss improves. The default of 1,000 iterations (2.2 epochs of the 58,000 training images) keeps
two seeds side by side to about 40 minutes.
Writes bench/results/rethinking_lr.{json,md,png} and prints the table: final test accuracy of
ticket and reinit per variant and sparsity (accuracy at the early stop too in the json).
"""

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from structured_fmnist import (
    RESULTS, ROOT, copy_dense_run, enter_workspace, fresh_workdir, parse_seeded_args, run_seeds
)

from lottery import hparams, paths, pipeline, records, report, tracking  # noqa: E402
from lottery.io import read_json, write_json, write_text  # noqa: E402

CONTROL = "reinit"
ACCURACIES = ("final_test_accuracy", "test_accuracy_at_early_stop")
HEADLINE = "final_test_accuracy"


@dataclass(frozen=True)
class Variant:
    lr: float
    prune: dict  # prune.* keys over params.yaml's
    rounds: int
    warmup: bool = False  # linear warmup over the first 10% of the iterations
    dense_of: str | None = None  # the variant whose dense round 0 this one copies


UNSTRUCTURED = {
    "strategy": "magnitude",
    "granularity": "weight",
    "scope": "global",
    "schedule": "oneshot",
    "rate": 0.75,
    "conv_rate": None,
    "output_rate": None,
}
VARIANTS = {
    "lr-0.1": Variant(lr=0.1, prune=UNSTRUCTURED, rounds=2),
    "lr-0.01": Variant(lr=0.01, prune=UNSTRUCTURED, rounds=2),
    "lr-0.1-warmup": Variant(lr=0.1, prune=UNSTRUCTURED, rounds=2, warmup=True),
    "l1-50": Variant(
        lr=0.1,
        prune={"strategy": "l1_filter", "granularity": "channel", "scope": "layerwise", "schedule": "oneshot",
               "rate": 0.5, "min_channels": 1},
        rounds=1,
        dense_of="lr-0.1",
    ),
}


def params(base, seed, iterations, variant):
    """`base`: the project's params.yaml as the run started (so editing it mid-run changes nothing)."""
    raw = yaml.safe_load(base.read_text())
    raw["seed"] = seed
    raw["data"].update(
        dataset="fashion_mnist", source="local", local_root=str(ROOT / "data" / "fashion_mnist"), validation_size=2000
    )
    raw["model"].update(name="vgg11", width=0.25, init="kaiming_normal")
    raw["train"].update(
        optimizer="sgd",
        lr=variant.lr,
        momentum=0.9,
        batch_size=128,
        iterations=iterations,
        eval_every=max(1, iterations // 4),
        # A set: at a handful of iterations the two milestones coincide, or fall on 0.
        milestones=sorted({iterations // 2, iterations * 3 // 4} - {0}),
        gamma=0.1,
        warmup_iterations=iterations // 10 if variant.warmup else 0,
        bn_l1=0.0,
    )
    raw["prune"].update(variant.prune)
    raw["rewind"].update(target="init", iteration=0)
    raw["controls"]["run"] = [CONTROL]
    raw["early_bird"]["enabled"] = False
    # Each shared weight is a pass over the test set in every evaluation: 6 of them would cost
    # about as much as the retrainings of this bench, for numbers it does not use.
    raw["weight_agnostic"]["values"] = []
    raw["compact"]["latency_repeats"] = 5
    raw["tracking"].update(experiment="rethinking-lr-bench", registered_model="")
    raw["rounds"] = hparams.rounds_section(variant.rounds)
    return hparams.from_dict(raw)


def round_zero_identity(hp):
    """What shapes init and train_dense: the lineage's identity less its pruning (Early-Bird is off)."""
    return {section: values for section, values in hp.identity().items() if section != "prune"}


def one_seed(args):
    import torch

    torch.set_num_threads(1)
    seed_dir = args.workdir / f"seed_{args.seed}"
    for name, variant in VARIANTS.items():
        hp = params(args.workdir / "params.base.yaml", args.seed, args.iterations, variant)
        enter_workspace(seed_dir / name)
        started = time.perf_counter()
        if variant.dense_of:
            shared = params(args.workdir / "params.base.yaml", args.seed, args.iterations, VARIANTS[variant.dense_of])
            if round_zero_identity(shared) != round_zero_identity(hp):
                raise AssertionError(f"{name}: its round 0 differs from {variant.dense_of}'s, which it would copy")
            copy_dense_run(seed_dir / variant.dense_of)
        else:
            pipeline.init(hp)
            pipeline.train_dense(hp)
        for round_ in range(1, variant.rounds + 1):
            for step in (pipeline.prune, pipeline.rewind, pipeline.retrain, pipeline.evaluate):
                step(hp, round_)
            pipeline.control(hp, round_, CONTROL)
        write_json(Path("bench_seconds.json"), {"seconds": time.perf_counter() - started})


def accuracies(metrics_path):
    metrics = read_json(metrics_path)
    return {key: metrics[key] for key in ACCURACIES}


def collect(args):
    """{variant: {dense, rounds: {round: {weights_remaining, ticket, reinit}}, seconds}}, each
    accuracy and time as {seed: value}."""
    results = {}
    for name, variant in VARIANTS.items():
        workspaces = {seed: args.workdir / f"seed_{seed}" / name for seed in args.seeds}
        rounds = {}
        for round_ in range(1, variant.rounds + 1):
            remaining = [read_json(w / paths.round_metrics(round_))["weights_remaining"] for w in workspaces.values()]
            rounds[round_] = {
                "weights_remaining": statistics.fmean(remaining),
                "ticket": {seed: accuracies(w / paths.round_metrics(round_)) for seed, w in workspaces.items()},
                CONTROL: {seed: accuracies(w / paths.round_metrics(round_, CONTROL)) for seed, w in workspaces.items()},
            }
        results[name] = {
            "dense": {seed: accuracies(w / paths.round_metrics(0)) for seed, w in workspaces.items()},
            "rounds": rounds,
            "seconds": {seed: read_json(w / "bench_seconds.json")["seconds"] for seed, w in workspaces.items()},
        }
    return results


def values(per_seed, key=HEADLINE):
    return [entry[key] for entry in per_seed.values()]


def percent_cell(per_seed):
    accuracy = values(per_seed)
    return f"{100 * statistics.fmean(accuracy):.2f}% ({', '.join(f'{100 * a:.2f}' for a in accuracy)})"


def gap_pp(first, second, key=HEADLINE):
    return 100 * (statistics.fmean(values(first, key)) - statistics.fmean(values(second, key)))


def table(results):
    lines = [
        "| variant | weights remaining | ticket acc. (mean; per seed) | random reinit acc. (mean; per seed) "
        "| Δ ticket − reinit | Δ at early stop | dense acc. |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        dense = statistics.fmean(values(result["dense"]))
        for measured in result["rounds"].values():
            ticket, reinit = measured["ticket"], measured[CONTROL]
            lines.append(
                f"| {name} | {100 * measured['weights_remaining']:.2f}% "
                f"| {percent_cell(ticket)} | {percent_cell(reinit)} | {gap_pp(ticket, reinit):+.2f} pp "
                f"| {gap_pp(ticket, reinit, 'test_accuracy_at_early_stop'):+.2f} pp | {100 * dense:.2f}% |"
            )
    return "\n".join(lines)


def small_lr_gaps(results):
    """lr-0.01 − lr-0.1 in percentage points, dense and each round's ticket (Liu et al.: below 0)."""
    small, large = results["lr-0.01"], results["lr-0.1"]
    gaps = {"dense": gap_pp(small["dense"], large["dense"])}
    for round_, measured in small["rounds"].items():
        gaps[f"ticket_round_{round_}"] = gap_pp(measured["ticket"], large["rounds"][round_]["ticket"])
    return gaps


def figure(results, seeds, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (name, result) in zip(colours, results.items()):
        measured = list(result["rounds"].values())
        remaining = [m["weights_remaining"] for m in measured]
        # Pruning nothing leaves the dense run: the ticket's curve starts there.
        ticket = [result["dense"], *(m["ticket"] for m in measured)]
        plot_arm(axis, [1.0, *remaining], ticket, color=colour, ls="-", label=f"{name} ticket")
        plot_arm(axis, remaining, [m[CONTROL] for m in measured], color=colour, ls="--", label=f"{name} {CONTROL}")
    axis.set_ylabel("final test accuracy (%)")
    title = f"VGG-11 (width 0.25) on Fashion-MNIST, {len(seeds)} seed(s); error bars: min-max over seeds"
    report.save_density_figure(fig, [axis], title, path)


def plot_arm(axis, remaining, per_seed, **style):
    """Mean accuracy against percent of weights remaining, min-max over seeds as error bars."""
    accuracy = [[100 * a for a in values(entry)] for entry in per_seed]
    mean = [statistics.fmean(a) for a in accuracy]
    spread = [[m - min(a) for m, a in zip(mean, accuracy)], [max(a) - m for m, a in zip(mean, accuracy)]]
    axis.errorbar([100 * r for r in remaining], mean, yerr=spread, marker="o", capsize=3, **style)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000, help="every training, dense or pruned (453 per epoch)")
    args = parse_seeded_args(parser, Path("/tmp/lottery-rethinking-lr"))
    if args.seed is not None:
        return one_seed(args)

    base = fresh_workdir(args.workdir)
    store_params = params(base, args.seeds[0], args.iterations, VARIANTS["lr-0.1"])
    tracking.publish(store_params, records.lineage(store_params))  # create the store once
    start = time.perf_counter()
    run_seeds(__file__, args.seeds, ["--iterations", str(args.iterations), "--workdir", str(args.workdir)])
    results = collect(args)
    text = table(results)
    result = {
        "settings": {
            "model": "vgg11 width 0.25 (BatchNorm), kaiming_normal init",
            "dataset": "fashion_mnist (58k train / 2k validation / 10k test)",
            "seeds": args.seeds,
            "iterations": args.iterations,
            "batch_size": 128,
            "milestones": store_params.train.milestones,
            "warmup_iterations": args.iterations // 10,
            "control": CONTROL,
            "minutes": (time.perf_counter() - start) / 60,
        },
        "variants": results,
        "lr_0.01_minus_lr_0.1_pp": small_lr_gaps(results),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "rethinking_lr.json", result)
    write_text(RESULTS / "rethinking_lr.md", text + "\n")
    figure(results, args.seeds, RESULTS / "rethinking_lr.png")
    print(text)
    print(yaml.safe_dump({key: result[key] for key in ("settings", "lr_0.01_minus_lr_0.1_pp")}, sort_keys=False))


if __name__ == "__main__":
    main()
