"""Publishing records (lottery.records) into a lineage's runs, logging only what differs.

`Publisher.publish` makes a run's current values those of a record: a metric point where the value
at that step is missing or differs (stamped after every point of that metric, so it becomes the
current one), a NaN point where a whole record no longer holds a metric or a series no longer
holds a step, a file or text where its sha256 differs from the run's `lottery.artifact_sha256.<name>`
tag, a tag where it differs, a param where the run lacks it (params follow from the params that
name the lineage, so they never change). Publishing the same record again logs nothing; the run is
then marked FINISHED (FAILED if logging broke off).
"""

import hashlib
import math
import sys
import tempfile
import time
from pathlib import Path

from lottery import provenance, records

ARTIFACT_DIGEST_TAG = "lottery.artifact_sha256."  # prefix: the sha256 of the artifact of that name, as uploaded


class Publisher:
    """Logs records into the runs of one lineage (a lottery.runs.RunIndex)."""

    def __init__(self, runs):
        self.runs, self.client = runs, runs.client

    def publish(self, *items):
        for record in items:
            self._publish(record)

    def _publish(self, record):
        from mlflow.entities import Param, RunTag

        run_id = self.runs.run_id(record.run)
        found = self.client.get_run(run_id)
        if found.info.lifecycle_stage == "deleted":  # deleted since this process found it: find or make another
            self.runs.forget(record.run)
            run_id = self.runs.run_id(record.run)
            found = self.client.get_run(run_id)
        status = "FAILED"
        try:
            held = found.data
            tags = dict(record.tags)
            if record.run == records.LINEAGE:
                tags.update(provenance.run_tag_updates(held.tags))
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
