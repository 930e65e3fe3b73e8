"""How big and how fast a model really is: parameter counts, FLOPs, latency and a sparse file format."""

import os
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


SPARSE_FORMAT = "lottery-sparse"
SPARSE_VERSION = 1
_MASKED_KINDS = (nn.Conv2d, nn.Linear)


def parameter_count(model):
    """Number of elements over all parameters of `model`."""
    return sum(param.numel() for param in model.parameters())


def nonzero_parameter_count(model):
    """Number of parameter elements of `model` that are not zero."""
    return sum(int(torch.count_nonzero(param)) for param in model.parameters())


def _device(model):
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next(model.parameters(), torch.empty(0)).device


def _tracker_name(root, name):
    """The key FlopCounterMode gives the submodule `name` of `root`: dotted, under the root's class name."""
    prefix = type(root).__name__
    return f"{prefix}.{name}" if name else prefix


def _weight_name(name):
    """The parameter name of the weight of the submodule `name` ('' is the root module)."""
    return f"{name}.weight" if name else "weight"


def _count(model, input_shape):
    """Per-module FLOP totals of one eval-mode forward pass on a batch of one zero example."""
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros((1, *input_shape), device=_device(model))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


def flops(model, input_shape, mask=None):
    """FLOPs of one forward pass on one example of `input_shape` (no batch dimension), as
    `torch.utils.flop_counter` counts them: matrix multiplications and convolutions (2 per
    multiply-add); activations, pooling, BatchNorm and additions count nothing.

    With `mask` ({parameter name: bool tensor}), each Conv2d / Linear whose weight is masked counts
    only the fraction of its FLOPs matching the fraction of its weights kept: the theoretical cost of
    the unstructured sparse model. Every other counted operation counts in full.
    """
    counts = _count(model, input_shape)
    total = counts.get("Global", 0)
    if not mask:
        return int(total)
    dense_masked, sparse_masked = 0, 0.0
    for name, module in model.named_modules():
        keep = mask.get(_weight_name(name))
        if keep is None or not isinstance(module, _MASKED_KINDS):
            continue
        # Parent rows also hold their children's FLOPs, so only these leaf rows are taken.
        leaf = counts.get(_tracker_name(model, name), 0)
        dense_masked += leaf
        sparse_masked += leaf * keep.float().mean().item()
    return int(round(total - dense_masked + sparse_masked))


def latency(model, input_shape, batch_size, repeats=30, warmup=5):
    """Median wall-clock seconds of one eval-mode forward pass on a batch of `batch_size`."""
    return latencies([model], input_shape, batch_size, repeats, warmup)[0]


def latencies(models, input_shape, batch_size, repeats=30, warmup=5):
    """`latency` of each model, timed in turn within every repeat, so that a slow spell of the
    machine lands on all of them alike and their ratios stay fair."""
    device = _device(models[0])
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((batch_size, *input_shape), generator=generator).to(device)
    # Without a sync the clock would stop when CUDA kernels are queued, not when they finish.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    modes = [model.training for model in models]
    times = [[] for _ in models]
    try:
        with torch.inference_mode():
            for model in models:
                model.eval()
                for _ in range(warmup):
                    model(example)
            sync()
            for _ in range(repeats):
                for model, seconds in zip(models, times):
                    start = time.perf_counter()
                    model(example)
                    sync()
                    seconds.append(time.perf_counter() - start)
    finally:
        for model, training in zip(models, modes):
            model.train(training)
    return [statistics.median(seconds) for seconds in times]


def _pack(tensor, keep, name):
    """The shape, packed bitmask and kept values of one masked tensor."""
    if keep.shape != tensor.shape:
        raise ValueError(f"mask[{name!r}] has shape {tuple(keep.shape)}, the tensor {tuple(tensor.shape)}")
    keep = keep.detach().cpu().bool()
    tensor = tensor.detach().cpu()
    bits = np.packbits(keep.flatten().numpy())
    return {"shape": list(tensor.shape), "bits": torch.from_numpy(bits), "values": tensor[keep]}


def _unpack(entry):
    """The dense tensor (pruned entries 0) and bool mask of one packed entry."""
    shape = entry["shape"]
    numel = int(np.prod(shape, dtype=np.int64))
    keep = torch.from_numpy(np.unpackbits(entry["bits"].numpy(), count=numel).astype(bool)).reshape(shape)
    values = entry["values"]
    dense = torch.zeros(shape, dtype=values.dtype)
    dense[keep] = values
    return dense, keep


def pack_state(state_dict, mask):
    """`state_dict` with each masked tensor as a bitmask plus its kept values: a payload for
    torch.save whose size scales with the weights remaining."""
    missing = sorted(set(mask) - set(state_dict))
    if missing:
        raise ValueError(f"mask names {missing} are not in the state dict")
    tensors = {}
    for name, tensor in state_dict.items():
        if name in mask:
            tensors[name] = {"sparse": _pack(tensor, mask[name], name)}
        else:
            tensors[name] = {"dense": tensor}
    return {"format": SPARSE_FORMAT, "version": SPARSE_VERSION, "tensors": tensors}


def unpack_state(payload, source):
    """(dense state dict, mask) from a `pack_state` payload; `source` names it in errors."""
    tag = (payload.get("format"), payload.get("version")) if isinstance(payload, dict) else None
    if tag != (SPARSE_FORMAT, SPARSE_VERSION):
        raise ValueError(f"{source} is not a {SPARSE_FORMAT} v{SPARSE_VERSION} payload (found {tag})")
    state_dict, mask = {}, {}
    for name, entry in payload["tensors"].items():
        if "sparse" in entry:
            state_dict[name], mask[name] = _unpack(entry["sparse"])
        else:
            state_dict[name] = entry["dense"]
    return state_dict, mask


def file_bytes(path):
    """Size of the file at `path` on disk, in bytes."""
    return os.path.getsize(path)
