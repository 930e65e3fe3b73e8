"""The training loop: masked SGD/Adam over preloaded tensors, evaluated every N iterations.

The data order is a function of (seed, iteration) alone, so a run resumed at iteration k
(late rewinding) sees exactly the batches the dense run saw from k on, and data-parallel ranks
(lottery.distributed) each take a fixed slice of those same batches. Whatever else a run does
(a snapshot, a penalty's gradient, a search that stops it) comes in as plug-ins
(lottery.callbacks), which the loop calls in the order it is given them.
"""

import dataclasses
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lottery import devices, distributed
from lottery.data import batches

# Examples per evaluation forward pass. The loss is summed per batch, so this size fixes how the
# float sums round: changing it changes the metrics' last bits.
EVAL_BATCH = 1000


@dataclass
class TrainResult:
    # One dict per evaluation: iteration, validation loss and accuracy, and test loss and
    # accuracy where the test split was measured (train.test_curve): always at the early stop
    # and at the end.
    curve: list
    iterations: int  # where training ended: train.iterations, or earlier if a plug-in stopped it
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


def make_optimizer(train_hp, model, exempt=()):
    """Adam or SGD over the model's parameters, with `train.weight_decay` as L2 on each of them
    but the `exempt` ones, whose decay a plug-in replaces (Callback.exempt_from_weight_decay)."""
    params = parameter_groups(train_hp.weight_decay, model, exempt)
    if train_hp.optimizer == "adam":
        # The fused kernel is faster here for dense nets (1,060 vs 850 it/s for LeNet on two
        # cores) and for sparse ones, where the default kernel's sqrt is ~10x slower on the
        # exact zeros that pruned weights leave in Adam's second moment.
        return torch.optim.Adam(params, lr=train_hp.lr, fused=True)
    return torch.optim.SGD(params, lr=train_hp.lr, momentum=train_hp.momentum)


def parameter_groups(weight_decay, model, exempt):
    if not weight_decay:
        return model.parameters()
    chosen = {id(param) for param in exempt}
    groups = [{"params": [p for p in model.parameters() if id(p) not in chosen], "weight_decay": weight_decay}]
    return groups + ([{"params": list(exempt), "weight_decay": 0.0}] if exempt else [])


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
    loss, right = distributed.sum_numbers([loss, right], split.x.device)
    model.train()
    return loss / len(split), right / len(split)


def iterations_per_epoch(train_hp, splits):
    return len(splits.train) // train_hp.batch_size


