"""Numeric settings of a run (precision, TF32, deterministic kernels), and masks that stay on the
CPU wherever the model is."""

import dataclasses

import pytest
import torch

from lottery import data, devices, hparams, identity, masks, paths, pipeline, report_tables, training
from lottery.models import catalog
from lottery.io import read_json
from lottery.errors import ParamsError


@pytest.fixture
def restored_flags():
    """The process-wide flags `devices.prepare` sets, put back after the test."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[4], saved[5]


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("tf32", [True, False])
def test_prepare_sets_the_determinism_and_tf32_flags_from_params(make_hp, restored_flags, deterministic, tf32):
    hp = make_hp(**{"train.deterministic": deterministic, "train.tf32": tf32, "train.device": "cpu"})
    assert devices.prepare(hp.train) == torch.device("cpu")
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    assert torch.backends.cudnn.deterministic is deterministic and torch.backends.cudnn.benchmark is not deterministic
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32


def test_bfloat16_autocasts_the_training_forward_passes_and_still_learns(mnist_root, make_hp, restored_flags):
    hp = make_hp(**{"train.device": "cpu", "train.iterations": 100})
    splits = data.load(hp.data, mnist_root)
    results = {}
    for precision in ("float32", "bfloat16"):
        model = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0)
        seen = []
        model.layers[1].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        train_hp = dataclasses.replace(hp.train, precision=precision)
        result = training.train(model, masks.ones(model), splits, train_hp, seed=0)
        results[precision] = (model.layers[1].weight.detach().clone(), result.final["test_accuracy"], set(seen))
    # training steps compute in bf16, evaluations in float32; the weights stay float32
    assert results["bfloat16"][2] == {torch.bfloat16, torch.float32}
    assert results["float32"][2] == {torch.float32}
    assert results["bfloat16"][0].dtype == torch.float32
    assert not torch.equal(results["bfloat16"][0], results["float32"][0])
    assert results["bfloat16"][1] > 0.7 and abs(results["bfloat16"][1] - results["float32"][1]) < 0.05


def test_precision_and_tf32_rename_the_lineage_but_deterministic_kernels_do_not(make_hp):
    default = identity.params_hash(make_hp())
    assert identity.params_hash(make_hp(**{"train.precision": "bfloat16"})) != default
    assert identity.params_hash(make_hp(**{"train.tf32": True})) != default
    assert identity.params_hash(make_hp(**{"train.deterministic": False})) == default


def test_a_bad_precision_is_refused_in_one_line(make_hp):
    with pytest.raises(ParamsError, match=r"^train.precision = 'float16': unknown \(expected one of \['bfloat16', 'float32'\]\)$"):
        make_hp(**{"train.precision": "float16"})


def test_masks_are_made_on_the_cpu_whatever_device_the_model_is_on():
    # 'meta' stands in for a GPU here: a model whose tensors live anywhere but the CPU.
    model = catalog.build("vgg11", (1, 28, 28), 10, seed=0, width=0.125).to("meta")
    assert {keep.device.type for keep in masks.ones(model).values()} == {"cpu"}


def test_the_compression_report_names_the_device_it_timed(workdir, make_hp):
    hp = make_hp(**{"train.device": "cpu", "rounds": hparams.rounds_section(1), "compact.latency_repeats": 2})
    pipeline.run_lineage(hp)
    measured = read_json(paths.compression_report(1))
    assert measured["latency_device"] == "cpu"
    table = report_tables.format_compression_table([measured]).splitlines()
    assert table[0].endswith("| timed on |") and table[2].endswith("| cpu |")
