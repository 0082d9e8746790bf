"""daemon.fsutil against real files, links, FIFOs and sockets in temp folders."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import fsutil
from daemon.errors import ConfigError, NotRegularFileError

SECRET_NAME = "Bixby Timothy 2008-01-06.pdf"  # a PHI-looking name that must never leak


def _assert_no_phi(exc: BaseException, *paths: Path) -> None:
    text = str(exc)
    assert SECRET_NAME not in text
    for p in paths:
        assert str(p) not in text
        assert p.name not in text


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    p = tmp_path / SECRET_NAME
    p.write_bytes(b"%PDF-1.4\n%%EOF\n")
    return p


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    p = tmp_path / "pipe.pdf"
    os.mkfifo(p)
    return p


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    p = tmp_path / "s.pdf"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(p))
    except OSError:  # path too long for sun_path on some temp dirs
        s.close()
        pytest.skip("cannot bind a unix socket under tmp_path")
    yield p
    s.close()


@pytest.fixture(params=[True, False], ids=["lstat-precheck", "descriptor-only"])
def precheck(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run refusal tests twice: as shipped, and with the lstat pre-check disabled,
    which is what a file swapped after the pre-check looks like. The descriptor
    checks (O_NOFOLLOW, fstat) must refuse on their own."""
    if not request.param:
        monkeypatch.setattr(fsutil, "_precheck", lambda path, expected_dev: None)
    return bool(request.param)


# --------------------------------------------------------------------------- open_document


def test_open_document_reads_regular_file(doc: Path) -> None:
    with fsutil.open_document(doc) as f:
        assert f.read() == b"%PDF-1.4\n%%EOF\n"
        # O_NONBLOCK was cleared after the checks
        assert not fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK


def test_open_document_accepts_expected_dev(doc: Path) -> None:
    dev = doc.stat().st_dev
    with fsutil.open_document(doc, expected_dev=dev) as f:
        assert f.read(4) == b"%PDF"


def test_open_document_refuses_other_dev(doc: Path, precheck: bool) -> None:
    with pytest.raises(NotRegularFileError, match="different filesystem") as exc:
        fsutil.open_document(doc, expected_dev=doc.stat().st_dev + 1)
    _assert_no_phi(exc.value, doc)


def test_symlink_to_file_refused(tmp_path: Path, doc: Path, precheck: bool) -> None:
    link = tmp_path / "link.pdf"
    link.symlink_to(doc)
    with pytest.raises(NotRegularFileError, match="symbolic link") as exc:
        fsutil.open_document(link)
    _assert_no_phi(exc.value, doc, link)


def test_symlink_to_dir_refused(tmp_path: Path, precheck: bool) -> None:
    target = tmp_path / "d"
    target.mkdir()
    link = tmp_path / "dirlink"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(NotRegularFileError, match="symbolic link"):
        fsutil.open_document(link)


@pytest.mark.timeout(10)
def test_symlink_to_fifo_refused_without_opening_it(
    tmp_path: Path, fifo: Path, precheck: bool
) -> None:
    # Opening the FIFO's read end in blocking mode would hang (no writer):
    # the timeout marker turns that into a failure.
    link = tmp_path / "link-to-pipe.pdf"
    link.symlink_to(fifo)
    with pytest.raises(NotRegularFileError, match="symbolic link"):
        fsutil.open_document(link)


@pytest.mark.timeout(10)
def test_fifo_refused_without_blocking(fifo: Path, precheck: bool) -> None:
    with pytest.raises(NotRegularFileError, match="named pipe") as exc:
        fsutil.open_document(fifo)
    _assert_no_phi(exc.value, fifo)


def test_hard_linked_file_refused(tmp_path: Path, doc: Path, precheck: bool) -> None:
    other = tmp_path / "other-name.pdf"
    os.link(doc, other)
    for p in (doc, other):
        with pytest.raises(NotRegularFileError, match="hard links"):
            fsutil.open_document(p)
    other.unlink()
    with fsutil.open_document(doc) as f:  # one link again: fine
        assert f.read(4) == b"%PDF"


def test_directory_refused(tmp_path: Path, precheck: bool) -> None:
    d = tmp_path / "folder.pdf"
    d.mkdir()
    with pytest.raises(NotRegularFileError, match="folder"):
        fsutil.open_document(d)


