"""A sweep's points as Ray tasks: a local Ray started for the sweep, or the cluster at `--address`.

Each point is one task that asks Ray for `cpus_per_experiment` CPUs and `gpus_per_experiment`
GPUs (by default 1 where the cluster has GPUs, 0 where it has none); Ray places it on a node
with them free, and runs it again elsewhere, up to `retries` times, if its node dies under it.
A point that fails for a reason of its own (a stage's error) is not retried: its task returns the
line that says why.
"""

import contextlib
import os
import signal
import socket
import tempfile
import threading

from lottery.errors import UserError
from lottery.sweep import task

POLL_SECONDS = 0.5
ANSWER_SECONDS = 5


def connect(address):
    """Join the cluster at `address`, or start a local Ray for this sweep (None). A local Ray keeps
    its files in a folder of this user's: Ray's default, /tmp/ray, belongs to whoever made it first.
    A cluster that cannot be joined stops the sweep in one line."""
    import ray

    own = {} if address else {"_temp_dir": os.path.join(tempfile.gettempdir(), f"ray-{os.getuid()}")}
    if address and not _answers(address):  # Ray itself retries a silent address for minutes
        raise UserError(f"--address {address}: no Ray cluster answers there (`ray start --head` starts one)")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR", **own)
    except ConnectionError as err:
        raise UserError(f"--address {address}: {_why(err)}") from None
    ray.cloudpickle.register_pickle_by_value(task)  # nodes run the task without this checkout


def _answers(address):
    """Whether something listens at HOST:PORT (`auto` and other forms: Ray finds out)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return True
    try:
        socket.create_connection((host, int(port)), timeout=ANSWER_SECONDS).close()
        return True
    except OSError:
        return False


def _why(err):
    """Why a cluster could not be joined: a token it asks for, or none that answers. Ray puts the
    GCS's refusal into its error's text (a traceback), not into the chain of exceptions."""
    chain = []
    while err is not None:
        chain.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    if any("AuthenticationError" in text for text in chain):
        return "the cluster asks for a Ray token: run with RAY_AUTH_MODE=token (the token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
    return "no Ray cluster answers there (`ray start --head` starts one)"


def here():
    """Placement on the driver's node, which outlives the sweep's nodes or ends the sweep with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def default_gpus():
    import ray

    return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0


def run(specs, options, bar):
    """{point name: None, or the line that says why it failed} of every spec, run on Ray. Ctrl-C
    ends it with KeyboardInterrupt, raised between Ray's calls, never inside one."""
    import ray

    with sigint_noted() as stop:
        try:
            connect(options.address)
            stop_if(stop)
            gpus = default_gpus() if options.gpus_per_experiment is None else options.gpus_per_experiment
            progress = task.Progress.options(scheduling_strategy=here()).remote()
            submit = task.run_point.options(num_cpus=options.cpus_per_experiment, num_gpus=gpus, max_retries=options.retries)
            names = {submit.remote(spec, progress): spec["name"] for spec in specs}
            return wait(names, progress, bar, stop)
        finally:
            ray.shutdown()


@contextlib.contextmanager
def sigint_noted():
    """SIGINT sets the event it yields instead of raising KeyboardInterrupt wherever the driver is:
    raised inside a Ray call (a blocking get, say), it can leave a lock of Ray's held that
    ray.shutdown then waits on for ever. The previous handler is put back after."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda number, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_if(stop):
    if stop.is_set():
        raise KeyboardInterrupt


def wait(names, progress, bar, stop):
    import ray

    results, pending = {}, list(names)
    while pending:
        done, pending = ray.wait(pending, timeout=POLL_SECONDS)
        stop_if(stop)
        for ref in done:
            try:
                results[names[ref]] = ray.get(ref)
            except ray.exceptions.RayError as err:  # its node died more often than `retries`
                results[names[ref]] = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
        failed = sum(1 for error in results.values() if error)
        bar.set(len(results), f"{ray.get(progress.running.remote())} running, {failed} failed")
    return results
