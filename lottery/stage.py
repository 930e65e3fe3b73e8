"""The shared shell of every stage script: arguments, params, one-line errors, failed runs marked."""

import argparse
import json
import os
import sys
import time

from lottery import hparams, warm
from lottery.errors import UserError


def run(step, per_round=False, per_control=False, on_failure=None, with_params=True, data_parallel=False):
    """Parse `--params` (and `--round`, `--control`), validate them, then call
    `step(hp[, round][, control])`; `step()` alone without params (`with_params=False`).

    `data_parallel`: a training stage. With params `distributed` asking for more than one
    process, the stage runs itself again under torchrun, one process per rank
    (lottery.distributed); each rank joins the process group and runs the step, and only rank 0
    writes.

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
    hp, status = None, 0
    try:
        if not with_params:
            return _timed(step)
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
        if data_parallel and hp.distributed.world_size > 1:
            status = _data_parallel(step, hp, step_args)
        else:
            _timed(step, hp, *step_args)
    except BaseException as err:
        if hp is not None and on_failure is not None:
            on_failure(hp, *step_args)
        if isinstance(err, UserError):
            sys.exit(f"error: {err}")
        raise
    if status:
        sys.exit(status)  # torchrun's: a rank failed and has said why


def _data_parallel(step, hp, step_args):
    """Under torchrun: this rank's part of the step (status 0). Otherwise: torchrun started on
    this stage, and its exit status."""
    from lottery import devices, distributed  # torch: only the training stages import it here

    if not distributed.launched():
        run_id = "-".join([warm.main_module().rsplit(".", 1)[-1], *map(str, step_args)])
        return distributed.launch(hp.distributed, warm.main_module(), sys.argv[1:], run_id)
    distributed.start(devices.device_for(hp.train.device))
    try:
        _timed(step, hp, *step_args)
    except distributed.FollowerDone:
        pass
    finally:
        distributed.stop()
    return 0


def _timed(step, *step_args):
    """Run the step; with LOTTERY_STAGE_TIMES set, append to that file one JSON line with the
    seconds from the stage process's start to the step's start (its start-up) and to its end."""
    record_to = os.environ.get("LOTTERY_STAGE_TIMES")
    if not record_to:
        return step(*step_args)
    started, begun = warm.started_at(), time.time()
    result = step(*step_args)
    line = {
        "stage": _stage_name(step),
        "argv": sys.argv[1:],
        "startup_seconds": begun - started,
        "total_seconds": time.time() - started,
    }
    with open(record_to, "a") as times:
        times.write(json.dumps(line) + "\n")
    return result


def _stage_name(step):
    """The stage script's name (`train` for `python -m stages.train`), else the step's."""
    module = warm.main_module()
    return module.rsplit(".", 1)[-1] if module else step.__name__
