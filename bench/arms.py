"""Arms kept as they finish, for the benches that settle the seeds' open claims (factorized.py,
early_bird_fmnist.py, rethinking_lr.py): a run cut short (a GPU lease running out, a timeout's
SIGTERM, Ctrl-C) keeps every arm it finished, and the next run does only the rest.

An arm is one unit of a comparison (SI+FD at 5% for seed 1, say), named by its coordinates. Its
entry in the bench's arms file holds the settings it ran with, its result, how long it took and
where. An arm the file holds with the same settings is skipped; one whose settings differ runs
again and replaces its entry; `--fresh` starts the file over. Each seed runs in a process of its
own beside the others, and they all write the one file: a write reads the file, sets one arm and
replaces the file atomically (lottery.io), under an exclusive lock, so no process loses another's
arm and a reader never sees half a file.

Every run starts in an empty work folder (a fresh GPU machine has nothing else), so a pending arm
first redoes the finished arms it builds on (a dense run, earlier IMP rounds) and records them
again; the plan counts them.
"""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# torch (lottery.compression, devices) is imported where it is used: the bookkeeping here runs without it.
from lottery.io import read_json, write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"

# What the GPU estimates assume. No GPU has run these benches yet: the minutes they give are
# estimates, not measurements.
ASSUMED_TFLOPS = 10.0  # sustained float32 (TF32 off) on small convolutions; an H200's FP32 peak is about 67
# The floor of one training step: torch.profiler counts about 400 operations in a masked SGD step of
# VGG-11-BN (width 0.5, batch 128) on the CPU, and a GPU spends about 6 µs launching each.
ASSUMED_STEP_MS = 2.5


def arm_key(coordinates):
    return "/".join(f"{name}={value}" for name, value in coordinates.items())


def _normal(tree):
    """`tree` as it reads back from JSON (tuples become lists), so settings compare as stored."""
    return json.loads(json.dumps(tree, sort_keys=True))


@dataclass(frozen=True)
class Arm:
    coordinates: dict  # what it is, e.g. {"setup": "vgg", "seed": 0, "method": "SI+FD", "ratio": 0.05}
    settings: dict  # what it runs with (JSON-able): an entry with other settings is run again
    run: Callable  # trains it in this process's work folder, after `needs`; returns its result (JSON-able)
    minutes: float  # estimated GPU minutes of its own trainings (training_minutes)
    needs: tuple = field(default=())  # keys of the arms whose work in the work folder it starts from

    @property
    def key(self):
        return arm_key(self.coordinates)


