"""The lineages one MLflow experiment holds, read back: a lineage's parent run with its round and
control runs, and a round's mask.

A lineage is named by its parent run id, its DVC experiment name, its run name, or a prefix
(at least 6 characters) of its parent run id or lineage hash.
"""

import math
import tempfile
from dataclasses import dataclass

from lottery import mlflow_connection
from lottery.errors import UserError
from lottery.io import load_torch
from lottery.provenance import EXPERIMENT_TAG, REPLICATE_TAG
from lottery.runs import CONTROL_TAG, KIND_TAG, LINEAGE_TAG, ROUND_TAG

ROUND_METRICS = (
    "weights_remaining",
    "test_accuracy_at_early_stop",
    "early_stop_iteration",
    "final_test_accuracy",
    # Absent (None) in lineages without a weight-agnostic evaluation.
    "weight_agnostic_mean_accuracy",
    "weight_agnostic_best_accuracy",
)
# compact@r's deterministic figures, shown and diffed beside them (latency is a measurement: it
# would differ run to run). `reproduce` checks the round metrics files' ROUND_METRICS alone.
COMPRESSION_METRICS = ("compression.parameter_ratio", "compression.flops_speedup")
SHOWN_METRICS = ROUND_METRICS + COMPRESSION_METRICS


class LineageError(UserError, RuntimeError):
    """A lineage that cannot be found, or cannot be compared or reproduced."""


@dataclass
class LineageRecord:
    """A lineage as the tracking store holds it: its parent run and its round and control runs."""

    parent: object  # the MLflow parent Run
    branches: dict  # (round, control or None) -> Run

    @property
    def name(self):
        return self.parent.data.tags.get("mlflow.runName", self.parent.info.run_id)

    @property
    def rounds(self):
        return sorted(r for r, control in self.branches if control is None)

    def metrics(self, round_, control=None):
        run = self.branches.get((round_, control))
        return {key: current(run, key) for key in SHOWN_METRICS} if run else None

    def ranks(self, round_):
        """A factorized round's {layer: rank} (its prune@r `rank.<layer>` params); {} for a mask."""
        run = self.branches.get((round_, None))
        params = run.data.params if run else {}
        return {key.removeprefix("rank."): int(value) for key, value in params.items() if key.startswith("rank.")}


class LineageCatalog:
    """Read access to one MLflow experiment's lineages."""

    def __init__(self, uri, experiment):
        with mlflow_connection.opened(uri, experiment) as client:
            self.client = client
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            raise LineageError(f"no MLflow experiment {experiment!r} at {uri}")
        self.experiment_id = found.experiment_id

    def _search(self, condition):
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=condition, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def parents(self, replicate_group=None):
        """Every lineage's parent run, or only those of one replicate group (same params but seed)."""
        condition = f"tags.`{KIND_TAG}` = 'lineage'"
        if replicate_group:
            condition += f" and tags.`{REPLICATE_TAG}` = '{replicate_group}'"
        return self._search(condition)

    def find(self, name):
        """The lineage named `name` (see the module docstring); a clear error if none or several."""
        matches = [
            parent
            for parent in self.parents()
            if name
            in (
                parent.info.run_id,
                parent.data.tags.get("mlflow.runName"),
                parent.data.tags.get(EXPERIMENT_TAG),
            )
            or (
                len(name) >= 6
                and (parent.info.run_id.startswith(name) or parent.data.tags.get(LINEAGE_TAG, "").startswith(name))
            )
        ]
        if not matches:
            raise LineageError(f"{name!r}: no lineage has that run id, DVC experiment, run name or hash")
        if len(matches) > 1:
            ids = ", ".join(p.info.run_id for p in matches)
            raise LineageError(f"{name!r}: names {len(matches)} lineages ({ids}); use a parent run id")
        return self.load(matches[0])

    def load(self, parent):
        runs = self._search(f"tags.`{LINEAGE_TAG}` = '{parent.data.tags[LINEAGE_TAG]}'")
        branches = {
            (int(run.data.tags[ROUND_TAG]), run.data.tags.get(CONTROL_TAG)): run
            for run in runs
            if ROUND_TAG in run.data.tags
        }
        return LineageRecord(parent=parent, branches=branches)

    def mask(self, lineage, round_):
        """The round's mask from its run's `mask.pt` artifact, or None if the run has none."""
        run = lineage.branches.get((round_, None))
        if run is None or "mask.pt" not in {a.path for a in self.client.list_artifacts(run.info.run_id)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run.info.run_id, "mask.pt", tmp)
            return load_torch(local)


def current(run, key):
    """A run's current value of metric `key`; None where it has none (a NaN point: no file holds
    it any more, lottery.publishing)."""
    value = run.data.metrics.get(key)
    return None if value is None or math.isnan(value) else value
