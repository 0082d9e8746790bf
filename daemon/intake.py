"""Intake: from a file in an inbox to a committed job with its files in the spool.

The watcher only detects: watchdog handlers record a name and return (an
exception on watchdog's thread would silently kill it). A loop decides
readiness; a periodic full rescan is the source of truth, events only make
it fast.

Hand-over order, so that nothing is queued twice and nothing is lost:

1. commit a job row in state ``intake`` naming the spool paths;
2. rename the document, then the sidecar, into the spool (same filesystem),
   fsync both directories;
3. check the spool copies and commit ``queued`` (or ``rejected`` with the
   reason, to be moved to failed/).

A crash after 1 leaves an ``intake`` row: :meth:`Intake.recover` finishes it if
the document reached the spool, and abandons it (the rescan finds the file
again) if it did not.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from daemon.config import Destination, Settings
from daemon.content import EMPTY, detect, incomplete_reason
from daemon.errors import (
    ContentError,
    InputError,
    NotRegularFileError,
    SidecarError,
    TooLargeError,
)
from daemon.fsutil import fsync_dir, open_document, rename_noreplace, set_mode, sha256_file
from daemon.inboxes import InboxGuard, IntakeReport
from daemon.killpoints import killpoint
from daemon.logs import get_logger
from daemon.names import documents_for_sidecar, is_junk, is_sidecar, sidecar_candidates
from daemon.outgoing import check_kind, check_sidecar, effective_sidecar
from daemon.payload import sidecar_from_filename
from daemon.queue import Job, JobState, Queue
from daemon.readiness import StabilityTracker
from daemon.reuse import earlier_document_id
from daemon.sidecar import read_sidecar

HOLD_SECONDS = 60.0  # a name whose hand-over failed is looked at again after this
FOLDER_MISSING = "folder_missing"  # pause kind: intake only; queued jobs still go out
UNREADABLE = "unreadable"  # error_kind: the inbox file could not be read, for too long


def storable(name: str) -> str:
    """The name as UTF-8 text for the database; undecodable bytes become \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class InboxEvents(FileSystemEventHandler):
    """Runs on watchdog's thread: record the name, wake the loop, nothing else."""

    def __init__(self, dest: str, notify: Callable[[str, str], None]) -> None:
        self.dest = dest
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self.notify(self.dest, os.fsdecode(path))


@dataclass(frozen=True)
class Verdict:
    """What the checks say about a ready pair: None rejection means send it."""

    rejection: tuple[str, str] | None = None
    incomplete: str | None = None


def judge(
    dest: Destination,
    settings: Settings,
    doc: Path,
    sidecar: Path | None,
    *,
    name: str | None = None,
    sidecar_only: bool = False,
) -> Verdict:
    """Check a document and its sidecar (in the inbox, or in the spool on recovery,
    where ``name`` is the document's original name). ``sidecar_only``: ``doc`` is
    a sidecar that came alone (an EventType Delete)."""
    name = doc.name if name is None else name
    try:
        if sidecar_only:
            data = read_sidecar(doc)
            check_sidecar(
                dest=dest, settings=settings, sidecar=data, file_name=name, redox_type=None
            )
            return Verdict()
        with open_document(doc) as fh:
            size = os.fstat(fh.fileno()).st_size
            # Over the limit is final (a file only grows), so it is refused before
            # anything is read: a sparse multi-GB file must not be waited on or hashed.
            if size > int(dest.timing("upload_max_bytes")):
                raise TooLargeError(
                    f"the file is {size:,} bytes; the limit is "
                    f"{int(dest.timing('upload_max_bytes')):,} bytes"
                )
            kind = detect(fh)
            reason = incomplete_reason(fh, size, kind)
            if reason is not None:  # an empty file too: a writer may not have started yet
                return Verdict(incomplete=reason)
            kind = check_kind(dest, kind, name)
        try:
            fields = effective_sidecar(
                dest, None if sidecar is None else read_sidecar(sidecar), name
            )
        except SidecarError as exc:
            if sidecar is None:
                return Verdict(rejection=("missing_sidecar", "\n".join(exc.problems)))
            raise
        check_sidecar(
            dest=dest, settings=settings, sidecar=fields, file_name=name, redox_type=kind.redox_type
        )
    except InputError as exc:
        return Verdict(rejection=(exc.reason, "\n".join(exc.problems)))
    return Verdict()


