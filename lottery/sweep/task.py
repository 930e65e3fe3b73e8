"""The Ray task that runs one point of a sweep on the node that takes it, and the actor that
counts the points under way.

Standard library and Ray only: the sweep registers this module with Ray's serializer by value, so
Ray ships its code with each task and a node needs the project's Python environment (torch, DVC,
MLflow, Ray), not a checkout of the project. The task clones the user's commit into a workspace of
its own and runs that commit's `lottery.sweep.workspace` there, in a session of its own, with:
- the GPUs Ray gave the task and only those (`CUDA_VISIBLE_DEVICES`, empty for none);
- as many torch threads as CPUs Ray gave it (`OMP_NUM_THREADS`);
- the driver's `MLFLOW_*` and `LOTTERY_*` variables (a node's own environment is `ray start`'s).
The runner dies with the task's worker (`PR_SET_PDEATHSIG`), and takes its stages with it, so a
node that loses its raylet leaves no stage writing to MLflow while Ray runs the point elsewhere.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import ray

PR_SET_PDEATHSIG = 1


@ray.remote(num_cpus=0)
class Progress:
    """Which points have started and which have ended, as the tasks report them."""

    def __init__(self):
        self.started, self.ended = set(), set()

    def start(self, name):
        self.started.add(name)

    def end(self, name):
        self.ended.add(name)

    def running(self):
        return len(self.started - self.ended)


def experiment_environment(base, gpu_ids, cpus, passed_on, python=sys.executable):
    """The environment of one point's runner: `base` (the node's) with the driver's variables,
    the task's GPUs alone, a torch thread per CPU, and this interpreter's folder first on PATH
    (DVC starts the stages as `python -m stages.<name>`)."""
    env = {**base, **passed_on}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpu_ids)
    env["OMP_NUM_THREADS"] = str(max(1, int(cpus)))
    env["PATH"] = os.pathsep.join([os.path.dirname(python), env.get("PATH", "")])
    return env


def clone(git_remote, commit, workspace):
    """`workspace`: a checkout of `commit`, fetched from `git_remote` (the driver has pushed it there)."""
    def git(*args, cwd=None):
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    git("clone", "-q", "--no-checkout", git_remote, str(workspace))
    git("fetch", "-q", "origin", commit, cwd=workspace)
    git("checkout", "-q", "--detach", commit, cwd=workspace)


def _dies_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def last_error(log):
    """The line that says why a point failed: a stage's `error: ...` line, else the last line."""
    lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "ERROR:"))]
    return (errors or lines or ["the point's runner failed without a word"])[-1]


@ray.remote
def run_point(spec, progress):
    """Run one point; None when its experiment reached the git remote, else the line that says why
    not. The workspace is removed afterwards (unless `keep`), the log too if the point succeeded."""
    progress.start.remote(spec["name"])
    base = Path(spec["workdir"] or Path(tempfile.gettempdir()) / f"lottery-sweep-{os.getuid()}")
    workspace = base / f"{spec['name']}-{uuid.uuid4().hex[:8]}"
    log = workspace.with_suffix(".log")
    base.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "workspace": str(workspace), "cache": str(base / "cache")}
    env = experiment_environment(os.environ, ray.get_gpu_ids(), spec["cpus"], spec["environment"])
    try:
        clone(spec["git_remote"], spec["commit"], workspace)
        with open(log, "w") as out:
            runner = [sys.executable, "-m", "lottery.sweep.workspace", json.dumps(spec)]
            status = subprocess.run(runner, cwd=workspace, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_dies_with_parent).returncode
        error = None if status == 0 else f"{last_error(log)} (log: {socket.gethostname()}:{log})"
    except subprocess.CalledProcessError as err:
        error = f"git {err.cmd[1]} failed: {(err.stderr.decode(errors='replace').strip().splitlines() or [''])[-1]}"
    finally:
        progress.end.remote(spec["name"])
    if not spec["keep"]:
        shutil.rmtree(workspace, ignore_errors=True)
        if error is None:
            log.unlink(missing_ok=True)
    return error
