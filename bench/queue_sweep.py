"""Wall time of a small seed sweep through DVC's experiment queue, 1 worker against 2, side by side
in one run, with torch's default threads (one per core) and with one thread per stage
(OMP_NUM_THREADS=1); beside them the sweep as `make replicates` runs it without WORKERS (one
`dvc exp run` after the other in the workspace).

Each way runs in a fresh copy of the project (tests/conftest.py's `dvc_project`: lottery/, stages/,
dvc.yaml, .dvcignore, .gitignore, params.yaml, `git init` + `dvc init`, one commit), so no way
finds another's results in DVC's run cache or its MLflow store. The lineage is the tests' tiny one
(1,200 training images, no controls) with 2 rounds of `--iterations` iterations (default 1,000,
evaluated every 250), and `--seeds` seeds (default 4). The stages log to the copy's default store
(no MLFLOW_TRACKING_URI), as a user's would; after each sweep the bench counts the lineages whose
every round has its results in that store and the experiments `dvc exp show` lists, and stops if
either falls short.

Timed: the queued ways from `dvc exp run --run-all --jobs N` (N workers, then wait for every
queued experiment) to its end; the experiments are queued first, untimed (about 1 s each). The
sequential way: the `dvc exp run -S seed=<s>` loop. Before each way the warm worker for its
environment (lottery/warm.py) is started and waited for, so no way pays for importing torch.
The 1-minute load average before and after each way is recorded: the machine is shared, and a way
that ran beside another job does not compare.

Writes bench/results/queue_sweep.json (atomically) and prints a Markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repro_time import ROOT, mnist_root, save

from lottery import validation  # noqa: E402
from lottery.lineage_catalog import LineageCatalog  # noqa: E402
from lottery.runs import COMPLETE_METRIC  # noqa: E402
from tests.conftest import commit, dvc_project, tiny_params  # noqa: E402

WAYS = (
    # (name, workers or None for the sequential loop, OMP_NUM_THREADS or None for torch's default)
    ("sequential (make replicates)", None, None),
    ("queue, 1 worker", 1, None),
    ("queue, 2 workers", 2, None),
    ("queue, 1 worker, 1 thread", 1, "1"),
    ("queue, 2 workers, 1 thread each", 2, "1"),
)
WARM_TIMEOUT_S = 120


def environment(threads):
    """This environment with the venv first on PATH, the project's default MLflow store and, if
    given, `threads` torch threads per process."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    return env


def run(cwd, env, *command):
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return done.stdout


def project(workdir, data_root, iterations):
    overrides = {"train.iterations": iterations, "train.eval_every": 250, "controls.run": []}
    repo = dvc_project(workdir, tiny_params(data_root, overrides))
    commit(repo, "sweep baseline")
    return repo


def warm_up(repo, env):
    """Start the warm worker that the stages of `env` use and wait until it has imported everything."""
    probe = "from lottery import warm; print(warm.socket_path())"
    socket = Path(run(repo, env, sys.executable, "-c", probe).strip())
    # A command that hands itself to the worker (`--help` ends before that) and writes nothing in
    # `repo`; that it finds no lineage there (status 1) does not matter.
    probe_store = f"sqlite:///{repo.parent / 'warm-probe.db'}"
    subprocess.run([sys.executable, "-m", "lottery", "lineage", "list", "--uri", probe_store], cwd=repo, env=env, capture_output=True)
    deadline = time.monotonic() + WARM_TIMEOUT_S
    while not socket.exists() or Path(f"{socket}.starting").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no warm worker at {socket} after {WARM_TIMEOUT_S} s")
        time.sleep(0.5)


def sweep(repo, seeds, workers, env):
    """Seconds of the sweep: the sequential loop, or the queued experiments run by `workers` workers."""
    if workers is None:
        start = time.perf_counter()
        for seed in seeds:
            run(repo, env, "dvc", "exp", "run", "-S", f"seed={seed}")
        return time.perf_counter() - start
    for seed in seeds:
        run(repo, env, "dvc", "exp", "run", "--queue", "-S", f"seed={seed}")
    start = time.perf_counter()
    run(repo, env, "dvc", "exp", "run", "--run-all", "--jobs", str(workers))
    return time.perf_counter() - start


def complete_lineages(repo):
    """Lineages in the copy's default MLflow store (mlflow.db at its root) whose every round has its results."""
    return complete_lineages_at(f"sqlite:///{repo / 'mlflow.db'}", repo)


def complete_lineages_at(uri, repo):
    """Lineages of `repo`'s params in the MLflow store at `uri` whose every round has its results."""
    hp = validation.load(repo / "params.yaml")
    catalog = LineageCatalog(uri, hp.tracking.experiment)
    return sum(is_complete(catalog.load(parent), hp.rounds) for parent in catalog.parents())


def is_complete(record, rounds):
    finished = [r for r in record.rounds if COMPLETE_METRIC in record.branches[(r, None)].data.metrics]
    return finished == list(range(rounds + 1))


def experiments(repo, env):
    table = json.loads(run(repo, env, "dvc", "exp", "show", "--json"))
    return sum(len(entry.get("experiments") or []) for entry in table)


def measure(base, data_root, seeds, iterations):
    results = {"seeds": seeds, "iterations_per_round": iterations, "rounds": 2, "cores": os.cpu_count(), "ways": []}
    for number, (name, workers, threads) in enumerate(WAYS):
        print(f"{name} ...", flush=True)
        repo = project(base / f"way{number}", data_root, iterations)
        env = environment(threads)
        warm_up(repo, env)
        load_before = os.getloadavg()[0]
        seconds = sweep(repo, seeds, workers, env)
        way = {
            "way": name,
            "workers": workers,
            "omp_num_threads": threads,
            "seconds": seconds,
            "load_average_before_after": [load_before, os.getloadavg()[0]],
            "complete_lineages_in_mlflow": complete_lineages(repo),
            "dvc_experiments": experiments(repo, env),
        }
        check_whole(way, len(seeds))
        results["ways"].append(way)
    return results


def check_whole(way, seeds):
    """Stop unless every seed of `way` has a complete lineage in MLflow and a DVC experiment."""
    if way["complete_lineages_in_mlflow"] != seeds or way["dvc_experiments"] != seeds:
        found = f"{way['complete_lineages_in_mlflow']} complete lineages in MLflow, {way['dvc_experiments']} DVC experiments"
        raise RuntimeError(f"{way['way']}: {found} for {seeds} seeds")


def load_cell(way):
    return " / ".join(f"{value:.1f}" for value in way["load_average_before_after"])


def table(results):
    first = results["ways"][1]["seconds"]
    lines = [
        f"{len(results['seeds'])} seeds, {results['rounds']} rounds of {results['iterations_per_round']} iterations, {results['cores']} cores",
        "",
        "| way | wall time | vs 1 worker | lineages complete in MLflow | DVC experiments | load average before / after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for way in results["ways"]:
        lines.append(
            f"| {way['way']} | {way['seconds']:.1f} s | {way['seconds'] / first:.2f}× | "
            f"{way['complete_lineages_in_mlflow']} | {way['dvc_experiments']} | {load_cell(way)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--iterations", type=int, default=1000, help="training iterations per round")
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "mnist", help="torchvision root holding MNIST/raw/")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "queue_sweep.json")
    args = parser.parse_args(argv)
    data_root = mnist_root(args.data_root)
    with tempfile.TemporaryDirectory(prefix="lottery-queue-") as base:
        results = measure(Path(base), data_root, args.seeds, args.iterations)
    save(args.output, results, table(results))


if __name__ == "__main__":
    main()
