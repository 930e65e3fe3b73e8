"""Atomic, durable, byte-stable writes: a reader never sees a half-written output, a failed write
leaves the old one, a power loss after a write leaves the new one (never an empty file that DVC
has recorded), and the same content always gives the same bytes (so DVC sees no change where
there is none)."""

import csv
import io
import itertools
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from lottery.errors import MissingInput


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; if the block succeeds, flush it to the disk, rename it
    over `path` and flush the folder's entry (the order that survives a power loss: the rename
    never lands before the data); else remove it."""
    path = Path(path)
    _make_folder(path.parent)
    tmp = _new_file_beside(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_file_beside(path):
    """A new, empty, hidden file in `path`'s folder. It is created with mode 0666, which the kernel
    narrows by the process's umask of that moment, as for any file a program writes (mkstemp's
    0600 would make outputs private to one user, and Python reads the umask only by setting it,
    for every thread of the process)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue  # another writer's name: draw again


def _make_folder(folder):
    """mkdir -p, each new folder's entry flushed in its parent, so the file written into it
    cannot outlive a power loss without it."""
    missing = list(itertools.takewhile(lambda f: not f.exists(), (folder, *folder.parents)))
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        _fsync(created.parent)


def _fsync(path):
    """Flush a file's data, or a folder's entries, from the page cache to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path, payload):
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def write_json(path, obj, sort_keys=True):
    """`obj` as indented JSON; `sort_keys=False` keeps the dict's order (DVC shows columns in it)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


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
