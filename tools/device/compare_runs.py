"""Whether two runs of the pipeline computed the same thing: every checkpoint's tensors and every
metrics file, side by side.

    python tools/device/compare_runs.py FIRST SECOND [--expect-device cuda]

FIRST and SECOND are folders holding a run's `models/` and `metrics/` (a project root, or a copy
of those two folders). Every `.pt` file under `models/` is loaded (weights_only, onto the CPU)
and must hold the same tensors, bit for bit (dtype, shape and the stored bytes of every value), and
the same other values. Every `.json` file under `metrics/` must hold the same values, except the
keys that measure wall time (compression reports' latencies and the speedups measured from them),
which no seed fixes. Both runs must have the same files. Where both folders hold a dvc.lock, the
outputs whose md5 (bytes) differ are listed too, for information: the measured latencies make
those of the compression reports differ.

Prints one line per file, and the devices each run's training logs name (models/**/training.json);
with --expect-device, every one of them must begin with that name (a GPU machine's `train.device:
auto` must have trained every branch there). Exits 0 when everything matches, 1 when anything
differs or a device is not the expected one (each named), 2 when a folder holds no run.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

# Keys of a metrics file that hold measured wall time (lottery.compression's report): they differ
# between any two runs, so they are left out of the comparison and counted.
TIMED_PREFIXES = ("latency_ms_", "measured_speedup_")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--expect-device", help="the device every training log must name, e.g. cuda")
    args = parser.parse_args(argv)
    first, second = args.first, args.second
    for run in (first, second):
        if not any(run.glob("models/**/*.pt")) or not any(run.glob("metrics/**/*.json")):
            print(f"error: {run}: no models/**/*.pt and metrics/**/*.json here; not a run of the pipeline", file=sys.stderr)
            return 2
    differences = 0
    for kind, pattern, compare in (("checkpoint", "models/**/*.pt", compare_checkpoints), ("metrics", "metrics/**/*.json", compare_metrics)):
        names = files(first, pattern) | files(second, pattern)
        for name in sorted(names):
            if not (first / name).is_file() or not (second / name).is_file():
                missing = first if not (first / name).is_file() else second
                print(f"DIFFERENT {name}: missing from {missing}")
                differences += 1
                continue
            found, skipped = compare(first / name, second / name)
            note = f" ({skipped} timed values left out)" if skipped else ""
            if found:
                differences += 1
                print(f"DIFFERENT {name}: {'; '.join(found[:5])}{' ...' if len(found) > 5 else ''}")
            else:
                print(f"same      {name}{note}")
        print(f"{len(names)} {kind} files compared")
    for run in (first, second):
        devices = training_devices(run)
        print(f"devices in {run}'s training logs: {', '.join(devices) or 'none found'}")
        if args.expect_device and (not devices or not all(device.startswith(args.expect_device) for device in devices)):
            print(f"DIFFERENT devices: {run}'s training logs do not all name {args.expect_device}")
            differences += 1
    if (first / "dvc.lock").is_file() and (second / "dvc.lock").is_file():
        other_bytes = lock_differences(first / "dvc.lock", second / "dvc.lock")
        print(f"dvc.lock: outputs whose md5 differs: {', '.join(other_bytes) or 'none'}")
    print("RESULT: identical" if not differences else f"RESULT: {differences} differences")
    return 1 if differences else 0


def files(root, pattern):
    return {str(path.relative_to(root)) for path in root.glob(pattern) if path.is_file()}


def compare_checkpoints(a, b):
    found = []
    walk(torch.load(a, weights_only=True, map_location="cpu"), torch.load(b, weights_only=True, map_location="cpu"), "", found)
    return found, 0


def compare_metrics(a, b):
    found, skipped = [], []
    walk(json.loads(a.read_text()), json.loads(b.read_text()), "", found, skipped)
    return found, len(skipped)


def walk(a, b, where, found, skipped=None):
    """Append to `found` each place where `a` and `b` differ; `skipped` collects the timed keys."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            here = f"{where}.{key}" if where else str(key)
            if skipped is not None and str(key).startswith(TIMED_PREFIXES):
                skipped.append(here)
            elif key not in a or key not in b:
                found.append(f"{here}: only in {'the first' if key in a else 'the second'}")
            else:
                walk(a[key], b[key], here, found, skipped)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and type(a) is type(b):
        if len(a) != len(b):
            found.append(f"{where}: {len(a)} items against {len(b)}")
            return
        for index, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{where}[{index}]", found, skipped)
    elif torch.is_tensor(a) and torch.is_tensor(b):
        if a.dtype != b.dtype or a.shape != b.shape:
            found.append(f"{where}: {a.dtype} {tuple(a.shape)} against {b.dtype} {tuple(b.shape)}")
        else:
            # Bytes, not values: -0.0 against 0.0, or two NaNs, are compared as stored.
            unequal = int((element_bytes(a) != element_bytes(b)).any(dim=1).sum())
            if unequal:
                found.append(f"{where}: {unequal} of {a.numel()} values differ")
    elif type(a) is not type(b) or not (a == b or (a != a and b != b)):  # NaN is the one value unequal to itself
        found.append(f"{where}: {a!r} against {b!r}")


def element_bytes(tensor):
    """The tensor's values as stored: one row of bytes per element."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).reshape(flat.numel(), flat.element_size())


def lock_differences(a, b):
    """The output paths whose md5 differs between two dvc.lock files (or that only one has)."""

    def digests(path):
        stages = yaml.safe_load(path.read_text())["stages"]
        return {out["path"]: out.get("md5") for stage in stages.values() for out in stage.get("outs", [])}

    first, second = digests(a), digests(b)
    return sorted(path for path in set(first) | set(second) if first.get(path) != second.get(path))


def training_devices(run):
    """The device every training log of the run names (models/**/training.json, environment.device)."""
    devices = set()
    for log in run.glob("models/**/training.json"):
        device = json.loads(log.read_text()).get("environment", {}).get("device")
        if device:
            devices.add(device)
    return sorted(devices)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
