"""One team store: a lineage reproduced against a shared `mlflow server` (artifacts proxied), committed
to git (dvc.lock, metrics, plots), its cached outputs pushed to a DVC remote; then a fresh clone
pulls them, and `dvc repro` there has nothing to do while the lineage's runs are on the server."""

import filecmp
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lottery import hparams
from tests.conftest import commit, dvc_project, sh, tiny_params
from tests.test_tracking_server import Server, mlflow_server

ONE_ROUND = {"rounds": hparams.rounds_section(1), "compact.latency_repeats": 2}


@dataclass
class Team:
    origin: Path  # where the lineage was reproduced
    clone: Path  # a fresh clone of it after `dvc pull`
    server: Server
    env: dict  # MLFLOW_TRACKING_URI: the team's server


@pytest.fixture(scope="module")
def team(tmp_path_factory, mnist_root):
    base = tmp_path_factory.mktemp("team")
    with mlflow_server(f"sqlite:///{base / 'server.db'}", base) as server:
        env = {"MLFLOW_TRACKING_URI": server.url}
        (base / "origin").mkdir()
        origin = dvc_project(base / "origin", tiny_params(mnist_root, ONE_ROUND))
        sh(origin, "dvc", "remote", "add", "-d", "team", str(base / "dvc-remote"))
        sh(origin, "dvc", "repro", env=env)
        commit(origin, "a lineage")
        sh(origin, "dvc", "push")
        sh(base, "git", "clone", "-q", str(origin), "clone")
        sh(base / "clone", "dvc", "pull")
        yield Team(origin, base / "clone", server, env)


def outputs(repo):
    """Every output path that dvc.lock records."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return sorted({out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])})


def same_tree(a, b):
    if a.is_file():
        return filecmp.cmp(a, b, shallow=False)
    compared = filecmp.dircmp(a, b)
    return not (compared.left_only or compared.right_only or compared.funny_files) and all(
        same_tree(a / name, b / name) for name in compared.common
    )


def test_the_clone_gets_every_output_metrics_and_plots_from_git_the_rest_from_the_remote(team):
    for path in outputs(team.origin):
        assert (team.clone / path).exists(), f"{path}: not in the fresh clone after dvc pull"
        assert same_tree(team.origin / path, team.clone / path), path
    in_git = sh(team.clone, "git", "ls-files").split()
    assert "metrics/summary.json" in in_git and "plots/rounds.csv" in in_git
    assert not [path for path in in_git if path.startswith(("models/", "data/"))]


def test_dvc_repro_in_the_fresh_clone_runs_no_stage(team):
    assert "Data and pipelines are up to date." in sh(team.clone, "dvc", "status")
    output = sh(team.clone, "dvc", "repro", env=team.env)
    assert "Running stage" not in output and "Data and pipelines are up to date." in output
    assert sh(team.clone, "git", "status", "--porcelain") == ""


def test_the_clone_finds_its_lineage_on_the_team_server(team):
    ids = json.loads((team.clone / "models/lineage.json").read_text())
    assert ids["tracking_uri"] == team.server.url
    shown = json.loads(sh(team.clone, sys.executable, "-m", "lottery", "lineage", "show", ids["parent_run_id"], "--json", env=team.env))
    assert [row["round"] for row in shown["rounds"]] == [0, 1]
    round_1 = json.loads((team.clone / "metrics/rounds/round_1.json").read_text())
    assert shown["rounds"][1]["test_accuracy_at_early_stop"] == round_1["test_accuracy_at_early_stop"]
