"""Early-Bird tickets (You et al. 2020): the channel mask settles early in dense training, so the
search can stop there.

At the end of every epoch the mask that `prune@1` would draw now is compared, by normalised
Hamming distance, with each of the last `queue` epochs' masks. When none of those distances
exceeds ε, the Early-Bird ticket has emerged and training stops. "Exceeds": the authors' code
stops when no distance is above ε, so a distance equal to ε counts as settled; its FIFO of 5
masks compares the newest with 4 others (`queue` 4 here).
"""

import hashlib
from collections import deque
from dataclasses import dataclass, field

import torch

from lottery import channels, masks
from lottery.callbacks import Callback
from lottery.errors import ParamsError
from lottery.io import atomic_path
from lottery.pruning import driver


def channel_vector(model, mask):
    """All channel keep-flags of a channel mask, in channel-group order, as one bool vector."""
    return torch.cat(list(channels.kept(channels.groups(model), mask).values()))


def draw(model, prune_hp, seed):
    """The channel keep-vector that pruning the dense network now would keep (prune@1's mask)."""
    return channel_vector(model, driver.prune(prune_hp, model, masks.ones(model), seed=seed))


def digest(vector):
    """sha256 of a channel keep-vector: prune@1 checks its mask against the Early-Bird's with it."""
    return hashlib.sha256(vector.to("cpu", torch.uint8).numpy().tobytes()).hexdigest()


def savings(report, retrain_iterations, dense_flops, pruned_flops, full_iterations, batch_size):
    """Early-Bird search + retraining against the standard full training + the same retraining:
    epochs and training FLOPs (3 × forward FLOPs per example: forward and backward), and the ratio."""
    per_epoch = report["iterations_per_epoch"]
    search = report["iterations_trained"]

    def cost(dense_iterations):
        return 3 * batch_size * (dense_iterations * dense_flops + retrain_iterations * pruned_flops)

    return {
        "found": report["found"],
        "search_epochs": search / per_epoch,
        "full_training_epochs": full_iterations / per_epoch,
        "emerged_at_fraction_of_training": search / full_iterations,
        "retrain_epochs": retrain_iterations / per_epoch,
        "epochs_early_bird": (search + retrain_iterations) / per_epoch,
        "epochs_standard": (full_iterations + retrain_iterations) / per_epoch,
        "training_flops_early_bird": cost(search),
        "training_flops_standard": cost(full_iterations),
        "compute_saving": cost(full_iterations) / cost(search),
    }


def mask_distance(a, b):
    """Normalised Hamming distance: the fraction of channels whose keep-flag differs."""
    if a.shape != b.shape:
        raise ValueError(f"masks of {a.numel()} and {b.numel()} channels cannot be compared")
    # A ratio of two integers in double precision: a float32 mean would put 2/20 just above 0.1.
    return int((a != b).sum()) / a.numel()


@dataclass
class Search:
    """The FIFO test, fed one mask per epoch: `observe` says when the ticket has emerged."""

    epsilon: float
    queue: int
    history: list = field(default_factory=list)  # every epoch's mask, epoch 1 first
    distances: list = field(default_factory=list)  # per epoch: the largest distance to the FIFO's masks
    found_epoch: int = None

    def __post_init__(self):
        self._recent = deque(maxlen=self.queue)

    def observe(self, vector):
        """Record this epoch's mask; True once the last `queue` masks are all within ε of it (≤ ε)."""
        gaps = [mask_distance(vector, earlier) for earlier in self._recent]
        self.distances.append(max(gaps) if gaps else None)
        self.history.append(vector.clone())
        found = len(gaps) == self.queue and max(gaps) <= self.epsilon
        self._recent.append(vector.clone())
        if found and self.found_epoch is None:
            self.found_epoch = len(self.history)
        return found

    def state_dict(self):
        """What an in-round save keeps of the search (lottery.resume); the FIFO is the history's tail."""
        return {"history": self.history, "distances": self.distances, "found_epoch": self.found_epoch}

    def load_state_dict(self, state):
        self.history, self.distances, self.found_epoch = list(state["history"]), list(state["distances"]), state["found_epoch"]
        self._recent = deque((vector.clone() for vector in self.history[-self.queue :]), maxlen=self.queue)


class SearchCallback(Callback):
    """The search as a training-loop plug-in: at each epoch's end it observes the channel mask that
    pruning with `prune_hp` and `seed` would draw now (`draw`), and stops training once the ticket
    has emerged. In-round saves carry the search's state."""

    def __init__(self, search, prune_hp, seed):
        self.search, self.prune_hp, self.seed = search, prune_hp, seed

    def at_epoch_end(self, model, epoch):
        return self.search.observe(draw(model, self.prune_hp, self.seed))

    def state_dict(self):
        return self.search.state_dict()

    def load_state_dict(self, state):
        self.search.load_state_dict(state)


def distance_matrix(history):
    """Entry (i, j): the distance between the masks drawn at epochs i+1 and j+1."""
    stacked = torch.stack(history).float()
    differing = stacked @ (1 - stacked).T + (1 - stacked) @ stacked.T
    return (differing / stacked.shape[1]).tolist()


def heatmap(matrix, epsilon, found_epoch, path):
    """The pairwise distance matrix as the paper draws it, with the ε contour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = len(matrix)
    fig, axis = plt.subplots(figsize=(5.2, 4.4))
    extent = (0.5, epochs + 0.5, epochs + 0.5, 0.5)
    image = axis.imshow(matrix, cmap="viridis", vmin=0, extent=extent)
    if epochs > 1:
        grid = range(1, epochs + 1)
        axis.contour(grid, grid, matrix, levels=[epsilon], colors="white", linewidths=1)
    if found_epoch:
        axis.axvline(found_epoch, color="red", lw=0.8)
        axis.axhline(found_epoch, color="red", lw=0.8)
    axis.set_xlabel("epoch")
    axis.set_ylabel("epoch")
    found = f"emerged at epoch {found_epoch}" if found_epoch else "not found"
    axis.set_title(f"channel-mask distance (white: ε = {epsilon}); {found}", fontsize=9)
    fig.colorbar(image, ax=axis)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def check_params(hp, model):
    """prune@1 must draw the very mask the search drew: Network Slimming's, at the same ratio."""
    if not hp.early_bird.enabled:
        return
    expected = {"strategy": "bn_slimming", "granularity": "channel", "scope": "global", "rate": hp.early_bird.ratio}
    for key, value in expected.items():
        if getattr(hp.prune, key) != value:
            raise ParamsError(
                f"prune.{key} = {getattr(hp.prune, key)!r}: early_bird.enabled draws Network Slimming masks, "
                f"so it needs prune.{key} = {value!r}"
            )
