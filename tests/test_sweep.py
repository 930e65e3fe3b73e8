"""`lottery sweep` on a real 2-node Ray cluster on this machine (`ray start --head`, then `ray start
--address`), a real `mlflow server`, a folder DVC remote and a bare git remote: a 4-point sweep of
tiny lineages, with the second node's raylet killed while one of its points is training. Then:
every point has exactly one finished lineage on the server, `dvc exp show` lists the 4, the outputs
pulled from the DVC remote equal a local run's, and the same sweep again runs nothing."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lottery import hparams
from lottery.provenance import EXPERIMENT_TAG
from lottery.records import ENVIRONMENT_TAG
from lottery.runs import COMPLETE_METRIC, KIND_TAG, LINEAGE_TAG, ROUND_TAG
from lottery.sweep import grid
from tests.conftest import commit, dvc_project, sh, tiny_params, with_team_remotes
from tests.test_tracking_server import free_port, mlflow_server

pytest.importorskip("ray", reason="Ray is not installed (the GPU machine's image lacks it: tools/device)")

# One round; the raylet dies as soon as a point starts to train, which lasts a few seconds.
POINT = {"rounds": hparams.rounds_section(1), "compact.latency_repeats": 2, "train.iterations": 200,
         "train.eval_every": 100, "data.test_subset": 200, "data.validation_size": 200}
GRID = ["-S", "prune.rate=0.3,0.5", "--seeds", "0", "1"]
KILL_TIMEOUT_S = 240
GONE_WITHIN_S = 15


def processes():
    """{pid: (parent pid, command line)} of every process."""
    found = {}
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((folder / "stat").read_text().rsplit(")", 1)[1].split()[1])
            found[int(folder.name)] = (ppid, (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return found


def descendants(pid, table):
    children = {child for child, (parent, _) in table.items() if parent == pid}
    return children | {grandchild for child in children for grandchild in descendants(child, table)}


@contextlib.contextmanager
def ray_cluster(cpus, token=None):
    """A Ray cluster on this machine, one node per entry of `cpus` (that many CPUs each; the first is
    the head), in a temporary folder of its own (short: Ray's socket paths must fit 107 characters).
    Yields (address, the raylet pid of each node after the head). Afterwards every process whose
    command line names that folder is killed. Without tokens, whether or not a local `ray.init` has
    left one in ~/.ray (a joining `ray start` sends none unless RAY_AUTH_MODE=token); with `token`,
    a cluster that asks for that one."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port, ray = free_port(), str(Path(sys.executable).with_name("ray"))
    common = [f"--temp-dir={folder}", "--disable-usage-stats"]
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"RAY_AUTH_MODE": "disabled"}
    env = {**os.environ, **auth}
    try:
        head, *others = cpus
        subprocess.run([ray, "start", "--head", f"--port={port}", f"--num-cpus={head}", "--include-dashboard=false", *common],
                       check=True, capture_output=True, env=env)
        added = []
        for count in others:
            before = raylets(folder)
            subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", f"--num-cpus={count}", *common],
                           check=True, capture_output=True, env=env)
            (raylet,) = raylets(folder) - before
            added.append(raylet)
        yield f"127.0.0.1:{port}", added
    finally:
        for pid, (_, command) in processes().items():
            if folder in command:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def raylets(folder):
    return {pid for pid, (_, command) in processes().items() if "/raylet " in command and folder in command}


