"""Errors a user can cause: each becomes one line naming the key, value or file, never a traceback.

Every such error class derives from `UserError`; `lottery.stage` and the `lottery` command print
them as `error: <message>` and exit with status 1. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error in what the user asked for or supplied (params, files, lineage names)."""


class MissingInput(UserError, FileNotFoundError):
    """A file a stage reads does not exist: an earlier stage has not written it yet."""

    def __init__(self, path):
        super().__init__(f"{path}: no such file (an earlier stage writes it: run `dvc repro`)")
        self.path = path


class ParamsError(UserError, ValueError):
    """A params.yaml value that cannot be used; the message names the key."""
