"""Rethinking the value of network pruning: does the winning ticket's init matter only at a small
learning rate? On real Fashion-MNIST.

Liu et al. (2019, "Rethinking the Value of Network Pruning", section 6) found that, with
unstructured pruning, a winning ticket (the pruned mask on its original init θ0) beats a random
re-initialisation of the same mask only at a small initial learning rate (0.01), and that the
small rate's accuracy is below the usual large one's (0.1); with structured pruning (L1-norm
filters) the original init did not help. The lottery ticket paper's answer for VGG-19 was a
learning-rate warmup at 0.1 (10k of its 112k iterations).

A BatchNorm VGG-11 of width `--width` (Kaiming-normal θ0), SGD with momentum 0.9, batch 128,
`--iterations` per training, learning rate ×0.1 at 50% and 75%. For every seed in `--seeds`, side
by side, the variants in `--variants`:

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

The arms, kept in the arms file as each finishes (bench/arms.py: a run cut short keeps them, the
next does only the rest): each variant's dense run, and each round's ticket with its reinit.
Presets (`--preset`):
  cpu   (the default, the recorded runs' settings) width 0.25, 1,000 iterations (2.2 epochs of the
        58,000 training images), every variant. A seed trains 17 times at about 8.8 it/s on one
        core here, and evaluation costs about as much again: each training measures the
        validation split (2,000 held-out images) 5 times and the full test set wherever the
        validation loss improves; two seeds side by side take about 40 minutes.
  gpu   (issue 27) width 0.5, 20 epochs (9,060 iterations), the three unstructured variants; on
        the GPU where torch finds one (train.device auto)

Every arm runs the pipeline's own stage functions in a workspace of its own, one process and one
thread per seed. Writes bench/results/rethinking_lr_arms.json as arms finish, then
rethinking_lr.{json,md,png} (the gpu preset: rethinking_lr_gpu*), and prints the table (final test
accuracy of ticket and reinit per variant and sparsity; at the early stop too in the json) and the
claims' verdicts.
"""

import argparse
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
from structured_fmnist import ROOT, copy_dense_run, enter_workspace, parse_seeded_args

from lottery import compression, data, hparams, identity, paths, pipeline, records, report, tracking, validation  # noqa: E402
from lottery.models import catalog  # noqa: E402
from lottery.io import read_json, write_json, write_text  # noqa: E402

