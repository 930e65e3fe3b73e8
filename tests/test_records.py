"""MLflow records you can trust, in-process on a tiny real-MNIST lineage: one mapping from DVC
outputs to runs, shared by the stages and `sync`; nothing logged twice; every run FINISHED or
FAILED; a lineage named by its params and code; `reproduce` naming what differs."""

import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lottery import deps, io, lineage_catalog, mlflow_connection, paths, pipeline, provenance, records, reproduce, tracking, validation
from tests.conftest import PROJECT, TINY, default_params, run_stage, store_view, with_overrides


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, mnist_root):
    """One tiny lineage with a control, run once for the module into a workspace with its own store."""
    base = tmp_path_factory.mktemp("recorded")
    (base / "data").mkdir()
    (base / "data" / "mnist").symlink_to(mnist_root)
    hp = validation.from_dict(with_overrides(default_params(), {**TINY, "controls.run": ["reinit"]}))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.setenv("MLFLOW_TRACKING_URI", uri(base))
        pipeline.run_lineage(hp)
    return base, hp


@pytest.fixture
def lineage_hp(recorded, workdir):
    """The recorded lineage's outputs copied into this test's workdir, and its MLflow records
    restored there by `sync` into the workdir's own store (tests change both)."""
    base, hp = recorded
    for name in ("models", "metrics", "plots"):
        shutil.copytree(base / name, workdir / name)
    pipeline.sync(hp)
    return hp


def uri(workdir):
    return f"sqlite:///{workdir / 'mlflow.db'}"


def test_sync_into_an_empty_store_records_exactly_what_the_stages_logged(recorded, workdir):
    base, hp = recorded
    logged = store_view(uri(base), hp.tracking.experiment)  # what the stages logged
    assert len(logged) == 1 + 3 + 2  # the lineage, rounds 0-2, the reinit control of rounds 1-2
    assert {view["status"] for view in logged.values()} == {"FINISHED"}
    round_1 = logged[("round", "1", None)]
    assert round_1["artifacts"] == ["mask.pt", "round_1.json", "sparsity.json"]  # round_1.json: the compression report
    assert round_1["tags"]["lottery.env.device"] == "cpu" and "compression.flops_speedup" in round_1["metrics"]
    assert [step for step, _ in round_1["metrics"]["validation_loss"]] == [0, 20, 40, 60]
    for name in ("models", "metrics", "plots"):
        shutil.copytree(base / name, workdir / name)
    pipeline.sync(hp)  # into the workdir's empty store
    assert store_view(uri(workdir), hp.tracking.experiment) == logged


def test_rerunning_any_stage_with_the_same_results_appends_nothing(lineage_hp, workdir):
    before = store_view(uri(workdir), lineage_hp.tracking.experiment)
    for step in (pipeline.prune, pipeline.evaluate):  # compact measures latency anew: tests/test_tracking_fresh.py
        step(lineage_hp, 1)
    pipeline.control(lineage_hp, 2, "reinit")
    pipeline.summarize(lineage_hp)
    pipeline.sync(lineage_hp)
    assert store_view(uri(workdir), lineage_hp.tracking.experiment) == before


def test_a_lineage_extended_by_a_round_shows_its_rounds_now(lineage_hp, workdir, make_hp):
    longer = make_hp(**{"controls.run": ["reinit"], "rounds": {"1": {"prev": 0}, "2": {"prev": 1}, "3": {"prev": 2}}})
    assert provenance.lineage_id(longer) == provenance.lineage_id(lineage_hp)
    for step in (pipeline.prune, pipeline.rewind, pipeline.retrain, pipeline.evaluate, pipeline.compact):
        step(longer, 3)
    pipeline.control(longer, 3, "reinit")
    pipeline.summarize(longer)
    view = store_view(uri(workdir), longer.tracking.experiment)
    parent = view[("lineage", None, None)]
    assert parent["tags"]["lottery.rounds"] == "3" and parent["tags"]["lottery.controls"] == "reinit"
    assert ("round", "3", None) in view and len([k for k in view if k[0] == "lineage"]) == 1
    client = MlflowClient(uri(workdir))
    parent_id = io.read_json(paths.lineage_file())["parent_run_id"]
    shown = yaml.safe_load(open(client.download_artifacts(parent_id, records.PARAMS_ARTIFACT, str(workdir))))
    assert sorted(shown["rounds"]) == ["1", "2", "3"]


