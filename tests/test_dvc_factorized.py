"""A factorized lineage through the real stage graph: `dvc repro` from θ0 to low-rank networks whose
ranks fall round by round, with the ranks in the DVC metrics and in MLflow."""

import json

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from lottery import checkpoints, lineage
from lottery.factorize import layers
from lottery.lineage_catalog import LineageCatalog
from tests.conftest import SMALL_EVALUATION, reproduced_repo, sh

FACTORIZED = {
    "factorize.enabled": True,
    "weight_agnostic.values": [],
    "controls.run": [],
    "train.weight_decay": 0.001,
    "prune.rate": 0.5,
    "compact.latency_repeats": 2,
    **SMALL_EVALUATION,  # ranks and compression are checked here, no accuracy
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mnist_root):
    with reproduced_repo(tmp_path_factory, mnist_root, "factorized", FACTORIZED) as repo:
        yield repo


def read(repo, path):
    return json.loads((repo / path).read_text())


def test_dvc_repro_trains_factorized_rounds_whose_ranks_fall(repo):
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json", "metrics/rounds"))[""]["data"]
    ranks = [shown[f"metrics/rounds/round_{r}.json"]["data"]["ranks_per_layer"] for r in (1, 2)]
    assert set(ranks[0]) == {"layers.1", "layers.3"}  # the output layer stays dense
    assert all(ranks[1][name] < ranks[0][name] for name in ranks[0])
    for round_ in (1, 2):
        trained, checkpoint = checkpoints.load_model(repo / f"models/round_{round_}/trained.pt")
        assert checkpoint["model"]["ranks"] == layers.ranks(trained) == ranks[round_ - 1]
        sparsity = read(repo, f"models/round_{round_}/sparsity.json")
        assert sparsity["ranks"] == ranks[round_ - 1] and sparsity["kept"] <= sparsity["ticket_weights"]
        report = read(repo, f"metrics/compression/round_{round_}.json")
        assert report["form"] == "factorized" and report["max_abs_difference"] < 1e-4
        compact, _ = checkpoints.load_model(repo / f"models/round_{round_}/compact.pt")
        assert layers.ranks(compact) == ranks[round_ - 1] and compact.eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_mlflow_shows_each_rounds_ranks_as_params_and_metrics(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lottery")
    runs = {run.data.tags.get("lottery.round"): run for run in client.search_runs([experiment.experiment_id])}
    for round_ in (1, 2):
        ranks = read(repo, f"metrics/rounds/round_{round_}.json")["ranks_per_layer"]
        run = runs[str(round_)]
        assert {name: int(run.data.params[f"rank.{name}"]) for name in ranks} == ranks
        assert {name: run.data.metrics[f"ranks_per_layer.{name}"] for name in ranks} == ranks
        assert run.data.params["factorize.spectral_init"] == "True"


def test_the_lineage_cli_shows_the_ranks_and_the_compression_beside_the_metrics(repo):
    catalog = LineageCatalog(f"sqlite:///{repo / 'mlflow.db'}", "lottery")
    (parent,) = catalog.parents()
    found = catalog.load(parent)
    rows = {row["round"]: row for row in lineage.round_table(found)}
    diffed = {row["round"]: row for row in lineage.diff(catalog, found, found)["rounds"]}
    assert "ranks" not in rows[0] and diffed[0]["ranks"] == {}  # round 0 is the dense network
    for round_ in (1, 2):
        ranks = read(repo, f"metrics/rounds/round_{round_}.json")["ranks_per_layer"]
        assert rows[round_]["ranks"] == " ".join(f"{layer}:{rank}" for layer, rank in ranks.items())
        assert {layer: sides["a"] for layer, sides in diffed[round_]["ranks"].items()} == ranks
        compressed = read(repo, f"metrics/compression/round_{round_}.json")
        assert rows[round_]["compression.parameter_ratio"] == pytest.approx(compressed["parameter_ratio"])
        assert rows[round_]["compression.flops_speedup"] == pytest.approx(compressed["flops_speedup"])


def test_a_rerun_is_a_no_op_and_each_switch_reruns_only_the_stages_it_shapes(repo):
    rerun = sh(repo, "dvc", "repro")
    assert "Running stage" not in rerun and "didn't change, skipping" in rerun
    params = yaml.safe_load((repo / "params.yaml").read_text())
    original = (repo / "params.yaml").read_text()
    try:
        for key, stage in (("spectral_init", "rewind"), ("frobenius_decay", "retrain")):
            changed = {**params, "factorize": {**params["factorize"], key: not params["factorize"][key]}}
            (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
            status = json.loads(sh(repo, "dvc", "status", "--json"))
            direct = {name for name, changes in status.items() if any("changed deps" in c for c in changes if isinstance(c, dict))}
            whole_file = {"validate", "report"}  # they read all of params.yaml
            assert {name.split("@")[0] for name in direct} - whole_file == {stage}, status
    finally:
        (repo / "params.yaml").write_text(original)
    assert "Data and pipelines are up to date." in sh(repo, "dvc", "status")
