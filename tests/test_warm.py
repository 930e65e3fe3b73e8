"""The warm worker (lottery/warm.py, warm_worker.py, warm_status.py), with real processes: a stage
script in a copy of the project runs in a fork of the worker, sees its own code, environment and
streams, leaves nothing behind for the next stage, and ends as a stage run in its own process would."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from lottery import warm, warm_worker

ROOT = Path(__file__).resolve().parents[1]
PROBE = """\
from lottery import warm

warm.hand_off(__name__)

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from lottery import probe_value  # noqa: E402

if __name__ == "__main__":
    mode = sys.argv[1]
    report = {
        "in_worker": warm.in_worker,
        "pid": os.getpid(),
        "value": probe_value.VALUE,
        "cwd": os.getcwd(),
        "argv": sys.argv[1:],
        "variable": os.environ.get("PROBE_VARIABLE"),
        "left_by_an_earlier_stage": getattr(torch, "probe_mark", None),
        "umask": os.umask(0o022),
        "preloaded": sorted(name for name in sys.modules if name.startswith("preload_probe_")),
        "checksum": float(torch.randn(100, 100, generator=torch.Generator().manual_seed(1)).matmul(torch.ones(100)).sum()),
    }
    print(json.dumps(report), flush=True)
    torch.probe_mark = "left by a stage"
    if mode == "fail":
        sys.exit("error: probe.rate = 2: must be in (0, 1)")
    if mode == "raise":
        raise RuntimeError("the probe raised")
    if mode == "status":
        sys.exit(3)
    if mode == "sleep":
        time.sleep(60)
    if mode == "pool":  # left running, as MLflow's artifact uploads leave theirs
        import concurrent.futures

        concurrent.futures.ThreadPoolExecutor(1).submit(print, "from a pool thread")
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project's package with one extra module, and a probe stage script."""
    root = tmp_path_factory.mktemp("warm")
    shutil.copytree(ROOT / "lottery", root / "lottery", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "lottery" / "probe_value.py").write_text("VALUE = 1\n")
    (root / "stages").mkdir()
    (root / "stages" / "probe.py").write_text(PROBE)
    return root


@pytest.fixture(scope="module")
def environment():
    """The environment the suite's DVC stages run in, so the stages here share their worker."""
    env = dict(os.environ)
    env.pop("LOTTERY_WARM", None)
    return env


def stage(project, env, *args, **popen):
    return subprocess.run(
        [sys.executable, "-m", "stages.probe", *args], cwd=project, env=env, capture_output=True, text=True, **popen
    )


def report(done):
    assert done.stdout, done.stderr
    return json.loads(done.stdout.splitlines()[0])


