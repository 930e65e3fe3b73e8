"""Training curves: validation and test loss and accuracy at every evaluation, as CSV.

The CSV (plots/curves/round_<r>.csv) is a DVC plot and the source of a round's MLflow step metrics.

A point where the test split was not measured (`train.test_curve: improvements`) lacks the test
keys in the training log; here its test cells read `nan`. DVC hands CSV cells to Vega-Lite as
strings, and Vega-Lite leaves out a point whose value is not a finite number (`isFinite(+value)`),
so `nan` drops the point from a plot, while an empty cell would be drawn at 0 (`+"" == 0`).
"""

import csv
import math

from lottery.io import csv_text, read_text

COLUMNS = ("iteration", "validation_loss", "validation_accuracy", "test_loss", "test_accuracy")
NOT_MEASURED = "nan"


def to_csv(curve):
    """One row per point; a value the point lacks reads NOT_MEASURED."""
    return csv_text([{column: point.get(column, NOT_MEASURED) for column in COLUMNS} for point in curve], COLUMNS)


def read_csv(path):
    """The curve written by `to_csv`: iteration as int, the rest as float; a point lacks the
    values that were not measured, as the curve it was written from did. (A measured NaN, from a
    diverged run, reads as not measured too.)"""
    curve = []
    for row in csv.DictReader(read_text(path).splitlines()):
        values = {key: float(value) for key, value in row.items() if key != "iteration"}
        curve.append({"iteration": int(row["iteration"]), **{k: v for k, v in values.items() if not math.isnan(v)}})
    return curve


def series(curve):
    """Each value column as [(iteration, value)], over the points that have the value."""
    return {key: [(point["iteration"], point[key]) for point in curve if key in point] for key in COLUMNS[1:]}
