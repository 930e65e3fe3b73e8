"""MLflow lineage, as the stages log it: one parent run per lineage, one child run per round, a
nested run per control (lottery.runs), each made to hold its records' values (lottery.publishing),
a round's ticket in the Model Registry (lottery.model_registry).

Tracking is a side channel: every function here does its part or, when the store cannot be reached
or a call fails, warns once and goes on (lottery.mlflow_connection), so tracking never costs a
stage its outputs.
"""

from lottery import io, mlflow_connection, model_registry, provenance, records
from lottery.publishing import Publisher
from lottery.runs import RunIndex

_indexes = {}  # (uri, experiment, lineage) -> RunIndex, for this process


def publish(hp, *items, fresh_probe=False):
    """Log records into the lineage's runs; on an unreachable store, warn once and go on."""
    _tracked(hp, lambda runs: Publisher(runs).publish(*items), fresh_probe=fresh_probe)


def branch_failed(hp, round_=0, control=None):
    """Mark a round's run (or its control's) FAILED, if it exists: a stage of it raised."""
    _tracked(hp, lambda runs: runs.mark_failed(records.branch_run(round_, control)))


def lineage_failed(hp):
    """Mark the lineage's parent run FAILED, if it exists: init or report raised."""
    _tracked(hp, lambda runs: runs.mark_failed(records.LINEAGE))


def run_ids(hp):
    """{'parent_run_id': ..., 'round_run_ids': {round: id}} of the lineage (None where unreachable)."""
    return _tracked(hp, lambda runs: runs.run_ids(hp.rounds), default={"parent_run_id": None, "round_run_ids": {}})


def register_ticket(hp, model, round_, example):
    """Register a round's ticket in the Model Registry once (lottery.model_registry); its version, or None."""
    return _tracked(hp, lambda runs: model_registry.register(runs, hp.tracking.registered_model, model, round_, example))


def write_lineage_file(path, hp, ids):
    """models/lineage.json: where the lineage's runs are (`ids` from run_ids)."""
    io.write_json(
        path,
        {
            "lineage": provenance.lineage_id(hp),
            "tracking_uri": mlflow_connection.tracking_uri(hp.tracking),
            "experiment": hp.tracking.experiment,
            **ids,
        },
    )


def _tracked(hp, action, default=None, fresh_probe=False):
    """`action(runs)` on the lineage's RunIndex, or `default` where the store is unreachable or the
    call fails (then this process warns once and stops tracking)."""
    uri = mlflow_connection.tracking_uri(hp.tracking)
    try:
        runs = _run_index(hp, uri, fresh_probe)  # finding the runs (a probe, a lineage id) may fail too
        return default if runs is None else action(runs)
    except Exception as err:
        mlflow_connection.give_up(uri, err)
        return default


def _run_index(hp, uri, fresh_probe=False):
    """The lineage's RunIndex at `uri`, made once per process; None where the store is unreachable."""
    if mlflow_connection.gave_up(uri) and not fresh_probe:
        return None
    key = (uri, hp.tracking.experiment, provenance.lineage_id(hp))
    if key in _indexes and not fresh_probe:  # reached already in this process
        return _indexes[key]
    if not mlflow_connection.reachable(uri, fresh=fresh_probe):
        return None
    if key not in _indexes:
        try:
            _indexes[key] = RunIndex(hp, uri)
        except Exception as err:
            mlflow_connection.give_up(uri, err)
            return None
    return _indexes[key]