def worker_path(env):
    done = subprocess.run(
        [sys.executable, "-c", "from lottery import warm; print(warm.socket_path())"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def wait_for_worker(env, timeout=90):
    """Until the worker listens and has its libraries loaded (its start claim is gone)."""
    return wait_for_socket(worker_path(env), timeout)


def wait_for_socket(path, timeout=90):
    """Until a worker listens at `path` and has its libraries loaded (its start claim is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and not os.path.exists(f"{path}.starting"):
            return path
        time.sleep(0.2)
    raise AssertionError(f"no worker at {path} after {timeout} s; log:\n{Path(path + '.log').read_text()}")


def stop_worker(env):
    path = worker_path(env)
    if os.path.exists(path):
        os.unlink(path)  # the worker sees its socket gone and stops within seconds


@pytest.fixture(scope="module")
def warmed(project, environment):
    """A worker up (the first stage that finds none starts one); the probe's report from a
    process of its own, to compare with."""
    stage(project, environment, "ok")
    wait_for_worker(environment)
    alone = stage(project, {**environment, "LOTTERY_WARM": "0"}, "ok")
    assert alone.returncode == 0, alone.stderr
    return report(alone)


def test_a_stage_runs_in_the_worker_as_it_runs_in_its_own_process(project, environment, warmed):
    env = {**environment, "PROBE_VARIABLE": "from the stage's environment"}
    done = stage(project, env, "ok", "--round", "2", umask=0o027)
    assert done.returncode == 0, done.stderr
    seen = report(done)
    assert seen["in_worker"] is True
    assert seen["cwd"] == str(project)  # the worker itself runs in /
    assert seen["argv"] == ["ok", "--round", "2"]
    assert seen["variable"] == "from the stage's environment"
    assert seen["umask"] == 0o027
    assert seen["checksum"] == warmed["checksum"]  # same numbers as in a process of its own


def test_nothing_a_stage_changes_reaches_the_next_one(project, environment, warmed):
    first, second = report(stage(project, environment, "ok")), report(stage(project, environment, "ok"))
    assert first["in_worker"] and second["in_worker"]
    assert first["pid"] != second["pid"]
    assert second["left_by_an_earlier_stage"] is None


def test_an_edited_module_is_what_the_next_stage_imports(project, environment, warmed):
    module = project / "lottery" / "probe_value.py"
    try:
        module.write_text("VALUE = 2\n")
        seen = report(stage(project, environment, "ok"))
        assert seen["in_worker"] and seen["value"] == 2
    finally:
        module.write_text("VALUE = 1\n")


@pytest.mark.parametrize(
    "mode, status, message",
    [("fail", 1, "error: probe.rate = 2: must be in (0, 1)"), ("raise", 1, "RuntimeError: the probe raised"), ("status", 3, "")],
)
def test_a_stage_ends_with_its_own_status_and_message(project, environment, warmed, mode, status, message):
    done = stage(project, environment, mode)
    assert report(done)["in_worker"]
    assert done.returncode == status
    assert message in done.stderr
    if mode == "fail":
        assert "Traceback" not in done.stderr and done.stderr.strip() == message


def test_a_stage_that_leaves_a_thread_pool_running_ends_as_it_would_on_its_own(project, environment, warmed):
    done = stage(project, environment, "pool", timeout=60)
    assert report(done)["in_worker"] and done.returncode == 0
    assert "from a pool thread" in done.stdout


def test_a_signal_to_the_stage_process_stops_the_stage(project, environment, warmed):
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.probe", "sleep"], cwd=project, env=environment, stdout=subprocess.PIPE, text=True
    )
    seen = json.loads(process.stdout.readline())
    assert seen["in_worker"] and seen["pid"] != process.pid
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 128 + signal.SIGTERM
    assert not _alive(seen["pid"])


def test_a_killed_stage_process_takes_its_stage_with_it(project, environment, warmed):
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.probe", "sleep"], cwd=project, env=environment, stdout=subprocess.PIPE, text=True
    )
    seen = json.loads(process.stdout.readline())
    process.kill()
    process.wait()
    assert _within(20, lambda: not _alive(seen["pid"]))


def test_lottery_warm_0_runs_the_stage_in_its_own_process(warmed):
    assert warmed["in_worker"] is False


def test_an_idle_worker_stops_by_itself_and_its_stages_then_run_on_their_own(project, tmp_path):
    env = {**os.environ, "PYTHON_LOTTERY_TEST_WORKER": uuid.uuid4().hex}
    path = worker_path(env)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    # The worker's own loop, without the libraries (loading them takes seconds and is not the point).
    serving = "import sys; from lottery import warm_worker; warm_worker.PRELOADED = (); warm_worker.serve(sys.argv[1], 1)"
    worker = subprocess.Popen([sys.executable, "-c", serving, path], cwd=project, env=env)
    assert _within(30, lambda: os.path.exists(path)), "the worker never listened"
    assert report(stage(project, env, "ok"))["in_worker"] is True
    assert worker.wait(timeout=30) == 0
    assert not os.path.exists(path)
    assert report(stage(project, {**env, "LOTTERY_WARM_IDLE": "1"}, "ok"))["in_worker"] is False
    assert _within(60, lambda: os.path.exists(path))  # and that stage started a new worker
    stop_worker(env)


def test_a_worker_still_loading_serves_a_stage_between_two_imports(project, tmp_path):
    env = {**os.environ, "PYTHON_LOTTERY_TEST_WORKER": uuid.uuid4().hex}
    path = worker_path(env)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    for name in ("first", "second"):  # each import waits until the test lets it finish
        (tmp_path / f"preload_probe_{name}.py").write_text(
            f"import os, time\nwhile not os.path.exists({str(tmp_path / name)!r}):\n    time.sleep(0.05)\n"
        )
    serving = (
        "import sys; from lottery import warm_worker; warm_worker.PRELOADED = ('preload_probe_first', 'preload_probe_second'); "
        "warm_worker.serve(sys.argv[1], 30)"
    )
    worker = subprocess.Popen([sys.executable, "-c", serving, path], cwd=project, env={**env, "PYTHONPATH": str(tmp_path)})
    try:
        assert _within(30, lambda: os.path.exists(path)), "the worker never listened"
        waiting = subprocess.Popen(
            [sys.executable, "-m", "stages.probe", "ok"], cwd=project, env=env, stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.5)
        (tmp_path / "first").touch()
        seen = json.loads(waiting.stdout.readline())
        assert waiting.wait(timeout=30) == 0
        assert seen["in_worker"] and seen["preloaded"] == ["preload_probe_first"]  # the second still loading
    finally:
        (tmp_path / "second").touch()
        os.unlink(path)
        worker.wait(timeout=30)


def _within(seconds, condition):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent has not collected it yet.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_the_socket_path_depends_on_the_variables_that_steer_imports(monkeypatch):
    before = warm.socket_path()
    threads = os.environ.get("OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "3" if threads != "3" else "5")
    assert warm.socket_path() != before
    if threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS")
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
    monkeypatch.setenv("LOTTERY_STAGE_TIMES", "/tmp/elsewhere")
    assert warm.socket_path() == before


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_worker_folder_that_another_user_owns_is_never_used(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    assert f"{theirs}: belongs to user 65534" in warm_worker.not_private(str(theirs))
    assert warm_worker.not_private(str(tmp_path / "mine")) == ""  # made, with this user as its owner
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o700


@pytest.fixture
def short_tmpdir():
    """A temporary directory with a path short enough for a worker's socket (pytest's are not)."""
    folder = tempfile.mkdtemp(prefix="lw-", dir="/tmp")
    yield Path(folder)
    shutil.rmtree(folder)


def test_a_worker_folder_that_others_can_enter_is_refused_and_the_stage_runs_alone(project, short_tmpdir):
    env = {**os.environ, "TMPDIR": str(short_tmpdir)}
    env.pop("LOTTERY_WARM", None)
    open_folder = short_tmpdir / f"lottery-warm-{os.getuid()}"
    open_folder.mkdir()
    open_folder.chmod(0o755)  # as a umask of 022 leaves a plain mkdir
    done = stage(project, env, "ok")
    assert done.returncode == 0 and report(done)["in_worker"] is False
    assert done.stderr.splitlines() == [f"warning: no warm worker ({open_folder}: mode 0755, must be 0700 (chmod 700 {open_folder}))"]
    assert list(open_folder.iterdir()) == []  # and no worker started there
    # A worker started by hand refuses the folder too.
    path = worker_path(env)
    serving = "import sys; from lottery import warm_worker; warm_worker.PRELOADED = (); warm_worker.serve(sys.argv[1], 30)"
    worker = subprocess.run([sys.executable, "-c", serving, path], cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert worker.stdout == f"refused: {open_folder}: mode 0755, must be 0700 (chmod 700 {open_folder})\n"
    assert list(open_folder.iterdir()) == []


def test_the_umask_is_read_without_being_set(monkeypatch):
    """os.umask(0) and back, as the umask was read before, leaves every other thread a moment of
    umask 0: files they create then are writable by everyone."""
    set_to = []
    for mask in (0o027, 0o077):
        previous = os.umask(mask)
        try:
            with monkeypatch.context() as patched:
                patched.setattr(os, "umask", set_to.append)
                assert warm._umask() == mask
        finally:
            os.umask(previous)
    assert set_to == []


def lottery_warm(env, *argv):
    done = subprocess.run([sys.executable, "-m", "lottery", "warm", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def test_lottery_warm_status_names_the_worker_and_stop_ends_it():
    env = {**os.environ, "PYTHON_LOTTERY_TEST_WORKER": uuid.uuid4().hex}  # a worker of this test's own
    env.pop("LOTTERY_WARM", None)
    path = worker_path(env)
    before = json.loads(lottery_warm(env, "status", "--json"))
    assert before == {"socket": path, "log": None, "pid": None, "state": "none"}
    assert not os.path.exists(path)  # asking started none
    started = time.time()
    subprocess.run([sys.executable, "-c", "from lottery import warm; warm._start_worker(warm.socket_path())"], cwd=ROOT, env=env, check=True)
    wait_for_socket(path)
    found = json.loads(lottery_warm(env, "status", "--json"))
    pid = found["pid"]
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert str(ROOT / "lottery" / "warm_worker.py").encode() in arguments and path.encode() in arguments
    assert found["log"] == f"{path}.log" and found["state"] == "listening"
    assert started - 1 < found["since"] < time.time()
    assert found["idle_seconds"] == float(env.get("LOTTERY_WARM_IDLE", warm_worker.DEFAULT_IDLE_SECONDS))
    text = lottery_warm(env, "status").splitlines()
    assert text[0].startswith(f"warm worker {pid}, listening since ") and text[-1] == f"log:    {path}.log"
    assert lottery_warm(env, "stop").splitlines()[0].startswith(f"stopped warm worker {pid}, ")
    assert not _alive(pid) and not os.path.exists(path)
    assert json.loads(lottery_warm(env, "status", "--json"))["pid"] is None
    assert lottery_warm(env, "stop").splitlines()[-1] == "nothing to stop"
