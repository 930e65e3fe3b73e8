"""Wall time of the default experiment three ways, side by side in one run: the DVC pipeline, the
same job as one bare PyTorch script (bench/bare_lth.py), and open_lth.

The pipeline runs in a temporary copy of the project, so this checkout's outputs, dvc.lock and
MLflow store stay untouched: lottery/, stages/, params.yaml, dvc.yaml, .dvcignore and
pyproject.toml are copied into a fresh `git init` + `dvc init` repository (analytics off).
params.yaml keeps every value but the data source, which becomes `local` from this checkout's
already fetched MNIST (data/mnist, or `--data-root`), so no network is needed. MLflow logs into a
SQLite store inside the copy (MLFLOW_TRACKING_URI), and the stages import the copy's lottery
package. `dvc repro data` runs first, untimed (with `code` and `validate`, which it depends on, it
copies the MNIST files, and its first stage starts the copy's warm worker, lottery/warm.py, as
the first stage of any `dvc repro` would); then `dvc repro` of the rest, `init` to `report`, is
timed; then a second `dvc repro`, which must report that nothing changed. During the timed run LOTTERY_STAGE_TIMES names
a file to which each stage process appends one JSON line (stage, argv, startup_seconds,
total_seconds); the bench reports, per stage script, how many ran and the median of each time, or
"not recorded" when no stage wrote the file.

The bare script runs the same job (model, θ0, data split, batch order, Adam, schedule, pruning,
rewinding) as one process, with the copy's rounds, iterations, evaluation interval and seed, on the
copy's MNIST; its time includes starting Python and loading the data, as each stage's does. The
bench stops before running anything when params.yaml departs from the values the script
hard-codes (bare_lth.JOB). Per round, it shows the script's weights remaining and test accuracy
at early stop beside the pipeline's (metrics/summary.json); where they differ, it says so and
goes on.

open_lth runs with `--open-lth PATH`, a checkout of facebookresearch/open_lth, and is skipped (the
bench says why) without one. The checkout is copied, and the copy gets two fixes it needs on this
torch and numpy: its Model base class lists torch.nn.Module before abc.ABC (the other order makes
its DataParallel classes fail with an MRO error), and `np.product`, gone from numpy 2, becomes
`np.prod`. It runs `python open_lth.py lottery --default_hparams=mnist_lenet_300_100
--optimizer_name adam --lr 0.0012 --batch_size 60 --training_steps 7000it --levels 8` (lr, batch,
iterations and levels from params.yaml), timed whole, with HOME set to a scratch folder, because
open_lth reads its datasets from ~/open_lth_datasets and writes its runs to ~/open_lth_data: there
open_lth_datasets/mnist/MNIST/raw/ links to our MNIST files, which torchvision's MNIST reads as they
are, so nothing is downloaded. That is open_lth's own recipe for the model with our optimizer and
schedule, so its time compares but its accuracies do not exactly: it draws θ0, unseeded, from a
Kaiming normal, trains on all 60,000 training images (no validation hold-out, no early stop),
tests every 1,000 iterations, makes every image a PIL image and back, one at a time, for
training and testing alike, prunes 20% globally over the hidden layers and never the output
layer, and leaves the data order unseeded. The bench reports per
level the fraction of the hidden layers' weights remaining and the last test accuracy.

Reports the seconds of each, the ratios pipeline / bare (goal at most 1.5) and open_lth /
pipeline (goal at least 4), the no-op `dvc repro`, the per-stage start-up and the accuracies.
`--smoke` shrinks all three to 2 rounds of 100 iterations, evaluated every 50, to check the bench
itself; its numbers compare nothing, and it writes them only where `--output` says.

Writes bench/results/repro_time.json (atomically) and prints Markdown tables. `--keep` keeps the
scratch folder (its path is printed): the project copy (project/), the logs (data.log, repro.log,
noop.log, bare.log, open_lth.log), the stage times (stage_times.jsonl), the bare script's results
(bare.json), and open_lth's copy (open_lth/) and runs (home/open_lth_data/).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

# Beside this file (the script's folder is on sys.path): the job it hard-codes is checked against params.
import bare_lth

ROOT = Path(__file__).resolve().parents[1]
# Use this checkout's package, whichever checkout the editable install points at.
sys.path.insert(0, str(ROOT))

from lottery.io import read_json, write_json  # noqa: E402

COPIED = ("lottery", "stages", "params.yaml", "dvc.yaml", ".dvcignore", "pyproject.toml")
UP_TO_DATE = "Data and pipelines are up to date."
SMOKE = {"rounds": 2, "iterations": 100, "eval_every": 50}
PIPELINE_OVER_BARE_GOAL = 1.5  # at most
OPEN_LTH_OVER_PIPELINE_GOAL = 4.0  # at least
# open_lth's Model(abc.ABC, torch.nn.Module) cannot be combined with nn.DataParallel under torch 2.
MODEL_BASES = ("class Model(abc.ABC, torch.nn.Module):", "class Model(torch.nn.Module, abc.ABC):")


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
    write_params(workdir, params)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(command, cwd=workdir, env=environment(workdir), check=True, capture_output=True)
    return params


def write_params(workdir, params):
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def shrink(workdir, params):
    """The smoke test's sizes, in the copy's params.yaml (and in `params`)."""
    params["rounds"] = {str(round_): {"prev": round_ - 1} for round_ in range(1, SMOKE["rounds"] + 1)}
    params["train"]["iterations"] = SMOKE["iterations"]
    params["train"]["eval_every"] = SMOKE["eval_every"]
    write_params(workdir, params)


def departures(params):
    """{dotted key: value} of the params that differ from the job bench/bare_lth.py hard-codes."""

    def value(key):
        node = params
        for part in key.split("."):
            node = node[part]
        return node

    return {key: value(key) for key, expected in bare_lth.JOB.items() if value(key) != expected}


def environment(workdir):
    env = dict(os.environ)
    # `dvc` and the stages' `python` come from the interpreter's own environment (the venv).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The editable install points at the original checkout; stages must run the copy.
    env["PYTHONPATH"] = str(workdir)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    return env


def timed(command, cwd, env, log):
    """(seconds, output) of `command`, its output also written to `log`; RuntimeError if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    log.write_text(done.stdout)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command[:3])} failed ({done.returncode}) after {seconds:.0f} s:\n{tail}")
    return seconds, done.stdout


