"""The training loop: masked SGD/Adam over preloaded tensors, evaluated every N iterations.

The data order is a function of (seed, iteration) alone, so a run resumed at iteration k
(late rewinding) sees exactly the batches the dense run saw from k on, and data-parallel ranks
(lottery.distributed) each take a fixed slice of those same batches.
"""

import copy
import dataclasses
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lottery import devices, distributed, factorize
from lottery.data import batches
from lottery.errors import ParamsError
from lottery.models.base import batchnorm_scales

# Examples per evaluation forward pass. The loss is summed per batch, so this size fixes how the
# float sums round: changing it changes the metrics' last bits.
EVAL_BATCH = 1000


@dataclass
class TrainResult:
    # One dict per evaluation: iteration, validation loss and accuracy, and test loss and
    # accuracy where the test split was measured (train.test_curve): always at the early stop
    # and at the end.
    curve: list
    snapshot: dict  # state dict at `snapshot_at`, or None
    iterations: int  # where training ended: train.iterations, or earlier if `at_epoch_end` stopped it
    device: torch.device  # where it trained
    processes: int = 1  # data-parallel ranks that trained it

    @property
    def early_stop(self):
        """The evaluation with the lowest validation loss (the earliest among equals)."""
        return min(self.curve, key=lambda point: point["validation_loss"])

    @property
    def final(self):
        return self.curve[-1]

    def summary(self):
        best = self.early_stop
        return {
            "early_stop_iteration": best["iteration"],
            "test_accuracy_at_early_stop": best["test_accuracy"],
            "validation_loss_at_early_stop": best["validation_loss"],
        }


def learning_rate(train_hp, iteration):
    """The schedule: linear warmup from 0 over `warmup_iterations`, then step decay at milestones."""
    decay = train_hp.gamma ** sum(iteration >= milestone for milestone in train_hp.milestones)
    warmup = min(1.0, iteration / train_hp.warmup_iterations) if train_hp.warmup_iterations else 1.0
    return train_hp.lr * warmup * decay


def make_optimizer(train_hp, model, frobenius_decay=False):
    """Adam or SGD over the model's parameters, with `train.weight_decay` as L2 on each of them,
    except on the factors of factorized layers when `frobenius_decay` takes its place there
    (training.train adds its gradient)."""
    params = parameter_groups(train_hp.weight_decay, model, frobenius_decay)
    if train_hp.optimizer == "adam":
        # The fused kernel is faster here for dense nets (1,060 vs 850 it/s for LeNet on two
        # cores) and for sparse ones, where the default kernel's sqrt is ~10x slower on the
        # exact zeros that pruned weights leave in Adam's second moment.
        return torch.optim.Adam(params, lr=train_hp.lr, fused=True)
    return torch.optim.SGD(params, lr=train_hp.lr, momentum=train_hp.momentum)


def parameter_groups(weight_decay, model, frobenius_decay):
    if not weight_decay:
        return model.parameters()
    factors = factorize.factor_parameters(model) if frobenius_decay else []
    chosen = {id(param) for param in factors}
    groups = [{"params": [p for p in model.parameters() if id(p) not in chosen], "weight_decay": weight_decay}]
    return groups + ([{"params": factors, "weight_decay": 0.0}] if factors else [])


@torch.no_grad()
def add_batchnorm_l1_gradient(scales, strength):
    """Add the subgradient of Network Slimming's sparsity term `strength`·Σ|γ| to each γ's
    gradient: `strength`·sign(γ), 0 where γ = 0. The term drives the γ of unneeded channels
    towards zero so a global threshold can remove them. Added after backward rather than built
    into the loss, it costs no graph, and the gradient is the same float32 numbers: autograd
    too adds (float32 `strength`)·sign(γ) to the loss's gradient, in one rounding."""
    for gamma in scales:
        gamma.grad.add_(torch.sign(gamma), alpha=strength)