def test_a_stage_that_raises_marks_its_run_failed(lineage_hp, workdir):
    (workdir / "params.yaml").write_text(yaml.safe_dump(lineage_hp.raw))
    paths.trained_weights(1).unlink()
    failed = run_stage(workdir, "evaluate", "--round", "1")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        "error: models/round_1/trained.pt: no such file (an earlier stage writes it: run `dvc repro`)"
    ]
    assert store_view(uri(workdir), lineage_hp.tracking.experiment)[("round", "1", None)]["status"] == "FAILED"
    pipeline.retrain(lineage_hp, 1)
    pipeline.evaluate(lineage_hp, 1)
    assert store_view(uri(workdir), lineage_hp.tracking.experiment)[("round", "1", None)]["status"] == "FINISHED"


def test_a_lineage_is_named_by_its_params_and_its_code(tmp_path, make_hp):
    hp = make_hp()
    for name in ("lottery", "stages"):
        shutil.copytree(PROJECT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert provenance.lineage_id(hp, root=tmp_path) == provenance.lineage_id(hp)
    with open(tmp_path / "lottery" / "lineage.py", "a") as f:  # the lineage CLI: no stage imports it
        f.write("# edited\n")
    deps.code_digest.cache_clear()
    assert provenance.lineage_id(hp, root=tmp_path) == provenance.lineage_id(hp)
    with open(tmp_path / "lottery" / "training.py", "a") as f:
        f.write("# edited\n")
    deps.code_digest.cache_clear()
    assert provenance.lineage_id(hp, root=tmp_path) != provenance.lineage_id(hp)
    assert provenance.replicate_group(hp, root=tmp_path) != provenance.replicate_group(hp)


def test_reproduce_names_what_differs_when_a_result_does_not_match(lineage_hp, workdir):
    for name in ("lottery", "stages"):  # the code the lineage ran, as reproduce's worktree holds it
        (workdir / name).symlink_to(PROJECT / name)
    catalog = lineage_catalog.LineageCatalog(uri(workdir), lineage_hp.tracking.experiment)
    recorded = catalog.find(tracking.run_ids(lineage_hp)["parent_run_id"])
    # A lineage run from uncommitted code says so (this checkout may have some while tests run).
    dirty = recorded.parent.data.tags[provenance.DIRTY_TAG] == "true"
    context = [entry for entry in reproduce.differences(recorded, workdir, lineage_hp) if entry["what"] == "uncommitted code"]
    assert len(context) == dirty
    same = reproduce.compare(recorded, workdir, lineage_hp)
    assert same["match"] and same["differences"] == context
    log = io.read_json(paths.training_log(2))
    log["environment"]["threads"] += 7
    io.write_json(paths.training_log(2), log)
    metrics = io.read_json(paths.round_metrics(2))
    metrics["test_accuracy_at_early_stop"] += 0.01
    io.write_json(paths.round_metrics(2), metrics)
    changed = reproduce.compare(recorded, workdir, lineage_hp)
    assert not changed["match"]
    assert [c["what"] for c in changed["checks"] if not c["match"]] == ["test_accuracy_at_early_stop"]
    threads = str(log["environment"]["threads"])
    assert changed["differences"] == context + [
        {"round": 2, "what": "threads", "recorded": str(int(threads) - 7), "reproduced": threads}
    ]


def test_an_unreachable_store_is_probed_once_and_the_answer_reused(tmp_path, monkeypatch):
    from tests.blackhole import BlackHole

    with BlackHole() as hole:
        try:
            first, second = mlflow_connection.probe(hole.url), mlflow_connection.probe(hole.url)
            assert first == second and first[0] is False and "no answer from" in first[1]
            assert hole.accepted == 1  # the second call reused the first answer
            assert not mlflow_connection.probe(hole.url, fresh=True)[0] and hole.accepted == 2
        finally:
            mlflow_connection.forget_probe(hole.url)
    assert mlflow_connection.probe("sqlite:///anything.db") == (True, "")
