"""Network Slimming through the real stage graph: `dvc repro` from BatchNorm VGG to compact models."""

import json

import pytest
import torch

from lottery import channels, checkpoints, compression
from tests.conftest import SMALL_EVALUATION, reproduced_repo, sh

SLIMMING = {
    "model.name": "vgg11",
    "model.width": 0.125,
    "train.optimizer": "sgd",
    "train.lr": 0.05,
    "train.momentum": 0.9,
    "train.bn_l1": 0.0001,
    "prune.strategy": "bn_slimming",
    "prune.granularity": "channel",
    "prune.scope": "global",
    "prune.rate": 0.4,
    "rewind.target": "finetune",
    "rewind.finetune_iterations": 40,
    "controls.run": [],
    "compact.latency_repeats": 2,
    # Only the channels removed are checked here, no accuracy: evaluating the VGG is half its CPU.
    **SMALL_EVALUATION,
    "weight_agnostic.values": [],
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mnist_root):
    with reproduced_repo(tmp_path_factory, mnist_root, "slimming", SLIMMING) as repo:
        yield repo


def test_each_round_ships_a_compact_model_equal_to_its_masked_ticket(repo):
    for round_ in (1, 2):
        report = json.loads((repo / f"metrics/compression/round_{round_}.json").read_text())
        assert report["form"] == "channels_removed" and report["max_abs_difference"] < 1e-4
        compact, checkpoint = checkpoints.load_model(repo / f"models/round_{round_}/compact.pt")
        assert compression.parameter_count(compact) == report["compact"]["parameters"]
        assert report["compact"]["parameters"] < report["dense"]["parameters"]
        assert checkpoint["model"]["name"] == "vgg11" and checkpoint["model"]["channels"] == channels.shapes(compact)
        assert compact.eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_the_compact_stages_are_in_the_graph_and_dvc_metrics_show_reads_their_reports(repo):
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json", "metrics/compression"))[""]["data"]
    round_1 = shown["metrics/compression/round_1.json"]["data"]
    round_2 = shown["metrics/compression/round_2.json"]["data"]
    assert 1 < round_1["flops_speedup"] < round_2["flops_speedup"]  # iterative: round 2 removes more channels
    dot = sh(repo, "dvc", "dag", "--dot").replace('"', "")
    assert "retrain@2 -> compact@2" in dot and "compact@2 -> report" in dot and "evaluate@2 -> report" in dot
