"""DVC's queue workers on one machine, each with its share of the GPUs and of the cores:
`lottery queue start --workers N [--gpus 0,1]`, which `make replicates WORKERS=N` runs.

`dvc queue start -j N` (and `dvc exp run --run-all --jobs N`) starts N workers at once, and each
takes the environment of the command that started it: every experiment sees every GPU. This
command starts each worker i as `dvc queue start` does (DVC's own spawn of worker i, a daemon that
forks from this process), with worker i's own `CUDA_VISIBLE_DEVICES` and `OMP_NUM_THREADS`, all N
at once, and waits until celery reports every one. It does not call `dvc queue start -j i` once per
worker: that starts each of 1..i that celery does not report yet, so a worker still starting would
be started a second time, with the next one's environment, and starting them one after another
instead lets worker 1 run queued experiments alone until the others answer. Once all N answer,
`dvc exp run --run-all --jobs N` follows the queue to its end and starts none.

The G GPUs are shared out by `assign`: with G >= N each worker gets G // N of its own (one when
G < 2N; the G mod N left over stay idle), enough for `distributed.processes_per_node` up to G // N;
with 0 < G < N the workers take the GPUs in turn, worker i the GPU (i - 1) mod G, so up to
ceil(N / G) experiments share one; with none, nothing is set and the workers run on the CPU.
"""

import math
import os
import re
import time

from lottery.errors import UserError

WAIT_SECONDS = 120.0  # for a worker to answer celery; it starts in a few seconds
# DVC's name for queue worker i of a project: dvc-exp-<6 hex digits of its queue folder>-<i>@localhost
WORKER_NAME = re.compile(r"^dvc-exp-[0-9a-f]+-(\d+)@")


def parse_gpus(text):
    """The GPUs a `--gpus` list names ('0,1', or UUIDs as CUDA_VISIBLE_DEVICES takes them); '' names none."""
    gpus = [entry.strip() for entry in text.split(",")] if text.strip() else []
    wrong = [gpu for gpu in gpus if not gpu or gpu.startswith("-")]
    twice = sorted({gpu for gpu in gpus if gpus.count(gpu) > 1})
    if wrong or twice:
        why = "an empty or negative entry" if wrong else f"{', '.join(twice)} named twice"
        raise UserError(f"--gpus {text!r}: {why} (a comma-separated list of GPU indices or UUIDs, e.g. 0,1)")
    return gpus


def visible_list(text):
    """The GPUs that a value of CUDA_VISIBLE_DEVICES makes visible, in order: as CUDA does, the list
    ends at the first empty or negative entry ('' and '-1' hide every GPU)."""
    gpus = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def find_gpus(override=None, environ=os.environ, count=None):
    """The GPUs to share out, named as CUDA_VISIBLE_DEVICES names them: the `override` list, else
    CUDA_VISIBLE_DEVICES' list when it is set, else 0..G-1 for the G GPUs torch finds (`count`)."""
    if override is not None:
        return parse_gpus(override)
    if "CUDA_VISIBLE_DEVICES" in environ:
        return visible_list(environ["CUDA_VISIBLE_DEVICES"])
    if count is None:
        import torch

        count = torch.cuda.device_count()
    return [str(index) for index in range(count)]


def assign(workers, gpus):
    """Each worker's GPUs, worker 1 first: a list of GPU names, or None where there is no GPU."""
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    if not gpus:
        return [None] * workers
    if len(gpus) >= workers:
        each = len(gpus) // workers
        return [gpus[index * each : (index + 1) * each] for index in range(workers)]
    return [[gpus[index % len(gpus)]] for index in range(workers)]