def with_load(job, *args):
    """(what `job(*args)` returns, the 1-minute load average before and after it). The pipeline alone
    kept it near 1.5 on two cores; clearly more means another process competed for the cores, and
    the times do not compare."""
    before = os.getloadavg()[0]
    return job(*args), [before, os.getloadavg()[0]]


def run_pipeline(project, scratch):
    """The pipeline's timings and metrics/summary.json, its data stage run first and untimed."""
    print(f"pipeline: dvc repro in {project} ...", flush=True)
    env = environment(project)
    timed(["dvc", "repro", "data"], project, env, scratch / "data.log")
    stage_times = scratch / "stage_times.jsonl"
    seconds, _ = timed(["dvc", "repro"], project, {**env, "LOTTERY_STAGE_TIMES": str(stage_times)}, scratch / "repro.log")
    noop, output = timed(["dvc", "repro"], project, env, scratch / "noop.log")
    if UP_TO_DATE not in output:
        raise RuntimeError(f"the second dvc repro did not report '{UP_TO_DATE}':\n{output[-2000:]}")
    return {
        "pipeline_seconds": seconds,
        "noop_repro_seconds": noop,
        "stage_startup": stage_startup(stage_times),
        "summary": read_json(project / "metrics" / "summary.json"),
    }


def stage_startup(path):
    """Per stage script: how many ran and the medians of their start-up and total seconds; or why not."""
    if not path.is_file():
        return "not recorded"
    by_stage = defaultdict(list)
    try:
        for line in filter(str.strip, path.read_text().splitlines()):
            record = json.loads(line)
            by_stage[record["stage"]].append((record["startup_seconds"], record["total_seconds"]))
    except (ValueError, KeyError, TypeError) as err:
        # A bad line is the recorder's bug; it should not throw away a run of minutes.
        return f"unreadable: {type(err).__name__}: {err}"
    return {
        stage: {
            "count": len(times),
            "median_startup_seconds": statistics.median(startup for startup, _ in times),
            "median_total_seconds": statistics.median(total for _, total in times),
        }
        for stage, times in sorted(by_stage.items())
    }


