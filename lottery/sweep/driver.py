"""`lottery sweep`: one DVC experiment per point of a grid, on a Ray cluster, from the user's commit.

Before anything runs, the driver checks the project (the code and params it sweeps are committed;
the git remote and the DVC remote exist), validates every point's params (a refused point fails
alone, with its one-line error), and leaves out the points already finished: those whose
experiment is on the git remote (a point's task pushes it last, after its outputs reached the DVC
remote and its lineage MLflow). It pushes the commit to the git remote under
`refs/lottery-sweeps/<commit>`, so that every node can fetch it, and runs the rest on Ray
(lottery.sweep.cluster). Afterwards it pulls the finished experiments' refs (`dvc exp pull
--no-cache`), so that `dvc exp show` here lists them; `dvc exp apply` and `dvc pull` bring one's
outputs.
"""

import os
import subprocess
import sys
from dataclasses import dataclass, field

from lottery import hparams, mlflow_connection, paths, terminal, validation, yaml12
from lottery.errors import ParamsError, UserError
from lottery.sweep import grid

SWEPT_FILES = ("lottery", "stages", "dvc.yaml", "params.yaml", ".dvc/config")
BASE_REFS = "refs/lottery-sweeps"
PASSED_ON = ("MLFLOW_", "LOTTERY_")


@dataclass
class Options:
    settings: list
    seeds: list = field(default_factory=list)
    address: str = None
    gpus_per_experiment: float = None  # None: 1 where the cluster has GPUs, else 0
    cpus_per_experiment: float = 1
    git_remote: str = "origin"
    dvc_remote: str = None  # None: the committed config's default remote
    retries: int = 3
    workdir: str = None
    keep: bool = False


@dataclass
class Outcome:
    """What a sweep did: the points it ran, those finished before it, and (point, error line) of each that failed."""

    ran: list
    finished_before: list
    failed: dict


def git(root, *args):
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"git {' '.join(args)}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return done.stdout.strip()


def committed(root):
    """HEAD, refused if the files a sweep runs from differ from it."""
    changed = git(root, "diff", "--name-only", "HEAD", "--", *SWEPT_FILES)
    if changed:
        names = ", ".join(changed.splitlines())
        raise UserError(f"uncommitted changes in {names}: a sweep runs your last commit; commit them first")
    return git(root, "rev-parse", "HEAD")


def dvc_remote(root, commit, name):
    """The committed config's remote `name` (default: its default remote): a node reads the config
    from the commit, never this checkout's .dvc/config.local."""
    from configobj import ConfigObj  # the format and parser of DVC's config files

    config = ConfigObj(git(root, "show", f"{commit}:.dvc/config").splitlines())
    name = name or config.get("core", {}).get("remote")
    if not name:
        raise UserError(".dvc/config: no default DVC remote: `dvc remote add -d NAME URL` and commit it (or give --dvc-remote)")
    if f'remote "{name}"' not in config:
        raise UserError(f"--dvc-remote {name}: not a remote of the committed .dvc/config")
    return name


def refused(raw, points):
    """{point name: one-line error} of the points whose params validation refuses."""
    found = {}
    for point in points:
        try:
            validation.from_dict(grid.applied(raw, point.overrides))
        except ParamsError as err:
            found[point.name] = str(err)
    return found


def finished(root, remote, commit, points):
    """The points whose experiment on `commit` is on the git remote."""
    refs = git(root, "ls-remote", remote, f"refs/exps/{commit[:2]}/{commit[2:]}/*")
    names = {line.rsplit("/", 1)[-1] for line in refs.splitlines()}
    return [point for point in points if point.name in names]


def environment(raw):
    """The driver's variables every point's stages get; MLFLOW_TRACKING_URI made absolute where the
    stages would take it from the project (a relative SQLite path names each workspace's own file)."""
    tracking = dict(raw.get("tracking") or {})
    uri = tracking.get("uri") or ""
    if uri.startswith(mlflow_connection.SQLITE) and not uri.removeprefix(mlflow_connection.SQLITE).startswith("/"):
        raise ParamsError(f"tracking.uri = {uri!r}: a sweep's experiments run in workspaces of their own; give an absolute path or a server")
    passed = {key: value for key, value in os.environ.items() if key.startswith(PASSED_ON)}
    if not uri:
        passed["MLFLOW_TRACKING_URI"] = mlflow_connection.tracking_uri(hparams.from_dict(raw).tracking)
    return passed


def author(root):
    return {"name": git(root, "config", "user.name"), "email": git(root, "config", "user.email")}


def sweep(options, root=None, bar=None):
    """Run the grid's unfinished points; the Outcome."""
    root = root or paths.project_root()
    commit = committed(root)
    remote_url = git(root, "remote", "get-url", options.git_remote)
    dvc_name = dvc_remote(root, commit, options.dvc_remote)
    raw = yaml12.load(git(root, "show", f"{commit}:params.yaml"))
    points = grid.points(options.settings, options.seeds)
    grid.applied(raw, points[0].overrides)  # a key params.yaml lacks stops the sweep, not each point
    failed = refused(raw, points)
    passed_on = environment(raw)
    done_before = finished(root, options.git_remote, commit, [p for p in points if p.name not in failed])
    todo = [p for p in points if p.name not in failed and p not in done_before]
    ran, bar = [], bar or terminal.no_bar("sweep", 0)
    bar.total = len(todo)
    bar.set(0, f"{len(todo)} to run")
    if todo:
        git(root, "push", "-q", options.git_remote, f"{commit}:{BASE_REFS}/{commit}")
        who = author(root)
        specs = [spec(point, options, commit, remote_url, dvc_name, passed_on, who) for point in todo]
        from lottery.sweep import cluster  # Ray: only for a sweep that runs something

        errors = cluster.run(specs, options, bar)
        failed.update({name: error for name, error in errors.items() if error})
        ran = [point for point in todo if point.name not in failed]
    if ran:
        subprocess.run([sys.executable, "-m", "dvc", "exp", "pull", "--no-cache", options.git_remote, *(p.name for p in ran)], cwd=root, check=True, capture_output=True)
    return Outcome(ran=ran, finished_before=done_before, failed=[(p, failed[p.name]) for p in points if p.name in failed])


def spec(point, options, commit, remote_url, dvc_name, passed_on, who):
    """What a point's task needs, as JSON-able values."""
    return {
        "name": point.name,
        "overrides": point.overrides,
        "commit": commit,
        "git_remote": remote_url,
        "dvc_remote": dvc_name,
        "environment": passed_on,
        "author": who,
        "cpus": options.cpus_per_experiment,
        "workdir": options.workdir,
        "keep": options.keep,
    }
