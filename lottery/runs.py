"""One lineage's runs in one MLflow experiment, found by their tags.

A lineage (lottery.provenance) has one parent run, one child run per round and a nested run per
control. Runs are found by tags (lineage, kind, round, control) rather than remembered, so every
stage of a round logs into the same child run and running a stage twice never makes a second run.
"""

from lottery import identity, mlflow_connection, provenance, records

LINEAGE_TAG = "lottery.lineage"
ROUND_TAG = "lottery.round"
KIND_TAG = "lottery.kind"
CONTROL_TAG = "lottery.control"
# A final metric every round's run carries once its results are logged.
COMPLETE_METRIC = "test_accuracy_at_early_stop"


class RunIndex:
    """One lineage's runs in one MLflow experiment, as seen by this process: their ids, found or
    made. It serves every params file of that lineage, so it reads from `hp` only what names the
    lineage (seed, identity)."""

    def __init__(self, hp, uri):
        self.hp, self.uri = hp, uri
        self.lineage = provenance.lineage_id(hp)
        with mlflow_connection.opened(uri, hp.tracking.experiment) as client:
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
            return self.client.create_experiment(name, artifact_location=mlflow_connection.artifact_location(self.uri, name))
        except MlflowException:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def run_id(self, run, create=True):
        """The run carrying this lineage's and `run`'s tags; created if missing (unless `create` is False)."""
        if run not in self._ids:
            branch = {KIND_TAG: run.kind}
            if run.round is not None:
                branch[ROUND_TAG] = str(run.round)
            if run.control:
                branch[CONTROL_TAG] = run.control
            condition = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {LINEAGE_TAG: self.lineage, **branch}.items())
            found = self.client.search_runs(
                [self.experiment_id], filter_string=condition, order_by=["attributes.start_time ASC"], max_results=1
            )
            if found:
                self._ids[run] = found[0].info.run_id
            elif not create:
                return None
            else:
                tags = {LINEAGE_TAG: self.lineage, **branch, **self._creation_tags(run)}
                self._ids[run] = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        return self._ids[run]

    def forget(self, run):
        """Drop `run`'s id (its run was deleted since this process found it): run_id finds or makes another."""
        del self._ids[run]

    def _creation_tags(self, run):
        if run.kind == "lineage":
            return {
                "mlflow.runName": f"lineage-{self.lineage[:8]}",
                "lottery.params_hash": identity.params_hash(self.hp),
                "lottery.seed": str(self.hp.seed),
                **provenance.run_tags(self.hp),
            }
        if run.kind == "control":
            parent = self.run_id(records.branch_run(run.round))
            return {"mlflow.parentRunId": parent, "mlflow.runName": f"round-{run.round}-{run.control}"}
        tags = {"mlflow.parentRunId": self.run_id(records.LINEAGE), "mlflow.runName": f"round-{run.round}"}
        if run.round > 0:
            tags["lottery.previous_round_run_id"] = self.run_id(records.branch_run(run.round - 1))
        return tags

    def run_ids(self, rounds):
        """{'parent_run_id': ..., 'round_run_ids': {round: id}} of rounds 0..`rounds` that have a run."""
        rounds = {r: self.run_id(records.branch_run(r), create=False) for r in range(rounds + 1)}
        return {"parent_run_id": self.run_id(records.LINEAGE), "round_run_ids": {str(r): i for r, i in rounds.items() if i}}

    def mark_failed(self, run):
        """Mark `run` FAILED, if it exists."""
        run_id = self.run_id(run, create=False)
        if run_id:
            self.client.set_terminated(run_id, "FAILED")
