"""The default experiment's lineage in one process (lottery.pipeline.run_lineage: every stage, in
the order `dvc repro` runs them, without DVC), in a folder of its own.

    python tools/device/run_lineage.py FOLDER [--smoke]

FOLDER (made; it must not exist yet) gets `data` linked to this checkout's data/ (the `data`
stage's output), an MLflow store of its own (sqlite:///FOLDER/mlflow.db), and the lineage's
models/, metrics/ and plots/. The params are this checkout's params.yaml; `--smoke` shrinks them
to bench/repro_time.py's smoke sizes (2 rounds of 100 iterations, evaluated every 50) to check
this script on a CPU. Prints the seconds the lineage took and its summary's last round.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed

from lottery import hparams, pipeline, validation, yaml12  # noqa: E402

SMOKE = {"rounds": 2, "iterations": 100, "eval_every": 50}


def params(smoke):
    raw = yaml12.load((ROOT / "params.yaml").read_text())
    if smoke:
        raw["rounds"] = hparams.rounds_section(SMOKE["rounds"])
        raw["train"]["iterations"] = SMOKE["iterations"]
        raw["train"]["eval_every"] = SMOKE["eval_every"]
    return validation.from_dict(raw)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check this script")
    args = parser.parse_args(argv)
    hp = params(args.smoke)
    folder = args.folder.resolve()
    folder.mkdir(parents=True)
    (folder / "data").symlink_to(ROOT / "data")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.chdir(folder)  # the pipeline's paths are relative to the project root
    start = time.perf_counter()
    pipeline.run_lineage(hp)
    seconds = time.perf_counter() - start
    last = json.loads(Path("metrics/summary.json").read_text())["rounds"][-1]
    accuracy = last["ticket"]["test_accuracy_at_early_stop"]["mean"]
    print(
        f"lineage in {folder}: {hp.rounds} rounds in {seconds:.1f} s; round {last['round']}: "
        f"{100 * last['weights_remaining']:.1f}% of the weights, test accuracy at early stop {100 * accuracy:.2f}%"
    )


if __name__ == "__main__":
    main()
