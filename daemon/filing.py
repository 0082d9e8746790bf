"""Outcome: moving a job's files out of the spool into done/ or failed/.

The target name is chosen and committed to the job row *before* the files
move, so a crash mid-move is finished on the next start instead of leaving a
document nobody can find. Moves are same-filesystem renames that never
overwrite (a taken name gets " (1)", " (2)", …) followed by a directory fsync.
A failed document gets ``<name>.error.txt`` in plain words for front-desk staff.

Two paths file a job: the worker that sent it, and the main loop's periodic
:meth:`Filer.finish_pending` (moves that failed earlier). A job is filed by one
of them at a time: :meth:`Filer.finish_safely` claims the job's move (one
daemon per state directory, so a claim in the process is enough), then reads
the job again; one the other path filed meanwhile is done, not an error.

Documents, sidecars and notes get ``files_mode`` (and ``files_group``) before
they appear in done/ or failed/, and the done/YYYY-MM-DD folders ``dirs_mode``,
so staff can read them while everything else the daemon makes stays private
(umask 077). The kernel lets the daemon change only files it owns: a document
another account dropped keeps its owner, and a refusal is logged, not fatal.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from daemon.config import Destination, Settings
from daemon.errors import ErrorKind
from daemon.fsutil import (
    child,
    fsync_dir,
    lstat_kind,
    rename_noreplace,
    set_mode,
    write_file_atomic,
)
from daemon.killpoints import killpoint
from daemon.logs import get_logger
from daemon.names import NAME_MAX, error_note_name, paired_sidecar_name, shortened, suffixed
from daemon.queue import Job, JobState, Queue
from daemon.reuse import remove_earlier_note


def note_text(job: Job, dest: Destination, now: datetime) -> str:
    problems = (job.last_error or "unknown problem").splitlines()
    fix = (ErrorKind.of(job.error_kind) or ErrorKind.INVALID_INPUT).fix
    lines = [
        "chartdrop could not file this document into the patient's chart.",
        "",
        "What is wrong:",
        *[f"  - {p}" for p in problems],
        "",
        "How to fix it:",
        f"  {fix}",
        "",
        f"Job: {job.id}",
        f"Destination: {dest.name}",
        f"Time: {now.isoformat(timespec='seconds')}",
        "",
    ]
    return "\n".join(lines)


class Filer:
    def __init__(self, settings: Settings, queue: Queue) -> None:
        self.settings = settings
        self.queue = queue
        self.log = get_logger()
        self._lock = threading.Lock()
        self._moving: set[str] = set()  # ids of the jobs whose move a thread has claimed
        # today's done/ folders made (and given dirs_mode) by this process, with the
        # mode and group they were given: made and shared once a day, not per job
        self._day_folders: set[tuple[Path, int, int | None]] = set()

    @contextmanager
    def claimed(self, job_id: str) -> Iterator[bool]:
        """Claim the move of ``job_id`` for this thread: False if another has it."""
        with self._lock:
            mine = job_id not in self._moving
            self._moving.add(job_id)
        try:
            yield mine
        finally:
            if mine:
                with self._lock:
                    self._moving.discard(job_id)

    def _share(self, path: Path, job: Job, *, directory: bool = False) -> None:
        """files_mode / dirs_mode and files_group on one file or dated folder
        (read from the settings each time: a reload may change them)."""
        mode = self.settings.dirs_mode if directory else self.settings.files_mode
        if not set_mode(path, mode, self.settings.files_gid, directory=directory):
            self.log.warning(
                "job.mode_not_set",
                job_id=job.id,
                destination=job.destination,
                path_kind="folder" if directory else "file",
                reason="not permitted (owned by another user, or not a member of files_group)",
            )

    def finish(self, job: Job) -> Path | None:
        """Move a sent or rejected job's files to their final place and mark it."""
        if job.state == JobState.SENT:
            return self._file(job, failed=False)
        if job.state == JobState.REJECTED:
            return self._file(job, failed=True)
        return None

    def _target_dir(self, dest: Destination, failed: bool) -> Path:
        """failed/, or today's folder in done/. done/ and failed/ themselves are never
        made again: if one vanished (or a share is unmounted) the move waits."""
        base = dest.failed if failed else dest.done
        if lstat_kind(base) != "directory":
            raise FileNotFoundError(errno.ENOENT, "the done/ or failed/ folder is missing")
        if failed:
            return base
        folder = base / datetime.now().astimezone().strftime("%Y-%m-%d")
        if (folder, self.settings.dirs_mode, self.settings.files_gid) in self._day_folders:
            if lstat_kind(folder) == "directory":
                return folder  # made, made durable and shared earlier today
            self._day_folders.clear()  # removed since: made again below
        try:
            folder.mkdir(mode=self.settings.dirs_mode)
            fsync_dir(base)  # the new folder's name is durable before a file moves in
        except FileExistsError:
            pass
        except OSError as exc:  # no room, read-only: an OSError without the path
            raise OSError(exc.errno, exc.strerror) from None
        if lstat_kind(folder) != "directory":
            raise NotADirectoryError(errno.ENOTDIR, "today's folder in done/ is not a folder")
        return folder

    def _day_folder(self, dest: Destination, job: Job) -> Path:
        """Today's folder in done/, made and given dirs_mode (once a day per folder:
        the same folder again needs only an lstat)."""
        folder = self._target_dir(dest, failed=False)
        key = (folder, self.settings.dirs_mode, self.settings.files_gid)
        if key not in self._day_folders:
            self._share(folder, job, directory=True)
            self._day_folders.add(key)
        return folder

    def _names(self, job: Job, doc_name: str, failed: bool) -> list[str]:
        names = [doc_name]
        if job.sidecar_name:
            names.append(paired_sidecar_name(doc_name, job.original_name, job.sidecar_name))
        if failed:
            names.append(error_note_name(doc_name))
        return names

    def _choose(self, job: Job, folder: Path, failed: bool) -> Path:
        base = job.original_name
        extra = max(len(x.encode()) for x in self._names(job, base, failed)) - len(base.encode())
        if len(base.encode()) + extra > NAME_MAX:  # leave room for the note and " (n)"
            base = shortened(base, NAME_MAX - extra - len(" (9999)"))
        n = 0
        while True:
            doc_name = suffixed(base, n)
            if not any(
                os.path.lexists(child(folder, name)) for name in self._names(job, doc_name, failed)
            ):
                return folder / doc_name
            n += 1

    def _file(self, job: Job, *, failed: bool) -> Path:
        dest = self.settings.get_destination(job.destination)
        target = Path(job.final_path) if job.final_path else None
        spool_doc = Path(job.spool_document) if job.spool_document else None
        doc_in_spool = spool_doc is not None and os.path.lexists(spool_doc)
        if doc_in_spool:
            assert spool_doc is not None
            self._share(spool_doc, job)  # before it is visible in done/ or failed/
        while True:
            if target is None:
                # failed/ itself is the admin's folder (not shared); done/DATE is ours
                folder = self._target_dir(dest, True) if failed else self._day_folder(dest, job)
                target = self._choose(job, folder, failed)
                self.queue.set_final_path(job.id, str(target))
            if not doc_in_spool:
                break
            assert spool_doc is not None
            try:
                rename_noreplace(spool_doc, target)
            except FileExistsError:
                target = None  # taken since we chose it: choose again
                continue
            except FileNotFoundError:
                if lstat_kind(target.parent) == "directory":
                    raise
                target = None  # its folder is gone (done/ made again): choose again
                continue
            break
        folder = target.parent
        killpoint("mid_move")
        if job.sidecar_name and job.spool_sidecar:
            spool_side = Path(job.spool_sidecar)
            if os.path.lexists(spool_side):
                name = paired_sidecar_name(target.name, job.original_name, job.sidecar_name)
                self._share(spool_side, job)
                n = 0
                while True:
                    try:
                        rename_noreplace(spool_side, folder / suffixed(name, n))
                        break
                    except FileExistsError:
                        n += 1
        if failed:
            note = folder / error_note_name(target.name)
            if not note.exists():
                text = note_text(job, dest, datetime.now().astimezone())
                write_file_atomic(note, text.encode("utf-8"), mode=self.settings.files_mode)
                self._share(note, job)
        fsync_dir(folder)
        fsync_dir(self.settings.spool_dir)
        if failed:
            self.queue.mark_failed(job.id, str(target))
        else:
            self.queue.mark_done(job.id, str(target))
            remove_earlier_note(self.settings, self.queue, job)  # a copy moved back by hand
        self.log.info(
            "job.failed" if failed else "job.done",
            job_id=job.id,
            destination=job.destination,
            error_kind=job.error_kind if failed else None,
            remote_id=job.remote_id,
        )
        return target

    def done_target(self, job: Job) -> Path | None:
        """For the worker, right after a send and before it is recorded: where the
        job's document will go in done/ (today's folder made, the name free now),
        to be committed with the send (:meth:`Queue.record_sent`). None if it
        cannot be chosen now (its folder is missing, the disk refuses): the move
        chooses again later, as without this."""
        try:
            dest = self.settings.get_destination(job.destination)
            if not job.spool_document or not os.path.lexists(job.spool_document):
                return None
            return self._choose(job, self._day_folder(dest, job), failed=False)
        except (OSError, KeyError):
            return None

    def finish_claimed(self, job: Job) -> bool:
        """:meth:`finish_safely` for a job whose move this thread has claimed
        (:meth:`claimed`) since before ``job`` was committed, so ``job`` is current
        and is not read again. True if this call filed it."""
        if job.state not in (JobState.SENT, JobState.REJECTED):
            return False
        if all(d.name != job.destination for d in self.settings.destination):
            self.log.warning(
                "job.move_waiting",
                job_id=job.id,
                destination=job.destination,
                error_kind="destination_removed",
            )
            return False
        return self._finish_logged(job)

    def _finish_logged(self, job: Job) -> bool:
        try:
            self.finish(job)
        except OSError as exc:
            self.log.error(
                "job.move_failed",
                job_id=job.id,
                destination=job.destination,
                exc_type=type(exc).__name__,
                error=exc.strerror,
            )
            return False
        return True

    def finish_safely(self, job: Job) -> bool:
        """:meth:`finish`, logging instead of raising when the disk refuses. The job
        stays sent/rejected and :meth:`finish_pending` tries the move again later.

        True if this call filed the job. A job whose move another thread is doing,
        or that was filed since ``job`` was read, is left alone (False, no log):
        ``job`` may be a stale copy, so the move works from the job read again."""
        if all(d.name != job.destination for d in self.settings.destination):
            # its destination was removed (a reload): filed once it is configured again
            self.log.warning(
                "job.move_waiting",
                job_id=job.id,
                destination=job.destination,
                error_kind=ErrorKind.DESTINATION_REMOVED,
            )
            return False
        with self.claimed(job.id) as mine:
            current = self.queue.get(job.id) if mine else None
            if current is None or current.state not in (JobState.SENT, JobState.REJECTED):
                return False  # being filed, or filed already, by the other path
            return self._finish_logged(current)

    def finish_pending(self) -> int:
        """Start-up and periodic: finish every sent/rejected job whose move did not happen."""
        pending = self.queue.jobs(states=(JobState.SENT, JobState.REJECTED), limit=10_000)
        return sum(self.finish_safely(job) for job in pending)
