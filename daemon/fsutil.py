"""Safe file operations for intake and outcome moves (Linux).

Everything here refuses to read through symlinks, FIFOs, devices, sockets and
hard links, and every move is a same-filesystem rename that never overwrites
and is made durable with a directory fsync.

No exception raised from here carries a file name or path: ``OSError``s from
the kernel are re-raised without their ``filename`` (callers log messages, and
file names are PHI). The one exception is :func:`ensure_dir`, whose paths are
the admin's configured folders.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

from daemon.errors import ConfigError, NotRegularFileError
from daemon.gate import GATE
from daemon.killpoints import killpoint

FileKindName = Literal[
    "file", "symlink", "fifo", "socket", "device", "directory", "missing", "other"
]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1

_SYMLINK_MESSAGE = "the file is a symbolic link (shortcut), not a document"
_KIND_MESSAGES: dict[str, str] = {
    "symlink": _SYMLINK_MESSAGE,
    "fifo": "the file is a named pipe (FIFO), not a document",
    "socket": "the file is a socket, not a document",
    "device": "the file is a device, not a document",
    "directory": "the item is a folder, not a document",
    "other": "the file is a special file, not a document",
}
_HARD_LINK_MESSAGE = (
    "the file has other hard links (it is also stored under another name), "
    "so it cannot be moved safely"
)
_OTHER_FS_MESSAGE = "the file is on a different filesystem from its folder"


# --------------------------------------------------------------------------- helpers


def _scrubbed(exc: OSError) -> OSError:
    """The same error (same type and errno) without the file names in its message."""
    try:
        clean = type(exc)(exc.errno, exc.strerror)
    except TypeError:  # a subclass with an unusual constructor
        clean = OSError(exc.errno, exc.strerror)
    return clean


class _NoNames:
    """Re-raise any ``OSError`` carrying a file name as one without it (no PHI).
    A class, not a ``@contextmanager`` generator: it wraps every file call of the
    pipeline, and costs a fraction of one."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        _type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> Literal[False]:
        if isinstance(exc, OSError) and (exc.filename is not None or exc.filename2 is not None):
            raise _scrubbed(exc) from None
        return False


_NO_NAMES = _NoNames()


def _no_names() -> _NoNames:
    """Re-raise any ``OSError`` carrying a file name as one without it (no PHI)."""
    return _NO_NAMES


def child(folder: Path | str, name: str) -> str:
    """``str(Path(folder) / name)`` for a bare ``name``, without building a ``Path``
    (the hot paths join a folder and a name several times a document)."""
    base = os.fspath(folder)
    return f"{base}{name}" if base.endswith("/") else f"{base}/{name}"


def _kind_of(mode: int) -> FileKindName:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _refuse_unless_plain(st: os.stat_result, expected_dev: int | None) -> None:
    """Raise NotRegularFileError unless ``st`` is a regular file with one link."""
    kind = _kind_of(st.st_mode)
    if kind != "file":
        raise NotRegularFileError(_KIND_MESSAGES[kind])
    if st.st_nlink != 1:
        raise NotRegularFileError(_HARD_LINK_MESSAGE)
    if expected_dev is not None and st.st_dev != expected_dev:
        raise NotRegularFileError(_OTHER_FS_MESSAGE)


def _precheck(path: Path, expected_dev: int | None) -> None:
    """Refuse by ``lstat`` before opening, so a device or FIFO is never even opened.

    Not a guarantee (the name can be swapped afterwards); ``open_document``
    checks the opened descriptor again, which is authoritative.
    """
    _refuse_unless_plain(os.lstat(path), expected_dev)


# --------------------------------------------------------------------------- public API


