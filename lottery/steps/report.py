"""report: the lineage at a glance, and its MLflow records completed from the DVC outputs."""

from lottery import checkpoints, early_bird, masks, paths, records, report, report_tables, tracking
from lottery.io import read_json, write_json, write_text
from lottery.steps.common import test_split
from lottery.steps.schedule import retrain_schedule

# Real test images the registered model is traced on and shows as its input example.
EXAMPLE_IMAGES = 4


def summarize(hp):
    """All rounds and controls in one table and figure, and the lineage in one row (its headline);
    the lineage in MLflow completed from DVC outputs; the smallest matching ticket's compact model
    registered; the compression table and the Early-Bird's savings."""
    measurements = {}
    for round_, name in hp.branches():
        measurements.setdefault(name or report.TICKET, {})[round_] = [read_json(paths.round_metrics(round_, name))]
    summary = report.summarize(measurements, hp.report.tolerance)
    summary["early_bird"] = _early_bird_savings(hp)
    write_json(paths.summary(), summary)
    write_json(paths.headline(), report.headline(summary), sort_keys=False)
    write_text(paths.rounds_plot_data(), report.rounds_csv(summary))
    report.figure(summary, paths.rounds_figure())
    compressions = [read_json(paths.compression_report(round_)) for round_ in range(1, hp.rounds + 1)]
    write_text(paths.compression_plot_data(), report.compression_csv(compressions))
    tracking.write_lineage_file(paths.lineage_file(), hp, sync(hp))
    ticket = summary["smallest_matching_ticket"]
    if hp.tracking.registered_model and ticket:
        # The compact form: channels removed, or the sparse ticket loaded back to its masked weights.
        model, _ = checkpoints.load_model(paths.compact_model(ticket["round"]))
        example = test_split(hp).x[:EXAMPLE_IMAGES].numpy()
        tracking.register_ticket(hp, model, ticket["round"], example)
    print(report.format_table(summary))
    print(report_tables.format_compression_table(compressions))
    if summary["early_bird"]:
        print(report.format_early_bird(summary["early_bird"]))


def sync(hp, fresh_probe=False):
    """Publish every record whose DVC outputs are in the workspace (lottery.records.everything);
    return the lineage's run ids (tracking.run_ids).

    Idempotent, so it can run after every stage that DVC restored from its cache, and after any
    tracking outage. `fresh_probe` asks the store afresh whether it is reachable (`lottery sync`
    does) rather than reusing a recent answer (the `report` stage does, like every stage)."""
    tracking.publish(hp, *records.everything(hp), fresh_probe=fresh_probe)
    return tracking.run_ids(hp)


def _early_bird_savings(hp):
    """The Early-Bird's compute against full training, both followed by round 1's retraining."""
    searched = read_json(paths.early_bird_report())
    if not searched["enabled"]:
        return None
    model, _ = checkpoints.load_model(paths.start_weights(1))
    schedule, start = retrain_schedule(hp, model, masks.load(paths.mask(1), model))
    flops = read_json(paths.compression_report(1))
    saved = early_bird.savings(
        searched,
        retrain_iterations=schedule.iterations - start,
        dense_flops=flops["dense"]["flops"],
        pruned_flops=flops["compact"]["flops"],
        full_iterations=hp.train.iterations,
        batch_size=hp.train.batch_size,
    )
    return {"epoch": searched["epoch"], **saved}
