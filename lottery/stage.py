"""The shared shell of every stage script: arguments, params, one-line errors, failed runs marked."""

import argparse
import sys

from lottery import hparams
from lottery.errors import UserError


def run(step, per_round=False, per_control=False, on_failure=None, with_params=True):
    """Parse `--params` (and `--round`, `--control`), validate them, then call
    `step(hp[, round][, control])`; `step()` alone without params (`with_params=False`).

    An error the user can cause (lottery.errors.UserError) ends the stage with one line,
    `error: <message>`, and exit status 1. If the step raises, `on_failure` is called with the
    step's arguments (stages that log to MLflow mark their run FAILED with it)."""
    parser = argparse.ArgumentParser(description=step.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if per_round:
        parser.add_argument("--round", type=int, required=True, help="pruning round, 1..N")
    if per_control:
        parser.add_argument("--control", required=True, help="a control branch named in params controls.run")
    args = parser.parse_args()
    hp = None
    try:
        if not with_params:
            return step()
        hp = hparams.load(args.params)
        step_args = []
        if per_round:
            if not 1 <= args.round <= hp.rounds:
                raise hparams.ParamsError(f"--round = {args.round}: must be in 1..{hp.rounds} (the rounds in params)")
            step_args.append(args.round)
        if per_control:
            if args.control not in hp.controls.run:
                raise hparams.ParamsError(f"--control = {args.control!r}: not in controls.run {hp.controls.run}")
            step_args.append(args.control)
        step(hp, *step_args)
    except BaseException as err:
        if hp is not None and on_failure is not None:
            on_failure(hp, *step_args)
        if isinstance(err, UserError):
            sys.exit(f"error: {err}")
        raise
