"""The warm worker's side (lottery.warm): a process that has imported torch, torchvision and MLflow
and forks once per stage that a stage process hands it.

It runs as a script, `python lottery/warm_worker.py <socket>`, and imports no module of this
project: each stage's fork imports them fresh from the stage's own checkout. So this module holds
the pieces the stage's side shares with it (the socket's folder check, the peer's user, the
worker's record) and needs nothing but the standard library.
"""

import io
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
import time
import traceback

# What stages import that takes seconds; a module that fails to import is left to the stages.
PRELOADED = (
    "numpy",
    "yaml",
    "tqdm",
    "torch",
    "torchvision",
    "torch_pruning",
    "mlflow.entities",
    "mlflow.tracking",
    "mlflow.pytorch",
    "mlflow.store.tracking.sqlalchemy_store",
    # Not pyplot: importing it would pick a plotting backend for every stage.
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)
PROJECT_PACKAGES = ("lottery", "stages")
DEFAULT_IDLE_SECONDS = 300
MESSAGE_LIMIT = 1 << 20
STREAMS = ("stdin", "stdout", "stderr")


def not_private(folder):
    """Why `folder` (made if missing) must not hold a worker's socket, or '' if it may: it must be
    a folder (not a link) of this user's that no other user can enter (mode 0700), since the
    socket takes each stage's whole environment, tokens included, and its standard streams. In a
    shared temporary directory (sticky bit) no other user can rename or remove it either."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        found = os.lstat(folder)
    except OSError as err:
        return f"{folder}: {err.strerror}"
    if not stat.S_ISDIR(found.st_mode):
        return f"{folder}: not a folder"
    if found.st_uid != os.getuid():
        return f"{folder}: belongs to user {found.st_uid}, not to this user ({os.getuid()})"
    if found.st_mode & 0o777 != 0o700:
        return f"{folder}: mode {found.st_mode & 0o777:04o}, must be 0700 (chmod 700 {folder})"
    return ""


def peer_user(connection):
    """The user id of the process at the other end of a Unix socket (SO_PEERCRED: pid, uid, gid),
    as the kernel recorded it when that process connected or listened."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


def read_record(path):
    """The worker's record, `<socket>.pid` (see _write_record); {} if there is none."""
    try:
        with open(f"{path}.pid") as record:
            return json.load(record)
    except (OSError, ValueError):
        return {}


def unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def serve(path, idle_seconds):
    """Accept stages on `path` until idle for `idle_seconds` or until another worker takes `path`.
    A folder that is not private to this user (see not_private) is refused: no worker there."""
    refused = not_private(os.path.dirname(path))
    if refused:
        print(f"refused: {refused}", flush=True)
        unlink(f"{path}.starting")
        return
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pending = f"{path}.{os.getpid()}"
    listener.bind(pending)
    listener.listen(64)
    os.replace(pending, path)
    own = os.stat(path).st_ino
    _write_record(path, idle_seconds)
    # Forks report to the stage process themselves; the worker never waits for them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # A stage that arrives while the libraries load is served between two imports: it imports
    # the rest itself rather than wait for all of them.
    for name in PRELOADED:
        _preload(name)
        _serve_waiting(listener, timeout=0)
    unlink(f"{path}.starting")
    last = time.monotonic()
    while time.monotonic() - last < idle_seconds and _owns(path, own):
        if _serve_waiting(listener, timeout=min(idle_seconds, 5)):
            last = time.monotonic()
    if _owns(path, own):
        unlink(path)
    if read_record(path).get("pid") == os.getpid():
        unlink(f"{path}.pid")


def _write_record(path, idle_seconds):
    """`<socket>.pid`: this worker's pid, when it started listening, and its idle limit (`lottery warm`)."""
    record = {"pid": os.getpid(), "since": time.time(), "idle_seconds": idle_seconds}
    # Atomic by hand, not with lottery.io: the worker imports no module of this project.
    pending = f"{path}.pid.{os.getpid()}"
    with open(os.open(pending, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600), "w") as out:
        json.dump(record, out)
    os.replace(pending, f"{path}.pid")


