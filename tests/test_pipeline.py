"""The stage functions chained in-process, as DVC would run them, on a tiny real-MNIST lineage."""

import hashlib
import json
import os
import warnings

import mlflow
import mlflow.pytorch
import pytest
import torch

from lottery import checkpoints, hparams, identity, masks, mlflow_connection, paths, pipeline, provenance, report, validation
from lottery.pruning import driver
from tests.conftest import lineage_in_process, tiny_params


def fingerprint():
    """Hashes of every mask and the text of every metrics file of the lineage in the cwd."""
    mask_files = sorted(paths.MODELS.glob("round_*/mask.pt"))
    digests = {str(p): hashlib.sha256(json.dumps({k: v.tolist() for k, v in torch.load(p, weights_only=True).items()}).encode()).hexdigest() for p in mask_files}
    # Compression reports hold measured CPU latency, which no seed fixes; everything else must match.
    measured = paths.compression_report(1).parent
    metrics = {str(p): p.read_text() for p in sorted(paths.METRICS.rglob("*.json")) if p.parent != measured}
    return digests, metrics


@pytest.fixture
def lineage(workdir, make_hp):
    """A tiny lineage of the test's own, in its workdir: for a test that changes it."""
    hp = make_hp()
    pipeline.run_lineage(hp)
    return hp


@pytest.fixture(scope="module")
def built(tmp_path_factory, mnist_root):
    """One tiny lineage run once, in a folder of its own, for the tests that only read it: the folder."""
    with lineage_in_process(tmp_path_factory.mktemp("lineage"), mnist_root, {}) as folder:
        yield folder


@pytest.fixture
def read_only_lineage(built, mnist_root, monkeypatch):
    """The params of the lineage `built` holds, with its folder as the working directory and its
    store as the tracking store, for a test that changes nothing of it."""
    monkeypatch.chdir(built)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{built / 'mlflow.db'}")
    return validation.from_dict(tiny_params(mnist_root, {}))


def test_density_per_round_and_exact_zeros(read_only_lineage):
    for round_ in range(read_only_lineage.rounds + 1):
        model, _ = checkpoints.load_model(paths.trained_weights(round_))
        mask = masks.load(paths.mask(round_), model)
        metrics = json.loads(paths.round_metrics(round_).read_text())
        assert metrics["weights_remaining_per_layer"]["layers.1.weight"] == pytest.approx(0.8**round_, abs=1e-4)
        assert metrics["weights_remaining_per_layer"]["layers.5.weight"] == pytest.approx(0.9**round_, abs=2e-3)
        pipeline.check_pruned_weights_are_zero(model, mask)


def test_rewind_restores_theta0_exactly_on_surviving_weights(read_only_lineage):
    theta0 = checkpoints.load(paths.init_checkpoint())["state_dict"]
    for round_ in range(1, read_only_lineage.rounds + 1):
        start = checkpoints.load(paths.start_weights(round_))["state_dict"]
        mask = torch.load(paths.mask(round_), weights_only=True)
        for name, value in theta0.items():
            if name in mask:
                assert torch.equal(start[name][mask[name]], value[mask[name]])
                assert bool((start[name][~mask[name]] == 0).all())
            else:
                assert torch.equal(start[name], value)  # biases are rewound, never pruned


def test_late_rewinding_starts_from_the_dense_weights_at_k(workdir, make_hp):
    hp = make_hp(**{"rewind.iteration": 20, "rounds": {"1": {"prev": 0}}})
    pipeline.run_lineage(hp)
    point = checkpoints.load(paths.rewind_point())
    theta0 = checkpoints.load(paths.init_checkpoint())["state_dict"]
    assert point["iteration"] == 20
    assert not torch.equal(point["state_dict"]["layers.1.weight"], theta0["layers.1.weight"])
    start = checkpoints.load(paths.start_weights(1))["state_dict"]
    keep = torch.load(paths.mask(1), weights_only=True)["layers.1.weight"]
    assert torch.equal(start["layers.1.weight"][keep], point["state_dict"]["layers.1.weight"][keep])
    curve = json.loads(paths.training_log(1).read_text())["curve"]
    assert curve[0]["iteration"] == 20  # the retrain resumes the schedule at k


def fingerprints_of_two_runs(hp, workdir, monkeypatch):
    """The lineage of `hp` run in the workdir, then again in a fresh folder: their fingerprints."""
    pipeline.run_lineage(hp)
    first = fingerprint()
    second_dir = workdir / "again"
    second_dir.mkdir()
    (second_dir / "data").symlink_to(workdir / "data")
    monkeypatch.chdir(second_dir)
    pipeline.run_lineage(hp)
    return first, fingerprint()


