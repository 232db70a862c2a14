"""Atomic writes: every file (and saved-model folder) unetgraph writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["write_atomic", "atomic_path", "atomic_dir"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    For writers that want a file name (``torch.save``, ``torch.onnx.export``, ``dot``).
    On error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the mode a plain open() would (or the old file's)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path`` whole.

    The files written into it are flushed to disk before the folder is renamed, so a kill at
    any moment leaves either the old ``path`` or the new one, never a half-written folder.
    Temporary folders of killed writers (``.NAME.PID.*.partial``) are removed by the next write.

    Args:
        path: the folder to create.
        overwrite: replace an existing ``path``. On Linux the two folders are swapped in one
            step (``renameat2(RENAME_EXCHANGE)``); elsewhere the old folder is first renamed
            aside to ``.NAME.PID.*.old`` (where a kill between the two renames leaves it).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(errno.EEXIST, "exists; pass overwrite=True to replace it", str(path))
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".partial"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder a plain mkdir's mode
        _sync_tree(tmp)
        if not os.path.lexists(path):
            os.rename(tmp, path)
        elif not overwrite:
            raise FileExistsError(errno.EEXIST, "appeared while writing", str(path))
        elif _exchange(tmp, path):
            _remove(tmp)  # now the old folder
        else:
            old = tmp.with_suffix(".old")
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        _sync(path.parent)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _sync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            _sync(p)
    _sync(folder)


def _remove_stale(path: Path) -> None:
    """Remove temporary folders beside ``path`` that writers left when they were killed."""
    for p in path.parent.glob(f".{glob.escape(path.name)}.*"):
        parts = p.name[len(path.name) + 2 :].split(".")
        if len(parts) != 3 or parts[2] not in ("partial", "old") or not parts[0].isdigit():
            continue
        if parts[2] == "old" and not path.exists():
            continue  # the only copy of the previous folder: a rename was interrupted
        if not _alive(int(parts[0])):
            _remove(p)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux); ``False`` where the system or file system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