def run_bare(project, scratch, params):
    """bench/bare_lth.py's seconds and per-round results, on the copy's params and data."""
    print("bare script: bench/bare_lth.py ...", flush=True)
    output = scratch / "bare.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "bare_lth.py"),
        *("--rounds", str(len(params["rounds"]))),
        *("--iterations", str(params["train"]["iterations"])),
        *("--eval-every", str(params["train"]["eval_every"])),
        *("--seed", str(params["seed"])),
        *("--data-root", str(project / "data" / params["data"]["dataset"])),
        *("--output", str(output)),
    ]
    seconds, _ = timed(command, ROOT, dict(os.environ), scratch / "bare.log")
    return {"bare_seconds": seconds, "bare_rounds": read_json(output)}


def open_lth_command(params):
    train = params["train"]
    return [
        sys.executable,
        "open_lth.py",
        "lottery",
        "--default_hparams=mnist_lenet_300_100",
        *("--optimizer_name", train["optimizer"]),
        *("--lr", str(train["lr"])),
        *("--batch_size", str(train["batch_size"])),
        *("--training_steps", f"{train['iterations']}it"),
        *("--levels", str(len(params["rounds"]))),
    ]


def prepare_open_lth(checkout, scratch, data_root):
    """(a fixed copy of the open_lth checkout, a HOME whose open_lth_datasets holds our MNIST)."""
    copy = scratch / "open_lth"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    base = copy / "models" / "base.py"
    text = base.read_text()
    if MODEL_BASES[0] not in text and MODEL_BASES[1] not in text:
        raise RuntimeError(f"{base}: no `{MODEL_BASES[0]}` to fix; is {checkout} open_lth?")
    base.write_text(text.replace(*MODEL_BASES))
    for source in copy.rglob("*.py"):
        text = source.read_text()
        if "np.product(" in text:
            source.write_text(text.replace("np.product(", "np.prod("))
    home = scratch / "home"
    raw = home / "open_lth_datasets" / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    # File by file, so that anything torchvision might write lands in the scratch folder, not in our data.
    for source in (data_root / "MNIST" / "raw").iterdir():
        (raw / source.name).symlink_to(source)
    return copy, home


def run_open_lth(checkout, scratch, data_root, params):
    """open_lth's seconds, command and per-level results."""
    copy, home = prepare_open_lth(checkout, scratch, data_root)
    command = open_lth_command(params)
    print(f"open_lth: {' '.join(command[1:])} ...", flush=True)
    seconds, _ = timed(command, copy, {**os.environ, "HOME": str(home)}, scratch / "open_lth.log")
    return {"open_lth_seconds": seconds, "open_lth_command": command[1:], "open_lth_levels": open_lth_levels(home)}


def open_lth_levels(home):
    """Per level: the fraction of the hidden layers' weights remaining (open_lth's sparsity report;
    it never prunes the output layer) and the last test accuracy it logged."""
    (run,) = (home / "open_lth_data").glob("lottery_*/replicate_1")
    levels = []
    for level_dir in sorted(run.glob("level_*"), key=lambda path: int(path.name.removeprefix("level_"))):
        report = read_json(level_dir / "main" / "sparsity_report.json")
        levels.append(
            {
                "level": int(level_dir.name.removeprefix("level_")),
                "hidden_weights_remaining": report["unpruned"] / report["total"],
                "final_test_accuracy": last_logged(level_dir / "main" / "logger", "test_accuracy"),
            }
        )
    return levels


def last_logged(logger, metric):
    """The value of `metric` at the last iteration in an open_lth logger file (name,iteration,value lines)."""
    rows = [line.split(",") for line in logger.read_text().splitlines()]
    return max((int(iteration), float(value)) for name, iteration, value in rows if name == metric)[1]