def test_device_refused(precheck: bool) -> None:
    with pytest.raises(NotRegularFileError, match="device"):
        fsutil.open_document(Path("/dev/null"))


def test_socket_refused(unix_socket: Path, precheck: bool) -> None:
    with pytest.raises(NotRegularFileError, match="socket"):
        fsutil.open_document(unix_socket)


def test_missing_file_error_has_no_name(tmp_path: Path) -> None:
    missing = tmp_path / SECRET_NAME
    with pytest.raises(FileNotFoundError) as exc:
        fsutil.open_document(missing)
    assert exc.value.errno == errno.ENOENT
    assert exc.value.filename is None
    _assert_no_phi(exc.value, missing)


def test_no_descriptor_leaked_on_refusal(
    tmp_path: Path, doc: Path, fifo: Path, precheck: bool
) -> None:
    os.link(doc, tmp_path / "second")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        for p in (doc, fifo, tmp_path):
            with pytest.raises(NotRegularFileError):
                fsutil.open_document(p)
    assert len(os.listdir("/proc/self/fd")) == before


# --------------------------------------------------------------------------- lstat_kind


def test_lstat_kind(tmp_path: Path, doc: Path, fifo: Path, unix_socket: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(doc)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert fsutil.lstat_kind(doc) == "file"
    assert fsutil.lstat_kind(link) == "symlink"
    assert fsutil.lstat_kind(dangling) == "symlink"
    assert fsutil.lstat_kind(fifo) == "fifo"
    assert fsutil.lstat_kind(unix_socket) == "socket"
    assert fsutil.lstat_kind(Path("/dev/null")) == "device"
    assert fsutil.lstat_kind(tmp_path) == "directory"
    assert fsutil.lstat_kind(tmp_path / "missing") == "missing"
    assert fsutil.lstat_kind(doc / "under-a-file") == "missing"


# --------------------------------------------------------------------------- rename_noreplace


@pytest.fixture(params=["renameat2", "link-unlink"])
def rename_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "renameat2":
        if fsutil._renameat2 is None:
            pytest.skip("libc has no renameat2")
    else:
        monkeypatch.setattr(fsutil, "_renameat2", None)
    return str(request.param)


def test_rename_moves(tmp_path: Path, rename_impl: str) -> None:
    src, dst = tmp_path / "a.pdf", tmp_path / "sub" / "b.pdf"
    dst.parent.mkdir()
    src.write_bytes(b"A")
    fsutil.rename_noreplace(src, dst)
    assert not src.exists()
    assert dst.read_bytes() == b"A"
    assert dst.stat().st_nlink == 1


def test_rename_refuses_to_overwrite(tmp_path: Path, rename_impl: str) -> None:
    src, dst = tmp_path / SECRET_NAME, tmp_path / "b.pdf"
    src.write_bytes(b"A")
    dst.write_bytes(b"B")
    with pytest.raises(FileExistsError) as exc:
        fsutil.rename_noreplace(src, dst)
    _assert_no_phi(exc.value, src, dst)
    assert src.read_bytes() == b"A"
    assert dst.read_bytes() == b"B"
    assert src.stat().st_nlink == 1
    assert dst.stat().st_nlink == 1


def test_rename_refuses_to_overwrite_even_a_dangling_symlink(
    tmp_path: Path, rename_impl: str
) -> None:
    src, dst = tmp_path / "a.pdf", tmp_path / "b.pdf"
    src.write_bytes(b"A")
    dst.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        fsutil.rename_noreplace(src, dst)
    assert dst.is_symlink()
    assert src.read_bytes() == b"A"


def test_rename_moves_symlink_itself(tmp_path: Path, doc: Path, rename_impl: str) -> None:
    link, dst = tmp_path / "link", tmp_path / "moved-link"
    link.symlink_to(doc)
    fsutil.rename_noreplace(link, dst)
    assert dst.is_symlink()
    assert os.readlink(dst) == str(doc)
    assert doc.stat().st_nlink == 1  # the target was neither moved nor linked


def test_rename_missing_source(tmp_path: Path, rename_impl: str) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        fsutil.rename_noreplace(tmp_path / SECRET_NAME, tmp_path / "b")
    _assert_no_phi(exc.value, tmp_path)


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL])
def test_rename_falls_back_when_filesystem_lacks_renameat2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def unsupported(src: bytes, dst: bytes) -> int:
        calls.append((src, dst))
        return err

    monkeypatch.setattr(fsutil, "_renameat2", unsupported)
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"A")
    fsutil.rename_noreplace(src, dst)
    assert calls
    assert dst.read_bytes() == b"A"
    assert not src.exists()
    assert dst.stat().st_nlink == 1

    src.write_bytes(b"C")
    with pytest.raises(FileExistsError):
        fsutil.rename_noreplace(src, dst)
    assert (src.read_bytes(), dst.read_bytes()) == (b"C", b"A")


