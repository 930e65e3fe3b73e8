"""lottery.io's writes on a real file system: durable (the file flushed, then renamed, then its
folder flushed), with the modes the umask of the moment gives, and without touching the umask.
A power loss cannot be simulated here, so the flushes are observed by spying on os.fsync."""

import os
import subprocess
import sys

import pytest

from lottery import io
from tests.conftest import PROJECT


@pytest.fixture
def disk_events(monkeypatch):
    """Every fsync (the inode it flushed, its size then) and every rename (its target), in order;
    both still do their work."""
    events = []
    fsync, replace = os.fsync, os.replace

    def spied_fsync(fd):
        status = os.fstat(fd)
        events.append(("fsync", status.st_ino, status.st_size))
        fsync(fd)

    def spied_replace(source, target):
        events.append(("rename", os.fspath(target), None))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", spied_fsync)
    monkeypatch.setattr(os, "replace", spied_replace)
    return events


def order(events):
    return [event[:2] for event in events]


def test_a_write_flushes_the_whole_file_then_renames_it_then_flushes_its_folder(tmp_path, disk_events):
    path = tmp_path / "out.json"
    path.write_text("old")
    payload = b'{"a": 1}\n'
    io.write_bytes(path, payload)
    assert path.read_bytes() == payload
    assert order(disk_events) == [("fsync", path.stat().st_ino), ("rename", str(path)), ("fsync", tmp_path.stat().st_ino)]
    assert disk_events[0][2] == len(payload)  # flushed once the block has written all of it
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_each_new_folder_is_flushed_into_its_parent(tmp_path, disk_events):
    path = tmp_path / "a" / "b" / "out.txt"
    io.write_text(path, "x")
    inode = lambda p: p.stat().st_ino  # noqa: E731
    assert order(disk_events) == [
        ("fsync", inode(tmp_path)),  # a's entry
        ("fsync", inode(tmp_path / "a")),  # b's entry
        ("fsync", inode(path)),
        ("rename", str(path)),
        ("fsync", inode(tmp_path / "a" / "b")),
    ]


@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o002, 0o664)])
def test_a_written_file_has_the_mode_the_umask_of_that_moment_gives(tmp_path, umask, mode):
    # The warm worker sets each stage's umask before running it: the one at import is not the one that counts.
    previous = os.umask(umask)
    try:
        io.write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == mode


def test_importing_and_writing_never_set_the_umask(tmp_path):
    # os.umask is Python's only way to read the umask, and it sets it for every thread meanwhile.
    script = "\n".join(
        [
            "import os",
            "def refused(mask): raise AssertionError(f'os.umask({mask:o}) called')",
            "os.umask = refused",
            "from lottery import io",
            f"io.write_text({str(tmp_path / 'out.txt')!r}, 'x')",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_text() == "x"