def kill_raylet_while_its_point_trains(raylet, killed):
    """SIGKILL `raylet` once a point's runner under it has started its `train` stage; `killed` gets
    the pids of that runner's processes and the workspace it ran in."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while time.monotonic() < deadline:
        table = processes()
        under = descendants(raylet, table)
        for pid in under:
            if "lottery.sweep.workspace" in table[pid][1]:
                log = Path(os.readlink(f"/proc/{pid}/cwd")).with_suffix(".log")
                if log.exists() and "Running stage 'train'" in log.read_text(errors="replace"):
                    killed.update(pids={pid} | descendants(pid, table), workspace=log.with_suffix(""))
                    os.kill(raylet, signal.SIGKILL)
                    return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mnist_root):
    base = tmp_path_factory.mktemp("sweep")
    (base / "project").mkdir()
    repo = with_team_remotes(dvc_project(base / "project", tiny_params(mnist_root, POINT)))
    commit(repo, "sweep baseline")
    sh(repo, "git", "push", "-q", "origin", "HEAD")
    with mlflow_server(f"sqlite:///{base / 'server.db'}", base) as server, ray_cluster([2, 1]) as (address, (raylet,)):
        env = {"MLFLOW_TRACKING_URI": server.url, "LOTTERY_SAVE_SECONDS": "1", "OMP_NUM_THREADS": None}
        killed = {}
        killer = threading.Thread(target=kill_raylet_while_its_point_trains, args=(raylet, killed))
        killer.start()
        command = [sys.executable, "-m", "lottery", "sweep", *GRID, "--address", address, "--workdir", str(base / "work"), "--keep"]
        first = run(command, repo, env)
        killer.join()
        print(f"the sweep took {first.seconds:.1f} s")
        again = run(command, repo, env)
        yield {"repo": repo, "base": base, "server": server, "first": first, "again": again, "killed": killed, "env": env}


def run(command, cwd, env):
    environment = {key: value for key, value in {**os.environ, **env}.items() if value is not None}
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True)
    done.seconds = time.monotonic() - started
    return done


def names():
    return {point.name: point for point in grid.points(GRID[1:2], [0, 1])}


def test_the_sweep_ran_every_point_although_a_node_died(swept):
    assert swept["killed"], "no point's runner trained under the second raylet: nothing was killed"
    assert swept["first"].returncode == 0, swept["first"].stderr[-3000:]
    # Ray adds its own lines on the dead raylet above the sweep's.
    assert "4 ran, 0 finished before, 0 failed" in swept["first"].stdout.splitlines()


def test_the_dead_nodes_runner_and_stages_went_with_it(swept):
    deadline = time.monotonic() + GONE_WITHIN_S
    while set(processes()) & swept["killed"]["pids"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not set(processes()) & swept["killed"]["pids"]


def test_the_killed_point_ran_again_from_what_reached_the_dvc_remote(swept):
    point = swept["killed"]["workspace"].name.rsplit("-", 1)[0]
    logs = [log for log in swept["base"].glob(f"work/{point}-*.log") if log.with_suffix("") != swept["killed"]["workspace"]]
    assert len(logs) == 1
    again = logs[0].read_text()
    # The stages it finished before its node died were restored from the run cache, not run
    # (train too, where it ended before the dying worker stopped it).
    for stage in ("code", "data", "init"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in again
    assert "Running stage 'report'" in again or "Stage 'report' is cached" in again


def test_every_point_has_one_finished_lineage_on_the_server_and_no_run_twice(swept):
    client = MlflowClient(swept["server"].url)
    experiment = client.get_experiment_by_name("lottery")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    lineages = [run for run in runs if run.data.tags[KIND_TAG] == "lineage"]
    assert sorted(run.data.tags[EXPERIMENT_TAG] for run in lineages) == sorted(names())
    keys = Counter((run.data.tags[LINEAGE_TAG], run.data.tags[KIND_TAG], run.data.tags.get(ROUND_TAG)) for run in runs)
    assert set(keys.values()) == {1}
    assert len(runs) == 4 * 3  # a lineage run and rounds 0 and 1 for each point
    assert {run.info.status for run in runs} == {"FINISHED"}
    rounds = [run for run in runs if run.data.tags[KIND_TAG] == "round"]
    assert all(COMPLETE_METRIC in run.data.metrics for run in rounds)
    # Each point's stages saw the GPUs of its task (none: CUDA_VISIBLE_DEVICES empty) and one thread per CPU.
    assert {run.data.tags[f"{ENVIRONMENT_TAG}visible_gpus"] for run in rounds} == {"none"}
    assert {run.data.tags[f"{ENVIRONMENT_TAG}threads"] for run in rounds} == {"1"}


def experiments(repo):
    table = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    return {exp["name"]: exp["revs"][0]["data"]["params"]["params.yaml"]["data"]
            for entry in table for exp in entry.get("experiments") or []}


def test_dvc_exp_show_lists_the_four_points_with_their_params(swept):
    shown = experiments(swept["repo"])
    assert sorted(shown) == sorted(names())
    for name, point in names().items():
        assert shown[name]["seed"] == point.overrides["seed"]
        assert shown[name]["prune"]["rate"] == point.overrides["prune.rate"]


def md5s(repo):
    """{output path: md5} of every file under models/ that the workspace's dvc.lock records (checked
    against the file), but the lineage's MLflow run ids (models/lineage.json)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    found = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = repo / out["path"]
            if out["path"].startswith("models/") and out["path"] != "models/lineage.json" and path.is_file():
                assert hashlib.md5(path.read_bytes()).hexdigest() == out["md5"], out["path"]
                found[out["path"]] = out["md5"]
    return found


def test_outputs_pulled_from_the_remote_equal_a_local_run(swept, tmp_path):
    name, point = sorted(names().items())[0]
    pulled = tmp_path / "pulled"
    sh(swept["base"], "git", "clone", "-q", str(swept["base"] / "project-origin.git"), str(pulled))
    sh(pulled, "dvc", "exp", "pull", "origin", name)
    sh(pulled, "dvc", "exp", "apply", name)
    sh(pulled, "dvc", "pull")
    local = tmp_path / "local"
    shutil.copytree(swept["repo"], local, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    settings = [f"{key}={value}" for key, value in point.overrides.items()]
    # As the point ran: one thread, no GPU (the training logs record both).
    sh(local, "dvc", "exp", "run", *(arg for setting in settings for arg in ("-S", setting)),
       env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'local.db'}", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    remote, here = md5s(pulled), md5s(local)
    assert any(path.endswith("mask.pt") for path in remote)
    assert remote == here


def test_the_same_sweep_again_runs_nothing(swept):
    assert swept["again"].returncode == 0, swept["again"].stderr[-3000:]
    assert swept["again"].stdout.splitlines()[0] == "0 ran, 4 finished before, 0 failed"
    assert swept["again"].seconds < swept["first"].seconds / 10
