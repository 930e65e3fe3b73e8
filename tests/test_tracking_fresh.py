"""MLflow follows the records: after a rerun, each run's current values are what the DVC outputs
hold now, and a rerun with the same results logs nothing. In-process against a SQLite store for
the rules (latest point, NaN, vanished metrics, artifacts), then a real `dvc repro` of a tiny
lineage for a re-measured latency and a changed `weight_agnostic.values`."""

import hashlib
import math
import time

import pytest
import yaml

from lottery import hparams, lineage_catalog, mlflow_connection, publishing, records, tracking, validation
from lottery.runs import RunIndex
from lottery.io import read_json
from tests.conftest import SMALL_EVALUATION, reproduced_repo, sh, store_view

ROUND = records.branch_run(1)


def logged(hp, run):
    """The lineage's `run`: its client and run id."""
    runs = RunIndex(hp, mlflow_connection.tracking_uri(hp.tracking))
    return runs.client, runs.run_id(run, create=False)


def histories(hp, run):
    """{metric: [(step, value), ...] in the order logged} of the lineage's `run`."""
    client, run_id = logged(hp, run)
    return {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)]
        for key in client.get_run(run_id).data.metrics
    }


def latest(hp, run):
    client, run_id = logged(hp, run)
    return client.get_run(run_id).data.metrics


def artifact_files(root):
    """{path: (ctime, size)} of every artifact file under `root`/mlruns: an upload rewrites one."""
    return {str(path): (path.stat().st_ctime_ns, path.stat().st_size) for path in (root / "mlruns").rglob("*") if path.is_file()}


def test_a_changed_value_becomes_the_latest_even_within_the_same_millisecond(workdir, make_hp, monkeypatch):
    hp = make_hp()
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # every point in one millisecond
    tracking.publish(hp, records.Record(ROUND, metrics={"x": 2.0}, series={"curve": [(0, 1.0), (10, 0.5)]}))
    tracking.publish(hp, records.Record(ROUND, metrics={"x": 1.0}, series={"curve": [(0, 1.0), (10, 0.25)]}))
    # A lower value, logged in the same millisecond, would lose MLflow's tie-break on value.
    assert latest(hp, ROUND) == {"x": 1.0, "curve": 0.25}
    assert histories(hp, ROUND) == {"x": [(0, 2.0), (0, 1.0)], "curve": [(0, 1.0), (10, 0.5), (10, 0.25)]}


def test_an_unchanged_nan_is_logged_once_and_a_metric_no_file_holds_becomes_nan(workdir, make_hp):
    hp = make_hp()
    first = records.Record(ROUND, metrics={"loss": math.nan, "kept": 1.0, "gone": 3.0}, series={"c": [(0, 1.0), (5, 2.0)]})
    tracking.publish(hp, first)
    tracking.publish(hp, first)
    now = records.Record(ROUND, metrics={"loss": math.nan, "kept": 1.0}, series={"c": [(0, 1.0)]})
    tracking.publish(hp, now)  # one stage's record: other stages may log `gone` to this run
    assert latest(hp, ROUND)["gone"] == 3.0
    tracking.publish(hp, records.merged([now])[0])  # all that the files say of the run
    tracking.publish(hp, records.merged([now])[0])
    found = histories(hp, ROUND)
    assert [len(found[key]) for key in ("loss", "kept", "gone", "c")] == [1, 1, 2, 3]
    assert math.isnan(found["loss"][0][1]) and found["kept"] == [(0, 1.0)]
    assert found["gone"][0] == (0, 3.0) and found["gone"][1][0] == 0 and math.isnan(found["gone"][1][1])
    # The series lost step 5: it is NaN there now, and step 0 was not logged again.
    assert found["c"][:2] == [(0, 1.0), (5, 2.0)] and found["c"][2][0] == 5 and math.isnan(found["c"][2][1])


def test_an_artifact_is_uploaded_when_its_bytes_change_and_only_then(workdir, make_hp):
    hp = make_hp()
    report = workdir / "report.json"
    report.write_text('{"latency": 1.0}')
    record = records.Record(ROUND, artifacts=[report], texts={"note.txt": "same"})
    tracking.publish(hp, record)
    uploaded = artifact_files(workdir)
    assert len(uploaded) == 2
    tracking.publish(hp, record)
    assert artifact_files(workdir) == uploaded
    report.write_text('{"latency": 2.0}')
    tracking.publish(hp, record)
    client, run_id = logged(hp, ROUND)
    assert open(client.download_artifacts(run_id, "report.json", str(workdir / "down"))).read() == '{"latency": 2.0}'
    digest = client.get_run(run_id).data.tags[f"{publishing.ARTIFACT_DIGEST_TAG}report.json"]
    assert digest == hashlib.sha256(b'{"latency": 2.0}').hexdigest()
    changed = {path for path, stat in artifact_files(workdir).items() if uploaded.get(path) != stat}
    assert [path.rsplit("/", 1)[1] for path in changed] == ["report.json"]


