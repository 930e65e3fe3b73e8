"""Early-Bird tickets on real Fashion-MNIST, on the paper's schedule shape: when does the channel
mask settle, and does the ticket drawn there, retrained, match the standard one?

You et al. (2020) train 160 epochs with the learning rate divided by 10 at 50% and 75%, and find
the ticket in the first 6-12% of them. This bench keeps that shape (`--epochs` 160, the same two
decays) on the first `--subset` training images of Fashion-MNIST: a BatchNorm VGG-11 of width
`--width` at batch 128, SGD 0.1 with Network Slimming's term at λ = 1e-3 (bench/structured_fmnist.py's
BN_L1). For every seed, side by side, the arms (kept in the arms file as each finishes,
bench/arms.py: a run cut short keeps them, the next does only the rest):

  dense          the standard path's dense training, the whole budget
  standard-<r>   prune r of its channels (bn_slimming, one global threshold), then retrain
  eb-<r>         the same, but dense training stops at the Early-Bird epoch (ε = 0.1, the newest mask
                 against the `--queue` before it)
  eb-50-int8     (cpu preset) eb-50 with the search fake-quantised to 8 bits (retraining in full precision)

Retraining (`--retrain`): finetune, `--finetune-epochs` at lr 0.01 from the pruned weights; or full,
the pruned architecture from a fresh init on the whole dense schedule (rewind.target scratch,
Scratch-E), as the authors' code retrains its tickets: main_c.py and main_scratch.py build the
pruned configuration and train it from that model's own init, with lr 0.1 and the decays.

Presets (`--preset`):
  cpu   (the default, the recorded runs' settings) width 0.25, 2,560 images (20 iterations an
        epoch), queue 5, finetune 30 epochs, and eb-50-int8
  gpu   (issue 27) width 0.5, 12,800 images (100 iterations an epoch, 16,000 per training), the
        authors' FIFO of 5 masks (queue 4), full retraining; on the GPU where torch finds one
        (train.device auto)

Every branch prunes with `prune.max_layer_fraction` = `--max-layer-fraction`: the global threshold
takes at most that share of any one layer's channels (without it, 70% emptied a layer, see
docs/science-and-benchmarks.md). Every branch runs the pipeline's own stage functions; the standard branches share the
seed's one dense run. Writes bench/results/early_bird_fmnist_arms.json as arms finish, then
early_bird_fmnist.{json,md,png} and seed 0's mask-distance heatmap at 50% (the gpu preset:
early_bird_fmnist_gpu*), and prints the table and the claim's verdict.
"""

import argparse
import functools
import shutil
import statistics
import time
from pathlib import Path

import yaml

from arms import (
    Arm, add_arm_options, apply_preset, arm_key, begin, child_arguments, evaluated_examples, run_seed_processes,
    report_stem, training_minutes, verdict,
)
from structured_fmnist import bench_params, copy_dense_run, enter_workspace, parse_seeded_args

from lottery import compression, data, identity, paths, pipeline, records, tracking  # noqa: E402
from lottery.models import catalog  # noqa: E402
from lottery.io import read_json, write_json, write_text  # noqa: E402

BATCH = 128
VALIDATION = 2000  # the last 2,000 of the 60,000: cheaper evaluations than 5,000
TEST_EXAMPLES = 10_000
# "Matches": the retrained Early-Bird ticket at most this far below the standard one, at every
# ratio (the recorded CPU runs' seeds spread by up to 0.5 pp).
MATCH_PP = 0.5
PRESETS = {
    # The recorded runs: each mask against the 5 before it, one more than the authors' FIFO of 5
    # compares (params.yaml's default, 4); named so a rerun repeats them.
    "cpu": {"epochs": 160, "finetune_epochs": 30, "subset": 2560, "max_layer_fraction": 0.8, "width": 0.25,
            "queue": 5, "retrain": "finetune", "int8": True},
    "gpu": {"epochs": 160, "finetune_epochs": 30, "subset": 12800, "max_layer_fraction": 0.8, "width": 0.5,
            "queue": 4, "retrain": "full", "int8": False},
}  # fmt: skip


