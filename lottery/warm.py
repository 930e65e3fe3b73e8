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

This module is the stage's side: the hand-off, and starting a worker. The worker itself is
lottery.warm_worker; `lottery warm status` and `stop` are lottery.warm_status.

A worker serves one user. Its socket lies in `$TMPDIR/lottery-warm-<uid>/`, which must be a
folder of that user's with mode 0700: otherwise the stage warns in one line and runs without a
worker, and a worker refuses to listen there. The worker refuses every connection whose peer
(SO_PEERCRED) is another user, root included, who passes any folder's mode; and a stage sends its
environment only to a worker whose socket its own user opened.
"""

import hashlib
import json
import os
import signal
import site
import socket
import subprocess
import sys
import time

from lottery import warm_worker

# Environment variables these libraries read when imported: a worker serves one set of values.
IMPORT_TIME_ENVIRONMENT = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "CUDA_", "CUBLAS_", "TORCH", "PYTORCH_", "PYTHON", "LD_", "MPLBACKEND")

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
    refused = warm_worker.not_private(os.path.dirname(path))
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
    ticks = int(proc_stat("self")[19])  # field 22: clock ticks after boot
    with open("/proc/uptime") as uptime:
        age = float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def proc_stat(pid):
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first): the
    command name, field 2, may hold spaces and parentheses. OSError if there is no such process."""
    with open(f"/proc/{pid}/stat") as stat_file:
        return stat_file.read().rsplit(")", 1)[1].split()


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
    for part in (sys.executable, sys.version, sys.flags, sys.warnoptions, sys._xoptions, packages, steering, warm_worker.PRELOADED):
        digest.update(repr(part).encode())
    for module in (__file__, warm_worker.__file__):  # either side's code changed: a new worker
        with open(module, "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()[:20]


def _connect(path):
    """A connection to this user's worker at `path`, or None. A worker of another user (root can
    make a socket in any folder) gets nothing: the stage warns and starts one of its own there."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        return None
    listener = warm_worker.peer_user(connection)
    if listener != os.getuid():
        connection.close()
        print(f"warning: the warm worker at {path} runs as user {listener}, not as this user: not used", file=sys.stderr)
        return None
    return connection


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
        "streams": {name: _stream_options(getattr(sys, name)) for name in warm_worker.STREAMS[1:]},
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
    message = connection.recv(warm_worker.MESSAGE_LIMIT)
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
        warm_worker.unlink(f"{path}.starting")
        return _start_worker(path)
    os.close(claim)
    with open(f"{path}.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, warm_worker.__file__, path],
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
