"""The stage functions chained in-process, as DVC would run them, on a tiny real-MNIST lineage."""

import hashlib
import json

import mlflow
import pytest
import torch

from lottery import checkpoints, masks, paths, pipeline, report


def run_lineage(hp):
    pipeline.init(hp)
    pipeline.train_dense(hp)
    for round_ in range(1, hp.rounds + 1):
        pipeline.prune(hp, round_)
        pipeline.rewind(hp, round_)
        pipeline.retrain(hp, round_)
        pipeline.evaluate(hp, round_)
    pipeline.summarize(hp)


def fingerprint():
    """Hashes of every mask and the text of every metrics file of the lineage in the cwd."""
    mask_files = sorted(paths.MODELS.glob("round_*/mask.pt"))
    digests = {str(p): hashlib.sha256(json.dumps({k: v.tolist() for k, v in torch.load(p, weights_only=True).items()}).encode()).hexdigest() for p in mask_files}
    metrics = {str(p): p.read_text() for p in sorted(paths.METRICS.rglob("*.json"))}
    return digests, metrics


@pytest.fixture
def lineage(workdir, make_hp):
    hp = make_hp()
    run_lineage(hp)
    return hp


def test_density_per_round_and_exact_zeros(lineage):
    for round_ in range(lineage.rounds + 1):
        model, _ = checkpoints.load_model(paths.trained_weights(round_))
        mask = masks.load(paths.mask(round_), model)
        metrics = json.loads(paths.round_metrics(round_).read_text())
        assert metrics["weights_remaining_per_layer"]["layers.1.weight"] == pytest.approx(0.8**round_, abs=1e-4)
        assert metrics["weights_remaining_per_layer"]["layers.5.weight"] == pytest.approx(0.9**round_, abs=2e-3)
        pipeline.check_pruned_weights_are_zero(model, mask)


def test_rewind_restores_theta0_exactly_on_surviving_weights(lineage):
    theta0 = checkpoints.load(paths.init_checkpoint())["state_dict"]
    for round_ in range(1, lineage.rounds + 1):
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
    run_lineage(hp)
    point = checkpoints.load(paths.rewind_point())
    theta0 = checkpoints.load(paths.init_checkpoint())["state_dict"]
    assert point["iteration"] == 20
    assert not torch.equal(point["state_dict"]["layers.1.weight"], theta0["layers.1.weight"])
    start = checkpoints.load(paths.start_weights(1))["state_dict"]
    keep = torch.load(paths.mask(1), weights_only=True)["layers.1.weight"]
    assert torch.equal(start["layers.1.weight"][keep], point["state_dict"]["layers.1.weight"][keep])
    curve = json.loads(paths.training_log(1).read_text())["curve"]
    assert curve[0]["iteration"] == 20  # the retrain resumes the schedule at k


def test_same_params_and_seed_give_identical_masks_and_metrics(workdir, make_hp, monkeypatch):
    hp = make_hp()
    run_lineage(hp)
    first = fingerprint()
    second_dir = workdir / "again"
    second_dir.mkdir()
    (second_dir / "data").symlink_to(workdir / "data")
    monkeypatch.chdir(second_dir)
    run_lineage(hp)
    assert fingerprint() == first
    assert len(first[0]) == hp.rounds + 1


def test_mlflow_holds_one_parent_and_one_child_per_round_with_the_file_metrics(lineage, workdir):
    runs = mlflow.search_runs(experiment_names=[lineage.tracking.experiment], output_format="list")
    parents = [r for r in runs if r.data.tags.get("lottery.kind") == "lineage"]
    children = {int(r.data.tags["lottery.round"]): r for r in runs if r.data.tags.get("lottery.kind") == "round"}
    assert len(parents) == 1 and sorted(children) == list(range(lineage.rounds + 1))
    parent = parents[0]
    assert parent.data.tags["lottery.params_hash"] == lineage.lineage_hash
    assert parent.data.params["prune.rate"] == "0.2"
    for round_, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        metrics = json.loads(paths.round_metrics(round_).read_text())
        assert run.data.metrics["test_accuracy_at_early_stop"] == metrics["test_accuracy_at_early_stop"]
        assert run.data.metrics["weights_remaining_per_layer.layers.1.weight"] == metrics["weights_remaining_per_layer"]["layers.1.weight"]
        if round_:
            assert run.data.tags["lottery.previous_round_run_id"] == children[round_ - 1].info.run_id
            assert run.data.tags["dvc.stage.prune"] == "prune"
    history = mlflow.tracking.MlflowClient().get_metric_history(children[1].info.run_id, "validation_loss")
    assert [m.step for m in history] == [0, 20, 40, 60]
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(children[1].info.run_id)}
    assert {"mask.pt", "sparsity.json"} <= artifacts
    lineage_file = json.loads(paths.lineage_file().read_text())
    assert lineage_file["parent_run_id"] == parent.info.run_id
    assert lineage_file["round_run_ids"] == {str(r): run.info.run_id for r, run in children.items()}


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
    assert len(client.get_metric_history(round_2[0].info.run_id, "test_accuracy")) == 4


def test_an_unreachable_tracking_server_costs_a_warning_not_the_outputs(workdir, make_hp, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    hp = make_hp(**{"rounds": {"1": {"prev": 0}}})
    run_lineage(hp)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: MLflow")]
    assert warnings and all("results kept in DVC outputs" in line for line in warnings)
    assert json.loads(paths.round_metrics(1).read_text())["round"] == 1
    assert paths.summary().exists()


def test_summary_names_the_smallest_ticket_within_tolerance():
    rounds = [
        {"round": 0, "weights_remaining": 1.0, "test_accuracy_at_early_stop": 0.980, "early_stop_iteration": 900, "final_test_accuracy": 0.978},
        {"round": 1, "weights_remaining": 0.5, "test_accuracy_at_early_stop": 0.982, "early_stop_iteration": 700, "final_test_accuracy": 0.98},
        {"round": 2, "weights_remaining": 0.25, "test_accuracy_at_early_stop": 0.976, "early_stop_iteration": 800, "final_test_accuracy": 0.97},
        {"round": 3, "weights_remaining": 0.125, "test_accuracy_at_early_stop": 0.960, "early_stop_iteration": 1200, "final_test_accuracy": 0.95},
    ]
    assert report.summarize(rounds, tolerance=0.005)["smallest_matching_ticket"]["round"] == 2
    assert report.summarize(rounds, tolerance=0.001)["smallest_matching_ticket"]["round"] == 1
    assert report.summarize(rounds[:1] + rounds[3:], tolerance=0.001)["smallest_matching_ticket"] is None
    csv_text = report.rounds_csv(rounds)
    assert csv_text.splitlines()[0].endswith("percent_remaining")
    assert csv_text.splitlines()[3].endswith(",25.0")