def _preload(name):
    try:
        __import__(name)
    except Exception:  # the stage that needs it reports the failure
        traceback.print_exc()


def _serve_waiting(listener, timeout):
    """Start a fork for each stage waiting on `listener` (waiting up to `timeout` s for the
    first); whether there was one."""
    served = False
    while select.select([listener], [], [], 0 if served else timeout)[0]:
        connection, _ = listener.accept()
        caller = peer_user(connection)
        if caller != os.getuid():  # root passes the folder's mode; a stage of another user runs as this one
            print(f"refused a connection from user {caller}", flush=True)
            connection.close()
            continue
        if os.fork() == 0:
            listener.close()
            _supervise(connection)
        connection.close()
        served = True
    return served


def _owns(path, inode):
    try:
        return os.stat(path).st_ino == inode
    except FileNotFoundError:
        return False


def _supervise(connection):
    """In a fork of the worker: start the stage in a fork of its own, tell the stage process its pid,
    and pass on its exit status; if the stage process goes away, stop the stage."""
    status = 1
    try:
        message, descriptors, _, _ = socket.recv_fds(connection, MESSAGE_LIMIT, len(STREAMS))
        request = json.loads(message)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stage = os.fork()
        if stage == 0:
            connection.close()
            _run_stage(request, descriptors)
        for descriptor in descriptors:
            os.close(descriptor)
        connection.send(json.dumps({"pid": stage}).encode())
        status = _watch(connection, stage)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


def _watch(connection, stage):
    ended = os.pidfd_open(stage)
    while True:
        ready, _, _ = select.select([connection, ended], [], [])
        if ended in ready:
            _, status = os.waitpid(stage, 0)
            code = os.waitstatus_to_exitcode(status)
            connection.send(json.dumps({"exit": code if code >= 0 else 128 - code}).encode())
            return 0
        if not connection.recv(MESSAGE_LIMIT):
            os.kill(stage, signal.SIGTERM)
            os.waitpid(stage, 0)
            return 1


def _run_stage(request, descriptors):
    """In the stage's fork: become the stage process, run its script as `__main__`, and exit as
    the interpreter would."""
    code = 1
    try:
        _become(request, descriptors)
        import runpy

        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt:  # before the stage script took its stop signals over (lottery.stage)
        print("error: stopped by SIGINT", file=sys.stderr)
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
    finally:
        _finish(code)


def _become(request, descriptors):
    for target, descriptor in enumerate(descriptors):
        os.dup2(descriptor, target)
        os.close(descriptor)
    _rebind_streams(request["streams"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["environment"])
    os.umask(request["umask"])
    sys.argv = request["argv"]
    sys.path[:] = request["path"]
    for name in list(sys.modules):
        if name.split(".")[0] in PROJECT_PACKAGES:
            del sys.modules[name]
    import importlib

    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    # The stage's own copy of this module: its hand_off must not hand off again.
    stage_copy = importlib.import_module("lottery.warm")
    stage_copy.in_worker = True
    stage_copy._started_at = request["started_at"]


def _rebind_streams(options):
    """sys.stdin/stdout/stderr on the stage's descriptors, buffered as in the stage process; log
    handlers that held the worker's streams get the stage's."""
    import logging

    replaced = {}
    sys.stdin = open(0, "r", closefd=False)
    for descriptor, name in enumerate(STREAMS[1:], start=1):
        stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(descriptor, "w", closefd=False)), **options[name])
        replaced[id(getattr(sys, name))] = stream
        setattr(sys, name, stream)
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    for handler in (handler for logger in loggers for handler in logger.handlers):
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in replaced:
            handler.setStream(replaced[id(handler.stream)])


def _exit_code(value):
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def _finish(code):
    """Exit as the interpreter exits: wait for the threads it waits for (thread pools told to stop
    first), run the atexit handlers, flush the streams."""
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    # Run as a script: the folder holding this file must not shadow the libraries' modules.
    sys.path.remove(os.path.dirname(os.path.abspath(__file__)))
    serve(sys.argv[1], float(os.environ.get("LOTTERY_WARM_IDLE", DEFAULT_IDLE_SECONDS)))
