"""A warm worker for stage processes: torch and MLflow imported once, each stage still a fresh process.

Every stage of the pipeline is its own `python -m stages.<name>` process, and importing torch,
torchvision and MLflow costs it seconds before any work starts. A stage script's first call,
`hand_off(__name__)`, sends the stage to a worker process that has imported those libraries
(never any module of this project) and waits for it. The worker forks once per stage: the fork
takes the stage's argv, working directory, environment, umask, sys.path and standard streams,
imports this project's modules fresh from the stage's own checkout, runs the stage script as
`__main__`, and exits; the worker itself is never changed by a stage, so no state passes from
one stage to the next. The stage process exits with the fork's exit status, and a signal it gets
(Ctrl-C, a timeout) goes on to the fork.

There is nothing to set up. The first stage that finds no worker starts one in the background
and runs itself as usual; the next stages find it. A worker serves one interpreter, one set of
installed packages and the environment variables that steer those libraries at import time
(its socket's name is a digest of them), and stops by itself after `LOTTERY_WARM_IDLE` seconds
without a stage (default 300) or when another worker takes its socket. `LOTTERY_WARM=0` runs
every stage in its own process without a worker. If the worker cannot take a stage, the stage
runs in its own process. `lottery warm status` names the worker that serves this interpreter (its
pid, since when it listens, its log `<socket>.log`); `lottery warm stop` stops it.

A worker serves one user. Its socket lies in `$TMPDIR/lottery-warm-<uid>/`, which must be a
folder of that user's with mode 0700: otherwise the stage warns in one line and runs without a
worker, and a worker refuses to listen there. The worker refuses every connection whose peer
(SO_PEERCRED) is another user, root included, who passes any folder's mode; and a stage sends its
environment only to a worker whose socket its own user opened.
"""

import hashlib
import io
import json
import os
import select
import signal
import site
import socket
import stat
import struct
import subprocess
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
# Environment variables these libraries read when imported: a worker serves one set of values.
IMPORT_TIME_ENVIRONMENT = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "CUDA_", "CUBLAS_", "TORCH", "PYTORCH_", "PYTHON", "LD_", "MPLBACKEND")
PROJECT_PACKAGES = ("lottery", "stages")
DEFAULT_IDLE_SECONDS = 300
MESSAGE_LIMIT = 1 << 20
STREAMS = ("stdin", "stdout", "stderr")

# Set in a worker's fork, in the stage's own copy of this module.
in_worker = False
_started_at = None


def hand_off(name, module=None):
    """In a stage script run as `__main__`: have the warm worker run this stage and exit with its
    status. Returns (the stage then runs here) when there is no worker to take it. `module`: what
    the worker runs as `__main__` (default: the module being run, as `python -m` named it)."""
    module = module or main_module()
    # A rank that torchrun started stays its own process: torchrun watches it, and it must not
    # take a worker that serves other stages (or start one of its own).
    launched_by_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    if name != "__main__" or not module or in_worker or launched_by_torchrun or os.environ.get("LOTTERY_WARM", "1") == "0":
        return
    path = socket_path()
    if path is None:
        return
    refused = _not_private(os.path.dirname(path))
    if refused:
        print(f"warning: no warm worker ({refused})", file=sys.stderr)
        return
    connection = _connect(path)
    if connection is None:
        try:
            _start_worker(path)
        except OSError as err:  # no worker this time; the stage runs here all the same
            print(f"warning: no warm worker ({err})", file=sys.stderr)
        return
    status = _delegate(connection, module)
    if status is not None:
        sys.exit(status)


def main_module():
    """The dotted name `python -m` ran (`stages.train`), or None (a script, an interactive session)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec else None


def started_at():
    """Wall-clock time at which this stage's process started (the stage process, not a worker fork)."""
    if _started_at is not None:
        return _started_at
    with open("/proc/self/stat") as stat:
        # Field 22, clock ticks after boot; the command name (field 2) may hold spaces.
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        age = float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def socket_path():
    """Where the worker for this interpreter, its packages and its environment listens; None if
    that path would be too long for a Unix socket."""
    folder = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lottery-warm-{os.getuid()}")
    path = os.path.join(folder, f"{_identity()}.sock")
    return path if len(path.encode()) < 100 else None


def _identity():
    digest = hashlib.sha256()
    packages = [(folder, os.stat(folder).st_mtime_ns) for folder in site.getsitepackages() if os.path.isdir(folder)]
    steering = sorted((key, value) for key, value in os.environ.items() if key.startswith(IMPORT_TIME_ENVIRONMENT))
    for part in (sys.executable, sys.version, sys.flags, sys.warnoptions, sys._xoptions, packages, steering, PRELOADED):
        digest.update(repr(part).encode())
    with open(__file__, "rb") as source:
        digest.update(source.read())
    return digest.hexdigest()[:20]


# `lottery warm status` and `lottery warm stop`.


