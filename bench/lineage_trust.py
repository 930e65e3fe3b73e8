"""The four measurements behind "a lineage you can trust", each through the real `dvc repro`.

A tiny lineage (the tests' TINY params: 2 rounds, 1,200 training images, 60 iterations per
round) runs in fresh copies of the project (bench/repro_time.py's `prepare`):

1. byte-stable artifacts: the sha256 of models/init/init.pt from two separate copies;
2. a forced identical rerun: `dvc repro --force --single-item train`, then how many stages a
   following `dvc repro` runs (the goal is 0);
3. a tracking outage: the whole lineage against a server that accepts connections and never
   answers (tests/blackhole.py), beside the same lineage against a healthy SQLite store, in the
   same run; the extra seconds and how many connections the dead server saw;
4. a rejected value: `prune.rate: 1.5` in params.yaml, `dvc repro` (it must fail), the value put
   back, `dvc repro` again, and how many stages each of those ran.

Writes bench/results/lineage_trust.json and prints a Markdown table.
"""

import argparse
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from repro_time import ROOT, environment, mnist_root, prepare, save

from lottery import mlflow_connection  # noqa: E402
from tests.blackhole import BlackHole  # noqa: E402
from tests.conftest import TINY, with_overrides  # noqa: E402


def tiny_copy(workdir, data_root):
    """A fresh project copy in `workdir` whose params.yaml is the tiny lineage's."""
    params = prepare(workdir, data_root)
    (workdir / "params.yaml").write_text(yaml.safe_dump(with_overrides(params, TINY), sort_keys=False))
    return workdir


def dvc(workdir, *args, tracking_uri=None):
    """(seconds, exit status, output) of a `dvc` command in `workdir`."""
    env = environment(workdir)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    start = time.perf_counter()
    done = subprocess.run(["dvc", *args], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return time.perf_counter() - start, done.returncode, done.stdout


def stages_run(output):
    return re.findall(r"Running stage '([^']+)'", output)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def measure(base, data_root):
    healthy, dead = tiny_copy(base / "healthy", data_root), tiny_copy(base / "dead", data_root)
    with BlackHole() as hole:
        try:
            dead_seconds, code, output = dvc(dead, "repro", tracking_uri=hole.url)
            assert code == 0, output[-3000:]
        finally:
            mlflow_connection.forget_probe(hole.url)
        probes = hole.accepted
    healthy_seconds, code, output = dvc(healthy, "repro")
    assert code == 0, output[-3000:]
    stage_count = len(stages_run(output))

    _, code, forced = dvc(healthy, "repro", "--force", "--single-item", "train")
    assert code == 0, forced[-3000:]
    _, code, after_force = dvc(healthy, "repro")

    params = healthy / "params.yaml"
    good = params.read_text()
    params.write_text(re.sub(r"(?m)^  rate: 0\.2$", "  rate: 1.5", good, count=1))
    _, rejected_code, rejected = dvc(healthy, "repro")
    params.write_text(good)
    _, code, reverted = dvc(healthy, "repro")

    return {
        "stages": stage_count,
        "init_pt_sha256": [sha256(healthy / "models/init/init.pt"), sha256(dead / "models/init/init.pt")],
        "stages_run_after_forced_train": stages_run(after_force),
        "healthy_store_seconds": healthy_seconds,
        "never_answering_server_seconds": dead_seconds,
        "outage_extra_seconds": dead_seconds - healthy_seconds,
        "never_answering_server_connections": probes,
        "rejected_value_exit_status": rejected_code,
        "rejected_value_error": [line for line in rejected.splitlines() if line.startswith("error:")],
        "stages_run_by_rejected_value": stages_run(rejected),
        "stages_run_after_revert": stages_run(reverted),
    }


def table(r):
    same = "identical" if len(set(r["init_pt_sha256"])) == 1 else "DIFFERENT"
    return "\n".join(
        [
            "| measure | value |",
            "|---|---:|",
            f"| sha256 of `models/init/init.pt`, two separate copies | {same} (`{r['init_pt_sha256'][0][:16]}…`) |",
            f"| stages `dvc repro` runs after a forced identical rerun of `train` | {len(r['stages_run_after_forced_train'])} |",
            f"| tiny lineage ({r['stages']} stages), healthy SQLite store | {r['healthy_store_seconds']:.1f} s |",
            f"| the same, against a server that never answers | {r['never_answering_server_seconds']:.1f} s "
            f"({r['outage_extra_seconds']:+.1f} s; {r['never_answering_server_connections']} connection) |",
            f"| stages run by `dvc repro` with `prune.rate: 1.5` | {r['stages_run_by_rejected_value']} "
            f"(exit {r['rejected_value_exit_status']}) |",
            f"| stages run after putting the value back | {len(r['stages_run_after_revert'])} |",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "mnist", help="torchvision root holding MNIST/raw/")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "lineage_trust.json")
    args = parser.parse_args(argv)
    data_root = mnist_root(args.data_root)
    base = Path(tempfile.mkdtemp(prefix="lottery-trust-"))
    try:
        (base / "healthy").mkdir()
        (base / "dead").mkdir()
        results = measure(base, data_root)
    finally:
        shutil.rmtree(base)
    save(args.output, results, table(results))


if __name__ == "__main__":
    main()
