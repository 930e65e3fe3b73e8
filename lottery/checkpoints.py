"""Self-describing checkpoints: weights plus what built them, loadable with weights_only=True."""

import torch

from lottery import models
from lottery.io import atomic_path


def save(path, model, *, model_name, input_shape, num_classes, round_, iteration, params, lineage, parents):
    """`parents`: the files these weights were derived from, so any checkpoint traces its lineage."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": {"name": model_name, "input_shape": list(input_shape), "num_classes": num_classes},
        "round": round_,
        "iteration": iteration,
        "lineage": lineage,
        "parents": [str(parent) for parent in parents],
        "params": params,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path):
    return torch.load(path, weights_only=True, map_location="cpu")


def load_model(path):
    """(model, checkpoint) from a checkpoint file alone."""
    checkpoint = load(path)
    spec = checkpoint["model"]
    model = models.build(spec["name"], spec["input_shape"], spec["num_classes"], seed=0)
    model.load_state_dict(checkpoint["state_dict"])
    return model, checkpoint
