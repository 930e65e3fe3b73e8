"""compact@r: round r's ticket made physically small and measured against the dense model."""

import torch

from lottery import channels, checkpoints, compression, devices, masks, paths, provenance, records, tracking
from lottery.factorize import layers
from lottery.io import write_json
from lottery.steps.common import model_spec, save_weights, test_split

# The bar for "the compact model computes what the masked one does".
EQUIVALENCE_TOLERANCE = 1e-4
LATENCY_BATCHES = (1, 64)


def compact(hp, round_):
    """A channel mask's pruned channels removed from every layer (a smaller dense model), a weight
    mask's ticket stored sparse, or a factorized network as it is (its small dense layers). Checked
    to compute what the masked model computes, then measured against the dense model of round 0."""
    model, checkpoint = checkpoints.load_model(paths.trained_weights(round_))
    mask = masks.load(paths.mask(round_), model)
    model.eval()
    probe = test_split(hp).x[:256]
    if channels.is_channel_mask(model, mask):
        form, shipped, sparse_mask = "channels_removed", channels.compact(model, mask), None
        spec = model_spec(hp, compact_of=shipped)
        _check_equivalent(model, shipped, probe, round_)  # the cut model, before it is saved
    elif layers.ranks(model):  # already its small dense layers, every weight kept
        form, shipped, sparse_mask, spec = "factorized", model, None, checkpoint["model"]
    else:  # the masked model itself is shipped, as a sparse file: the file is what to check
        form, shipped, sparse_mask, spec = "sparse_file", model, mask, checkpoint["model"]
    save_weights(
        paths.compact_model(round_),
        shipped,
        hp,
        round_=round_,
        iteration=checkpoint["iteration"],
        parents=[paths.trained_weights(round_), paths.mask(round_)],
        spec=spec,
        sparse_mask=sparse_mask,
    )
    loaded, _ = checkpoints.load_model(paths.compact_model(round_))
    difference = _check_equivalent(model, loaded.eval(), probe, round_)
    dense, _ = checkpoints.load_model(paths.trained_weights(0))
    measured = compression_report(hp, round_, dense, loaded, mask, form)
    measured["max_abs_difference"] = difference
    write_json(paths.compression_report(round_), measured)
    tracking.publish(hp, records.compacted(hp, round_))


def compression_report(hp, round_, dense, shipped, mask, form):
    """Parameters, FLOPs, bytes on disk and median latency on `train.device` (batch 1 and 64; the
    two models timed in turn) of the dense model and the shipped one, with the FLOPs speedup
    beside the measured ones, and the device that was timed. `form`: how the model is shipped,
    channels_removed | factorized | sparse_file (only this one runs the mask)."""
    input_shape = dense.input_shape
    structured = form != "sparse_file"
    # A sparse file stores only the kept values of its masked tensors.
    pruned = 0 if structured else sum(keep.numel() - int(keep.sum()) for keep in mask.values())
    dense_figures = {
        "parameters": compression.parameter_count(dense),
        "flops": compression.flops(dense, input_shape),
        "bytes": compression.file_bytes(paths.trained_weights(0)),
    }
    compact_figures = {
        "parameters": compression.parameter_count(shipped) - pruned,
        "flops": compression.flops(shipped, input_shape, None if structured else mask),
        "bytes": compression.file_bytes(paths.compact_model(round_)),
    }
    device = devices.prepare(hp.train)
    for batch in LATENCY_BATCHES:
        timed = compression.latencies(
            [dense.to(device), shipped.to(device)], input_shape, batch, repeats=hp.compact.latency_repeats
        )
        for figures, seconds in zip((dense_figures, compact_figures), timed):
            figures[f"latency_ms_batch_{batch}"] = 1000 * seconds
    report_ = {
        "round": round_,
        "form": form,
        "latency_device": provenance.device_name(device),
        "dense": dense_figures,
        "compact": compact_figures,
        "flops_speedup": dense_figures["flops"] / compact_figures["flops"],
        "parameter_ratio": compact_figures["parameters"] / dense_figures["parameters"],
        "bytes_ratio": compact_figures["bytes"] / dense_figures["bytes"],
    }
    for batch in LATENCY_BATCHES:
        key = f"latency_ms_batch_{batch}"
        report_[f"measured_speedup_batch_{batch}"] = dense_figures[key] / compact_figures[key]
    return report_


@torch.no_grad()
def _check_equivalent(masked, compact_model, probe, round_):
    difference = (masked(probe) - compact_model(probe)).abs().max().item()
    if difference > EQUIVALENCE_TOLERANCE:
        raise AssertionError(f"round {round_}: the compact model differs from the masked one by {difference:.2e}")
    return difference
