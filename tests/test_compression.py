import time

import pytest
import torch
from torch import nn

from lottery import compression


def tiny_net():
    """Conv 1->4 (3x3, same padding) on 8x8, then a linear 256->10: FLOPs easy to count by hand."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10, bias=False),
    )


# A multiply-add counts as 2 FLOPs.
CONV_FLOPS = 2 * 1 * 3 * 3 * 4 * 8 * 8
LINEAR_FLOPS = 2 * (4 * 8 * 8) * 10


def test_flops_match_hand_count():
    assert compression.flops(tiny_net(), (1, 8, 8)) == CONV_FLOPS + LINEAR_FLOPS


def test_flops_count_matmuls_and_convolutions_only():
    # BatchNorm, ReLU, pooling and the bias of a Linear add nothing to the count.
    model = nn.Sequential(nn.BatchNorm2d(1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10))
    assert compression.flops(model, (1, 8, 8)) == 2 * 16 * 10
    assert compression.flops(nn.Sequential(nn.BatchNorm2d(1), nn.ReLU()), (1, 8, 8)) == 0


def test_flops_scale_masked_layers_by_fraction_kept():
    model = tiny_net()
    keep = torch.zeros(4, 1, 3, 3, dtype=torch.bool)
    keep[:2] = True  # exactly half the conv weights
    assert compression.flops(model, (1, 8, 8), mask={"0.weight": keep}) == CONV_FLOPS // 2 + LINEAR_FLOPS


def test_flops_with_nested_modules_count_each_leaf_once():
    model = nn.Sequential(tiny_net())
    keep = torch.zeros(10, 256, dtype=torch.bool)
    keep[:1] = True  # a tenth of the linear weights
    assert compression.flops(model, (1, 8, 8), mask={"0.3.weight": keep}) == CONV_FLOPS + LINEAR_FLOPS // 10


@pytest.mark.parametrize("training", [True, False])
def test_flops_restore_the_training_mode(training):
    model = tiny_net().train(training)
    compression.flops(model, (1, 8, 8))
    assert all(module.training == training for module in model.modules())


def test_parameter_counts_see_zeros():
    model = nn.Linear(5, 4)  # 20 weights + 4 biases
    with torch.no_grad():
        model.weight[:3] = 0.0
        model.bias[0] = 0.0
    assert compression.parameter_count(model) == 24
    assert compression.nonzero_parameter_count(model) == 24 - 15 - 1


def ticket(fraction_kept, seed=0):
    """A state dict with BatchNorm buffers and a Linear(300, 300) pruned to about `fraction_kept`, and its mask.

    Only the state dict is used, so the layers need not chain into a runnable forward pass.
    """
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(300, 300))
    model[1].running_mean.normal_(generator=generator)
    model[1].num_batches_tracked.fill_(7)
    state = model.state_dict()
    mask = {name: torch.rand(state[name].shape, generator=generator) < fraction_kept for name in ("0.weight", "3.weight")}
    for name, keep in mask.items():
        state[name] = state[name] * keep
    return state, mask


def save_sparse(state, mask, path):
    torch.save(compression.pack_state(state, mask), path)


def load_sparse(path):
    return compression.unpack_state(torch.load(path, weights_only=True), source=str(path))


def test_sparse_round_trip_is_exact(tmp_path):
    state, mask = ticket(0.3)
    path = tmp_path / "ticket.pt"
    save_sparse(state, mask, path)
    loaded_state, loaded_mask = load_sparse(path)
    assert list(loaded_state) == list(state)
    for name, tensor in state.items():
        assert loaded_state[name].dtype == tensor.dtype
        assert torch.equal(loaded_state[name], tensor), name
    assert set(loaded_mask) == set(mask)
    for name, keep in mask.items():
        assert loaded_mask[name].dtype == torch.bool
        assert torch.equal(loaded_mask[name], keep), name


def test_sparse_file_shrinks_with_weights_remaining(tmp_path):
    sizes = {}
    for fraction in (0.5, 0.1):
        state, mask = ticket(fraction)
        save_sparse(state, mask, tmp_path / f"{fraction}.pt")
        sizes[fraction] = compression.file_bytes(tmp_path / f"{fraction}.pt")
    torch.save(state, tmp_path / "dense.pt")
    assert sizes[0.1] < sizes[0.5]
    assert sizes[0.1] <= 0.3 * compression.file_bytes(tmp_path / "dense.pt")


def test_sparse_load_rejects_other_payloads(tmp_path):
    path = tmp_path / "dense.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ValueError, match="dense.pt"):
        load_sparse(path)


def test_pack_rejects_a_mask_that_does_not_fit():
    state, mask = ticket(0.5)
    mask["3.weight"] = mask["3.weight"][:10]
    with pytest.raises(ValueError, match="3.weight"):
        compression.pack_state(state, mask)


def test_latency_is_positive_and_restores_train_mode():
    model = tiny_net().train()
    seconds = compression.latency(model, (1, 8, 8), batch_size=4, repeats=3, warmup=1)
    assert isinstance(seconds, float) and seconds > 0
    assert model.training


class Recorder(torch.nn.Module):
    """Sleeps `seconds` per forward pass and notes its name in `calls`."""

    def __init__(self, name, seconds, calls):
        super().__init__()
        self.name, self.seconds, self.calls = name, seconds, calls

    def forward(self, x):
        self.calls.append(self.name)
        time.sleep(self.seconds)
        return x


def test_latencies_time_the_models_in_turn_and_each_gets_its_own_median():
    calls = []
    fast, slow = Recorder("fast", 0.002, calls).train(), Recorder("slow", 0.02, calls).eval()
    timed = compression.latencies([fast, slow], (1, 2, 2), batch_size=1, repeats=4, warmup=1)
    assert calls == ["fast", "slow"] + ["fast", "slow"] * 4
    # A sleep never ends early, however loaded the machine: each median is at least its own model's
    # sleep. Swapped medians, or one median of all the times (0.011 s), would put slow's below 0.02.
    assert timed[0] >= 0.002 and timed[1] >= 0.02
    assert fast.training and not slow.training
