"""MLflow lineage: one parent run per lineage, one child run per round, a nested run per control.

A lineage is one configuration of code and params (lottery.provenance). Runs are found by tags
(lineage, kind, round, control) rather than remembered, so every stage of a round logs into the
same child run and running a stage twice never duplicates a run. `publish` makes a run's current
values those of a record (lottery.records), logging only what differs: a metric point where the
value at that step is missing or differs (stamped after every point of that metric, so it becomes
the current one), a NaN point where a whole record no longer holds a metric or a series no longer
holds a step, a file or text where its sha256 differs from the run's `lottery.artifact_sha256.<name>`
tag, a tag where it differs, a param where the run lacks it (params follow from the params that
name the lineage, so they never change). Publishing the same record again logs nothing; the run is
then marked FINISHED (FAILED if logging broke off).

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
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from lottery import deps, identity, io, moved_store, paths, provenance, records
from lottery.errors import UserError

DEFAULT_URI = "sqlite:///mlflow.db"
LINEAGE_TAG = "lottery.lineage"
ROUND_TAG = "lottery.round"
KIND_TAG = "lottery.kind"
CONTROL_TAG = "lottery.control"
REPLICATE_TAG = "lottery.replicate_group"
CODE_TAG = "lottery.code"
COMMIT_TAG = "lottery.git_commit"
DIRTY_TAG = "lottery.git_dirty"
EXPERIMENT_TAG = "lottery.dvc_experiment"
ARTIFACT_DIGEST_TAG = "lottery.artifact_sha256."  # prefix: the sha256 of the artifact of that name, as uploaded
# A final metric every round's run carries once its results are logged.
COMPLETE_METRIC = "test_accuracy_at_early_stop"

PROBE_TIMEOUT_S = 3.0
PROBE_REUSE_S = 300.0
PROBE_DIR = Path(tempfile.gettempdir()) / f"lottery-tracking-probes-{os.getuid()}"  # one user's answers, as the locks
SQLITE = "sqlite:///"
OPENING_LOCKS = Path(tempfile.gettempdir()) / f"lottery-sqlite-opening-{os.getuid()}"

# A server that stops answering mid-stage costs one timeout, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

_stores = {}  # (uri, experiment, lineage) -> Store, for this process
_unreachable = {}  # uri -> why, once this process has given up on it


def tracking_uri(tracking_hp):
    """params `tracking.uri`, else $MLFLOW_TRACKING_URI, else mlflow.db at the project root; a
    relative SQLite path is taken from the project root."""
    uri = tracking_hp.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = uri.removeprefix(SQLITE)
    if uri.startswith(SQLITE) and not path.startswith("/"):
        return f"{SQLITE}{paths.project_root() / path}"
    return uri


def publish(hp, *items, fresh_probe=False):
    """Log records into the lineage's runs; on an unreachable store, warn once and go on."""
    _tracked(hp, lambda store: store.publish(*items), fresh_probe=fresh_probe)


def branch_failed(hp, round_=0, control=None):
    """Mark a round's run (or its control's) FAILED, if it exists: a stage of it raised."""
    _tracked(hp, lambda store: store.mark_failed(records.branch_run(round_, control)))


def lineage_failed(hp):
    """Mark the lineage's parent run FAILED, if it exists: init or report raised."""
    _tracked(hp, lambda store: store.mark_failed(records.LINEAGE))


def run_ids(hp):
    """{'parent_run_id': ..., 'round_run_ids': {round: id}} of the lineage (None where unreachable)."""
    return _tracked(hp, lambda store: store.run_ids(hp.rounds), default={"parent_run_id": None, "round_run_ids": {}})


def register_ticket(hp, model, round_, example):
    """Register a round's ticket in the Model Registry once (see Store.register); its version, or None."""
    return _tracked(hp, lambda store: store.register(hp.tracking.registered_model, model, round_, example))


