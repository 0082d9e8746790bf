"""The gate: the daemon's local work runs one thread at a time.

A performance lock, not a correctness one: every guarantee (the queue's
transactions, the lease tokens, the send slots, the filer's claims) holds
without it. What it saves is the hand-over of CPython's GIL. Only one thread
runs Python at a time anyway, and a thread gives the GIL up at every call that
may block: each stat, open, SQLite step and hash block. With the delivery
threads, the intake loop and the observer all runnable, each of those short
calls woke another thread and put the caller to sleep until its turn came back:
about 130 context switches per document with 4 workers and a peer that answers
at once, and on a virtual machine the switches were a fifth of the daemon's
CPU (``perf``; the README's Performance section has the figures). Threads that
wait for the gate sleep on one lock instead, so the thread holding it keeps
the GIL through its short calls, and the threads trade places only where one
of them really waits.

The rules, which keep it free of deadlocks and of a thread idling the others:

- :meth:`Gate.held` is taken at the start of a unit of local work (a worker's
  claim and delivery of one job, a tick of the intake loop) by a thread that
  holds no other lock. It is re-entrant for its thread.
- :meth:`Gate.released` is wrapped around every wait that can be long: the
  network (each request and its answer, :func:`daemon.http.read_capped`,
  through :meth:`Gate.network_wait`, which times it), a
  send slot or a duplicate key (:mod:`daemon.slots`), a back-off sleep; and,
  through :meth:`Gate.disk_wait`, the disk (each fsync,
  :func:`daemon.fsutil.fsync`, and each SQLite commit that waits for its
  fsync, ``Queue._write``) when it has been slow. A thread enters it holding
  no lock that a thread holding the gate may wait for, so the gate's holder
  never waits for the thread that is waiting for the gate.
- A document that holds a send slot, when the peer has been slow
  (:meth:`Gate.keep_out`, ``SLOW_PEER_SECONDS``), stays out of the gate from
  its wait for the slot until its outcome is committed (:meth:`Gate.rejoin`):
  the slots are then what limits the pace, and each slot's turn would
  otherwise include a wait for other threads' local work.
- A lock that is held across a released wait (the queue's, through a commit's
  fsync; the claim's, around a claim's commit; the API token's, while a new
  token is fetched) is made with :meth:`Gate.lock`: a thread waits for it with
  the gate released.

Outside a unit of work (the command line, the sandbox, tests calling the
functions directly) :meth:`Gate.released` does nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# A wait for the disk frees the gate only when the disk has been slow: while the
# average of the last fsyncs is above this. A fast disk's fsync (0.2-0.5 ms on
# the VMs this was measured on) is over before another thread could use the
# turn, and handing the gate over and back cost more CPU than it saved; a slow
# one (a busy disk, a spinning one: several ms) would hold every other thread
# back for as long.
SLOW_DISK_SECONDS = 0.001
DISK_AVERAGE_WEIGHT = 0.2  # of the newest fsync in the moving average
# A document that holds a send slot stays out of the gate (keep_out) only when
# the peer has been slow: while the average of the last requests is above this.
# Then the slots are what limits the pace, and the wait for another thread's
# local work would be added to every slot's turn; with a peer that answers at
# once the CPU is the limit, and the slot's holder takes its turn like the rest.
SLOW_PEER_SECONDS = 0.020
NETWORK_AVERAGE_WEIGHT = 0.1  # of the newest request in the moving average


class Gate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.disk_seconds = 0.0  # moving average of the waits for the disk
        self.network_seconds = 0.0  # moving average of the requests

    def mine(self) -> bool:
        """Whether the calling thread holds the gate."""
        held: bool = getattr(self._local, "held", False)
        return held

    @contextmanager
    def held(self) -> Iterator[None]:
        """The calling thread's local work, one thread at a time (re-entrant)."""
        if self.mine():
            yield
            return
        self._lock.acquire()
        self._local.held = True
        try:
            yield
        finally:
            self._local.kept_out = False
            if self.mine():  # (not if it was kept out to the end: see keep_out)
                self._local.held = False
                self._lock.release()

    @contextmanager
    def released(self) -> Iterator[None]:
        """A wait: the gate is free for the others until it ends (a no-op for a
        thread that does not hold it)."""
        if not self.mine():
            yield
            return
        self._local.held = False
        self._lock.release()
        try:
            yield
        finally:
            if not getattr(self._local, "kept_out", False):  # else: back at rejoin
                self._lock.acquire()
                self._local.held = True

    @contextmanager
    def network_wait(self) -> Iterator[None]:
        """A request and its answer: the gate is free meanwhile; each is timed into
        the average that :meth:`keep_out` reads."""
        with self.released(), self._timed("network_seconds", NETWORK_AVERAGE_WEIGHT):
            yield

    def keep_out(self) -> None:
        """From the calling thread's next wait on, it stays out of the gate until
        :meth:`rejoin` (or the end of its unit of work): for a document that holds
        a send slot, so that what the slot waits for (its request, the answer, the
        commit of its outcome) never waits for another thread's local work. Only
        while the average request is slower than ``SLOW_PEER_SECONDS``; a no-op
        for a thread that does not hold the gate."""
        if self.mine() and self.network_seconds > SLOW_PEER_SECONDS:
            self._local.kept_out = True

    def rejoin(self) -> None:
        """Back under the gate after :meth:`keep_out` (waiting for it if the thread
        left it meanwhile); the thread must hold no lock a holder may wait for."""
        if not getattr(self._local, "kept_out", False):
            return
        self._local.kept_out = False
        if not self.mine():  # it left at a wait since keep_out
            self._lock.acquire()
            self._local.held = True

    @contextmanager
    def disk_wait(self) -> Iterator[None]:
        """A wait for the disk (an fsync, a commit's): the gate is free meanwhile if
        the disk has been slow (``SLOW_DISK_SECONDS``), kept otherwise. Every wait
        is timed into the average, so a disk that slows down is noticed within
        a few fsyncs."""
        slow = self.disk_seconds > SLOW_DISK_SECONDS
        with (
            self.released() if slow else contextlib.nullcontext(),
            self._timed("disk_seconds", DISK_AVERAGE_WEIGHT),
        ):
            yield

    @contextmanager
    def _timed(self, average: str, weight: float) -> Iterator[None]:
        """Time the block into the moving average named ``average``."""
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            # (threads may race here: a lost update only delays the average)
            before: float = getattr(self, average)
            setattr(self, average, before + (took - before) * weight)

    def lock(self, *, reentrant: bool = False) -> GateAwareLock:
        """A lock that may be held across a released wait (see :class:`GateAwareLock`)."""
        return GateAwareLock(self, threading.RLock() if reentrant else threading.Lock())


class GateAwareLock:
    """A lock that a thread may hold across a wait with the gate released (the
    queue's, held through a commit's fsync; the API token's, held while a new
    one is fetched): a thread that finds it taken waits for it with the gate
    released, so the holder can take the gate back and finish."""

    def __init__(self, gate: Gate, lock: threading.Lock | threading.RLock) -> None:
        self._gate = gate
        self._lock = lock

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            with self._gate.released():
                self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


GATE = Gate()
"""The process's gate: the GIL it spares is the process's too."""
