"""The default experiment as one bare PyTorch script: one process, a plain loop, no DVC, no MLflow,
none of the project's stage machinery.

LeNet-300-100 (Linear 784-300-100-10 with ReLU) on MNIST, trained with Adam (fused, learning rate
1.2e-3) on batches of 60 for `--iterations` iterations. Validation and test loss and accuracy are
measured every `--eval-every` iterations and at the end; the early stop is the evaluation with the
lowest validation loss (the earliest among equals). Then `--rounds` rounds of iterative, layerwise
magnitude pruning: each round removes the smallest-magnitude 20% of the weights each hidden layer
still has and 10% of the output layer's, judged on the previous round's final weights (biases are
never pruned), rewinds the kept weights to θ0 and trains again on the same schedule. Float masks
multiply the gradients, so pruned weights stay exactly zero under Adam.

It imports the project (`lottery`) for two things only, so that the job is the pipeline's to the
bit: the data tensors (`lottery.data.load`: the same normalisation and the same validation
hold-out, the last 5,000 training images) and θ0 (`lottery.catalog.build` with `--seed`, which is
what the `init` stage draws). The batch order is the pipeline's too (a permutation of the training
set per epoch, drawn from the seed and the epoch alone), written out here. It trains on CUDA when
there is one, as the pipeline's `train.device: auto` does.

Prints, per round, the weights remaining and the test accuracy at early stop; `--output` also
writes them as JSON. JOB lists the params.yaml values this script hard-codes, so a caller can check
that it runs the same job as the pipeline.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# Use this checkout's package, whichever checkout the editable install points at.
sys.path.insert(0, str(ROOT))

from lottery import data, hparams  # noqa: E402
from lottery.models import catalog  # noqa: E402

LR = 0.0012
BATCH = 60
VALIDATION_SIZE = 5000
EVAL_BATCH = 1000
# Sequential index of each Linear layer's weight -> the fraction of its remaining weights one round removes.
PRUNE_RATES = {"1.weight": 0.2, "3.weight": 0.2, "5.weight": 0.1}

# The params.yaml values (dotted keys) that this script hard-codes; any other value makes another job.
JOB = {
    "data.dataset": "mnist",
    "data.validation_size": VALIDATION_SIZE,
    "data.train_subset": 0,
    "data.test_subset": 0,
    "model.name": "lenet_300_100",
    "model.width": 1.0,
    "train.optimizer": "adam",
    "train.lr": LR,
    "train.batch_size": BATCH,
    "train.device": "auto",
    "train.warmup_iterations": 0,
    "train.milestones": [],
    "train.bn_l1": 0.0,
    "prune.strategy": "magnitude",
    "prune.scope": "layerwise",
    "prune.granularity": "weight",
    "prune.schedule": "iterative",
    "prune.rate": PRUNE_RATES["1.weight"],
    "prune.output_rate": None,  # null: half prune.rate, PRUNE_RATES["5.weight"]
    "rewind.target": "init",
    "rewind.iteration": 0,
    "controls.run": [],
    "early_bird.enabled": False,
}


def lenet():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(28 * 28, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def initial_weights(seed):
    """θ0 as the pipeline's `init` stage draws it, keyed for `lenet()`."""
    drawn = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=seed)
    return {name.removeprefix("layers."): value for name, value in drawn.state_dict().items()}


def load_splits(root, device):
    # data.load caches by its params section, so it takes the real (hashable) one; MNIST has no augmentation.
    hp = hparams.DataHparams(
        dataset="mnist", source="local", local_root=str(root), validation_size=VALIDATION_SIZE,
        train_subset=0, test_subset=0, augmentation="none",
    )  # fmt: skip
    splits = data.load(hp, root)
    parts = {name: getattr(splits, name) for name in ("train", "validation", "test")}
    return {name: (part.x.to(device), part.y.to(device)) for name, part in parts.items()}