def params(args, base, seed, overrides):
    per_epoch = args.subset // BATCH
    retrain = (
        {"rewind.target": "finetune"}
        if args.retrain == "finetune"
        else {"rewind.target": "scratch", "rewind.scratch_budget": "same"}
    )
    return bench_params(
        base,
        seed,
        args.epochs * per_epoch,
        args.finetune_epochs * per_epoch,
        {
            "data.train_subset": args.subset,
            "data.validation_size": VALIDATION,
            "model.width": args.width,
            "prune.max_layer_fraction": args.max_layer_fraction,
            "tracking.experiment": "early-bird-fmnist-bench",
            "early_bird.queue": args.queue,
            **retrain,
            **overrides,
        },
    )


def branches(args):
    """{branch: params overrides}, the standard path's dense run first."""
    found = {"dense": {}}
    for ratio in args.ratios:
        slim = {"prune.rate": ratio, "early_bird.ratio": ratio}
        found[f"standard-{round(100 * ratio)}"] = slim
        found[f"eb-{round(100 * ratio)}"] = {**slim, "early_bird.enabled": True}
    if args.int8:
        found["eb-50-int8"] = {"prune.rate": 0.5, "early_bird.ratio": 0.5, "early_bird.enabled": True,
                               "early_bird.quantize_bits": 8}  # fmt: skip
    return found


def seed_arms(args, base, seed):
    """A seed's arms in the order they run. An arm's settings: the digest of the params it (and,
    for a standard branch, the dense run it prunes) trains with."""
    seed_dir = args.workdir / f"seed_{seed}"
    dense_hp = params(args, base, seed, {})
    spec = data.DATASETS["fashion_mnist"]
    shapes = catalog.build("vgg11", spec.input_shape, spec.num_classes, seed=seed, width=args.width)
    forward = compression.flops(shapes, shapes.input_shape)
    per_epoch = args.subset // BATCH
    retrain_epochs = args.epochs if args.retrain == "full" else args.finetune_epochs

    def minutes(epochs):
        # The dense model's FLOPs: an upper bound for the pruned ones.
        iterations = epochs * per_epoch
        return training_minutes(forward, BATCH, iterations, evaluated_examples(dense_hp.train, VALIDATION, TEST_EXAMPLES))

    found = []
    for branch, overrides in branches(args).items():
        hp = params(args, base, seed, overrides)
        coordinates = {"seed": seed, "branch": branch}
        if branch == "dense":
            arm = Arm(coordinates, {"params": identity.digest([identity.of(hp)])}, functools.partial(dense_run, seed_dir, hp),
                      minutes(args.epochs))  # fmt: skip
        elif branch.startswith("standard"):
            settings = {"params": identity.digest([identity.of(dense_hp), identity.of(hp)])}
            run = functools.partial(ticket_run, seed_dir, branch, hp, early_bird=False)
            arm = Arm(coordinates, settings, run, minutes(retrain_epochs), (arm_key({"seed": seed, "branch": "dense"}),))
        else:
            # The search stops where the ticket emerges: counted as the whole budget, an upper bound.
            run = functools.partial(ticket_run, seed_dir, branch, hp, early_bird=True)
            arm = Arm(coordinates, {"params": identity.digest([identity.of(hp)])}, run, minutes(args.epochs + retrain_epochs))
        found.append(arm)
    return found


def all_arms(args, base):
    return [arm for seed in args.seeds for arm in seed_arms(args, base, seed)]


def dense_run(seed_dir, hp):
    enter_workspace(seed_dir / "dense")
    pipeline.init(hp)
    pipeline.train_dense(hp)
    metrics = read_json(paths.round_metrics(0))
    return {key: metrics[key] for key in ("final_test_accuracy", "test_accuracy_at_early_stop")}


def ticket_run(seed_dir, branch, hp, early_bird):
    """Prune round 1 (from the seed's dense run, or from an Early-Bird search of this branch's
    own), retrain, evaluate and compact it; its accuracy, compact size and, for Early-Bird, the
    search and its savings."""
    enter_workspace(seed_dir / branch)
    if early_bird:
        pipeline.init(hp)
        pipeline.train_dense(hp)
    else:
        copy_dense_run(seed_dir / "dense")
    for step in (pipeline.prune, pipeline.rewind, pipeline.retrain, pipeline.evaluate, pipeline.compact):
        step(hp, 1)
    metrics = read_json(paths.round_metrics(1))
    compact = read_json(paths.compression_report(1))["compact"]
    found = {
        "final_test_accuracy": metrics["final_test_accuracy"],
        "test_accuracy_at_early_stop": metrics["test_accuracy_at_early_stop"],
        "weights_remaining": metrics["weights_remaining"],
        "parameters": compact["parameters"],
        "flops": compact["flops"],
    }
    if early_bird:
        pipeline.summarize(hp)
        found.update(read_json(paths.summary())["early_bird"])
        found["search_iterations"] = read_json(paths.early_bird_report())["iterations_trained"]
    return found


