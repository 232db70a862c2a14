"""Atomic writes: every file (and saved-model folder) unetgraph writes appears whole or not at all.

A write goes to a temporary file (or folder) beside the target, then is renamed onto it. A process killed
in between (``kill -9``, a power cut) leaves its temporary file behind; the next write to that
folder removes such leftovers. Only files that are surely ours are removed, by three rules
that must all hold (see :func:`stale_temporaries`):

- the name has our pattern ``.<target>.ugtmp-<host>-<pid>-<random><suffix>``, where ``<host>``
  is 8 hex digits of this machine's name, ``<pid>`` the writer's process id and ``<random>``
  8 random hex digits;
- the entry is a regular file, or a folder named ``….partial`` (being written) or ``….old`` (set
  aside while a new folder replaced it), not a link, owned by the current user; an ``.old``
  folder is removed only while the folder that replaced it exists;
- its writer is gone: on this machine, no process with that id exists; a file written from
  another machine (a shared folder) or on a system without process ids is left alone until it
  is a day old.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any, Iterator, TypeGuard

from .errors import FileError
from .util import short_repr

__all__ = [
    "write_atomic",
    "atomic_path",
    "atomic_dir",
    "stale_temporaries",
    "read_regular",
    "is_path",
    "open_regular",
    "TooLarge",
    "TEMP_MARK",
    "STALE_AFTER_S",
]

TEMP_MARK = "ugtmp"
"""The word every temporary file name carries (``.net.yaml.ugtmp-1a2b3c4d-4242-k3j2h1g0.yaml``)."""

STALE_AFTER_S = 24 * 3600
"""Age after which a temporary file whose writer cannot be checked (another machine) is removed."""

_FOLDER_SUFFIXES = (".partial", ".old")

_TEMP_NAME = re.compile(rf"^\..+\.{TEMP_MARK}-(?P<host>[0-9a-f]{{8}})-(?P<pid>[0-9]{{1,10}})-[0-9a-f]{{8}}(\.[^/]*)?$")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _prefix(path: Path) -> str:
    # the target's name is cut so that the temporary name stays within the usual 255-byte limit
    return f".{path.name[:80]}.{TEMP_MARK}-{_host()}-{os.getpid()}-"


def _writer_gone(host: str, pid: int, age_s: float) -> bool:
    if host != _host() or os.name != "posix":  # cannot ask (os.kill on Windows would terminate)
        return age_s > STALE_AFTER_S
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def is_path(value: object) -> TypeGuard[str | os.PathLike[str]]:
    """Whether ``value`` is a path this library takes: ``str`` or an ``os.PathLike`` of ``str``
    (``bytes`` paths are refused by every reader and writer, each in its own error type)."""
    return isinstance(value, (str, os.PathLike)) and not isinstance(os.fspath(value), bytes)


def stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """The temporary files in ``folder`` that killed writers left behind (the rules above).

    Raises:
        TypeError: ``folder`` is not a path (``str`` or ``os.PathLike`` of ``str``).
    """
    if not is_path(folder):
        raise TypeError(f"folder: expected a folder path (str or os.PathLike), got {type(folder).__name__}")
    out = []
    uid = os.getuid() if hasattr(os, "getuid") else None
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        folder_ok = stat.S_ISDIR(st.st_mode) and entry.name.endswith(_FOLDER_SUFFIXES)
        if not (stat.S_ISREG(st.st_mode) or folder_ok) or (uid is not None and st.st_uid != uid):
            continue
        if entry.name.endswith(".old") and not _target_exists(Path(entry.path)):
            continue  # the only copy of a replaced folder: a rename was interrupted
        if _writer_gone(m["host"], int(m["pid"]), now - st.st_mtime):
            out.append(Path(entry.path))
    return out


class TooLarge(OSError):
    """A file is larger than the reader's limit (``size`` and ``limit`` in bytes)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(errno.EFBIG, f"{size:,} bytes, more than the {limit:,} it may hold")
        self.size, self.limit = size, limit


