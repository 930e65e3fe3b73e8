"""What several stages share: the data splits, the model description, how weights are saved."""

from lottery import checkpoints, data, paths, provenance
from lottery.models import catalog
from lottery.errors import ParamsError
from lottery.io import write_json


def splits(hp):
    """The data splits; ParamsError when a batch is larger than the training split (params
    validation checks the registry's size; a local copy may hold less)."""
    loaded = data.load(hp.data, paths.dataset_root(hp.data.dataset))
    if hp.train.batch_size > len(loaded.train):
        raise ParamsError(f"train.batch_size = {hp.train.batch_size}: larger than the training set ({len(loaded.train)} examples)")
    return loaded


def test_split(hp):
    return data.load_test(hp.data, paths.dataset_root(hp.data.dataset))


def model_spec(hp, compact_of=None):
    spec = data.DATASETS[hp.data.dataset]
    return checkpoints.model_spec(
        hp.model.name, spec.input_shape, spec.num_classes, hp.model.width, catalog.weights_init(hp.model.name, hp.model.init), compact_of=compact_of
    )


def save_weights(path, model, hp, round_, iteration, parents, spec=None, sparse_mask=None):
    checkpoints.save(
        path,
        model,
        spec=spec or model_spec(hp),
        round_=round_,
        iteration=iteration,
        parents=parents,
        sparse_mask=sparse_mask,
    )


def save_training(hp, round_, model, result, parents, iterations, control=None):
    """The trained weights, and the training log: the curve, the early-stop summary and the
    environment that trained it (its MLflow run's `lottery.env.*` tags)."""
    save_weights(paths.trained_weights(round_, control), model, hp, round_=round_, iteration=iterations, parents=parents)
    environment = provenance.environment(result.device, result.processes)
    log = {"curve": result.curve, "summary": result.summary(), "environment": environment}
    write_json(paths.training_log(round_, control), log)


def pruned_from(hp, round_):
    """The round whose trained weights round r's mask is pruned from."""
    return 0 if hp.prune.schedule == "oneshot" else round_ - 1
