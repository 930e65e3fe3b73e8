"""The default IMP lineage beside factorized layers, supermasks and IMP's random_sparse control, at
the same rates, through `lottery compare`.

Four series, each at params.yaml's schedule (LeNet-300-100 on MNIST, 7000 iterations and 8 rounds
of 20% fc / 10% output pruning unless `--iterations`/`--rounds` say otherwise):
  IMP            the default lineage (magnitude pruning, rewinding to θ0), with controls.run
                 [random_sparse]
  random_sparse  that lineage's control: θ0 under a random mask of each round's per-layer sparsity
  factorized     factorize.enabled: each round low-rank factors storing at most the ticket's weights
                 (spectral init; weight_agnostic.values [] and no controls, as factorize requires)
  supermask      prune.strategy edge_popup on a signed-constant θ0 (model.init
                 signed_kaiming_constant): a mask searched on frozen random weights, none trained

Each (method, seed) is a full lineage run in-process by the pipeline's stage functions, in a
workspace of its own under `--workdir` (a throwaway project; its SQLite MLflow store is
`--workdir`/mlflow.db), `--jobs` processes at a time, one thread each. Then `lottery compare`
writes `--out`.md (the table) and `--out`.png (the figure); default bench/results/compare_methods.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lottery import cli, hparams, paths, pipeline, records, tracking, validation  # noqa: E402
from structured_fmnist import enter_workspace  # noqa: E402

EXPERIMENT = "compare-methods-bench"
METHODS = {
    "IMP": {"controls.run": ["random_sparse"]},
    "factorized": {"factorize.enabled": True, "weight_agnostic.values": [], "controls.run": []},
    "supermask": {"prune.strategy": "edge_popup", "model.init": "signed_kaiming_constant", "controls.run": []},
}


def bench_params(method, seed, args):
    """params.yaml with the method's overrides, the seed, and the bench's schedule and store."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["seed"] = seed
    raw["data"].update(source="local", local_root=str(ROOT / "data" / "mnist"))
    raw["tracking"].update(experiment=EXPERIMENT, registered_model="")
    if args.iterations:
        raw["train"]["iterations"] = args.iterations
    if args.supermask_iterations:
        raw["supermask"]["iterations"] = args.supermask_iterations
    if args.rounds:
        raw["rounds"] = hparams.rounds_section(args.rounds)
    for dotted, value in METHODS[method].items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return validation.from_dict(raw)


def one_lineage(args):
    """Run the lineage of (args.method, args.seed) in its workspace; print its parent run id."""
    import torch

    torch.set_num_threads(1)
    workspace = args.workdir / f"{args.method}_{args.seed}"
    enter_workspace(workspace, "mnist")
    pipeline.run_lineage(bench_params(args.method, args.seed, args))


def run_all(args):
    """Every (method, seed) lineage, `args.jobs` processes at a time; {(method, seed): parent run id}."""
    hp = bench_params("IMP", args.seeds[0], args)
    tracking.publish(hp, records.lineage(hp))  # the SQLite store made once, before the processes share it
    schedule = ["--workdir", str(args.workdir), "--iterations", str(args.iterations or 0),
                "--supermask-iterations", str(args.supermask_iterations or 0), "--rounds", str(args.rounds or 0)]
    queue = [(method, seed) for method in METHODS for seed in args.seeds]
    running = []
    while queue or running:
        while queue and len(running) < args.jobs:
            method, seed = queue.pop(0)
            command = [sys.executable, __file__, "--method", method, "--seed", str(seed), *schedule]
            running.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        time.sleep(1)
        if any(process.poll() for process in running):
            sys.exit("error: a lineage failed (its errors are above)")
        running = [process for process in running if process.poll() is None]
    return {key: json.loads((args.workdir / f"{key[0]}_{key[1]}" / paths.lineage_file()).read_text())["parent_run_id"] for key in
            [(method, seed) for method in METHODS for seed in args.seeds]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per method (2 or more: bands of ± 1 sd)")
    parser.add_argument("--iterations", type=int, default=0, help="training iterations per round (0: params.yaml's)")
    parser.add_argument("--supermask-iterations", type=int, default=0, help="score-training steps per round (0: params.yaml's)")
    parser.add_argument("--rounds", type=int, default=0, help="pruning rounds (0: params.yaml's)")
    parser.add_argument("--jobs", type=int, default=2, help="lineages run at once, one thread each")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lottery-compare-methods"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compare_methods", help="writes OUT.md and OUT.png")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # internal: run one lineage
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    uri = f"sqlite:///{args.workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if args.method:
        return one_lineage(args)

    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ids = run_all(args)
    minutes = (time.perf_counter() - start) / 60
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_minutes = (children.ru_utime + children.ru_stime) / 60
    first = args.seeds[0]
    specs = [f"IMP={ids['IMP', first]}", f"random_sparse={ids['IMP', first]}:random_sparse",
             f"factorized={ids['factorized', first]}", f"supermask={ids['supermask', first]}"]
    table, figure = args.out.with_suffix(".md"), args.out.with_suffix(".png")
    cli.main(["--params", str(ROOT / "params.yaml"), "compare", *specs, "--all-seeds", "--uri", uri, "--experiment", EXPERIMENT,
              "--figure", str(figure), "--table", str(table)])
    hp = bench_params("IMP", first, args)
    seeds = f"{len(args.seeds)} seeds" if len(args.seeds) > 1 else "1 seed"
    note = (f"\n{len(METHODS) * len(args.seeds)} lineages (IMP with its random_sparse control, factorized, supermask; {seeds} each), "
            f"{hp.train.iterations} iterations "
            f"per round, {hp.rounds} round{'s' if hp.rounds > 1 else ''}, supermask search {hp.supermask.iterations} steps per round: "
            f"{minutes:.1f} min "
            f"({cpu_minutes:.1f} min of CPU) "
            f"with {args.jobs} lineages at a time on {os.cpu_count()} CPU cores.\n")
    table.write_text(table.read_text() + note)
    print(note)


if __name__ == "__main__":
    main()
