"""Send slots: how many documents are out at their destination at once.

``workers`` is the number of documents chartdrop has at the peer at any moment:
the requests in flight, and so the resends a crash can cause. The daemon runs
``THREADS_PER_SLOT`` delivery threads per slot, so that while one thread's
document waits for the peer's answer, another does the next document's local
steps (the claim, the snapshot copy, the body): with a peer that answers in
tens of milliseconds, every slot is kept busy instead of idling while its
thread works on disk.

A thread takes a slot just before its job's first request (before the
snapshot, for a document too large to be held in memory while it waits) and
gives it back once the outcome is committed (``sent``, or the retry or the
rejection). So at most ``workers`` documents are ever between "the first
request started" and "its outcome is durable", and a crash resends at most
``workers`` documents, as it did with one thread per worker.

Documents go out in the order they were claimed (the queue's order: the order
they arrived): a job joins the line for a slot when it is claimed (``enlist``,
in the same step as the claim), not when its thread is ready to send, so a job
prepared quickly cannot overtake one claimed before it whose thread was slower
(on a loaded machine, the probe after an outage went out as the second oldest
document). A job leaves the line when it takes its slot or goes back to the
queue, and steps out while it waits for a duplicate key another job holds (that
job may be behind it in the line: neither would ever go).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["THREADS_PER_SLOT", "InFlightKeys", "NotNow", "SendSlots", "Slot"]

THREADS_PER_SLOT = 2
# While it waits for a slot a thread beats its heartbeat (and sees a shutdown)
# at least this often.
WAIT_STEP_SECONDS = 1.0


class NotNow(Exception):  # noqa: N818 - nothing was sent: the job goes back unburnt
    """The job was not sent: the daemon is stopping, its lease ran low while it
    waited for a slot, or its destination is paused."""

    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.quiet = quiet  # an ordinary hold (a paused destination): not logged


class _Gate:
    """What both gates share: a condition to wait on, in steps that beat the
    caller's heartbeat and see a shutdown."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiters = 0

    @property
    def waiting(self) -> int:
        """How many threads are waiting now."""
        return self._waiters

    def _wait(
        self,
        blocked: Callable[[], bool],
        stopping: threading.Event | None,
        beat: Callable[[], None] | None,
    ) -> bool:
        """With ``self._cond`` held: wait while ``blocked()``; False if ``stopping``."""
        self._waiters += 1
        try:
            while blocked():
                if stopping is not None and stopping.is_set():
                    return False
                if beat is not None:
                    beat()
                self._cond.wait(WAIT_STEP_SECONDS)
            return True
        finally:
            self._waiters -= 1

    def wake_all(self) -> None:
        """Wake every waiting thread (shutdown: they see ``stopping`` and give up)."""
        with self._cond:
            self._cond.notify_all()


class SendSlots(_Gate):
    """A counting gate whose size follows the ``workers`` setting (a reload may
    change it: a smaller limit is reached as the slots in use are given back).

    A free slot goes to the waiting thread whose job was claimed first (its
    ``order``), not to whichever thread the scheduler wakes: documents prepared
    ahead go out in the order they were claimed, the order they arrived."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._used = 0
        self._line: list[int] = []  # a heap of the orders of the jobs in line
        self._orders = itertools.count()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._used

    @property
    def in_line(self) -> int:
        """How many jobs are in line for a slot (waiting, or still being prepared)."""
        return len(self._line)

    def enlist(self) -> int:
        """Join the line for a slot (with the claim of a job): its order, to be
        given to :meth:`acquire` or :meth:`withdraw`."""
        with self._cond:
            order = next(self._orders)
            heapq.heappush(self._line, order)
            return order

    def withdraw(self, order: int) -> None:
        """Leave the line without a slot (the job went back, or waits for its key);
        nothing if ``order`` is not in it."""
        with self._cond:
            if order in self._line:
                self._line.remove(order)
                heapq.heapify(self._line)
                self._cond.notify_all()  # the next in line may be free to go

    def rejoin(self, order: int) -> None:
        """Back in line at ``order``'s place (after waiting for a duplicate key)."""
        with self._cond:
            if order not in self._line:
                heapq.heappush(self._line, order)

    def resize(self, limit: int) -> None:
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def acquire(
        self,
        *,
        order: int | None = None,
        stopping: threading.Event | None = None,
        beat: Callable[[], None] | None = None,
    ) -> bool:
        """Take a slot, waiting for one and for every job in line before ``order``
        (None: join the line now, after them all); False (none taken) if
        ``stopping`` is set. Either way ``order`` leaves the line."""
        with self._cond:
            mine = next(self._orders) if order is None else order
            if mine not in self._line:
                heapq.heappush(self._line, mine)
            try:

                def blocked() -> bool:
                    return self._used >= self._limit or self._line[0] != mine

                if not self._wait(blocked, stopping, beat):
                    return False
                self._used += 1
                return True
            finally:
                self._line.remove(mine)
                heapq.heapify(self._line)
                self._cond.notify_all()  # the next in line may be free to go

    def release(self) -> None:
        with self._cond:
            assert self._used > 0, "a slot given back that was not taken"
            self._used -= 1
            self._cond.notify_all()


