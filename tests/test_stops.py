"""Clean stops (issue 25, part 3), with real processes and real signals.

A data-parallel `train` (two Gloo ranks under torchrun) stopped part-way by a terminal's Ctrl-C
through `dvc repro`, by SIGTERM to its stage process, or by killing that process outright leaves
no process behind within 10 s and writes nothing afterwards; a stopped stage says so in one line,
without a traceback, and marks its run FAILED. A one-process stage stopped inside its training
loop says so in one line too. A rank on another node that fails never writes to MLflow, and two
experiments that meet at one rendezvous endpoint get different rendezvous ids.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lottery import hparams
from tests.conftest import dvc_project, sh, tiny_params
from tests.test_tracking_server import free_port
from tests.test_warm import wait_for_worker

# About 1.8 CPU seconds of each rank's training loop (0.0035 s an iteration): long enough to stop it
# part-way, short enough that the tests' waits for a stopped stage's would-be writes (1.5 times what
# is left of a train) stay short. Where in a rank's run the loop lies depends on the machine (it
# started 1.5 CPU seconds after joining on one, 0.4 on another), so the tests stop the ranks once
# each has spent half of what the fixture's whole train took it after joining.
ITERATIONS = 500
PARALLEL = {
    "rounds": hparams.rounds_section(1),
    "distributed.processes_per_node": 2,
    "train.iterations": ITERATIONS,
    "train.eval_every": ITERATIONS,
}
STOPPED_WITHIN_S = 10
TRAIN = [sys.executable, "-m", "stages.train"]


def stage_env(repo, **changes):
    """The environment DVC gives a stage here: this venv first on PATH, MLflow in the project's
    SQLite file, the warm worker on unless `changes` say otherwise."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    env.pop("LOTTERY_WARM", None)
    return {**env, **changes}


class Started:
    """A command started in `repo` in a session of its own (as a terminal starts a foreground job),
    its stderr read line by line with the moment each line came."""

    def __init__(self, repo, command, env):
        self.process = subprocess.Popen(
            command, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, timeout):
        status = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return status

    def lines_after(self, moment):
        return [line for at, line in self.lines if at > moment]

    def line_starting(self, prefix, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for _, line in self.lines if line.startswith(prefix)]
            if found:
                return found[0]
            assert self.process.poll() is None, f"ended before printing {prefix!r}:\n{self.stderr}"
            time.sleep(0.1)
        raise AssertionError(f"no line starting {prefix!r} after {timeout} s:\n{self.stderr}")

    @property
    def stderr(self):
        return "\n".join(line for _, line in self.lines)


