"""Reproduce LTH Figures 3-4 for LeNet-300-100 on real MNIST, with the reinit and random_sparse controls.

Settings are the paper's (Adam 1.2e-3, batch 60, fc 20% / output 10% per round, rewinding to
θ0), iterated for 15 rounds down to 3.5% of the weights, for every seed in `--seeds`. Training
is cut from the paper's 50k iterations per round to `--iterations` (20k by default), so that
two seeds with two controls, 92 trainings in all, fit in about an hour on a 2-core CPU. LeNet's
early stopping lands well before 20k here, so the comparison survives the cut.

Each seed is a full lineage run in-process by the pipeline's own stage functions, in its own
workspace under `--workdir`, one process per seed (one thread each) side by side. MLflow logs
into a SQLite store in `--workdir`. The seeds are then aggregated exactly as
`python -m lottery replicates` does it. This writes bench/results/lth_mnist.json (summary),
lth_mnist.md (the table) and lth_mnist.png (the figure), and prints the table.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lottery import hparams, paths, pipeline, records, replicates, report, tracking, validation  # noqa: E402
from structured_fmnist import enter_workspace  # noqa: E402
from lottery.io import write_json, write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def bench_params(seed, iterations, rounds):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["seed"] = seed
    raw["data"].update(source="local", local_root=str(ROOT / "data" / "mnist"))
    raw["train"].update(iterations=iterations, eval_every=500)
    raw["prune"].update(rate=0.2, output_rate=None, scope="layerwise", schedule="iterative", strategy="magnitude")
    raw["rewind"]["iteration"] = 0
    raw["controls"]["run"] = ["reinit", "random_sparse"]
    raw["tracking"]["experiment"] = "lth-mnist-bench"
    raw["rounds"] = hparams.rounds_section(rounds)
    return validation.from_dict(raw)


def one_seed(args):
    import torch

    torch.set_num_threads(1)
    workspace = args.workdir / f"seed_{args.seed}"
    enter_workspace(workspace, "mnist")
    pipeline.run_lineage(bench_params(args.seed, args.iterations, args.rounds))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=20000, help="per round (paper: 50000)")
    parser.add_argument("--rounds", type=int, default=15, help="15 rounds leave 3.5%% of the weights")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lottery-lth-mnist"))
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)  # internal: run one seed's lineage
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{args.workdir / 'mlflow.db'}"
    if args.seed is not None:
        return one_seed(args)

    args.workdir.mkdir(parents=True, exist_ok=True)
    hp = bench_params(args.seeds[0], args.iterations, args.rounds)
    tracking.publish(hp, records.lineage(hp))  # create the SQLite store first: two processes migrating it at once collide
    start = time.perf_counter()
    common = ["--iterations", str(args.iterations), "--rounds", str(args.rounds), "--workdir", str(args.workdir)]
    workers = [subprocess.Popen([sys.executable, __file__, "--seed", str(seed), *common]) for seed in args.seeds]
    if any(worker.wait() for worker in workers):
        sys.exit("error: a seed's lineage failed (see its output above)")
    minutes = (time.perf_counter() - start) / 60

    os.chdir(args.workdir)
    summary = replicates.summarize(hp)
    summary["benchmark"] = {"iterations_per_round": args.iterations, "seeds": args.seeds, "minutes": minutes}
    table = report.format_table(summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "lth_mnist.json", summary)
    write_text(RESULTS / "lth_mnist.md", table + "\n")
    (RESULTS / "lth_mnist.png").write_bytes((args.workdir / paths.replicates_figure()).read_bytes())
    print(table)
    print(f"\n{len(args.seeds)} seeds, {args.iterations} iterations per round, {minutes:.1f} min; {RESULTS}")


if __name__ == "__main__":
    main()