def per_round(summary, bare_rounds):
    """Per round, the pipeline's and the bare script's weights remaining and test accuracy at early stop."""
    bare = {result["round"]: result for result in bare_rounds}
    rows = []
    for piped in summary["rounds"]:
        plain = bare.get(piped["round"], {})
        row = {
            "round": piped["round"],
            "pipeline_weights_remaining": piped["weights_remaining"],
            "bare_weights_remaining": plain.get("weights_remaining"),
            "pipeline_test_accuracy_at_early_stop": piped["ticket"]["test_accuracy_at_early_stop"]["mean"],
            "bare_test_accuracy_at_early_stop": plain.get("test_accuracy_at_early_stop"),
        }
        row["agree"] = same(row["pipeline_weights_remaining"], row["bare_weights_remaining"]) and same(
            row["pipeline_test_accuracy_at_early_stop"], row["bare_test_accuracy_at_early_stop"]
        )
        rows.append(row)
    return rows


def same(a, b):
    # Both divide the same integer counts, so a matching run agrees to the last bit; allow only float noise.
    return b is not None and abs(a - b) < 1e-9


def last_round(summary):
    """The fields earlier runs of this bench reported: dense and last round, from metrics/summary.json."""
    last = summary["rounds"][-1]
    ticket = {metric: stats["mean"] for metric, stats in last["ticket"].items()}
    return {
        "dense_test_accuracy_at_early_stop": summary["dense"]["test_accuracy_at_early_stop"]["mean"],
        "last_round": last["round"],
        "last_round_weights_remaining": last["weights_remaining"],
        "last_round_test_accuracy_at_early_stop": ticket["test_accuracy_at_early_stop"],
        "last_round_final_test_accuracy": ticket["final_test_accuracy"],
    }


def ratio(numerator, denominator):
    return None if numerator is None or denominator is None else numerator / denominator


def measure(scratch, data_root, open_lth, smoke):
    project = scratch / "project"
    project.mkdir()
    params = prepare(project, data_root)
    if smoke:
        shrink(project, params)
    different = departures(params)
    if different:
        raise RuntimeError(f"params.yaml is not the job bench/bare_lth.py runs: {different} (see bare_lth.JOB)")
    results = {
        "smoke": smoke,
        "rounds": len(params["rounds"]),
        "iterations_per_round": params["train"]["iterations"],
        "eval_every": params["train"]["eval_every"],
        "open_lth_seconds": None,
        "open_lth_skipped": None if open_lth else "no --open-lth checkout given",
        "load_average_1min": {},
    }
    pipeline, results["load_average_1min"]["pipeline"] = with_load(run_pipeline, project, scratch)
    summary = pipeline.pop("summary")
    bare, results["load_average_1min"]["bare"] = with_load(run_bare, project, scratch, params)
    results.update(pipeline)
    results.update(bare)
    results.update(last_round(summary))
    results["per_round"] = per_round(summary, bare["bare_rounds"])
    results["bare_agrees_with_pipeline"] = all(row["agree"] for row in results["per_round"])
    if open_lth:
        found, results["load_average_1min"]["open_lth"] = with_load(run_open_lth, open_lth, scratch, data_root, params)
        results.update(found)
    results["pipeline_over_bare"] = ratio(results["pipeline_seconds"], results["bare_seconds"])
    results["pipeline_over_bare_goal_at_most"] = PIPELINE_OVER_BARE_GOAL
    results["open_lth_over_pipeline"] = ratio(results["open_lth_seconds"], results["pipeline_seconds"])
    results["open_lth_over_pipeline_goal_at_least"] = OPEN_LTH_OVER_PIPELINE_GOAL
    return results


def table(r):
    return "\n\n".join([timings_table(r), startup_table(r["stage_startup"]), accuracy_table(r)])


def timings_table(r):
    size = f"{r['rounds']} rounds x {r['iterations_per_round']} it."
    rows = [
        "| measure | value |",
        "|---|---:|",
        f"| pipeline: `dvc repro` after the data stage ({size}) | {r['pipeline_seconds']:.1f} s |",
        f"| bare script, one process (bench/bare_lth.py) | {r['bare_seconds']:.1f} s |",
        f"| open_lth | {seconds_or(r['open_lth_seconds'], r['open_lth_skipped'])} |",
        f"| pipeline / bare (goal ≤ {PIPELINE_OVER_BARE_GOAL}) | {number_or(r['pipeline_over_bare'])} |",
        f"| open_lth / pipeline (goal ≥ {OPEN_LTH_OVER_PIPELINE_GOAL:g}) | {number_or(r['open_lth_over_pipeline'])} |",
        f"| no-op `dvc repro` | {r['noop_repro_seconds']:.2f} s |",
    ]
    if r["smoke"]:
        rows.append("| **smoke run** | sizes shrunk; nothing here compares |")
    return "\n".join(rows)


