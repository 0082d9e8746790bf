"""Readiness: has a file stopped changing for long enough?

A pure object with an injectable clock (after paperless-ngx's
``FileStabilityTracker``), so it is tested without sleeping. It only keeps
what it is told: the intake loop observes each candidate's ``(size,
mtime_ns)`` on every scan and forgets it once moved or gone.

The settle window is measured on our own clock, not from the file's mtime:
copy tools may preserve an old mtime (``cp -p``, SMB), so "mtime is old"
would not mean "the writer has finished".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)  # one per file waiting: a backlog has tens of thousands
class _Seen:
    size: int
    mtime_ns: int
    first_seen: float
    changed_at: float
    tag: object  # the caller's, compared by :meth:`StabilityTracker.unchanged` only


class StabilityTracker:
    """Tracks ``(size, mtime_ns)`` per key; stable once unchanged for ``settle_seconds``."""

    def __init__(self, settle_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if settle_seconds < 0:
            raise ValueError("settle_seconds must not be negative")
        self._settle = settle_seconds
        self._clock = clock
        self._seen: dict[str, _Seen] = {}

    def observe(self, key: str, size: int, mtime_ns: int, tag: object = None) -> bool:
        """Record an observation; True iff unchanged for >= ``settle_seconds``.

        The first observation starts the window; any change in size or
        mtime restarts it. ``tag`` is kept with it for :meth:`unchanged` (what
        else the caller tells files apart by) and never restarts the window.
        """
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(size, mtime_ns, now, now, tag)
        else:
            if (seen.size, seen.mtime_ns) != (size, mtime_ns):
                seen.size, seen.mtime_ns, seen.changed_at = size, mtime_ns, now
            seen.tag = tag
        return now - seen.changed_at >= self._settle

    def unchanged(self, key: str, size: int, mtime_ns: int, tag: object = None) -> bool:
        """True iff ``key``'s last observation had this size, mtime and tag."""
        seen = self._seen.get(key)
        return seen is not None and (seen.size, seen.mtime_ns, seen.tag) == (size, mtime_ns, tag)

    def mtime_ns(self, key: str) -> int | None:
        """``key``'s last observed mtime; None if unknown."""
        seen = self._seen.get(key)
        return None if seen is None else seen.mtime_ns

    def settled_at(self, key: str) -> float | None:
        """Clock time ``key`` is (or was) stable if nothing changes meanwhile."""
        seen = self._seen.get(key)
        return None if seen is None else seen.changed_at + self._settle

    def waited(self, key: str) -> float:
        """Seconds since ``key`` was first observed; 0 if unknown."""
        seen = self._seen.get(key)
        return 0.0 if seen is None else self._clock() - seen.first_seen

    def forget(self, key: str) -> None:
        """Drop ``key`` (moved, deleted, or to be started afresh). Unknown keys are fine."""
        self._seen.pop(key, None)
