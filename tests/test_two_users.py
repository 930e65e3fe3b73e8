"""Two real users on one machine (issue 25, part 2).

User B runs a lineage (`dvc repro` of a tiny project whose tracking server is down, so its stages
probe it and keep the answer) beside user A's warm worker and A's kept probe answer, in one shared
temporary directory. Nothing fails, every per-user folder there belongs to the user it names, and
B's stages leave A's files alone. Neither user reaches the other's worker: B cannot enter A's
socket folder (mode 0700); A, being root, whom no file mode stops, is refused by B's worker
(SO_PEERCRED); and B's stage sends nothing to a socket that root listens on in B's folder.

It needs root, as CI has: it creates user B (useradd) and runs B's commands with runuser.
"""

import fcntl
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from lottery import hparams, warm_worker
from tests.conftest import PROJECT, dvc_project, tiny_params
from tests.test_tracking_server import free_port
from tests.test_warm import wait_for_socket

pytestmark = pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"),
    reason="needs root with useradd and runuser: it creates a second user and runs commands as that user",
)

USER_B = "lottery-test-b"


@pytest.fixture(scope="module")
def user_b():
    """User B's passwd entry (made for these tests unless it exists; removed again then). Held by
    one test session at a time: what these tests change on the machine (the user, the folders'
    modes) must not change under another session's run of them."""
    with open("/tmp/lottery-test-two-users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = USER_B not in {entry.pw_name for entry in pwd.getpwall()}
        if made:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER_B], check=True)
        yield pwd.getpwnam(USER_B)
        if made:
            subprocess.run(["userdel", USER_B], check=True)


@contextmanager
def interpreter_open_to_all():
    """This interpreter and its libraries reachable by every user: each folder above them gets the
    search (x) bit for others while the tests run (a Python built under /root, mode 0700, is not)."""
    closed = set()
    for start in {os.path.realpath(sys.executable), sys.base_prefix, sys.prefix}:
        for folder in Path(start).parents:
            if not folder.stat().st_mode & stat.S_IXOTH:
                closed.add(folder)
    for folder in closed:
        folder.chmod(folder.stat().st_mode | stat.S_IXOTH)
    try:
        yield
    finally:
        for folder in closed:
            folder.chmod(folder.stat().st_mode & ~stat.S_IXOTH)


class Machine:
    """One shared temporary directory (as /tmp, mode 1777) and user B's home, as root sets them up."""

    def __init__(self, user):
        self.user = user
        self.tmp = Path(tempfile.mkdtemp(prefix="lu-", dir="/tmp"))  # short: sockets live here
        self.tmp.chmod(0o1777)
        self.home_b = Path(tempfile.mkdtemp(prefix="lb-", dir="/tmp"))
        os.chown(self.home_b, user.pw_uid, user.pw_gid)
        # Nobody listens there: a probe answers "unreachable" at once, and is kept.
        self.tracking_uri = f"http://127.0.0.1:{free_port()}"

    def as_a(self, command, cwd, **run):
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **run)

    def as_b(self, command, cwd, **variables):
        """`command` run as user B with an environment of its own (none of root's)."""
        env = {
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home_b),
            # A locale as root's: without one, Python turns on its UTF-8 mode, and a worker serves one mode.
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TMPDIR": str(self.tmp),
            "DVC_SITE_CACHE_DIR": str(self.home_b / "dvc-site-cache"),  # not /var/tmp/dvc: nothing left behind
            "LOTTERY_WARM_IDLE": "300",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            **variables,
        }
        as_b = ["runuser", "-u", USER_B, "--", "env", "-i", *(f"{key}={value}" for key, value in env.items())]
        return subprocess.run([*as_b, *command], cwd=cwd, capture_output=True, text=True)

    def socket_of_b(self, project):
        return self.as_b([sys.executable, "-c", "from lottery import warm; print(warm.socket_path())"], project).stdout.strip()

    def socket_of_a(self):
        return self.as_a([sys.executable, "-c", "from lottery import warm; print(warm.socket_path())"], PROJECT).stdout.strip()

    def processes_of_b(self):
        return [pid for pid in _pids() if _owner(pid) == self.user.pw_uid]

    def clean_up(self):
        """Stop both users' workers (each stops once its socket is gone) and remove the folders."""
        for folder in self.tmp.glob("lottery-warm-*"):
            for path in folder.glob("*.sock"):
                path.unlink()
        deadline = time.monotonic() + 30
        while self.processes_of_b() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.tmp)
        shutil.rmtree(self.home_b)


