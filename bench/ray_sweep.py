"""8 tiny lineages (seeds 0-7) run three ways side by side in one run, two experiments at a time,
one torch thread each: `lottery sweep` on a 1-node Ray cluster (2 CPUs), `lottery sweep` on a
2-node Ray cluster on this machine (1 CPU each), and DVC's queue with 2 workers
(`dvc exp run --run-all --jobs 2`, OMP_NUM_THREADS=1). Beside them, one lineage alone
(`dvc exp run`, one thread): the work of one experiment without any sweep around it.

The overhead per experiment is what a way adds to that work: wall time x 2 (experiments at once)
/ 8 - the lone lineage's time. A sweep's overhead is its workspace (clone, DVC cache, params),
DVC's per-stage pushes of outputs and run-cache entries to the DVC remote, the experiment's save
and push to the git remote, and Ray; the queue's is its temporary copy of the project and Celery.

Each way runs in a fresh copy of the project (bench/queue_sweep.py's `project`, with a bare git
remote and a folder DVC remote beside it), and logs to a fresh `mlflow server` of its own, so no way
finds another's results. After each way the bench counts the lineages complete in MLflow and the
experiments `dvc exp show` lists, and stops if either falls short of 8. The warm worker for the
stages' environment is started before the first way, so no way pays for importing torch.
The 1-minute load average before and after each way is recorded: the machine is shared.

Writes bench/results/ray_sweep.json (atomically) and prints a Markdown table.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from queue_sweep import check_whole, complete_lineages_at, environment, experiments, load_cell, project, run, sweep, warm_up
from repro_time import ROOT, mnist_root, save

from tests.conftest import sh, with_team_remotes  # noqa: E402
from tests.test_sweep import ray_cluster  # noqa: E402
from tests.test_tracking_server import mlflow_server  # noqa: E402

AT_ONCE = 2
WAYS = (
    # (name, Ray nodes' CPUs, or None for DVC's queue)
    ("lottery sweep, 1 node (2 CPUs)", [2]),
    ("lottery sweep, 2 nodes (1 CPU each)", [1, 1]),
    ("DVC queue, 2 workers", None),
)


def ray_sweep(repo, seeds, cpus, env):
    """Seconds of the sweep on a fresh cluster, its workspaces and DVC cache in a folder of its own
    (a cache that another way filled would restore every stage from its run cache)."""
    with ray_cluster(cpus) as (address, _):
        start = time.perf_counter()
        workdir = str(repo.parent / f"{repo.name}-work")
        run(repo, env, sys.executable, "-m", "lottery", "sweep", "--seeds", *map(str, seeds), "--address", address, "--workdir", workdir)
        return time.perf_counter() - start


def lone_lineage(base, data_root, iterations, env):
    repo = project(base / "alone", data_root, iterations)
    start = time.perf_counter()
    run(repo, env, "dvc", "exp", "run")
    return time.perf_counter() - start


def measure(base, data_root, seeds, iterations):
    env = environment("1")
    results = {"seeds": seeds, "iterations_per_round": iterations, "rounds": 2, "cores": os.cpu_count(), "ways": []}
    (base / "alone-server").mkdir()
    with mlflow_server(f"sqlite:///{base / 'alone.db'}", base / "alone-server") as server:
        warm_up(project(base / "warm", data_root, iterations), env)
        results["lone_lineage_seconds"] = lone_lineage(base, data_root, iterations, {**env, "MLFLOW_TRACKING_URI": server.url})
    for number, (name, cpus) in enumerate(WAYS):
        print(f"{name} ...", flush=True)
        repo = with_team_remotes(project(base / f"way{number}", data_root, iterations))
        sh(repo, "git", "commit", "-qam", "the team's remotes")
        (base / f"server{number}").mkdir()
        with mlflow_server(f"sqlite:///{base / f'server{number}.db'}", base / f"server{number}") as server:
            way_env = {**env, "MLFLOW_TRACKING_URI": server.url}
            load_before = os.getloadavg()[0]
            seconds = sweep(repo, seeds, AT_ONCE, way_env) if cpus is None else ray_sweep(repo, seeds, cpus, way_env)
            way = {
                "way": name,
                "seconds": seconds,
                "overhead_per_experiment_seconds": seconds * AT_ONCE / len(seeds) - results["lone_lineage_seconds"],
                "load_average_before_after": [load_before, os.getloadavg()[0]],
                "complete_lineages_in_mlflow": complete_lineages_at(server.url, repo),
                "dvc_experiments": experiments(repo, way_env),
            }
        check_whole(way, len(seeds))
        results["ways"].append(way)
    return results


def table(results):
    lone = results["lone_lineage_seconds"]
    lines = [
        f"{len(results['seeds'])} lineages of {results['rounds']} rounds of {results['iterations_per_round']} iterations, "
        f"{AT_ONCE} at a time, one thread each, {results['cores']} cores; one lineage alone: {lone:.1f} s",
        "",
        "| way | wall time | overhead per experiment | vs DVC queue | lineages complete in MLflow | DVC experiments | load average before / after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    queue = results["ways"][-1]["seconds"]
    for way in results["ways"]:
        lines.append(
            f"| {way['way']} | {way['seconds']:.1f} s | {way['overhead_per_experiment_seconds']:.1f} s | "
            f"{way['seconds'] / queue:.2f}x | {way['complete_lineages_in_mlflow']} | {way['dvc_experiments']} | {load_cell(way)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--iterations", type=int, default=300, help="training iterations per round")
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "mnist", help="torchvision root holding MNIST/raw/")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "ray_sweep.json")
    args = parser.parse_args(argv)
    data_root = mnist_root(args.data_root)
    with tempfile.TemporaryDirectory(prefix="lottery-ray-", dir="/tmp") as base:
        results = measure(Path(base), data_root, args.seeds, args.iterations)
    save(args.output, results, table(results))


if __name__ == "__main__":
    main()
