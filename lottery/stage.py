"""The shared shell of every stage script: arguments, params, one-line errors."""

import argparse
import sys

from lottery import hparams
from lottery.data import DataError
from lottery.masks import MaskError


def run(step, per_round=False):
    """Parse `--params` (and `--round`), validate params, then call `step(hp[, round])`."""
    parser = argparse.ArgumentParser(description=step.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if per_round:
        parser.add_argument("--round", type=int, required=True, help="pruning round, 1..N")
    args = parser.parse_args()
    try:
        hp = hparams.load(args.params)
        if per_round and not 1 <= args.round <= hp.rounds:
            raise hparams.ParamsError(f"--round = {args.round}: must be in 1..{hp.rounds} (the rounds in params)")
        step(hp, args.round) if per_round else step(hp)
    except (hparams.ParamsError, DataError, MaskError) as err:
        sys.exit(f"error: {err}")
