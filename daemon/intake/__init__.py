"""Intake: from a file in an inbox to a committed job with its files in the spool.

- :mod:`~daemon.intake.events`: the watcher's handler (records names, nothing else);
- :mod:`~daemon.intake.loop`: :class:`Intake`, the loop that knows each inbox's
  names, pairs them (:mod:`daemon.pairing`), waits out their settle window and
  takes ready pairs oldest first, in bounded slices;
- :mod:`~daemon.intake.judging`: the checks of a ready pair (:func:`judge`);
- :mod:`~daemon.intake.handover`: the move into the spool and the job's commit,
  in an order that neither loses nor duplicates a document;
- :mod:`~daemon.intake.recovery`: finishing hand-overs a crash interrupted.

What `chartdrop status` shows of the inboxes is :mod:`daemon.inboxes`.
"""

from daemon.intake.events import WATCHED_EVENTS, InboxEvents, unhold_moves
from daemon.intake.handover import HandOver
from daemon.intake.judging import Verdict, is_delete, judge, storable
from daemon.intake.loop import (
    FOLDER_MISSING,
    HOLD_SECONDS,
    RESCAN_SLICE_SECONDS,
    TICK_BUDGET_SECONDS,
    Intake,
)

__all__ = [
    "FOLDER_MISSING",
    "HOLD_SECONDS",
    "RESCAN_SLICE_SECONDS",
    "TICK_BUDGET_SECONDS",
    "WATCHED_EVENTS",
    "HandOver",
    "InboxEvents",
    "Intake",
    "Verdict",
    "is_delete",
    "judge",
    "storable",
    "unhold_moves",
]
