"""The stage shell: every error a user can cause is one line; a bug keeps its traceback; the
stage's failure hook sees the step's arguments."""

import sys

import pytest
import yaml

from lottery import channels, data, lineage_catalog, masks, replicates, stage
from lottery.pruning import rates
from lottery.errors import MissingInput
from lottery.errors import ParamsError
from tests.conftest import PROJECT

USER_ERRORS = [
    ParamsError("train.lr = -1.0: must be > 0"),
    rates.PruningError("prune.rate = 0.9: round 2 would leave features.0.weight 1 of 8 channels"),
    channels.ChannelError("conv1.weight: no channels to prune"),
    masks.MaskError("mask['w'] has shape (2,), the weight (3,)"),
    data.DataError("data/mnist/MNIST/raw/t10k-images-idx3-ubyte: missing dataset file"),
    MissingInput("models/round_1/trained.pt"),
    lineage_catalog.LineageError("'x': no lineage has that run id"),
    replicates.ReplicateError("seed 1: round 2 has no results in MLflow"),
]


@pytest.fixture
def params_file(tmp_path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text())
    monkeypatch.setattr(sys, "argv", ["stage", "--params", str(path), "--round", "2"])
    return path


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_a_user_error_ends_the_stage_in_one_line_and_marks_its_run(params_file, error):
    failed = []

    def step(hp, round_):
        raise error

    with pytest.raises(SystemExit) as exit_:
        stage.run(step, per_round=True, on_failure=lambda hp, round_: failed.append(round_))
    assert exit_.value.code == f"error: {error}"
    assert "\n" not in exit_.value.code
    assert failed == [2]


def test_a_round_outside_the_params_is_one_line_and_marks_no_run(params_file, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stage", "--params", str(params_file), "--round", "99"])
    failed, ran = [], []
    with pytest.raises(SystemExit) as exit_:
        stage.run(lambda hp, round_: ran.append(round_), per_round=True, on_failure=lambda hp, *branch: failed.append(branch))
    assert exit_.value.code == "error: --round = 99: must be in 1..8 (the rounds in params)"
    assert failed == [] and ran == []  # round 0's run, say, must not be marked FAILED for it


def test_a_bug_keeps_its_traceback(params_file):
    def step(hp, round_):
        raise AssertionError("round 2: the compact model differs from the masked one by 1.00e-02")

    with pytest.raises(AssertionError, match="compact model differs"):
        stage.run(step, per_round=True)


def test_a_bad_params_file_is_one_line_before_the_step_runs(params_file):
    params_file.write_text(yaml.safe_dump({**yaml.safe_load(params_file.read_text()), "seed": "zero"}))
    ran = []
    with pytest.raises(SystemExit) as exit_:
        stage.run(lambda hp, round_: ran.append(round_), per_round=True)
    assert exit_.value.code == "error: seed = 'zero': must be int" and ran == []
