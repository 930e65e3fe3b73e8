"""One point of a sweep, run on the node that took it: `python -m lottery.sweep.workspace SPEC`.

SPEC (JSON) names the point, its params overrides, the user's commit, the git remote and the DVC
remote. The point runs in a workspace of its own: a clone of the git remote at that commit, with
the overrides written into params.yaml and a DVC cache shared by the node's workspaces. Its
pipeline runs stage by stage through DVC, and each finished stage's outputs and run-cache entry go
to the DVC remote at once; the training loops' in-round saves (lottery.resume) go there too while
they run. So a point that starts again on another node, after its first node died, pulls what
reached the remote: DVC restores each finished stage from its run cache instead of running it,
and the stage that was under way resumes from its last save. When every stage has run,
`lottery sync` completes the lineage in MLflow from the outputs (a stage DVC restored instead of
running logged nothing, and a run elsewhere may have logged to another store), and the
workspace becomes a DVC experiment of that name (`dvc exp save`), pushed with `dvc exp push` to
the git remote (its outputs to the DVC remote): the experiment's ref on the git remote is what
marks the point finished.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lottery import paths

# Where the in-round saves of a point wait on the DVC remote, beside DVC's own `files/`.
SAVES_ON_REMOTE = "lottery-sweep-saves"
# A stopped stage marks its MLflow run FAILED before it exits; whatever is left then is killed.
STOP_GRACE_SECONDS = 5


def prepare(spec):
    """The checkout the task made, readied: the author the experiment's commit names, the node's
    shared DVC cache, the sweep's DVC remote as the default, and the overrides in params.yaml."""
    workspace = Path(spec["workspace"])
    for command in (
        ["git", "config", "user.name", spec["author"]["name"]],
        ["git", "config", "user.email", spec["author"]["email"]],
        [sys.executable, "-m", "dvc", "cache", "dir", "--local", spec["cache"]],
        [sys.executable, "-m", "dvc", "remote", "default", "--local", spec["dvc_remote"]],
    ):
        subprocess.run(command, cwd=workspace, check=True, capture_output=True)
    write_overrides(workspace / "params.yaml", spec["overrides"])
    return workspace


def stop_group(number, frame):
    """SIGTERM (the task's worker died): stop every stage this runner started, then itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGTERM)
    time.sleep(STOP_GRACE_SECONDS)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def write_overrides(path, overrides):
    """Set the overrides in a params file, keeping its comments and the rest as written."""
    from ruamel.yaml import YAML  # DVC's own YAML library: installed wherever DVC is

    from lottery.sweep import grid

    yaml = YAML()
    document = grid.applied(yaml.load(path.read_text()), overrides)  # a ruamel map is a dict, comments and all
    with open(path, "w") as out:
        yaml.dump(document, out)


class RemoteSaves:
    """The point's in-round saves, mirrored to the default DVC remote every `seconds` (the loops'
    own interval) while stages run: files the loops removed are removed there too."""

    def __init__(self, repo, point, seconds):
        target = repo.cloud.get_remote()
        self.fs, self.folder = target.fs, target.fs.join(target.path, SAVES_ON_REMOTE, point)
        self.local, self.seconds = paths.in_round_saves(), seconds
        self._stop, self._thread = threading.Event(), None

    def download(self):
        """The saves that an earlier start of this point left on the remote."""
        if self.fs.exists(self.folder):
            self.local.mkdir(parents=True, exist_ok=True)
            for found in self.fs.ls(self.folder, detail=False):
                self.fs.get_file(found, str(self.local / self.fs.name(found)))

    def upload(self):
        here = {save.name: save for save in self.local.glob("*.pt")} if self.local.is_dir() else {}
        there = {self.fs.name(found) for found in self.fs.ls(self.folder, detail=False)} if self.fs.exists(self.folder) else set()
        if here:
            self.fs.makedirs(self.folder, exist_ok=True)
        for name, save in here.items():
            with contextlib.suppress(FileNotFoundError):  # its loop ended and removed it meanwhile
                self.fs.put_file(str(save), self.fs.join(self.folder, name))
        for name in there - set(here):
            self.fs.rm(self.fs.join(self.folder, name))

    def __enter__(self):
        self._thread = threading.Thread(target=self._mirror, daemon=True)
        self._thread.start()
        return self

    def _mirror(self):
        while self.seconds > 0 and not self._stop.wait(self.seconds):
            self.upload()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def remove(self):
        if self.fs.exists(self.folder):
            self.fs.rm(self.folder, recursive=True)


def reproduce(repo):
    """`dvc repro --pull`, each stage's outputs and run-cache entry pushed to the default remote as
    soon as it has run.

    DVC keeps no run-cache entry for a stage with an output that git keeps (`cache: false`) unless
    DVC knows it as a metric or plot, and the stages' per-round metrics are declared as plain
    outputs (lottery's dvc.yaml says why). The entry is saved here all the same, with those outputs
    committed to the cache, so that a point started again restores such a stage too."""
    from dvc.repo.reproduce import _reproduce_stage
    from dvc.stage.cache import _can_hash

    def run_then_push(stage, **kwargs):
        ran = _reproduce_stage(stage, **kwargs)
        if ran and _can_hash(stage):
            repo.stage_cache.save(stage)
            repo.push(targets=[stage.addressing], run_cache=True)
        return ran

    repo.reproduce(pull=True, repro_fn=run_then_push)


def outputs_for_git(repo):
    """The outputs DVC leaves to git (`cache: false`: metrics, plots), which the experiment's commit
    must hold as `dvc exp run`'s does."""
    return sorted({out.def_path for stage in repo.index.stages for out in stage.outs if not out.use_cache and out.exists})


def run(spec):
    from dvc.repo import Repo

    signal.signal(signal.SIGTERM, stop_group)
    workspace = prepare(spec)
    os.chdir(workspace)
    os.environ.update(DVC_ROOT=str(workspace), DVC_EXP_NAME=spec["name"])
    with Repo(str(workspace)) as repo:
        from lottery import resume  # torch: the stages' own reading of LOTTERY_SAVE_SECONDS

        saves = RemoteSaves(repo, spec["name"], resume.interval_seconds())
        saves.download()
        with saves:
            reproduce(repo)
        # Stages that DVC restored from the run cache logged nothing: a run elsewhere of the same
        # stage may have logged to another MLflow store. `lottery sync` publishes what is missing.
        subprocess.run([sys.executable, "-m", "lottery", "sync"], check=True)
        repo.experiments.save(name=spec["name"], force=True, include_untracked=outputs_for_git(repo))
    subprocess.run([sys.executable, "-m", "dvc", "exp", "push", "origin", spec["name"]], check=True, capture_output=True)
    saves.remove()


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
