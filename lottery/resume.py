"""In-round saves: a training loop killed part-way resumes where it was, not from iteration 0.

Every loop that trains for long (train, retrain@r, control@r-c, the Early-Bird search inside train,
the supermask search inside prune@r) saves its whole state every `LOTTERY_SAVE_SECONDS` seconds of
work (60 by default; 0 or less: never) and once more when it ends. The state is everything the
rest of the loop reads: the weights and buffers, the optimizer's moments and step counts, the next
iteration (the batch order, the learning-rate schedule and the augmentation draws are functions of
(seed, iteration) alone, lottery.data.batches), the evaluations so far and the early stop, the late-
rewinding snapshot, a plug-in's own state (the Early-Bird's mask history), and a generator's state
where the loop draws from one (the supermask's shared weights). So a run resumed from a save computes
the same bits as one that never stopped.

A save lives in `.lottery/saves/` at the project root (for an experiment DVC runs in a temporary copy,
the root of the project it was queued from: lottery.paths.project_root),
where DVC, which deletes a stage's outputs before it runs it, never looks. Its name is the stage and a
digest of everything that decides what the loop computes: the stage, the whole params file, the
code, the bytes of the files the loop starts from, the torch version, the device and the number of
data-parallel processes. A save is only ever resumed by the very same computation; anything else
starts from iteration 0. The stage removes its save once its outputs are written.

Data-parallel ranks all read the save and resume only if every rank found the same one (ranks of
several machines resume only where the project folder is shared); only rank 0 writes it.
"""

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from lottery import deps, distributed, paths
from lottery.errors import MissingInput, UserError
from lottery.io import load_torch, save_torch

DEFAULT_SECONDS = 60.0


def interval_seconds():
    """Seconds of work between two saves, from $LOTTERY_SAVE_SECONDS (0 or less: no saves)."""
    value = os.environ.get("LOTTERY_SAVE_SECONDS", str(DEFAULT_SECONDS))
    try:
        return float(value)
    except ValueError:
        raise UserError(f"LOTTERY_SAVE_SECONDS = {value!r}: must be a number of seconds (0: no in-round saves)") from None


class InRoundSaves:
    """One loop's save file: `load` it once before the loop, `due` each iteration, `save` when due
    and at the end. A loop given no InRoundSaves (None) saves nothing."""

    def __init__(self, path, seconds):
        self.path, self.seconds = Path(path), seconds
        self._last = time.monotonic()

    def load(self, device):
        """The saved state, or None: no save, or not every data-parallel rank found this one
        (`device`: where the ranks exchange what they found)."""
        state = load_torch(self.path) if self.path.is_file() else None
        if distributed.active():
            # A collective: once it returns, every rank has read the file, so rank 0 may write it.
            iteration = state["iteration"] if state else -1
            found = distributed.sum_over_ranks(torch.tensor([iteration, iteration**2], dtype=torch.float64, device=device))
            ranks = distributed.world_size()
            # The sums are n·i and n·i² only when every rank found iteration i (Cauchy-Schwarz).
            if found[0].item() != ranks * iteration or found[1].item() != ranks * iteration**2:
                state = None
        self._last = time.monotonic()
        return state

    def due(self):
        return time.monotonic() - self._last >= self.seconds

    def save(self, state):
        """Write `state` (tensors anywhere; saved on the CPU). Followers write nothing."""
        if not distributed.is_follower():
            save_torch(self.path, _to_cpu(state))
        self._last = time.monotonic()

    def remove(self):
        self.path.unlink(missing_ok=True)


def saves_for(hp, stage, inputs):
    """The InRoundSaves of `stage` (e.g. 'retrain@3') run with `hp` from the files `inputs`; None
    when saving is off."""
    seconds = interval_seconds()
    if seconds <= 0:
        return None
    return InRoundSaves(paths.in_round_saves() / f"{stage}-{_digest(hp, stage, inputs)}.pt", seconds)


@contextlib.contextmanager
def kept_until_done(hp, stage, inputs):
    """The stage's InRoundSaves (or None) for the block; the save is removed when the block ends
    normally, after the stage has written its outputs. Killed or failed, the save stays."""
    saves = saves_for(hp, stage, inputs)
    yield saves
    if saves is not None and not distributed.is_follower():
        saves.remove()


def _digest(hp, stage, inputs):
    from lottery import devices

    identity = {
        "stage": stage,
        "params": hp.raw,
        "code": deps.code_digest(),
        "inputs": {str(path): _file_digest(path) for path in inputs},
        "torch": torch.__version__,
        "device": devices.device_for(hp.train.device).type,
        "processes": hp.distributed.world_size,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise MissingInput(path) from None
    return digest.hexdigest()


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value
