"""How `lottery queue start` shares the GPUs and the cores among DVC's queue workers, and starts
them together (lottery.queue_workers), without DVC or a GPU: tests/test_dvc_queue.py runs it
for real through `make replicates`, and the last test here runs where torch finds a GPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lottery import cli, provenance, queue_workers
from lottery.errors import UserError
from lottery.queue_workers import assign, describe, environments, find_gpus, threads

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpus(count):
    return [str(index) for index in range(count)]


@pytest.mark.parametrize("workers, count", [(1, 1), (2, 2), (4, 4), (3, 4), (2, 5), (2, 6), (1, 8)])
def test_with_as_many_gpus_as_workers_or_more_each_worker_has_gpus_of_its_own(workers, count):
    assigned = assign(workers, gpus(count))
    each = count // workers
    assert [len(own) for own in assigned] == [each] * workers
    flat = [gpu for own in assigned for gpu in own]
    assert flat == gpus(count)[: workers * each]  # none shared; the first worker has the first GPUs


def test_worker_i_has_gpu_i_when_the_counts_are_equal():
    assert assign(3, ["0", "1", "2"]) == [["0"], ["1"], ["2"]]
    assert assign(2, ["2", "3", "5"]) == [["2"], ["3"]]  # the left-over 5 stays idle
    assert assign(2, gpus(4)) == [["0", "1"], ["2", "3"]]


@pytest.mark.parametrize("workers, count, most", [(2, 1, 2), (3, 2, 2), (5, 2, 3), (8, 3, 3), (7, 6, 2)])
def test_with_fewer_gpus_than_workers_they_take_the_gpus_in_turn(workers, count, most):
    assigned = assign(workers, gpus(count))
    assert assigned == [[str(index % count)] for index in range(workers)]
    shares = [sum(own == [gpu] for own in assigned) for gpu in gpus(count)]
    assert max(shares) == most and max(shares) - min(shares) <= 1  # ceil(N / G), spread evenly


def test_without_a_gpu_nothing_is_set_and_the_workers_run_on_the_cpu():
    assert assign(3, []) == [None, None, None]
    assert environments(assign(2, []), "1") == [{"OMP_NUM_THREADS": "1"}] * 2


@pytest.mark.parametrize("workers", [0, -1])
def test_fewer_than_one_worker_is_refused(workers):
    with pytest.raises(UserError, match=rf"^--workers {workers}: must be at least 1$"):
        assign(workers, gpus(2))


def test_each_worker_starts_with_its_gpus_and_the_threads():
    assert environments(assign(3, gpus(2)), "2") == [
        {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "0"},
        {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "1"},
        {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "0"},
    ]
    assert environments(assign(1, gpus(2)), "4") == [{"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0,1"}]


def test_the_gpus_come_from_the_override_then_cuda_visible_devices_then_torch():
    assert find_gpus("0,1", environ={"CUDA_VISIBLE_DEVICES": "3"}, count=8) == ["0", "1"]
    assert find_gpus(" 2, GPU-8a1f ", environ={}) == ["2", "GPU-8a1f"]
    assert find_gpus("", environ={}, count=8) == []
    assert find_gpus(None, environ={"CUDA_VISIBLE_DEVICES": "2,3"}, count=8) == ["2", "3"]
    assert find_gpus(None, environ={}, count=3) == ["0", "1", "2"]
    assert find_gpus(None, environ={}, count=0) == []


@pytest.mark.parametrize("value, visible", [("", []), ("-1", []), ("1,-1,2", ["1"]), ("0,,1", ["0"]), ("MIG-4f2c", ["MIG-4f2c"])])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(value, visible):
    assert find_gpus(None, environ={"CUDA_VISIBLE_DEVICES": value}, count=8) == visible


@pytest.mark.parametrize("text, why", [("0,0", "0 named twice"), ("0,,1", "an empty or negative entry"), ("-1", "an empty or negative entry")])
def test_a_wrong_gpu_list_is_one_line(text, why):
    with pytest.raises(UserError) as raised:
        find_gpus(text)
    assert str(raised.value) == f"--gpus {text!r}: {why} (a comma-separated list of GPU indices or UUIDs, e.g. 0,1)"


def test_the_workers_share_the_cores_unless_omp_num_threads_is_set():
    assert threads(2, environ={}, cores=2) == "1"
    assert threads(4, environ={}, cores=2) == "1"
    assert threads(3, environ={}, cores=16) == "5"
    assert threads(2, environ={"OMP_NUM_THREADS": "3"}, cores=16) == "3"


def test_one_line_says_how_the_gpus_are_shared():
    shared = describe(gpus(2), assign(5, gpus(2)), environments(assign(5, gpus(2)), "1"))
    assert shared[0] == "2 GPUs for 5 workers: they take the GPUs in turn (0,1,0,1,0), so up to 3 experiments share one GPU"
    assert shared[1:] == [f"queue worker {n}: CUDA_VISIBLE_DEVICES={(n - 1) % 2} OMP_NUM_THREADS=1" for n in range(1, 6)]
    own = describe(gpus(5), assign(2, gpus(5)), environments(assign(2, gpus(5)), "8"))
    assert own[0] == "5 GPUs for 2 workers: 2 of its own each; 4 left idle"
    assert own[2] == "queue worker 2: CUDA_VISIBLE_DEVICES=2,3 OMP_NUM_THREADS=8"
    assert describe([], [None, None], environments([None, None], "1"))[0] == "no GPU: 2 workers on the CPU"


class FakeCelery:
    """Workers that answer `answering()` a few polls after they were spawned; a log of what happened."""

    def __init__(self, running=(), delay=2, never=()):
        self.answering_workers, self.pending, self.log = set(running), {}, []
        self.delay, self.never = delay, set(never)

    def spawn(self, number, values):
        self.log.append(("spawn", number, values))
        if number not in self.never:
            self.pending[number] = self.delay

    def answering(self):
        self.log.append(("poll",))
        for number in list(self.pending):
            self.pending[number] -= 1
            if self.pending[number] <= 0:
                self.answering_workers.add(number)
        return set(self.answering_workers)


def test_workers_start_together_each_with_its_own_environment_and_all_answer():
    celery, said = FakeCelery(delay=3), []
    variables = environments(assign(3, gpus(2)), "1")
    queue_workers.start(variables, celery.spawn, celery.answering, sleep=lambda _: None, say=said.append)
    spawned = [entry for entry in celery.log if entry[0] == "spawn"]
    assert spawned == [("spawn", n, values) for n, values in enumerate(variables, 1)]
    # All three before the wait's first poll: none waits for another to answer.
    assert celery.log[1:4] == spawned and celery.log[4:] == [("poll",)] * 3
    assert celery.answering_workers == {1, 2, 3} and said == []


def test_a_worker_that_already_runs_is_left_as_it_is_and_said_so():
    celery, said = FakeCelery(running={1}), []
    queue_workers.start(environments(assign(2, gpus(2)), "1"), celery.spawn, celery.answering, sleep=lambda _: None, say=said.append)
    assert [entry[1] for entry in celery.log if entry[0] == "spawn"] == [2]
    assert said == ["queue worker 1 already runs: it keeps the GPUs and threads it was started with"]


def test_a_worker_that_never_answers_is_one_line_naming_its_log():
    celery, now = FakeCelery(never={2}), [0.0]

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(UserError) as raised:
        queue_workers.start(environments(assign(3, []), "1"), celery.spawn, celery.answering, wait=5, clock=lambda: now[0], sleep=sleep)
    assert str(raised.value) == "queue worker 2 did not answer within 5 s (its log: .dvc/tmp/exps/celery/dvc-exp-worker-2.out)"
    assert celery.answering_workers == {1, 3}


def test_a_spawned_worker_gets_its_own_variables_and_this_process_keeps_its_own(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []

    class Queue:
        def _spawn_worker(self, number):
            seen.append((number, os.environ["CUDA_VISIBLE_DEVICES"], os.environ["OMP_NUM_THREADS"]))

    queue_workers.dvc_spawn(Queue())(2, {"CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "4"})
    assert seen == [(2, "1", "4")]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1" and "OMP_NUM_THREADS" not in os.environ


def test_celerys_worker_names_give_the_worker_numbers():
    class Queue:
        def worker_status(self):
            return {"dvc-exp-65535f-1@localhost": [], "dvc-exp-65535f-12@localhost": [{"id": "x"}], "celery@other": []}

    assert queue_workers.dvc_answering(Queue())() == {1, 12}


@pytest.mark.parametrize("argv, line", [
    (["--workers", "0"], "error: --workers 0: must be at least 1"),
    (["--workers", "2", "--gpus", "1,1"], "error: --gpus '1,1': 1 named twice (a comma-separated list of GPU indices or UUIDs, e.g. 0,1)"),
])
def test_the_command_refuses_bad_input_in_one_line_before_it_starts_anything(argv, line, monkeypatch):
    monkeypatch.setattr(queue_workers, "dvc_spawn", lambda *_: pytest.fail("started a worker"))
    with pytest.raises(SystemExit) as exited:
        cli.main(["queue", "start", *argv])
    assert exited.value.code == line


@pytest.mark.parametrize("value, seen", [(None, "all"), ("", "none"), ("1", "1"), ("0,2", "0,2")])
def test_each_stage_records_the_gpus_it_was_let_see(value, seen, monkeypatch):
    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert provenance.environment(torch.device("cpu"), 1)["visible_gpus"] == seen


SEEN = (
    "import json, torch; from lottery import provenance; "
    "print(json.dumps([torch.cuda.device_count(), torch.cuda.get_device_name(0), "
    "provenance.environment(torch.device('cuda'), 1)['visible_gpus']]))"
)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)")
def test_on_cuda_each_worker_environment_shows_its_own_gpu_alone(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    count = torch.cuda.device_count()
    found = find_gpus()
    assert found == gpus(count)
    names = [torch.cuda.get_device_name(index) for index in range(count)]
    for workers in (count, count + 1):  # a GPU each, then one more worker than GPUs
        for number, values in enumerate(environments(assign(workers, found), "1"), 1):
            env = {**os.environ, **values, "PYTHONPATH": PROJECT}
            done = subprocess.run([sys.executable, "-c", SEEN], env=env, capture_output=True, text=True, check=True)
            visible, name, recorded = json.loads(done.stdout.strip().splitlines()[-1])
            assert visible == 1 and recorded == str((number - 1) % count)
            assert name == names[(number - 1) % count]
