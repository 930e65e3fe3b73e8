"""The lineage at a glance: round table, the smallest matching ticket, CSVs and the figure."""

import csv
import io as _io

from lottery.io import atomic_path

ROUND_COLUMNS = (
    "round",
    "weights_remaining",
    "test_accuracy_at_early_stop",
    "early_stop_iteration",
    "final_test_accuracy",
)
CURVE_COLUMNS = ("iteration", "validation_loss", "validation_accuracy", "test_loss", "test_accuracy")


def summarize(rounds, tolerance):
    """Table of rounds, and the sparsest round whose accuracy is within `tolerance` of dense."""
    dense = rounds[0]
    floor = dense["test_accuracy_at_early_stop"] - tolerance
    matching = [r for r in rounds[1:] if r["test_accuracy_at_early_stop"] >= floor]
    smallest = min(matching, key=lambda r: r["weights_remaining"], default=None)
    table = [{key: r[key] for key in ROUND_COLUMNS} for r in rounds]
    return {
        "rounds": table,
        "tolerance": tolerance,
        "dense_test_accuracy_at_early_stop": dense["test_accuracy_at_early_stop"],
        "smallest_matching_ticket": (
            {key: smallest[key] for key in ROUND_COLUMNS} if smallest is not None else None
        ),
    }


def rounds_csv(rounds):
    rows = [{key: r[key] for key in ROUND_COLUMNS} | {"percent_remaining": 100 * r["weights_remaining"]} for r in rounds]
    return _csv(rows, (*ROUND_COLUMNS, "percent_remaining"))


def curve_csv(curve):
    return _csv(curve, CURVE_COLUMNS)


def read_curve_csv(path):
    with open(path, newline="") as f:
        return [
            {key: (int(value) if key == "iteration" else float(value)) for key, value in row.items()}
            for row in csv.DictReader(f)
        ]


def format_table(summary):
    """The round table as Markdown, for the terminal and the README."""
    lines = [
        "| round | weights remaining | test acc. at early stop | early-stop iteration | final test acc. |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rounds"]:
        lines.append(
            f"| {r['round']} | {100 * r['weights_remaining']:.1f}% | {100 * r['test_accuracy_at_early_stop']:.2f}% "
            f"| {r['early_stop_iteration']} | {100 * r['final_test_accuracy']:.2f}% |"
        )
    return "\n".join(lines)


def figure(rounds, summary, path):
    """Test accuracy at early stop and early-stop iteration vs weights remaining (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    percent = [100 * r["weights_remaining"] for r in rounds]
    fig, (accuracy, early_stop) = plt.subplots(1, 2, figsize=(10, 4))
    accuracy.plot(percent, [100 * r["test_accuracy_at_early_stop"] for r in rounds], "o-", label="ticket")
    accuracy.axhline(100 * summary["dense_test_accuracy_at_early_stop"], ls="--", c="gray", label="dense")
    accuracy.set_ylabel("test accuracy at early stop (%)")
    early_stop.plot(percent, [r["early_stop_iteration"] for r in rounds], "o-")
    early_stop.set_ylabel("early-stop iteration")
    for axis in (accuracy, early_stop):
        axis.set_xscale("log")
        axis.invert_xaxis()
        axis.set_xlabel("percent of weights remaining")
        axis.grid(True, which="both", alpha=0.3)
    accuracy.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _csv(rows, columns):
    out = _io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