CONTROL = "reinit"
ACCURACIES = ("final_test_accuracy", "test_accuracy_at_early_stop")
HEADLINE = "final_test_accuracy"
VALIDATION = 2000
TEST_EXAMPLES = 10_000


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
PRESETS = {
    "cpu": {"iterations": 1000, "width": 0.25, "variants": list(VARIANTS)},
    # 20 epochs of the 58,000 training images at batch 128 (453 iterations each).
    "gpu": {"iterations": 20 * (58_000 // 128), "width": 0.5, "variants": ["lr-0.1", "lr-0.01", "lr-0.1-warmup"]},
}


def params(base, seed, iterations, width, variant):
    """`base`: the project's params.yaml as the run started (so editing it mid-run changes nothing)."""
    raw = yaml.safe_load(base.read_text())
    raw["seed"] = seed
    raw["data"].update(
        dataset="fashion_mnist", source="local", local_root=str(ROOT / "data" / "fashion_mnist"), validation_size=VALIDATION
    )
    raw["model"].update(name="vgg11", width=width, init="kaiming_normal")
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
    return validation.from_dict(raw)


def round_zero_identity(hp):
    """What shapes init and train_dense: the lineage's identity less its pruning (Early-Bird is off)."""
    return {section: values for section, values in identity.of(hp).items() if section != "prune"}


def dense_key(seed, name):
    """The arm of the dense run variant `name` prunes (its own, or the one it shares)."""
    return arm_key({"seed": seed, "variant": VARIANTS[name].dense_of or name, "round": 0})


def seed_arms(args, base, seed):
    """A seed's arms in the order they run: per variant its dense run (unless it shares another's),
    then each round's ticket with its reinit. An arm's settings: the digest of the variant's
    params (and, for a round, those of the dense run it prunes)."""
    seed_dir = args.workdir / f"seed_{seed}"
    spec = data.DATASETS["fashion_mnist"]
    shapes = catalog.build("vgg11", spec.input_shape, spec.num_classes, seed=seed, width=args.width)
    forward = compression.flops(shapes, shapes.input_shape)
    found = []
    for name in args.variants:
        variant = VARIANTS[name]
        hp = params(base, seed, args.iterations, args.width, variant)
        dense_hp = params(base, seed, args.iterations, args.width, VARIANTS[variant.dense_of or name])
        if round_zero_identity(dense_hp) != round_zero_identity(hp):
            raise AssertionError(f"{name}: its round 0 differs from {variant.dense_of}'s, which it would copy")
        one_training = training_minutes(forward, 128, args.iterations, evaluated_examples(hp.train, VALIDATION, TEST_EXAMPLES))
        if not variant.dense_of:
            run = functools.partial(dense_run, seed_dir / name, hp)
            settings = {"params": identity.digest([identity.of(hp)])}
            found.append(Arm({"seed": seed, "variant": name, "round": 0}, settings, run, one_training))
        for round_ in range(1, variant.rounds + 1):
            run = functools.partial(round_run, seed_dir, name, hp, round_)
            settings = {"params": identity.digest([identity.of(dense_hp), identity.of(hp)])}
            coordinates = {"seed": seed, "variant": name, "round": round_}
            found.append(Arm(coordinates, settings, run, 2 * one_training, (dense_key(seed, name),)))
    return found


def all_arms(args, base):
    return [arm for seed in args.seeds for arm in seed_arms(args, base, seed)]


def dense_run(workspace, hp):
    enter_workspace(workspace)
    pipeline.init(hp)
    pipeline.train_dense(hp)
    return {"dense": accuracies(paths.round_metrics(0))}


def round_run(seed_dir, name, hp, round_):
    """Round r of variant `name` (one-shot: pruned from its dense run): the ticket and its reinit."""
    enter_workspace(seed_dir / name)
    shared = VARIANTS[name].dense_of
    if shared and not paths.round_metrics(0).exists():
        copy_dense_run(seed_dir / shared)
    for step in (pipeline.prune, pipeline.rewind, pipeline.retrain, pipeline.evaluate):
        step(hp, round_)
    pipeline.control(hp, round_, CONTROL)
    return {
        "weights_remaining": read_json(paths.round_metrics(round_))["weights_remaining"],
        "ticket": accuracies(paths.round_metrics(round_)),
        CONTROL: accuracies(paths.round_metrics(round_, CONTROL)),
    }


def accuracies(metrics_path):
    metrics = read_json(metrics_path)
    return {key: metrics[key] for key in ACCURACIES}


def collect(args, finished):
    """{variant: {dense, rounds: {round: {weights_remaining, ticket, reinit}}, seconds}}, each
    accuracy and time as {seed: value} over the seeds that have done the arm; arms no seed has
    done are left out."""

    def done(name, round_):
        entries = {seed: finished.get(arm_key({"seed": seed, "variant": name, "round": round_})) for seed in args.seeds}
        return {seed: entry for seed, entry in entries.items() if entry}

    results = {}
    for name in args.variants:
        variant = VARIANTS[name]
        dense = done(variant.dense_of or name, 0)
        rounds = {}
        seconds = {}
        for round_ in range(1, variant.rounds + 1):
            entries = done(name, round_)
            if entries:
                rounds[round_] = {
                    "weights_remaining": statistics.fmean(e["result"]["weights_remaining"] for e in entries.values()),
                    "ticket": {seed: e["result"]["ticket"] for seed, e in entries.items()},
                    CONTROL: {seed: e["result"][CONTROL] for seed, e in entries.items()},
                }
            for seed, entry in entries.items():
                seconds[seed] = seconds.get(seed, 0.0) + entry["seconds"]
        if not variant.dense_of:
            for seed, entry in dense.items():
                seconds[seed] = seconds.get(seed, 0.0) + entry["seconds"]
        results[name] = {"dense": {seed: e["result"]["dense"] for seed, e in dense.items()}, "rounds": rounds, "seconds": seconds}
    return results


def values(per_seed, key=HEADLINE):
    return [entry[key] for entry in per_seed.values()]


def percent_cell(per_seed):
    accuracy = values(per_seed)
    return f"{100 * statistics.fmean(accuracy):.2f}% ({', '.join(f'{100 * a:.2f}' for a in accuracy)})"


def gap_pp(first, second, key=HEADLINE):
    return 100 * (statistics.fmean(values(first, key)) - statistics.fmean(values(second, key)))


def complete(per_seed, seeds):
    return len(per_seed) == len(seeds)


def table(results, seeds):
    lines = [
        "| variant | weights remaining | ticket acc. (mean; per seed) | random reinit acc. (mean; per seed) "
        "| Δ ticket − reinit | Δ at early stop | dense acc. |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    pending = []
    for name, result in results.items():
        dense = f"{100 * statistics.fmean(values(result['dense'])):.2f}%" if result["dense"] else "pending"
        for round_ in range(1, VARIANTS[name].rounds + 1):
            measured = result["rounds"].get(round_)
            if not measured or not complete(measured["ticket"], seeds):
                pending.append(f"{name} round {round_}")
                continue
            ticket, reinit = measured["ticket"], measured[CONTROL]
            lines.append(
                f"| {name} | {100 * measured['weights_remaining']:.2f}% "
                f"| {percent_cell(ticket)} | {percent_cell(reinit)} | {gap_pp(ticket, reinit):+.2f} pp "
                f"| {gap_pp(ticket, reinit, 'test_accuracy_at_early_stop'):+.2f} pp | {dense} |"
            )
    if pending:
        lines.append(f"\nPending (not done by every seed): {', '.join(pending)}")
    return "\n".join(lines)


def small_lr_gaps(results, seeds):
    """lr-0.01 − lr-0.1 in percentage points, dense and each round's ticket (Liu et al.: below 0),
    where both are done by every seed."""
    if not {"lr-0.01", "lr-0.1"} <= results.keys():
        return {}
    small, large = results["lr-0.01"], results["lr-0.1"]
    gaps = {}
    if complete(small["dense"], seeds) and complete(large["dense"], seeds):
        gaps["dense"] = gap_pp(small["dense"], large["dense"])
    for round_, measured in small["rounds"].items():
        other = large["rounds"].get(round_)
        if other and complete(measured["ticket"], seeds) and complete(other["ticket"], seeds):
            gaps[f"ticket_round_{round_}"] = gap_pp(measured["ticket"], other["ticket"])
    return gaps


def init_helps(result, seeds):
    """(every seed's ticket above its reinit at every round, the gaps in pp per round and seed),
    or None while a round is not done by every seed."""
    rounds = result["rounds"]
    if len(rounds) < 2 or not all(complete(measured["ticket"], seeds) for measured in rounds.values()):
        return None
    gaps = {
        round_: [100 * (t[HEADLINE] - r[HEADLINE]) for t, r in zip(m["ticket"].values(), m[CONTROL].values())]
        for round_, m in rounds.items()
    }
    return all(gap > 0 for per_seed in gaps.values() for gap in per_seed), gaps


def claims(results, seeds):
    """One line each: Liu et al.'s (the inherited init helps, every seed's ticket above its reinit
    at every sparsity, at lr 0.01 and not at 0.1) and Frankle & Carbin's answer (with warmup at
    0.1 it helps); pending while an arm is not done."""

    def described(name):
        helps = init_helps(results[name], seeds) if name in results else None
        if helps is None:
            return None, f"{name} pending"
        per_round = "; ".join(
            f"{100 * results[name]['rounds'][round_]['weights_remaining']:.1f}%: {', '.join(f'{g:+.2f}' for g in gaps)}"
            for round_, gaps in helps[1].items()
        )
        return helps[0], f"{name} ticket − reinit per seed {per_round} pp"

    small, small_text = described("lr-0.01")
    large, large_text = described("lr-0.1")
    warm, warm_text = described("lr-0.1-warmup")
    rethinking = "Rethinking (Liu et al.): the inherited init helps only at the small learning rate"
    lines = {
        "rethinking": f"{rethinking}: "
        + ("pending" if None in (small, large) else verdict(small and not large))
        + f" ({small_text}; {large_text})",
        "warmup": "LTH (Frankle & Carbin): with warmup at 0.1 the ticket beats its reinit: "
        + ("pending" if warm is None else verdict(warm))
        + f" ({warm_text})",
    }
    return lines


def figure(results, seeds, width, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (name, result) in zip(colours, results.items()):
        measured = [m for m in result["rounds"].values() if complete(m["ticket"], seeds)]
        if not measured or not complete(result["dense"], seeds):
            continue
        remaining = [m["weights_remaining"] for m in measured]
        # Pruning nothing leaves the dense run: the ticket's curve starts there.
        ticket = [result["dense"], *(m["ticket"] for m in measured)]
        plot_arm(axis, [1.0, *remaining], ticket, color=colour, ls="-", label=f"{name} ticket")
        plot_arm(axis, remaining, [m[CONTROL] for m in measured], color=colour, ls="--", label=f"{name} {CONTROL}")
    axis.set_ylabel("final test accuracy (%)")
    title = f"VGG-11 (width {width:g}) on Fashion-MNIST, {len(seeds)} seed(s); error bars: min-max over seeds"
    report.save_density_figure(fig, [axis], title, path)


def plot_arm(axis, remaining, per_seed, **style):
    """Mean accuracy against percent of weights remaining, min-max over seeds as error bars."""
    accuracy = [[100 * a for a in values(entry)] for entry in per_seed]
    mean = [statistics.fmean(a) for a in accuracy]
    spread = [[m - min(a) for m, a in zip(mean, accuracy)], [max(a) - m for m, a in zip(mean, accuracy)]]
    axis.errorbar([100 * r for r in remaining], mean, yerr=spread, marker="o", capsize=3, **style)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, help="every training, dense or pruned (453 per epoch; cpu: 1000, gpu: 9060)")
    parser.add_argument("--width", type=float, help="VGG-11's width (cpu: 0.25; gpu: 0.5)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: the preset's")
    add_arm_options(parser, PRESETS)
    args = parse_seeded_args(parser, Path("/tmp/lottery-rethinking-lr"))
    apply_preset(args, PRESETS)
    missing = {VARIANTS[name].dense_of for name in args.variants} - {None} - set(args.variants)
    if missing:
        parser.error(f"--variants: {', '.join(sorted(missing))} too (whose dense run the others share)")
    begun = begin(args, "rethinking_lr", all_arms)
    if begun is None:
        return
    stem, arms_file, base, arms = begun
    store_params = params(base, args.seeds[0], args.iterations, args.width, VARIANTS[args.variants[0]])
    tracking.publish(store_params, records.lineage(store_params))  # create the store once
    start = time.perf_counter()
    options = child_arguments(args, "iterations", "width", "variants", "workdir", "preset", "out", "max_arms")
    run_seed_processes(__file__, args.seeds, options)
    run_minutes = (time.perf_counter() - start) / 60
    finished = arms_file.finished_entries(arms)
    results = collect(args, finished)
    verdicts = claims(results, args.seeds)
    text = "\n\n".join([table(results, args.seeds), *verdicts.values()])
    result = {
        "settings": {
            "preset": args.preset,
            "model": f"vgg11 width {args.width:g} (BatchNorm), kaiming_normal init",
            "dataset": "fashion_mnist (58k train / 2k validation / 10k test)",
            "seeds": args.seeds,
            "iterations": args.iterations,
            "batch_size": 128,
            "milestones": store_params.train.milestones,
            "warmup_iterations": args.iterations // 10,
            "control": CONTROL,
            "arms_file": arms_file.path.name,
            "arms_done": f"{len(finished)} of {len(arms)}",
            "minutes_this_run": run_minutes,
        },
        "claims": verdicts,
        "variants": results,
        "lr_0.01_minus_lr_0.1_pp": small_lr_gaps(results, args.seeds),
    }
    stem = report_stem(stem, finished, arms)
    write_json(args.out / f"{stem}.json", result)
    write_text(args.out / f"{stem}.md", text + "\n")
    figure(results, args.seeds, args.width, args.out / f"{stem}.png")
    print(text)
    print(yaml.safe_dump({key: result[key] for key in ("settings", "lr_0.01_minus_lr_0.1_pp")}, sort_keys=False))


if __name__ == "__main__":
    main()
