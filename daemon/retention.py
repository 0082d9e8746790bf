"""Retention: delivered documents leave done/ after ``keep_done_days``.

Once a day (and at start-up) the daemon deletes the document and its sidecar
of every done job that *finished* (``finished_at``, the moment the move to
done/ was committed) more than ``keep_done_days`` ago, then scrubs the job
row down to non-PHI facts (:meth:`daemon.queue.Queue.scrub_done`: the names
and paths go, the ids, hashes, sizes, times, HTTP status and Redox log ID
stay) and appends a ``retention`` event. The file's mtime is not used:
scanners and copies preserve it, so it says nothing about when we filed it.

Safety rules:

* Only a job's own files are deleted: the name recorded in ``final_path`` and
  its paired sidecar, inside ``done/YYYY-MM-DD/``. The folders are opened with
  ``O_NOFOLLOW`` and names are looked at with ``lstat`` relative to them, so a
  symlink (to a folder or a file) is never followed, and is never deleted.
  A document whose size changed since we filed it is left alone.
* Files in done/ the queue does not know (put there by hand, or left alone by
  the rules above) are never deleted; retention logs how many there are in
  the dated folders it has passed.
* failed/ is never cleaned: a document there was never filed into the chart,
  and staff must fix and retry it; deleting it would lose it.

Failed and abandoned job rows keep their file names (PHI) for
``keep_failed_days`` after they finished, then lose them the same way
(:meth:`~daemon.queue.Queue.scrub_failed`); their files are not touched. The
events table (the audit trail, PHI-free) is kept ``keep_events_days`` (six
years by default) and older rows are deleted
(:meth:`~daemon.queue.Queue.prune_events`).

Everything is logged as counts, never names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from daemon.config import Settings
from daemon.logs import get_logger
from daemon.names import paired_sidecar_name
from daemon.queue import Job, Queue

DAY_SECONDS = 86_400.0
BATCH = 100  # jobs per pass (one main-loop tick); a full batch runs again at the next tick
_DAY_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class RetentionReport:
    """What one pass did (all counts)."""

    files_deleted: int = 0  # documents and sidecars deleted
    files_missing: int = 0  # a job's document was no longer in done/
    files_kept: int = 0  # a job's document was left in place (changed, a link, unexpected)
    rows_scrubbed: int = 0
    failed_rows_scrubbed: int = 0  # failed/abandoned rows past keep_failed_days
    events_pruned: int = 0  # audit rows past keep_events_days
    files_unknown: int = 0  # files in dated folders past the cutoff that no job names
    more: bool = False  # the batch was full: another pass follows at once


class Retention:
    """``maybe_run()`` from the main loop: a pass at start-up and once a day."""

    def __init__(
        self, settings: Settings, queue: Queue, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.clock = clock
        self.log = get_logger()
        self._next_run = 0.0

    def maybe_run(self) -> RetentionReport | None:
        now = self.clock()
        if now < self._next_run:
            return None
        report = self.run(now)
        self._next_run = now if report.more else now + DAY_SECONDS
        return report

    def run(self, now: float) -> RetentionReport:
        cutoff = now - self.settings.keep_done_days * DAY_SECONDS
        report = RetentionReport()
        jobs = self.queue.done_before(cutoff, limit=BATCH)
        for job in jobs:
            outcome = self._delete_files(job, report)
            if self.queue.scrub_done(job.id, f"retention: {outcome}"):
                report.rows_scrubbed += 1
        failed_cutoff = now - self.settings.keep_failed_days * DAY_SECONDS
        failed = self.queue.failed_before(failed_cutoff, limit=BATCH)
        for job in failed:
            if self.queue.scrub_failed(job, "retention: file names removed"):
                report.failed_rows_scrubbed += 1
        events_cutoff = now - self.settings.keep_events_days * DAY_SECONDS
        report.events_pruned = self.queue.prune_events(events_cutoff, limit=BATCH * 10)
        report.more = (
            len(jobs) == BATCH or len(failed) == BATCH or report.events_pruned == BATCH * 10
        )
        if not report.more:
            report.files_unknown = self._count_unknown(cutoff)
        if jobs or failed or report.events_pruned or report.files_unknown:
            self.log.info(
                "retention.done",
                files_deleted=report.files_deleted,
                files_missing=report.files_missing,
                files_kept=report.files_kept,
                rows_scrubbed=report.rows_scrubbed,
                failed_rows_scrubbed=report.failed_rows_scrubbed,
                events_pruned=report.events_pruned,
                files_unknown=report.files_unknown,
            )
        return report

    # -- one job ----------------------------------------------------------
    def _delete_files(self, job: Job, report: RetentionReport) -> str:
        """Delete a done job's document and sidecar; returns the outcome word."""
        assert job.final_path is not None
        try:
            done = self.settings.get_destination(job.destination).done
        except KeyError:
            report.files_kept += 1
            return "files kept (destination no longer configured)"
        final = Path(job.final_path)
        day = final.parent
        if day.parent != done or not _DAY_FOLDER.match(day.name):
            report.files_kept += 1
            return "files kept (not where chartdrop filed them)"
        names = [final.name]
        if job.sidecar_name:
            names.append(paired_sidecar_name(final.name, job.original_name, job.sidecar_name))
        try:
            return self._delete_in(done, day.name, names, job.size, report)
        except OSError as exc:
            self.log.warning(
                "retention.error", job_id=job.id, exc_type=type(exc).__name__, error=exc.strerror
            )
            report.files_kept += 1
            return "files kept (could not delete)"

    def _delete_in(
        self, done: Path, day: str, names: list[str], size: int | None, report: RetentionReport
    ) -> str:
        try:
            done_fd = os.open(done, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                report.files_kept += 1
                return "files kept (done/ is not a plain folder)"
            raise
        try:
            try:
                day_fd = os.open(day, _DIR_FLAGS, dir_fd=done_fd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    report.files_missing += 1
                    return "document already gone"
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    report.files_kept += 1
                    return "files kept (the dated folder is a link)"
                raise
            try:
                outcome = self._delete_pair(day_fd, names, size, report)
            finally:
                os.close(day_fd)
            with contextlib.suppress(OSError):  # only succeeds once the folder is empty
                os.rmdir(day, dir_fd=done_fd)
            return outcome
        finally:
            os.close(done_fd)

    @staticmethod
    def _delete_pair(
        day_fd: int, names: list[str], size: int | None, report: RetentionReport
    ) -> str:
        document, *sidecars = names
        try:
            st = os.stat(document, dir_fd=day_fd, follow_symlinks=False)
        except FileNotFoundError:
            report.files_missing += 1
            outcome = "document already gone"
        else:
            if not stat.S_ISREG(st.st_mode):
                report.files_kept += 1
                return "files kept (not a regular file)"
            if size is not None and st.st_size != size:
                report.files_kept += 1
                return "files kept (the document changed since it was filed)"
            os.unlink(document, dir_fd=day_fd)
            report.files_deleted += 1
            outcome = "document deleted"
        for name in sidecars:
            try:
                st = os.stat(name, dir_fd=day_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                os.unlink(name, dir_fd=day_fd)
                report.files_deleted += 1
        return outcome

    # -- files nobody knows -----------------------------------------------
    def _count_unknown(self, cutoff: float) -> int:
        """Files in done/YYYY-MM-DD folders older than the cutoff's day that no done
        job names: put there by hand, or left in place by the rules above."""
        last_day = datetime.fromtimestamp(cutoff).strftime("%Y-%m-%d")
        count = 0
        for dest in self.settings.destination:
            try:
                done_fd = os.open(dest.done, _DIR_FLAGS)
            except OSError:
                continue
            try:
                with os.scandir(done_fd) as entries:
                    days = [
                        e.name
                        for e in entries
                        if _DAY_FOLDER.match(e.name)
                        and e.name < last_day
                        and e.is_dir(follow_symlinks=False)
                    ]
                for day in days:
                    known = self.queue.done_names_in(str(dest.done / day))
                    count += self._count_in(done_fd, day, known)
            finally:
                os.close(done_fd)
        return count

    @staticmethod
    def _count_in(done_fd: int, day: str, known: set[str]) -> int:
        try:
            day_fd = os.open(day, _DIR_FLAGS, dir_fd=done_fd)
        except OSError:
            return 0
        try:
            with os.scandir(day_fd) as entries:
                return sum(
                    1
                    for e in entries
                    if e.name not in known and not e.is_dir(follow_symlinks=False)
                )
        finally:
            os.close(day_fd)
