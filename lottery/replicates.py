"""Replicates: the lineages that differ only in their seed, aggregated from the MLflow store.

Each seed is a full lineage (its own init, data order and masks), usually one DVC experiment:
`dvc exp run -S seed=1`. This gathers the round and control runs of every lineage in the
current params' replicate group (the same code and the same params but the seed) and reports
them over seeds, like `report` does for one seed.
"""

from lottery import mlflow_connection, paths, provenance, report
from lottery.errors import UserError
from lottery.io import write_json, write_text
from lottery.runs import COMPLETE_METRIC


class ReplicateError(UserError, RuntimeError):
    """A seed's lineage is missing, or lacks a round or control that params ask for."""


def measurements(hp, seeds=None):
    """{branch: {round: [metrics per seed]}} for the rounds and controls in `hp`, seeds in order:
    every seed in the store, or `seeds`, each of which must have a lineage there."""
    from lottery.lineage_catalog import LineageCatalog

    catalog = LineageCatalog(mlflow_connection.tracking_uri(hp.tracking), hp.tracking.experiment)
    parents = catalog.parents(replicate_group=provenance.replicate_group(hp))
    if seeds is not None:
        parents = _of_seeds(parents, seeds)
    if not parents:
        raise ReplicateError("no lineage of these params in MLflow yet: run the pipeline first")
    result = {}
    for parent in sorted(parents, key=lambda p: int(p.data.tags["lottery.seed"])):
        seed, branches = parent.data.tags["lottery.seed"], catalog.load(parent).branches
        for round_, control in hp.branches():
            run = branches.get((round_, control))
            if run is None or COMPLETE_METRIC not in run.data.metrics:
                branch = f"round {round_}" + (f" control {control}" if control else "")
                raise ReplicateError(f"seed {seed}: {branch} has no results in MLflow (run it, or `report` to fill in)")
            result.setdefault(control or report.TICKET, {}).setdefault(round_, []).append(run.data.metrics)
    return result


def _of_seeds(parents, seeds):
    """The parent runs of `seeds`. A seed without one is an error: its experiment failed or never
    ran (`dvc exp run --run-all` exits with status 0 when an experiment fails)."""
    found = {int(p.data.tags["lottery.seed"]): p for p in parents}
    missing = sorted(set(seeds) - set(found))
    if missing:
        raise ReplicateError(f"seeds {missing}: no lineage of these params in MLflow (did their experiments fail?)")
    return [found[seed] for seed in set(seeds)]  # measurements() puts them in seed order


def summarize(hp, seeds=None):
    """Aggregate the replicate group over seeds (all, or `seeds`) into metrics/replicates.json, a
    CSV and a figure."""
    summary = report.summarize(measurements(hp, seeds), hp.report.tolerance)
    write_json(paths.replicates_summary(), summary)
    write_text(paths.replicates_plot_data(), report.rounds_csv(summary))
    report.figure(summary, paths.replicates_figure())
    return summary
