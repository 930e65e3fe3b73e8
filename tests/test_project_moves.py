"""A project's records stay in the project: after `mv` or `cp -r` of a project folder, its stages
log into that folder's own MLflow store (the default, mlflow.db at the project root) and its own
artifacts, and never write into another folder. A real tiny lineage with a registered ticket,
real `dvc repro`, real `mv` and `cp -r`."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from lottery import hparams, mlflow_connection
from tests.conftest import dvc_project, sh, tiny_params

DEFAULT_STORE = {"MLFLOW_TRACKING_URI": None}  # the project's own: mlflow.db at its root
MOVED = "MLflow: "  # the line a stage prints when it makes a moved store record its artifacts beside it


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_root):
    """A reproduced tiny lineage (one round, its ticket registered) logged to the default store."""
    overrides = {"rounds": hparams.rounds_section(1), "tracking.registered_model": "moved-ticket", "report.tolerance": 1.0}
    repo = dvc_project(tmp_path_factory.mktemp("moves") / "project", tiny_params(mnist_root, overrides))
    sh(repo, "dvc", "repro", env=DEFAULT_STORE)
    return repo


def repro(repo, *args):
    """`dvc repro ARGS` in `repo` on its default store: stdout and stderr together."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["dvc", "repro", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def snapshot(folder):
    """Every file's sha256 and every folder under `folder`: what a byte-for-byte comparison needs."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(folder.rglob("*"))
        if not path.is_symlink()
    }


def recorded_locations(repo):
    """Every artifact location the project's store records: experiments, runs, model versions."""
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lottery")
    runs = client.search_runs([experiment.experiment_id])
    versions = client.search_model_versions("name = 'moved-ticket'")
    return (
        [experiment.artifact_location]
        + [run.info.artifact_uri for run in runs]
        + [version.source for version in versions]
        + [client.get_model_version_download_uri(v.name, v.version) for v in versions]
    )


def round_run_id(repo, round_):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lottery")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`lottery.round` = '{round_}'")
    return run.info.run_id


def dump(repo):
    with sqlite3.connect(repo / "mlflow.db") as connection:
        return "\n".join(connection.iterdump())


def remeasure(repo):
    """Rerun compact@1 (latency measured anew, so its report is uploaded again) and report: both
    write artifacts to the lineage's runs."""
    return repro(repo, "-f", "--downstream", "compact@1")


def test_a_copied_project_logs_into_its_own_folder_and_leaves_the_original_as_it_was(project, tmp_path):
    copy = tmp_path / "copy"
    before = snapshot(project)
    subprocess.run(["cp", "-r", str(project), str(copy)], check=True)
    output = remeasure(copy)
    assert snapshot(project) == before
    # 7: two experiments (MLflow's Default and lottery), three runs, the model version's source and storage location.
    assert [line for line in output.splitlines() if line.startswith(MOVED)] == [
        f"MLflow: {copy / 'mlflow.db'} was made in {project}; its 7 artifact locations now name {copy / 'mlruns'}"
    ]
    locations = recorded_locations(copy)
    assert len(locations) == 1 + 3 + 2 and all(location.startswith(f"{copy}/mlruns/") for location in locations)
    assert f"{project}/" not in dump(copy)
    stored = copy / "mlruns" / "lottery" / round_run_id(copy, 1) / "artifacts" / "round_1.json"
    assert stored.read_bytes() == (copy / "metrics" / "compression" / "round_1.json").read_bytes()
    assert stored.read_bytes() != (project / "metrics" / "compression" / "round_1.json").read_bytes()
    assert MOVED not in remeasure(copy)  # once is enough


