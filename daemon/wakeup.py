"""Waking the daemon's idle workers: one worker per job that became claimable.

A plain ``threading.Event`` woke every idle worker for each queued job; all but
one then ran an empty claim (a ``BEGIN IMMEDIATE`` write transaction) and went
back to sleep. :class:`Wakeup` counts the announced jobs instead: :meth:`set`
(one job queued) wakes one idle worker, a worker that claimed a job takes its
announcement (:meth:`take`), so the next idle worker only wakes for a job that is
still unclaimed. A hint, never the truth: the queue is, and a worker with
nothing to do still claims once per timeout (jobs coming out of backoff)."""

from __future__ import annotations

import threading


class Wakeup:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._pending = 0  # jobs announced and not yet taken by a claim
        self._round = 0  # bumped by wake_all

    def set(self) -> None:
        """One job became claimable: wake one idle worker."""
        with self._cond:
            self._pending += 1
            self._cond.notify()

    def wake_all(self) -> None:
        """Wake every idle worker (shutdown, reload: they look at the daemon's state)."""
        with self._cond:
            self._round += 1
            self._cond.notify_all()

    def take(self) -> None:
        """A worker claimed a job: its announcement, if one is pending, is used up."""
        with self._cond:
            if self._pending:
                self._pending -= 1

    def wait(self, timeout: float) -> bool:
        """Until a job is announced (taking its announcement), :meth:`wake_all`, or
        ``timeout`` seconds; False on the timeout."""
        with self._cond:
            started = self._round

            def woken() -> bool:
                return self._pending > 0 or self._round != started

            done = self._cond.wait_for(woken, timeout)
            if self._pending > 0:
                self._pending -= 1
                return True
            return bool(done)

    def is_set(self) -> bool:
        """Whether an announced job waits for a worker."""
        with self._cond:
            return self._pending > 0
