"""The pipeline on a GPU, run where torch finds CUDA (skipped, with the reason, elsewhere)."""

import json

import pytest
import torch

from lottery import checkpoints, early_bird, masks, paths, pipeline
from lottery.io import read_json
from lottery.errors import ParamsError
from tests.conftest import reproduced_repo
from tests.test_early_bird import eb_params
from tests.test_pipeline import fingerprints_of_two_runs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)")

CUDA = {"train.device": "cuda", "compact.latency_repeats": 2}


def test_a_lineage_with_its_controls_runs_on_cuda_and_saves_cpu_masks(workdir, make_hp):
    hp = make_hp(**CUDA, **{"controls.run": ["reinit", "random_sparse"]})
    pipeline.run_lineage(hp)
    for round_, control in hp.branches():
        mask = torch.load(paths.mask(round_, control), weights_only=True)
        assert {keep.device.type for keep in mask.values()} == {"cpu"}
        assert read_json(paths.training_log(round_, control))["environment"]["device"].startswith("cuda")
        assert read_json(paths.round_metrics(round_, control))["final_test_accuracy"] > 0.5
    assert read_json(paths.compression_report(1))["latency_device"].startswith("cuda")
    assert paths.summary().exists()


def test_a_gpu_lineage_of_a_conv_net_repeats_its_masks_and_metrics_bit_for_bit(workdir, make_hp, monkeypatch):
    hp = make_hp(**CUDA, **{"model.name": "conv2", "train.deterministic": True})
    first, second = fingerprints_of_two_runs(hp, workdir, monkeypatch)
    assert second == first and len(first[0]) == hp.rounds + 1


def test_early_bird_searches_on_cuda_and_prune_draws_its_mask(workdir, make_hp):
    hp = eb_params(make_hp, **CUDA, **{"early_bird.quantize_bits": 8})
    pipeline.run_lineage(hp)
    searched = read_json(paths.early_bird_report())
    trained, _ = checkpoints.load_model(paths.trained_weights(1))
    mask = masks.load(paths.mask(1), trained)
    assert early_bird.digest(early_bird.channel_vector(trained, mask)) == searched["mask_sha256"]
    assert read_json(paths.compression_report(1))["form"] == "channels_removed"


def test_bfloat16_with_tf32_trains_a_ticket_on_cuda(workdir, make_hp):
    hp = make_hp(**CUDA, **{"train.precision": "bfloat16", "train.tf32": True})
    pipeline.run_lineage(hp)
    assert read_json(paths.round_metrics(hp.rounds))["final_test_accuracy"] > 0.5


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="data-parallel CUDA needs 2 GPUs")
def test_two_gpus_train_a_batchnorm_lineage_through_torchrun(tmp_path_factory, mnist_root):
    overrides = {
        **CUDA,
        "distributed.processes_per_node": 2,
        "model.name": "vgg11",
        "model.width": 0.125,
        "prune.strategy": "bn_slimming",
        "prune.granularity": "channel",
        "prune.scope": "global",
        "train.bn_l1": 1e-4,
    }
    with reproduced_repo(tmp_path_factory, mnist_root, "two_gpus", overrides) as repo:
        log = json.loads((repo / paths.training_log(0)).read_text())
        assert log["environment"]["processes"] == 2
        assert json.loads((repo / paths.round_metrics(2)).read_text())["final_test_accuracy"] > 0.5


def test_more_processes_than_gpus_is_refused_in_one_line(make_hp):
    too_many = torch.cuda.device_count() + 1
    with pytest.raises(ParamsError, match=f"distributed.processes_per_node = {too_many}: one GPU per process"):
        make_hp(**CUDA, **{"distributed.processes_per_node": too_many, "train.batch_size": 60 * too_many})
