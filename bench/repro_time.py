"""Wall time of the default experiment's `dvc repro` from scratch, and of a no-op `dvc repro` after it.

The run happens in a temporary copy of the project, so this checkout's outputs, dvc.lock and
MLflow store stay untouched: lottery/, stages/, params.yaml, dvc.yaml, .dvcignore and
pyproject.toml are copied into a fresh `git init` + `dvc init` repository (analytics off).
params.yaml keeps every value but the data source, which becomes `local` from this checkout's
already fetched MNIST (data/mnist, or `--data-root`), so no network is needed; the `data` stage
still runs and copies the files, and that is part of the time. MLflow logs into a SQLite store
inside the copy (MLFLOW_TRACKING_URI), and the stages import the copy's lottery package.

Times, in seconds: the first `dvc repro` (every stage), then a second `dvc repro`, which must
report that nothing changed. Also reports, from the first run's metrics/summary.json, the dense
test accuracy at early stop and the last round's weights remaining and accuracies.

Writes bench/results/repro_time.json (atomically) and prints a Markdown table. `--keep` keeps
the temporary copy (its path is printed) with the repro logs, repro.log and noop.log.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Use this checkout's package, whichever checkout the editable install points at.
sys.path.insert(0, str(ROOT))

from lottery.io import read_json, write_json  # noqa: E402

COPIED = ("lottery", "stages", "params.yaml", "dvc.yaml", ".dvcignore", "pyproject.toml")
UP_TO_DATE = "Data and pipelines are up to date."


def prepare(workdir, data_root):
    """A fresh git + DVC repository in `workdir` holding the project, with local data."""
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, workdir / name)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["data"]["source"] = "local"
    params["data"]["local_root"] = str(data_root)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(command, cwd=workdir, env=environment(workdir), check=True, capture_output=True)
    return params


def environment(workdir):
    env = dict(os.environ)
    # `dvc` and the stages' `python` come from the interpreter's own environment (the venv).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The editable install points at the original checkout; stages must run the copy.
    env["PYTHONPATH"] = str(workdir)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    return env


def timed_repro(workdir, log):
    """Seconds `dvc repro` took, and its output (also written to `log`)."""
    start = time.perf_counter()
    done = subprocess.run(
        ["dvc", "repro"], cwd=workdir, env=environment(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds = time.perf_counter() - start
    log.write_text(done.stdout)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-20:])
        raise RuntimeError(f"dvc repro failed ({done.returncode}) after {seconds:.0f} s:\n{tail}")
    return seconds, done.stdout


def measure(workdir, data_root):
    params = prepare(workdir, data_root)
    print(f"dvc repro of the default experiment in {workdir} ...", flush=True)
    load_before = os.getloadavg()[0]
    full, _ = timed_repro(workdir, workdir / "repro.log")
    noop, output = timed_repro(workdir, workdir / "noop.log")
    if UP_TO_DATE not in output:
        raise RuntimeError(f"the second dvc repro did not report '{UP_TO_DATE}':\n{output[-2000:]}")
    summary = read_json(workdir / "metrics" / "summary.json")
    last = summary["rounds"][-1]
    ticket = {metric: stats["mean"] for metric, stats in last["ticket"].items()}
    return {
        "repro_seconds": full,
        "noop_repro_seconds": noop,
        "rounds": len(params["rounds"]),
        "iterations_per_round": params["train"]["iterations"],
        "dense_test_accuracy_at_early_stop": summary["dense"]["test_accuracy_at_early_stop"]["mean"],
        "last_round": last["round"],
        "last_round_weights_remaining": last["weights_remaining"],
        "last_round_test_accuracy_at_early_stop": ticket["test_accuracy_at_early_stop"],
        "last_round_final_test_accuracy": ticket["final_test_accuracy"],
        # The run alone keeps the load near 1.5 on two cores; clearly more means another process
        # competed for them and the time is not comparable.
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }


def table(r):
    return "\n".join(
        [
            "| measure | value |",
            "|---|---:|",
            f"| `dvc repro` from scratch ({r['rounds']} rounds x {r['iterations_per_round']} it.) | {r['repro_seconds']:.1f} s |",
            f"| no-op `dvc repro` | {r['noop_repro_seconds']:.2f} s |",
            f"| dense test accuracy at early stop | {100 * r['dense_test_accuracy_at_early_stop']:.2f}% |",
            f"| round {r['last_round']} weights remaining | {100 * r['last_round_weights_remaining']:.1f}% |",
            f"| round {r['last_round']} test accuracy at early stop | {100 * r['last_round_test_accuracy_at_early_stop']:.2f}% |",
            f"| round {r['last_round']} final test accuracy | {100 * r['last_round_final_test_accuracy']:.2f}% |",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "mnist", help="torchvision root holding MNIST/raw/")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy of the project")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "repro_time.json")
    args = parser.parse_args(argv)

    data_root = mnist_root(args.data_root)
    workdir = Path(tempfile.mkdtemp(prefix="lottery-repro-"))
    try:
        results = measure(workdir, data_root)
    except (RuntimeError, subprocess.CalledProcessError) as err:
        sys.exit(f"error: {err}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir)
    save(args.output, results, table(results))


def mnist_root(path):
    """`path` resolved, if it is a torchvision root holding MNIST/raw/; else exit with one line."""
    root = path.resolve()
    if not (root / "MNIST" / "raw").is_dir():
        sys.exit(f"error: {root / 'MNIST' / 'raw'} does not exist; run `dvc repro data` first")
    return root


def save(path, results, text):
    """Write the results (atomically) and print their table and where they went."""
    write_json(path, results)
    print(text)
    print(f"\n{path}")


if __name__ == "__main__":
    main()
