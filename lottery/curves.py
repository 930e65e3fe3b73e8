"""Training curves: validation and test loss and accuracy at every evaluation, as CSV.

The CSV (plots/curves/round_<r>.csv) is a DVC plot and the source of a round's MLflow step metrics.
"""

import csv

from lottery.io import csv_text, read_text

COLUMNS = ("iteration", "validation_loss", "validation_accuracy", "test_loss", "test_accuracy")


def to_csv(curve):
    return csv_text(curve, COLUMNS)


def read_csv(path):
    """The curve written by `to_csv`: iteration as int, the rest as float."""
    return [
        {key: (int(value) if key == "iteration" else float(value)) for key, value in row.items()}
        for row in csv.DictReader(read_text(path).splitlines())
    ]