def evaluate(model, split):
    """(mean cross-entropy, accuracy) of `model` on a split.

    Batches of EVAL_BATCH; each batch's loss sum is a float32, and the sums are added in order
    as Python floats. They stay on the device until the last batch is done, so the host waits
    for the device once, not once per batch. Data-parallel ranks take every world-size-th batch
    and add their sums (in float64) over the ranks."""
    model.eval()
    losses, correct = [], []
    stride = EVAL_BATCH * distributed.world_size()
    with torch.inference_mode():
        for start in range(distributed.rank() * EVAL_BATCH, len(split), stride):
            logits = model(split.x[start : start + EVAL_BATCH])
            labels = split.y[start : start + EVAL_BATCH]
            losses.append(F.cross_entropy(logits, labels, reduction="sum"))
            correct.append((logits.argmax(1) == labels).sum())
        loss = sum(torch.stack(losses).tolist(), 0.0) if losses else 0.0
        right = int(torch.stack(correct).sum()) if correct else 0
    if distributed.active():
        totals = distributed.sum_over_ranks(torch.tensor([loss, right], dtype=torch.float64, device=split.x.device))
        loss, right = totals[0].item(), int(totals[1].item())
    model.train()
    return loss / len(split), right / len(split)


def iterations_per_epoch(train_hp, splits):
    return len(splits.train) // train_hp.batch_size


