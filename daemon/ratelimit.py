"""Rate limits: keep every request chartdrop sends within its destination's quota.

One token bucket per quota, shared by every worker thread:

- ``redox``: ``[redox] max_requests_per_minute`` (default 1,200: 6,000 per 5
  minutes, under Redox's 7,500 per source). Every Redox destination draws from
  it, for both sending routes: ``/endpoint`` and the blob ``/upload``.
- ``fhir:<name>``: a FHIR destination's own ``max_requests_per_minute``
  (none: no limit, but a 429 still pauses it).

The buckets meter the requests themselves, not jobs: :meth:`RateLimits.on_request`
is an httpx request hook, so a resend after a refused token and an upload
before a send each take a token, and token requests take none. The worker
thread says which destination it is sending for (:meth:`RateLimits.sending`).

A token bucket holds up to ``burst`` tokens (one second's worth) and gains
``per_minute / 60`` a second; a request takes one, waiting for it if it must.
A wait longer than ``max_wait`` raises :class:`Throttled` instead, and the
request is not sent: the worker puts its job back unburnt, and the destination
is held back from claims until the bucket has a token.

A ``429 Too Many Requests`` pauses the whole bucket (:meth:`RateLimits.pause`)
for its ``Retry-After``: no request of any job of those destinations starts
before it has elapsed. Waits use the monotonic clock; ``clock`` and ``sleep``
are injectable, so the buckets are tested without waiting.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from daemon.config import Destination, RedoxSettings, Settings

__all__ = ["MAX_WAIT_SECONDS", "RateLimits", "Throttled", "TokenBucket"]

# The longest a request waits in a worker for a token; longer, and the job is
# put back and the destination held back from claims instead (a worker never
# sits on a lease for a long pause).
MAX_WAIT_SECONDS = 5.0


class Throttled(Exception):  # noqa: N818 - it is not an error: nothing was sent
    """The request was not sent: its bucket has no token for ``wait`` seconds."""

    def __init__(self, bucket: str, wait: float) -> None:
        super().__init__(f"rate limit of {bucket}: no request for {wait:.1f} s")
        self.bucket = bucket
        self.wait = wait


class TokenBucket:
    """A thread-safe token bucket. ``per_minute`` None: unlimited (pauses still hold)."""

    def __init__(
        self,
        per_minute: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        name: str = "bucket",
    ) -> None:
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._stamp = clock()  # tokens are counted up to this instant
        self._paused_until = -math.inf
        self._rate = math.inf
        self._burst = 1.0
        self._tokens = math.inf
        self.set_rate(per_minute)  # starts full: one burst

    @property
    def per_minute(self) -> float | None:
        return None if math.isinf(self._rate) else self._rate * 60

    @property
    def burst(self) -> float:
        return self._burst

    def set_rate(self, per_minute: float | None) -> None:
        """A new rate (a reload); tokens and a pause carry over."""
        with self._lock:
            self._refill(self._clock())
            self._rate = math.inf if per_minute is None else per_minute / 60.0
            self._burst = 1.0 if per_minute is None else max(1.0, per_minute / 60.0)
            self._tokens = min(self._tokens, self._burst)
            if per_minute is None:
                self._tokens = max(self._tokens, 1.0)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            if math.isinf(self._rate):
                self._tokens = max(self._tokens, self._burst)
            else:
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def reserve(self, max_wait: float = math.inf) -> float:
        """Take a token; the seconds to wait before using it. ``Throttled`` (and
        nothing taken) if that wait would be longer than ``max_wait``."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            ready = max(self._paused_until, self._stamp)
            if self._tokens < 1.0 and not math.isinf(self._rate):
                ready = max(ready, self._stamp + (1.0 - self._tokens) / self._rate)
            wait = max(0.0, ready - now)
            if wait > max_wait:
                raise Throttled(self.name, wait)
            if not math.isinf(self._rate):
                self._tokens -= 1.0  # below zero: reserved by those waiting before us
            return wait

    def acquire(self, max_wait: float = math.inf) -> float:
        """:meth:`reserve`, then wait for it; returns the seconds waited. A pause
        that began while this waited holds it too (``Throttled`` if too long)."""
        waited = self.reserve(max_wait)
        if waited > 0:
            self._sleep(waited)
        while (rest := self.paused_for()) > 0:
            if waited + rest > max_wait:
                raise Throttled(self.name, rest)
            self._sleep(rest)
            waited += rest
        return waited

    def pause(self, seconds: float) -> None:
        """Nothing is let through for ``seconds`` (a 429's Retry-After); then the
        bucket starts again from empty, so requests resume at the rate, not in a burst."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            until = now + max(0.0, seconds)
            if until > self._paused_until:
                self._paused_until = until
                self._tokens = min(self._tokens, 0.0) if not math.isinf(self._rate) else 1.0
                self._stamp = max(self._stamp, until)

    def paused_for(self) -> float:
        """Seconds left of a pause (0 if none)."""
        with self._lock:
            return max(0.0, self._paused_until - self._clock())


REDOX = "redox"


def bucket_name(dest: Destination) -> str:
    return f"fhir:{dest.name}" if dest.model == "FHIR" else REDOX


class RateLimits:
    """The daemon's buckets, by quota, and the httpx hook that meters requests."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = MAX_WAIT_SECONDS,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}
        self._local = threading.local()
        self._routes: tuple[RedoxSettings, tuple[httpx.URL, httpx.URL]] | None = None
        self.settings = settings
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Set every bucket's rate from ``settings`` (at start and on reload: a
        bucket's tokens and pause carry over)."""
        rates: dict[str, float | None] = {REDOX: settings.redox.max_requests_per_minute}
        for dest in settings.destination:
            if dest.model == "FHIR":
                rates[bucket_name(dest)] = dest.max_requests_per_minute
        with self._lock:
            self.settings = settings
            for name, per_minute in rates.items():
                bucket = self._buckets.get(name)
                if bucket is None:
                    self._buckets[name] = TokenBucket(
                        per_minute, clock=self._clock, sleep=self._sleep, name=name
                    )
                elif bucket.per_minute != per_minute:
                    bucket.set_rate(per_minute)

    def bucket(self, dest: Destination) -> TokenBucket:
        name = bucket_name(dest)
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None:  # a destination the settings do not have (yet)
                bucket = self._buckets[name] = TokenBucket(
                    None, clock=self._clock, sleep=self._sleep, name=name
                )
            return bucket

    def sharing(self, dest: Destination) -> list[str]:
        """The destinations whose requests draw from ``dest``'s bucket (itself included)."""
        name = bucket_name(dest)
        names = {d.name for d in self.settings.destination if bucket_name(d) == name}
        return sorted(names | {dest.name})

    def pause(self, dest: Destination, seconds: float) -> None:
        """A 429: nothing more goes to ``dest``'s quota for ``seconds``."""
        self.bucket(dest).pause(seconds)

    # -- metering ---------------------------------------------------------

    @contextmanager
    def sending(self, dest: Destination) -> Iterator[None]:
        """The calling thread's requests are for ``dest`` until the block ends."""
        previous = getattr(self._local, "dest", None)
        self._local.dest = dest
        try:
            yield
        finally:
            self._local.dest = previous

    def watch(self, client: httpx.Client) -> None:
        """Meter the requests ``client`` sends (idempotent)."""
        with self._lock:  # two workers must not both add it (each request would count twice)
            hooks = client.event_hooks
            if self.on_request not in hooks["request"]:
                client.event_hooks = {
                    "request": [*hooks["request"], self.on_request],
                    "response": hooks["response"],
                }

    def on_request(self, request: httpx.Request) -> None:
        """httpx request hook: a request to a sending route takes a token of its
        destination's bucket (waiting up to ``max_wait``), or raises :class:`Throttled`."""
        dest: Destination | None = getattr(self._local, "dest", None)
        if dest is None or not self._is_sending_route(dest, request):
            return
        self.bucket(dest).acquire(self.max_wait)

    def _is_sending_route(self, dest: Destination, request: httpx.Request) -> bool:
        if request.method != "POST":
            return False
        if dest.model == "FHIR":
            return request.url.path.endswith("/Media")
        return request.url in self._redox_routes()

    def _redox_routes(self) -> tuple[httpx.URL, httpx.URL]:
        """Redox's sending URLs, parsed once per settings (not on every request)."""
        redox = self.settings.redox
        cached = self._routes
        if cached is None or cached[0] is not redox:
            urls = (httpx.URL(f"{redox.api_url}/endpoint"), httpx.URL(redox.upload_url))
            cached = self._routes = (redox, urls)
        return cached[1]
