"""What the `lottery` commands print: their own lines only, tables that fit the terminal, and one
progress bar of their own on a terminal.

The libraries beneath them print too: MLflow draws a "Downloading artifacts" bar for every
artifact it reads and logs at INFO level (a new SQLite store's tables), and torch and SQLAlchemy
warn. `quiet_libraries()` turns all of that off for the command's process.
"""

import logging
import os
import shutil
import sys
import warnings

# Where the output is not a terminal (a pipe, a file), tables are made this wide.
DEFAULT_WIDTH = 120
# Loggers of the libraries the commands use; they keep their errors.
LIBRARY_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "urllib3")
LONGEST_CELL = 28


def quiet_libraries():
    """No progress bars, INFO lines or warnings from the libraries in this process (and in the
    processes it starts). Warnings the user asked for (`python -W`, PYTHONWARNINGS) still show."""
    # Read by MLflow each time it downloads or uploads (mlflow.utils.file_utils.ArtifactProgressBar).
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    # Read when mlflow is imported; the loggers below when it already is (the warm worker).
    os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not sys.warnoptions:
        warnings.simplefilter("ignore")


def width():
    """The terminal's width in characters: $COLUMNS, else standard output's terminal, else DEFAULT_WIDTH."""
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def fit(rows, columns, required, render, limit=None):
    """The columns of `rows` to show in `limit` characters (default: the terminal's width), in the
    order of `columns`: every required one, then the others in the order given while the table
    `render(rows, shown)` still fits; cells longer than LONGEST_CELL are cut. Returns (text, the
    columns left out). Columns empty in every row are left out silently."""
    limit = limit or width()
    rows = [{key: _cut(value) for key, value in row.items()} for row in rows]
    present = [c for c in columns if any(row.get(c) not in (None, "") for row in rows)]
    shown = [c for c in present if c in required]
    left_out = []
    for column in (c for c in present if c not in required):
        trial = [c for c in present if c in shown or c == column]
        if _widest(render(rows, trial)) <= limit:
            shown = trial
        else:
            left_out.append(column)
    return render(rows, shown), left_out


def _widest(text):
    return max((len(line.rstrip()) for line in text.splitlines()), default=0)


def _cut(value):
    if isinstance(value, str) and len(value) > LONGEST_CELL:
        return value[: LONGEST_CELL - 1] + "…"
    return value


def _clip(line, limit=None):
    """`line` cut to the terminal's width."""
    limit = limit or width()
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Bar:
    """One progress bar, redrawn in place on standard error while that is a terminal, and erased
    when done; where it is not (a pipe, a file, a test), nothing is drawn."""

    def __init__(self, label, total, stream=None, shown=None):
        self.stream = stream or sys.stderr
        self.shown = _is_terminal(self.stream) if shown is None else shown
        self.label, self.total, self.done = label, total, 0

    def __enter__(self):
        self._draw("")
        return self

    def step(self, note=""):
        """One more of `total` done; `note` says what is under way now."""
        self.set(self.done + 1, note)

    def set(self, done, note=""):
        """`done` of `total` done; `note` says what is under way now."""
        self.done = done
        self._draw(note)

    def _draw(self, note):
        if not self.shown:
            return
        cells = 20
        filled = cells * min(self.done, self.total) // max(self.total, 1)
        line = f"{self.label} [{'#' * filled}{'.' * (cells - filled)}] {self.done}/{self.total} {note}"
        self.stream.write("\r\x1b[K" + _clip(line.rstrip(), width() - 1))
        self.stream.flush()

    def __exit__(self, *exc):
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def no_bar(label, total):
    """A Bar that draws nothing: what library functions use unless a command gives them one."""
    return Bar(label, total, shown=False)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
