"""MLflow lineage: one parent run per lineage, one child run per round.

Runs are found by tags (lineage hash, round) rather than remembered, so every stage of a round
logs into the same child run, a stage that DVC restored from its cache leaves nothing missing
that `report` cannot fill in, and running a stage twice never duplicates a run. Tracking is a
side channel: when the store cannot be reached, a stage warns in one line and still finishes.
"""

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

from lottery import io

DEFAULT_URI = "sqlite:///mlflow.db"
LINEAGE_TAG = "lottery.lineage"
ROUND_TAG = "lottery.round"
KIND_TAG = "lottery.kind"
CONTROL_TAG = "lottery.control"
REPLICATE_TAG = "lottery.replicate_group"
MASK_DIGEST_TAG = "lottery.mask_sha256"
PARAMS_ARTIFACT = "params.yaml"
# A final metric every round's run carries once its results are logged.
COMPLETE_METRIC = "test_accuracy_at_early_stop"

# An unreachable server should cost seconds, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def tracking_uri(tracking_hp):
    return tracking_hp.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class Lineage:
    """The MLflow runs of one lineage (one params set), created on first use."""

    def __init__(self, hp):
        from mlflow.tracking import MlflowClient

        self.hp = hp
        self.client = MlflowClient(tracking_uri(hp.tracking))
        experiment = self.client.get_experiment_by_name(hp.tracking.experiment)
        self.experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(hp.tracking.experiment)
        )
        self._parent = None

    def parent_run_id(self):
        if self._parent is None:
            self._parent = self._find_or_create({KIND_TAG: "lineage"}, self._parent_tags)
        return self._parent

    def round_run_id(self, round_):
        return self._find_or_create({KIND_TAG: "round", ROUND_TAG: str(round_)}, lambda: self._round_tags(round_))

    def control_run_id(self, round_, control):
        """A control branch's run, nested under its round's run."""
        identity = {KIND_TAG: "control", ROUND_TAG: str(round_), CONTROL_TAG: control}
        return self._find_or_create(
            identity,
            lambda: {"mlflow.parentRunId": self.round_run_id(round_), "mlflow.runName": f"round-{round_}-{control}"},
        )

    def _find_or_create(self, identity, creation_tags):
        """The run of this lineage carrying the `identity` tags; created (with `creation_tags()`) if none."""
        condition = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {LINEAGE_TAG: self.hp.lineage_hash, **identity}.items())
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=condition, order_by=["attributes.start_time ASC"], max_results=1
        )
        if runs:
            return runs[0].info.run_id
        tags = {LINEAGE_TAG: self.hp.lineage_hash, **identity, **creation_tags()}
        run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        if identity[KIND_TAG] == "lineage":
            self._log(run_id, params=flatten(self.hp.raw))
            # The exact params, typed, so `lottery lineage reproduce` can run them again.
            self.client.log_text(run_id, yaml.safe_dump(self.hp.raw, sort_keys=False), PARAMS_ARTIFACT)
        return run_id

    def _parent_tags(self):
        return {
            "mlflow.runName": f"lineage-{self.hp.lineage_hash[:8]}",
            "lottery.params_hash": self.hp.lineage_hash,
            REPLICATE_TAG: self.hp.replicate_group,
            "lottery.seed": str(self.hp.seed),
            "lottery.git_commit": _git_commit(),
            "lottery.dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
        }

    def _round_tags(self, round_):
        tags = {"mlflow.parentRunId": self.parent_run_id(), "mlflow.runName": f"round-{round_}"}
        if round_ > 0:
            tags["lottery.previous_round_run_id"] = self.round_run_id(round_ - 1)
        return tags

    def _log(self, run_id, metrics=None, params=None, tags=None, step=0):
        from mlflow.entities import Metric, Param, RunTag

        timestamp = _now_ms()
        metrics = [Metric(k, float(v), timestamp, step) for k, v in (metrics or {}).items()]
        params = [Param(k, str(v)) for k, v in (params or {}).items()]
        tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for start in range(0, max(len(metrics), len(params), len(tags)), 100):
            self.client.log_batch(
                run_id,
                metrics=metrics[start : start + 100],
                params=params[start : start + 100],
                tags=tags[start : start + 100],
            )