def train(
    model,
    mask,
    splits,
    train_hp,
    seed,
    start_iteration=0,
    snapshot_at=None,
    at_epoch_end=None,
    frobenius_decay=False,
    saves=None,
    stateful=(),
):
    """Train `model` in place from `start_iteration` to `train_hp.iterations`.

    Pruned weights (mask False) must be zero on entry; they get zero gradient, so they stay
    exactly zero through every step. `snapshot_at`: also return the state dict after that
    many iterations (late rewinding). `at_epoch_end(model, epoch)` runs after each full epoch
    (1, 2, ...); when it returns True, training stops there (Early-Bird). `frobenius_decay`: the
    factors of factorized layers decay as (λ/2)‖UVᵀ‖²_F (λ = train.weight_decay), not as plain L2.

    `saves` (lottery.resume.InRoundSaves): resume from its save when there is one, save the whole
    state when it is due and when training ends. `stateful`: objects the save also carries
    (`state_dict()` / `load_state_dict(state)`), such as the Early-Bird search `at_epoch_end` feeds.

    In a process group of several ranks (lottery.distributed) every rank calls this with the
    same arguments; each trains on its slice of every batch. The process group ends with
    training: rank 0 returns, and a follower rank raises `distributed.FollowerDone` instead (it
    has nothing to save).

    The validation split is measured every `train_hp.eval_every` iterations and at the end. The
    test split is measured at the end and, with `train_hp.test_curve` 'improvements', wherever the
    early stop can be (below); with 'every', at each evaluation.
    """
    device = devices.prepare(train_hp)
    model.to(device).train()
    splits = dataclasses.replace(
        splits, train=splits.train.to(device), validation=splits.validation.to(device), test=splits.test.to(device)
    )
    params = dict(model.named_parameters())
    # Layers the mask leaves whole need no masking work on the hot path; float masks multiply
    # faster than bool ones.
    masked = [(params[name], keep.to(device, torch.float32)) for name, keep in mask.items() if not bool(keep.all())]
    optimizer = make_optimizer(train_hp, model, frobenius_decay)
    # Found once: the hot path below only adds their gradients.
    factorized = factorize.factorized_layers(model) if frobenius_decay and train_hp.weight_decay else []
    net = distributed.wrap(model, device) if distributed.active() else model
    scales = batchnorm_scales(model) if train_hp.bn_l1 else None
    batch, size = train_hp.batch_size, len(splits.train)
    per_epoch = iterations_per_epoch(train_hp, splits)
    if per_epoch == 0:
        raise ParamsError(f"train.batch_size = {batch}: larger than the training set ({size} examples)")
    curve, snapshot, end = [], None, train_hp.iterations
    early_stop = None  # the point TrainResult.early_stop would pick from the curve so far
    saved = saves.load(device) if saves else None
    if saved:
        curve, snapshot, start_iteration, end = saved["curve"], saved["snapshot"], saved["iteration"], saved["end"]
        early_stop = curve[saved["early_stop"]] if curve else None
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for plug_in, state in zip(stateful, saved["stateful"]):
            plug_in.load_state_dict(state)
    indices = batches(seed, size, batch, start_iteration, device)
    own = distributed.own_rows(batch)  # all of each batch, or this rank's slice
    scheduled = bool(train_hp.warmup_iterations or train_hp.milestones)

    def record(iteration, last=False):
        nonlocal early_stop
        validation_loss, validation_accuracy = evaluate(model, splits.validation)
        point = {"iteration": iteration, "validation_loss": validation_loss, "validation_accuracy": validation_accuracy}
        # The early stop so far, found as min() finds it in TrainResult.early_stop: the first
        # point, then each one whose loss is lower than the best so far. A tie (the earliest
        # stays) or a NaN loss cannot move it, so only these points need a test measurement.
        if early_stop is None or validation_loss < early_stop["validation_loss"]:
            early_stop = point
        if point is early_stop or last or train_hp.test_curve == "every":
            point["test_loss"], point["test_accuracy"] = evaluate(model, splits.test)
        curve.append(point)

    def state(next_iteration, finished=False):
        """Everything the rest of training reads (lottery.resume)."""
        return {
            "iteration": next_iteration,
            "end": end,
            "finished": finished,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "curve": curve,
            "early_stop": next(i for i, point in enumerate(curve) if point is early_stop) if curve else None,
            "snapshot": snapshot,
            "stateful": [plug_in.state_dict() for plug_in in stateful],
        }

    if saved and saved["finished"]:
        return _result(model, curve, snapshot, end, device)
    precision = devices.autocast(train_hp, device)
    with _progress(train_hp.iterations, start_iteration) as bar:
        for iteration in range(start_iteration, train_hp.iterations):
            if iteration % train_hp.eval_every == 0:
                record(iteration)
            if iteration == snapshot_at:
                snapshot = copy.deepcopy(model.state_dict())
            index = next(indices)[own]
            if scheduled:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(train_hp, iteration)
            images = splits.train.x[index]
            if splits.augment:
                images = splits.augment(images, seed, iteration, batch, own)
            with precision:
                loss = F.cross_entropy(net(images), splits.train.y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if scales:
                add_batchnorm_l1_gradient(scales, train_hp.bn_l1)
            if factorized:
                factorize.add_frobenius_decay_gradient(factorized, train_hp.weight_decay)
            if masked:
                _mask_gradients(masked)
            optimizer.step()
            bar.update(1)
            if at_epoch_end and (iteration + 1) % per_epoch == 0:
                stop = distributed.rank0_decides(at_epoch_end(model, (iteration + 1) // per_epoch), device)
                if stop:
                    end = iteration + 1
                    break
            if saves and saves.due():
                saves.save(state(iteration + 1))
    record(end, last=True)
    if saves:
        saves.save(state(end, finished=True))
    return _result(model, curve, snapshot, end, device)


def _result(model, curve, snapshot, end, device):
    model.cpu()
    processes, follower = distributed.world_size(), distributed.is_follower()
    # Training is the only work the ranks share: rank 0 goes on alone (evaluating, saving, logging).
    distributed.stop()
    if follower:
        raise distributed.FollowerDone()
    return TrainResult(curve=curve, snapshot=snapshot, iterations=end, device=device, processes=processes)


@torch.no_grad()
def _mask_gradients(masked):
    # A pruned weight starts at zero and, with a zero gradient, its Adam moments and SGD
    # momentum stay zero, so each step moves it by exactly 0: no weight masking is needed.
    for param, keep in masked:
        param.grad.mul_(keep)


def _progress(total, initial):
    quiet = os.environ.get("CI") == "true" or not sys.stderr.isatty() or distributed.is_follower()
    return tqdm(total=total, initial=initial, disable=quiet, unit="it", mininterval=0.5, leave=False)
