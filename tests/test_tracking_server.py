"""A tiny lineage logged through a real `mlflow server` process, over SQLite and over PostgreSQL.

The rest of the suite talks to a SQLite file in-process; this checks the REST path that a shared
tracking server uses: runs, params, metrics and artifacts proxied by the server
(`--artifacts-destination`), and the UI. The PostgreSQL variant starts a throwaway cluster of its
own, and skips, with the reason, only where the PostgreSQL server binaries or psycopg2 are missing.
"""

import contextlib
import glob
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from lottery import identity, paths, pipeline, provenance, records
from lottery.runs import KIND_TAG, LINEAGE_TAG, ROUND_TAG

START_TIMEOUT_S = 90  # a healthy server answers in ~10 s; this machine may be shared and slow
STOP_GRACE_S = 5
PG_USER = "postgres"  # the cluster's superuser, and the system user that runs it when we are root


@dataclass
class Server:
    url: str
    artifacts: Path  # the server's --artifacts-destination
    log: Path  # its stdout and stderr

    def output(self, chars=6000):
        return tail(self.log, chars)


def tail(path, chars=6000):
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"(no output: {err})"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- processes -------------------------------------------------------------------------------


def live_group_members(pgid):
    """Processes, zombies excepted, still in process group `pgid` ([] where /proc is missing)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_process_group(proc):
    """SIGTERM the group that `proc` leads (started with start_new_session=True), SIGKILL what is
    left after a grace period; returns the pids still alive after that (normally none)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            if proc.poll() is not None and not live_group_members(proc.pid):
                return []
            time.sleep(0.1)
    proc.poll()
    return live_group_members(proc.pid) + ([proc.pid] if proc.returncode is None else [])


def wait_until_healthy(url, proc, log):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with code {proc.returncode} before answering /health:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer {url}/health within {START_TIMEOUT_S} s; its output:\n{tail(log)}")


@contextlib.contextmanager
def mlflow_server(store_uri, workdir):
    """`mlflow server` on a free local port over `store_uri`, artifacts proxied into `workdir`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Server(url, workdir / "artifacts", workdir / "server.log")
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", store_uri,
        "--artifacts-destination", str(server.artifacts),
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # The job runner (a dozen huey consumer processes) serves features this project does not use.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=workdir, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_healthy(url, proc, server.log)
        yield server
    finally:
        left = stop_process_group(proc)
    assert not left, f"mlflow server processes {left} outlived SIGTERM and SIGKILL:\n{server.output()}"
    assert proc.returncode is not None


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bindir():
    """The newest PostgreSQL server bin directory (Debian's layout first, then PATH), or None."""

    def version(initdb):
        name = Path(initdb).parents[1].name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)
    if shutil.which("initdb"):
        candidates.append(shutil.which("initdb"))
    for initdb in candidates:
        bindir = Path(initdb).resolve().parent
        if all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres", "createdb")):
            return bindir
    return None


@contextlib.contextmanager
def postgres_database(name="mlflow"):
    """A throwaway PostgreSQL cluster on a free local port holding database `name`; yields its URI."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres, createdb) not found under "
            "/usr/lib/postgresql/*/bin or on PATH; .ci/run installs them with apt-get (package postgresql)"
        )
    try:
        import psycopg2  # noqa: F401  (the server's SQLAlchemy driver)
    except ImportError:
        pytest.skip("psycopg2 is not installed in this environment (requirements.txt pins psycopg2-binary)")

    run_as = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres system user
        try:
            owner = pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.fail(f"running as root and there is no {PG_USER!r} system user to run PostgreSQL as")
        run_as = ["runuser", "-u", PG_USER, "--"] if shutil.which("runuser") else None
    # Not under pytest's tmp dir: that is private to root, and the postgres user must reach this one.
    root = Path(tempfile.mkdtemp(prefix="lottery-pg-"))
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log, port = root / "data", root / "postgres.log", free_port()

    def pg(tool, *args):
        command = [str(bindir / tool), *map(str, args)]
        if run_as is None:
            command = ["su", PG_USER, "-c", shlex.join(command)]
        else:
            command = run_as + command
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{tail(log)}")

    started = False
    try:
        pg("initdb", "-D", data, "-U", PG_USER, "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"  # a scratch cluster
        pg("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", START_TIMEOUT_S, "start")
        started = True
        pg("createdb", "-h", "127.0.0.1", "-p", port, "-U", PG_USER, name)
        # psycopg2 named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3).
        yield f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/{name}"
    finally:
        try:
            if started:
                pg("pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


# --- tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    """A running `mlflow server` over a fresh backend store of each kind."""
    workdir = tmp_path_factory.mktemp(f"mlflow-server-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            store = f"sqlite:///{workdir / 'mlflow.db'}"
        else:
            store = stack.enter_context(postgres_database())
        yield stack.enter_context(mlflow_server(store, workdir))


def test_the_server_serves_the_ui(server):
    with urllib.request.urlopen(f"{server.url}/", timeout=30) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "text/html"
        assert b"<html" in response.read(100_000).lower()


def test_a_lineage_logged_through_the_server(server, workdir, make_hp, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    # A tolerance of 1 makes round 2 the smallest matching ticket, registered through the server.
    overrides = {"rounds": {"1": {"prev": 0}, "2": {"prev": 1}}, "tracking.registered_model": "served-ticket",
                 "report.tolerance": 1.0}
    hp = make_hp(**overrides)
    pipeline.run_lineage(hp)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: MLflow")]
    assert not warnings, "\n".join(warnings) + f"\nserver output:\n{server.output()}"

    client = MlflowClient(server.url)
    (version,) = client.search_model_versions("name = 'served-ticket'")
    assert version.tags["lottery.round"] == "2" and version.tags["lottery.lineage"] == provenance.lineage_id(hp)
    experiment = client.get_experiment_by_name(hp.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "lineage"]
    children = [r for r in runs if r.data.tags.get(KIND_TAG) == "round"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags[LINEAGE_TAG] == provenance.lineage_id(hp)
    assert parent.data.params == {key: str(value) for key, value in records.flatten(identity.of(hp)).items()}
    by_round = {int(r.data.tags[ROUND_TAG]): r for r in children}
    assert len(children) == len(by_round) and sorted(by_round) == [0, 1, 2]
    for round_, run in by_round.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        metrics = json.loads(paths.round_metrics(round_).read_text())
        assert run.data.metrics["test_accuracy_at_early_stop"] == metrics["test_accuracy_at_early_stop"]
    assert json.loads(paths.lineage_file().read_text())["tracking_uri"] == server.url

    # mask.pt went up through the server's artifact proxy and comes back down the same way.
    round_1 = by_round[1].info
    assert round_1.artifact_uri.startswith("mlflow-artifacts:")
    downloaded = client.download_artifacts(round_1.run_id, "mask.pt", str(workdir / "downloaded"))
    remote, local = torch.load(downloaded, weights_only=True), torch.load(paths.mask(1), weights_only=True)
    assert remote.keys() == local.keys() and all(torch.equal(remote[k], local[k]) for k in local)
    assert list(server.artifacts.rglob(f"{round_1.run_id}/artifacts/mask.pt")), "not stored in --artifacts-destination"