class ArmsFile:
    """One bench's arms: {"arms": {key: entry}} in one JSON file."""

    def __init__(self, path):
        self.path = Path(path)

    def entries(self):
        return read_json(self.path)["arms"] if self.path.exists() else {}

    def finished(self, arm, entries=None):
        """The arm's entry if the file holds it with the same settings, else None."""
        entry = (self.entries() if entries is None else entries).get(arm.key)
        return entry if entry is not None and entry["settings"] == _normal(arm.settings) else None

    def finished_entries(self, arms):
        """{key: entry} of the arms the file holds with their settings (entries with other settings
        are stale: they describe some other run)."""
        entries = self.entries()
        return {arm.key: entries[arm.key] for arm in arms if self.finished(arm, entries)}

    def record(self, arm, result, seconds, device):
        entry = {
            "coordinates": arm.coordinates,
            "settings": arm.settings,
            "result": result,
            "seconds": seconds,
            "device": device,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with self._locked():
            entries = self.entries()
            entries[arm.key] = _normal(entry)
            write_json(self.path, {"arms": entries})

    def start_over(self):
        with self._locked():
            write_json(self.path, {"arms": {}})

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on the file's folder: the seed processes' read-modify-writes take turns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # closing releases the lock


def training_device():
    """Where the benches train (train.device auto), as their entries name it: `cpu`, `cuda:0 (NVIDIA H200)`."""
    from lottery import devices, provenance

    return provenance.device_name(devices.device_for("auto"))


def run_arms(arms_file, arms, device, max_arms=None, label=""):
    """Run, in order, each arm the file does not hold with its settings, each after the arms it
    needs (redone here when an earlier run did them elsewhere); record each, with `device`, and
    print its time as it finishes. Stop after `max_arms` of the pending arms (None: no limit).
    Returns the keys run."""
    by_key = {arm.key: arm for arm in arms}
    done_here = []

    def work(arm):
        for needed in arm.needs:
            if needed not in done_here:
                work(by_key[needed])
        started = time.perf_counter()
        result = arm.run()
        seconds = time.perf_counter() - started
        arms_file.record(arm, result, seconds, device)
        done_here.append(arm.key)
        print(f"{label}arm {arm.key}: {seconds:.1f} s", flush=True)

    pending = [arm for arm in arms if not arms_file.finished(arm)]
    for count, arm in enumerate(pending):
        if count == max_arms:
            print(f"{label}stopping after {max_arms} arm(s): {len(pending) - count} still to do", flush=True)
            break
        if arm.key not in done_here:
            work(arm)
    return done_here


def begin(args, bench, all_arms):
    """The start every claim bench's main shares, once its options are parsed and the preset
    applied. A seed process (--seed) runs its seed's arms, one thread; --plan prints the plan. Both
    return None: this process is done. Else (the parent of a run) --fresh starts the arms file
    over, the work folder is made afresh (structured_fmnist.fresh_workdir) and the plan printed;
    returns (results file stem, ArmsFile, the work folder's params.base.yaml, every seed's arms).
    `all_arms(args, params_yaml)`: the bench's arms of every seed in args.seeds."""
    stem = results_stem(bench, args.preset)
    arms_file = ArmsFile(args.out / f"{stem}_arms.json")
    if args.seed is not None:
        import torch

        torch.set_num_threads(1)
        args.seeds = [args.seed]
        arms = all_arms(args, args.workdir / "params.base.yaml")
        run_arms(arms_file, arms, training_device(), args.max_arms, f"[seed {args.seed}] ")
        return None
    if args.plan:
        print("\n".join(plan(arms_file, all_arms(args, ROOT / "params.yaml"))))
        return None
    from structured_fmnist import fresh_workdir

    if args.fresh:
        arms_file.start_over()
    base = fresh_workdir(args.workdir)
    arms = all_arms(args, base)
    print("\n".join(plan(arms_file, arms)), flush=True)
    return stem, arms_file, base, arms


def plan(arms_file, arms):
    """Lines: each arm, done (its recorded time and device) or to do (its estimated GPU minutes),
    then what a run would train: the arms to do and the finished arms they need redone."""
    entries = arms_file.entries()
    by_key = {arm.key: arm for arm in arms}
    to_train = set()

    def add(key):
        if key not in to_train:
            to_train.add(key)
            for needed in by_key[key].needs:
                add(needed)

    lines = []
    for arm in arms:
        entry = arms_file.finished(arm, entries)
        if entry:
            lines.append(f"  done   {arm.key}: {entry['seconds'] / 60:.1f} min on {entry['device']}")
        else:
            add(arm.key)
            lines.append(f"  to do  {arm.key}: ~{arm.minutes:.1f} GPU min (estimate)")
    redone = [key for key in to_train if arms_file.finished(by_key[key], entries)]
    total = sum(by_key[key].minutes for key in to_train)
    lines.append(
        f"{len(arms) - len(to_train) + len(redone)} of {len(arms)} arms done; a run trains {len(to_train)} arm(s)"
        f" ({len(redone)} done before, redone as prerequisites): ~{total:.0f} GPU minutes in all, an estimate at "
        f"{ASSUMED_TFLOPS:g} TFLOP/s and at least {ASSUMED_STEP_MS:g} ms per step, seeds one after another"
    )
    return lines


def training_minutes(forward, batch_size, iterations, evaluated_examples):
    """Estimated GPU minutes of training a model whose forward pass costs `forward` FLOPs an example
    (lottery.compression.flops) for `iterations` steps at `batch_size` (forward and backward: 3×
    the forward FLOPs, and never under ASSUMED_STEP_MS a step), and of evaluating
    `evaluated_examples` examples."""
    step = max(ASSUMED_STEP_MS / 1000, 3 * forward * batch_size / (ASSUMED_TFLOPS * 1e12))
    return (iterations * step + evaluated_examples * forward / (ASSUMED_TFLOPS * 1e12)) / 60


def evaluated_examples(train_hp, validation_size, test_size):
    """Examples one training evaluates, at most: validation and test set at every evaluation and at the end."""
    return (train_hp.iterations // train_hp.eval_every + 1) * (validation_size + test_size)


def add_arm_options(parser, presets):
    """--preset (the first of `presets` by default), --fresh, --max-arms, --plan, --out."""
    parser.add_argument("--preset", choices=list(presets), default=next(iter(presets)), help="settings (see above)")
    parser.add_argument("--fresh", action="store_true", help="start the arms file over instead of skipping the arms it holds")
    parser.add_argument("--max-arms", type=int, help="run at most this many of the arms still to do, per seed, then stop")
    parser.add_argument("--plan", action="store_true", help="print the arms, done or to do, with GPU estimates, and exit")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the arms file and the results")


def apply_preset(args, presets):
    """Each option left unset (None) takes the preset's value, and so does each setting the preset
    has that no option sets."""
    for name, value in presets[args.preset].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def results_stem(bench, preset, default_preset="cpu"):
    """bench/results file stem: the bench's own for the default preset (the recorded CPU runs),
    `<bench>_<preset>` for another, so each keeps its own results."""
    return bench if preset == default_preset else f"{bench}_{preset}"


def report_stem(stem, finished, arms):
    """The stem of a run's report files: `stem` once every arm is finished, else `<stem>_partial`,
    so a run cut short reports what it has without replacing a complete report (the recorded one)."""
    return stem if len(finished) == len(arms) else f"{stem}_partial"


def child_arguments(args, *names):
    """The command-line options `names` (attribute names) with `args`' values, for a seed process."""
    found = []
    for name in names:
        value = getattr(args, name)
        if value is None or value is False:
            continue
        option = "--" + name.replace("_", "-")
        if value is True:
            found.append(option)
        elif isinstance(value, list | tuple):
            found += [option, *map(str, value)]
        else:
            found += [option, str(value)]
    return found


def run_seed_processes(script, seeds, arguments):
    """One process per seed (`script --seed s ...`), side by side. True when all finish; False when
    SIGTERM or SIGINT stopped the run: the seed processes are stopped too, and what they recorded
    stays. Exits if a seed fails."""
    workers = [subprocess.Popen([sys.executable, str(script), "--seed", str(seed), *arguments]) for seed in seeds]
    stopped = []

    def stop(signum, _frame):
        stopped.append(signal.Signals(signum).name)
        for worker in workers:
            worker.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        print(f"stopped by {stopped[0]}: every arm finished so far is kept; the same command does the rest")
        return False
    if any(codes):
        sys.exit("error: a seed failed (see its output above)")
    return True


def verdict(holds):
    return "holds" if holds else "does not hold"
