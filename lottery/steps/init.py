"""init: θ0 of the lineage, and its MLflow parent run."""

from lottery import checkpoints, paths, records, tracking
from lottery.steps.common import model_spec, save_weights


def init(hp):
    model = checkpoints.build(model_spec(hp), seed=hp.seed)
    save_weights(paths.init_checkpoint(), model, hp, round_=0, iteration=0, parents=[])
    tracking.publish(hp, records.lineage(hp))
