"""The intake loop: from names in the inboxes to ready pairs, one bounded slice
per :meth:`Intake.tick` on the main loop.

A periodic full rescan is the source of truth; watchdog events
(:mod:`daemon.intake.events`) only make it fast. The loop's work is linear in
what changed: names are kept in a pairing index (:mod:`daemon.pairing`), each
name is looked at only when something is due for it, and ready documents are
taken oldest first for at most ``TICK_BUDGET_SECONDS`` per tick, so the main
loop keeps pinging systemd's watchdog whatever the backlog. Judging is
:mod:`daemon.intake.judging`, the move into the spool
:mod:`daemon.intake.handover`.

This module is longer than ~400 lines for a reason: :class:`Intake` is one
state machine over each inbox's names (the index, their ``lstat``, settle
windows, due times, holds), and its detection and decision halves read and
write the same per-inbox state; split further, each half would reach into the
other's fields.
"""

from __future__ import annotations

import errno
import heapq
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from daemon.config import Destination, Settings
from daemon.content import EMPTY
from daemon.errors import (
    ContentError,
    MissingSidecarError,
    NotRegularFileError,
    OrphanSidecarError,
    UnreadableError,
)
from daemon.fsutil import child
from daemon.inboxes import InboxGuard, IntakeReport
from daemon.intake.handover import HandOver, Take
from daemon.intake.judging import Verdict, is_delete, judge, storable
from daemon.intake.recovery import recover
from daemon.logs import get_logger
from daemon.names import is_junk, is_sidecar, nfc, pairing_bases, sidecar_base
from daemon.pairing import PairIndex
from daemon.payload import sidecar_from_filename
from daemon.queue import Job, Queue
from daemon.readiness import StabilityTracker

HOLD_SECONDS = 60.0  # a name whose hand-over failed is looked at again after this
FOLDER_MISSING = "folder_missing"  # pause kind: intake only; queued jobs still go out
TICK_BUDGET_SECONDS = 0.4  # hand-overs per tick stop after this (at least one is done)
RESCAN_SLICE_SECONDS = 0.2  # listing per tick: a 20,000-name inbox takes a few ticks
# Pairs a tick hands over together (one transaction for their rows, one fsync per
# folder, one transaction for their outcomes: see daemon.intake.handover).
HAND_OVER_BATCH = 32


def _identity(st: os.stat_result) -> int:
    """The rest of what tells an unchanged name from a replaced one, besides the
    size and mtime its :class:`~daemon.readiness.StabilityTracker` entry keeps:
    inode, mode and link count, packed into one exact int (64 bits each) and kept
    as that entry's tag. A backlog keeps one per name; an ``os.stat_result``
    costs ~640 bytes with its number objects, a tuple of the three ~120, this 48."""
    return (st.st_ino << 128) | (st.st_mode << 64) | st.st_nlink


class _Inbox:
    """What intake knows of one inbox between looks: its names (the pairing
    index), their last ``lstat`` and settle windows (both in ``tracker``: one
    entry a name, as a backlog has tens of thousands), and when each is next
    worth looking at. Only the main loop touches it, except ``dirty`` (names
    from watchdog events), which is guarded by the intake's lock."""

    def __init__(self, settle_seconds: float, clock: Callable[[], float]) -> None:
        self.index = PairIndex()
        self.tracker = StabilityTracker(settle_seconds, clock)
        self.due: dict[str, float] = {}  # name -> clock time to look at it again
        self.judged: dict[str, tuple[int, int, str]] = {}  # incomplete: (size, mtime_ns, reason)
        self.incomplete_since: dict[str, float] = {}  # wall clock, for the report
        self.dirty: set[str] = set()
        self.listing: Iterator[os.DirEntry[str]] | None = None  # a rescan in progress
        self.listed: set[str] = set()  # what it has listed so far

    def close_listing(self) -> None:
        listing, self.listing = self.listing, None
        if listing is not None:
            listing.close()  # type: ignore[attr-defined]

    def schedule(self, name: str, at: float) -> None:
        if at < self.due.get(name, math.inf):
            self.due[name] = at


