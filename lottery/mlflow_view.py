"""What the MLflow UI shows of a lineage beyond the raw numbers, built from the report's files.

- The parent run's description (MLflow's `mlflow.note.content` tag, rendered as Markdown on the
  run's Overview): the smallest matching ticket, the round table (per round the weights remaining
  and, for the ticket and each control, the test accuracy at early stop, the early-stop iteration
  and the final test accuracy), the compression table, and which artifacts and charts hold the rest
  (the figure is `lottery.png` among the artifacts).
- The parent run's step metrics, step = round: `weights_remaining_percent` and, per branch,
  `<branch>.test_accuracy_at_early_stop` and `<branch>.early_stop_iteration`, so its Model
  metrics tab plots the lineage (its chart settings can put `weights_remaining_percent` on the X axis).
- Each round's and control's run: `weights_remaining_percent`, beside the `weights_remaining` and
  `test_accuracy_at_early_stop` it holds already, for a scatter chart over the rounds' runs.

lottery.records attaches these to the records it builds, so they change only when the files do
and publishing them again logs nothing. The view toggle is out of a project's reach: MLflow
3.17.2's UI opens an experiment in its GenAI view unless the browser chose "Model training" (kept
in its local storage) or the address asks for it (TRAINING_VIEW_QUERY); it reads the experiment's
`mlflow.experimentKind` tag only when a feature flag that this release hard-codes on is off.
"""

from lottery import report_tables

DESCRIPTION_TAG = "mlflow.note.content"
# MLflow cuts a longer tag value on its way in; the stored value would then differ from ours and be
# logged again on every publish.
DESCRIPTION_LIMIT = 8000
PERCENT_METRIC = "weights_remaining_percent"
PARENT_SERIES = ("test_accuracy_at_early_stop", "early_stop_iteration")
TRAINING_VIEW_QUERY = "workflowType=machine_learning"  # appended to a UI address: the runs, not the traces
ROUND_COLUMNS = (  # (metric, header, format of the value): short, as the description is half the page wide
    ("test_accuracy_at_early_stop", "acc.", lambda v: f"{100 * v:.2f}%"),
    ("early_stop_iteration", "stop", lambda v: f"{v:,.0f}"),
    ("final_test_accuracy", "final", lambda v: f"{100 * v:.2f}%"),
)
LEGEND = (
    "acc.: test accuracy at early stop (the iteration of lowest validation loss); stop: that iteration; "
    "final: test accuracy at the end of training. Means over seeds."
)
ARTIFACTS_LINE = (
    "Artifacts: `lottery.png` (the figure), `rounds.csv` (this table with min/max), `compression.csv`, "
    "`summary.json`, `params.yaml`. Charts: this run's Model metrics plot `<branch>.test_accuracy_at_early_stop` "
    f"per round (step = round; their settings can put `{PERCENT_METRIC}` on the X axis); each round's run "
    f"(expand this run in the Runs list) holds `{PERCENT_METRIC}` and `test_accuracy_at_early_stop` for a "
    "scatter chart."
)


def branch_metrics(metrics):
    """{weights_remaining_percent: ...} for a branch's metrics dict (a round metrics file); {} where
    it holds no weights_remaining."""
    if "weights_remaining" not in metrics:
        return {}
    return {PERCENT_METRIC: 100 * metrics["weights_remaining"]}


def parent_series(summary):
    """The round table as the parent run's step metrics, step = round: {name: [(round, value)]}."""
    rows = summary["rounds"]
    series = {PERCENT_METRIC: [(r["round"], 100 * r["weights_remaining"]) for r in rows]}
    for branch in branches(summary):
        for metric in PARENT_SERIES:
            series[f"{branch}.{metric}"] = [(r["round"], r[branch][metric]["mean"]) for r in rows if branch in r]
    return series


def description(summary, compressions, limit=DESCRIPTION_LIMIT):
    """The parent run's description: the smallest matching ticket, the round table and its legend,
    the compression table (`compressions`: compact@r's reports) and where the rest is, as Markdown
    of at most `limit` characters (see fit)."""
    sections = [smallest_line(summary), round_table(summary), LEGEND]
    if compressions:
        sections.append(report_tables.format_compression_table(compressions))
    return fit(sections + [ARTIFACTS_LINE], limit)


def smallest_line(summary):
    """One line: the smallest ticket within the tolerance of dense, or that none is."""
    dense = summary["dense"]["test_accuracy_at_early_stop"]["mean"]
    within = f"within {100 * summary['tolerance']:g} pp of dense's {100 * dense:.2f}% test accuracy at early stop"
    smallest = summary["smallest_matching_ticket"]
    if smallest is None:
        return f"**No pruned round is {within}.**"
    return (
        f"**Smallest matching ticket:** round {smallest['round']}, {weights(smallest['weights_remaining'])} of the "
        f"weights, {100 * smallest['test_accuracy_at_early_stop']:.2f}% ({within})."
    )


def round_table(summary):
    """Markdown: per round the weights remaining, each branch's ROUND_COLUMNS (means over seeds)
    and whether the ticket wins (LTH: no less accurate, no later early stop than dense)."""
    names = branches(summary)
    headers = ["round", "weights remaining"] + [f"{b} {header}" for b in names for _, header, _ in ROUND_COLUMNS]
    lines = [_row(headers + ["winning ticket"]), "|---:|---:|" + "---:|" * (len(headers) - 2) + "---|"]
    for r in summary["rounds"]:
        cells = [str(r["round"]), weights(r["weights_remaining"])]
        for branch in names:
            cells += [show(r[branch][m]["mean"]) if branch in r else "" for m, _, show in ROUND_COLUMNS]
        cells.append({True: "yes", False: "no"}.get(r.get("winning_ticket"), "(dense)"))
        lines.append(_row(cells))
    return "\n".join(lines)


def fit(sections, limit):
    """The sections joined by blank lines, within `limit` characters. Prose (a section that is no
    Markdown table) is kept whole; a table that does not fit in the room left is cut after its last
    row that fits, with a line that says how many rows are left out, or left out altogether."""
    room = limit - sum(len(section) + 2 for section in sections if not _is_table(section))
    kept = []
    for section in sections:
        if _is_table(section):
            section = section if len(section) + 2 <= room else _cut(section, room - 2)
            room -= len(section) + 2
        if section:
            kept.append(section)
    return "\n\n".join(kept)


def _is_table(section):
    lines = section.split("\n")
    return len(lines) > 2 and lines[1].startswith("|-")


def _cut(table, room):
    """The table's header and first rows within `room` characters, then a line naming the rows left
    out; "" if not even one row fits."""
    lines = table.split("\n")
    for shown in range(len(lines) - 3, 0, -1):
        cut = "\n".join(lines[: 2 + shown]) + f"\n\n({len(lines) - 2 - shown} more rows in the artifacts)"
        if len(cut) <= room:
            return cut
    return ""


def branches(summary):
    """The summary's branches, the ticket first, then the controls in the summary's order."""
    found = report_tables.branches(summary)
    ticket = report_tables.TICKET
    return [ticket] * (ticket in found) + [b for b in found if b != ticket]


def weights(fraction):
    """A fraction of the weights as a percentage: one decimal, two significant digits below 1%."""
    percent = 100 * fraction
    return f"{percent:.1f}%" if percent >= 1 else f"{percent:.2g}%"


def _row(cells):
    return "| " + " | ".join(cells) + " |"