def train(model, mask, splits, train_hp, seed, start_iteration=0, callbacks=(), saves=None):
    """Train `model` in place from `start_iteration` to `train_hp.iterations`.

    Pruned weights (mask False) must be zero on entry; they get zero gradient, so they stay
    exactly zero through every step. `callbacks` (lottery.callbacks.Callback): the plug-ins, each
    hook called in list order; one whose `at_epoch_end` returns True stops training there.

    `saves` (lottery.resume.InRoundSaves): resume from its save when there is one, save the whole
    state (the plug-ins' `state_dict` too) when it is due and when training ends.

    In a process group of several ranks (lottery.distributed) every rank calls this with the
    same arguments; each trains on its slice of every batch. The process group ends with
    training: rank 0 returns, and a follower rank raises `distributed.FollowerDone` instead (it
    has nothing to save).

    The validation split is measured every `train_hp.eval_every` iterations and at the end. The
    test split is measured at the end and, with `train_hp.test_curve` 'improvements', wherever the
    early stop can be (_Run.record); with 'every', at each evaluation.
    """
    device = devices.prepare(train_hp)
    run = _Run(model, mask, splits, train_hp, callbacks, device)
    saved = saves.load(device) if saves else None
    if saved:
        start_iteration = run.resume(saved)
        if saved["finished"]:
            return run.result()
    examples, batch, per_epoch = run.splits.train, train_hp.batch_size, iterations_per_epoch(train_hp, run.splits)
    indices = batches(seed, len(examples), batch, start_iteration, device)
    own = distributed.own_rows(batch)  # all of each batch, or this rank's slice
    scheduled = bool(train_hp.warmup_iterations or train_hp.milestones)
    precision = devices.autocast(train_hp, device)
    with _progress(train_hp.iterations, start_iteration) as bar:
        for iteration in range(start_iteration, train_hp.iterations):
            if iteration % train_hp.eval_every == 0:
                run.record(iteration)
            for callback in run.callbacks:
                callback.before_step(model, iteration)
            index = next(indices)[own]
            if scheduled:
                for group in run.optimizer.param_groups:
                    group["lr"] = learning_rate(train_hp, iteration)
            images = examples.x[index]
            if run.splits.augment:
                images = run.splits.augment(images, seed, iteration, batch, own)
            run.step(images, examples.y[index], precision)
            bar.update(1)
            if (iteration + 1) % per_epoch == 0 and run.stops((iteration + 1) // per_epoch):
                run.end = iteration + 1
                break
            if saves and saves.due():
                saves.save(run.state(iteration + 1))
    run.record(run.end, last=True)
    if saves:
        saves.save(run.state(run.end, finished=True))
    return run.result()


class _Run:
    """One call of `train`: the model on its device, its optimizer, its plug-ins, the curve so far."""

    def __init__(self, model, mask, splits, train_hp, callbacks, device):
        self.model, self.train_hp, self.callbacks, self.device = model, train_hp, list(callbacks), device
        model.to(device).train()
        self.splits = dataclasses.replace(
            splits, train=splits.train.to(device), validation=splits.validation.to(device), test=splits.test.to(device)
        )
        params = dict(model.named_parameters())
        # Layers the mask leaves whole need no masking work on the hot path; float masks multiply
        # faster than bool ones.
        self.masked = [(params[name], keep.to(device, torch.float32)) for name, keep in mask.items() if not bool(keep.all())]
        exempt = [param for callback in self.callbacks for param in callback.exempt_from_weight_decay()]
        self.optimizer = make_optimizer(train_hp, model, exempt)
        self.net = distributed.for_training(model, device)
        self.curve, self.end = [], train_hp.iterations
        self.early_stop = None  # the point TrainResult.early_stop would pick from the curve so far

    def step(self, images, labels, precision):
        """One optimizer step on a batch; the plug-ins add to the gradients before the mask zeroes them."""
        with precision:
            loss = F.cross_entropy(self.net(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for callback in self.callbacks:
            callback.after_backward()
        if self.masked:
            _mask_gradients(self.masked)
        self.optimizer.step()

    def stops(self, epoch):
        """Whether a plug-in stops training after `epoch`: rank 0's answer, on every rank."""
        votes = [callback.at_epoch_end(self.model, epoch) for callback in self.callbacks]
        return distributed.rank0_decides(any(votes), self.device)

    def record(self, iteration, last=False):
        validation_loss, validation_accuracy = evaluate(self.model, self.splits.validation)
        point = {"iteration": iteration, "validation_loss": validation_loss, "validation_accuracy": validation_accuracy}
        # The early stop so far, found as min() finds it in TrainResult.early_stop: the first
        # point, then each one whose loss is lower than the best so far. A tie (the earliest
        # stays) or a NaN loss cannot move it, so only these points need a test measurement.
        if self.early_stop is None or validation_loss < self.early_stop["validation_loss"]:
            self.early_stop = point
        if point is self.early_stop or last or self.train_hp.test_curve == "every":
            point["test_loss"], point["test_accuracy"] = evaluate(self.model, self.splits.test)
        self.curve.append(point)

    def state(self, next_iteration, finished=False):
        """Everything the rest of training reads (lottery.resume)."""
        return {
            "iteration": next_iteration,
            "end": self.end,
            "finished": finished,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "curve": self.curve,
            "early_stop": next(i for i, point in enumerate(self.curve) if point is self.early_stop) if self.curve else None,
            "callbacks": [callback.state_dict() for callback in self.callbacks],
        }

    def resume(self, saved):
        """Take back a `state`; the iteration to go on from."""
        self.curve, self.end = saved["curve"], saved["end"]
        self.early_stop = self.curve[saved["early_stop"]] if self.curve else None
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for callback, state in zip(self.callbacks, saved["callbacks"]):
            callback.load_state_dict(state)
        return saved["iteration"]

    def result(self):
        self.model.cpu()
        processes, follower = distributed.world_size(), distributed.is_follower()
        # Training is the only work the ranks share: rank 0 goes on alone (evaluating, saving, logging).
        distributed.stop()
        if follower:
            raise distributed.FollowerDone()
        return TrainResult(curve=self.curve, iterations=self.end, device=self.device, processes=processes)


@torch.no_grad()
def _mask_gradients(masked):
    # A pruned weight starts at zero and, with a zero gradient, its Adam moments and SGD
    # momentum stay zero, so each step moves it by exactly 0: no weight masking is needed.
    for param, keep in masked:
        param.grad.mul_(keep)


def _progress(total, initial):
    quiet = os.environ.get("CI") == "true" or not sys.stderr.isatty() or distributed.is_follower()
    return tqdm(total=total, initial=initial, disable=quiet, unit="it", mininterval=0.5, leave=False)