def test_a_moved_project_logs_into_its_new_folder_and_does_not_recreate_the_old_one(project, tmp_path):
    moved = tmp_path / "moved"
    subprocess.run(["mv", str(project), str(moved)], check=True)
    try:
        output = remeasure(moved)
        assert not project.exists()
        assert [line.split(";")[0] for line in output.splitlines() if line.startswith(MOVED)] == [
            f"MLflow: {moved / 'mlflow.db'} was made in {project}"
        ]
        assert all(location.startswith(f"{moved}/mlruns/") for location in recorded_locations(moved))
        assert f"{project}/" not in dump(moved)
    finally:
        if not project.exists():  # (a stage that wrote there would have made it again)
            subprocess.run(["mv", str(moved), str(project)], check=True)
    # Moved back, the lottery command finds the store as a stage would.
    listed = sh(project, sys.executable, "-m", "lottery", "lineage", "list", env=DEFAULT_STORE)
    parent = json.loads((project / "models" / "lineage.json").read_text())["parent_run_id"]
    assert listed.splitlines()[1].split()[0] == parent[:8]  # the table's first row: this lineage
    assert all(location.startswith(f"{project}/mlruns/") for location in recorded_locations(project))


def test_a_store_copied_without_its_artifacts_stops_tracking_in_one_line(project, tmp_path):
    copy = tmp_path / "copy"
    before = snapshot(project)
    subprocess.run(["cp", "-r", str(project), str(copy)], check=True)
    subprocess.run(["rm", "-r", str(copy / "mlruns")], check=True)
    output = remeasure(copy)  # the stages still write their DVC outputs
    warnings = [line for line in output.splitlines() if "MLflow" in line]
    assert len(warnings) == 2  # compact@1's and report's, each one line
    assert all(line.startswith("warning: MLflow tracking unavailable") for line in warnings)
    assert f"its artifacts are still in {project / 'mlruns' / 'lottery'}, not in {copy / 'mlruns' / 'lottery'}" in warnings[0]
    assert snapshot(project) == before and not (copy / "mlruns").exists()
    assert f"{project}/mlruns/lottery" in dump(copy)  # nothing rewritten


def test_every_location_the_store_records_follows_it(tmp_path, monkeypatch, capsys):
    made_in, moved = tmp_path / "made_in", tmp_path / "moved"
    made_in.mkdir()
    monkeypatch.chdir(made_in)  # where MLflow puts its Default experiment's artifacts
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")  # the trace is in the store before the move
    client = MlflowClient(f"sqlite:///{made_in / 'mlflow.db'}")
    experiment = client.create_experiment("lottery", artifact_location=str(made_in / "mlruns" / "lottery"))
    run = client.create_run(experiment)
    model = client.create_logged_model(experiment, name="ticket")
    trace = client.start_trace("a trace", experiment_id=experiment)
    client.end_trace(trace.trace_id)
    client.create_registered_model("ticket")
    version = client.create_model_version("ticket", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    (made_in / "mlruns" / "lottery").mkdir(parents=True, exist_ok=True)
    made_in.rename(moved)
    uri = f"sqlite:///{moved / 'mlflow.db'}"
    with mlflow_connection.opened(uri, "lottery") as client:
        assert client.get_run(run.info.run_id).info.artifact_uri == f"{moved}/mlruns/lottery/{run.info.run_id}/artifacts"
        assert client.get_logged_model(model.model_id).artifact_location.startswith(f"{moved}/mlruns/lottery/models/")
        assert client.get_model_version_download_uri("ticket", version.version).startswith(f"{moved}/mlruns/lottery/")
    # 7: two experiments (MLflow's Default and lottery), the run, the logged model, the model
    # version's source and storage location, the trace's artifact location (a tag).
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"MLflow: {moved / 'mlflow.db'} was made in {made_in}; its 7 artifact locations now name {moved / 'mlruns'}"
    )
    assert f"{made_in}/" not in dump(moved)


def test_an_experiment_whose_artifacts_are_not_in_an_mlruns_folder_is_left_as_it_is(tmp_path, capsys):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("lottery", artifact_location="/srv/shared-artifacts/lottery")
    with mlflow_connection.opened(f"sqlite:///{tmp_path / 'mlflow.db'}", "lottery") as client:
        assert client.get_experiment_by_name("lottery").artifact_location == "/srv/shared-artifacts/lottery"
    assert "MLflow: " not in capsys.readouterr().err