def threads(workers, environ=os.environ, cores=None):
    """Torch threads for each worker's stages: OMP_NUM_THREADS when set, else the cores / workers
    (at least 1): torch's default, a thread per core in every stage, oversubscribes the cores."""
    if environ.get("OMP_NUM_THREADS"):
        return environ["OMP_NUM_THREADS"]
    cores = cores or len(os.sched_getaffinity(0))
    return str(max(1, cores // workers))


def environments(assigned, thread_count):
    """The variables each worker starts with."""
    found = []
    for gpus in assigned:
        variables = {"OMP_NUM_THREADS": thread_count}
        if gpus is not None:
            variables["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        found.append(variables)
    return found


def counted(number, thing):
    return f"{number} {thing}{'' if number == 1 else 's'}"


def describe(gpus, assigned, variables):
    """What the command prints: one line for the GPUs as a whole, then a line per worker."""
    workers, count = len(assigned), len(gpus)
    if not gpus:
        lines = [f"no GPU: {counted(workers, 'worker')} on the CPU"]
    elif count < workers:
        turns = ",".join(gpu for (gpu,) in assigned)
        lines = [f"{counted(count, 'GPU')} for {workers} workers: they take the GPUs in turn ({turns}), "
                 f"so up to {math.ceil(workers / count)} experiments share one GPU"]
    else:
        idle = gpus[workers * (count // workers) :]
        rest = f"; {', '.join(idle)} left idle" if idle else ""
        lines = [f"{counted(count, 'GPU')} for {counted(workers, 'worker')}: {count // workers} of its own each{rest}"]
    for number, values in enumerate(variables, 1):
        lines.append(f"queue worker {number}: " + " ".join(f"{key}={value}" for key, value in sorted(values.items())))
    return lines


def start(variables, spawn, answering, wait=WAIT_SECONDS, poll=1.0, clock=time.monotonic, sleep=time.sleep, say=print):
    """Start workers 1..N together, `spawn(i, variables)` for each worker i that `answering()` (the
    worker numbers celery reports) does not hold, then wait until it holds all N. A worker that
    already answers is left as it is, with the environment it was started with."""
    running = answering()
    for number, values in enumerate(variables, 1):
        if number in running:
            say(f"queue worker {number} already runs: it keeps the GPUs and threads it was started with")
        else:
            spawn(number, values)
    deadline = clock() + wait
    while missing := set(range(1, len(variables) + 1)) - answering():
        if clock() > deadline:
            number = min(missing)
            raise UserError(f"queue worker {number} did not answer within {wait:g} s (its log: .dvc/tmp/exps/celery/dvc-exp-worker-{number}.out)")
        sleep(poll)


def dvc_spawn(queue):
    """A function that starts worker `number` of DVC's celery `queue` with `values` added to this
    process's environment, which the worker's daemon inherits when it forks."""
    def spawn(number, values):
        saved = dict(os.environ)
        os.environ.update(values)
        try:
            queue._spawn_worker(number)  # what `dvc queue start` runs for each worker it starts
        finally:
            os.environ.clear()
            os.environ.update(saved)

    return spawn


def dvc_answering(queue):
    """A function giving the numbers of the workers celery reports for `queue` (dvc-exp-<hash>-<i>@localhost)."""
    def numbers():
        found = (WORKER_NAME.match(name) for name in queue.worker_status())
        return {int(match.group(1)) for match in found if match}

    return numbers


def cmd_start(args):
    gpus = find_gpus(args.gpus)
    assigned = assign(args.workers, gpus)
    variables = environments(assigned, threads(args.workers))
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo()
    except NotDvcRepoError as err:
        raise UserError(str(err)) from None
    print("\n".join(describe(gpus, assigned, variables)), flush=True)
    with repo:
        queue = repo.experiments.celery_queue
        start(variables, dvc_spawn(queue), dvc_answering(queue), wait=args.wait)
    print(f"{counted(args.workers, 'queue worker')} answering; `dvc exp run --run-all --jobs {args.workers}` follows the queue")


def add_parser(commands):
    """`lottery queue start` under the `lottery` command's subcommands."""
    queue = commands.add_parser("queue", help="DVC's queue workers").add_subparsers(dest="action", required=True)
    start_ = queue.add_parser("start", help="start N queue workers, each with its share of the GPUs and of the cores")
    start_.add_argument("--workers", type=int, required=True, help="how many workers (experiments at a time)")
    start_.add_argument("--gpus", help="the GPUs to share out, e.g. 0,1 (default: CUDA_VISIBLE_DEVICES' list, else every GPU torch finds)")
    start_.add_argument("--wait", type=float, default=WAIT_SECONDS, help=f"seconds to wait for each worker to answer (default {WAIT_SECONDS:g})")
    start_.set_defaults(handler=cmd_start)