def test_same_params_and_seed_give_identical_masks_and_metrics(read_only_lineage, built, tmp_path, mnist_root):
    """The lineage `built` holds, run again in a fresh folder (as that one was: in this process, one thread)."""
    hp = read_only_lineage
    first = fingerprint()
    (tmp_path / "again").mkdir()
    with lineage_in_process(tmp_path / "again", mnist_root, {}):
        pass
    os.chdir(tmp_path / "again")  # monkeypatch (read_only_lineage) puts the working directory back
    second = fingerprint()
    assert second == first
    assert len(first[0]) == hp.rounds + 1


def test_mlflow_holds_one_parent_and_one_child_per_round_with_the_file_metrics(read_only_lineage):
    lineage = read_only_lineage
    runs = mlflow.search_runs(experiment_names=[lineage.tracking.experiment], output_format="list")
    parents = [r for r in runs if r.data.tags.get("lottery.kind") == "lineage"]
    children = {int(r.data.tags["lottery.round"]): r for r in runs if r.data.tags.get("lottery.kind") == "round"}
    assert len(parents) == 1 and sorted(children) == list(range(lineage.rounds + 1))
    parent = parents[0]
    assert parent.data.tags["lottery.lineage"] == provenance.lineage_id(lineage)
    assert parent.data.tags["lottery.params_hash"] == identity.params_hash(lineage)
    assert parent.data.params["prune.rate"] == "0.2"
    for round_, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        metrics = json.loads(paths.round_metrics(round_).read_text())
        assert run.data.metrics["test_accuracy_at_early_stop"] == metrics["test_accuracy_at_early_stop"]
        assert run.data.metrics["weights_remaining_per_layer.layers.1.weight"] == metrics["weights_remaining_per_layer"]["layers.1.weight"]
        if round_:
            assert run.data.tags["lottery.previous_round_run_id"] == children[round_ - 1].info.run_id
            assert run.data.tags["dvc.stage.prune"] == f"prune@{round_}"
    history = mlflow.tracking.MlflowClient().get_metric_history(children[1].info.run_id, "validation_loss")
    assert [m.step for m in history] == [0, 20, 40, 60]
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(children[1].info.run_id)}
    assert {"mask.pt", "sparsity.json"} <= artifacts
    lineage_file = json.loads(paths.lineage_file().read_text())
    assert lineage_file["parent_run_id"] == parent.info.run_id
    assert lineage_file["round_run_ids"] == {str(r): run.info.run_id for r, run in children.items()}


def test_report_registers_the_smallest_matching_ticket(workdir, make_hp):
    hp = make_hp(**{"tracking.registered_model": "tiny-ticket", "report.tolerance": 1.0})
    pipeline.run_lineage(hp)
    client = mlflow.tracking.MlflowClient()
    (version,) = client.search_model_versions("name = 'tiny-ticket'")
    summary = json.loads(paths.summary().read_text())
    assert version.tags["lottery.round"] == str(summary["smallest_matching_ticket"]["round"]) == "2"
    assert version.tags["lottery.lineage"] == provenance.lineage_id(hp)
    pipeline.summarize(hp)  # report again: the same ticket is not registered twice
    assert [v.version for v in client.search_model_versions("name = 'tiny-ticket'")] == [version.version]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pickle-format (or any other) warning on load
        # ... but torch's own: 2.11's torch.export.load (the GPU image's torch) wraps the archive's read-only
        # bytes with torch.frombuffer and warns so; later torch reads them otherwise.
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning, "torch.export")
        model = mlflow.pytorch.load_model(f"models:/tiny-ticket/{version.version}")
    # MLflow's safe format: a torch.export program (model.pt2), no pickled model.
    saved = {a.path for a in client.list_artifacts(version.run_id, "ticket-round-2/data")}
    assert saved == {"ticket-round-2/data/model.pt2"}
    trained, _ = checkpoints.load_model(paths.trained_weights(2))
    images = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(images), trained.eval()(images), atol=1e-6)


def test_rerunning_stages_reuses_the_lineage_runs(lineage):
    pipeline.evaluate(lineage, 1)
    pipeline.summarize(lineage)
    runs = mlflow.search_runs(experiment_names=[lineage.tracking.experiment], output_format="list")
    assert len(runs) == 1 + lineage.rounds + 1


