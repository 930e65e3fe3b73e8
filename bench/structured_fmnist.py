"""Structured pruning on real Fashion-MNIST: is the pruned model better, and is it really smaller?

A small CIFAR-style VGG-11 with BatchNorm (width 0.25: 16-128 channels) is trained dense with
Network Slimming's sparsity term (λ = 1e-3 on |γ|, see BN_L1), then pruned once, for every seed in
`--seeds`:

  slim-50 / slim-70   bn_slimming, one global |γ| threshold, 50% / 70% of channels, fine-tuned
  l1-50               l1_filter, 50% of each layer's filters (Li et al.), fine-tuned
  scratch-E-50        slim-50's architecture from a fresh init, the dense run's iterations
  scratch-B-50        the same, iterations × dense/pruned FLOPs (capped at 2×)

Every branch runs the pipeline's own stage functions (prune, rewind, retrain, evaluate, compact)
in a workspace of its own that shares the seed's dense round 0. Seeds train side by side, one
process and one thread each. Latency is then measured in one process with the machine otherwise
idle: dense and every compact model alternately, batch 1 and 64, medians of repeated runs after
warm-up. Writes bench/results/structured_fmnist.{json,md} and prints the table.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lottery import checkpoints, compression, hparams, paths, pipeline, records, tracking, validation  # noqa: E402
from lottery.io import read_json, write_json, write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# Network Slimming uses 1e-4 over 160 epochs; these runs are ~16x shorter, and at 1e-4 the
# L1 term barely moved γ (measured: slim-50 lost 1.5 pp after fine-tuning), so it is 10x larger.
BN_L1 = 1e-3
SLIM = {"prune.strategy": "bn_slimming", "prune.scope": "global"}
FINETUNE = {"rewind.target": "finetune"}
BRANCHES = {
    "slim-50": {**SLIM, "prune.rate": 0.5, **FINETUNE},
    "slim-70": {**SLIM, "prune.rate": 0.7, **FINETUNE},
    "l1-50": {"prune.strategy": "l1_filter", "prune.scope": "layerwise", "prune.rate": 0.5, **FINETUNE},
    "scratch-E-50": {**SLIM, "prune.rate": 0.5, "rewind.target": "scratch", "rewind.scratch_budget": "same"},
    "scratch-B-50": {**SLIM, "prune.rate": 0.5, "rewind.target": "scratch", "rewind.scratch_budget": "flops"},
}


def bench_params(base, seed, iterations, finetune_iterations, overrides=None):
    """`base`: the project's params.yaml as the run started (so editing it mid-run changes nothing)."""
    raw = yaml.safe_load(base.read_text())
    raw["seed"] = seed
    raw["data"].update(dataset="fashion_mnist", source="local", local_root=str(ROOT / "data" / "fashion_mnist"))
    raw["model"].update(name="vgg11", width=0.25)
    raw["train"].update(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        batch_size=128,
        iterations=iterations,
        eval_every=iterations // 10,
        milestones=[iterations // 2, iterations * 3 // 4],
        gamma=0.1,
        warmup_iterations=0,
        bn_l1=BN_L1,
    )
    raw["prune"].update(granularity="channel", schedule="oneshot", min_channels=2, strategy="bn_slimming", scope="global")
    raw["rewind"].update(finetune_lr=0.01, finetune_iterations=finetune_iterations, max_budget_factor=2.0)
    raw["compact"]["latency_repeats"] = 5  # the figures that count are measured at the end, machine idle
    raw["tracking"].update(experiment="structured-fmnist-bench", registered_model="")
    raw["rounds"] = hparams.rounds_section(1)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return validation.from_dict(raw)


def one_seed(args):
    import torch

    torch.set_num_threads(1)
    common = (args.workdir / "params.base.yaml", args.seed, args.iterations, args.finetune_iterations)
    dense_dir = args.workdir / f"seed_{args.seed}" / "dense"
    enter_workspace(dense_dir)
    pipeline.init(bench_params(*common))
    pipeline.train_dense(bench_params(*common))
    for branch, overrides in BRANCHES.items():
        hp = bench_params(*common, overrides)
        enter_workspace(args.workdir / f"seed_{args.seed}" / branch)
        copy_dense_run(dense_dir)
        started = time.perf_counter()
        for step in (pipeline.prune, pipeline.rewind, pipeline.retrain, pipeline.evaluate, pipeline.compact):
            step(hp, 1)
        write_json(Path("bench_seconds.json"), {"seconds": time.perf_counter() - started})


def parse_seeded_args(parser, workdir):
    """Parse with the options every bench here shares (--seeds, --workdir, the internal --seed), and
    keep MLflow in the workdir."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workdir", type=Path, default=workdir)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)  # internal: run one seed
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{args.workdir / 'mlflow.db'}"
    return args


def fresh_workdir(workdir):
    """An empty `workdir` holding a copy of params.yaml as it is now, which every seed reads."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    return Path(shutil.copy(ROOT / "params.yaml", workdir / "params.base.yaml"))


def run_seeds(script, seeds, arguments):
    """One process per seed (`script --seed s ...`), side by side; exit if any fails."""
    workers = [subprocess.Popen([sys.executable, script, "--seed", str(seed), *arguments]) for seed in seeds]
    if any(worker.wait() for worker in workers):
        sys.exit("error: a seed failed (see its output above)")


def copy_dense_run(dense_dir):
    """θ0, round 0 and their metrics from another workspace's run into this one, so that a branch
    pruning the same dense run does not train it again."""
    for shared in (paths.init_checkpoint().parent, paths.round_dir(0)):
        shutil.copytree(dense_dir / shared, shared, dirs_exist_ok=True)
    shutil.copytree(dense_dir / paths.METRICS, paths.METRICS, dirs_exist_ok=True)


def enter_workspace(workspace, dataset="fashion_mnist"):
    (workspace / "data").mkdir(parents=True, exist_ok=True)
    link = workspace / "data" / dataset
    if not link.exists():
        link.symlink_to(ROOT / "data" / dataset)
    os.chdir(workspace)


def measure_latency(workdir, seeds, repeats):
    """{(seed, branch or 'dense'): {batch: median ms}}, dense and compact models interleaved so any
    drift in the machine's speed hits both alike."""
    models = {}
    for seed in seeds:
        models[(seed, "dense")] = checkpoints.load_model(workdir / f"seed_{seed}" / "dense" / paths.trained_weights(0))[0]
        for branch in BRANCHES:
            path = workdir / f"seed_{seed}" / branch / paths.compact_model(1)
            models[(seed, branch)] = checkpoints.load_model(path)[0]
    return interleaved_latency(models, repeats)


def interleaved_latency(models, rounds, passes=10):
    """{key: {batch: median ms}} of each of {key: model} at batch 1 and 64: `rounds` times, every
    model in turn takes compression.latency's median of `passes` forward passes, and the median
    over the rounds is kept."""
    samples = {key: {1: [], 64: []} for key in models}
    for _ in range(rounds):
        for key, model in models.items():
            for batch in (1, 64):
                samples[key][batch].append(1000 * compression.latency(model, model.input_shape, batch, repeats=passes))
    return {key: {batch: statistics.median(times) for batch, times in by_batch.items()} for key, by_batch in samples.items()}


def collect(args, latency):
    rows = {}
    dense_metrics = [read_json(args.workdir / f"seed_{s}" / "dense" / paths.round_metrics(0)) for s in args.seeds]
    first = args.workdir / f"seed_{args.seeds[0]}"
    dense_report = read_json(first / "slim-50" / paths.compression_report(1))["dense"]
    rows["dense"] = _row(
        [m["final_test_accuracy"] for m in dense_metrics],
        [m["test_accuracy_at_early_stop"] for m in dense_metrics],
        dense_report["parameters"],
        dense_report["flops"],
        dense_report["bytes"],
        [latency[(s, "dense")] for s in args.seeds],
        retrain_iterations=args.iterations,
    )
    for branch in BRANCHES:
        metrics = [read_json(args.workdir / f"seed_{s}" / branch / paths.round_metrics(1)) for s in args.seeds]
        reports = [read_json(args.workdir / f"seed_{s}" / branch / paths.compression_report(1)) for s in args.seeds]
        trained = checkpoints.load(args.workdir / f"seed_{args.seeds[0]}" / branch / paths.trained_weights(1))
        rows[branch] = _row(
            [m["final_test_accuracy"] for m in metrics],
            [m["test_accuracy_at_early_stop"] for m in metrics],
            statistics.fmean(r["compact"]["parameters"] for r in reports),
            statistics.fmean(r["compact"]["flops"] for r in reports),
            statistics.fmean(r["compact"]["bytes"] for r in reports),
            [latency[(s, branch)] for s in args.seeds],
            retrain_iterations=trained["iteration"],
            max_abs_difference=max(r["max_abs_difference"] for r in reports),
        )
    return rows


def _row(final, early, parameters, flops, size, latencies, **extra):
    return {
        "final_test_accuracy": _spread(final),
        "test_accuracy_at_early_stop": _spread(early),
        "parameters": parameters,
        "flops": flops,
        "bytes": size,
        "latency_ms_batch_1": statistics.fmean(lat[1] for lat in latencies),
        "latency_ms_batch_64": statistics.fmean(lat[64] for lat in latencies),
        **extra,
    }


def _spread(values):
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}


