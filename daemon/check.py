"""What an admin's monitoring needs to know, in one snapshot: ``chartdrop status``
(plain and ``--json``) and ``chartdrop status --check``, a monitoring-plugin
result in the Nagios/Icinga/monit convention::

    0 OK        everything flows
    1 WARNING   a pause or a backlog past its ``_warning_`` threshold, a document
                in failed/ within ``failed_window_hours``, jobs of a removed destination
    2 CRITICAL  the daemon is not running (nobody holds state_dir's lock), or a
                pause or backlog past its ``_critical_`` threshold
    3 UNKNOWN   the config or the database cannot be read

One summary line, then ``|`` and perfdata (``queued=3 oldest_waiting_s=12;1800;7200``).
Nothing here names a document or a patient: destinations, counts and ages only.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field

from daemon.config import Destination, Settings
from daemon.inboxes import daemon_running
from daemon.names import ERROR_NOTE_SUFFIX, is_junk, is_sidecar, sidecar_candidates
from daemon.queue import DestinationStatus, Pause, Queue

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
DAY = 24 * 3600.0


@dataclass
class Snapshot:
    """Everything ``status`` shows, read once."""

    running: bool
    now: float
    status: dict[str, DestinationStatus]
    pauses: list[Pause]
    failed_24h: dict[str, int]
    failed_window: dict[str, int]
    in_failed_folder: dict[str, int | None]  # None: the folder could not be read
    awaiting_sidecar: dict[str, int | None]
    unconfigured: dict[str, int] = field(default_factory=dict)  # removed destination -> jobs


def waiting(s: DestinationStatus) -> int:
    return s.queued + s.retrying + s.in_flight + s.awaiting_move


def count_notes(folder: os.PathLike[str] | str) -> int | None:
    """Documents currently in a failed/ folder: its ``.error.txt`` notes (one each)."""
    try:
        with os.scandir(folder) as it:
            return sum(
                1
                for e in it
                if e.name.endswith(ERROR_NOTE_SUFFIX) and e.is_file(follow_symlinks=False)
            )
    except OSError:
        return None


def count_awaiting_sidecar(dest: Destination) -> int | None:
    """Documents in the inbox with no sidecar beside them (and no file-name pattern
    that stands in for one). Links and special files are not counted (never read)."""
    try:
        with os.scandir(dest.inbox) as it:
            entries = [e for e in it if not is_junk(e.name)]
    except OSError:
        return None
    names = {e.name for e in entries}
    pattern = re.compile(dest.filename_pattern) if dest.filename_pattern else None
    count = 0
    for e in entries:
        try:
            if is_sidecar(e.name) or not stat.S_ISREG(e.stat(follow_symlinks=False).st_mode):
                continue
        except OSError:
            continue
        if any(c in names for c in sidecar_candidates(e.name)):
            continue
        if pattern is not None and pattern.fullmatch(e.name):
            continue
        count += 1
    return count


def can_tell_if_running(settings: Settings) -> bool:
    """False when this user may not open the state directory's lock (e.g. a monitoring
    agent that is not ``chartdrop``): "not running" would then be a guess."""
    try:
        fd = os.open(settings.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError:
        return False
    except OSError:
        return True  # no lock file: no daemon ever ran here, or it is gone
    os.close(fd)
    return True


def take_snapshot(settings: Settings, queue: Queue | None, *, now: float | None = None) -> Snapshot:
    """Read the queue (``None``: no database yet) and the folders."""
    now = time.time() if now is None else now
    status = queue.status(now=now) if queue is not None else {}
    window = settings.alerts.failed_window_hours * 3600
    configured = {d.name for d in settings.destination}
    return Snapshot(
        running=daemon_running(settings.state_dir),
        now=now,
        status=status,
        pauses=queue.pauses() if queue is not None else [],
        failed_24h=queue.failed_since(now - DAY) if queue is not None else {},
        failed_window=queue.failed_since(now - window) if queue is not None else {},
        in_failed_folder={d.name: count_notes(d.failed) for d in settings.destination},
        awaiting_sidecar={d.name: count_awaiting_sidecar(d) for d in settings.destination},
        unconfigured={
            name: waiting(s)
            for name, s in status.items()
            if name not in configured and waiting(s) > 0
        },
    )


def _minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class CheckResult:
    code: int
    problems: list[tuple[int, str]]
    perfdata: list[str]
    summary: str = ""

    def line(self) -> str:
        return f"CHARTDROP {LABELS[self.code]} - {self.summary} | {' '.join(self.perfdata)}"


def evaluate(settings: Settings, snap: Snapshot) -> CheckResult:
    """The monitoring-plugin verdict for ``snap``."""
    alerts = settings.alerts
    problems: list[tuple[int, str]] = []
    if not snap.running:
        problems.append((CRITICAL, "chartdrop is not running (nothing is taken in or sent)"))
    else:  # a dead daemon's pause rows are stale: only a live one's count
        for p in snap.pauses:
            age = max(0.0, snap.now - p.since)
            if age >= alerts.paused_critical_minutes * 60:
                level = CRITICAL
            elif age >= alerts.paused_warning_minutes * 60:
                level = WARNING
            else:
                continue
            problems.append((level, f"{p.destination} paused ({p.kind}) for {_minutes(age)}"))
    oldest = 0.0
    for name, s in snap.status.items():
        if s.oldest_waiting_seconds is None:
            continue
        age = s.oldest_waiting_seconds
        oldest = max(oldest, age)
        if age >= alerts.oldest_critical_minutes * 60:
            problems.append((CRITICAL, f"{name}: oldest waiting document {_minutes(age)}"))
        elif age >= alerts.oldest_warning_minutes * 60:
            problems.append((WARNING, f"{name}: oldest waiting document {_minutes(age)}"))
    for name, n in sorted(snap.failed_window.items()):
        if n:
            problems.append(
                (WARNING, f"{name}: {n} failed in the last {alerts.failed_window_hours:g} h")
            )
    for name, n in sorted(snap.unconfigured.items()):
        problems.append((WARNING, f"{n} job(s) wait for {name}, which is no longer configured"))
    queued = sum(s.queued + s.retrying for s in snap.status.values())
    in_flight = sum(s.in_flight for s in snap.status.values())
    failed_24h = sum(snap.failed_24h.values())
    perf = [
        f"queued={queued}",
        f"in_flight={in_flight}",
        f"oldest_waiting_s={oldest:.0f};{alerts.oldest_warning_minutes * 60:.0f};"
        f"{alerts.oldest_critical_minutes * 60:.0f}",
        f"failed_24h={failed_24h}",
        f"in_failed={sum(n or 0 for n in snap.in_failed_folder.values())}",
        f"awaiting_sidecar={sum(n or 0 for n in snap.awaiting_sidecar.values())}",
        f"paused={len({p.destination for p in snap.pauses}) if snap.running else 0}",
    ]
    code = max((level for level, _ in problems), default=OK)
    problems.sort(key=lambda item: -item[0])
    if problems:
        summary = "; ".join(text for _, text in problems)
    else:
        summary = (
            f"{queued} queued, {in_flight} in flight, oldest waiting {_minutes(oldest)}, "
            f"{failed_24h} failed in 24 h"
        )
    return CheckResult(code, problems, perf, summary)
