"""tools/device/compare_runs.py: two runs match only when every tensor and metric does."""

import importlib.util
import json

import pytest
import torch

from tests.conftest import PROJECT

spec = importlib.util.spec_from_file_location("compare_runs", PROJECT / "tools" / "device" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def write_run(root, weight, accuracy=0.97, latency=0.12, device="cuda:0 (NVIDIA H200)"):
    (root / "models" / "round_1").mkdir(parents=True)
    (root / "metrics" / "compression").mkdir(parents=True)
    torch.save({"model": {"name": "lenet_300_100"}, "round": 1, "state_dict": {"w": weight}}, root / "models" / "round_1" / "trained.pt")
    (root / "models" / "round_1" / "training.json").write_text(json.dumps({"environment": {"device": device}}))
    (root / "metrics" / "round_1.json").write_text(json.dumps({"final_test_accuracy": accuracy}))
    report = {"flops_speedup": 1.25, "latency_ms_batch_1": latency, "measured_speedup_batch_1": 1.0 / latency}
    (root / "metrics" / "compression" / "round_1.json").write_text(json.dumps(report))
    return root


@pytest.fixture
def first(tmp_path):
    return write_run(tmp_path / "first", torch.tensor([0.5, -1.0, 0.0]))


def test_the_same_tensors_and_metrics_match_whatever_the_latencies(first, tmp_path, capsys):
    second = write_run(tmp_path / "second", torch.tensor([0.5, -1.0, 0.0]), latency=0.5)
    assert compare_runs.main([str(first), str(second), "--expect-device", "cuda"]) == 0
    assert "RESULT: identical" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("weight", "accuracy", "named"),
    [
        (torch.tensor([0.5, -1.0, -0.0]), 0.97, "state_dict.w: 1 of 3 values differ"),  # -0.0: other bytes
        (torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64), 0.97, "state_dict.w: torch.float32 (3,) against torch.float64"),
        (torch.tensor([0.5, -1.0, 0.0]), 0.9700001, "final_test_accuracy: 0.97 against 0.9700001"),
    ],
)
def test_one_value_that_differs_is_named(first, tmp_path, capsys, weight, accuracy, named):
    second = write_run(tmp_path / "second", weight, accuracy=accuracy)
    assert compare_runs.main([str(first), str(second)]) == 1
    assert named in capsys.readouterr().out


def test_a_file_one_run_lacks_differs(first, tmp_path, capsys):
    second = write_run(tmp_path / "second", torch.tensor([0.5, -1.0, 0.0]))
    (second / "metrics" / "round_1.json").unlink()
    assert compare_runs.main([str(first), str(second)]) == 1
    assert "DIFFERENT metrics/round_1.json: missing from" in capsys.readouterr().out


def test_a_run_trained_elsewhere_than_the_expected_device_fails(first, tmp_path, capsys):
    second = write_run(tmp_path / "second", torch.tensor([0.5, -1.0, 0.0]), device="cpu")
    assert compare_runs.main([str(first), str(second), "--expect-device", "cuda"]) == 1
    assert "do not all name cuda" in capsys.readouterr().out


def test_a_folder_without_a_run_is_refused(first, tmp_path):
    assert compare_runs.main([str(first), str(tmp_path / "empty")]) == 2
