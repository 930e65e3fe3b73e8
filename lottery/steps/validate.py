"""validate: params.yaml checked before any other stage runs (see paths.params_validated)."""

from lottery import paths, validation
from lottery.io import write_text


def validated(hp):
    """Check every value of `hp` (lottery.validation), then say so in a file whose bytes never
    change, so that every stage after it is skipped unless its own inputs changed."""
    validation.validate(hp)
    write_text(paths.params_validated(), "params.yaml passed validation\n")