def test_rename_other_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsutil, "_renameat2", lambda src, dst: errno.EXDEV)
    src = tmp_path / "a"
    src.write_bytes(b"A")
    with pytest.raises(OSError) as exc:
        fsutil.rename_noreplace(src, tmp_path / "b")
    assert exc.value.errno == errno.EXDEV
    assert src.exists()  # no copy fallback across filesystems


def test_fsync_dir(tmp_path: Path, doc: Path) -> None:
    fsutil.fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError) as exc:
        fsutil.fsync_dir(doc)
    _assert_no_phi(exc.value, doc)


# --------------------------------------------------------------------------- ensure_dir


def test_ensure_dir_creates_parents_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    old = os.umask(0o022)
    try:
        fsutil.ensure_dir(target)
    finally:
        os.umask(old)
    assert target.is_dir()
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    fsutil.ensure_dir(target)  # idempotent


def test_ensure_dir_leaves_existing_mode(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o2775)
    fsutil.ensure_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o2775


def test_ensure_dir_refuses_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link") as exc:
        fsutil.ensure_dir(link)
    assert str(link) in str(exc.value)  # admin config: the path helps


def test_ensure_dir_refuses_file(doc: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        fsutil.ensure_dir(doc)


# --------------------------------------------------------------------------- write_file_atomic


def test_write_file_atomic(tmp_path: Path) -> None:
    target = tmp_path / "note.error.txt"
    old = os.umask(0o077)
    try:
        fsutil.write_file_atomic(target, b"hello\n", mode=0o640)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"hello\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # exact, umask not applied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.error.txt"]


def test_write_file_atomic_default_mode_0600(tmp_path: Path) -> None:
    target = tmp_path / "x"
    fsutil.write_file_atomic(target, b"")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == b""


def test_write_file_atomic_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / SECRET_NAME
    target.write_bytes(b"original")
    with pytest.raises(FileExistsError) as exc:
        fsutil.write_file_atomic(target, b"new")
    _assert_no_phi(exc.value, target)
    assert target.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_NAME]  # temp file cleaned up


def test_write_file_atomic_large(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    fsutil.write_file_atomic(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


# --------------------------------------------------------------------------- sha256_file


@pytest.mark.parametrize("chunk", [4096, fsutil.READ_CHUNK])
@pytest.mark.parametrize("size", [0, 1, 1000, fsutil.READ_CHUNK, (1 << 20) + 7])
def test_sha256_file(tmp_path: Path, size: int, chunk: int) -> None:
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    with fsutil.open_document(p) as f:
        f.read(3)  # position does not matter: the whole file is hashed
        assert fsutil.sha256_file(f, chunk=chunk) == (hashlib.sha256(data).hexdigest(), size)


def test_rename_fallback_undoes_link_when_unlink_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the old name cannot be removed, the new link is removed again:
    the file stays in exactly one place (root ignores permissions, so the
    failure is injected)."""
    monkeypatch.setattr(fsutil, "_renameat2", None)
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"A")
    real_unlink = Path.unlink

    def failing_unlink(self: Path, missing_ok: bool = False) -> None:
        if self == src:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", failing_unlink)
    with pytest.raises(PermissionError):
        fsutil.rename_noreplace(src, dst)
    assert src.read_bytes() == b"A"
    assert src.stat().st_nlink == 1
    assert not dst.exists()


def test_rename_rejects_embedded_nul(tmp_path: Path, rename_impl: str) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"A")
    with pytest.raises(ValueError):
        fsutil.rename_noreplace(src, tmp_path / "b\0c")
    assert src.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize("folder", ["/srv/inbox", "/", "relative/dir", Path("/srv/a b")])
def test_child_joins_like_pathlib(folder: str | Path) -> None:
    from daemon.fsutil import child

    assert child(folder, "scan 1.pdf") == str(Path(folder) / "scan 1.pdf")
