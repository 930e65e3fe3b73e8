"""What the `lottery lineage` commands print, over two lineages of two methods (IMP and factorized
SI+FD) run in-process into one SQLite MLflow store: `list` tells them apart within the terminal's
width, and `diff` prints its own lines only, with one progress bar of its own on a terminal."""

import json
import os
import pty
import select
import subprocess
import sys

import pytest
import yaml

from lottery import cli, hparams, identity, lineage, records, validation
from tests.conftest import TINY, default_params, lineages_in_one_store, with_overrides

ONE_ROUND = {**TINY, "rounds": hparams.rounds_section(1)}
METHODS = {
    "IMP": {"prune.rate": 0.2},
    "factorized SI+FD": {"prune.rate": 0.5, "factorize.enabled": True, "train.weight_decay": 1e-3, "weight_agnostic.values": []},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory, mnist_root):
    """The store's folder, a params file that names it, and {method: parent run id}."""
    root = tmp_path_factory.mktemp("methods")
    overrides = {name: {**ONE_ROUND, **changes} for name, changes in METHODS.items()}
    with lineages_in_one_store(root, mnist_root, overrides) as made:
        params = root / "params.yaml"
        params.write_text(yaml.safe_dump(made["factorized SI+FD"][1].raw))
        yield root, params, {name: parent for name, (parent, _) in made.items()}


def lottery(root, *argv, env=None, **run):
    """`python -m lottery ARGV` in `root`, its environment less the variables `env` maps to None."""
    changes = {"COLUMNS": None, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": None, **(env or {})}
    environment = {k: v for k, v in {**os.environ, **changes}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "lottery", *argv], cwd=root, env=environment, text=True, **run)


def columns_and_rows(text):
    lines = text.splitlines()
    return lines[0].split(), [line.split() for line in lines[1:]]


@pytest.mark.parametrize(
    "overrides, label",
    [
        ({}, "IMP"),
        ({"prune.schedule": "oneshot"}, "one-shot magnitude"),
        ({"rewind.iteration": 20}, "IMP, rewind 20"),
        ({"rewind.target": "finetune"}, "IMP, fine-tune"),
        ({"rewind.target": "scratch", "rewind.scratch_budget": "flops"}, "IMP, Scratch-B"),
        ({"prune.strategy": "random"}, "random"),
        (METHODS["factorized SI+FD"], "factorized SI+FD"),
        ({**METHODS["factorized SI+FD"], "factorize.spectral_init": False}, "factorized FD"),
        ({**METHODS["factorized SI+FD"], "train.weight_decay": 0.0}, "factorized SI"),  # no decay: FD has none to replace
        ({"prune.strategy": "edge_popup"}, "supermask"),
        ({"prune.strategy": "edge_popup", "supermask.weight_agnostic": True}, "supermask, weight-agnostic"),
    ],
)
def test_the_method_is_named_from_the_params_a_lineage_records(overrides, label):
    hp = validation.from_dict(with_overrides(default_params(), {**TINY, **overrides}))
    recorded = {key: str(value) for key, value in records.flatten(identity.of(hp)).items()}  # as MLflow keeps them
    assert lineage.method(recorded) == label


def test_list_shows_the_method_and_the_params_that_differ(store, capsys, monkeypatch):
    root, params, ids = store
    monkeypatch.setenv("COLUMNS", "200")
    cli.main(["--params", str(params), "lineage", "list"])
    columns, rows = columns_and_rows(capsys.readouterr().out)
    # prune.rate and the weight decay differ; model, data, seed do not; factorize.* is the method.
    assert columns == ["run", "method", "prune.rate", "train.weight_decay", "rounds", "remaining", "accuracy"]
    by_run = {row[0]: row for row in rows}
    assert by_run[ids["IMP"][:8]][1:4] == ["IMP", "0.2", "-"]
    assert by_run[ids["factorized SI+FD"][:8]][1:5] == ["factorized", "SI+FD", "0.5", "0.001"]
    listed = json.loads(_json_list(capsys, params))
    assert {row["parent_run_id"]: row["method"] for row in listed} == {run: name for name, run in ids.items()}


def _json_list(capsys, params):
    cli.main(["--params", str(params), "lineage", "list", "--json"])
    return capsys.readouterr().out


def test_list_fits_a_narrow_terminal_and_names_what_it_left_out(store, capsys, monkeypatch):
    root, params, ids = store
    monkeypatch.setenv("COLUMNS", "64")
    cli.main(["--params", str(params), "lineage", "list"])
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 64
    assert lines[0].split() == ["run", "method", "rounds", "remaining", "accuracy"]
    assert " ".join(lines[3:]) == "also differ (a wider terminal shows them): prune.rate, train.weight_decay"


def test_list_outside_a_terminal_is_at_most_120_wide(store):
    root, params, _ = store
    done = lottery(root, "--params", str(params), "lineage", "list", capture_output=True)
    assert done.returncode == 0 and done.stderr == ""
    assert max(len(line.rstrip()) for line in done.stdout.splitlines()) <= 120
    assert "prune.rate" in done.stdout.splitlines()[0]


def test_diff_prints_its_own_lines_only(store):
    root, params, ids = store
    done = lottery(root, "--params", str(params), "lineage", "diff", ids["IMP"], ids["factorized SI+FD"], capture_output=True)
    assert done.returncode == 0
    assert done.stderr == ""  # MLflow drew a "Downloading artifacts" bar here per mask it read
    assert done.stdout.startswith(f"a: {ids['IMP']}\nb: {ids['factorized SI+FD']}\n")
    assert done.stdout.rstrip().endswith("lineages differ")


def test_diff_on_a_terminal_draws_one_bar_of_its_own_and_erases_it(store):
    root, params, ids = store
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "lottery", "--params", str(params), "lineage", "diff", ids["IMP"], ids["factorized SI+FD"]],
            cwd=root,
            env={k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"},
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        out, _ = process.communicate(timeout=120)
        drawn = _read_all(leader)
    finally:
        os.close(leader)
        os.close(follower)
    assert process.returncode == 0 and out.startswith("a: ")
    frames = [frame for frame in drawn.split("\r\x1b[K") if frame]
    assert frames == ["reading masks [....................] 0/2", "reading masks [##########..........] 1/2 round 0",
                      "reading masks [####################] 2/2 round 1"]
    assert drawn.endswith("\r\x1b[K")  # erased: the terminal is left as it was


def _read_all(descriptor):
    found = b""
    while select.select([descriptor], [], [], 0.5)[0]:
        try:
            chunk = os.read(descriptor, 4096)
        except OSError:
            break
        if not chunk:
            break
        found += chunk
    return found.decode()
