"""The checks of a params file that need more than one section, run once, by the `validate`
stage (and by the `lottery` commands that start work) before any other stage: the rules that
tie sections together, then each method's rules, which live with the method (RULES).

The other stages read params with `lottery.hparams.load`, which types them and runs each
section's own checks: they depend on the validate stage's output, so DVC runs them only on
params that passed here, and their code stamps hold none of the registries this module imports.
"""

from lottery import controls, data, distributed, early_bird, hparams
from lottery.models import catalog
from lottery.errors import ParamsError
from lottery.factorize import rules as factorize_rules
from lottery.pruning import strategies

# A method's rules, each `check_params(hp, model)` beside the method it guards: it raises a
# ParamsError naming the key, and does nothing when its method is switched off. `model` is the
# lineage's model (seed 0), built once for the rules that depend on its layers.
RULES = (
    controls.check_params,
    strategies.check_params,
    distributed.check_params,
    early_bird.check_params,
    factorize_rules.check_params,
)


def validate(hp):
    """Raise ParamsError, naming the key, if `hp` (read, so each section checked) cannot run."""
    _check_across_sections(hp)
    catalog.check_params(hp)  # the model must exist before the other rules build it
    model = _model(hp)
    for rule in RULES:
        rule(hp, model)


def load(path="params.yaml"):
    """A params file typed and validated."""
    hp = hparams.load(path)
    validate(hp)
    return hp


def from_dict(raw):
    """Params from a mapping (as params.yaml holds them), typed and validated."""
    hp = hparams.from_dict(raw)
    validate(hp)
    return hp


def _check_across_sections(hp):
    if hp.rewind.iteration >= hp.train.iterations:
        raise ParamsError(
            f"rewind.iteration = {hp.rewind.iteration}: must be below train.iterations ({hp.train.iterations})"
        )
    if hp.rewind.target == "finetune" and hp.rewind.finetune_iterations < hp.train.eval_every:
        raise ParamsError(
            f"rewind.finetune_iterations = {hp.rewind.finetune_iterations}: must be at least "
            f"train.eval_every ({hp.train.eval_every})"
        )
    if hp.train.batch_size > hp.data.training_examples():
        raise ParamsError(
            f"train.batch_size = {hp.train.batch_size}: larger than the training split "
            f"({hp.data.training_examples()} examples)"
        )


def _model(hp):
    spec = data.DATASETS[hp.data.dataset]
    return catalog.build(hp.model.name, spec.input_shape, spec.num_classes, seed=0, width=hp.model.width)