class InFlightKeys(_Gate):
    """The duplicate keys (destination, sha256, patient) of the jobs between their
    duplicate check and their committed outcome. Two copies of one document for
    one patient, dropped together, are claimed by two threads at once: without
    this, each would check before the other's send is recorded, and both would
    go. The second waits for the first's outcome, then checks: it finds it sent
    (and is held), or retried later (and goes)."""

    def __init__(self) -> None:
        super().__init__()
        self._keys: set[tuple[str, ...]] = set()

    def acquire(
        self,
        key: tuple[str, ...],
        *,
        stopping: threading.Event | None = None,
        beat: Callable[[], None] | None = None,
        before_waiting: Callable[[], None] | None = None,
    ) -> bool:
        """Hold ``key``, waiting while another job holds it (``before_waiting`` is
        called first, under this gate's lock, so no one takes the key in between);
        False if ``stopping``."""
        with self._cond:
            if key in self._keys and before_waiting is not None:
                before_waiting()
            if not self._wait(lambda: key in self._keys, stopping, beat):
                return False
            self._keys.add(key)
            return True

    def release(self, key: tuple[str, ...]) -> None:
        with self._cond:
            self._keys.discard(key)
            self._cond.notify_all()


class Slot:
    """One delivery's use of a slot (taken at most once) and of its duplicate key;
    both are given back once (at the latest when the ``with`` block ends), and its
    place in the line is given up then if the slot was never taken."""

    def __init__(
        self,
        slots: SendSlots,
        *,
        order: int | None = None,
        keys: InFlightKeys | None = None,
        stopping: threading.Event | None = None,
        beat: Callable[[], None] | None = None,
    ) -> None:
        """``order``: the job's place in line, from :meth:`SendSlots.enlist` with its
        claim (None: it joins the line now)."""
        self._slots = slots
        self._order = slots.enlist() if order is None else order
        self._keys = keys
        self._stopping = stopping
        self._beat = beat
        self.held = False
        self._key: tuple[str, ...] | None = None

    def hold_key(self, key: tuple[str, ...]) -> None:
        """Hold the job's duplicate key (see :class:`InFlightKeys`), waiting for
        another job's outcome if it has it; NotNow if the daemon is stopping."""
        if self._keys is None or self._key is not None:
            return
        stepped_out = False

        def step_out() -> None:  # the key's holder may be behind us in the line
            nonlocal stepped_out
            stepped_out = True
            self._slots.withdraw(self._order)

        held = self._keys.acquire(
            key, stopping=self._stopping, beat=self._beat, before_waiting=step_out
        )
        if not held:
            raise NotNow("the daemon is stopping")
        self._key = key
        if stepped_out and not self.held:
            self._slots.rejoin(self._order)  # its place: claimed before the ones behind

    def take(self) -> None:
        """Take the slot (a no-op if held); NotNow if the daemon is stopping."""
        if self.held:
            return
        if not self._slots.acquire(order=self._order, stopping=self._stopping, beat=self._beat):
            raise NotNow("the daemon is stopping")
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._slots.release()
        else:
            self._slots.withdraw(self._order)  # never taken: out of the line
        if self._key is not None:
            assert self._keys is not None
            key, self._key = self._key, None
            self._keys.release(key)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.give_back()