def processes_in(folder):
    """{pid: command line} of every live process working in `folder`: a stage's own process, the
    warm worker's fork that runs it, torchrun and the ranks (a zombie has no working folder)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/cwd") == str(folder):
                found[int(name)] = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return found


def ranks_in(folder):
    return [pid for pid in processes_in(folder) if b"LOCAL_RANK=" in _read(f"/proc/{pid}/environ")]


def parent(pid):
    return int(_read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[1])


def cpu_seconds(pid):
    """The CPU time `pid` has used (user and system), or None once it has ended."""
    fields = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None


def joined_process_group(pid):
    # Gloo's threads (pt_gloo_runloop, gloo_tcp_loop) start when a rank joins its process group.
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False  # it has just ended
    return any(b"gloo" in _read(f"/proc/{pid}/task/{task}/comm") for task in tasks)


def _read(path):
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""  # the process has just ended


def cpu_since_joining(repo, joined):
    """{pid: CPU seconds spent since joining its process group} of the live ranks working in `repo`
    that have joined; `joined` ({pid: CPU seconds at joining}) keeps the moment each was first seen joined."""
    for pid in ranks_in(repo):
        if pid not in joined and joined_process_group(pid):
            joined[pid] = cpu_seconds(pid)
    used = {pid: cpu_seconds(pid) for pid in joined}
    return {pid: used[pid] - cpu for pid, cpu in joined.items() if used[pid] is not None}  # a rank that ended is none


def wait_for_training(started, repo, training_cpu, ranks=2, timeout=240):
    """Until `ranks` ranks working in `repo` have each spent `training_cpu` seconds since joining
    the process group; their pids. The command `started` must not end before."""
    joined, deadline = {}, time.monotonic() + timeout
    while True:
        spent = cpu_since_joining(repo, joined)
        if len(spent) == ranks and min(spent.values()) >= training_cpu:
            return list(spent)
        assert started.process.poll() is None, f"ended before {ranks} ranks trained:\n{started.stderr}"
        assert time.monotonic() < deadline, f"no {ranks} ranks training in {repo} after {timeout} s: {processes_in(repo)}"
        time.sleep(0.1)


def status_dvc_reports_for_ctrl_c(env=os.environ):
    """The exit status DVC reports for a stage that a terminal's Ctrl-C stopped (which exits 130).
    DVC runs a stage's command under $SHELL, else /bin/sh. bash passes on the command's own status;
    dash (Debian's /bin/sh, and what CI has) got the SIGINT too and ends itself by it once the
    command has ended, which DVC reports as -2."""
    shell = os.path.basename(os.path.realpath(env.get("SHELL") or "/bin/sh"))
    return {"bash": "130", "dash": "-2"}[shell]


def gone_within(folder, seconds):
    """The processes still working in `folder` after waiting up to `seconds` for all to end ({}: none)."""
    deadline = time.monotonic() + seconds
    while processes_in(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_in(folder)


def workspace(repo):
    """Every file of the project with its size and modification time, but MLflow's store (where a
    stopped stage marks its run FAILED) and DVC's and git's own bookkeeping."""
    files = {}
    for path in repo.rglob("*"):
        relative = path.relative_to(repo)
        if relative.parts[0] in (".dvc", ".git", "mlruns", "mlflow.db"):
            continue
        try:
            if path.is_file():
                files[str(relative)] = (path.stat().st_size, path.stat().st_mtime_ns)
        except FileNotFoundError:
            continue
    return files


def run_status(repo, round_):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lottery")
    condition = f"tags.`lottery.kind` = 'round' and tags.`lottery.round` = '{round_}'"
    [run] = client.search_runs([experiment.experiment_id], filter_string=condition)
    return run.info.status


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, mnist_root):
    """A project whose two-rank `train` has run (so round 0's MLflow run exists), a warm worker for
    its stages, the CPU seconds after joining at which these tests stop a rank (half of what the
    rank that spent least took in that `train`), and how many seconds that `train` went on from
    there until it had written its outputs and ended. DVC runs the stages before it."""
    repo = dvc_project(tmp_path_factory.mktemp("stops"), tiny_params(mnist_root, PARALLEL)).resolve()
    sh(repo, "dvc", "repro", "data", "init", env={"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"})
    wait_for_worker(stage_env(repo))
    alone = Started(repo, TRAIN, stage_env(repo))
    joined, seen = {}, []
    while alone.process.poll() is None:
        seen.append((time.monotonic(), cpu_since_joining(repo, joined)))
        time.sleep(0.05)
    assert alone.wait(timeout=10) == 0, alone.stderr
    whole = {}
    for _, spent in seen:
        whole.update(spent)
    assert len(whole) == 2, f"saw {len(whole)} ranks join"
    training_cpu = min(whole.values()) / 2
    stopped_at = next(at for at, spent in seen if len(spent) == 2 and min(spent.values()) >= training_cpu)
    return repo, training_cpu, time.monotonic() - stopped_at


def workspace_later(repo, finishing):
    """The project's files (`workspace`) once more time has passed than a stage stopped where these
    tests stop it would have needed to write its outputs."""
    time.sleep(1.5 * finishing + 2)
    return workspace(repo)


def test_ctrl_c_to_dvc_repro_stops_every_rank_at_once_and_nothing_is_written_after(parallel):
    repo, training_cpu, finishing = parallel
    assert run_status(repo, 0) == "FINISHED"
    repro = Started(repo, ["dvc", "repro", "-f", "-s", "train"], stage_env(repo))
    wait_for_training(repro, repo, training_cpu)
    before, signalled = workspace(repo), time.monotonic()
    os.killpg(repro.process.pid, signal.SIGINT)  # a terminal's Ctrl-C: dvc and the stage it runs
    assert gone_within(repo, STOPPED_WITHIN_S) == {}
    assert repro.wait(timeout=10) != 0
    said = repro.lines_after(signalled)
    assert said[0] == "error: stopped by SIGINT during train"
    assert len(said) == 2 and f"exited with {status_dvc_reports_for_ctrl_c()}" in said[1]  # and DVC's own line
    assert "Traceback" not in repro.stderr
    assert run_status(repo, 0) == "FAILED"
    assert workspace_later(repo, finishing) == before


def test_sigterm_to_the_stage_process_stops_every_rank_and_nothing_is_written_after(parallel):
    repo, training_cpu, finishing = parallel
    stage = Started(repo, TRAIN, stage_env(repo))
    launcher = parent(parent(wait_for_training(stage, repo, training_cpu)[0]))  # the rank's parent is torchrun
    assert launcher != stage.process.pid  # the warm worker's fork: the signal goes there through the stage process
    before, signalled = workspace(repo), time.monotonic()
    stage.process.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=STOPPED_WITHIN_S) == 128 + signal.SIGTERM
    assert gone_within(repo, 1) == {}
    assert stage.lines_after(signalled) == ["error: stopped by SIGTERM during train"]
    assert "Traceback" not in stage.stderr
    assert workspace_later(repo, finishing) == before


def test_ranks_do_not_outlive_a_stage_process_killed_outright(parallel):
    repo, training_cpu, finishing = parallel
    stage = Started(repo, TRAIN, stage_env(repo, LOTTERY_WARM="0"))
    ranks = wait_for_training(stage, repo, training_cpu)
    assert parent(parent(ranks[0])) == stage.process.pid  # no worker: the stage process launched torchrun
    before = workspace(repo)
    stage.process.kill()
    assert gone_within(repo, STOPPED_WITHIN_S) == {}
    assert workspace_later(repo, finishing) == before


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, mnist_root):
    """A project ready for a one-process `train` of 20,000 iterations (about 20 s here)."""
    overrides = {"rounds": hparams.rounds_section(1), "train.iterations": 20000, "train.eval_every": 20000}
    repo = dvc_project(tmp_path_factory.mktemp("stop_alone"), tiny_params(mnist_root, overrides)).resolve()
    sh(repo, "dvc", "repro", "data", "init", env={"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"})
    wait_for_worker(stage_env(repo))
    return repo


def test_a_one_process_stage_stopped_inside_training_says_so_in_one_line(one_process):
    """Ctrl-C, and a second one while the stage winds down (marking its run FAILED), which it ignores."""
    repo = one_process
    stage = Started(repo, TRAIN, stage_env(repo))
    deadline = time.monotonic() + 120
    # The warm worker's fork trains: wait until it has spent 3 s of CPU, inside the loop.
    while not any((cpu_seconds(pid) or 0) >= 3 for pid in processes_in(repo) if pid != stage.process.pid):
        assert time.monotonic() < deadline and stage.process.poll() is None, stage.stderr
        time.sleep(0.1)
    signalled = time.monotonic()
    os.killpg(stage.process.pid, signal.SIGINT)
    time.sleep(0.05)
    if stage.process.poll() is None:
        os.killpg(stage.process.pid, signal.SIGINT)
    assert stage.wait(timeout=STOPPED_WITHIN_S) == 128 + signal.SIGINT
    assert stage.lines_after(signalled) == ["error: stopped by SIGINT during train"]
    assert "Traceback" not in stage.stderr
    assert gone_within(repo, 1) == {}
    assert not (repo / "models" / "round_0" / "trained.pt").exists()


def two_node_params(mnist_root, port):
    return tiny_params(mnist_root, {"distributed.nodes": 2, "distributed.rendezvous": f"127.0.0.1:{port}"})


def test_a_rank_on_another_node_that_fails_never_writes_to_mlflow(tmp_path, mnist_root):
    """Node 1 runs the command node 0's stage prints, with a tracking store of its own. Nothing has
    run in the project, so every rank stops at the missing initial weights after joining. (The
    c10d rendezvous ranks the nodes by host, then by torchrun's pid: node 1's torchrun starts
    after node 0's, so node 1 runs rank 1, a follower.)"""
    repo = dvc_project(tmp_path / "project", two_node_params(mnist_root, free_port())).resolve()
    node_0 = Started(repo, TRAIN, stage_env(repo))
    command = node_0.line_starting("distributed: ").split()[1:]
    deadline = time.monotonic() + 60
    while not any("torch.distributed.run" in line for line in processes_in(repo).values()):
        assert time.monotonic() < deadline, node_0.stderr
        time.sleep(0.05)
    follower_store = tmp_path / "node_1.db"
    env = stage_env(repo, MLFLOW_TRACKING_URI=f"sqlite:///{follower_store}")
    node_1 = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert node_0.wait(timeout=120) == 1
    assert node_1.returncode == 1
    assert re.search(r"rank\s*: 1 \(local_rank: 0\)", node_1.stderr), node_1.stderr  # node 1 ran rank 1, a follower
    assert re.search(r"^error: .*no such file", node_1.stderr, re.MULTILINE), node_1.stderr  # which failed
    assert not follower_store.exists()


def test_two_experiments_at_one_rendezvous_endpoint_get_different_ids(tmp_path, mnist_root):
    params = two_node_params(mnist_root, free_port())
    repos = [dvc_project(tmp_path / name, params).resolve() for name in ("first", "second")]
    launches = [Started(repo, TRAIN, stage_env(repo)) for repo in repos]
    ids = [re.search(r"--rdzv-id=(\S+)", launch.line_starting("distributed: ")).group(1) for launch in launches]
    assert ids[0] != ids[1] and all(id_.startswith("train-") for id_ in ids)
    for launch in launches:  # neither has found its second node: both wait at the rendezvous, or start torchrun
        launch.process.send_signal(signal.SIGTERM)
    # Marking a run FAILED first creates each project's MLflow store here, which takes seconds.
    assert [launch.wait(timeout=120) for launch in launches] == [128 + signal.SIGTERM] * 2
    assert [launch.stderr.splitlines()[-1] for launch in launches] == ["error: stopped by SIGTERM during train"] * 2
    assert [gone_within(repo, 1) for repo in repos] == [{}, {}]
