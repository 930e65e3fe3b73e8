"""Replicates: the lineages that differ only in their seed, aggregated from the MLflow store.

Each seed is a full lineage (its own init, data order and masks), usually one DVC experiment:
`dvc exp run -S seed=1`. This gathers the round and control runs of every lineage in the
current params' replicate group and reports them over seeds, like `report` does for one seed.
"""

from lottery import paths, report, tracking
from lottery.io import write_json, write_text


class ReplicateError(RuntimeError):
    """A seed's lineage lacks a round or control that params ask for."""


def measurements(hp):
    """{branch: {round: [metrics per seed]}} for the rounds and controls in `hp`, seeds in order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(hp.tracking))
    experiment = client.get_experiment_by_name(hp.tracking.experiment)
    if experiment is None:
        raise ReplicateError(f"tracking.experiment = {hp.tracking.experiment!r}: no such MLflow experiment")
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{tracking.REPLICATE_TAG}` = '{hp.replicate_group}' and tags.`{tracking.KIND_TAG}` = 'lineage'",
    )
    if not parents:
        raise ReplicateError("no lineage of these params in MLflow yet: run the pipeline first")
    by_seed = {int(p.data.tags["lottery.seed"]): p.data.tags[tracking.LINEAGE_TAG] for p in parents}
    wanted = [(r, None) for r in range(hp.rounds + 1)] + [(r, c) for r in range(1, hp.rounds + 1) for c in hp.controls.run]
    result = {}
    for seed, lineage in sorted(by_seed.items()):
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{tracking.LINEAGE_TAG}` = '{lineage}'")
        found = {
            (int(run.data.tags[tracking.ROUND_TAG]), run.data.tags.get(tracking.CONTROL_TAG)): run.data.metrics
            for run in runs
            if tracking.ROUND_TAG in run.data.tags and tracking.COMPLETE_METRIC in run.data.metrics
        }
        for round_, control in wanted:
            if (round_, control) not in found:
                branch = f"round {round_}" + (f" control {control}" if control else "")
                raise ReplicateError(f"seed {seed}: {branch} has no results in MLflow (run it, or `report` to fill in)")
            result.setdefault(control or report.TICKET, {}).setdefault(round_, []).append(found[round_, control])
    return result


def summarize(hp):
    """Aggregate the replicate group over seeds into metrics/replicates.json, a CSV and a figure."""
    summary = report.summarize(measurements(hp), hp.report.tolerance)
    write_json(paths.replicates_summary(), summary)
    write_text(paths.replicates_plot_data(), report.rounds_csv(summary))
    report.figure(summary, paths.replicates_figure())
    return summary
