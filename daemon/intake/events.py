"""The watcher's side of intake: watchdog handlers record a name and return (an
exception on watchdog's thread would silently kill it); the loop
(:mod:`daemon.intake.loop`) decides everything else."""

from __future__ import annotations

import os
from collections.abc import Callable

from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_OPENED,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

# Reading a file (judging it, hashing it) makes inotify report it opened and closed:
# not a change, and waking on them turned every look at a held file into the next.
IGNORED_EVENTS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})

# The events intake wakes on, given to watchdog's ``schedule(event_filter=...)``: its
# inotify emitter then asks the kernel for these only (IN_CREATE, IN_MOVE, IN_MODIFY,
# IN_ATTRIB, IN_DELETE, IN_CLOSE_WRITE, and IN_DELETE_SELF, always), so the opens and
# no-write closes of intake's own reads (4 of every document's ~12 events, then
# ignored above) are never read from the inotify fd nor dispatched.
WATCHED_EVENTS = [
    FileCreatedEvent,
    FileMovedEvent,
    FileModifiedEvent,
    FileDeletedEvent,
    FileClosedEvent,
]


def unhold_moves() -> None:
    """Take renames into an inbox at once (before the observer starts).

    watchdog holds each IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO,
    and its reader thread sleeps out that delay even when the pair arrives at
    once: a document renamed into place (the hand-over the README recommends)
    was seen up to 0.5 s late, its settle window starting late with it. Intake
    needs the names, not the pairing (an unpaired move is reported as a delete
    of the old name and a create of the new one), so nothing is held."""
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:  # no inotify here: polling only
        return
    InotifyMoveEventGrouper.delay = 0.0


class InboxEvents(FileSystemEventHandler):
    """Runs on watchdog's thread: record the name, wake the loop, nothing else."""

    def __init__(self, dest: str, notify: Callable[[str, str], None]) -> None:
        self.dest = dest
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in IGNORED_EVENTS:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self.notify(self.dest, os.fsdecode(path))
