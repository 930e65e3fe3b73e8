"""Data-parallel training through torchrun (torch.distributed, DistributedDataParallel).

With `distributed.processes_per_node` × `distributed.nodes` above 1, a training stage (train,
retrain, control) runs itself again under `torch.distributed.run` and every process trains one
slice of each batch. The batches are the one-process run's, drawn from (seed, iteration) alone,
and rank r takes the r-th contiguous slice of each; DDP averages the gradients, so a step is the
one-process step up to the order of float additions. BatchNorm computes its statistics over the
whole batch (SyncBatchNorm), evaluations are split across the ranks and summed, and the
Early-Bird stop is rank 0's decision. Only rank 0 writes: the other ranks (followers) leave the
stage when training ends, before anything is saved or logged.

No rank outlives the stage process that launched it (`launch`, `start`): torchrun alone would let
them run on, each in a session of its own, when it is killed outright.
"""

import copy
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time

import torch
from torch import nn

from lottery.errors import ParamsError

# How long stopped ranks have to unwind (a half-written file removed) before they are killed.
STOP_GRACE_S = 5.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_LIBC = ctypes.CDLL(None, use_errno=True)  # prctl: Linux's process controls
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def check_params(hp, model):
    """What data-parallel training needs: a batch that splits evenly over the ranks, a GPU per
    process on GPUs, and GPUs for a model with BatchNorm (SyncBatchNorm runs on GPUs only)."""
    ranks = hp.distributed.world_size
    if ranks == 1:
        return
    if hp.train.batch_size % ranks:
        raise ParamsError(
            f"train.batch_size = {hp.train.batch_size}: must be a multiple of the {ranks} data-parallel "
            "processes (distributed.processes_per_node × distributed.nodes)"
        )
    # lottery.devices.device_for's choice ('cuda' without a GPU is refused by the train section's check).
    on_gpus = hp.train.device != "cpu" and torch.cuda.is_available()
    if on_gpus and hp.distributed.processes_per_node > torch.cuda.device_count():
        raise ParamsError(
            f"distributed.processes_per_node = {hp.distributed.processes_per_node}: one GPU per process, "
            f"and torch finds {torch.cuda.device_count()} here"
        )
    if any(isinstance(module, nn.BatchNorm2d) for module in model.modules()) and not on_gpus:
        raise ParamsError(
            f"distributed.processes_per_node = {hp.distributed.processes_per_node}: {hp.model.name} has "
            "BatchNorm, and torch's SyncBatchNorm runs on GPUs only (train.device cuda, or 1 process)"
        )


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


def launch(distributed_hp, module, argv, name):
    """Run the stage under torchrun (printing the command, which other nodes run too); its exit status.

    The rendezvous id is `name` and a random part, new at every launch: two experiments that meet
    at one rendezvous endpoint never join each other's ranks, and the other nodes of this one get
    the id from the printed command.

    Stops: whatever ends the wait here (SIGINT or SIGTERM, which lottery.stage raises as an
    exception) ends torchrun and every rank before this returns (`_end`). torchrun runs in a
    session of its own, so a terminal's Ctrl-C reaches it through this process only; if this
    process is killed outright, the kernel sends torchrun SIGTERM, and torchrun stops its ranks.

    The stop signals wait (blocked) while torchrun starts, since Python would run their handler
    in Popen's fork hooks, where an exception is printed and dropped, and while `_end` runs, so
    that a second Ctrl-C cannot break it off; they come as soon as they are let through."""
    command = torchrun_command(distributed_hp, module, argv, f"{name}-{secrets.token_hex(6)}")
    print("distributed: " + " ".join(command), file=sys.stderr, flush=True)
    _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # ranks whose torchrun ends come to this process
    launcher, torchrun = os.getpid(), None
    let_through = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        torchrun = subprocess.Popen(
            command, start_new_session=True, preexec_fn=lambda: _start_torchrun(launcher, let_through)
        )
        signal.pthread_sigmask(signal.SIG_SETMASK, let_through)
        return torchrun.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        _end(torchrun)
        signal.pthread_sigmask(signal.SIG_SETMASK, let_through)


def _start_torchrun(launcher, let_through):
    """In the fork that becomes torchrun: SIGTERM when the launcher ends; its signals as the launcher's were."""
    _signal_when_parent_ends(signal.SIGTERM, launcher)
    signal.pthread_sigmask(signal.SIG_SETMASK, let_through)


def _end(torchrun):
    """torchrun ended, then every process it leaves behind: its ranks, which became this process's
    children when it ended (a subreaper), get SIGTERM and, after STOP_GRACE_S, SIGKILL. torchrun is
    killed, not sent SIGTERM: on SIGTERM it prints a traceback and waits up to 30 s for its ranks.
    (`torchrun` None: Popen failed; a torchrun it started is one of the children then.)"""
    if torchrun is not None and torchrun.poll() is None:
        torchrun.kill()
        torchrun.wait()
    left = _children()
    for pid in left:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if not _reaped(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _children():
    """The pids of this process's children (from /proc: the kernel's children lists are not always built in)."""
    found = []
    for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])  # field 4; the name (2) may hold spaces
        except OSError:
            continue  # a process that has just ended
        if parent == os.getpid():
            found.append(pid)
    return found


def _reaped(pid):
    """Whether child `pid` has ended (and is collected now, or was already)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def _signal_when_parent_ends(number, parent=None):
    """Have the kernel send this process signal `number` when its parent ends (PR_SET_PDEATHSIG,
    which outlives exec). `parent`: the pid the parent had; if it has ended already, exit now."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def start(device):
    """Join the process group torchrun set up: NCCL between GPUs, Gloo between CPU processes. A rank
    gets SIGTERM when its torchrun ends, however it ends (a stop of this rank: lottery.stage)."""
    _signal_when_parent_ends(signal.SIGTERM)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def stop():
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def own_rows(batch_size):
    """This rank's contiguous slice of every batch (the batch size is a multiple of the world size)."""
    size = batch_size // world_size()
    return slice(rank() * size, (rank() + 1) * size)


def for_training(model, device):
    """`model` as the training loop runs it: `wrap`ped in a process group of several ranks, else itself."""
    return wrap(model, device) if active() else model


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


def sum_numbers(numbers, device):
    """Python numbers summed over every rank (in float64, exchanged on `device`); in one process,
    the numbers themselves."""
    if not active():
        return numbers
    return sum_over_ranks(torch.tensor(numbers, dtype=torch.float64, device=device)).tolist()


def rank0_decides(flag, device):
    """Rank 0's `flag`, on every rank: a decision that must not split the ranks (stop training)."""
    if not active():
        return flag
    decision = torch.tensor([int(bool(flag))], device=device)
    torch.distributed.broadcast(decision, src=0)
    return bool(decision.item())
