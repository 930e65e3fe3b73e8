"""The training loop's plug-ins (lottery.training.train calls the list it is given, in order).

A plug-in overrides the hooks it needs; the others do nothing. The loop knows none of them by
name: the stages that train assemble the list from factories that live with each method
(lottery.early_bird, lottery.slimming, lottery.factorize.decay, `Snapshot` below).
"""

import copy


class Callback:
    """Hooks of one training run, in the order the loop reaches them within an iteration."""

    def exempt_from_weight_decay(self):
        """Parameters whose L2 weight decay this plug-in replaces (the optimizer spares them)."""
        return []

    def before_step(self, model, iteration):
        """Before the batch of `iteration` is drawn, after that iteration's evaluation."""

    def after_backward(self):
        """The step's gradients are in `.grad`, not yet masked: add a penalty's gradient here."""

    def at_epoch_end(self, model, epoch):
        """After full epoch `epoch` (1, 2, ...); True stops training there."""
        return False

    def state_dict(self):
        """What an in-round save keeps of this plug-in (lottery.resume); None: nothing."""
        return None

    def load_state_dict(self, state):
        """Take back what `state_dict` gave."""


class Snapshot(Callback):
    """The state dict after `iteration` iterations (late rewinding): `weights`, None until then."""

    def __init__(self, iteration):
        self.iteration, self.weights = iteration, None

    def before_step(self, model, iteration):
        if iteration == self.iteration:
            self.weights = copy.deepcopy(model.state_dict())

    def state_dict(self):
        return self.weights

    def load_state_dict(self, state):
        self.weights = state
