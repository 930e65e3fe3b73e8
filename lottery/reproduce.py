"""Re-running a recorded lineage: its git commit and exact params in a fresh worktree with
`dvc repro`, then what the new run and the recorded one do not share (lottery.lineage_catalog)."""

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lottery import deps, hparams, masks, paths, records, terminal
from lottery.io import load_torch, read_json
from lottery.lineage_catalog import ROUND_METRICS, LineageError, current
from lottery.provenance import CODE_TAG, COMMIT_TAG, DIRTY_TAG


def reproduce(catalog, lineage, project_root, keep=False, progress=terminal.no_bar):
    """Re-run a lineage from its git commit and exact params in a fresh worktree with `dvc repro`,
    then compare every round's metrics and mask hash with the recorded ones, and name what differs
    between the recorded run and this one: the code, and each round's training environment.
    `progress(label, total)`: a terminal.Bar stepped as each stage of `dvc repro` starts."""
    commit = lineage.parent.data.tags.get(COMMIT_TAG)
    if not commit:
        raise LineageError(f"{lineage.name}: its runs recorded no git commit, so its code cannot be restored")
    workdir = Path(tempfile.mkdtemp(prefix="lottery-reproduce-"))
    worktree = workdir / "project"
    _run(["git", "worktree", "add", "--detach", str(worktree), commit], project_root)
    try:
        params = catalog.client.download_artifacts(lineage.parent.info.run_id, records.PARAMS_ARTIFACT, str(workdir))
        shutil.copyfile(params, worktree / "params.yaml")
        hp = hparams.load(worktree / "params.yaml")
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",  # a store of its own: the original stays as it was
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(worktree),  # the lineage's own code, not this checkout's
        }
        _repro(worktree, env, progress)
        return compare(lineage, worktree, hp) | {"workdir": str(workdir) if keep else None, "commit": commit}
    finally:
        if not keep:
            _run(["git", "worktree", "remove", "--force", str(worktree)], project_root)
            shutil.rmtree(workdir, ignore_errors=True)


def compare(lineage, root, hp):
    """Recorded vs re-computed: each round's metrics and mask hash; and `differences`, what else
    differs between the two runs (code, torch, device, threads, processes, Python) to explain a mismatch."""
    checks = []
    for round_ in range(hp.rounds + 1):
        recorded = lineage.branches.get((round_, None))
        fresh = read_json(root / paths.round_metrics(round_))
        for key in ROUND_METRICS:
            expected = current(recorded, key) if recorded else None
            reproduced = fresh.get(key)
            if expected is None and reproduced is None:
                continue  # a metric this lineage does not measure
            match = expected is not None and reproduced is not None and abs(expected - reproduced) <= 1e-9
            checks.append({"round": round_, "what": key, "recorded": expected, "reproduced": reproduced, "match": match})
        model_mask = load_torch(root / paths.mask(round_))
        expected = recorded.data.tags.get(records.MASK_DIGEST_TAG) if recorded else None
        digest = masks.digest(model_mask)
        checks.append({"round": round_, "what": "mask_sha256", "recorded": expected, "reproduced": digest,
                       "match": expected == digest})
    return {"match": all(c["match"] for c in checks), "checks": checks, "differences": differences(lineage, root, hp)}


def differences(lineage, root, hp):
    """What the recorded lineage and the run in `root` did not share: the code (its digest, and
    whether the recorded run used uncommitted code) and, per round, the training environment."""
    found = []
    tags = lineage.parent.data.tags
    recorded_code, code = tags.get(CODE_TAG), deps.code_digest(Path(root))
    if recorded_code != code:
        found.append({"round": None, "what": "code", "recorded": recorded_code, "reproduced": code})
    if tags.get(DIRTY_TAG) == "true":
        commit = tags.get(COMMIT_TAG, "")[:10]
        found.append({"round": None, "what": "uncommitted code", "recorded": f"on top of {commit}", "reproduced": "none"})
    for round_ in range(hp.rounds + 1):
        run = lineage.branches.get((round_, None))
        recorded = {
            key[len(records.ENVIRONMENT_TAG) :]: value
            for key, value in (run.data.tags.items() if run else [])
            if key.startswith(records.ENVIRONMENT_TAG)
        }
        log = read_json(root / paths.training_log(round_))
        reproduced = {key: str(value) for key, value in log.get("environment", {}).items()}
        for key in sorted(set(recorded) | set(reproduced)):
            if recorded.get(key) != reproduced.get(key):
                found.append({"round": round_, "what": key, "recorded": recorded.get(key), "reproduced": reproduced.get(key)})
    return found


# How `dvc repro` says that it starts a stage, or skips one (unchanged, or restored from its run cache).
STAGE_LINE = re.compile(r"^(?:Running stage|Stage) '([^']+)'")


def _repro(worktree, env, progress):
    """`dvc repro` in `worktree`, a step of the progress bar per stage; its last lines in the error
    if it fails."""
    stages = _run(["dvc", "stage", "list", "--name-only"], worktree, env=env).split()
    command = ["dvc", "repro"]
    last = collections.deque(maxlen=3)
    with progress("dvc repro", len(stages)) as bar, subprocess.Popen(
        command, cwd=worktree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            if line.strip():
                last.append(line.strip())
            started = STAGE_LINE.match(line)
            if started:
                bar.step(started.group(1))
    if process.returncode != 0:
        raise LineageError(f"{' '.join(command)} failed in {worktree}: {' | '.join(last)}")


def _run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        raise LineageError(f"{' '.join(command)} failed in {cwd}: {' | '.join(detail)}")
    return result.stdout
