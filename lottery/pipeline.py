"""The whole lineage in-process, in the order `dvc repro` runs its stages, without DVC.

Each stage's code is its own module in lottery.steps (what the stage scripts call); this module
gathers them for tests, benchmarks and notebooks.
"""

from lottery.steps.compact import compact
from lottery.steps.control import control
from lottery.steps.evaluate import check_pruned_weights_are_zero, evaluate
from lottery.steps.init import init
from lottery.steps.prune import prune
from lottery.steps.report import summarize, sync
from lottery.steps.retrain import retrain
from lottery.steps.rewind import rewind
from lottery.steps.schedule import flops_ratio, retrain_schedule
from lottery.steps.train import train_dense

__all__ = [
    "check_pruned_weights_are_zero", "compact", "control", "evaluate", "flops_ratio", "init", "prune",
    "retrain", "retrain_schedule", "rewind", "run_lineage", "summarize", "sync", "train_dense",
]  # fmt: skip


def run_lineage(hp):
    """Every stage of the lineage, as `dvc repro` runs them."""
    init(hp)
    train_dense(hp)
    for round_ in range(1, hp.rounds + 1):
        prune(hp, round_)
        rewind(hp, round_)
        retrain(hp, round_)
        evaluate(hp, round_)
        compact(hp, round_)
        for name in hp.controls.run:
            control(hp, round_, name)
    summarize(hp)
