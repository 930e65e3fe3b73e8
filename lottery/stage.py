"""The shared shell of every stage script: arguments, params, one-line errors."""

import argparse
import sys

from lottery import controls, hparams
from lottery.data import DataError
from lottery.masks import MaskError


def run(step, per_round=False, per_control=False):
    """Parse `--params` (and `--round`, `--control`), validate them, then call
    `step(hp[, round][, control])`."""
    parser = argparse.ArgumentParser(description=step.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if per_round:
        parser.add_argument("--round", type=int, required=True, help="pruning round, 1..N")
    if per_control:
        parser.add_argument("--control", required=True, help=f"one of {sorted(controls.REGISTRY)}")
    args = parser.parse_args()
    try:
        hp = hparams.load(args.params)
        step_args = []
        if per_round:
            if not 1 <= args.round <= hp.rounds:
                raise hparams.ParamsError(f"--round = {args.round}: must be in 1..{hp.rounds} (the rounds in params)")
            step_args.append(args.round)
        if per_control:
            if args.control not in controls.REGISTRY:
                raise hparams.ParamsError(f"--control = {args.control!r}: unknown (expected one of {sorted(controls.REGISTRY)})")
            step_args.append(args.control)
        step(hp, *step_args)
    except (hparams.ParamsError, DataError, MaskError) as err:
        sys.exit(f"error: {err}")
