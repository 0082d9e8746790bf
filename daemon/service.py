"""The daemon: wires intake, the queue, the worker pool and the filer.

Threads: watchdog's observer (detects only), the main loop (intake ticks,
lease expiry, pending moves, observer health, systemd notifications) and
``workers`` delivery threads. SIGTERM stops taking work, lets in-flight sends
finish within ``shutdown_grace_seconds`` and returns; anything still in flight
then is left leased and resent (same DocumentID) on the next start.

Under systemd (``Type=notify``): ``READY=1`` once recovery is done and the
observer and workers run; ``STATUS=`` counts every few seconds; ``WATCHDOG=1``
from the main loop only while every heartbeat is fresh (:mod:`daemon.health`);
``STOPPING=1`` at shutdown. SIGHUP reloads the config file (:meth:`Service.reload`):
destinations are added, changed and removed without losing a queued job; a bad
file is refused with its problems logged and the running config kept.

Longer than ~400 lines because it is the wiring: start, the main loop, the
workers, signals, reload and shutdown share the service's state (queue,
senders, observers, health); the work itself is in the stage modules.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

import httpx
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserverVFS

from daemon.alerts import ALERT_CHECK_SECONDS, Alerts, start_alerts
from daemon.breaker import AUTH, Breakers
from daemon.config import Settings, load_settings
from daemon.delivery import Deliverer
from daemon.errors import ConfigError
from daemon.fhir import FhirClient
from daemon.filing import Filer
from daemon.fsutil import ensure_private_dir, remove_own_temps
from daemon.gate import GATE
from daemon.health import Health, ObserverCheck, allowance_for
from daemon.http import http_client, make_http_client
from daemon.inbox_lock import lock_inbox
from daemon.intake import WATCHED_EVENTS, InboxEvents, Intake, unhold_moves
from daemon.logs import get_logger, where
from daemon.metrics import Metrics, start_metrics
from daemon.notify import Notifier
from daemon.outgoing import Sender
from daemon.payload import REDOX_MODELS
from daemon.queue import Job, Queue
from daemon.queue_schema import file_intact
from daemon.reconcile import reconcile_spool
from daemon.redox import RedoxClient
from daemon.reloading import secret_fingerprints, write_result
from daemon.retention import Retention
from daemon.slots import THREADS_PER_SLOT
from daemon.wakeup import Wakeup

TICK_SECONDS = 0.25  # after a failed tick, the next one comes this soon
# With nothing due, the main loop sleeps until its next timed duty (lease check,
# watchdog ping, STATUS= line), at most this long; inbox events, signals, a
# reload and stop wake it at once (intake.wake).
QUIET_MAX_SECONDS = 1.0
# Idle workers: the one holding the poll token claims every IDLE_POLL_SECONDS (jobs
# coming out of backoff, a pause that ended); the others wait for an announced job
# (daemon.wakeup), claiming only every IDLE_SPARE_SECONDS as a safety net.
IDLE_POLL_SECONDS = 0.5
IDLE_SPARE_SECONDS = 5.0
# The main loop wakes this long after intake's next due time, not at it: a batch
# dropped together is stat-ed one name at a time (in no particular order), so
# its settle windows end microseconds apart; waking at the first would take
# that one alone, ahead of older ones (the drain-order defect, tests/test_outage.py).
DUE_SLACK_SECONDS = 0.02
LEASE_CHECK_SECONDS = 1.0  # how often the main loop requeues expired leases (900 s each)
MOVE_RETRY_SECONDS = 30.0
STATUS_SECONDS = 5.0  # how often systemd's STATUS= line is refreshed
RESTART_ONLY_KEYS = ("log_format", "log_level")  # a reload logs that these wait for a restart
POLL_SECONDS = 1.0  # listing interval of a `polling = true` inbox
WATCHDOG_INOTIFY_LOGGER = "watchdog.observers.inotify_c"


class _EventsLost(logging.Handler):
    """watchdog (7.x) handles an inotify queue overflow (IN_Q_OVERFLOW) itself and
    delivers nothing to event handlers; it only logs a warning ("Inotify queue
    overflowed; filesystem events were lost"). That warning is the one signal we
    get, so it triggers a rescan of every inbox. The periodic rescan would find
    the files anyway, only later."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.on_lost = on_lost

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.on_lost()


def load_models(settings: Settings) -> None:
    """Import the Redox models the configured destinations validate against now,
    not on a worker's first document (each is a large import); the others never."""
    models = {d.model for d in settings.destination}
    for key in REDOX_MODELS:
        if key[0] in models:
            REDOX_MODELS.get(key)


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
    problems.extend(_shared_folder_problems(settings))
    spool = settings.spool_dir  # the database may live elsewhere: nothing is renamed there
    probe = spool
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    devices.setdefault(probe.stat().st_dev, []).append(f"spool_dir ({spool})")
    if len(devices) > 1:
        groups = "; ".join(", ".join(v) for v in devices.values())
        problems.append(
            "the inboxes, done/, failed/ and spool_dir must be on one filesystem so files move "
            f"atomically (found several: {groups})"
        )
    elif devices:
        problems.extend(_mount_problems([probe, *_folders(settings)]))
    return problems


def _shared_folder_problems(settings: Settings) -> list[str]:
    """One destination's done/ or failed/ being (or inside) another's inbox would
    ingest its documents again and send them elsewhere; two destinations sharing
    an inbox would race for every document (issue 12, item 9)."""
    problems: list[str] = []
    dests = settings.destination
    for dest in dests:
        inbox = dest.inbox.resolve()
        for other in dests:
            if other is dest:
                continue
            if other.inbox.resolve() == inbox and dests.index(other) > dests.index(dest):
                problems.append(
                    f"destinations {dest.name!r} and {other.name!r} share the inbox ({inbox}); "
                    "give each destination its own inbox"
                )
            for label, path in (("done", other.done), ("failed", other.failed)):
                resolved = path.resolve()
                if resolved == inbox or inbox in resolved.parents:
                    problems.append(
                        f"destination {other.name!r} {label} ({path}) must not be inside "
                        f"destination {dest.name!r}'s inbox: its documents would be sent again"
                    )
    return problems


def _folders(settings: Settings) -> list[Path]:
    return [p for d in settings.destination for p in (d.inbox, d.done, d.failed) if p.is_dir()]


def _mount_points() -> list[tuple[str, str]]:
    """(mount point, mount id) of this process's mounts, longest first; [] if unknown."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].encode().decode("unicode_escape")  # \040 for a space
            mounts.append((point, fields[0]))
    return sorted(mounts, key=lambda m: len(m[0]), reverse=True)


def _mount_problems(paths: list[Path]) -> list[str]:
    """rename() cannot cross mounts, even on one filesystem: a bind mount (systemd's
    ReadWritePaths= and StateDirectory= under ProtectSystem=strict make one each)
    splits the tree. One line naming the mounts found."""
    mounts = _mount_points()
    found: dict[str, str] = {}
    for path in paths:
        resolved = str(path.resolve())
        for point, mount_id in mounts:
            if resolved == point or resolved.startswith(point.rstrip("/") + "/"):
                found.setdefault(mount_id, point)
                break
    if len(found) <= 1:
        return []
    return [
        "the inboxes, done/, failed/ and spool_dir must be under one mount so files move by "
        f"rename (found mounts at {', '.join(sorted(found.values()))}); under systemd put "
        "them all below one ReadWritePaths= folder"
    ]


def _client_inputs(settings: Settings) -> tuple[object, ...]:
    """What the API clients are built from: a reload rebuilds them only if these change."""
    return (
        settings.redox,
        settings.fhir,
        settings.connect_timeout_seconds,
        settings.read_timeout_seconds,
        settings.write_timeout_seconds,
        settings.pool_timeout_seconds,
        secret_fingerprints(settings),  # a key file replaced under the same name
    )


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.log = get_logger()
        self.notifier = notifier if notifier is not None else Notifier()
        self.health = Health(allowance_for(settings))
        self.stopping = threading.Event()
        self.stop_signal = 0  # the signal that asked to stop (set by the handler, logged later)
        self.work = Wakeup()  # one idle worker per queued job (daemon.wakeup)
        self._poll_token = threading.Lock()  # held by the one idle worker that polls
        self._claim_lock = GATE.lock()  # a claim and its place in the send line (daemon.gate)
        # Jobs a worker has in hand: their leases are never expired from under it
        # (a live worker beats its heartbeat, or the watchdog restarts the daemon).
        self._in_hand: set[str] = set()
        self._in_hand_lock = threading.Lock()
        self.reload_requested = threading.Event()
        self._lock_file: IO[bytes] | None = None
        self._inbox_locks: dict[Path, IO[bytes]] = {}  # inbox -> its flock (daemon.inbox_lock)
        self._workers: dict[int, threading.Thread] = {}
        self._observers: list[BaseObserver] = []  # inotify, polling
        self._observer_checks = [ObserverCheck(stuck_after=self.health.allowance) for _ in "ip"]
        self._watches: dict[str, tuple[BaseObserver, ObservedWatch]] = {}
        self._events_lost = _EventsLost(self._on_events_lost)
        self._retired: list[Sender] = []
        self._stalled: list[str] = []
        self._next_ping = 0.0
        self._next_status = 0.0
        self._next_alerts = 0.0
        self._next_lease_check = 0.0
        self._client_inputs: tuple[object, ...] = ()  # what the running clients were built from
        self.queue: Queue | None = None
        self.intake: Intake | None = None
        self.metrics: Metrics | None = None
        self.alerts: Alerts | None = None

    # -- start-up ---------------------------------------------------------
    def _take_lock(self) -> None:
        path = self.settings.lock_path
        fh = path.open("ab")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ConfigError(
                f"another chartdrop is already running with state_dir {self.settings.state_dir}"
            ) from None
        self._lock_file = fh

    def _lock_inboxes(self, settings: Settings) -> None:
        """Lock every inbox of ``settings`` not locked yet; on any conflict, release
        the ones just taken and raise ConfigError naming every conflict."""
        taken: dict[Path, IO[bytes]] = {}
        problems: list[str] = []
        for dest in settings.destination:
            if dest.inbox in self._inbox_locks or dest.inbox in taken:
                continue
            try:
                taken[dest.inbox] = lock_inbox(dest.name, dest.inbox, settings.state_dir)
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            for fh in taken.values():
                fh.close()
            raise ConfigError(problems)
        self._inbox_locks.update(taken)

    def _release_inboxes(self, keep: Settings | None = None) -> None:
        """Release the locks of inboxes ``keep`` does not watch (None: all)."""
        wanted = {d.inbox for d in keep.destination} if keep is not None else set()
        for inbox in [i for i in self._inbox_locks if i not in wanted]:
            self._inbox_locks.pop(inbox).close()

    def _open_queue(self) -> Queue:
        """Refuse a damaged database before anything (migrations, lease resets)
        writes to it: SQLite's integrity check runs on the file first."""
        path = self.settings.database_path
        damaged = ConfigError(
            f"the database {path} failed its integrity check; "
            "restore it from backup or move it aside (jobs in spool/ are kept)"
        )
        if path.exists() and not file_intact(path):
            raise damaged
        try:
            return Queue(path)
        except sqlite3.DatabaseError:  # damaged in a way the check did not see
            raise damaged from None

    def start(self) -> None:
        os.umask(0o077)
        problems = folder_problems(self.settings)
        if problems:
            raise ConfigError(problems)
        load_models(self.settings)
        ensure_private_dir(self.settings.state_dir)
        ensure_private_dir(self.settings.spool_dir)
        self._take_lock()
        self._lock_inboxes(self.settings)
        self.queue = self._open_queue()
        self.queue.clear_all_pauses()  # re-learnt by this run
        self.breakers = Breakers(self.queue)
        self.filer = Filer(self.settings, self.queue)
        self.retention = Retention(self.settings, self.queue)
        self.deliverer = Deliverer(
            self.settings, self.queue, self._new_sender(self.settings), self.filer,
            breakers=self.breakers, beat=self.health.beat_here, stopping=self.stopping,
        )  # fmt: skip
        self.intake = Intake(
            self.settings,
            self.queue,
            on_queued=self.work.set,
            on_rejected=self.filer.finish_safely,
            on_folder=self._on_folder,
        )
        reset = self.queue.reset_all_leases()
        recovered = self.intake.recover()
        moved = self.filer.finish_pending()
        # a note's temp file a crash left half-way (after the notes above are written)
        temps = sum(remove_own_temps(dest.failed) for dest in self.settings.destination)
        orphans = reconcile_spool(self.settings, self.queue)  # issue 12 item 3: a lost -wal
        if orphans.requeued or orphans.failed or orphans.problems:
            self.log.warning(
                "spool.reconciled",
                requeued=orphans.requeued,
                moved_to_failed=orphans.failed,
                unknown_files=len(orphans.problems),
            )
        self.log.info(
            "daemon.recovered",
            leases_reset=reset,
            intake_finished=recovered["finished"],
            intake_abandoned=recovered["abandoned"],
            moves_finished=moved,
            temp_files_removed=temps,
        )
        self._report_unconfigured()
        self._start_observer()
        self._start_workers()
        self.metrics = start_metrics(self.settings, self.queue)  # [metrics], off by default
        self.alerts = start_alerts(self.settings, self.queue)  # [alerts] command, webhook_url
        self.log.info(
            "daemon.started",
            workers=self.settings.workers,
            destinations=[d.name for d in self.settings.destination],
        )

    @staticmethod
    def make_sender(settings: Settings) -> Sender:
        """The API clients for every destination model: one HTTP connection pool per
        TLS trust (Redox, FHIR, and each FHIR destination with its own ca_bundle)."""
        clients: list[httpx.Client] = []
        try:
            clients.append(redox_http := make_http_client(settings))
            clients.append(fhir_http := http_client(settings, settings.fhir.ca_bundle))
            dest_http = {}
            for dest in settings.destination:
                if dest.model == "FHIR" and dest.ca_bundle is not None:
                    dest_http[dest.name] = http_client(settings, dest.ca_bundle)
                    clients.append(dest_http[dest.name])
            return Sender(
                settings,
                RedoxClient(settings.redox, redox_http),
                FhirClient(settings.fhir, fhir_http, dest_http),
            )
        except BaseException:
            for client in clients:
                client.close()
            raise

    def _new_sender(self, settings: Settings) -> Sender:
        """The daemon's clients (start and reload): every step of their HTTP requests
        beats the calling worker's heartbeat (:mod:`daemon.health`)."""
        inputs = _client_inputs(settings)  # before the files are read: a later change is seen
        sender = self.make_sender(settings)
        for client in sender.http_clients():
            self.health.watch_http(client)
        self._client_inputs = inputs
        return sender

    def _threads(self) -> int:
        """Delivery threads: ``THREADS_PER_SLOT`` per send slot (``workers``), so one
        prepares a document while another's is at the peer (:mod:`daemon.slots`)."""
        return THREADS_PER_SLOT * self.settings.workers

    def _start_workers(self) -> None:
        """Start the delivery threads the config asks for that are not running (start
        and reload)."""
        for i in range(self._threads()):
            running = self._workers.get(i)
            if running is None or not running.is_alive():
                t = threading.Thread(
                    target=self._worker, args=(i,), name=f"worker-{i}", daemon=True
                )
                t.start()
                self._workers[i] = t

    # -- loops ------------------------------------------------------------
    def _worker(self, index: int) -> None:
        assert self.queue is not None
        name = threading.current_thread().name
        polled = False  # the last wait ended on its timeout, not on an announced job
        try:
            # a reload that lowers ``workers`` ends the surplus after their current job
            while not self.stopping.is_set() and index < self._threads():
                self.health.beat(name)
                # A job's claim and its delivery are one unit of local work: the gate
                # is held, and freed at each of its waits (daemon.gate).
                with GATE.held():
                    try:
                        # The claim and the job's place in line for a send slot in one
                        # step: the line is the claim order (see daemon.slots).
                        with self._claim_lock:
                            job = self.queue.claim(
                                lease_seconds=self.settings.lease_seconds,
                                exclude_destinations=self.breakers.blocked(),
                            )
                            order = self.deliverer.slots.enlist() if job is not None else None
                    except Exception as exc:  # noqa: BLE001 - a busy database must not kill a worker
                        self.log.error(
                            "worker.claim_failed", exc_type=type(exc).__name__, frames=where(exc)
                        )
                        job = order = None
                        failed = True
                    else:
                        failed = False
                    if job is not None and order is not None:
                        polled = self._process(name, job, order, polled=polled)
                        continue
                if failed:
                    self.stopping.wait(1.0)
                else:
                    polled = not self._idle_wait()
        finally:
            self.health.forget(name)

    def _process(self, name: str, job: Job, order: int, *, polled: bool) -> bool:
        """Deliver a job the worker ``name`` claimed; returns the worker's new
        ``polled`` (False: it was the announced job, or it announced the next)."""
        with self._in_hand_lock:
            self._in_hand.add(job.id)
        try:
            self.work.take()  # this job's announcement: no other worker wakes for it
            if polled:  # nobody announced it (backoff ended, a pause lifted): more
                self.work.set()  # may be due, so another idle worker looks (or polls)
                polled = False
            self.health.beat(name)
            started = time.monotonic()
            self.deliverer.process(job, order=order)
            if self.metrics is not None:
                self.metrics.observe_send(job.destination, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - the lease expires and the job is retried
            self.log.error(
                "worker.crashed_job",
                job_id=job.id,
                exc_type=type(exc).__name__,
                frames=where(exc),
            )
        finally:
            self.deliverer.slots.withdraw(order)  # whatever happened: out of the line
            with self._in_hand_lock:
                self._in_hand.discard(job.id)  # (left leased by a crash: it expires)
        return polled

    def _idle_wait(self) -> bool:
        """An idle worker's wait: True if woken (an announced job, shutdown, reload),
        False on its timeout. One idle worker at a time polls (IDLE_POLL_SECONDS);
        the rest sleep longer, still within the health allowance between beats."""
        polling = self._poll_token.acquire(blocking=False)
        try:
            if polling:
                return self.work.wait(IDLE_POLL_SECONDS)
            return self.work.wait(min(IDLE_SPARE_SECONDS, self.health.allowance / 2))
        finally:
            if polling:
                self._poll_token.release()

    def _quiet(self) -> float:
        """How long the main loop may sleep if intake has nothing due sooner."""
        now = time.monotonic()
        duties = [self._next_lease_check]
        if self.notifier.watchdog_interval is not None:
            duties.append(self._next_ping)  # not advanced while unhealthy: then skipped
        if self.notifier.enabled:
            duties.append(self._next_status)
        return min([QUIET_MAX_SECONDS, *(at - now for at in duties if at > now)])

    def tick(self) -> float:
        """One slice of the main loop's work; returns the seconds until intake has
        something due (0 if it left ready documents for the next slice)."""
        assert self.queue is not None and self.intake is not None
        with GATE.held():  # local work, one thread at a time (daemon.gate)
            due = self.intake.tick()
            now = time.monotonic()
            if now >= self._next_lease_check:  # a write transaction: not on every tick
                self._next_lease_check = now + LEASE_CHECK_SECONDS
                with self._in_hand_lock:
                    in_hand = list(self._in_hand)
                if self.queue.expire_leases(keep=in_hand):
                    self.work.set()
        return due

    def run(self, *, until: Callable[[], bool] | None = None) -> int:
        """Main loop until SIGTERM/SIGINT (or ``until()`` is true). Returns the exit code."""
        self._install_signals()
        self.notifier.ready(self.status_text())
        last_moves = time.monotonic()
        while not self.stopping.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            due = TICK_SECONDS
            try:
                due = self.tick()
                self.retention.maybe_run()  # at start-up, then daily
                if time.monotonic() - last_moves > MOVE_RETRY_SECONDS:
                    last_moves = time.monotonic()
                    self.filer.finish_pending()
                self._check_observer()
                if self.alerts is not None and time.monotonic() >= self._next_alerts:
                    self._next_alerts = time.monotonic() + ALERT_CHECK_SECONDS
                    self.alerts.check()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; the rescan catches up
                self.log.error("daemon.tick_failed", exc_type=type(exc).__name__, frames=where(exc))
            self._tell_systemd()
            if until is not None and until():
                break
            assert self.intake is not None
            # Intake's work comes in bounded slices: the watchdog is pinged between
            # them, and a backlog's next slice starts at once.
            self.intake.wake.wait(min(due + DUE_SLACK_SECONDS if due else 0.0, self._quiet()))
            self.intake.wake.clear()
        return self.shutdown()

    def _start_observer(self) -> None:
        """The watcher only detects; the main loop checks it is alive and restarts it.

        One inotify observer for the local inboxes, one polling observer (links
        never followed) for those with ``polling = true``.
        """
        unhold_moves()
        inotify: BaseObserver = Observer()
        polling = PollingObserverVFS(os.lstat, os.scandir, polling_interval=POLL_SECONDS)
        self._observers = [inotify, polling]
        for dest in self.settings.destination:
            self._watch(dest.name)
        for observer in self._observers:
            observer.daemon = True
            observer.start()
        watchdog_log = logging.getLogger(WATCHDOG_INOTIFY_LOGGER)
        if watchdog_log.level == logging.NOTSET:
            watchdog_log.setLevel(logging.WARNING)
        watchdog_log.addHandler(self._events_lost)

    def _watch(self, dest_name: str) -> None:
        """(Re)schedule one inbox; a missing inbox is skipped (intake pauses it and
        :meth:`_on_folder` schedules it again when it is back)."""
        assert self.intake is not None
        old = self._watches.pop(dest_name, None)
        if old is not None:
            with contextlib.suppress(KeyError):  # already gone with its emitter
                old[0].unschedule(old[1])
        dest = self.settings.get_destination(dest_name)
        observer = self._observers[1 if dest.polling else 0]
        try:
            watch = observer.schedule(
                InboxEvents(dest_name, self.intake.notify),
                str(dest.inbox),
                event_filter=WATCHED_EVENTS,  # no inotify opens/closes of our own reads
            )
        except OSError as exc:
            self.log.warning("daemon.watch_failed", destination=dest_name, error=exc.strerror)
            return
        self._watches[dest_name] = (observer, watch)

    def _on_folder(self, dest_name: str, problem: str | None) -> None:
        """An inbox came back (maybe as a new folder): watch it afresh."""
        if problem is None and self._observers:
            self._watch(dest_name)

    def _on_events_lost(self) -> None:
        self.log.warning("intake.events_lost")
        if self.intake is not None:
            self.intake.rescan_all()

    def _stop_observers(self) -> None:
        logging.getLogger(WATCHDOG_INOTIFY_LOGGER).removeHandler(self._events_lost)
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(2.0)
        self._watches.clear()

    def _check_observer(self) -> None:
        """Restart a dead observer; beat the heartbeat while both are alive and dispatching."""
        if not self._observers:
            return
        if any(not observer.is_alive() for observer in self._observers):
            self.log.error("daemon.observer_died")
            self._restart_observer()
        checks = zip(self._observer_checks, self._observers, strict=True)
        if all(check.healthy(observer) for check, observer in checks):
            self.health.beat("observer")

    # -- systemd ----------------------------------------------------------
    def status_text(self) -> str:
        """systemd's STATUS= line: counts only, never a name."""
        if self.queue is None:
            return "starting"
        totals = self.queue.status().values()
        queued = sum(s.queued + s.retrying for s in totals)
        in_flight = sum(s.in_flight for s in totals)
        failed = sum(s.failed for s in totals)
        text = f"{queued} queued, {in_flight} in flight, {failed} failed"
        if self._stalled:
            text += f"; not responding: {', '.join(self._stalled)}"
        return text

    def _tell_systemd(self) -> None:
        """Watchdog pings while every heartbeat is fresh; STATUS= every few seconds."""
        now = time.monotonic()
        stalled = self.health.stalled()
        if stalled != self._stalled:
            if stalled:
                self.log.error("daemon.unhealthy", stalled=stalled)
            else:
                self.log.info("daemon.healthy")
            self._stalled = stalled
            self._next_status = 0.0
        interval = self.notifier.watchdog_interval
        if interval is not None and not stalled and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + interval / 2
        if self.notifier.enabled and now >= self._next_status:
            self._next_status = now + STATUS_SECONDS
            try:
                self.notifier.status(self.status_text())
            except Exception as exc:  # noqa: BLE001 - a busy database only delays the status line
                self.log.warning("daemon.status_failed", exc_type=type(exc).__name__)

    # -- reload (SIGHUP) --------------------------------------------------
    def reload(self) -> bool:
        """Reload the config file; keep the running config if the new one is bad."""
        self.notifier.reloading()
        try:
            new, sender = self._prepare_reload()
        except ConfigError as exc:
            self.log.error("daemon.reload_refused", problems=exc.problems)
            self._answer_reload(ok=False, problems=exc.problems)
            self.notifier.ready(self.status_text())
            return False
        old = self.settings
        added, changed, removed = _destination_changes(old, new)
        self._apply_settings(new, sender)
        self._release_inboxes(keep=new)
        for name in removed:  # no pause outlives its destination (status would show it)
            self.breakers.forget(name)
        if added or changed or removed:
            self._restart_observer()
        self._start_workers()
        restart_only = [k for k in RESTART_ONLY_KEYS if getattr(old, k) != getattr(new, k)]
        self.log.info(
            "daemon.reloaded",
            added=added,
            changed=changed,
            removed=removed,
            workers=new.workers,
            client_rebuilt=sender is not None,
            needs_restart=restart_only or None,
        )
        self._report_unconfigured()
        if sender is not None and self.queue is not None:  # new credentials: retry auth now
            for pause in [p for p in self.queue.pauses() if p.kind == AUTH]:
                self.breakers.forget(pause.destination)
                self.queue.make_due(pause.destination)
        self._answer_reload(ok=True, problems=[])
        self.work.wake_all()
        self.notifier.ready(self.status_text())
        return True

    def _answer_reload(self, *, ok: bool, problems: list[str]) -> None:
        """For `chartdrop reload` (ExecReload=), which waits for this answer."""
        try:
            write_result(self.settings.state_dir, ok=ok, problems=problems)
        except OSError as exc:
            self.log.error("daemon.reload_answer_failed", exc_type=type(exc).__name__)

    def _prepare_reload(self) -> tuple[Settings, Sender | None]:
        """Load and check the new file; build new API clients if their inputs changed.
        Raises ConfigError (every problem) and changes nothing."""
        if self.config_path is None:
            raise ConfigError("the daemon was started without a config file; nothing to reload")
        new = load_settings(self.config_path)
        problems = folder_problems(new)
        if (new.state_dir, new.spool_dir) != (self.settings.state_dir, self.settings.spool_dir):
            problems.append("state_dir and spool_dir cannot change while running; restart")
        if problems:
            raise ConfigError(problems)
        self._lock_inboxes(new)  # the new inboxes; old ones are released once applied
        if _client_inputs(new) == self._client_inputs:
            return new, None
        return new, self._new_sender(new)

    def _apply_settings(self, new: Settings, sender: Sender | None) -> None:
        """Swap the settings (and API clients) in every stage. Jobs stay where they are:
        a removed destination's jobs stay queued (Deliverer retries them) and
        finish if it comes back."""
        assert self.intake is not None
        load_models(new)
        self.settings = new
        self.health.allowance = allowance_for(new)
        for check in self._observer_checks:
            check.stuck_after = self.health.allowance
        self.filer.settings = new
        self.retention.settings = new
        self.deliverer.settings = new
        self.deliverer.slots.resize(new.workers)
        if sender is not None:
            self._retired.append(self.deliverer.sender)  # in-flight sends may still use it
            self.deliverer.sender = sender
        else:
            self.deliverer.sender.settings = new
        self.intake.reconfigure(new)

    def _restart_observer(self) -> None:
        self._stop_observers()
        self._start_observer()

    def _report_unconfigured(self) -> None:
        """Jobs still waiting for a destination the config no longer has (no names, counts)."""
        assert self.queue is not None
        configured = {d.name for d in self.settings.destination}
        for name, s in self.queue.status().items():
            waiting = s.queued + s.retrying + s.in_flight + s.awaiting_move
            if name not in configured and waiting:
                self.log.warning(
                    "daemon.destination_not_configured", destination=name, count=waiting
                )

    # -- signals and shutdown --------------------------------------------
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        # Handlers only set flags: one that logged could interrupt this thread in the
        # middle of writing a log line and wait forever for the lock it holds itself.
        # The loop (or shutdown) logs ``daemon.stopping`` with the signal's name.
        def handler(signum: int, _frame: FrameType | None) -> None:
            self.stop_signal = self.stop_signal or signum
            self.stopping.set()
            if self.intake is not None:
                self.intake.wake.set()

        def reload_handler(_signum: int, _frame: FrameType | None) -> None:
            self.reload_requested.set()
            if self.intake is not None:
                self.intake.wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, reload_handler)

    def install_signals(self) -> None:
        """From now on SIGTERM/SIGINT stop the daemon gracefully (and SIGHUP asks
        for a reload). ``chartdrop run`` calls this before :meth:`start`, so a stop
        during start-up recovery also ends in a clean exit 0 (:meth:`run` installs
        them too)."""
        self._install_signals()

    def stop(self) -> None:
        self.stopping.set()
        if self.intake is not None:
            self.intake.wake.set()

    def shutdown(self) -> int:
        if self.stop_signal:
            self.log.info("daemon.stopping", signal=signal.Signals(self.stop_signal).name)
        self.stopping.set()
        self.work.wake_all()
        if self.deliverer is not None:
            self.deliverer.slots.wake_all()  # a thread waiting to send gives its job back
            self.deliverer.in_flight.wake_all()
        self.notifier.stopping("stopping: finishing in-flight sends")
        self._stop_observers()
        if self.metrics is not None:
            self.metrics.close()
        if self.alerts is not None:
            self.alerts.close()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        for t in self._workers.values():
            t.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._workers.values() if t.is_alive()]
        if busy:
            self.log.warning("daemon.stopped_with_inflight", count=len(busy))
        else:
            senders = [*self._retired]
            if self.deliverer is not None:
                senders.append(self.deliverer.sender)
            for sender in senders:
                for client in sender.http_clients():
                    client.close()
            if self.queue is not None:
                self.queue.close()
        self._release_inboxes()
        if self._lock_file is not None:
            self._lock_file.close()
        self.log.info("daemon.stopped")
        self.notifier.close()
        return 0


def _destination_changes(old: Settings, new: Settings) -> tuple[list[str], list[str], list[str]]:
    before = {d.name: d for d in old.destination}
    after = {d.name: d for d in new.destination}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])
    return added, changed, removed