def _pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _owner(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def lineage_of_b(user_b, tmp_path_factory, mnist_root):
    """User A's warm worker up and A's probe answer kept (written 10 minutes ago, so that a stage
    of B's that saw it would probe again and keep its own answer there); then user B's lineage.
    The machine, A's project, A's answer as it was, B's project and B's `dvc repro`."""
    with interpreter_open_to_all():
        machine = Machine(user_b)
        try:
            project_a = dvc_project(tmp_path_factory.mktemp("user_a"), tiny_params(mnist_root, {}))
            first = machine.as_a([sys.executable, "-m", "stages.validate"], project_a)  # starts A's worker
            assert first.returncode == 0, first.stderr
            wait_for_socket(machine.socket_of_a())
            probed = machine.as_a([sys.executable, "-c", f"from lottery import mlflow_connection; mlflow_connection.probe({machine.tracking_uri!r})"], PROJECT)
            assert probed.returncode == 0, probed.stderr
            [answer_a] = [path for folder in machine.tmp.glob("lottery-tracking-probes*") for path in folder.iterdir()]
            answer_a.write_text(json.dumps({**json.loads(answer_a.read_text()), "at": time.time() - 600}))
            kept_a = answer_a.read_bytes()

            overrides = {"rounds": hparams.rounds_section(1), "tracking.uri": machine.tracking_uri}
            project_b = dvc_project(machine.home_b / "project", tiny_params(mnist_root, overrides))
            for path in [project_b, *project_b.rglob("*")]:
                os.lchown(path, user_b.pw_uid, user_b.pw_gid)
            repro = machine.as_b(["dvc", "repro"], project_b)
            yield machine, project_b, answer_a, kept_a, repro
        finally:
            machine.clean_up()


def test_user_b_runs_a_lineage_beside_user_a_worker_and_probe_answer(lineage_of_b, user_b):
    machine, project_b, answer_a, kept_a, repro = lineage_of_b
    assert repro.returncode == 0, repro.stderr
    assert (project_b / "metrics" / "rounds" / "round_1.json").exists()
    assert "Traceback" not in repro.stderr
    assert "warning: MLflow tracking unavailable" in repro.stderr  # B probed the server and went on
    b = user_b.pw_uid
    ours = {entry.name: entry.stat() for entry in machine.tmp.iterdir() if entry.name.startswith("lottery-")}
    assert {f"lottery-warm-{b}", f"lottery-tracking-probes-{b}", "lottery-warm-0", "lottery-tracking-probes-0"} <= ours.keys()
    assert all(found.st_uid == int(name.rsplit("-", 1)[1]) for name, found in ours.items())  # each user's own
    assert stat.S_IMODE(ours[f"lottery-warm-{b}"].st_mode) == 0o700
    [answer_b] = (machine.tmp / f"lottery-tracking-probes-{b}").iterdir()
    assert answer_b.stat().st_uid == b and json.loads(answer_b.read_text())["uri"] == machine.tracking_uri
    assert answer_a.read_bytes() == kept_a  # A's answer neither read into B's nor rewritten
    files_in_a_folders = [path for name in ("lottery-warm-0", "lottery-tracking-probes-0") for path in (machine.tmp / name).rglob("*")]
    assert files_in_a_folders and all(path.lstat().st_uid == 0 for path in files_in_a_folders)


def test_neither_user_reaches_the_other_users_worker(lineage_of_b, user_b):
    machine, project_b, *_ = lineage_of_b
    socket_b = machine.socket_of_b(project_b)
    wait_for_socket(socket_b)  # B's worker, started by B's lineage
    # B at A's worker: A's folder (mode 0700) keeps B out.
    connect = f"import socket; socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).connect({machine.socket_of_a()!r})"
    refused = machine.as_b([sys.executable, "-c", connect], project_b)
    assert refused.returncode == 1 and "PermissionError" in refused.stderr
    # Root at B's worker: no mode stops root, so B's worker must refuse the connection itself.
    marker = machine.home_b / "ran"
    (machine.home_b / "marker_stage.py").write_text(f"open({str(marker)!r}, 'w').write('ran as a stage of root')\n")
    request = {
        "module": "marker_stage",
        "argv": ["marker_stage"],
        "cwd": str(machine.home_b),
        "environment": {"PATH": os.environ["PATH"], "LOTTERY_TEST_TOKEN": "root's"},
        "path": [str(machine.home_b), *sys.path],
        "umask": 0o022,
        "started_at": time.time(),
        "streams": dict.fromkeys(("stdout", "stderr"), {"encoding": "utf-8", "errors": "strict", "line_buffering": False, "write_through": False}),
    }
    with open(os.devnull, "r+") as nothing, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
        connection.connect(socket_b)
        connection.settimeout(30)
        try:
            socket.send_fds(connection, [json.dumps(request).encode()], [nothing.fileno()] * 3)
            reply = connection.recv(warm_worker.MESSAGE_LIMIT)
        except (BrokenPipeError, ConnectionResetError):  # closed before the request came, or with it unread
            reply = b""
        assert reply == b""  # no stage started: a worker's first reply is the stage's pid
    time.sleep(2)
    assert not marker.exists()
    assert "refused a connection from user 0" in Path(f"{socket_b}.log").read_text()


def test_a_stage_sends_nothing_to_a_socket_that_another_user_listens_on(lineage_of_b):
    """Root puts a listening socket where B's worker listens (root can write in any folder). B's
    stage finds it, sees that its peer is not B and sends neither its environment nor its streams."""
    machine, project_b, *_ = lineage_of_b
    path = machine.socket_of_b(project_b)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(f"{path}.root")
    os.chmod(f"{path}.root", 0o777)  # one that B may connect to
    listener.listen(1)
    os.replace(f"{path}.root", path)
    received = []

    def listen():
        listener.settimeout(120)
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(30)
            received.append(connection.recv(warm_worker.MESSAGE_LIMIT))

    listening = threading.Thread(target=listen, daemon=True)
    listening.start()
    token = uuid.uuid4().hex
    stage = machine.as_b([sys.executable, "-m", "stages.validate"], project_b, LOTTERY_TEST_TOKEN=token)
    listening.join(timeout=60)
    listener.close()
    assert received == [b""]  # it connected, learned who listens, and hung up
    assert stage.returncode == 0, stage.stderr
    assert f"warning: the warm worker at {path} runs as user 0, not as this user: not used" in stage.stderr.splitlines()
