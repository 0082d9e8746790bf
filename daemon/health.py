"""Heartbeats: is every worker and the observer still making progress?

The main loop pings systemd's watchdog (``WATCHDOG=1``) only while every
heartbeat is fresh, so a wedged worker or observer gets the service restarted
(``WatchdogSec=``); leases are reset at start and the job is resent with the
same DocumentID.

Each heartbeat has a deadline: the time by which its owner must beat again.

- A worker beats on every turn of its loop (while idle at least every
  ``IDLE_SPARE_SECONDS``, 5 s, and within half the allowance) and on every
  step of an HTTP request: httpx's ``trace`` extension reports each phase
  (connect, TLS, send headers, send body, wait for the response, read it) and
  each 64 KiB chunk of an upload body is a step. Every step is bounded by one
  of the client's timeouts, so a worker mid-send is alive while its request is
  within its timeouts; the allowance is the longest timeout (at least the
  database's busy timeout) plus a margin. A peer that trickles its response one
  byte at a time never trips httpx's per-read timeouts, and is exactly what
  this catches.
- The observer is beaten by the main loop's observer check: its thread is
  alive and the event it is dispatching is not stuck (the head of its event
  queue changes). The watcher only detects; a handler that blocks stops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from watchdog.observers.api import BaseObserver

from daemon.config import Settings
from daemon.queue_schema import BUSY_TIMEOUT_SECONDS

MARGIN_SECONDS = 5.0


def allowance_for(settings: Settings) -> float:
    """How long a worker may go without a beat: its longest single wait, plus a margin."""
    longest = max(
        settings.connect_timeout_seconds,
        settings.read_timeout_seconds,
        settings.write_timeout_seconds,
        settings.pool_timeout_seconds,
        BUSY_TIMEOUT_SECONDS,
    )
    return longest + MARGIN_SECONDS


class Health:
    """Named heartbeats with deadlines. Thread-safe; ``clock`` is injectable."""

    def __init__(self, allowance: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.allowance = allowance
        self.clock = clock
        self._lock = threading.Lock()
        self._deadlines: dict[str, float] = {}

    def beat(self, name: str, allowance: float | None = None) -> None:
        deadline = self.clock() + (self.allowance if allowance is None else allowance)
        with self._lock:
            self._deadlines[name] = deadline

    def beat_here(self) -> None:
        """Beat for the calling thread, if it has a heartbeat (a worker)."""
        name = threading.current_thread().name
        with self._lock:
            if name in self._deadlines:
                self._deadlines[name] = self.clock() + self.allowance

    def forget(self, name: str) -> None:
        with self._lock:
            self._deadlines.pop(name, None)

    def stalled(self) -> list[str]:
        """Names whose deadline has passed (thread names: no PHI)."""
        now = self.clock()
        with self._lock:
            return sorted(name for name, deadline in self._deadlines.items() if deadline < now)

    # -- HTTP --------------------------------------------------------------
    def watch_http(self, client: httpx.Client) -> None:
        """Beat the calling worker on every step of every request ``client`` makes."""

        def trace(_event: str, _info: dict[str, Any]) -> None:
            self.beat_here()

        def on_request(request: httpx.Request) -> None:
            self.beat_here()
            request.extensions = {**request.extensions, "trace": trace}
            if isinstance(request.stream, httpx.SyncByteStream):
                request.stream = _BeatingStream(request.stream, self.beat_here)

        hooks = client.event_hooks
        client.event_hooks = {
            "request": [*hooks["request"], on_request],
            "response": hooks["response"],
        }


class _BeatingStream(httpx.SyncByteStream):
    """A request body that beats as each chunk is handed to the socket."""

    def __init__(self, inner: httpx.SyncByteStream, beat: Callable[[], None]) -> None:
        self._inner = inner
        self._beat = beat

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._beat()
            yield chunk

    def close(self) -> None:
        self._inner.close()


class ObserverCheck:
    """Is the observer alive and dispatching? Called from the main loop."""

    def __init__(self, stuck_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after = stuck_after
        self.clock = clock
        self._head: object | None = None
        self._since = 0.0

    def healthy(self, observer: BaseObserver) -> bool:
        if not observer.is_alive():
            return False
        queue = observer.event_queue
        with queue.mutex:
            head = queue.queue[0] if queue.queue else None
        now = self.clock()
        if head is None or head is not self._head:
            self._head, self._since = head, now
            return True
        return now - self._since <= self.stuck_after