def table(rows):
    dense = rows["dense"]
    lines = [
        "| model | final test acc. (mean, min–max) | Δ vs dense | params | MFLOPs | bytes | latency b1 / b64 (ms) | b64 vs dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        acc = r["final_test_accuracy"]
        lines.append(
            f"| {name} | {100 * acc['mean']:.2f}% ({100 * acc['min']:.2f}–{100 * acc['max']:.2f}) "
            f"| {100 * (acc['mean'] - dense['final_test_accuracy']['mean']):+.2f} pp "
            f"| {r['parameters']:,.0f} | {r['flops'] / 1e6:.2f} | {r['bytes']:,.0f} "
            f"| {r['latency_ms_batch_1']:.2f} / {r['latency_ms_batch_64']:.2f} "
            f"| {r['latency_ms_batch_64'] / dense['latency_ms_batch_64']:.2f}× |"
        )
    return "\n".join(lines)


def verdicts(rows):
    dense = rows["dense"]["final_test_accuracy"]["mean"]

    def acc(name):
        return rows[name]["final_test_accuracy"]["mean"]

    return {
        "slim_50_within_0.5pp_of_dense": acc("slim-50") >= dense - 0.005,
        "slim_50_gap_pp": 100 * (acc("slim-50") - dense),
        "compact_50_latency_b64_ratio": rows["slim-50"]["latency_ms_batch_64"] / rows["dense"]["latency_ms_batch_64"],
        "scratch_b_50_minus_finetune_pp": 100 * (acc("scratch-B-50") - acc("slim-50")),
        "scratch_e_50_minus_finetune_pp": 100 * (acc("scratch-E-50") - acc("slim-50")),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=4000, help="dense training (batch 128; 430 per epoch)")
    parser.add_argument("--finetune-iterations", type=int, default=2000)
    parser.add_argument("--latency-repeats", type=int, default=15, help="rounds of interleaved latency timing")
    args = parse_seeded_args(parser, Path("/tmp/lottery-structured-fmnist"))
    if args.seed is not None:
        return one_seed(args)

    base = fresh_workdir(args.workdir)
    store_params = bench_params(base, args.seeds[0], args.iterations, args.finetune_iterations)
    tracking.publish(store_params, records.lineage(store_params))  # create the store once
    start = time.perf_counter()
    common = ["--iterations", str(args.iterations), "--finetune-iterations", str(args.finetune_iterations)]
    run_seeds(__file__, args.seeds, [*common, "--workdir", str(args.workdir)])
    training_minutes = (time.perf_counter() - start) / 60
    latency = measure_latency(args.workdir, args.seeds, args.latency_repeats)
    rows = collect(args, latency)
    result = {
        "settings": {
            "model": "vgg11 width 0.25 (BatchNorm)",
            "dataset": "fashion_mnist (55k train / 5k validation / 10k test)",
            "seeds": args.seeds,
            "dense_iterations": args.iterations,
            "finetune_iterations": args.finetune_iterations,
            "batch_size": 128,
            "bn_l1": BN_L1,
            "training_minutes": training_minutes,
            "total_minutes": (time.perf_counter() - start) / 60,
        },
        "rows": rows,
        "verdicts": verdicts(rows),
    }
    text = table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "structured_fmnist.json", result)
    write_text(RESULTS / "structured_fmnist.md", text + "\n")
    print(text)
    print(yaml.safe_dump(result["verdicts"], sort_keys=False))
    print(f"{len(args.seeds)} seeds, {result['settings']['total_minutes']:.1f} min; {RESULTS}")


if __name__ == "__main__":
    main()
