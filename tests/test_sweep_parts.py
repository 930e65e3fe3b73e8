"""The parts of `lottery sweep` that need no cluster of its own: the grid, a point's environment (its
GPUs and threads), the line that says why a point failed, the mirroring of in-round saves, the
checks that stop a sweep before it starts, and, on a local Ray, a failing and a refused point and
Ctrl-C. tests/test_sweep.py runs whole sweeps on a real 2-node Ray cluster."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lottery import hparams
from lottery.errors import ParamsError, UserError

pytest.importorskip("ray", reason="Ray is not installed (the GPU machine's image lacks it: tools/device)")
from lottery.sweep import driver, grid, task, workspace  # noqa: E402 (imports Ray)
from tests.conftest import commit, default_params, dvc_project, sh, tiny_params, with_team_remotes


def test_values_split_at_commas_outside_brackets_and_quotes():
    assert grid.split_values("0.1,[reinit,random_sparse],'a,b',{x: 1, y: 2}") == [
        "0.1", "[reinit,random_sparse]", "'a,b'", "{x: 1, y: 2}"]


def test_a_setting_reads_its_values_as_yaml():
    assert grid.parse_setting("controls.run=[reinit,random_sparse],[]") == ("controls.run", [["reinit", "random_sparse"], []])
    assert grid.parse_setting("prune.rate=0.2,0.3") == ("prune.rate", [0.2, 0.3])
    assert grid.parse_setting("train.tf32=true") == ("train.tf32", [True])


@pytest.mark.parametrize("text", ["prune.rate", "=0.2", "prune.rate=", "prune.rate=[0.2"])
def test_a_malformed_setting_is_one_line_naming_it(text):
    with pytest.raises(ParamsError) as raised:
        grid.parse_setting(text)
    assert "\n" not in str(raised.value) and ("-S" in str(raised.value))


def test_points_cross_every_setting_with_every_seed_and_keep_their_names():
    points = grid.points(["prune.rate=0.2,0.3", "train.lr=0.1,0.01"], seeds=[0, 1, 2])
    assert len(points) == 12
    assert points[0].overrides == {"prune.rate": 0.2, "train.lr": 0.1, "seed": 0}
    assert len({point.name for point in points}) == 12
    again = grid.points(["train.lr=0.1,0.01", "prune.rate=0.2,0.3"], seeds=[2, 1, 0])
    assert {p.name for p in again} == {p.name for p in points}  # a point's name is its overrides, in any order
    assert grid.points(["prune.rate=0.2,0.2"]) == grid.points(["prune.rate=0.2"])


def test_a_key_set_twice_is_refused():
    with pytest.raises(ParamsError, match="set twice"):
        grid.points(["seed=1"], seeds=[0])


def test_overrides_set_values_and_a_round_count_and_refuse_missing_keys():
    raw = default_params()
    applied = grid.applied(raw, {"prune.rate": 0.5, "rounds": 3})
    assert applied["prune"]["rate"] == 0.5 and applied["rounds"] == hparams.rounds_section(3)
    assert raw["prune"]["rate"] != 0.5  # the original is left as it was
    with pytest.raises(ParamsError, match="-S prune.rat: params.yaml has no such key"):
        grid.applied(raw, {"prune.rat": 0.5})
    with pytest.raises(ParamsError, match="rounds=0"):
        grid.applied(raw, {"rounds": 0})


def test_overrides_written_into_params_yaml_keep_its_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# the seed\nseed: 0\nprune:\n  rate: 0.2  # per round\n  scope: global\n")
    workspace.write_overrides(path, {"seed": 7, "prune.rate": 0.3})
    assert path.read_text() == "# the seed\nseed: 7\nprune:\n  rate: 0.3  # per round\n  scope: global\n"


def test_a_point_sees_only_its_gpus_and_as_many_threads_as_cpus():
    node = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "HOME": "/root"}
    env = task.experiment_environment(node, [2], 4, {"MLFLOW_TRACKING_URI": "http://team:5000"}, python="/venv/bin/python")
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["OMP_NUM_THREADS"] == "4"
    assert env["PATH"] == "/venv/bin:/usr/bin" and env["MLFLOW_TRACKING_URI"] == "http://team:5000" and env["HOME"] == "/root"
    assert task.experiment_environment(node, [0, 1], 0.5, {})["CUDA_VISIBLE_DEVICES"] == "0,1"
    cpu_only = task.experiment_environment(node, [], 0.5, {})
    assert cpu_only["CUDA_VISIBLE_DEVICES"] == "" and cpu_only["OMP_NUM_THREADS"] == "1"


def test_an_empty_cuda_visible_devices_hides_every_gpu_from_torch():
    env = task.experiment_environment(os.environ, [], 1, {})
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"], env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "0"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch finds no GPU here")
def test_a_ray_task_with_one_gpu_gives_its_point_exactly_that_gpu():
    import ray

    ray.init(include_dashboard=False, num_gpus=torch.cuda.device_count())
    try:
        @ray.remote(num_gpus=1)
        def visible():
            env = task.experiment_environment(os.environ, ray.get_gpu_ids(), 1, {})
            probe = "import torch; print(torch.cuda.device_count())"
            return env["CUDA_VISIBLE_DEVICES"], subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip()

        devices, count = ray.get(visible.remote())
        assert count == "1" and devices.isdigit()
    finally:
        ray.shutdown()


def test_the_failure_line_is_the_stages_error_line(tmp_path):
    log = tmp_path / "point.log"
    log.write_text("Running stage 'train':\n> python -m stages.train\nerror: stopped by SIGTERM during train\nERROR: failed to reproduce 'train'\n")
    assert task.last_error(log) == "ERROR: failed to reproduce 'train'"
    log.write_text("Running stage 'train':\nerror: data/mnist: no such file\nsomething else\n")
    assert task.last_error(log) == "error: data/mnist: no such file"


def test_in_round_saves_are_mirrored_to_the_dvc_remote_and_fetched_back(tmp_path, monkeypatch):
    from dvc.repo import Repo

    repo = tmp_path / "project"
    repo.mkdir()
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "remote", "add", "-d", "team", str(tmp_path / "remote"))
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    saves = repo / ".lottery" / "saves"
    saves.mkdir(parents=True)
    (saves / "train-0123.pt").write_bytes(b"train state")
    (saves / ".train-0123.pt.ab12.tmp").write_bytes(b"half written")
    mirrored = tmp_path / "remote" / workspace.SAVES_ON_REMOTE / "sweep-abc"
    with Repo(str(repo)) as dvc:
        workspace.RemoteSaves(dvc, "sweep-abc", 60).upload()
        assert sorted(p.name for p in mirrored.iterdir()) == ["train-0123.pt"]
        (saves / "train-0123.pt").unlink()  # the loop ended: its save goes from the remote too
        (saves / "retrain@1-4567.pt").write_bytes(b"retrain state")
        workspace.RemoteSaves(dvc, "sweep-abc", 60).upload()
        assert sorted(p.name for p in mirrored.iterdir()) == ["retrain@1-4567.pt"]
        shutil.rmtree(saves)  # another node's workspace starts empty
        workspace.RemoteSaves(dvc, "sweep-abc", 60).download()
        assert (saves / "retrain@1-4567.pt").read_bytes() == b"retrain state"
        workspace.RemoteSaves(dvc, "sweep-abc", 60).remove()
        assert not mirrored.exists()


@pytest.fixture
def project(tmp_path, mnist_root):
    (tmp_path / "project").mkdir()
    repo = with_team_remotes(dvc_project(tmp_path / "project", tiny_params(mnist_root, {})))
    commit(repo, "baseline")
    return repo


def sweep(repo, *args, **env_changes):
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-m", "lottery", "sweep", *args], cwd=repo, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("args, line", [
    (["-S", "prune.rat=0.2"], "error: -S prune.rat: params.yaml has no such key"),
    (["-S", "prune.rate"], "error: -S 'prune.rate': expected KEY=VALUE[,VALUE...], e.g. -S prune.rate=0.2,0.3"),
    (["-S", "prune.rate=0.2", "--git-remote", "upstream"], "error: git remote get-url upstream: error: No such remote 'upstream'"),
    (["-S", "prune.rate=0.2", "--dvc-remote", "nas"], "error: --dvc-remote nas: not a remote of the committed .dvc/config"),
])
def test_a_bad_argument_stops_the_sweep_in_one_line_before_it_starts(project, args, line):
    done = sweep(project, *args)
    assert done.returncode == 1 and done.stderr.strip() == line
    assert sh(project, "git", "ls-remote", "origin") == ""  # nothing pushed, nothing run


def test_a_cluster_that_asks_for_a_token_or_none_that_answers_is_one_line(project):
    from tests.test_sweep import ray_cluster
    from tests.test_tracking_server import free_port

    nobody = f"127.0.0.1:{free_port()}"
    done = sweep(project, "-S", "prune.rate=0.2", "--address", nobody)
    assert done.returncode == 1 and done.stderr.strip() == f"error: --address {nobody}: no Ray cluster answers there (`ray start --head` starts one)"
    with ray_cluster([1], token="a" * 32) as (address, _):
        # Ray tries a joining driver's GCS connection once a second, 20 times by default, whatever
        # the refusal; its own RAY_gcs_server_port_wait_time_s sets the count.
        done = sweep(project, "-S", "prune.rate=0.2", "--address", address, RAY_gcs_server_port_wait_time_s="2")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (f"error: --address {address}: the cluster asks for a Ray token: run with "
                                                   "RAY_AUTH_MODE=token (the token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")


def test_uncommitted_params_stop_the_sweep(project):
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("seed: 0", "seed: 5"))
    with pytest.raises(UserError, match="uncommitted changes in params.yaml: a sweep runs your last commit"):
        driver.committed(project)


def test_a_refused_point_is_refused_alone():
    raw = default_params()
    points = grid.points(["train.lr=0.001,-1", "prune.rate=0.2"])
    assert driver.refused(raw, points) == {points[1].name: "train.lr = -1.0: must be > 0"}


def test_a_relative_sqlite_store_is_refused_and_the_default_store_made_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    raw = default_params()
    assert driver.environment(raw)["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw["tracking"]["uri"] = "sqlite:///runs.db"
    with pytest.raises(ParamsError, match="tracking.uri = 'sqlite:///runs.db'"):
        driver.environment(raw)


def test_a_failing_point_and_a_refused_point_fail_alone_in_the_table(project, tmp_path):
    # On a local Ray started for the sweep: the refused point never starts; the other fails in its
    # data stage, and the table shows the stage's own error line.
    done = sweep(project, "-S", "train.lr=-1,0.001", "-S", f"data.local_root={tmp_path / 'nowhere'}", "--workdir", str(tmp_path / "work"))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0 ran, 0 finished before, 2 failed"
    refused, failed = (next(line.rstrip() for line in lines if f"train.lr={lr} " in line) for lr in ("-1", "0.001"))
    assert refused.endswith("train.lr = -1.0: must be > 0")
    assert "error:" in failed and "nowhere" in failed and "(log: " in failed
    log = failed.split("(log: ")[1].rstrip(")").split(":", 1)[1]
    assert Path(log).is_file() and not Path(log).with_suffix("").exists()  # the log is kept, the workspace is not


def test_ctrl_c_during_a_sweep_is_noted_not_raised_inside_ray_and_the_handler_put_back():
    from lottery.sweep import cluster

    before = signal.getsignal(signal.SIGINT)
    with cluster.sigint_noted() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # Python runs a handler between bytecodes: it has run by now, and raised nothing
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            cluster.stop_if(stop)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_stops_the_sweep_in_one_line_and_its_points_with_it(project, tmp_path):
    from tests.test_sweep import processes

    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "lottery", "sweep", "-S", "train.iterations=20000", "--workdir", str(tmp_path / "work")]
    driver_process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "work").glob("*.log")) or "Running stage 'train'" not in list((tmp_path / "work").glob("*.log"))[0].read_text():
        assert time.monotonic() < deadline and driver_process.poll() is None, "the point never started to train"
        time.sleep(0.2)
    runners = {pid for pid, (_, command) in processes().items() if "lottery.sweep.workspace" in command and str(tmp_path) in command}
    assert runners
    driver_process.send_signal(signal.SIGINT)
    _, stderr = driver_process.communicate(timeout=60)
    assert driver_process.returncode == 1
    assert stderr.strip().splitlines()[-1] == "error: stopped by SIGINT: the points under way stop; the same `lottery sweep` runs the unfinished ones"
    deadline = time.monotonic() + 15
    while set(processes()) & runners and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not set(processes()) & runners
