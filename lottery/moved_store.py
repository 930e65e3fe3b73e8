"""A SQLite MLflow store that was moved or copied with its project folder.

MLflow records absolute artifact locations: an experiment's (`<folder>/mlruns/<experiment>`,
beside the database, lottery.mlflow_connection), every run's, every model version's source and storage
location. After `mv project project2` a stage would write its artifacts back into `project`,
recreating it; after `cp -r project copy` the copy's stages would replace the original's artifacts.
So whenever a stage or the `lottery` command opens a SQLite store whose experiment keeps its
artifacts in the `mlruns` folder beside another folder's database, every location recorded under
that folder's `mlruns/` is rewritten to the same place under this database's `mlruns/`, and one
line says so. Where that folder's artifacts are still there and none came along beside this
database, nothing is rewritten: opening fails with one line saying what to do.
"""

import contextlib
import os
import sqlite3
import sys
from pathlib import Path

from lottery.errors import UserError

# Every column of MLflow 3.17.2's SQL schema that holds an artifact location (read from its
# dbmodels and from a store after a lineage with a registered model): (table, column, the
# `key` its row must have, if any).
LOCATION_COLUMNS = (
    ("experiments", "artifact_location", None),
    ("runs", "artifact_uri", None),
    ("model_versions", "source", None),
    ("model_versions", "storage_location", None),
    ("logged_models", "artifact_location", None),
    ("workspaces", "default_artifact_root", None),
    ("trace_tags", "value", "mlflow.artifactLocation"),
)
FOLDER = "mlruns"


class StoreElsewhere(UserError, RuntimeError):
    """A moved or copied store whose artifacts stayed in the folder it was made in."""


def follow(db, experiment):
    """Make the SQLite store at `db` record its artifacts beside it, if `experiment` says it was
    made in another folder (see the module docstring)."""
    db = Path(db)
    location = _recorded_location(db, experiment)
    here = db.parent
    if location is None or location.parent.name != FOLDER or _inside(location, here):
        return  # not yet made, elsewhere than a local mlruns folder, or already this folder's own
    made_in = location.parent.parent
    if made_in.exists() and os.path.samefile(made_in, here):
        return  # this folder by another name (a symbolic link)
    own = here / FOLDER / location.name
    if location.exists() and not own.exists():
        raise StoreElsewhere(
            f"{db} was made in {made_in} and its artifacts are still in {location}, not in {own}: "
            f"copy them there to track here (or set tracking.uri to sqlite:///{made_in / db.name})"
        )
    rewritten = relocate(db, made_in / FOLDER, here / FOLDER)
    print(f"MLflow: {db} was made in {made_in}; its {rewritten} artifact locations now name {here / FOLDER}", file=sys.stderr)


def relocate(db, old, new):
    """Rewrite every recorded location under folder `old` (as a path or a file: URI) to the same
    place under `new`, in one transaction; how many values changed."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection:
        with connection:  # one transaction: committed at the end, rolled back on an error
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return sum(
                _rewrite(connection, table, column, key, f"{scheme}{old}/", f"{scheme}{new}/")
                for table, column, key in LOCATION_COLUMNS
                if table in tables
                for scheme in ("", "file://")
            )


def _rewrite(connection, table, column, key, prefix, replacement):
    """Values of `table.column` (in rows of that `key`, if given) that start with `prefix`, given
    `replacement` instead; how many."""
    condition = f"substr({column}, 1, ?) = ?" + (" AND key = ?" if key else "")
    return connection.execute(
        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {condition}",
        (replacement, len(prefix) + 1, len(prefix), prefix, *([key] if key else [])),
    ).rowcount


def _recorded_location(db, experiment):
    """The local folder where `experiment` keeps its artifacts, as the store at `db` records it;
    None where there is no such store, experiment or local folder."""
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection:
        query = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'experiments'"
        if connection.execute(query).fetchone() is None:
            return None  # a database MLflow has not laid out yet
        row = connection.execute("SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)).fetchone()
    return _local_path(row[0]) if row else None


def _local_path(location):
    """The folder a local artifact location names (a path or a file: URI); None for any other scheme."""
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    return Path(location) if location.startswith("/") else None


def _inside(path, folder):
    return path == folder or folder in path.parents