def test_report_fills_in_rounds_that_mlflow_missed(lineage):
    client = mlflow.tracking.MlflowClient()
    lost = json.loads(paths.lineage_file().read_text())["round_run_ids"]["2"]
    client.delete_run(lost)  # as if the round had run while the tracking store was down
    pipeline.summarize(lineage)
    runs = mlflow.search_runs(experiment_names=[lineage.tracking.experiment], output_format="list")
    round_2 = [r for r in runs if r.data.tags.get("lottery.round") == "2"]
    assert len(round_2) == 1 and round_2[0].info.run_id != lost
    assert round_2[0].data.metrics["test_accuracy_at_early_stop"] == json.loads(paths.round_metrics(2).read_text())["test_accuracy_at_early_stop"]
    logged = client.get_metric_history(round_2[0].info.run_id, "test_accuracy")
    measured = [p for p in json.loads(paths.training_log(2).read_text())["curve"] if "test_accuracy" in p]
    assert sorted((m.step, m.value) for m in logged) == [(p["iteration"], p["test_accuracy"]) for p in measured]
    assert measured[0]["iteration"] == 0 and measured[-1]["iteration"] == 60  # always the first and the end


def test_controls_run_as_nested_branches_of_each_round(workdir, make_hp):
    hp = make_hp(**{"controls.run": ["reinit", "random_sparse"]})
    pipeline.run_lineage(hp)
    runs = mlflow.search_runs(experiment_names=[hp.tracking.experiment], output_format="list")
    rounds = {r.data.tags["lottery.round"]: r.info.run_id for r in runs if r.data.tags.get("lottery.kind") == "round"}
    branches = [r for r in runs if r.data.tags.get("lottery.kind") == "control"]
    assert sorted((r.data.tags["lottery.round"], r.data.tags["lottery.control"]) for r in branches) == [
        ("1", "random_sparse"), ("1", "reinit"), ("2", "random_sparse"), ("2", "reinit")
    ]
    for run in branches:
        assert run.data.tags["mlflow.parentRunId"] == rounds[run.data.tags["lottery.round"]]
        assert "test_accuracy_at_early_stop" in run.data.metrics
    ticket = torch.load(paths.mask(2), weights_only=True)
    random_mask = torch.load(paths.mask(2, "random_sparse"), weights_only=True)
    assert not torch.equal(ticket["layers.1.weight"], random_mask["layers.1.weight"])
    summary = json.loads(paths.summary().read_text())
    assert {"ticket", "reinit", "random_sparse"} <= set(summary["rounds"][2])
    assert isinstance(summary["rounds"][2]["winning_ticket"], bool)
    assert "reinit_test_accuracy_at_early_stop" in paths.rounds_plot_data().read_text().splitlines()[0]


def test_replicates_aggregate_two_seeds_with_their_controls(workdir, make_hp, monkeypatch):
    from lottery import replicates

    for seed in (0, 1):
        seed_dir = workdir / f"seed_{seed}"  # one workspace per seed, as DVC experiments have
        seed_dir.mkdir()
        (seed_dir / "data").symlink_to(workdir / "data")
        monkeypatch.chdir(seed_dir)
        pipeline.run_lineage(make_hp(seed=seed, **{"controls.run": ["reinit", "random_sparse"]}))
    hp = make_hp(seed=0, **{"controls.run": ["reinit", "random_sparse"]})
    summary = replicates.summarize(hp)
    assert summary["seeds"] == 2
    for row in summary["rounds"][1:]:
        for branch in ("ticket", "reinit", "random_sparse"):
            accuracy = row[branch]["test_accuracy_at_early_stop"]
            assert accuracy["n"] == 2 and accuracy["min"] <= accuracy["mean"] <= accuracy["max"]
    per_seed = [json.loads((workdir / f"seed_{s}" / paths.round_metrics(2, "reinit")).read_text()) for s in (0, 1)]
    assert summary["rounds"][2]["reinit"]["early_stop_iteration"]["mean"] == sum(m["early_stop_iteration"] for m in per_seed) / 2
    assert paths.replicates_figure().read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(replicates.ReplicateError, match="seed 0: round 3 has no results"):
        replicates.measurements(make_hp(seed=0, rounds=hparams.rounds_section(3), **{"controls.run": ["reinit", "random_sparse"]}))


def test_oneshot_prunes_the_dense_network_to_each_rounds_sparsity(workdir, make_hp):
    hp = make_hp(**{"prune.schedule": "oneshot"})
    pipeline.run_lineage(hp)
    dense, _ = checkpoints.load_model(paths.trained_weights(0))
    expected = driver.prune(hp.prune, dense, masks.ones(dense), seed=0, rounds=2)
    mask = torch.load(paths.mask(2), weights_only=True)
    assert all(torch.equal(mask[k], expected[k]) for k in mask)
    assert mask["layers.1.weight"].float().mean().item() == pytest.approx(0.64, abs=1e-4)


