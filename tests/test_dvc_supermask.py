"""A supermask lineage through the real stage graph: `dvc repro` from random weights to masks that
no weight training ever touched, with their weight-agnostic accuracies in metrics files that
`dvc metrics show` reads."""

import json

import pytest
import torch

from tests.conftest import SMALL_EVALUATION, reproduced_repo, sh

SUPERMASK = {
    "prune.strategy": "edge_popup",
    "model.init": "signed_kaiming_constant",
    "model.width": 2.0,
    "supermask.iterations": 60,
    "supermask.weight_agnostic": True,
    "controls.run": [],
    "compact.latency_repeats": 2,
    **SMALL_EVALUATION,  # the weight-agnostic accuracies are checked for their keys and order alone
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mnist_root):
    with reproduced_repo(tmp_path_factory, mnist_root, "supermask", SUPERMASK) as repo:
        yield repo


def test_dvc_repro_searches_each_rounds_supermask_and_trains_no_weight(repo):
    theta0 = torch.load(repo / "models/init/init.pt", weights_only=True)["state_dict"]
    assert theta0["layers.1.weight"].shape == (600, 784)  # width 2.0: the wider random network
    for round_ in (1, 2):
        mask = torch.load(repo / f"models/round_{round_}/mask.pt", weights_only=True)
        trained = torch.load(repo / f"models/round_{round_}/trained.pt", weights_only=True)["state_dict"]
        assert torch.equal(trained["layers.3.weight"], theta0["layers.3.weight"] * mask["layers.3.weight"])
        assert float(mask["layers.1.weight"].float().mean()) == pytest.approx(0.8**round_, abs=1e-4)


def test_dvc_metrics_show_reads_the_weight_agnostic_accuracies_and_a_rerun_is_a_no_op(repo):
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json", "metrics/rounds"))[""]["data"]
    round_2 = shown["metrics/rounds/round_2.json"]["data"]
    assert set(round_2["weight_agnostic_accuracy"]) == {"w-2", "w-1", "w-0.5", "w0.5", "w1", "w2"}
    assert round_2["weight_agnostic_best_accuracy"] >= round_2["weight_agnostic_mean_accuracy"]
    sparsity = json.loads((repo / "models/round_2/sparsity.json").read_text())
    assert sparsity["method"]["prune.strategy"] == "edge_popup"
    assert "Data and pipelines are up to date." in sh(repo, "dvc", "status")
    rerun = sh(repo, "dvc", "repro")
    assert "Running stage" not in rerun and "didn't change, skipping" in rerun
