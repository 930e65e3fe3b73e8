"""A seed sweep through DVC's experiment queue, two experiments at a time: `make replicates SEEDS="0 1"
WORKERS=2` in a fresh project whose stages log to its default MLflow store (no MLFLOW_TRACKING_URI).
DVC runs each queued experiment in a temporary copy of the project and deletes the copy afterwards;
the lineages must still land, whole, in the project's own store. GPUS="0,1" has `lottery queue start`
give each worker one of two GPU ids; with no GPU here torch finds none under either, and the stages
run on the CPU all the same, but each records the ids it was let see."""

import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lottery import deps, hparams, records
from lottery.lineage_catalog import LineageCatalog
from lottery.provenance import CODE_TAG, EXPERIMENT_TAG
from lottery.runs import COMPLETE_METRIC, RunIndex
from tests.conftest import PROJECT, commit, dvc_project, sh, tiny_params

SEEDS = (0, 1)
ONE_ROUND = {"rounds": hparams.rounds_section(1), "compact.latency_repeats": 2}
GPUS = ("0", "1")
# The project's default store, and the Makefile's choice of threads (the test workers set one).
ENVIRONMENT = {"MLFLOW_TRACKING_URI": None, "OMP_NUM_THREADS": None}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mnist_root):
    """The project after the sweep; its git remote `origin` and its DVC remote `team` lie beside it.
    The DVC remote is in the committed config: `dvc exp push` reads it from the experiment's commit."""
    base = tmp_path_factory.mktemp("queue")
    (base / "project").mkdir()
    repo = dvc_project(base / "project", tiny_params(mnist_root, ONE_ROUND))
    sh(base, "git", "init", "-q", "--bare", "origin.git")
    sh(repo, "git", "remote", "add", "origin", str(base / "origin.git"))
    sh(repo, "dvc", "remote", "add", "-d", "team", str(base / "dvc-remote"))
    # Code unlike this checkout's: a stage that ran this checkout's modules (the editable install)
    # instead of its experiment's copy would tag its lineage with another code digest.
    with open(repo / "lottery" / "report.py", "a") as source:
        source.write("# the sweep's own code\n")
    commit(repo, "sweep baseline")
    venv = sys.prefix  # the Makefile's VENV; -o: never rebuild it from here
    seeds = " ".join(map(str, SEEDS))
    make = ["make", "-f", str(PROJECT / "Makefile"), "-o", f"{venv}/.installed", "replicates", f"VENV={venv}"]
    said = sh(repo, *make, f"SEEDS={seeds}", "WORKERS=2", f"GPUS={','.join(GPUS)}", env=ENVIRONMENT)
    (base / "make.out").write_text(said)
    return repo


def catalog(repo):
    return LineageCatalog(f"sqlite:///{repo / 'mlflow.db'}", "lottery")


def lineages(repo):
    """{seed: LineageRecord} of the project's default store, mlflow.db at its root."""
    found = catalog(repo)
    return {int(parent.data.tags["lottery.seed"]): found.load(parent) for parent in found.parents()}


def experiments(repo):
    """{seed: (experiment name, its metrics files)} from `dvc exp show --json`."""
    table = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    revs = [rev for entry in table for exp in entry.get("experiments") or [] for rev in exp["revs"]]
    return {rev["data"]["params"]["params.yaml"]["data"]["seed"]: (rev["name"], rev["data"]["metrics"]) for rev in revs}


def test_every_seeds_lineage_is_whole_in_the_projects_store(repo):
    by_seed = lineages(repo)
    assert sorted(by_seed) == list(SEEDS)
    client = catalog(repo).client
    for record in by_seed.values():
        assert record.rounds == [0, 1]
        for run in record.branches.values():
            assert COMPLETE_METRIC in run.data.metrics
            # Artifacts go beside the store, not into the temporary copy that DVC deleted.
            assert "mask.pt" in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
            assert run.info.artifact_uri.startswith(f"{repo / 'mlruns'}/")


def test_the_two_experiments_ran_at_once(repo):
    spans = []
    for record in lineages(repo).values():
        runs = [record.parent, *record.branches.values()]
        spans.append((min(run.info.start_time for run in runs), max(run.info.end_time for run in runs)))
    assert max(start for start, _ in spans) < min(end for _, end in spans)


