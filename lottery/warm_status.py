"""`lottery warm status` and `lottery warm stop`: the warm worker (lottery.warm) that serves this
interpreter, found from its record beside its socket."""

import os
import signal
import time

from lottery import warm, warm_worker


def status():
    """The worker that serves this interpreter (and its packages and environment): its socket and
    log file, and, while one listens there, its pid, when it started listening (epoch seconds), its
    idle limit and whether it is still loading the libraries. pid None: no worker listens."""
    path = warm.socket_path()
    if path is None:
        return {"socket": None, "log": None, "pid": None, "state": "none: its socket path would be too long"}
    record = warm_worker.read_record(path)
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
        warm_worker.unlink(leftover)
    try:
        os.kill(found["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while not _ended(found["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _ended(found["pid"]):
        raise OSError(f"warm worker {found['pid']} still runs {timeout} s after SIGTERM")
    warm_worker.unlink(f"{path}.pid")
    return found


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
        return warm.proc_stat(pid)[0] in ("Z", "X")
    except OSError:
        return True


def _existing(path):
    return path if os.path.exists(path) else None