def collect(args, finished):
    """{branch: [its entry per seed done, with "seed"]}; branches no seed has done are left out."""
    rows = {}
    for branch in branches(args):
        done = [(seed, finished.get(arm_key({"seed": seed, "branch": branch}))) for seed in args.seeds]
        entries = [{"seed": seed, **entry["result"], "seconds": entry["seconds"]} for seed, entry in done if entry]
        if entries:
            rows[branch] = entries
    return rows


def mean(rows, branch, key):
    return statistics.fmean(entry[key] for entry in rows[branch])


def paired(args, rows):
    """The Early-Bird branches whose standard branch is done, both by every seed: {eb branch: standard branch}."""
    found = {}
    for name in (b for b in branches(args) if b.startswith("eb")):
        standard = "standard-" + name.split("-")[1]
        if all(len(rows.get(b, [])) == len(args.seeds) for b in (name, standard)):
            found[name] = standard
    return found


def table(args, rows):
    lines = [
        "| ratio | EB epoch (per seed) | EB iterations (per seed) | EB at % of training | retrained EB acc. "
        "| standard acc. | Δ (pp) | epochs EB / standard | compute saving |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, standard in paired(args, rows).items():
        eb_acc, std_acc = mean(rows, name, "final_test_accuracy"), mean(rows, standard, "final_test_accuracy")
        epochs = [entry["epoch"] for entry in rows[name]]
        iterations = [entry["search_iterations"] if entry["epoch"] else None for entry in rows[name]]
        lines.append(
            f"| {name.removeprefix('eb-')} | {', '.join(str(e) if e else 'none' for e in epochs)} "
            f"| {', '.join(str(i) if i else 'none' for i in iterations)} "
            f"| {100 * mean(rows, name, 'emerged_at_fraction_of_training'):.1f}% | {100 * eb_acc:.2f}% | {100 * std_acc:.2f}% "
            f"| {100 * (eb_acc - std_acc):+.2f} | {mean(rows, name, 'epochs_early_bird'):.1f} / "
            f"{mean(rows, name, 'epochs_standard'):.1f} | {mean(rows, name, 'compute_saving'):.2f}× |"
        )
    pending = [name for name in branches(args) if len(rows.get(name, [])) < len(args.seeds)]
    if pending:
        lines.append(f"\nPending (not done by every seed): {', '.join(pending)}")
    return "\n".join(lines)


def claim(args, rows):
    """One line: the retrained Early-Bird ticket at most MATCH_PP below the standard ticket at
    every ratio (full precision), with the gaps; pending while an arm of it is not done, undecided
    where a search found no ticket (it trained the whole budget: that arm is a standard ticket)."""
    name = f"Early-Bird (You et al.): the retrained EB ticket matches the standard one (at most {MATCH_PP} pp below)"
    pairs = {eb: std for eb, std in paired(args, rows).items() if not eb.endswith("int8")}
    wanted = len(args.ratios)
    if len(pairs) < wanted:
        return f"{name}: pending ({len(pairs)} of {wanted} ratios done by every seed)"
    unfound = [f"{eb.removeprefix('eb-')}% seed {entry['seed']}" for eb in pairs for entry in rows[eb] if not entry["found"]]
    if unfound:
        return f"{name}: undecided (no Early-Bird ticket emerged at {', '.join(unfound)}: those searches trained the whole budget)"
    gaps = {eb: 100 * (mean(rows, eb, "final_test_accuracy") - mean(rows, std, "final_test_accuracy")) for eb, std in pairs.items()}
    gap_text = ", ".join(f"{gap:+.2f} pp at {eb.removeprefix('eb-')}%" for eb, gap in gaps.items())
    return f"{name}: {verdict(all(gap >= -MATCH_PP for gap in gaps.values()))} (EB − standard: {gap_text})"


def figure(args, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5))
    for prefix, label in (("standard", "standard ticket"), ("eb", "Early-Bird ticket")):
        names = [(ratio, f"{prefix}-{round(100 * ratio)}") for ratio in args.ratios]
        points = [(ratio, [100 * e["final_test_accuracy"] for e in rows[name]]) for ratio, name in names if name in rows]
        if not points:
            continue
        centre = [statistics.fmean(accuracy) for _, accuracy in points]
        spread = [[c - min(a) for c, (_, a) in zip(centre, points)], [max(a) - c for c, (_, a) in zip(centre, points)]]
        axis.errorbar([100 * ratio for ratio, _ in points], centre, yerr=spread, marker="o", capsize=3, label=label)
    if "dense" in rows:
        axis.axhline(100 * mean(rows, "dense", "final_test_accuracy"), color="black", ls=":", label="dense")
    axis.set_xlabel("channels pruned (%)")
    axis.set_ylabel("final test accuracy (%)")
    axis.set_title(f"VGG-11 (width {args.width:g}), {args.retrain} retraining, {len(args.seeds)} seed(s); bars: min-max")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--epochs", type=int, help="the dense training budget (both presets: 160, the paper's)")
    parser.add_argument("--finetune-epochs", type=int, help="--retrain finetune's length (both presets: 30)")
    parser.add_argument("--subset", type=int, help="training images (cpu: 2560, 20 iterations an epoch; gpu: 12800)")
    parser.add_argument("--max-layer-fraction", type=float, help="both presets: 0.8")
    parser.add_argument("--width", type=float, help="VGG-11's width (cpu: 0.25; gpu: 0.5)")
    parser.add_argument("--queue", type=int, help="masks each new one is compared with (cpu: 5; gpu: 4)")
    parser.add_argument("--retrain", choices=["finetune", "full"], help="cpu: finetune; gpu: full (see above)")
    add_arm_options(parser, PRESETS)
    args = parse_seeded_args(parser, Path("/tmp/lottery-early-bird-fmnist"))
    apply_preset(args, PRESETS)
    begun = begin(args, "early_bird_fmnist", all_arms)
    if begun is None:
        return
    stem, arms_file, base, arms = begun
    store_params = params(args, base, args.seeds[0], {})
    tracking.publish(store_params, records.lineage(store_params))  # create the store once
    start = time.perf_counter()
    options = child_arguments(
        args, "ratios", "epochs", "finetune_epochs", "subset", "max_layer_fraction", "width", "queue", "retrain", "workdir",
        "preset", "out", "max_arms",
    )  # fmt: skip
    run_seed_processes(__file__, args.seeds, options)
    run_minutes = (time.perf_counter() - start) / 60
    finished = arms_file.finished_entries(arms)
    rows = collect(args, finished)
    verdict_line = claim(args, rows)
    text = f"{table(args, rows)}\n\n{verdict_line}"
    result = {
        "settings": {
            "preset": args.preset,
            "model": f"vgg11 width {args.width:g} (BatchNorm)",
            "dataset": f"fashion_mnist, first {args.subset} training images, 10k test",
            "iterations_per_epoch": args.subset // BATCH,
            "max_layer_fraction": args.max_layer_fraction,
            "seeds": args.seeds,
            "epochs": args.epochs,
            "retrain": args.retrain,
            "finetune_epochs": args.finetune_epochs if args.retrain == "finetune" else None,
            "epsilon": store_params.early_bird.epsilon,
            "queue": args.queue,
            "arms_file": arms_file.path.name,
            "arms_done": f"{len(finished)} of {len(arms)}",
            "minutes_this_run": run_minutes,
        },
        "claim": verdict_line,
        "rows": rows,
    }
    stem = report_stem(stem, finished, arms)
    write_json(args.out / f"{stem}.json", result)
    write_text(args.out / f"{stem}.md", text + "\n")
    figure(args, rows, args.out / f"{stem}.png")
    heatmap = args.workdir / f"seed_{args.seeds[0]}" / "eb-50" / paths.early_bird_plots() / "heatmap.png"
    if heatmap.exists() and not stem.endswith("_partial"):  # where this run searched it
        shutil.copy(heatmap, args.out / ("early_bird_heatmap.png" if args.preset == "cpu" else f"{stem}_heatmap.png"))
    print(text)
    print(yaml.safe_dump(result["settings"], sort_keys=False))


if __name__ == "__main__":
    main()