def batch_order(seed, epoch, size):
    # The pipeline's formula, so both see the same batches in the same order.
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@torch.no_grad()
def evaluate(model, x, y):
    """(mean cross-entropy, accuracy) over a split, in batches of EVAL_BATCH."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH])
        labels = y[start : start + EVAL_BATCH]
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    model.train()
    return loss / len(y), correct / len(y)


def measure(model, splits, iteration):
    validation_loss, _ = evaluate(model, *splits["validation"])
    _, test_accuracy = evaluate(model, *splits["test"])
    return {"iteration": iteration, "validation_loss": validation_loss, "test_accuracy": test_accuracy}


def train(model, masks, splits, iterations, eval_every, seed):
    """Train `model` in place; the curve of its evaluations."""
    x, y = splits["train"]
    params = dict(model.named_parameters())
    # Whole layers need no masking (round 0); float masks multiply faster than bool ones.
    masked = [(params[name], keep.to(x.device, torch.float32)) for name, keep in masks.items() if not keep.all()]
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    per_epoch = len(y) // BATCH
    curve = []
    for iteration in range(iterations):
        if iteration % eval_every == 0:
            curve.append(measure(model, splits, iteration))
        epoch, position = divmod(iteration, per_epoch)
        if position == 0:
            order = batch_order(seed, epoch, len(y)).to(x.device)
        index = order[position * BATCH : (position + 1) * BATCH]
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for param, keep in masked:
            param.grad.mul_(keep)
        optimizer.step()
    curve.append(measure(model, splits, iterations))
    return curve


def drop_smallest(magnitude, keep, rate):
    """`keep` less round(rate × its kept count) of its kept entries with the smallest `magnitude`."""
    count = round(rate * int(keep.sum()))
    # Pruned entries rank last, so they are never chosen again; a stable sort breaks ties by position.
    ranked = torch.sort(torch.where(keep, magnitude, torch.inf).flatten(), stable=True).indices
    new = keep.flatten().clone()
    new[ranked[:count]] = False
    return new.view_as(keep)


def prune(model, masks):
    params = dict(model.named_parameters())
    return {name: drop_smallest(params[name].detach().abs().cpu(), keep, PRUNE_RATES[name]) for name, keep in masks.items()}


@torch.no_grad()
def rewind(model, theta0, masks):
    """θ0 with the pruned weights zeroed."""
    model.load_state_dict(theta0)
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        params[name].mul_(keep.to(params[name].device))


def run(rounds, iterations, eval_every, seed, data_root):
    """Round 0 (dense) and `rounds` pruning rounds: per round, the weights remaining and the early stop."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    splits = load_splits(data_root, device)
    theta0 = initial_weights(seed)
    model = lenet()
    model.load_state_dict(theta0)
    model.to(device)
    masks = {name: torch.ones_like(theta0[name], dtype=torch.bool) for name in PRUNE_RATES}
    results = []
    for round_ in range(rounds + 1):
        if round_:
            masks = prune(model, masks)
            rewind(model, theta0, masks)
        best = min(train(model, masks, splits, iterations, eval_every, seed), key=lambda point: point["validation_loss"])
        kept = sum(int(keep.sum()) for keep in masks.values())
        result = {
            "round": round_,
            "weights_remaining": kept / sum(keep.numel() for keep in masks.values()),
            "early_stop_iteration": best["iteration"],
            "test_accuracy_at_early_stop": best["test_accuracy"],
        }
        print(
            f"round {round_}: {100 * result['weights_remaining']:.1f}% of the weights, test accuracy at early stop "
            f"{100 * result['test_accuracy_at_early_stop']:.2f}% (iteration {best['iteration']})",
            flush=True,
        )
        results.append(result)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="pruning rounds after the dense round 0")
    parser.add_argument("--iterations", type=int, default=7000, help="training iterations per round")
    parser.add_argument("--eval-every", type=int, default=250, help="evaluate every N iterations (and at the end)")
    parser.add_argument("--seed", type=int, default=0, help="θ0 and the batch order")
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "mnist", help="the `data` stage's output")
    parser.add_argument("--output", type=Path, help="also write the per-round results here, as JSON")
    args = parser.parse_args(argv)
    results = run(args.rounds, args.iterations, args.eval_every, args.seed, args.data_root)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
