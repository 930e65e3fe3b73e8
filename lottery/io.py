"""Atomic, byte-stable writes: a reader never sees a half-written output, a failed write leaves
the old one, and the same content always gives the same bytes (so DVC sees no change where there
is none)."""

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from lottery.errors import MissingInput

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make outputs private to one user
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path, payload):
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    return json.loads(read_text(path))


def write_text(path, text):
    write_bytes(path, text.encode())


def read_text(path):
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise MissingInput(path) from None


def csv_text(rows, columns):
    """Rows of dicts as CSV text with a header; keys outside `columns` are left out."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def save_torch(path, obj):
    """torch.save `obj` to `path` with bytes that depend on `obj` alone.

    Saved to a file name, torch writes that name's stem into the archive (its root folder), so a
    temporary name would make every save differ; saved to a buffer, the root is always 'archive'.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def load_torch(path, mmap=False):
    """A file written by `save_torch` (tensors and plain containers only: no pickled code);
    `mmap`: tensors backed by the file's pages, read when first touched."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except FileNotFoundError:
        raise MissingInput(path) from None