class Intake:
    """Turns inbox files into jobs, from the main loop, one bounded slice per
    :meth:`tick`.

    Each inbox's names are known from a full rescan (``os.scandir`` once, one
    ``lstat`` per name) and from watchdog events (one ``lstat`` per changed
    name); a name is looked at only when something is due for it: its settle
    window ends, its sidecar changed, its wait for a sidecar runs out, a hold
    ends. Pairing is a lookup in :class:`~daemon.pairing.PairIndex`. Ready
    documents are taken oldest first (mtime, then name) across every inbox,
    for at most ``TICK_BUDGET_SECONDS`` per tick, so the main loop keeps
    pinging systemd's watchdog whatever the backlog.
    """

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
        self.handover = HandOver(
            queue, settings.spool_dir, on_queued=on_queued, on_rejected=on_rejected
        )
        self.clock = clock
        self.log = get_logger()
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._inboxes = {d.name: self._new_inbox(d) for d in settings.destination}
        self._next_rescan: dict[str, float] = {d.name: 0.0 for d in settings.destination}
        self._reported: set[tuple[str, str]] = set()
        self._held: dict[tuple[str, str], float] = {}
        # Inbox health and what is stuck, for `chartdrop status` (see daemon.inboxes).
        self.on_folder = on_folder
        spool = settings.spool_dir
        self._spool_dev = spool.stat().st_dev if spool.is_dir() else None
        self._guards = {d.name: InboxGuard(d.inbox, self._spool_dev) for d in settings.destination}
        self._folder_problem: dict[str, str | None] = {d.name: None for d in settings.destination}
        self._failing_since: dict[tuple[str, str], float] = {}
        self.report = IntakeReport(settings.state_dir)
        self.looks = 0  # names looked at (lstat, maybe judged): for the scale tests
        # During a tick's slice: the pairs judged ready, handed over together (None:
        # hand over at once, as recovery and the unreadable-file path do).
        self._batch: list[Take] | None = None
        self._batch_bases: set[tuple[str, str]] = set()  # (destination, NFC pairing base)

    def _new_inbox(self, dest: Destination) -> _Inbox:
        return _Inbox(dest.timing.settle_seconds, self.clock)

    def _reset_inbox(self, dest: Destination) -> None:
        """Start afresh (caller holds the lock): what was known may be gone."""
        old = self._inboxes.get(dest.name)
        if old is not None:
            old.close_listing()
        self._inboxes[dest.name] = self._new_inbox(dest)

    # -- detection --------------------------------------------------------
    def notify(self, dest_name: str, path: str) -> None:
        """From watchdog's thread: note the name, wake the loop, nothing else."""
        try:
            dest = self.settings.get_destination(dest_name)
        except KeyError:  # an event from before a reload removed the destination
            return
        folder, _, name = path.rpartition("/")
        if folder != str(dest.inbox) or name in ("", ".", ".."):
            # not the plain "<inbox>/<name>" watchdog reports: let pathlib decide
            p = Path(path)
            if p.parent != dest.inbox:
                return
            name = p.name
        if is_junk(name):
            return
        with self._lock:
            inbox = self._inboxes.get(dest_name)
            if inbox is None:
                return
            inbox.dirty.add(name)
        self.wake.set()

    def rescan(self, dest: Destination) -> int:
        """A whole rescan at once (the loop does it in slices); returns the names known."""
        while not self._rescan_step(dest, math.inf):
            pass
        return len(self._inboxes[dest.name].index)

    def _rescan_step(self, dest: Destination, until: float) -> bool:
        """Go on listing the inbox (the source of truth) until ``until`` (on
        ``time.monotonic``): ``os.scandir`` once, one ``lstat`` per name; new and
        changed names are noted as they are listed. True once the listing is
        complete: names it did not list are then dropped if they are gone."""
        inbox = self._inboxes[dest.name]
        if inbox.listing is None:
            inbox.listing = os.scandir(dest.inbox)
            inbox.listed = set()
        listing = inbox.listing
        try:
            for n, entry in enumerate(listing, 1):
                self._listed(dest, entry)
                if n % 256 == 0 and time.monotonic() >= until:
                    return False
        except BaseException:
            inbox.close_listing()
            raise
        inbox.close_listing()
        listed, inbox.listed = inbox.listed, set()
        for name in inbox.index:
            if name not in listed:  # gone, or came after its place in the listing
                self._refresh(dest, name)
        # A held file is read again once per rescan even if its lstat is the same:
        # a copy that fills a pre-allocated file and keeps resetting its mtime
        # changes nothing lstat shows. Once a rescan interval is no busy loop.
        now = self.clock()
        for name in inbox.judged:
            inbox.schedule(name, now)
        inbox.judged.clear()
        return True

    def _listed(self, dest: Destination, entry: os.DirEntry[str]) -> None:
        inbox = self._inboxes[dest.name]
        name = entry.name
        if is_junk(name):
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError:  # looked at by itself: its error is held and reported there
            inbox.listed.add(name)
            inbox.index.add(name)
            inbox.schedule(name, self.clock())
            return
        if not stat.S_ISDIR(st.st_mode):
            inbox.listed.add(name)
            self._saw(dest, name, st)

    def _refresh(self, dest: Destination, name: str) -> None:
        """``lstat`` one name (from an event, or missing from a listing)."""
        inbox = self._inboxes[dest.name]
        try:
            st = self._lstat(child(dest.inbox, name))
        except OSError:
            inbox.index.add(name)
            inbox.schedule(name, self.clock())
            return
        if st is None or stat.S_ISDIR(st.st_mode):
            self._forget(dest, name)
        else:
            self._saw(dest, name, st)

    def _refresh_dirty(self, dest: Destination) -> None:
        """``lstat`` the names events reported since the last tick."""
        inbox = self._inboxes[dest.name]
        with self._lock:
            names, inbox.dirty = inbox.dirty, set()
        for name in names:
            self._refresh(dest, name)

    def _saw(self, dest: Destination, name: str, st: os.stat_result) -> None:
        """Record an ``lstat`` of an inbox name. A new or changed name is due when
        its settle window ends; a sidecar that changed makes its documents due too
        (a pair's window ends when the later of the two stopped changing)."""
        inbox = self._inboxes[dest.name]
        identity = _identity(st)
        if inbox.tracker.unchanged(name, st.st_size, st.st_mtime_ns, identity):
            return  # known and unchanged: its window and its due time stand
        new = inbox.index.add(name)
        inbox.tracker.observe(name, st.st_size, st.st_mtime_ns, identity)
        at = inbox.tracker.settled_at(name)
        assert at is not None
        if is_sidecar(name):
            documents = inbox.index.documents_for(name)
            for doc in documents:
                inbox.schedule(doc, at)
            if not documents:  # alone: its own checks (a Delete, or an orphan)
                inbox.schedule(name, at)
        else:
            inbox.schedule(name, at)
            if new:  # its sidecars are not alone any more: the document takes them
                for sidecar in inbox.index.sidecars_naming(name):
                    inbox.due.pop(sidecar, None)

    def _forget(self, dest: Destination, name: str) -> None:
        """A name that left the inbox (or was handed over)."""
        inbox = self._inboxes[dest.name]
        known = name in inbox.index
        inbox.index.discard(name)
        inbox.due.pop(name, None)
        inbox.judged.pop(name, None)
        inbox.incomplete_since.pop(name, None)
        inbox.tracker.forget(name)
        self._held.pop((dest.name, name), None)
        self._failing_since.pop((dest.name, name), None)
        if known and not is_sidecar(name):
            now = self.clock()
            for sidecar in inbox.index.sidecars_naming(name):  # maybe alone now
                inbox.schedule(sidecar, now)

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
                    self._reset_inbox(dest)
                    self._guards[dest.name] = InboxGuard(dest.inbox, self._spool_dev)
            names = {d.name for d in settings.destination}
            for gone in set(before) - names:
                old = self._inboxes.pop(gone, None)
                if old is not None:
                    old.close_listing()
                self._guards.pop(gone, None)
            self._next_rescan = dict.fromkeys(names, 0.0)
        for name in list(self._folder_problem):  # a changed or removed one: judged afresh
            judged_afresh = name not in names or before.get(name) != settings.get_destination(name)
            if judged_afresh and self._folder_problem.pop(name) is not None:
                self.queue.clear_pause(name, FOLDER_MISSING)
        for name in names:
            self._folder_problem.setdefault(name, None)
        self.wake.set()

    # -- the loop's work --------------------------------------------------
    def rescan_all(self) -> None:
        """Rescan every inbox at the next tick (e.g. after the kernel dropped events)."""
        for name in self._next_rescan:
            self._next_rescan[name] = 0.0
        self.wake.set()

    def tick(self) -> float:
        """One bounded slice of intake's work. Returns the seconds until something
        is next due (0 when ready documents were left for the next slice)."""
        budget_end = time.monotonic() + TICK_BUDGET_SECONDS
        now = self.clock()
        ready: list[tuple[int, str, str]] = []
        for dest in self.settings.destination:
            if not self._inbox_usable(dest):
                with self._lock:  # events from a folder that is not (or no longer) the inbox
                    self._inboxes[dest.name].dirty.clear()
                continue
            inbox = self._inboxes[dest.name]
            if inbox.listing is not None or now >= self._next_rescan[dest.name]:
                if inbox.listing is None:
                    self._next_rescan[dest.name] = now + dest.timing.rescan_seconds
                try:
                    self._rescan_step(dest, time.monotonic() + RESCAN_SLICE_SECONDS)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # gone since the check: the next tick pauses it
            self._refresh_dirty(dest)
            for name, at in inbox.due.items():
                if at <= now:
                    mtime_ns = inbox.tracker.mtime_ns(name)
                    ready.append((0 if mtime_ns is None else mtime_ns, name, dest.name))
        heapq.heapify(ready)  # oldest first, across every inbox (no full sort: a slice
        first = True  # takes a few dozen of a backlog of thousands)
        self._batch = []
        try:
            while ready:
                if not first and time.monotonic() >= budget_end:
                    break  # the rest stay due: the next tick comes at once
                first = False
                _, name, dest_name = heapq.heappop(ready)
                inbox = self._inboxes[dest_name]
                if inbox.due.get(name, math.inf) > now:
                    continue  # taken along with its pair, or gone, since the list was made
                del inbox.due[name]
                self._look_at(self.settings.get_destination(dest_name), name)
                if len(self._batch) >= HAND_OVER_BATCH:
                    self._hand_over_batch()
        finally:
            self._hand_over_batch()
            self._batch = None
        self._update_report()
        return self._next_due()

    def _next_due(self) -> float:
        now = self.clock()
        nxt = min(self._next_rescan.values(), default=math.inf)
        for inbox in self._inboxes.values():
            if inbox.listing is not None or inbox.dirty:
                return 0.0  # a rescan to go on with, or events since the slice began
            if inbox.due:
                nxt = min(nxt, min(inbox.due.values()))
        return max(0.0, nxt - now)

    def _look_at(self, dest: Destination, name: str) -> None:
        self.looks += 1
        if self._batch and not self._batch_bases.isdisjoint(_bases(dest, name)):
            # It may pair with a name a batched hand-over takes: that one goes first,
            # so this one is judged against the inbox as it will then be.
            self._hand_over_batch()
        try:
            again = self._consider(dest, name)
            batched = bool(self._batch) and self._batch[-1].doc_name == name  # type: ignore[index]
            if not batched:  # (a batched one: when its hand-over is through)
                self._failing_since.pop((dest.name, name), None)
        except Exception as exc:  # noqa: BLE001 - one bad name must not stop the others
            again = self._failing(dest, name, exc)
        inbox = self._inboxes[dest.name]
        if again is not None and name in inbox.index:
            inbox.schedule(name, again)

    def _inbox_usable(self, dest: Destination) -> bool:
        """Check the inbox is still the folder it was; pause or resume its intake."""
        problem = self._guards[dest.name].check()
        before = self._folder_problem[dest.name]
        if problem == before:
            return problem is None
        self._folder_problem[dest.name] = problem
        with self._lock:  # what was known may be gone or belong to another folder
            self._reset_inbox(dest)
        if problem is not None:
            self.log.error("intake.folder_missing", destination=dest.name, reason=problem)
            self.queue.set_pause(dest.name, FOLDER_MISSING, f"intake paused: {problem}")
        else:
            self.log.warning("intake.folder_back", destination=dest.name)
            self.queue.clear_pause(dest.name, FOLDER_MISSING)
            self._next_rescan[dest.name] = 0.0
            for key in [k for k in self._held if k[0] == dest.name]:
                del self._held[key]
        self.on_folder(dest.name, problem)
        return problem is None

    def _failing(self, dest: Destination, name: str, exc: Exception) -> float | None:
        """A name whose checks or hand-over raised: held back and retried; a file that
        stays unreadable for ``sidecar_timeout_seconds`` goes to failed/ with the reason.
        Returns when to look at it again (None: handed over)."""
        key = (dest.name, name)
        since = self._failing_since.setdefault(key, self.clock())
        timeout = dest.timing.sidecar_timeout_seconds
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
                sidecar = None if is_sidecar(name) else self._sidecar_for(dest, name)
                self._take(dest, name, sidecar, Verdict(rejection=UnreadableError(why)))
            except Exception as again:  # noqa: BLE001 - cannot even move it: keep holding
                return self._hold_back(dest, name, again)
            return None
        return self._hold_back(dest, name, exc)

    def _update_report(self) -> None:
        """Write what `chartdrop status` shows about the inboxes (only when it changed)."""
        report: dict[str, dict[str, object]] = {}
        for dest in self.settings.destination:
            stuck = self._inboxes[dest.name].incomplete_since
            report[dest.name] = {
                "incomplete": len(stuck),
                "incomplete_since": min(stuck.values()) if stuck else None,
                "errors": sum(1 for d, _ in self._failing_since if d == dest.name),
            }
        try:
            self.report.update(report, now=time.time())
        except OSError as exc:
            self.log.warning("intake.report_failed", exc_type=type(exc).__name__)

    def _hold_back(self, dest: Destination, name: str, exc: Exception) -> float:
        """Look at a name that failed again only after HOLD_SECONDS (or the rescan
        interval, if shorter); log it once. Returns when."""
        hold = min(HOLD_SECONDS, dest.timing.rescan_seconds)
        until = self._held[(dest.name, name)] = self.clock() + hold
        if (dest.name, name) not in self._reported:
            self._reported.add((dest.name, name))
            self.log.warning(
                "intake.error",
                destination=dest.name,
                exc_type=type(exc).__name__,
                error=getattr(exc, "strerror", None),
            )
        return until

    def _lstat(self, path: str) -> os.stat_result | None:
        """``lstat`` of an inbox name's path (a plain string: a ``Path`` built and
        parsed for each of the several looks a document gets costs more than the
        system call)."""
        try:
            return os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # e.g. the sidecar name of a 255-byte name
                return None
            raise

    def _sidecar_for(self, dest: Destination, doc_name: str) -> str | None:
        return self._inboxes[dest.name].index.sidecar_for(doc_name)

    def _take(self, dest: Destination, name: str, sidecar: str | None, verdict: Verdict) -> None:
        """Hand a name (and its sidecar) over and stop watching both; during a
        tick's slice, at the end of the batch (:meth:`_hand_over_batch`)."""
        self._reported.discard((dest.name, name))
        if self._batch is not None:
            self._batch.append(Take(dest, name, sidecar, verdict))
            self._batch_bases |= _bases(dest, name)
            if sidecar is not None:
                self._batch_bases |= _bases(dest, sidecar)
            return
        self.handover.hand_over(dest, name, sidecar, verdict)
        if sidecar is not None:
            self._forget(dest, sidecar)
        self._forget(dest, name)

    def _hand_over_batch(self) -> None:
        """Hand the batched pairs over together; each one that failed is held back
        as :meth:`_look_at` holds back a name whose hand-over raised."""
        batch, self._batch = self._batch or [], None  # _failing below hands over at once
        self._batch_bases.clear()
        try:
            results = self.handover.hand_over_many(batch) if batch else []
            for take, result in zip(batch, results, strict=True):
                dest, name = take.dest, take.doc_name
                if not isinstance(result, Exception):
                    if take.sidecar_name is not None:
                        self._forget(dest, take.sidecar_name)
                    self._forget(dest, name)
                    continue
                try:
                    again = self._failing(dest, name, result)
                except Exception as exc:  # noqa: BLE001 - one bad name must not stop the others
                    self.log.warning("intake.error", exc_type=type(exc).__name__)
                    again = self.clock() + HOLD_SECONDS
                inbox = self._inboxes[dest.name]
                if again is not None and name in inbox.index:
                    inbox.schedule(name, again)
        finally:
            self._batch = []

    def _consider(self, dest: Destination, name: str) -> float | None:
        """Look at one inbox name; return when to look again (None: only on a change)."""
        held = self._held.get((dest.name, name), 0.0)
        now = self.clock()
        if held > now:
            return held
        inbox = self._inboxes[dest.name]
        tracker = inbox.tracker
        st = self._lstat(child(dest.inbox, name))
        if st is None or stat.S_ISDIR(st.st_mode):
            self._forget(dest, name)
            return None
        self._saw(dest, name, st)
        if storable(name) != name:
            bad_name = "the file name is not valid text (UTF-8); rename the file and drop it again"
            self._take(dest, name, None, Verdict(rejection=ContentError(bad_name)))
            return None
        if is_sidecar(name):
            return self._consider_sidecar(dest, name, st)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            what = NotRegularFileError(
                "the file is a link, shortcut or special file, not a document"
            )
            self._take(
                dest,
                name,
                self._sidecar_for(dest, name),
                Verdict(rejection=what),
            )
            return None
        settled = tracker.settled_at(name)
        assert settled is not None
        if settled > now:
            return settled
        sidecar = self._sidecar_for(dest, name)
        named = sidecar is None and sidecar_from_filename(dest, name) is not None
        if sidecar is None and not named:
            deadline = tracker.waited(name)
            timeout = dest.timing.sidecar_timeout_seconds
            if deadline < timeout:
                return now + timeout - deadline
            # says why, in the staff's words
            verdict = judge(dest, self.settings, dest.inbox / name, None)
            if verdict.rejection is None:  # incomplete, so the sidecar was not even looked at
                verdict = Verdict(rejection=MissingSidecarError("no sidecar (.json) file came"))
            self._take(dest, name, None, verdict)
            return None
        if sidecar is not None:
            side_st = self._lstat(child(dest.inbox, sidecar))
            if side_st is None:
                self._forget(dest, sidecar)
                return now  # another sidecar, or none: decided at the next tick
            self._saw(dest, sidecar, side_st)
            side_settled = tracker.settled_at(sidecar)
            assert side_settled is not None
            if side_settled > now:
                return side_settled
        verdict = self._judged(dest, name, st, sidecar)
        if verdict.incomplete is not None:
            waited = tracker.waited(name)
            timeout = dest.timing.sidecar_timeout_seconds
            if verdict.incomplete == EMPTY and waited >= timeout:
                # still empty long after it appeared: report it in failed/
                verdict = Verdict(rejection=ContentError(EMPTY))
            else:
                inbox.incomplete_since.setdefault(name, time.time() - waited)
                if (dest.name, name) not in self._reported:
                    self._reported.add((dest.name, name))
                    self.log.warning(
                        "intake.incomplete", destination=dest.name, reason=verdict.incomplete
                    )
                # judged again only when it changes (an event or the rescan says so)
                return now + timeout - waited if verdict.incomplete == EMPTY else None
        self._take(dest, name, sidecar, verdict)
        return None

    def _judged(
        self, dest: Destination, name: str, st: os.stat_result, sidecar: str | None
    ) -> Verdict:
        """:func:`judge`, except that a document found incomplete is not read again
        until its size or mtime changes (a held file must not cost CPU)."""
        inbox = self._inboxes[dest.name]
        cached = inbox.judged.get(name)
        if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
            return Verdict(incomplete=cached[2])
        verdict = judge(
            dest,
            self.settings,
            dest.inbox / name,
            None if sidecar is None else dest.inbox / sidecar,
        )
        if verdict.incomplete is not None:
            inbox.judged[name] = (st.st_size, st.st_mtime_ns, verdict.incomplete)
        else:
            inbox.judged.pop(name, None)
        return verdict

    def _consider_sidecar(self, dest: Destination, name: str, st: os.stat_result) -> float | None:
        inbox = self._inboxes[dest.name]
        if inbox.index.documents_for(name):
            # The documents' own checks take it along; they are due whenever it
            # changes, and it is looked at again when the last of them leaves.
            return None
        tracker = inbox.tracker
        now = self.clock()
        settled = tracker.settled_at(name)
        assert settled is not None
        path = dest.inbox / name
        if settled <= now and stat.S_ISREG(st.st_mode) and is_delete(path):
            self._take(dest, name, None, judge(dest, self.settings, path, None, sidecar_only=True))
            return None
        timeout = dest.timing.sidecar_timeout_seconds
        waited = tracker.waited(name)
        if waited < timeout:
            deadline = now + timeout - waited
            return settled if settled > now else deadline
        self._take(
            dest,
            name,
            None,
            Verdict(
                rejection=OrphanSidecarError("a sidecar arrived but no document with its name")
            ),
        )
        return None

    def recover(self) -> dict[str, int]:
        """Finish or abandon hand-overs a crash interrupted (at start-up)."""
        return recover(self.settings, self.handover)


def _bases(dest: Destination, name: str) -> set[tuple[str, str]]:
    """The (destination, NFC base) keys ``name`` pairs by (see daemon.pairing)."""
    if is_sidecar(name):
        return {(dest.name, nfc(sidecar_base(name)))}
    return {(dest.name, nfc(base)) for base in pairing_bases(name)}
