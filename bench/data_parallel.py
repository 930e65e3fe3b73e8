"""Data-parallel training through torchrun against one process: time, metrics and masks.

For each process count in `--processes` (1 first), a fresh project directory trains round 0 of
the same lineage with the real stage scripts (`python -m stages.init`, `stages.train`, then
`stages.prune --round 1`), `distributed.processes_per_node` set to the count: one process uses
torch's default threads, several use torchrun's one thread each (the Gloo backend on the CPU,
NCCL with `--device cuda`). Reports per count the train stage's wall time (its start-up, as
LOTTERY_STAGE_TIMES records it, included and shown apart), the iterations per second of the
whole stage, the final test accuracy and loss, the largest weight difference from the one-process
run, and whether prune@1 drew the same mask.

Writes bench/results/data_parallel_<device>.json and prints a Markdown table.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lottery import hparams, paths  # noqa: E402
from lottery.io import read_json, write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def params(args, processes):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["name"] = args.model
    raw["train"].update(device=args.device, iterations=args.iterations, eval_every=args.iterations // 4, batch_size=args.batch_size)
    raw["distributed"]["processes_per_node"] = processes
    raw["tracking"].update(experiment="data-parallel-bench", registered_model="")
    raw["rounds"] = hparams.rounds_section(1)
    return raw


def stage(workdir, name, *argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOTTERY_WARM": "0", "LOTTERY_STAGE_TIMES": str(workdir / "times.jsonl")}
    subprocess.run([sys.executable, "-m", f"stages.{name}", *argv], cwd=workdir, env=env, check=True)


def one_count(args, processes):
    workdir = args.workdir / f"processes_{processes}"
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "data").mkdir(parents=True)
    (workdir / "data" / "mnist").symlink_to(ROOT / "data" / "mnist")
    (workdir / "params.yaml").write_text(yaml.safe_dump(params(args, processes), sort_keys=False))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    stage(workdir, "init")
    started = time.perf_counter()
    stage(workdir, "train")
    seconds = time.perf_counter() - started
    stage(workdir, "prune", "--round", "1")
    lines = [json.loads(line) for line in (workdir / "times.jsonl").read_text().splitlines()]
    startup = max(line["startup_seconds"] for line in lines if line["stage"] == "train")
    metrics = read_json(workdir / paths.round_metrics(0))
    return workdir, {
        "processes": processes,
        "train_stage_seconds": seconds,
        "rank_startup_seconds": startup,
        "iterations_per_second": args.iterations / seconds,
        "final_test_accuracy": metrics["final_test_accuracy"],
        "final_test_loss": metrics["final_test_loss"],
    }


def compare(reference, workdir):
    """(largest |Δw| of the trained weights, whether prune@1's masks are equal) against `reference`."""
    load = lambda d, p: torch.load(d / p, weights_only=True)  # noqa: E731
    weights = [load(d, paths.trained_weights(0))["state_dict"] for d in (reference, workdir)]
    masks = [load(d, paths.mask(1)) for d in (reference, workdir)]
    difference = max(float((weights[0][n] - weights[1][n]).abs().max()) for n in weights[0])
    return difference, all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="lenet_300_100")
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lottery-data-parallel-bench"))
    args = parser.parse_args()
    rows, reference = [], None
    for processes in sorted(set(args.processes)):
        workdir, row = one_count(args, processes)
        reference = reference or workdir
        row["max_weight_difference"], row["prune_1_mask_equal"] = compare(reference, workdir)
        rows.append(row)
    base = rows[0]["train_stage_seconds"]
    for row in rows:
        row["speedup"] = base / row["train_stage_seconds"]
    result = {
        "device": args.device,
        "model": args.model,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "rows": rows,
    }
    write_json(RESULTS / f"data_parallel_{args.device}.json", result)
    print("| processes | train stage (s) | rank start-up (s) | it/s | speedup | test acc. | test loss | max abs Δw | prune@1 mask equal |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row['processes']} | {row['train_stage_seconds']:.1f} | {row['rank_startup_seconds']:.1f} "
            f"| {row['iterations_per_second']:.0f} | {row['speedup']:.2f}x | {100 * row['final_test_accuracy']:.2f}% "
            f"| {row['final_test_loss']:.4f} | {row['max_weight_difference']:.1e} | {row['prune_1_mask_equal']} |"
        )


if __name__ == "__main__":
    main()