# --- a real DVC project: the tests below run in this order on one reproduced lineage -------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mnist_root):
    # The tests below check what MLflow holds against the files, whatever the accuracies.
    overrides = {"rounds": hparams.rounds_section(1), **SMALL_EVALUATION}
    with reproduced_repo(tmp_path_factory, mnist_root, "fresh", overrides) as repo:
        yield repo


def project_catalog(repo):
    hp = validation.load(repo / "params.yaml")
    catalog = lineage_catalog.LineageCatalog(f"sqlite:///{repo / 'mlflow.db'}", hp.tracking.experiment)
    (parent,) = catalog.parents()
    return catalog, catalog.load(parent)


def test_an_identical_rerun_logs_nothing(repo):
    experiment = validation.load(repo / "params.yaml").tracking.experiment
    before, uploaded = store_view(f"sqlite:///{repo / 'mlflow.db'}", experiment), artifact_files(repo)
    for stage in ("prune@1", "evaluate@1", "report"):  # report publishes every record of the lineage
        sh(repo, "dvc", "repro", "-f", "-s", stage)
    assert store_view(f"sqlite:///{repo / 'mlflow.db'}", experiment) == before
    assert artifact_files(repo) == uploaded


def test_a_re_measured_latency_becomes_the_latest_value(repo):
    catalog, found = project_catalog(repo)
    run_id = found.branches[(1, None)].info.run_id
    key = "compression.compact.latency_ms_batch_64"
    measured = catalog.client.get_run(run_id).data.metrics[key]
    sh(repo, "dvc", "repro", "-f", "--downstream", "compact@1")  # compact@1 measures again; report follows
    report = read_json(repo / "metrics" / "compression" / "round_1.json")
    assert report["compact"]["latency_ms_batch_64"] != measured
    now = catalog.client.get_run(run_id).data.metrics
    expected = dict(records.numeric_metrics({"compression": report}))
    assert {k: now[k] for k in expected} == expected
    assert [value for _, value in sorted((m.timestamp, m.value) for m in catalog.client.get_metric_history(run_id, key))] == [
        measured, report["compact"]["latency_ms_batch_64"]
    ]
    uploaded = catalog.client.download_artifacts(run_id, "round_1.json", str(repo / "downloaded"))
    assert open(uploaded, "rb").read() == (repo / "metrics" / "compression" / "round_1.json").read_bytes()


def test_changed_weight_agnostic_values_become_the_latest_values(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    before = {r: read_json(repo / "metrics" / "rounds" / f"round_{r}.json")["weight_agnostic_accuracy"] for r in (0, 1)}
    params["weight_agnostic"]["values"] = [-1.5, 0.75]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "dvc", "repro")
    catalog, found = project_catalog(repo)  # the same lineage: these values do not name it
    for round_ in (0, 1):
        run = found.branches[(round_, None)]
        written = read_json(repo / "metrics" / "rounds" / f"round_{round_}.json")
        expected = dict(records.numeric_metrics(written))
        assert {k: run.data.metrics[k] for k in expected} == expected
        assert sorted(written["weight_agnostic_accuracy"]) == ["w-1.5", "w0.75"]
        gone = {k for k in run.data.metrics if k.startswith("weight_agnostic_accuracy.") and k not in expected}
        assert gone == {f"weight_agnostic_accuracy.{w}" for w in before[round_]}
        assert all(math.isnan(run.data.metrics[k]) for k in gone)
        assert found.metrics(round_)["weight_agnostic_mean_accuracy"] == written["weight_agnostic_mean_accuracy"]
    tags = found.parent.data.tags
    assert tags[f"{records.SETTING_TAG}weight_agnostic.values"] == "[-1.5, 0.75]"
    shown = catalog.client.download_artifacts(found.parent.info.run_id, records.PARAMS_ARTIFACT, str(repo / "downloaded"))
    assert yaml.safe_load(open(shown))["weight_agnostic"]["values"] == [-1.5, 0.75]