def test_an_unreachable_tracking_server_costs_a_warning_not_the_outputs(workdir, make_hp, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    # A fresh outage: another test of this worker process may have given up on this URI already,
    # and then the process would stay silent about it.
    mlflow_connection.forget_probe("http://127.0.0.1:9")
    hp = make_hp(**{"rounds": {"1": {"prev": 0}}})
    pipeline.run_lineage(hp)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: MLflow")]
    assert warnings and all("results kept in DVC outputs" in line for line in warnings)
    assert json.loads(paths.round_metrics(1).read_text())["round"] == 1
    assert paths.summary().exists()


def metrics(round_, remaining, accuracy, early_stop):
    return {"round": round_, "weights_remaining": remaining, "test_accuracy_at_early_stop": accuracy,
            "early_stop_iteration": early_stop, "final_test_accuracy": accuracy}


def test_summary_names_the_smallest_ticket_within_tolerance():
    ticket = {
        0: [metrics(0, 1.0, 0.980, 900)],
        1: [metrics(1, 0.5, 0.982, 700)],
        2: [metrics(2, 0.25, 0.976, 800)],
        3: [metrics(3, 0.125, 0.960, 1200)],
    }
    assert report.summarize({"ticket": ticket}, tolerance=0.005)["smallest_matching_ticket"]["round"] == 2
    assert report.summarize({"ticket": ticket}, tolerance=0.001)["smallest_matching_ticket"]["round"] == 1
    no_match = {0: ticket[0], 3: ticket[3]}
    assert report.summarize({"ticket": no_match}, tolerance=0.001)["smallest_matching_ticket"] is None
    csv_lines = report.rounds_csv(report.summarize({"ticket": ticket}, tolerance=0.005)).splitlines()
    assert csv_lines[0].startswith("round,weights_remaining,percent_remaining,ticket_test_accuracy_at_early_stop,")
    assert csv_lines[3].startswith("2,0.25,25.0,0.976,")


def test_the_headline_gives_the_smallest_matching_ticket_the_last_round_and_the_verdict():
    ticket = {
        0: [metrics(0, 1.0, 0.980, 900)],
        1: [metrics(1, 0.5, 0.982, 700)],  # a winning ticket
        2: [metrics(2, 0.25, 0.976, 800)],  # within 0.005 of dense, but less accurate
        3: [metrics(3, 0.125, 0.960, 1200)],
    }
    headline = report.headline(report.summarize({"ticket": ticket}, tolerance=0.005))
    assert headline == {
        "dense_acc": 0.980,
        "match_weights": 0.25,
        "match_acc": 0.976,
        "last_round": 3,
        "last_weights": 0.125,
        "last_acc": 0.960,
        "verdict": "matching",
    }
    assert report.headline(report.summarize({"ticket": ticket}, tolerance=0.001))["verdict"] == "winning"
    no_match = report.headline(report.summarize({"ticket": {0: ticket[0], 3: ticket[3]}}, tolerance=0.001))
    assert (no_match["match_weights"], no_match["match_acc"], no_match["verdict"]) == (None, None, "no match")


def test_verdict_over_seeds_uses_means_of_accuracy_and_early_stop():
    ticket = {
        0: [metrics(0, 1.0, 0.980, 1000), metrics(0, 1.0, 0.970, 800)],  # dense: 0.975, 900
        1: [metrics(1, 0.5, 0.990, 600), metrics(1, 0.5, 0.962, 1100)],  # 0.976, 850: wins
        2: [metrics(2, 0.25, 0.985, 700), metrics(2, 0.25, 0.975, 1200)],  # 0.98, 950: stops later
        3: [metrics(3, 0.125, 0.960, 500), metrics(3, 0.125, 0.970, 500)],  # 0.965: less accurate
    }
    reinit = {r: [metrics(r, 0.5 ** r, 0.95, 2000)] * 2 for r in (1, 2, 3)}
    summary = report.summarize({"ticket": ticket, "reinit": reinit}, tolerance=0.0)
    assert [r.get("winning_ticket") for r in summary["rounds"]] == [None, True, False, False]
    round_1 = summary["rounds"][1]["ticket"]["test_accuracy_at_early_stop"]
    assert round_1 == {"mean": pytest.approx(0.976), "min": 0.962, "max": 0.990, "n": 2}
    assert summary["rounds"][2]["reinit"]["early_stop_iteration"]["mean"] == 2000
    assert summary["seeds"] == 2
    table = report.format_table(summary)
    assert "| 1 | 50.0% | 97.60% / 850 | 95.00% / 2000 | yes |" in table