def seconds_or(seconds, why):
    return f"{seconds:.1f} s" if seconds is not None else f"skipped: {why}"


def number_or(value):
    return f"{value:.2f}" if value is not None else "–"


def startup_table(startup):
    if isinstance(startup, str):
        return f"Per-stage start-up: {startup}."
    rows = ["| stage | runs | median start-up | median total |", "|---|---:|---:|---:|"]
    for stage, times in startup.items():
        rows.append(
            f"| {stage} | {times['count']} | {times['median_startup_seconds']:.2f} s | {times['median_total_seconds']:.2f} s |"
        )
    return "\n".join(rows)


def accuracy_table(r):
    rows = [
        "| round | weights remaining, pipeline / bare | test accuracy at early stop, pipeline / bare | same |",
        "|---:|---:|---:|:---:|",
    ]
    for row in r["per_round"]:
        weights = f"{percent(row['pipeline_weights_remaining'], 1)} / {percent(row['bare_weights_remaining'], 1)}"
        accuracy = f"{percent(row['pipeline_test_accuracy_at_early_stop'])} / {percent(row['bare_test_accuracy_at_early_stop'])}"
        rows.append(f"| {row['round']} | {weights} | {accuracy} | {'yes' if row['agree'] else '**no**'} |")
    last = r["last_round"]
    rows.append(f"\nRound {last} final test accuracy (pipeline): {percent(r['last_round_final_test_accuracy'])}.")
    for level in r.get("open_lth_levels", [])[-1:]:
        rows.append(
            f"open_lth level {level['level']}: {percent(level['hidden_weights_remaining'], 1)} of the hidden layers' "
            f"weights, last test accuracy {percent(level['final_test_accuracy'])}."
        )
    return "\n".join(rows)


def percent(fraction, digits=2):
    return "–" if fraction is None else f"{100 * fraction:.{digits}f}%"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "mnist", help="torchvision root holding MNIST/raw/")
    parser.add_argument("--open-lth", type=Path, help="a checkout of facebookresearch/open_lth (left as it is)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench itself")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--output", type=Path, help="results file (default: bench/results/repro_time.json; none for --smoke)")
    args = parser.parse_args(argv)

    data_root = mnist_root(args.data_root)
    open_lth = open_lth_checkout(args.open_lth)
    output = args.output or (None if args.smoke else ROOT / "bench" / "results" / "repro_time.json")
    scratch = Path(tempfile.mkdtemp(prefix="lottery-repro-"))
    try:
        results = measure(scratch, data_root, open_lth, args.smoke)
    except (RuntimeError, subprocess.CalledProcessError) as err:
        sys.exit(f"error: {err}")
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch)
    if output:
        save(output, results, table(results))
    else:
        print(table(results))
        print("\n(smoke run: results not written; --output names a file for them)")


def mnist_root(path):
    """`path` resolved, if it is a torchvision root holding MNIST/raw/; else exit with one line."""
    root = path.resolve()
    if not (root / "MNIST" / "raw").is_dir():
        sys.exit(f"error: {root / 'MNIST' / 'raw'} does not exist; run `dvc repro data` first")
    return root


def open_lth_checkout(path):
    """`path` resolved, if it holds open_lth.py; None without a path (the comparison is skipped)."""
    if path is None:
        print("open_lth: skipped (no --open-lth checkout given)", flush=True)
        return None
    checkout = path.resolve()
    if not (checkout / "open_lth.py").is_file():
        sys.exit(f"error: --open-lth {checkout}: no open_lth.py there; pass a checkout of facebookresearch/open_lth")
    return checkout


def save(path, results, text):
    """Write the results (atomically) and print their table and where they went."""
    write_json(path, results)
    print(text)
    print(f"\n{path}")


if __name__ == "__main__":
    main()
