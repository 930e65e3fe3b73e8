"""Training curves whose points lack test values (`train.test_curve: improvements`): the CSV
(a DVC plot) and the MLflow step metrics made from it."""

import csv
import io
import math

import torch

from lottery import curves, masks, paths, records, validation
from lottery.io import write_json, write_text
from tests.conftest import default_params

# As `train` writes it with test_curve improvements: the validation loss rose at 250 and 500.
CURVE = [
    {"iteration": 0, "validation_loss": 2.5, "validation_accuracy": 0.1, "test_loss": 2.4, "test_accuracy": 0.12},
    {"iteration": 250, "validation_loss": 2.75, "validation_accuracy": 0.3},
    {"iteration": 500, "validation_loss": 2.625, "validation_accuracy": 0.4},
    {"iteration": 750, "validation_loss": 0.125, "validation_accuracy": 0.9, "test_loss": 0.25, "test_accuracy": 0.875},
    {"iteration": 1000, "validation_loss": 0.5, "validation_accuracy": 0.85, "test_loss": 0.375, "test_accuracy": 0.8125},
]


def test_csv_marks_what_was_not_measured_nan_and_reads_back_the_same_curve(tmp_path):
    text = curves.to_csv(CURVE)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(curves.COLUMNS)
    assert [row["test_accuracy"] for row in rows] == ["0.12", "nan", "nan", "0.875", "0.8125"]
    assert rows[1]["validation_loss"] == "2.75"
    # DVC hands the cells to Vega-Lite as strings, which keeps a point only if +value is a finite
    # number: 'nan' leaves the point out, while an empty cell would be drawn at 0.
    assert [math.isfinite(float(row["test_loss"])) for row in rows] == [True, False, False, True, True]
    write_text(tmp_path / "curve.csv", text)
    assert curves.read_csv(tmp_path / "curve.csv") == CURVE


def test_mlflow_series_log_only_the_points_that_have_the_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_json(paths.round_metrics(1), {"round": 1, "final_test_accuracy": 0.8125, "early_stop_iteration": 750})
    write_text(paths.curve_plot_data(1), curves.to_csv(CURVE))
    masks.save({"layers.1.weight": torch.ones(3, 2, dtype=torch.bool)}, paths.mask(1))
    record = records.evaluated(validation.from_dict(default_params()), 1)
    assert record.series["validation_loss"] == [(0, 2.5), (250, 2.75), (500, 2.625), (750, 0.125), (1000, 0.5)]
    assert record.series["test_accuracy"] == [(0, 0.12), (750, 0.875), (1000, 0.8125)]
    assert record.series["test_loss"] == [(0, 2.4), (750, 0.25), (1000, 0.375)]
    assert record.metrics == {"round": 1, "final_test_accuracy": 0.8125, "early_stop_iteration": 750}
