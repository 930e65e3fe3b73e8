"""The shared shell of every stage script: arguments, params, one-line errors and stops, failed runs marked."""

import argparse
import contextlib
import json
import os
import signal
import sys
import time

from lottery import hparams, warm
from lottery.errors import ParamsError, UserError


class Stopped(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived: the stage stops where it is. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way holds it up."""

    def __init__(self, number):
        super().__init__(signal.Signals(number).name)
        self.status = 128 + number  # as a shell reports a process ended by the signal


class _RanksFailed(Exception):
    """torchrun ended with a failure of a rank, which has said why."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


def run(step, per_round=False, per_control=False, on_failure=None, with_params=True, data_parallel=False):
    """Read `--params` (typed and each section checked by lottery.hparams; the validate stage,
    which every other stage runs after, has checked the rest) and `--round`, `--control`, then call `step(hp[, round][, control])`;
    `step()` alone without params (`with_params=False`).

    `data_parallel`: a training stage. With params `distributed` asking for more than one
    process, the stage runs itself again under torchrun, one process per rank
    (lottery.distributed); each rank joins the process group and runs the step, and only rank 0
    writes.

    An error the user can cause (lottery.errors.UserError) ends the stage with one line,
    `error: <message>`, and exit status 1. If the step raises, `on_failure` is called with the
    step's arguments (stages that log to MLflow mark their run FAILED with it).

    SIGINT (Ctrl-C) or SIGTERM stops the stage where it is: `on_failure` is called, the stage says
    so in one line, `error: stopped by SIGINT during retrain@1`, and exits with status 130 or 143.
    Stop signals after that are ignored. Under torchrun, the ranks leave that line and
    `on_failure` to the stage process that launched them: it stops them
    (lottery.distributed.launch) and calls `on_failure` when any rank fails; a rank never calls it
    (no follower writes to MLflow) and exits silently, at once, when stopped."""
    args = _arguments(step, per_round, per_control)
    hp, step_args, rank = None, [], False

    def failed():
        # Only a stage that knows which branch it ran marks one: a bad --round names none.
        known = hp is not None and len(step_args) == per_round + per_control
        if known and on_failure is not None and not rank:
            on_failure(hp, *step_args)

    with _stop_signals_raised():
        try:
            try:
                if not with_params:
                    return _timed(step)
                hp = hparams.load(args.params)
                step_args += _branch_args(args, hp)
                if data_parallel and hp.distributed.world_size > 1:
                    from lottery import distributed  # torch: only the training stages import it here

                    rank = distributed.launched()
                    _data_parallel(step, hp, step_args, rank)
                else:
                    _timed(step, hp, *step_args)
            except Stopped:
                raise
            except BaseException as err:
                failed()
                if isinstance(err, _RanksFailed):
                    sys.exit(err.status)
                if isinstance(err, UserError):
                    sys.exit(f"error: {err}")
                raise
        except Stopped as stop:  # also one that came while a failure above was being handled
            for number in STOP_SIGNALS:  # the stop is in hand: nothing may break it off now
                signal.signal(number, signal.SIG_IGN)
            if rank:
                _leave_at_once(stop.status)
            failed()
            print(f"error: stopped by {stop} during {_stage_label(step, step_args)}", file=sys.stderr)
            sys.exit(stop.status)


def _arguments(step, per_round, per_control):
    parser = argparse.ArgumentParser(description=step.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if per_round:
        parser.add_argument("--round", type=int, required=True, help="pruning round, 1..N")
    if per_control:
        parser.add_argument("--control", required=True, help="a control branch named in params controls.run")
    return parser.parse_args()


def _branch_args(args, hp):
    """The step's `round` and `control` arguments, each checked against the params."""
    branch = []
    if "round" in args:
        if not 1 <= args.round <= hp.rounds:
            raise ParamsError(f"--round = {args.round}: must be in 1..{hp.rounds} (the rounds in params)")
        branch.append(args.round)
    if "control" in args:
        if args.control not in hp.controls.run:
            raise ParamsError(f"--control = {args.control!r}: not in controls.run {hp.controls.run}")
        branch.append(args.control)
    return branch


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_signals_raised():
    """Within: SIGINT and SIGTERM raise Stopped, each one, until `run` takes a stop in hand and
    ignores both from then on (a second Ctrl-C must not break off marking the run FAILED). Each
    one: Python may run the handler where an exception is printed and dropped (a __del__, a fork
    hook), and a stop lost there must not make the next Ctrl-C a no-op. Without a stop, the
    handlers before are put back."""
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, _stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            if signal.getsignal(number) is _stop:
                signal.signal(number, handler)


def _stop(number, frame):
    raise Stopped(number)


def _leave_at_once(status):
    """End a stopped rank now, silently: it has nothing left to do, and the interpreter's own exit
    (collecting torch's objects) takes seconds, while the other ranks may wait for this one's
    sockets to close."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def _data_parallel(step, hp, step_args, rank):
    """As a rank (under torchrun): this rank's part of the step. Otherwise: torchrun started on
    this stage; _RanksFailed if it fails."""
    from lottery import devices, distributed

    if not rank:
        status = distributed.launch(hp.distributed, warm.main_module(), sys.argv[1:], _stage_label(step, step_args, "-"))
        if status:
            raise _RanksFailed(status)
        return
    distributed.start(devices.device_for(hp.train.device))
    try:
        _timed(step, hp, *step_args)
    except distributed.FollowerDone:
        pass
    finally:
        distributed.stop()


def _timed(step, *step_args):
    """Run the step; with LOTTERY_STAGE_TIMES set, append to that file one JSON line with the
    seconds from the stage process's start to the step's start (its start-up) and to its end, and
    the CPU seconds the step took (all threads; far less sensitive to a busy machine than wall time)."""
    record_to = os.environ.get("LOTTERY_STAGE_TIMES")
    if not record_to:
        return step(*step_args)
    started, begun, cpu = warm.started_at(), time.time(), time.process_time()
    result = step(*step_args)
    line = {
        "stage": _stage_name(step),
        "argv": sys.argv[1:],
        "startup_seconds": begun - started,
        "total_seconds": time.time() - started,
        "step_cpu_seconds": time.process_time() - cpu,
    }
    with open(record_to, "a") as times:
        times.write(json.dumps(line) + "\n")
    return result


def _stage_name(step):
    """The stage script's name (`train` for `python -m stages.train`), else the step's."""
    module = warm.main_module()
    return module.rsplit(".", 1)[-1] if module else step.__name__


def _stage_label(step, step_args, separator="@"):
    """The stage as dvc.yaml names it: `train`, `retrain@1`, `control@1-reinit`."""
    if not step_args:
        return _stage_name(step)
    return _stage_name(step) + separator + "-".join(map(str, step_args))
