"""Atomic writes."""

import os
import random
import signal
import time
from pathlib import Path

import pytest

from unetgraph.errors import FileError
from unetgraph.files import STALE_AFTER_S, atomic_dir, atomic_path, stale_temporaries, write_atomic


def test_write_atomic_creates_with_normal_mode(tmp_path):
    p = write_atomic(tmp_path / "sub" / "a.txt", "hello")
    assert p.read_text() == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [f.name for f in p.parent.iterdir()] == ["a.txt"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = write_atomic(tmp_path / "a.bin", b"old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.bin"]


# -- temporary files that killed writers leave behind --------------------------------------


def _killed_inside_a_write(target, writers=1):
    """Fork ``writers`` processes that each open an atomic write of ``target``, then SIGKILL them
    all mid-write; returns the temporary files they left (real processes, real kills: no cleanup
    code can run). They are killed together: each new write would remove a dead writer's file."""
    children = []
    for _ in range(writers):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: start the write, report the temporary path, wait to be killed
            try:
                os.close(read)
                with atomic_path(target) as tmp:
                    tmp.write_bytes(b"half a file")
                    os.write(write, str(tmp).encode())
                    time.sleep(30)
            finally:
                os._exit(0)
        os.close(write)
        children.append((pid, os.read(read, 4096).decode()))
        os.close(read)
    for pid, _ in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return [Path(tmp) for _, tmp in children]


def test_next_write_removes_temporaries_of_killed_writers(tmp_path):
    target = write_atomic(tmp_path / "net.json", "old")
    left = _killed_inside_a_write(target, writers=3)
    assert all(p.exists() and p.name.startswith(".net.json.ugtmp-") for p in left)
    assert set(stale_temporaries(tmp_path)) == set(left)
    assert target.read_text() == "old"  # the killed writes never touched the file
    write_atomic(tmp_path / "other.yaml", "x")  # any write to the folder cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.json", "other.yaml"]


def test_cleanup_never_touches_what_is_not_a_dead_writers_file(tmp_path):
    (dead,) = _killed_inside_a_write(tmp_path / "a.json")
    mark = dead.name.split(".ugtmp-")[1]  # <host>-<pid>-<random>.json
    host, pid, rest = mark.split("-")
    keep = {
        # a user's files that look alike: other words, another shape, a folder, a link
        ".a.json.tmp-12345678-1-abcdef12.json",
        f".a.json.ugtmp-{host}-{pid}.json",
        f"a.json.ugtmp-{host}-{pid}-{rest}",
        f".a.json.ugtmp-{host}-{pid}-ABCDEFGH.json",
        # a live writer (this process), and a recent one on another machine
        f".a.json.ugtmp-{host}-{os.getpid()}-00000000.json",
        f".a.json.ugtmp-00000000-{pid}-00000000.json",
    }
    for name in keep:
        (tmp_path / name).write_text("mine")
    (tmp_path / f".b.json.ugtmp-{host}-{pid}-11111111.json").mkdir()
    (tmp_path / f".c.json.ugtmp-{host}-{pid}-22222222.json").symlink_to(tmp_path / "elsewhere")
    keep |= {f".b.json.ugtmp-{host}-{pid}-11111111.json", f".c.json.ugtmp-{host}-{pid}-22222222.json"}
    # a stale file from another machine is removed once a day old
    old = tmp_path / f".d.json.ugtmp-00000000-{pid}-33333333.json"
    old.write_text("stale")
    os.utime(old, (time.time() - STALE_AFTER_S - 60,) * 2)
    write_atomic(tmp_path / "a.json", "new")
    assert not dead.exists() and not old.exists()
    assert {p.name for p in tmp_path.iterdir()} == keep | {"a.json"}


def test_a_live_writers_temporary_survives_another_write(tmp_path):
    with atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("being written")
        write_atomic(tmp_path / "b.json", "meanwhile")
        assert tmp.exists()
    assert (tmp_path / "a.json").read_text() == "being written"


def test_random_kills_of_a_writing_process_leave_nothing_after_the_next_write(tmp_path):
    """The issue's case: a process saving in a loop, killed at random moments (bounded: ~2 s)."""
    rng = random.Random(0)
    target = tmp_path / "net.yaml"
    for _ in range(10):
        pid = os.fork()
        if pid == 0:
            try:
                while True:
                    write_atomic(target, "x" * 1_000_000)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.01, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    write_atomic(tmp_path / "after.yaml", "y")
    assert sorted(p.name for p in tmp_path.iterdir()) in (["after.yaml", "net.yaml"], ["after.yaml"])
    if target.exists():
        assert target.read_text() == "x" * 1_000_000  # whole, never torn


def test_write_errors_are_typed_and_name_the_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileError, match="a_file is a file, not a folder") as e:
        write_atomic(tmp_path / "a_file" / "net.json", "x")
    assert isinstance(e.value, OSError) and isinstance(e.value.__cause__, OSError)
    with pytest.raises(FileError, match=f"{tmp_path}: cannot write: it is a folder"):
        write_atomic(tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_killed_folder_writer_leaves_nothing_after_the_next_write(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "w.bin").write_bytes(b"old")
    pid = os.fork()
    if pid == 0:  # the child: replace the folder, die by SIGKILL halfway (no cleanup can run)
        try:
            with atomic_dir(target, overwrite=True) as tmp:
                (tmp / "w.bin").write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    (left,) = [p for p in tmp_path.iterdir() if p.name != "model"]
    assert left.is_dir() and left.name.endswith(".partial")
    assert (target / "w.bin").read_bytes() == b"old"
    write_atomic(tmp_path / "other.json", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other.json"]


def test_a_write_never_replaces_a_fifo_or_a_device(tmp_path):
    """A rename onto a FIFO or a device replaced it with a plain file: as root, ``unetgraph eject
    -o /dev/null`` replaced the system's /dev/null."""
    import stat

    os.mkfifo(tmp_path / "out.json")
    with pytest.raises(FileError, match=r"out\.json: cannot write: it is not a regular file"):
        write_atomic(tmp_path / "out.json", "{}")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out.json").st_mode)
    (tmp_path / "link.json").symlink_to(tmp_path / "out.json")  # a link is replaced, never followed
    write_atomic(tmp_path / "link.json", "{}")
    assert (tmp_path / "link.json").read_text() == "{}" and stat.S_ISFIFO(os.lstat(tmp_path / "out.json").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "out.json"]