def lstat_kind(path: Path) -> FileKindName:
    """What is at ``path`` itself (symlinks are not followed)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        raise _scrubbed(exc) from None
    return _kind_of(st.st_mode)


def open_document(path: Path, *, expected_dev: int | None = None) -> BinaryIO:
    """Open a document for reading, refusing anything but a plain regular file.

    Refused with :class:`NotRegularFileError`: a symlink (never followed, so
    its target is never opened), a FIFO, socket, device or directory, a file
    with more than one hard link, and a file on another filesystem than
    ``expected_dev`` (default: the device of the folder it is in, so a file
    bind-mounted into an inbox or the spool is refused). The descriptor is
    opened non-blocking (a FIFO swapped in at the last moment cannot hang us),
    checked with ``fstat``, then set back to blocking. The caller closes the
    returned file (it is a context manager). A vanished file raises
    ``FileNotFoundError``.
    """
    with _no_names():
        if expected_dev is None:
            expected_dev = path.parent.stat().st_dev
        _precheck(path, expected_dev)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotRegularFileError(_SYMLINK_MESSAGE) from None
            if exc.errno in (errno.ENXIO, errno.ENODEV):  # a socket or a driverless device
                kind = lstat_kind(path)
                message = _KIND_MESSAGES.get(kind, _KIND_MESSAGES["device"])
                raise NotRegularFileError(message) from None
            raise
        try:
            _refuse_unless_plain(os.fstat(fd), expected_dev)
            os.set_blocking(fd, True)  # F_GETFL, then F_SETFL without O_NONBLOCK
            return open(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def _load_renameat2() -> Callable[[bytes, bytes], int] | None:
    """libc's ``renameat2`` as ``f(src, dst) -> errno`` (0 on success), if libc has it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def call(src: bytes, dst: bytes) -> int:
        if b"\0" in src or b"\0" in dst:  # c_char_p would silently cut the path short
            raise ValueError("embedded null byte")
        if fn(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
            return 0
        return ctypes.get_errno()

    return call


# Module-level so tests can replace it (None forces the link/unlink fallback).
_renameat2: Callable[[bytes, bytes], int] | None = _load_renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Atomically rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists.

    Uses ``renameat2(RENAME_NOREPLACE)``. Where libc or the filesystem lacks it
    (no symbol, ENOSYS, EINVAL), falls back to ``link`` + ``unlink``, which
    also refuses an existing ``dst``. Symlinks are moved, never followed.
    Across filesystems the ``OSError`` (EXDEV) is raised as is: nothing is
    ever copied.
    """
    with _no_names():
        impl = _renameat2
        if impl is not None:
            err = impl(os.fsencode(src), os.fsencode(dst))
            if err == 0:
                return
            if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise OSError(err, os.strerror(err))
        # Fallback: link() never replaces an existing name. Not atomic: a crash
        # between the two calls leaves both names (one file with two links).
        os.link(src, dst, follow_symlinks=False)
        try:
            src.unlink()
        except BaseException:
            with contextlib.suppress(OSError):
                dst.unlink()  # undo, so the file is in exactly one place
            raise


def fsync(fd: int) -> None:
    """``os.fsync``, a wait for the disk: the gate is free meanwhile if the disk
    is slow (:meth:`daemon.gate.Gate.disk_wait`)."""
    with GATE.disk_wait():
        os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so renames into or out of it survive a power cut.

    Filesystems that cannot fsync a directory (EINVAL / ENOTSUP, e.g. some
    network mounts) are tolerated: there is nothing more we can do there.
    """
    with _no_names():
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        finally:
            os.close(fd)


def ensure_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` (and parents) if missing; refuse a symlink or a non-directory.

    An existing directory's mode is left alone (the admin may share it with
    staff). Raises :class:`ConfigError` (paths in its message are admin config,
    not PHI).
    """
    kind = lstat_kind(path)
    if kind == "symlink":
        raise ConfigError(f"{path} is a symbolic link; configure the real folder instead")
    if kind not in ("missing", "directory"):
        raise ConfigError(f"{path} exists but is not a folder")
    if kind == "missing":
        created = [p for p in (path, *path.parents) if not os.path.lexists(p)]
        try:
            path.mkdir(mode=mode, parents=True, exist_ok=True)
            for folder in reversed(created):  # a new folder's name is durable too
                fsync_dir(folder.parent)
        except OSError as exc:
            raise ConfigError(f"cannot create folder {path}: {exc.strerror}") from None
        if lstat_kind(path) != "directory":  # lost a race with something else
            raise ConfigError(f"{path} exists but is not a folder")


def set_mode(path: Path, mode: int, gid: int | None = None, *, directory: bool = False) -> bool:
    """Give the regular file (or, with ``directory``, the folder) at ``path`` itself
    ``mode`` and, if given, group ``gid``.

    Never through a symlink (``O_NOFOLLOW``; the opened descriptor is checked
    with ``fstat``), and never on a FIFO, socket or device: those, and a symlink,
    are left as they are. A folder keeps its setgid and sticky bits. Returns
    False if the kernel refused (a file owned by another user, a group this
    user is not in), True otherwise.
    """
    wanted = stat.S_ISDIR if directory else stat.S_ISREG
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if directory:
        flags |= os.O_DIRECTORY
    with _no_names():
        if not wanted(os.lstat(path).st_mode):
            return True
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                return False
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.ENODEV):
                return True  # swapped for a link or special file since the lstat: leave it
            raise
        try:
            st = os.fstat(fd)
            if not wanted(st.st_mode):
                return True
            kept = stat.S_IMODE(st.st_mode) & 0o7000 if directory else 0
            try:
                if gid is not None and st.st_gid != gid:
                    os.fchown(fd, -1, gid)
                if stat.S_IMODE(st.st_mode) != mode | kept:
                    try:  # a folder keeps its setgid/sticky bits (group inheritance)...
                        os.fchmod(fd, mode | kept)
                    except PermissionError:
                        if not kept:
                            raise
                        # ...unless setting a set-id bit is refused (the unit's
                        # RestrictSUIDSGID=): the folder keeps its group without it,
                        # and what chartdrop moves in keeps its own group.
                        os.fchmod(fd, mode)
            except OSError as exc:
                # EPERM: not ours / not our group; EINVAL: a gid this user namespace lacks
                if exc.errno in (errno.EPERM, errno.EACCES, errno.EINVAL):
                    return False
                raise
            return True
        finally:
            os.close(fd)


def ensure_private_dir(path: Path) -> None:
    """:func:`ensure_dir` with mode 0700, and an existing folder tightened to 0700.

    Raises :class:`ConfigError` if the folder lets others in and this user may
    not change that (it belongs to someone else).
    """
    ensure_dir(path, mode=0o700)
    if not set_mode(path, 0o700, directory=True):
        current = stat.S_IMODE(os.lstat(path).st_mode)
        if current & 0o077:
            raise ConfigError(
                f"{path} is open to other users ({current:#o}) and belongs to another user; "
                f"chown it to the chartdrop user and chmod 700 it"
            )


TEMP_PREFIX, TEMP_SUFFIX = ".chartdrop-", ".tmp"
_OWN_TEMP = re.compile(rf"{re.escape(TEMP_PREFIX)}[0-9a-f]{{16}}{re.escape(TEMP_SUFFIX)}")


def write_file_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a new file at ``path``, all or nothing, never overwriting.

    The data goes to a hidden temp name in the same folder (a dot name, so
    intake ignores it), is fsynced, renamed into place with
    :func:`rename_noreplace` (``FileExistsError`` if ``path`` exists), and the
    folder is fsynced. The file gets exactly ``mode`` (umask not applied).
    """
    tmp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}")
    with _no_names():
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
        )
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                fsync(fd)
            finally:
                os.close(fd)
            killpoint("mid_note")
            rename_noreplace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(path.parent)


READ_CHUNK = 64 * 1024
"""Bytes read at a time when a file is streamed (hashed, copied). Under glibc's
128 KB mmap threshold: a 1 MB read buffer was a fresh ``mmap`` for every read of
a 100 KB document (then shrunk with ``mremap``, or unmapped at the end of the
file), with its page faults and the ``munmap``'s interruption of the other core."""


def sha256_file(f: BinaryIO, chunk: int = READ_CHUNK) -> tuple[str, int]:
    """SHA-256 hex digest and size of the whole file, read in ``chunk``-sized pieces
    into one buffer (no allocation per read).

    Reads from the start regardless of the current position; leaves the
    position at the end.
    """
    digest = hashlib.sha256()
    size = 0
    f.seek(0)
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    while n := f.readinto(buffer):  # type: ignore[attr-defined]
        digest.update(view[:n])
        size += n
    return digest.hexdigest(), size


def remove_own_temps(folder: Path) -> int:
    """Remove the temp files :func:`write_file_atomic` left in ``folder`` when the
    process died between writing one and renaming it (start-up only: no write
    is in progress then). Only regular files with exactly its name pattern go;
    the folder is not searched below its top. Returns how many were removed."""
    removed = 0
    try:
        paths = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for path in paths:
        if not _OWN_TEMP.fullmatch(path.name) or lstat_kind(path) != "file":
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    if removed:
        fsync_dir(folder)
    return removed
