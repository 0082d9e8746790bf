"""The daemon: wires intake, the queue, the worker pool and the filer.

Threads: watchdog's observer (detects only), the main loop (intake ticks,
lease expiry, pending moves, observer health) and ``workers`` delivery
threads. SIGTERM stops taking work, lets in-flight sends finish within
``shutdown_grace_seconds`` and returns; anything still in flight then is
left leased and resent (same DocumentID) on the next start.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from daemon.breaker import Breakers
from daemon.config import Settings
from daemon.delivery import Deliverer
from daemon.errors import ConfigError
from daemon.fhir import FhirClient
from daemon.filing import Filer
from daemon.fsutil import ensure_dir
from daemon.intake import InboxEvents, Intake
from daemon.logs import get_logger
from daemon.outgoing import Sender
from daemon.queue import Queue
from daemon.redox import RedoxClient, make_http_client

TICK_SECONDS = 0.25
MOVE_RETRY_SECONDS = 30.0


def folder_problems(settings: Settings) -> list[str]:
    """Everything wrong with the folder layout, at once (admin-facing: paths are fine here)."""
    problems: list[str] = []
    devices: dict[int, list[str]] = {}
    for dest in settings.destination:
        for label, path in (("inbox", dest.inbox), ("done", dest.done), ("failed", dest.failed)):
            where = f"destination {dest.name!r} {label} ({path})"
            if path.is_symlink():
                problems.append(f"{where} is a symbolic link; point the config at the real folder")
            elif not path.is_dir():
                problems.append(f"{where} does not exist or is not a folder")
            elif not os.access(path, os.R_OK | os.W_OK | os.X_OK):
                problems.append(f"{where} is not readable and writable by this user")
            else:
                devices.setdefault(path.stat().st_dev, []).append(where)
        for label, path in (("done", dest.done), ("failed", dest.failed)):
            if (
                path.resolve() == dest.inbox.resolve()
                or dest.inbox.resolve() in path.resolve().parents
            ):
                problems.append(f"destination {dest.name!r} {label} must not be inside its inbox")
    state = settings.state_dir
    probe = state if state.exists() else state.parent
    if probe.exists():
        devices.setdefault(probe.stat().st_dev, []).append(f"state_dir ({state})")
    if len(devices) > 1:
        groups = "; ".join(", ".join(v) for v in devices.values())
        problems.append(
            "the inboxes, done/, failed/ and state_dir must be on one filesystem so files move "
            f"atomically (found several: {groups})"
        )
    return problems


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = get_logger()
        self.stopping = threading.Event()
        self.work = threading.Event()
        self._lock_file: IO[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._observer: BaseObserver | None = None
        self.queue: Queue | None = None
        self.intake: Intake | None = None

    # -- start-up ---------------------------------------------------------
    def _take_lock(self) -> None:
        path = self.settings.state_dir / "chartdrop.lock"
        fh = path.open("ab")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ConfigError(
                f"another chartdrop is already running with state_dir {self.settings.state_dir}"
            ) from None
        self._lock_file = fh

    def start(self) -> None:
        os.umask(0o077)
        problems = folder_problems(self.settings)
        if problems:
            raise ConfigError(problems)
        ensure_dir(self.settings.state_dir, mode=0o700)
        ensure_dir(self.settings.spool_dir, mode=0o700)
        self._take_lock()
        self.queue = Queue(self.settings.database_path)
        if not self.queue.integrity_ok():
            raise ConfigError(
                f"the database {self.settings.database_path} failed its integrity check; "
                "restore it from backup or move it aside (jobs in spool/ are kept)"
            )
        self.queue.clear_all_pauses()  # re-learnt by this run
        self.breakers = Breakers(self.queue)
        self.filer = Filer(self.settings, self.queue)
        self.deliverer = Deliverer(
            self.settings, self.queue, self.make_sender(self.settings), self.filer,
            breakers=self.breakers,
        )  # fmt: skip
        self.intake = Intake(
            self.settings, self.queue, on_queued=self.work.set, on_rejected=self.filer.finish_safely
        )
        reset = self.queue.reset_all_leases()
        recovered = self.intake.recover()
        moved = self.filer.finish_pending()
        self.log.info(
            "daemon.recovered",
            leases_reset=reset,
            intake_finished=recovered["finished"],
            intake_abandoned=recovered["abandoned"],
            moves_finished=moved,
        )
        self._start_observer()
        for i in range(self.settings.workers):
            t = threading.Thread(target=self._worker, name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self.log.info(
            "daemon.started",
            workers=self.settings.workers,
            destinations=[d.name for d in self.settings.destination],
        )

    @staticmethod
    def make_sender(settings: Settings) -> Sender:
        """The API clients for every destination model (one HTTP connection pool)."""
        http = make_http_client(settings)
        return Sender(settings, RedoxClient(settings.redox, http), FhirClient(settings.fhir, http))

    # -- loops ------------------------------------------------------------
    def _worker(self) -> None:
        assert self.queue is not None
        while not self.stopping.is_set():
            try:
                job = self.queue.claim(
                    lease_seconds=self.settings.lease_seconds,
                    exclude_destinations=self.breakers.blocked(),
                )
            except Exception as exc:  # noqa: BLE001 - a busy database must not kill a worker
                self.log.error("worker.claim_failed", exc_type=type(exc).__name__)
                self.stopping.wait(1.0)
                continue
            if job is None:
                self.work.wait(0.5)
                self.work.clear()
                continue
            try:
                self.deliverer.process(job)
            except Exception as exc:  # noqa: BLE001 - the lease expires and the job is retried
                self.log.error("worker.crashed_job", job_id=job.id, exc_type=type(exc).__name__)

    def tick(self) -> None:
        assert self.queue is not None and self.intake is not None
        self.intake.tick()
        if self.queue.expire_leases():
            self.work.set()

    def run(self, *, until: Callable[[], bool] | None = None) -> int:
        """Main loop until SIGTERM/SIGINT (or ``until()`` is true). Returns the exit code."""
        self._install_signals()
        last_moves = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.tick()
                if time.monotonic() - last_moves > MOVE_RETRY_SECONDS:
                    last_moves = time.monotonic()
                    self.filer.finish_pending()
                if self._observer is not None and not self._observer.is_alive():
                    self.log.error("daemon.observer_died")
                    self._start_observer()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; the rescan catches up
                self.log.error("daemon.tick_failed", exc_type=type(exc).__name__)
            if until is not None and until():
                break
            assert self.intake is not None
            self.intake.wake.wait(TICK_SECONDS)
            self.intake.wake.clear()
        return self.shutdown()

    def _start_observer(self) -> None:
        """The watcher only detects; the main loop checks it is alive and restarts it."""
        assert self.intake is not None
        observer = Observer()
        for dest in self.settings.destination:
            observer.schedule(InboxEvents(dest.name, self.intake.notify), str(dest.inbox))
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.stopping.set()
            if self.intake is not None:
                self.intake.wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def stop(self) -> None:
        self.stopping.set()
        if self.intake is not None:
            self.intake.wake.set()

    def shutdown(self) -> int:
        self.stopping.set()
        self.work.set()
        if self._observer is not None:
            self._observer.stop()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if self._observer is not None:
            self._observer.join(2.0)
        if busy:
            self.log.warning("daemon.stopped_with_inflight", count=len(busy))
        elif self.queue is not None:
            self.queue.close()
        if self._lock_file is not None:
            self._lock_file.close()
        self.log.info("daemon.stopped")
        return 0
