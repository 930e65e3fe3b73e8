"""Supermasks of random LeNets on real MNIST, and how much of a mask's skill survives when every
kept weight is one shared value (weight-agnostic evaluation).

For every seed, side by side, on the 55,000 training images (5,000 held out for early stopping)
and the full 10,000-image test set:

  dense           LeNet-300-100 (Glorot θ0) trained with the default params (Adam 1.2e-3, batch 60,
                  7,000 iterations, test accuracy at the validation early stop)
  imp             the IMP ticket at each density: iterative magnitude pruning through the densities
                  in turn, every layer (the output layer too) to the same fraction, rewound to θ0
                  and retrained like dense
  random          a random mask of each density (each layer the same fraction)
  supermask       edge-popup on frozen signed-Kaiming-constant weights (lottery.supermask), at width
                  1, 2 and 4 (hidden layers 300-100, 600-200, 1200-400): no weight is trained
  agnostic        the weight-agnostic search: the same, with each step's kept weights one shared w
                  drawn from {-2, -1, -0.5, 0.5, 1, 2} times θ0's signs

Every mask is then evaluated weight-agnostically (lottery.weight_agnostic, signs of its own θ0,
or none with `--signs none`, biases 0): accuracy per shared w, the mean over the six and the best. Score training: SGD 0.1,
momentum 0.9, weight decay 1e-4, cosine decay, `--iterations` steps of batch `--batch-size`.

Writes bench/results/supermask_mnist.{json,md} and supermask_mnist.png, and prints the table.
Seeds can run as separate processes (one `--seeds S --out DIR` each, on one GPU say), then
`--combine DIR/supermask_mnist.json ...` tabulates them together.
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from lottery import data, devices, masks, report, training, validation, weight_agnostic  # noqa: E402
from lottery.models import catalog  # noqa: E402
from lottery.pruning import driver  # noqa: E402
from lottery.io import write_json, write_text  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
WANN = {"mean": 0.820, "mean_sd": 0.187, "best": 0.919, "trained": 0.942}  # Gaier & Ha 2019, MNIST
ZHOU_SUPERMASK = 0.86  # Zhou et al. 2019: supermasks of untrained weights on MNIST


def params(args, seed, **overrides):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["seed"] = seed
    raw["train"]["device"] = args.device
    raw["weight_agnostic"]["signs"] = args.signs
    raw["supermask"].update(iterations=args.iterations, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for dotted, value in {**args.overrides, **overrides}.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return validation.from_dict(raw)


def uniform(prune_hp, rate):
    """Prune params that remove `rate` of every layer's kept weights, the output layer's too."""
    return type(prune_hp)(**{**prune_hp.__dict__, "rate": rate, "conv_rate": rate, "output_rate": rate})


def rates_between(densities):
    """Per step, the fraction of the kept weights removed to go from one density to the next."""
    steps = [1.0, *densities]
    return [1 - after / before for before, after in zip(steps, steps[1:])]


def wa(model, mask, split, hp):
    return weight_agnostic.evaluate(model, mask, split, hp.weight_agnostic.values, hp.weight_agnostic.signs)


def masked_accuracy(model, mask, split):
    masked = copy.deepcopy(model)
    masks.apply(masked, mask)
    return training.evaluate(masked, split)[1]


def trained_accuracy(model, mask, splits, hp):
    result = training.train(model, mask, splits, hp.train, hp.seed)
    return result.summary()["test_accuracy_at_early_stop"]


def imp_and_random(args, seed, splits):
    """The dense net, its IMP tickets and random masks at each density (width 1, Glorot θ0)."""
    hp = params(args, seed)
    theta0 = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=seed)
    found = {"dense": {"accuracy": trained_accuracy(copy.deepcopy(theta0), masks.ones(theta0), splits, hp),
                       **wa(theta0, masks.ones(theta0), splits.test, hp)}}
    trained, mask = copy.deepcopy(theta0), masks.ones(theta0)
    training.train(trained, mask, splits, hp.train, seed)
    for density, rate in zip(args.densities, rates_between(args.densities)):
        mask = driver.prune(uniform(hp.prune, rate), trained, mask, seed=seed)
        trained = copy.deepcopy(theta0)
        masks.apply(trained, mask)
        accuracy = trained_accuracy(trained, mask, splits, hp)
        found[f"imp@{density}"] = {"accuracy": accuracy, **wa(theta0, mask, splits.test, hp)}
        random_mask = driver.prune(uniform(params(args, seed, **{"prune.strategy": "random"}).prune, 1 - density),
                                    theta0, masks.ones(theta0), seed=seed)
        found[f"random@{density}"] = {"accuracy": masked_accuracy(theta0, random_mask, splits.test),
                                      **wa(theta0, random_mask, splits.test, hp)}
        print(f"seed {seed} density {density}: imp {accuracy:.4f}", flush=True)
    return found


def supermasks(args, seed, splits, width):
    """Supermask and weight-agnostic supermask of a signed-constant LeNet at `width`, per density."""
    found = {}
    theta0 = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=seed, width=width, init="signed_kaiming_constant")
    for kind, agnostic in (("supermask", False), ("agnostic", True)):
        hp = params(args, seed, **{"prune.strategy": "edge_popup", "model.init": "signed_kaiming_constant",
                                   "model.width": width, "supermask.weight_agnostic": agnostic,
                                   "train.batch_size": args.batch_size})
        for density in args.densities:
            started = time.perf_counter()
            mask = driver.prune(uniform(hp.prune, 1 - density), theta0, masks.ones(theta0), seed=seed,
                                 search_inputs=driver.SearchInputs(theta0, splits, hp))
            seconds = time.perf_counter() - started
            found[f"{kind}-w{width:g}@{density}"] = {
                "accuracy": masked_accuracy(theta0, mask, splits.test),
                "weights_remaining": masks.weights_remaining(mask, theta0.prunable_kinds()),
                "search_seconds": seconds,
                **wa(theta0, mask, splits.test, hp),
            }
            print(f"seed {seed} {kind} width {width:g} density {density}: "
                  f"{found[f'{kind}-w{width:g}@{density}']['accuracy']:.4f} ({seconds:.1f} s)", flush=True)
    return found


def aggregate(per_seed):
    keys = ("accuracy", "weight_agnostic_mean_accuracy", "weight_agnostic_best_accuracy")
    rows = {}
    for branch in per_seed[0]:
        rows[branch] = {key: statistics.fmean(seed[branch][key] for seed in per_seed) for key in keys}
        rows[branch].update({f"{key}_min": min(seed[branch][key] for seed in per_seed) for key in keys})
        rows[branch].update({f"{key}_max": max(seed[branch][key] for seed in per_seed) for key in keys})
    return rows


def table(rows, args):
    percent = lambda value: f"{100 * value:.2f}%"  # noqa: E731
    lines = ["| mask | density | accuracy (trained: dense, imp; none: the rest) | weight-agnostic mean | weight-agnostic best |",
             "|---|---:|---:|---:|---:|",
             f"| dense | 100% | {percent(rows['dense']['accuracy'])} | {percent(rows['dense']['weight_agnostic_mean_accuracy'])} "
             f"| {percent(rows['dense']['weight_agnostic_best_accuracy'])} |"]
    kinds = ["imp", "random"] + [f"{kind}-w{width:g}" for kind in ("supermask", "agnostic") for width in args.widths]
    for kind in kinds:
        for density in args.densities:
            row = rows[f"{kind}@{density}"]
            lines.append(f"| {kind} | {100 * density:g}% | {percent(row['accuracy'])} "
                         f"| {percent(row['weight_agnostic_mean_accuracy'])} | {percent(row['weight_agnostic_best_accuracy'])} |")
    return "\n".join(lines)


def figure(rows, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    density = [100 * d for d in args.densities]
    for kind in ["imp", "random"] + [f"supermask-w{w:g}" for w in args.widths]:
        axes[0].plot(density, [100 * rows[f"{kind}@{d}"]["accuracy"] for d in args.densities], marker="o", label=kind)
    axes[0].axhline(100 * rows["dense"]["accuracy"], ls="--", c="gray", label="dense, trained")
    axes[0].axhline(100 * ZHOU_SUPERMASK, ls=":", c="black", label="Zhou et al. supermask (86%)")
    axes[0].set_ylabel("test accuracy (%)")
    for kind in ["imp", "random"] + [f"{k}-w{w:g}" for k in ("supermask", "agnostic") for w in args.widths]:
        axes[1].plot(density, [100 * rows[f"{kind}@{d}"]["weight_agnostic_mean_accuracy"] for d in args.densities],
                     marker="o", label=kind)
    axes[1].axhline(100 * WANN["mean"], ls=":", c="black", label="WANN mean (82.0%)")
    axes[1].axhline(100 * WANN["best"], ls="--", c="black", label="WANN best (91.9%)")
    axes[1].set_ylabel("weight-agnostic accuracy, mean over w (%)")
    report.save_density_figure(fig, axes, f"LeNet on MNIST, {len(args.seeds)} seed(s), means", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.3, 0.1, 0.05])
    parser.add_argument("--iterations", type=int, default=3000, help="score-training steps per search")
    parser.add_argument("--batch-size", type=int, default=128, help="batch of the score training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--signs", choices=("init", "none"), default="init",
                        help="weight_agnostic.signs of the evaluation and the weight-agnostic search")
    parser.add_argument("--root", type=Path, default=PROJECT / "data" / "mnist", help="MNIST as the data stage leaves it")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a small subset: checks the script runs")
    parser.add_argument("--combine", type=Path, nargs="+", help="tabulate these results files' seeds together")
    args = parser.parse_args()
    args.overrides = {}
    if args.smoke:
        args.seeds, args.widths, args.densities, args.iterations = [0], [1.0, 2.0], [0.5, 0.1], 30
        args.overrides = {"data.train_subset": 2000, "data.test_subset": 1000, "train.iterations": 100}
    result = combined(args) if args.combine else measured(args)
    name = "supermask_mnist" + ("_unsigned" if args.signs == "none" else "") + ("_smoke" if args.smoke else "")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"] = aggregate(result["per_seed"])
    write_json(args.out / f"{name}.json", result)
    text = table(rows, args)
    write_text(args.out / f"{name}.md", text + "\n")
    figure(rows, args, args.out / f"{name}.png")
    print(text)
    print(json.dumps({"device": result["device"], "seconds": [round(s, 1) for s in result["seconds"]]}))


def measured(args):
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    splits = data.load(params(args, 0).data, args.root)
    result = {
        "device": str(devices.device_for(args.device)), "torch": torch.__version__, "seconds": [0.0],
        "seeds": args.seeds, "widths": args.widths, "densities": args.densities, "iterations": args.iterations,
        "batch_size": args.batch_size, "signs": args.signs, "anchors": {"wann": WANN, "zhou_supermask": ZHOU_SUPERMASK},
        "per_seed": [],
    }
    partial = args.out / "supermask_mnist.partial.json"
    for seed in args.seeds:
        found = imp_and_random(args, seed, splits)
        result["per_seed"].append(found)
        for width in args.widths:
            found.update(supermasks(args, seed, splits, width))
            # What is done so far survives a run stopped at its time limit.
            result["seconds"] = [time.perf_counter() - started]
            write_json(partial, result)
    partial.unlink(missing_ok=True)
    return result


def combined(args):
    parts = [json.loads(path.read_text()) for path in args.combine]
    result = {**parts[0], "seeds": [s for part in parts for s in part["seeds"]],
              "seconds": [s for part in parts for s in part["seconds"]],
              "per_seed": [found for part in parts for found in part["per_seed"]]}
    args.seeds, args.widths, args.densities = result["seeds"], result["widths"], result["densities"]
    return result


if __name__ == "__main__":
    main()