def test_two_workers_share_the_cores_each_stage_training_on_half_of_them(repo):
    half = str(max(1, len(os.sched_getaffinity(0)) // 2))
    for record in lineages(repo).values():
        assert {run.data.tags[f"{records.ENVIRONMENT_TAG}threads"] for run in record.branches.values()} == {half}


def test_each_worker_had_a_gpu_of_its_own_and_every_stage_of_its_experiment_saw_it_alone(repo):
    key = f"{records.ENVIRONMENT_TAG}visible_gpus"
    seen = [{run.data.tags[key] for run in record.branches.values()} for record in lineages(repo).values()]
    assert sorted(gpu for gpus in seen for gpu in gpus) == list(GPUS)  # one GPU per lineage, a different one each
    said = (repo.parent / "make.out").read_text().splitlines()
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for number, gpu in enumerate(GPUS, 1):
        assert f"queue worker {number}: CUDA_VISIBLE_DEVICES={gpu} OMP_NUM_THREADS={threads}" in said


def test_each_stage_ran_its_experiments_copy_of_the_code(repo):
    # The warm worker forks each stage into the stage's own working directory and import path.
    assert deps.code_digest(repo) != deps.code_digest(PROJECT)
    for record in lineages(repo).values():
        assert record.parent.data.tags[CODE_TAG] == deps.code_digest(repo)


def test_dvc_exp_show_has_each_experiment_with_the_metrics_mlflow_has(repo):
    shown, by_seed = experiments(repo), lineages(repo)
    assert sorted(shown) == list(SEEDS)
    for seed, (name, metrics) in shown.items():
        assert by_seed[seed].parent.data.tags[EXPERIMENT_TAG] == name
        headline = metrics["metrics/headline.json"]["data"]  # the one metrics file declared: round 1 is the last
        assert headline["last_acc"] == by_seed[seed].branches[(1, None)].data.metrics[COMPLETE_METRIC]


def test_the_aggregate_covers_every_seed(repo):
    summary = json.loads((repo / "metrics/replicates.json").read_text())
    assert summary["seeds"] == len(SEEDS)


def test_the_aggregate_names_a_seed_whose_lineage_is_missing(repo):
    command = [sys.executable, "-m", "lottery", "replicates", "--seeds", "0", "1", "7"]
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: seeds [7]: no lineage of these params in MLflow")


def test_results_come_back_by_dvc_exp_apply_and_go_out_by_dvc_exp_push(repo):
    name, metrics = experiments(repo)[1]
    sh(repo, "dvc", "exp", "apply", name)
    assert yaml.safe_load((repo / "params.yaml").read_text())["seed"] == 1
    headline = json.loads((repo / "metrics/headline.json").read_text())
    assert {key: value for key, value in headline.items() if value is not None} == metrics["metrics/headline.json"]["data"]

    sh(repo, "dvc", "exp", "push", "origin", name)
    pushed = sh(repo, "git", "ls-remote", "origin")
    assert "refs/exps/" in pushed and name in pushed
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    mask = next(out for out in lock["stages"]["prune@1"]["outs"] if out["path"] == "models/round_1/mask.pt")
    assert (repo.parent / "dvc-remote" / "files" / "md5" / mask["md5"][:2] / mask["md5"][2:]).is_file()


def _open_run_index(hp, uri, barrier, failures):
    barrier.wait()
    try:
        RunIndex(hp, uri)
    except Exception as err:
        failures.put(f"{type(err).__name__}: {err}")


def open_stores_at_once(hp, uri, count):
    """Open the lineage store of `hp` at `uri` from `count` forks released by one barrier; a line
    for each that failed."""
    fork = multiprocessing.get_context("fork")
    barrier, failures = fork.Barrier(count), fork.Queue()
    processes = [fork.Process(target=_open_run_index, args=(hp, uri, barrier, failures)) for _ in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    found = [failures.get() for _ in range(failures.qsize())]
    return found + [f"exit status {process.exitcode}" for process in processes if process.exitcode]


def test_processes_that_open_a_new_sqlite_store_at_once_all_get_it(make_hp, tmp_path):
    # Without the lock, one of two such processes failed in each of 5 tries ("table experiments already exists").
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    assert open_stores_at_once(make_hp(), uri, count=3) == []
    experiment = MlflowClient(uri).get_experiment_by_name("lottery")
    assert experiment.artifact_location == str(tmp_path / "mlruns" / "lottery")


def test_a_store_takes_the_experiment_another_process_created_after_its_lookup(make_hp, tmp_path, monkeypatch):
    uri, hp = f"sqlite:///{tmp_path / 'mlflow.db'}", make_hp()
    theirs = MlflowClient(uri).create_experiment(hp.tracking.experiment)
    lookup = MlflowClient.get_experiment_by_name
    lookups = []

    def before_theirs(client, name):  # our first lookup ran before the other process created it
        lookups.append(name)
        return None if len(lookups) == 1 else lookup(client, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", before_theirs)
    assert RunIndex(hp, uri).experiment_id == theirs and len(lookups) == 2
