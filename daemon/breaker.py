"""Per-destination circuit breakers: pause a destination that is down or refuses us.

    closed ──(``threshold`` transient failures in a row)──> open (outage)
    closed ──(credentials refused / token endpoint failing)──> open (auth)
    open ──(its wait is over: one job is let through as the probe)──> probing
    probing ──success──> closed

When it opens, the waiting jobs' own backoffs are set aside (they are due in
the order they were queued): the breaker paces the destination, so the probe
is always the oldest document and the queue drains in order.
    probing ──failure──> open, waiting twice as long (up to retry_cap_seconds)

While a destination is open no attempts burn: workers do not claim its jobs,
so documents wait queued and none goes to ``failed/`` because of the outage
(a document still fails after ``give_up_after_hours`` in the queue). Waits
use the monotonic clock. Each change is logged and written to the queue's
``pauses`` table, so ``chartdrop status`` shows the pause and its reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from daemon.config import Destination
from daemon.logs import get_logger
from daemon.queue import Queue

OUTAGE = "outage"
AUTH = "auth"
RATE_LIMITED = "rate_limited"  # a 429 (or an empty rate-limit bucket): held, not broken
THRESHOLD = 3  # transient failures in a row that open the circuit


@dataclass
class _State:
    failures: int = 0
    kind: str | None = None  # None: closed
    step: int = 0
    open_until: float = 0.0  # monotonic
    probing: bool = False
    held_until: float = 0.0  # monotonic: no claims before (see Breakers.hold)


class Breakers:
    def __init__(
        self,
        queue: Queue,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        threshold: int = THRESHOLD,
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.wall = wall
        self.threshold = threshold
        self.log = get_logger()
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}

    def _state(self, name: str) -> _State:
        return self._states.setdefault(name, _State())

    def blocked(self) -> set[str]:
        """Destinations whose jobs must not be claimed now."""
        now = self.clock()
        with self._lock:
            return {
                name
                for name, s in self._states.items()
                if (s.kind is not None and (s.probing or now < s.open_until)) or now < s.held_until
            }

    def admit(self, name: str) -> bool:
        """May a job of ``name`` just claimed be sent? The first one after an open
        circuit's wait is the probe; any other is put back (no attempt counted)."""
        now = self.clock()
        with self._lock:
            s = self._state(name)
            if now < s.held_until:
                return False
            if s.kind is None:
                return True
            if s.probing or now < s.open_until:
                return False
            s.probing = True
            return True

    def success(self, name: str) -> None:
        """The destination answered (accepted, or refused one document on its merits)."""
        with self._lock:
            s = self._state(name)
            was, held = s.kind, s.held_until
            self._states[name] = _State(held_until=held)
        if held and self.clock() >= held:
            with self._lock:
                self._states[name].held_until = 0.0
            self.queue.clear_pause(name, RATE_LIMITED)
        if was is not None:
            for kind in (AUTH, OUTAGE):  # its own pauses only: intake's folder_missing stays
                self.queue.clear_pause(name, kind)
            due = self.queue.make_due(name)
            self.log.info("destination.resumed", destination=name, was=was, count=due)

    def inconclusive(self, name: str) -> None:
        """The job failed before the destination could tell (a bad or unreadable
        document): if it was the probe, the next job probes at once instead of
        the circuit waiting forever for an answer that will not come."""
        with self._lock:
            s = self._states.get(name)
            if s is not None:
                s.probing = False

    def failure(
        self, dest: Destination, kind: str, reason: str, retry_after: float | None = None
    ) -> None:
        """A transient failure (``OUTAGE``) or refused credentials (``AUTH``: opens at once)."""
        with self._lock:
            s = self._state(dest.name)
            s.failures += 1
            if s.kind is None and kind == OUTAGE and s.failures < self.threshold:
                return
            if s.kind is not None and not s.probing and kind == s.kind:
                return  # a send that was already under way when the circuit opened
            s.step = s.step + 1 if s.kind is not None else 0
            s.kind, s.probing = kind, False
            base = dest.timing.retry_base_seconds
            wait = min(dest.timing.retry_cap_seconds, base * 2 ** min(s.step, 32))
            wait = max(wait, retry_after or 0.0)
            s.open_until = self.clock() + wait
            step = s.step
        self.queue.set_pause(dest.name, kind, reason, until=self.wall() + wait)
        # While open, the breaker paces this destination, not each job's backoff:
        # the probe is always the oldest waiting document, so the queue drains in order.
        self.queue.make_due(dest.name)
        self.log.warning(
            "destination.paused",
            destination=dest.name,
            kind=kind,
            reason=reason,
            probe_in=round(wait, 1),
            step=step,
        )

    def hold(self, names: list[str], seconds: float, reason: str) -> None:
        """Rate limited (a 429's Retry-After, or an empty bucket): claim nothing of
        ``names`` for ``seconds``. Not a failure: no circuit opens, no probe."""
        until = self.clock() + seconds
        with self._lock:
            for name in names:
                s = self._state(name)
                s.held_until = max(s.held_until, until)
        for name in names:
            self.queue.set_pause(name, RATE_LIMITED, reason, until=self.wall() + seconds)
            self.log.warning(
                "destination.paused",
                destination=name,
                kind=RATE_LIMITED,
                reason=reason,
                probe_in=round(seconds, 1),
            )

    def forget(self, name: str) -> None:
        """A destination removed by a reload."""
        with self._lock:
            self._states.pop(name, None)
        self.queue.clear_pause(name)