def open_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """A read-only descriptor of the regular file ``path`` (relative to ``dir_fd`` if given).

    Opened without blocking and checked on the descriptor, not the name, so a FIFO (whose
    ``open`` would wait for a writer), a device (``/dev/zero`` never ends) or a folder put in a
    file's place is refused, and a file renamed over ``path`` meanwhile cannot slip in.

    Raises:
        IsADirectoryError, OSError: a folder; not a regular file (``EINVAL``); cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, dir_fd=dir_fd) if dir_fd is not None else os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], limit: int, *, dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), at most ``limit``.

    Raises:
        TooLarge: the file holds more than ``limit`` bytes (checked before reading, and again
            after, for a file that grew).
        IsADirectoryError, OSError: as :func:`open_regular`, or the read failed.
    """
    fd = open_regular(path, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if size > limit:
            raise TooLarge(size, limit)
        data = f.read(size + 1)  # read(n) allocates n bytes up front: not the limit, which may be GiBs
        while len(data) <= limit and (more := f.read(min(2**24, limit + 1 - len(data)))):
            data += more  # the file grew since fstat
    if len(data) > limit:
        raise TooLarge(len(data), limit)
    return data


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones this call created, outermost first."""
    missing = []
    for p in (folder, *folder.parents):
        if os.path.lexists(p):
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{p} is a file, not a folder")
            break
        missing.append(p)
    created = []
    for p in reversed(missing):
        try:
            os.mkdir(p)
        except FileExistsError:  # another writer made it meanwhile: theirs, not ours to remove
            continue
        created.append(p)
    return created


def _unmake(created: list[Path]) -> None:
    """Remove the folders :func:`_make_parents` created, innermost first, while they are empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:  # not empty: another writer uses it
            return


def _target_exists(tmp: Path) -> bool:
    """Whether the target a temporary entry was written for exists; ``True`` where its name was
    cut to fit (then the target cannot be told, and nothing is assumed lost)."""
    target = tmp.name[1:].split(f".{TEMP_MARK}-")[0]
    return len(target) >= 80 or os.path.lexists(tmp.parent / target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # another writer may have removed it first
            path.unlink()


def _remove_stale(folder: Path) -> None:
    for p in stale_temporaries(folder):
        _remove(p)


def _create_temp(path: Path, *, folder: bool = False) -> Path:
    """A new, empty temporary file (or folder) beside ``path``, created with the mode a plain
    ``open()`` (``mkdir()``) gives, the umask applied by the system, so no umask has to be read
    (reading it is not thread-safe)."""
    for _ in range(100):
        suffix = ".partial" if folder else path.suffix or ".tmp"
        tmp = path.parent / f"{_prefix(path)}{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                os.mkdir(tmp, 0o777)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                os.close(fd)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    For writers that want a file name (``torch.save``, ``torch.onnx.export``, ``dot``).
    On error the temporary file is removed and ``path`` is left as it was. Temporary files
    that killed writers left in the folder are removed first (see the module's rules).

    Raises:
        FileError: the folder cannot be made or written, or ``path`` is a folder. What the
            caller's writer raises inside the block passes through unchanged.
    """
    path = Path(path)
    created: list[Path] = []
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        _replaceable(path)
        created = _make_parents(path.parent)
        _remove_stale(path.parent)
        tmp = _create_temp(path)
    except (OSError, ValueError) as e:  # ValueError: a NUL or an unencodable character in the path
        _unmake(created)
        raise _cannot_write(path, e) from e
    try:
        yield tmp
        try:
            if path.exists():  # keep the old file's mode
                os.chmod(tmp, path.stat().st_mode & 0o777)
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        _unmake(created)
        raise


def _replaceable(path: Path) -> None:
    """Refuse a target that a rename would destroy rather than update: a FIFO, a device (as root,
    ``-o /dev/null`` replaced the system's /dev/null with a file), a socket. A link is replaced
    by the file, never followed."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there; a parent that is a file is named later
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise OSError(errno.EINVAL, "it is not a regular file (a device, a FIFO or a socket): not replaced")


def _cannot_write(path: Path, e: OSError | ValueError) -> FileError:
    if isinstance(e, FileError):
        return e
    if isinstance(e, OSError):
        return FileError(f"{path}: cannot write: {e.strerror or e}")
    return FileError(f"{short_repr(str(path))}: cannot write: {e}")  # a NUL in the name: quoted


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path.

    Raises:
        FileError: the file cannot be written (no permission, a folder, the disk full).
    """
    with atomic_path(path) as tmp:
        try:
            if isinstance(data, str):
                tmp.write_text(data, encoding="utf-8")
            else:
                tmp.write_bytes(data)
        except OSError as e:
            raise _cannot_write(Path(path), e) from e
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path`` whole.

    The files written into it are flushed to disk before the folder is renamed, so a kill at
    any moment leaves either the old ``path`` or the new one, never a half-written folder.
    Temporary folders of killed writers are removed by the next write (the module's rules).

    Args:
        path: the folder to create.
        overwrite: replace an existing ``path``. On Linux the two folders are swapped in one
            step (``renameat2(RENAME_EXCHANGE)``); elsewhere the old folder is first renamed
            aside (``….old``, where a kill between the two renames leaves it).

    Raises:
        FileExistsError: ``path`` exists (or appeared while writing) and ``overwrite`` is false.
        FileError: the folder cannot be made or written (no permission, the disk full, a bad
            name); what the caller's block raises passes through unchanged. Folders this call
            created on the way are removed again.
    """
    path = Path(path)
    created: list[Path] = []
    try:
        created = _make_parents(path.parent)
        _remove_stale(path.parent)
        if os.path.lexists(path) and not overwrite:
            raise FileExistsError(errno.EEXIST, "exists; pass overwrite=True to replace it", str(path))
        tmp = _create_temp(path, folder=True)
    except FileExistsError:
        _unmake(created)
        raise
    except (OSError, ValueError) as e:
        _unmake(created)
        raise _cannot_write(path, e) from e
    try:
        yield tmp
        try:
            _sync_tree(tmp)
            if not (_rename_new(tmp, path, overwrite) or _exchange(tmp, path)):
                old = tmp.with_suffix(".old")
                os.rename(path, old)
                os.rename(tmp, path)
                _remove(old)
            elif tmp.exists():
                _remove(tmp)  # now the old folder
            _sync(path.parent)
        except FileExistsError:
            raise
        except OSError as e:
            raise _cannot_write(path, e) from e
    except BaseException:
        _remove(tmp)
        _unmake(created)
        raise


def _rename_new(tmp: Path, path: Path, overwrite: bool) -> bool:
    """Rename ``tmp`` to ``path`` where nothing is there, in one step (``RENAME_NOREPLACE`` on
    Linux: a folder that appears meanwhile, even an empty one, is never replaced); ``False``
    where ``path`` exists and ``overwrite`` asks to replace it.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    fn = _renameat2()
    if fn is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if fn(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(path), rename_noreplace) == 0:
            return True
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            if err != errno.EEXIST:
                raise OSError(err, os.strerror(err), str(path))
            if overwrite:
                return False
            raise FileExistsError(errno.EEXIST, "appeared while writing", str(path))
    if os.path.lexists(path):
        if overwrite:
            return False
        raise FileExistsError(errno.EEXIST, "appeared while writing", str(path))
    try:
        os.rename(tmp, path)
    except OSError as e:  # an empty folder appeared meanwhile is replaced; a full one is not
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and not overwrite:
            raise FileExistsError(errno.EEXIST, "appeared while writing", str(path)) from None
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


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