class Intake:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        *,
        on_queued: Callable[[], None] = lambda: None,
        on_rejected: Callable[[Job], object] = lambda job: None,
        on_folder: Callable[[str, str | None], object] = lambda dest, problem: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.on_queued = on_queued
        self.on_rejected = on_rejected
        self.clock = clock
        self.log = get_logger()
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, set[str]] = {d.name: set() for d in settings.destination}
        self._trackers = {
            d.name: StabilityTracker(float(d.timing("settle_seconds")), clock)
            for d in settings.destination
        }
        self._next_rescan: dict[str, float] = {d.name: 0.0 for d in settings.destination}
        self._reported: set[tuple[str, str]] = set()
        self._held: dict[tuple[str, str], float] = {}
        # Inbox health and what is stuck, for `chartdrop status` (see daemon.inboxes).
        self.on_folder = on_folder
        spool = settings.spool_dir
        self._spool_dev = spool.stat().st_dev if spool.is_dir() else None
        self._guards = {d.name: InboxGuard(d.inbox, self._spool_dev) for d in settings.destination}
        self._folder_problem: dict[str, str | None] = {d.name: None for d in settings.destination}
        self._incomplete: dict[str, dict[str, float]] = {d.name: {} for d in settings.destination}
        self._failing_since: dict[tuple[str, str], float] = {}
        self.report = IntakeReport(settings.state_dir)

    # -- detection --------------------------------------------------------
    def notify(self, dest_name: str, path: str) -> None:
        try:
            dest = self.settings.get_destination(dest_name)
        except KeyError:  # an event from before a reload removed the destination
            return
        p = Path(path)
        if p.parent != dest.inbox or is_junk(p.name):
            return
        with self._lock:
            self._pending.setdefault(dest_name, set()).add(p.name)
        self.wake.set()

    def rescan(self, dest: Destination) -> int:
        names = []
        with os.scandir(dest.inbox) as it:
            for entry in it:
                if not is_junk(entry.name) and not entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
        with self._lock:
            self._pending[dest.name].update(names)
        return len(names)

    def reconfigure(self, settings: Settings) -> None:
        """Take a reloaded config (from the main loop, between ticks). A destination
        whose settings changed starts afresh (its files are still in its inbox: the
        next rescan finds them); a removed one is forgotten; every inbox is
        rescanned at the next tick, as the observer is restarted meanwhile."""
        before = {d.name: d for d in self.settings.destination}
        with self._lock:
            self.settings = settings
            for dest in settings.destination:
                if before.get(dest.name) != dest:
                    self._pending[dest.name] = set()
                    self._trackers[dest.name] = StabilityTracker(
                        float(dest.timing("settle_seconds")), self.clock
                    )
                    self._guards[dest.name] = InboxGuard(dest.inbox, self._spool_dev)
                    self._incomplete[dest.name] = {}
            names = {d.name for d in settings.destination}
            for gone in set(before) - names:
                self._pending.pop(gone, None)
                self._trackers.pop(gone, None)
                self._guards.pop(gone, None)
                self._incomplete.pop(gone, None)
            self._next_rescan = dict.fromkeys(names, 0.0)
        for name in list(self._folder_problem):  # a changed or removed one: judged afresh
            judged_afresh = name not in names or before.get(name) != settings.get_destination(name)
            if judged_afresh and self._folder_problem.pop(name) is not None:
                self.queue.clear_pause(name, FOLDER_MISSING)
        for name in names:
            self._folder_problem.setdefault(name, None)
        self.wake.set()

    def waiting(self) -> dict[str, int]:
        with self._lock:
            return {name: len(names) for name, names in self._pending.items()}

    # -- the loop's work --------------------------------------------------
    def rescan_all(self) -> None:
        """Rescan every inbox at the next tick (e.g. after the kernel dropped events)."""
        for name in self._next_rescan:
            self._next_rescan[name] = 0.0
        self.wake.set()

    def tick(self) -> None:
        now = self.clock()
        for dest in self.settings.destination:
            if not self._inbox_usable(dest):
                continue
            if now >= self._next_rescan[dest.name]:
                self._next_rescan[dest.name] = now + float(dest.timing("rescan_seconds"))
                try:
                    self.rescan(dest)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # gone since the check: the next tick pauses it
            with self._lock:
                names = sorted(self._pending[dest.name])
            for name in names:
                if self._held.get((dest.name, name), 0.0) > now:
                    continue
                try:
                    keep = self._consider(dest, name)
                    self._failing_since.pop((dest.name, name), None)
                except Exception as exc:  # noqa: BLE001 - one bad name must not stop the others
                    keep = self._failing(dest, name, exc)
                if not keep:
                    with self._lock:
                        self._pending[dest.name].discard(name)
        self._update_report()

    def _inbox_usable(self, dest: Destination) -> bool:
        """Check the inbox is still the folder it was; pause or resume its intake."""
        problem = self._guards[dest.name].check()
        before = self._folder_problem[dest.name]
        if problem == before:
            return problem is None
        self._folder_problem[dest.name] = problem
        if problem is not None:
            self.log.error("intake.folder_missing", destination=dest.name, reason=problem)
            self.queue.set_pause(dest.name, FOLDER_MISSING, f"intake paused: {problem}")
            with self._lock:  # what was pending may be gone or belong to another folder
                self._pending[dest.name].clear()
        else:
            self.log.warning("intake.folder_back", destination=dest.name)
            self.queue.clear_pause(dest.name, FOLDER_MISSING)
            self._next_rescan[dest.name] = 0.0
            self._trackers[dest.name] = StabilityTracker(
                float(dest.timing("settle_seconds")), self.clock
            )
            for key in [k for k in self._held if k[0] == dest.name]:
                del self._held[key]
        self.on_folder(dest.name, problem)
        return problem is None

    def _failing(self, dest: Destination, name: str, exc: Exception) -> bool:
        """A name whose checks or hand-over raised: held back and retried; a file that
        stays unreadable for ``sidecar_timeout_seconds`` goes to failed/ with the reason.
        Returns True to keep watching it."""
        key = (dest.name, name)
        since = self._failing_since.setdefault(key, self.clock())
        timeout = float(dest.timing("sidecar_timeout_seconds"))
        if (
            isinstance(exc, OSError)
            and not isinstance(exc, FileNotFoundError)
            and self.clock() - since >= timeout
        ):
            why = (
                "chartdrop could not read the document or its sidecar "
                f"({exc.strerror or type(exc).__name__}) for too long"
            )
            try:
                sidecar = None if is_sidecar(name) else self._find_sidecar(dest, name)
                self._hand_over(dest, name, sidecar, Verdict(rejection=(UNREADABLE, why)))
            except Exception as again:  # noqa: BLE001 - cannot even move it: keep holding
                self._hold_back(dest, name, again)
                return True
            self._failing_since.pop(key, None)
            self._trackers[dest.name].forget(name)
            return False
        self._hold_back(dest, name, exc)
        return True

    def _update_report(self) -> None:
        """Write what `chartdrop status` shows about the inboxes (only when it changed)."""
        report: dict[str, dict[str, object]] = {}
        for dest in self.settings.destination:
            with self._lock:
                pending = set(self._pending[dest.name])
            stuck = self._incomplete[dest.name]
            for name in [n for n in stuck if n not in pending]:
                del stuck[name]
            report[dest.name] = {
                "incomplete": len(stuck),
                "incomplete_since": min(stuck.values()) if stuck else None,
                "errors": sum(1 for d, _ in self._failing_since if d == dest.name),
            }
        try:
            self.report.update(report, now=time.time())
        except OSError as exc:
            self.log.warning("intake.report_failed", exc_type=type(exc).__name__)

    def _hold_back(self, dest: Destination, name: str, exc: Exception) -> None:
        """Look at a name that failed again only after HOLD_SECONDS (or the rescan
        interval, if shorter); log it once."""
        hold = min(HOLD_SECONDS, float(dest.timing("rescan_seconds")))
        self._held[(dest.name, name)] = self.clock() + hold
        if (dest.name, name) not in self._reported:
            self._reported.add((dest.name, name))
            self.log.warning(
                "intake.error",
                destination=dest.name,
                exc_type=type(exc).__name__,
                error=getattr(exc, "strerror", None),
            )

    def _lstat(self, path: Path) -> os.stat_result | None:
        try:
            return path.lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # e.g. the sidecar name of a 255-byte name
                return None
            raise

    def _documents_with_stem(self, dest: Destination, stem: str) -> list[str]:
        out = []
        with os.scandir(dest.inbox) as it:
            for entry in it:
                name = entry.name
                if is_junk(name) or is_sidecar(name):
                    continue
                if name.rsplit(".", 1)[0] == stem or name == stem:
                    out.append(name)
        return out

    def _find_sidecar(self, dest: Destination, doc_name: str) -> str | None:
        for candidate in sidecar_candidates(doc_name):
            if self._lstat(dest.inbox / candidate) is None:
                continue
            if candidate == doc_name + ".json":
                return candidate
            # stem-style "scan.json" pairs only when exactly one document has that stem
            if len(self._documents_with_stem(dest, candidate[: -len(".json")])) == 1:
                return candidate
        return None

    def _consider(self, dest: Destination, name: str) -> bool:
        """Look at one inbox name; return True to keep watching it."""
        if self._held.get((dest.name, name), 0.0) > self.clock():
            return True
        tracker = self._trackers[dest.name]
        path = dest.inbox / name
        st = self._lstat(path)
        if st is None:
            tracker.forget(name)
            return False
        if storable(name) != name:
            bad_name = "the file name is not valid text (UTF-8); rename the file and drop it again"
            self._hand_over(dest, name, None, Verdict(rejection=(ContentError.reason, bad_name)))
            tracker.forget(name)
            return False
        if is_sidecar(name):
            return self._consider_sidecar(dest, name, st)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            sidecar = self._find_sidecar(dest, name)
            what = NotRegularFileError(
                "the file is a link, shortcut or special file, not a document"
            )
            self._hand_over(dest, name, sidecar, Verdict(rejection=(what.reason, str(what))))
            tracker.forget(name)
            return False
        if not tracker.observe(name, st.st_size, st.st_mtime_ns):
            return True
        sidecar = self._find_sidecar(dest, name)
        named = sidecar is None and sidecar_from_filename(dest, name) is not None
        if sidecar is None and not named:
            if tracker.waited(name) < float(dest.timing("sidecar_timeout_seconds")):
                return True
            verdict = judge(dest, self.settings, path, None)  # says why, in the staff's words
            if verdict.rejection is None:  # incomplete, so the sidecar was not even looked at
                verdict = Verdict(rejection=("missing_sidecar", "no sidecar (.json) file came"))
            self._hand_over(dest, name, None, verdict)
            tracker.forget(name)
            return False
        if sidecar is not None:
            side_st = self._lstat(dest.inbox / sidecar)
            if side_st is None or not tracker.observe(
                sidecar, side_st.st_size, side_st.st_mtime_ns
            ):
                return True
        verdict = judge(
            dest, self.settings, path, None if sidecar is None else dest.inbox / sidecar
        )
        if verdict.incomplete is not None:
            waited = tracker.waited(name)
            if verdict.incomplete == EMPTY and waited >= float(
                dest.timing("sidecar_timeout_seconds")
            ):  # still empty long after it appeared: report it in failed/
                verdict = Verdict(rejection=(ContentError.reason, EMPTY))
            else:
                self._incomplete[dest.name].setdefault(name, time.time() - waited)
                if (dest.name, name) not in self._reported:
                    self._reported.add((dest.name, name))
                    self.log.warning(
                        "intake.incomplete", destination=dest.name, reason=verdict.incomplete
                    )
                return True
        self._reported.discard((dest.name, name))
        self._hand_over(dest, name, sidecar, verdict)
        tracker.forget(name)
        if sidecar is not None:
            tracker.forget(sidecar)
        return False

    def _consider_sidecar(self, dest: Destination, name: str, st: os.stat_result) -> bool:
        tracker = self._trackers[dest.name]
        _, stem = documents_for_sidecar(name)
        exact = stem if self._lstat(dest.inbox / stem) is not None else None
        if exact is not None or self._documents_with_stem(dest, stem):
            # The document's own check takes the sidecar along. Its settle window is
            # kept: forgetting it here restarted it at every rescan, so a sidecar
            # never settled when settle_seconds >= rescan_seconds.
            with self._lock:
                if exact is not None:
                    self._pending[dest.name].add(exact)
                self._pending[dest.name].update(self._documents_with_stem(dest, stem))
            return False
        settled = tracker.observe(name, st.st_size, st.st_mtime_ns)
        if settled and stat.S_ISREG(st.st_mode) and self._is_delete(dest.inbox / name):
            path = dest.inbox / name
            self._hand_over(
                dest, name, None, judge(dest, self.settings, path, None, sidecar_only=True)
            )
            tracker.forget(name)
            return False
        if tracker.waited(name) < float(dest.timing("sidecar_timeout_seconds")):
            return True
        self._hand_over(
            dest,
            name,
            None,
            Verdict(
                rejection=("orphan_sidecar", "a sidecar arrived but no document with its name")
            ),
        )
        tracker.forget(name)
        return False

    @staticmethod
    def _is_delete(path: Path) -> bool:
        """A lone sidecar that asks for a Delete is a job by itself."""
        try:
            return read_sidecar(path).get("EventType") == "Delete"
        except InputError:
            return False  # not (yet) a valid sidecar: wait for its document

    # -- hand-over --------------------------------------------------------
    def _hand_over(
        self,
        dest: Destination,
        doc_name: str,
        sidecar_name: str | None,
        verdict: Verdict,
    ) -> Job | None:
        token = uuid.uuid4().hex
        spool = self.settings.spool_dir
        spool_doc = spool / f"{token}.document"
        spool_side = spool / f"{token}.sidecar" if sidecar_name else None
        job = self.queue.begin_intake(
            destination=dest.name,
            original_name=storable(doc_name),
            sidecar_name=storable(sidecar_name) if sidecar_name else None,
            spool_document=str(spool_doc),
            spool_sidecar=str(spool_side) if spool_side else None,
            document_id=None
            if is_sidecar(doc_name)
            else earlier_document_id(self.queue, dest.name, dest.inbox / doc_name),
        )
        killpoint("intake_after_row")
        try:
            rename_noreplace(dest.inbox / doc_name, spool_doc)
        except FileNotFoundError:
            self.queue.abandon_intake(job.id, "document left the inbox before hand-over")
            return None
        except OSError as exc:
            self.queue.abandon_intake(job.id, f"hand-over failed ({type(exc).__name__})")
            raise
        killpoint("intake_mid_rename")
        if sidecar_name and spool_side is not None:
            try:
                rename_noreplace(dest.inbox / sidecar_name, spool_side)
            except OSError:
                verdict = Verdict(
                    rejection=("missing_sidecar", "the sidecar disappeared during hand-over")
                )
        for moved in (spool_doc, spool_side):
            if moved is not None and moved.exists():
                set_mode(moved, 0o600)  # best effort: only files the daemon owns can change
        fsync_dir(spool)
        fsync_dir(dest.inbox)
        return self._complete(job, dest, verdict)

    def _complete(self, job: Job, dest: Destination, verdict: Verdict) -> Job:
        assert job.spool_document is not None
        digest, size = "", 0
        rejection = verdict.rejection
        try:
            with open_document(Path(job.spool_document)) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size <= int(dest.timing("upload_max_bytes")):  # never hash what cannot go
                    digest, size = sha256_file(fh)
        except NotRegularFileError as exc:  # swapped for a link after the checks
            rejection = rejection or (exc.reason, str(exc))
        except OSError as exc:
            rejection = rejection or (
                UNREADABLE,
                f"chartdrop could not read the document ({exc.strerror or type(exc).__name__})",
            )
        done = self.queue.complete_intake(job.id, sha256=digest, size=size, rejection=rejection)
        if rejection is None:
            self.log.info(
                "job.queued", job_id=job.id, destination=dest.name, size=size, sha256=digest
            )
            self.on_queued()
        else:
            self.log.info(
                "job.rejected",
                job_id=job.id,
                destination=dest.name,
                error_kind=rejection[0],
                size=size,
                reason="intake",
            )
            self.on_rejected(done)
        return done

    def recover(self) -> dict[str, int]:
        """Finish or abandon hand-overs a crash interrupted."""
        counts = {"finished": 0, "abandoned": 0}
        for job in self.queue.jobs(states=(JobState.INTAKE,), limit=100_000):
            try:
                counts[self._recover_one(job)] += 1
            except OSError as exc:
                # One unreadable spool file must not stop the start (a crash-restart
                # loop): the job stays in intake, its files in the spool, and the
                # next start tries again.
                self.log.error(
                    "intake.recover_failed",
                    job_id=job.id,
                    exc_type=type(exc).__name__,
                    error=exc.strerror,
                )
        return counts

    def _recover_one(self, job: Job) -> str:
        try:
            dest = self.settings.get_destination(job.destination)
        except KeyError:
            self.queue.abandon_intake(job.id, "destination no longer configured")
            return "abandoned"
        spool_doc = Path(job.spool_document or "")
        if not (spool_doc.exists() or spool_doc.is_symlink()):
            self.queue.abandon_intake(job.id, "hand-over interrupted before the move")
            return "abandoned"
        side = Path(job.spool_sidecar) if job.spool_sidecar else None
        if side is not None and job.sidecar_name and not side.exists():
            inbox_side = dest.inbox / job.sidecar_name
            if inbox_side.exists():
                rename_noreplace(inbox_side, side)
                fsync_dir(side.parent)
                fsync_dir(inbox_side.parent)
        if side is not None and not side.exists():
            verdict = Verdict(
                rejection=("missing_sidecar", "the sidecar disappeared during hand-over")
            )
        elif is_sidecar(job.original_name) and side is None:
            if self._is_delete(spool_doc):
                verdict = judge(
                    dest, self.settings, spool_doc, None, name=job.original_name,
                    sidecar_only=True,
                )  # fmt: skip
            else:
                verdict = Verdict(rejection=("orphan_sidecar", "a sidecar arrived but no document"))
        else:
            verdict = judge(dest, self.settings, spool_doc, side, name=job.original_name)
            if verdict.incomplete is not None:
                verdict = Verdict(rejection=(ContentError.reason, verdict.incomplete))
        self._complete(job, dest, verdict)
        return "finished"
