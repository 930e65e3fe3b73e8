"""Data-parallel training through torchrun (torch.distributed, DistributedDataParallel).

With `distributed.processes_per_node` × `distributed.nodes` above 1, a training stage (train,
retrain, control) runs itself again under `torch.distributed.run` and every process trains one
slice of each batch. The batches are the one-process run's, drawn from (seed, iteration) alone,
and rank r takes the r-th contiguous slice of each; DDP averages the gradients, so a step is the
one-process step up to the order of float additions. BatchNorm computes its statistics over the
whole batch (SyncBatchNorm), evaluations are split across the ranks and summed, and the
Early-Bird stop is rank 0's decision. Only rank 0 writes: the other ranks (followers) leave the
stage when training ends, before anything is saved or logged.
"""

import copy
import os
import subprocess
import sys

import torch
from torch import nn


class FollowerDone(Exception):
    """A follower's part of the stage is over: training has ended. The stage exits with status 0."""


def launched():
    """Whether torchrun started this process (it sets the ranks in the environment)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def active():
    """Whether this process trains with others (a process group of more than one rank)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def rank():
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size():
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_follower():
    return rank() != 0


def torchrun_command(distributed_hp, module, argv, run_id):
    """The command that runs `python -m module argv` as one process per rank of this node.
    One node: torchrun's standalone rendezvous on a free local port. Several: the c10d
    rendezvous at `distributed.rendezvous`, where every node runs this same command."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={distributed_hp.processes_per_node}"]
    if distributed_hp.nodes == 1:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={distributed_hp.nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={distributed_hp.rendezvous}",
            f"--rdzv-id={run_id}",
        ]
    return [*command, "-m", module, *argv]


def launch(distributed_hp, module, argv, run_id):
    """Run the stage under torchrun (printing the command, which other nodes run too); its exit status."""
    command = torchrun_command(distributed_hp, module, argv, run_id)
    print("distributed: " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.run(command).returncode


def start(device):
    """Join the process group torchrun set up: NCCL between GPUs, Gloo between CPU processes."""
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def stop():
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def own_rows(batch_size):
    """This rank's contiguous slice of every batch (the batch size is a multiple of the world size)."""
    size = batch_size // world_size()
    return slice(rank() * size, (rank() + 1) * size)


def wrap(model, device):
    """`model` for training on every rank: one DistributedDataParallel over a module tree that
    shares each parameter, buffer and BatchNorm-free module with `model`, its BatchNorm layers
    swapped for SyncBatchNorm, so that training the wrapper trains `model` itself (and
    `model`'s own modules, masks and Early-Bird reads see ordinary BatchNorm layers)."""
    return nn.parallel.DistributedDataParallel(
        _synchronized(model), device_ids=[device] if device.type == "cuda" else None
    )


def _synchronized(module):
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        # The converted layer takes over the same γ, β and running-statistics tensors.
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    shell = copy.copy(module)  # the same parameters and buffers; only the children change
    shell._modules = {name: _synchronized(child) for name, child in module._modules.items()}
    return shell


def sum_over_ranks(values):
    """The element-wise sum of a float64 tensor over every rank (the tensor itself in one process)."""
    if active():
        torch.distributed.all_reduce(values)
    return values


def rank0_decides(flag, device):
    """Rank 0's `flag`, on every rank: a decision that must not split the ranks (stop training)."""
    if not active():
        return flag
    decision = torch.tensor([int(bool(flag))], device=device)
    torch.distributed.broadcast(decision, src=0)
    return bool(decision.item())