class RoundRun:
    """What a stage logs into its round's child run."""

    def __init__(self, lineage, run_id):
        self.lineage, self.run_id = lineage, run_id

    def log(self, metrics=None, params=None, tags=None, step=0):
        self.lineage._log(self.run_id, metrics=metrics, params=params, tags=tags, step=step)

    def log_curve(self, curve):
        """Step metrics: one point per evaluation, stepped by training iteration."""
        from mlflow.entities import Metric

        timestamp = _now_ms()
        points = [
            Metric(key, float(value), timestamp, point["iteration"])
            for point in curve
            for key, value in point.items()
            if key != "iteration"
        ]
        for start in range(0, len(points), 1000):
            self.lineage.client.log_batch(self.run_id, metrics=points[start : start + 1000])

    def log_artifact(self, path):
        self.lineage.client.log_artifact(self.run_id, str(path))

    def log_artifact_once(self, path):
        """Log a file unless the run already holds an artifact of that name."""
        present = {artifact.path for artifact in self.lineage.client.list_artifacts(self.run_id)}
        if Path(path).name not in present:
            self.log_artifact(path)

    def has_results(self):
        return COMPLETE_METRIC in self.lineage.client.get_run(self.run_id).data.metrics


class _Untracked:
    """Stands in for a run when the tracking store cannot be reached: logs nothing."""

    run_id = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@contextmanager
def round_run(hp, round_, stage, control=None):
    """The round's child run (or its control's nested run), tagged with the DVC stage that logs into it."""
    try:
        lineage = Lineage(hp)
        run_id = lineage.control_run_id(round_, control) if control else lineage.round_run_id(round_)
        run = RoundRun(lineage, run_id)
        run.log(tags={f"dvc.stage.{stage.split('@')[0]}": os.environ.get("DVC_STAGE", stage)})
    except Exception as err:  # tracking must never cost a stage its outputs
        _warn(err)
        run = _Untracked()
    yield run
    _finish(run)


def open_lineage(hp):
    """The lineage's parent run id, created if new; None (and a warning) if the store is unreachable."""
    return guarded(lambda: Lineage(hp).parent_run_id())


@contextmanager
def parent_run(hp):
    try:
        lineage = Lineage(hp)
        run = RoundRun(lineage, lineage.parent_run_id())
    except Exception as err:
        _warn(err)
        run = _Untracked()
    yield run
    _finish(run)


def _finish(run):
    if run.run_id is None:
        return
    try:
        run.lineage.client.set_terminated(run.run_id)
    except Exception as err:
        _warn(err)


def publish_metrics(path, metrics, run, step=0):
    """The one place round metrics are written: the DVC metrics file, then the same numbers to MLflow."""
    io.write_json(path, metrics)
    guarded(run.log, metrics={k: v for k, v in numeric_metrics(metrics)}, step=step)


def guarded(call, *args, **kwargs):
    """Run a tracking call; on failure warn in one line and go on."""
    try:
        return call(*args, **kwargs)
    except Exception as err:
        _warn(err)
        return None


def flatten(tree, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def numeric_metrics(metrics):
    """The numeric leaves of a (nested) metrics dict, as flat (name, value) pairs."""
    for key, value in flatten(metrics).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _now_ms():
    import time

    return int(time.time() * 1000)


def _warn(err):
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"warning: MLflow tracking unavailable, results kept in DVC outputs only ({message[:200]})", file=sys.stderr)


def register_ticket(hp, model, round_):
    """Log a round's trained ticket as an MLflow PyTorch model on the lineage's parent run and
    register it in the Model Registry, tagged with its lineage, round and DVC experiment.

    The model is saved with `mlflow.pytorch.save_model` and logged through this lineage's own
    client rather than with `log_model`: `log_model` needs MLflow's process-global tracking URI
    and active run, which would leak into whatever the calling process does next.
    """
    import tempfile

    import mlflow.pytorch
    import torch
    from mlflow.exceptions import MlflowException

    lineage = Lineage(hp)
    client, parent = lineage.client, lineage.parent_run_id()
    artifact_path = f"ticket-round-{round_}"
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pytorch.save_model(
            model,
            f"{tmp}/{artifact_path}",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            serialization_format="pickle",  # pt2, the default, needs an input example to trace
        )
        client.log_artifacts(parent, f"{tmp}/{artifact_path}", artifact_path)
    name = hp.tracking.registered_model
    try:
        client.create_registered_model(name)
    except MlflowException:  # it exists already: this ticket becomes its next version
        pass
    tags = {
        LINEAGE_TAG: hp.lineage_hash,
        ROUND_TAG: str(round_),
        "lottery.parent_run_id": parent,
        "lottery.dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
    }
    source = f"{client.get_run(parent).info.artifact_uri}/{artifact_path}"
    return client.create_model_version(name, source, run_id=parent, tags=tags).version


def write_lineage_file(path, lineage_run, round_runs, hp):
    io.write_json(
        path,
        {
            "lineage": hp.lineage_hash,
            "tracking_uri": tracking_uri(hp.tracking),
            "experiment": hp.tracking.experiment,
            "parent_run_id": lineage_run,
            "round_run_ids": {str(r): run_id for r, run_id in round_runs.items()},
        },
    )