def _tracked(hp, action, default=None, fresh_probe=False):
    """`action(store)` on the lineage's store, or `default` where the store is unreachable or the
    call fails (then this process warns once and stops tracking): tracking never costs a stage its
    outputs."""
    uri = tracking_uri(hp.tracking)
    try:
        store = _store(hp, fresh_probe)  # finding the store (a probe, a lineage id) may fail too
        return default if store is None else action(store)
    except Exception as err:
        _give_up(uri, err)
        return default


class Store:
    """One lineage's runs in one MLflow experiment, as seen by this process. It serves every params
    file of that lineage, so it reads from `hp` only what names the lineage (seed, identity)."""

    def __init__(self, hp, uri):
        self.hp, self.uri = hp, uri
        self.lineage = provenance.lineage_id(hp)
        with opened(uri, hp.tracking.experiment) as client:
            self.client = client
            self.experiment_id = self._experiment_id(hp.tracking.experiment)
        self._ids = {}

    def _experiment_id(self, name):
        """The experiment's id, created if missing. Another process may create it between our
        lookup and our creation (two queued experiments that start at once on one server): then
        we take theirs."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=_artifact_location(self.uri, name))
        except MlflowException:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def run_id(self, run, create=True):
        """The run carrying this lineage's and `run`'s tags; created if missing (unless `create` is False)."""
        if run not in self._ids:
            identity = {KIND_TAG: run.kind}
            if run.round is not None:
                identity[ROUND_TAG] = str(run.round)
            if run.control:
                identity[CONTROL_TAG] = run.control
            condition = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {LINEAGE_TAG: self.lineage, **identity}.items())
            found = self.client.search_runs(
                [self.experiment_id], filter_string=condition, order_by=["attributes.start_time ASC"], max_results=1
            )
            if found:
                self._ids[run] = found[0].info.run_id
            elif not create:
                return None
            else:
                tags = {LINEAGE_TAG: self.lineage, **identity, **self._creation_tags(run)}
                self._ids[run] = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        return self._ids[run]

    def _creation_tags(self, run):
        if run.kind == "lineage":
            git = provenance.git_state()
            return {
                "mlflow.runName": f"lineage-{self.lineage[:8]}",
                "lottery.params_hash": identity.params_hash(self.hp),
                CODE_TAG: deps.code_digest(),
                REPLICATE_TAG: provenance.replicate_group(self.hp),
                "lottery.seed": str(self.hp.seed),
                COMMIT_TAG: git["commit"],
                DIRTY_TAG: str(git["dirty"]).lower(),
                EXPERIMENT_TAG: provenance.dvc_experiment(),
            }
        if run.kind == "control":
            parent = self.run_id(records.branch_run(run.round))
            return {"mlflow.parentRunId": parent, "mlflow.runName": f"round-{run.round}-{run.control}"}
        tags = {"mlflow.parentRunId": self.run_id(records.LINEAGE), "mlflow.runName": f"round-{run.round}"}
        if run.round > 0:
            tags["lottery.previous_round_run_id"] = self.run_id(records.branch_run(run.round - 1))
        return tags

    def run_ids(self, rounds):
        rounds = {r: self.run_id(records.branch_run(r), create=False) for r in range(rounds + 1)}
        return {"parent_run_id": self.run_id(records.LINEAGE), "round_run_ids": {str(r): i for r, i in rounds.items() if i}}

    def mark_failed(self, run):
        run_id = self.run_id(run, create=False)
        if run_id:
            self.client.set_terminated(run_id, "FAILED")

    def publish(self, *items):
        for record in items:
            self._publish(record)

    def _publish(self, record):
        from mlflow.entities import Param, RunTag

        run_id = self.run_id(record.run)
        found = self.client.get_run(run_id)
        if found.info.lifecycle_stage == "deleted":  # deleted since this process found it: find or make another
            del self._ids[record.run]
            run_id = self.run_id(record.run)
            found = self.client.get_run(run_id)
        status = "FAILED"
        try:
            held = found.data
            tags = dict(record.tags)
            if record.run == records.LINEAGE:
                tags.update(_provenance_updates(held.tags))
            tags.update(self._upload_changed(run_id, record, held.tags))
            params = [Param(k, str(v)) for k, v in record.params.items() if k not in held.params]
            changed = [RunTag(k, str(v)) for k, v in tags.items() if held.tags.get(k) != str(v)]
            self._log_batch(run_id, self._metric_updates(run_id, record, held.metrics), params, changed)
            status = "FINISHED"
        finally:
            self.client.set_terminated(run_id, status)

    def _upload_changed(self, run_id, record, held_tags):
        """Upload the record's files and texts whose sha256 differs from the digest tag the run
        holds for that name; return the digest tags of those uploaded (set once the upload is done,
        so an upload that broke off is tried again)."""
        uploaded = {}
        with tempfile.TemporaryDirectory() as texts:
            files = [Path(path) for path in record.artifacts]
            for name, text in record.texts.items():
                files.append(Path(texts) / name)
                files[-1].write_text(text, encoding="utf-8")
            for path in files:
                tag, digest = f"{ARTIFACT_DIGEST_TAG}{path.name}", hashlib.sha256(path.read_bytes()).hexdigest()
                if held_tags.get(tag) != digest:
                    self.client.log_artifact(run_id, str(path))
                    uploaded[tag] = digest
        return uploaded

    def _metric_updates(self, run_id, record, held):
        """The metric points that make the run's current values the record's. `held`: the run's
        latest value per metric. A step-0 metric that holds its value already costs no look-up; any
        other metric's history is read to find what changed."""
        wanted = {key: {0: value} for key, value in record.metrics.items()}
        wanted.update({key: dict(points) for key, points in record.series.items()})
        if record.whole:  # a metric no file holds any more: no current value
            wanted.update({key: {} for key, value in held.items() if key not in wanted and not math.isnan(value)})
        now = int(time.time() * 1000)
        updates = []
        for key, points in wanted.items():
            if key in record.metrics and key in held and _same(held[key], record.metrics[key]):
                continue
            history = self.client.get_metric_history(run_id, key) if key in held else []
            updates += _changes(key, points, history, now)
        return updates

    def _log_batch(self, run_id, metrics, params, tags):
        # One call when everything fits MLflow's batch limits: 1000 metrics, 100 params, 100 tags.
        calls = max(math.ceil(len(metrics) / 1000), math.ceil(len(params) / 100), math.ceil(len(tags) / 100))
        for i in range(calls):
            self.client.log_batch(
                run_id,
                metrics=metrics[1000 * i : 1000 * (i + 1)],
                params=params[100 * i : 100 * (i + 1)],
                tags=tags[100 * i : 100 * (i + 1)],
            )

    def register(self, name, model, round_, example):
        """Log a round's ticket as an MLflow PyTorch model on the parent run and register it as
        `name`, unless this lineage registered that round there already.

        The model is saved in MLflow's safe `pt2` format (torch.export, no pickled code), traced on
        `example` (a few real inputs), with `mlflow.pytorch.save_model`, then logged through this
        store's client: `log_model` would set MLflow's process-wide tracking URI and active run.
        """
        import mlflow.pytorch
        import torch

        parent = self.run_id(records.LINEAGE)
        for version in self.client.search_model_versions(f"name = '{name}' and run_id = '{parent}'"):
            if version.tags.get(ROUND_TAG) == str(round_):
                return version.version
        artifact_path = f"ticket-round-{round_}"
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pytorch.save_model(
                model.eval(),
                f"{tmp}/{artifact_path}",
                input_example=example,
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
            self.client.log_artifacts(parent, f"{tmp}/{artifact_path}", artifact_path)
        if not self.client.search_registered_models(f"name = '{name}'"):
            self.client.create_registered_model(name)
        tags = {
            LINEAGE_TAG: self.lineage,
            ROUND_TAG: str(round_),
            "lottery.parent_run_id": parent,
            EXPERIMENT_TAG: provenance.dvc_experiment(),
        }
        source = f"{self.client.get_run(parent).info.artifact_uri}/{artifact_path}"
        return self.client.create_model_version(name, source, run_id=parent, tags=tags).version


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


def _artifact_location(uri, experiment):
    """Artifacts of a SQLite store's experiment go beside the database. MLflow's default is
    `mlruns` in the working directory of the process that creates the experiment, which for a
    queued experiment is a temporary copy that DVC deletes. None (the server's choice) elsewhere."""
    if not uri.startswith(SQLITE):
        return None
    return str(Path(uri.removeprefix(SQLITE)).parent / "mlruns" / experiment)


def _changes(key, wanted, history, now):
    """The points of metric `key` that turn `history` into `wanted` ({step: value}): one where a
    step's current value (its newest point's) is missing or differs, NaN where a step holds a value
    `wanted` lacks. All carry one timestamp after every point held, so each becomes its step's
    current value even within the same millisecond (MLflow's latest point is the one of the highest
    step, then timestamp, then value)."""
    from mlflow.entities import Metric

    current = {}
    for point in sorted(history, key=lambda p: (p.timestamp, 0.0 if math.isnan(p.value) else p.value)):
        current[point.step] = point.value
    changed = {step: value for step, value in wanted.items() if step not in current or not _same(current[step], value)}
    changed.update({step: math.nan for step, value in current.items() if step not in wanted and not math.isnan(value)})
    stamp = max([now] + [point.timestamp + 1 for point in history])
    return [Metric(key, float(value), stamp, step) for step, value in changed.items()]


def _same(held, value):
    """Whether a metric value MLflow holds is `value`: NaN is NaN, and SQL stores keep ±inf as the
    largest finite float."""
    value = math.copysign(sys.float_info.max, value) if math.isinf(value) else float(value)
    return held == value or (math.isnan(held) and math.isnan(value))


def _provenance_updates(held):
    """A lineage first run from uncommitted code names a commit once that code is committed; one
    first run outside a DVC experiment names the experiment that runs it later."""
    updates = {}
    if held.get(DIRTY_TAG) == "true":
        git = provenance.git_state()
        if git["commit"] and not git["dirty"]:
            updates = {COMMIT_TAG: git["commit"], DIRTY_TAG: "false"}
    if not held.get(EXPERIMENT_TAG) and provenance.dvc_experiment():
        updates[EXPERIMENT_TAG] = provenance.dvc_experiment()
    return updates


def write_lineage_file(path, hp, ids):
    """models/lineage.json: where the lineage's runs are (`ids` from run_ids)."""
    io.write_json(
        path,
        {
            "lineage": provenance.lineage_id(hp),
            "tracking_uri": tracking_uri(hp.tracking),
            "experiment": hp.tracking.experiment,
            **ids,
        },
    )


# --- reachability -------------------------------------------------------------------------------


def _store(hp, fresh_probe=False):
    uri = tracking_uri(hp.tracking)
    if uri in _unreachable and not fresh_probe:
        return None
    key = (uri, hp.tracking.experiment, provenance.lineage_id(hp))
    if key in _stores and not fresh_probe:  # reached already in this process
        return _stores[key]
    reachable, why = probe(uri, fresh=fresh_probe)
    if not reachable:
        _give_up(uri, why)
        return None
    _unreachable.pop(uri, None)
    if key not in _stores:
        try:
            _stores[key] = Store(hp, uri)
        except Exception as err:
            _give_up(uri, err)
            return None
    return _stores[key]


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
            reachable, why = True, ""
    except urllib.error.HTTPError:
        reachable, why = True, ""  # it answered: the store is there
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        reachable, why = False, f"no answer from {uri}/health within {PROBE_TIMEOUT_S:g} s: {reason}"
    _keep_answer(uri, reachable, why)
    return reachable, why


def forget_probe(uri):
    """Drop the kept probe answer for `uri` (and this process's verdict)."""
    _probe_file(uri).unlink(missing_ok=True)
    _unreachable.pop(uri, None)


def _keep_answer(uri, reachable, why):
    try:
        io.write_json(_probe_file(uri), {"uri": uri, "reachable": reachable, "why": why, "at": time.time()})
    except OSError:  # the answers are a cache: one not kept costs the next stage a probe, never its outputs
        pass


def _probe_file(uri):
    return PROBE_DIR / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}.json"


def _give_up(uri, err):
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
