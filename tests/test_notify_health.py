"""sd_notify over real AF_UNIX datagram sockets, the heartbeats (with an
injectable clock) over a real HTTP upload and a real watchdog observer, and
SIGHUP-style reloads of the in-process daemon."""

from __future__ import annotations

import io
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Sandbox, running, wait_until, write_config
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.config import load_settings
from daemon.health import Health, ObserverCheck, allowance_for
from daemon.http import make_http_client
from daemon.notify import Notifier, socket_address, watchdog_seconds
from daemon.redox import RedoxClient
from daemon.service import Service
from daemon.slots import THREADS_PER_SLOT


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_notify_sends_one_datagram_of_assignments_to_a_path(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("3 queued, 0 in flight, 0 failed")
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 queued, 0 in flight, 0 failed"
    assert notifier.status("two\nlines")
    assert sock.recv(4096) == b"STATUS=two lines"  # a newline would start a new assignment
    assert notifier.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.reloading()
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].split("=")[1]) > 0
    assert notifier.stopping("stopping")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    notifier.close()


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"chartdrop-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready("ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
        notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog()
    assert notifier.watchdog_interval is None
    assert socket_address("") is None and socket_address("relative/path") is None
    assert socket_address("@") is None
    assert socket_address("@abc") == b"\0abc"


def test_a_missing_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    try:
        assert notifier.ready("x") is False
        assert notifier.watchdog() is False
    finally:
        notifier.close()


def test_watchdog_interval_is_for_this_process_only() -> None:
    pid = 4242
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, pid) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}, pid) is None
    assert watchdog_seconds({}, pid) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


def test_heartbeats_go_stale_after_their_allowance() -> None:
    clock = Clock()
    health = Health(allowance=10, clock=clock)
    health.beat("worker-0")
    health.beat("worker-1")
    clock.now += 9
    health.beat("worker-1")
    assert health.stalled() == []
    clock.now += 2
    assert health.stalled() == ["worker-0"]
    health.forget("worker-0")
    assert health.stalled() == []


def test_only_registered_threads_beat_from_http_steps() -> None:
    clock = Clock()
    health = Health(allowance=10, clock=clock)
    health.beat_here()  # this thread has no heartbeat: nothing is created
    assert health.stalled() == []
    clock.now += 100
    assert health.stalled() == []


def test_every_step_of_a_real_upload_beats_the_worker(tmp_path: Path, sandbox: Sandbox) -> None:
    """A 4 MB upload is sent in 64 KiB chunks, each bounded by the write timeout:
    each one beats, so a slow but moving upload never looks wedged."""
    settings = load_settings(write_config(tmp_path, sandbox))
    clock = Clock()
    health = Health(allowance=allowance_for(settings), clock=clock)
    http = make_http_client(settings)
    health.watch_http(http)
    client = RedoxClient(settings.redox, http)
    health.beat(threading.current_thread().name)
    before = clock.calls
    try:
        uri = client.upload(
            io.BytesIO(b"x" * 4_000_000), upload_name="a.pdf", mime="application/pdf"
        )
    finally:
        http.close()
    assert uri
    assert clock.calls - before >= 4_000_000 // 65536  # at least one beat per chunk


def test_observer_check_sees_a_blocked_handler(tmp_path: Path) -> None:
    release = threading.Event()
    entered = threading.Event()

    class Blocking(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            entered.set()
            release.wait(20)

    clock = Clock()
    check = ObserverCheck(stuck_after=30, clock=clock)
    observer = Observer()
    observer.schedule(Blocking(), str(tmp_path))
    observer.daemon = True
    observer.start()
    try:
        assert check.healthy(observer)
        (tmp_path / "a").write_text("a")
        entered.wait(10)
        (tmp_path / "b").write_text("b")
        wait_until(lambda: observer.event_queue.qsize() > 0)
        assert check.healthy(observer)  # queued events: fine for a while
        clock.now += 29
        assert check.healthy(observer)
        clock.now += 2
        assert not check.healthy(observer)  # the same event has waited too long
        release.set()
        wait_until(lambda: check.healthy(observer))
    finally:
        release.set()
        observer.stop()
        observer.join(5)
    assert not check.healthy(observer)  # a stopped observer is not healthy


def test_reload_changes_workers_and_refuses_a_new_state_dir(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """reload() as the main loop calls it (here: this thread, as run() is not running)."""
    config = write_config(tmp_path, sandbox)

    def workers() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("worker-")}

    def threads(n: int) -> set[str]:  # THREADS_PER_SLOT delivery threads per send slot
        return {f"worker-{i}" for i in range(THREADS_PER_SLOT * n)}

    service = Service(load_settings(config), config_path=config)
    service.start()
    try:
        assert workers() == threads(2) and service.deliverer.slots.limit == 2
        config.write_text(config.read_text().replace("workers = 2", "workers = 3"))
        assert service.reload()
        assert workers() == threads(3) and service.deliverer.slots.limit == 3
        config.write_text(config.read_text().replace("workers = 3", "workers = 1"))
        assert service.reload()
        wait_until(lambda: workers() == threads(1))
        assert service.deliverer.slots.limit == 1
        text = config.read_text()
        config.write_text(text.replace('state_dir = "state"', 'state_dir = "elsewhere"'))
        assert service.reload() is False
        assert service.settings.state_dir == tmp_path / "state"
        config.write_text(text.replace('inbox = "consents/inbox"', 'inbox = "nowhere"'))
        assert service.reload() is False
        assert service.settings.destination[0].inbox == tmp_path / "consents" / "inbox"
        config.unlink()
        assert service.reload() is False
        assert service.settings.workers == 1
    finally:
        service.shutdown()


def test_reload_without_a_config_file_is_refused(tmp_path: Path, sandbox: Sandbox) -> None:
    with running(write_config(tmp_path, sandbox)) as r:
        assert r.service.config_path is None
        assert r.service.reload() is False