def status():
    """The worker that serves this interpreter (and its packages and environment): its socket and
    log file, and, while one listens there, its pid, when it started listening (epoch seconds), its
    idle limit and whether it is still loading the libraries. pid None: no worker listens."""
    path = socket_path()
    if path is None:
        return {"socket": None, "log": None, "pid": None, "state": "none: its socket path would be too long"}
    record = _read_record(path)
    pid = record.get("pid")
    if not (os.path.exists(path) and isinstance(pid, int) and _is_worker(pid, path)):
        return {"socket": path, "log": _existing(f"{path}.log"), "pid": None, "state": "none"}
    loading = os.path.exists(f"{path}.starting")
    return {
        "socket": path,
        "log": _existing(f"{path}.log"),
        "pid": pid,
        "since": record.get("since"),
        "idle_seconds": record.get("idle_seconds"),
        "state": "loading the libraries" if loading else "listening",
    }


def stop(timeout=10):
    """Stop the worker that serves this interpreter: its socket goes (the next stage starts a new
    worker), then it gets SIGTERM; the stages it is running finish. Its status before, as
    `status()` gives it (pid None: there was none)."""
    found = status()
    if found["pid"] is None:
        return found
    path = found["socket"]
    for leftover in (path, f"{path}.starting"):
        _unlink(leftover)
    try:
        os.kill(found["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while not _ended(found["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _ended(found["pid"]):
        raise OSError(f"warm worker {found['pid']} still runs {timeout} s after SIGTERM")
    _unlink(f"{path}.pid")
    return found


def _read_record(path):
    try:
        with open(f"{path}.pid") as record:
            return json.load(record)
    except (OSError, ValueError):
        return {}


def _is_worker(pid, path):
    """Whether `pid` is a live process of this user that serves `path` (the worker's argument), so
    a pid the system has since given to another process is never taken for the worker."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            arguments = cmdline.read().split(b"\0")
    except OSError:
        return False
    return path.encode() in arguments and not _ended(pid)


def _ended(pid):
    """Whether process `pid` has exited (gone, or a zombie its parent has not collected yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _existing(path):
    return path if os.path.exists(path) else None


# The stage's side.


def _not_private(folder):
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


def _connect(path):
    """A connection to this user's worker at `path`, or None. A worker of another user (root can
    make a socket in any folder) gets nothing: the stage warns and starts one of its own there."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        return None
    listener = _peer_user(connection)
    if listener != os.getuid():
        connection.close()
        print(f"warning: the warm worker at {path} runs as user {listener}, not as this user: not used", file=sys.stderr)
        return None
    return connection


def _peer_user(connection):
    """The user id of the process at the other end of a Unix socket (SO_PEERCRED: pid, uid, gid),
    as the kernel recorded it when that process connected or listened."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


def _delegate(connection, module):
    """Send this process's stage to the worker; its exit status, or None if it never started."""
    request = {
        "module": module,
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "environment": dict(os.environ),
        "path": sys.path,
        "umask": _umask(),
        "started_at": started_at(),
        "streams": {name: _stream_options(getattr(sys, name)) for name in STREAMS[1:]},
    }
    with connection:
        try:
            socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
            started = _receive(connection)
        except OSError:
            started = None
        if started is None:
            return None
        _forward_signals(started["pid"])
        finished = _receive(connection)
    if finished is None:
        sys.exit("error: the warm worker running this stage stopped; rerun with LOTTERY_WARM=0 to run it without one")
    return finished["exit"]


def _forward_signals(pid):
    def forward(number, frame):
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, forward)


def _receive(connection):
    message = connection.recv(MESSAGE_LIMIT)
    return json.loads(message) if message else None


def _umask():
    """This process's umask, read from /proc (Linux 4.7 and later, as pidfd_open here needs 5.3):
    os.umask reads it only by setting it, for every thread of the process at once."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))


def _stream_options(stream):
    return {
        "encoding": stream.encoding,
        "errors": stream.errors,
        "line_buffering": stream.line_buffering,
        "write_through": stream.write_through,
    }


def _start_worker(path):
    """Start a worker in the background unless another stage is starting one."""
    try:
        claim = os.open(f"{path}.starting", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        if time.time() - _mtime(f"{path}.starting") < 60:
            return
        # A start that never finished (its worker died while importing): try again.
        _unlink(f"{path}.starting")
        return _start_worker(path)
    os.close(claim)
    with open(f"{path}.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, __file__, path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0


# The worker's side.


def serve(path, idle_seconds):
    """Accept stages on `path` until idle for `idle_seconds` or until another worker takes `path`.
    A folder that is not private to this user (see _not_private) is refused: no worker there."""
    refused = _not_private(os.path.dirname(path))
    if refused:
        print(f"refused: {refused}", flush=True)
        _unlink(f"{path}.starting")
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
    _unlink(f"{path}.starting")
    last = time.monotonic()
    while time.monotonic() - last < idle_seconds and _owns(path, own):
        if _serve_waiting(listener, timeout=min(idle_seconds, 5)):
            last = time.monotonic()
    if _owns(path, own):
        _unlink(path)
    if _read_record(path).get("pid") == os.getpid():
        _unlink(f"{path}.pid")


def _write_record(path, idle_seconds):
    """`<socket>.pid`: this worker's pid, when it started listening, and its idle limit (`lottery warm`)."""
    record = {"pid": os.getpid(), "since": time.time(), "idle_seconds": idle_seconds}
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
        caller = _peer_user(connection)
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


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
