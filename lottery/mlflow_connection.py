"""Which MLflow store the stages log to, how it is opened, and whether it answers.

Tracking is a side channel: when the store cannot be reached, a stage prints one warning line and
still finishes; `lottery sync` (and the `report` stage) fill MLflow in later. An HTTP(S) store is
probed first (GET /health, at most PROBE_TIMEOUT_S), and the answer is kept for PROBE_REUSE_S in a
small file in the temporary directory, so after an outage the following stages skip tracking at
once instead of each waiting out MLflow's timeouts.

The default store, and any SQLite store named by a relative path, is a file at the project root,
also for the stages of an experiment that DVC runs in a temporary copy of the project
(`dvc exp run --queue`, `--temp`): there the working directory is a folder DVC deletes afterwards.
Several such experiments may run at once and share the store; SQLite serialises their writes.
A SQLite store moved or copied with its project folder is made to record its artifacts beside it
again when it is opened (lottery.moved_store).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from lottery import io, moved_store, paths
from lottery.errors import UserError

DEFAULT_URI = "sqlite:///mlflow.db"
PROBE_TIMEOUT_S = 3.0
PROBE_REUSE_S = 300.0
PROBE_DIR = Path(tempfile.gettempdir()) / f"lottery-tracking-probes-{os.getuid()}"  # one user's answers, as the locks
SQLITE = "sqlite:///"
OPENING_LOCKS = Path(tempfile.gettempdir()) / f"lottery-sqlite-opening-{os.getuid()}"

# A server that stops answering mid-stage costs one timeout, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

_unreachable = {}  # uri -> why, once this process has given up on it


def tracking_uri(tracking_hp):
    """params `tracking.uri`, else $MLFLOW_TRACKING_URI, else mlflow.db at the project root; a
    relative SQLite path is taken from the project root."""
    uri = tracking_hp.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = uri.removeprefix(SQLITE)
    if uri.startswith(SQLITE) and not path.startswith("/"):
        return f"{SQLITE}{paths.project_root() / path}"
    return uri


@contextlib.contextmanager
def opened(uri, experiment):
    """An MlflowClient of `uri`, held under the opening lock. A SQLite store that was moved or
    copied from another folder first records its artifacts beside it (lottery.moved_store)."""
    from mlflow.tracking import MlflowClient

    with _opening(uri):
        client = MlflowClient(uri)  # which opens the store
        if uri.startswith(SQLITE):
            moved_store.follow(uri.removeprefix(SQLITE), experiment)
        yield client


@contextlib.contextmanager
def _opening(uri):
    """Held while this process first opens a SQLite store: MLflow creates a new database's tables
    without a lock, and of two processes doing it at once one fails half-way (measured: 5 times in
    5 tries). Other stores need no lock here."""
    if not uri.startswith(SQLITE):
        yield
        return
    OPENING_LOCKS.mkdir(exist_ok=True)
    with open(OPENING_LOCKS / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def artifact_location(uri, experiment):
    """Artifacts of a SQLite store's experiment go beside the database. MLflow's default is
    `mlruns` in the working directory of the process that creates the experiment, which for a
    queued experiment is a temporary copy that DVC deletes. None (the server's choice) elsewhere."""
    if not uri.startswith(SQLITE):
        return None
    return str(Path(uri.removeprefix(SQLITE)).parent / "mlruns" / experiment)


def gave_up(uri):
    """Whether this process stopped tracking to `uri` (see give_up)."""
    return uri in _unreachable


def reachable(uri, fresh=False):
    """Whether the probe finds a store at `uri`; if not, this process gives up on it (one warning)."""
    answered, why = probe(uri, fresh=fresh)
    if not answered:
        give_up(uri, why)
        return False
    _unreachable.pop(uri, None)
    return True


def probe(uri, fresh=False):
    """(reachable, why not) for a tracking URI. Only HTTP(S) stores are probed; a recent answer,
    from this or another process, is reused unless `fresh`."""
    if not uri.startswith(("http://", "https://")):
        return True, ""
    if not fresh:
        try:
            cached = json.loads(_probe_file(uri).read_text())
            if time.time() - cached["at"] < PROBE_REUSE_S:
                return cached["reachable"], cached["why"]
        except (OSError, ValueError, KeyError):
            pass
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
            answered, why = True, ""
    except urllib.error.HTTPError:
        answered, why = True, ""  # it answered: the store is there
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        answered, why = False, f"no answer from {uri}/health within {PROBE_TIMEOUT_S:g} s: {reason}"
    _keep_answer(uri, answered, why)
    return answered, why


def forget_probe(uri):
    """Drop the kept probe answer for `uri` (and this process's verdict)."""
    _probe_file(uri).unlink(missing_ok=True)
    _unreachable.pop(uri, None)


def _keep_answer(uri, answered, why):
    try:
        io.write_json(_probe_file(uri), {"uri": uri, "reachable": answered, "why": why, "at": time.time()})
    except OSError:  # the answers are a cache: one not kept costs the next stage a probe, never its outputs
        pass


def _probe_file(uri):
    return PROBE_DIR / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}.json"


def give_up(uri, err):
    """Stop tracking to `uri` in this process and say so once. A failed call also counts as a failed
    probe for the stages after this one: a server whose /health answers while its API hangs would
    otherwise cost every stage a timeout."""
    if uri in _unreachable:
        return
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    _unreachable[uri] = message
    if uri.startswith(("http://", "https://")) and not isinstance(err, str):
        _keep_answer(uri, False, message[:200])
    # A user error's line is ours and says what to do: shown whole. MLflow's may run on.
    shown = message if isinstance(err, UserError) else message[:200]
    print(
        f"warning: MLflow tracking unavailable, results kept in DVC outputs; `lottery sync` adds them later "
        f"({shown})",
        file=sys.stderr,
    )
