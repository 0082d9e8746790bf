"""The token buckets, on a fake clock: the budget is never exceeded, a pause holds."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from conftest import Sandbox, write_config

from daemon.breaker import OUTAGE, RATE_LIMITED, Breakers
from daemon.config import load_settings
from daemon.delivery import Deliverer
from daemon.errors import ConfigError
from daemon.filing import Filer
from daemon.outgoing import Sender
from daemon.queue import Queue
from daemon.ratelimit import RateLimits, Throttled, TokenBucket
from daemon.redox import RedoxClient


class FakeClock:
    """A monotonic clock that only moves when something sleeps (thread-safe)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def most_in_window(times: Iterable[float], window: float) -> int:
    ordered = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        while ordered[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_the_budget_is_never_exceeded_in_any_window() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1200, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(5000):  # a backlog: every request wants to go at once
        bucket.acquire()
        sent.append(clock())
    assert bucket.burst == 20  # one second's worth
    assert most_in_window(sent, 60.0) <= 1200 + 20
    assert most_in_window(sent, 1.0) <= 20 + 20
    # and it does send at the rate: 5,000 requests take about 5,000 / 20 per second
    assert sent[-1] - sent[0] == pytest.approx((5000 - 20) / 20, rel=0.01)


def test_reservations_from_many_threads_are_spaced_at_the_rate() -> None:
    """Reservations made concurrently still come out one per 1/rate: the lock
    keeps the count of tokens consistent (no two threads take the same one)."""
    clock = FakeClock()  # frozen: nobody sleeps, so every reservation queues up
    bucket = TokenBucket(600, clock=clock, sleep=clock.sleep)  # 10 a second, burst 10
    waits: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait(10)
        for _ in range(50):
            wait = bucket.reserve()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(waits) == 400
    ready_at = sorted(clock() + w for w in waits)
    assert most_in_window(ready_at, 1.0) <= 10 + 10
    assert ready_at[-1] - clock() == pytest.approx((400 - 10) / 10, abs=1e-6)
    assert len({round(t, 9) for t in ready_at[10:]}) == 390  # one token each


def test_an_idle_bucket_allows_only_its_burst_at_once() -> None:
    clock = FakeClock()
    bucket = TokenBucket(120, clock=clock, sleep=clock.sleep)  # 2 a second
    clock.sleep(3600)  # an hour idle: tokens do not pile up beyond the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]


def test_a_wait_longer_than_allowed_throttles_without_taking_a_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock, sleep=clock.sleep)  # one a second, burst 1
    assert bucket.reserve(max_wait=0.5) == 0.0
    with pytest.raises(Throttled) as raised:
        bucket.reserve(max_wait=0.5)
    assert raised.value.wait == pytest.approx(1.0)
    clock.sleep(1.0)
    assert bucket.reserve(max_wait=0.5) == 0.0  # the throttled call took nothing


def test_a_pause_holds_every_request_until_it_ends_then_resumes_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1200, clock=clock, sleep=clock.sleep)
    bucket.pause(30)
    assert bucket.paused_for() == pytest.approx(30)
    with pytest.raises(Throttled) as raised:
        bucket.acquire(max_wait=5)
    assert raised.value.wait == pytest.approx(30, abs=0.1)
    paused_at = clock()
    sent = []
    for _ in range(40):
        bucket.acquire()
        sent.append(clock())
    assert min(sent) >= paused_at + 30  # nothing before the Retry-After elapsed
    assert most_in_window(sent, 1.0) <= 20  # and no burst after it: the bucket restarts empty


def test_a_pause_that_starts_while_a_request_waits_holds_it_too() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    waits: list[float] = []

    def sleep_then_429(seconds: float) -> None:
        clock.sleep(seconds)
        if not waits:
            waits.append(seconds)
            bucket.pause(10)  # another worker's request got a 429 meanwhile

    bucket._sleep = sleep_then_429
    start = clock()
    with pytest.raises(Throttled):
        bucket.acquire(max_wait=5)  # woke up inside the pause: not sent
    bucket._sleep = clock.sleep
    bucket.acquire(max_wait=60)
    assert clock() >= start + 1 + 10


def test_unlimited_bucket_still_honours_a_pause() -> None:
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    assert all(bucket.reserve() == 0.0 for _ in range(10_000))
    bucket.pause(2)
    assert bucket.acquire() == pytest.approx(2)
    assert bucket.reserve() == 0.0


def test_a_new_rate_keeps_the_bucket_state() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1200, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        bucket.reserve()
    bucket.set_rate(60)  # a reload lowers the quota: the spent tokens stay spent
    assert bucket.reserve() == pytest.approx(1.0)
    assert bucket.per_minute == 60


def test_buckets_from_the_config_redox_shared_fhir_own(tmp_path: Path, sandbox: Sandbox) -> None:
    gateway = (
        '[[destination]]\nname = "gateway"\ninbox = "g/inbox"\ndone = "g/done"\n'
        'failed = "g/failed"\nmodel = "FHIR"\nmax_requests_per_minute = 300\n'
    )
    fhir = sandbox.fhir_table()
    settings = load_settings(write_config(tmp_path, sandbox, fhir=fhir, tables=gateway))
    limits = RateLimits(settings)
    consents, fhir_dest = settings.destination
    assert limits.bucket(consents).per_minute == 1200  # the default
    assert limits.bucket(fhir_dest).per_minute == 300
    assert limits.bucket(consents) is not limits.bucket(fhir_dest)
    assert limits.sharing(consents) == ["consents"] and limits.sharing(fhir_dest) == ["gateway"]
    limits.pause(fhir_dest, 30)  # a FHIR server's 429 leaves Redox alone
    assert limits.bucket(fhir_dest).paused_for() > 29 and limits.bucket(consents).paused_for() == 0
    # a reload changes the rate of the same bucket (its tokens and pause carry over)
    bucket = limits.bucket(consents)
    limits.configure(
        load_settings(
            write_config(
                tmp_path,
                sandbox,
                redox={"max_requests_per_minute": 60},
                fhir=fhir,
                tables=gateway,
            )
        )
    )
    assert limits.bucket(consents) is bucket and bucket.per_minute == 60


def test_a_redox_destination_cannot_have_its_own_quota(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox, dest={"max_requests_per_minute": 10})
    with pytest.raises(ConfigError, match="max_requests_per_minute is only for model = 'FHIR'"):
        load_settings(config)


def test_a_hold_keeps_destinations_from_claims_until_it_ends(tmp_path: Path) -> None:
    clock = FakeClock()
    with Queue(tmp_path / "q.sqlite3", clock=clock) as queue:
        b = Breakers(queue, clock=clock, wall=clock)
        b.hold(["consents", "letters"], 2.0, "the destination asked us to slow down (HTTP 429)")
        assert b.blocked() == {"consents", "letters"}
        assert not b.admit("consents")
        assert {(p.destination, p.kind) for p in queue.pauses()} == {
            ("consents", RATE_LIMITED),
            ("letters", RATE_LIMITED),
        }
        b.success("consents")  # a send that was already under way: the hold stays
        assert b.blocked() == {"consents", "letters"}
        clock.sleep(2.0)
        assert b.blocked() == set() and b.admit("consents")
        b.success("consents")  # the first success after the hold lifts its pause
        assert [p.destination for p in queue.pauses()] == ["letters"]
        assert b.admit("letters")  # not a circuit: no probe, every job goes
        assert b.admit("letters")


def test_a_429_on_the_probe_of_an_open_circuit_does_not_block_it_for_ever(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The outage circuit's probe gets a 429: held for the Retry-After, then the
    next job probes (it is not left waiting for the probe's answer)."""
    settings = load_settings(write_config(tmp_path, sandbox))
    dest = settings.destination[0]
    clock = FakeClock()
    with Queue(tmp_path / "q.sqlite3") as queue:
        b = Breakers(queue, clock=clock)
        for _ in range(3):
            b.failure(dest, OUTAGE, "HTTP 503")
        clock.sleep(3600)
        assert b.admit(dest.name)  # the probe
        http = Sender(settings, RedoxClient(settings.redox, httpx.Client()), None)  # type: ignore[arg-type]
        d = Deliverer(settings, queue, http, Filer(settings, queue), breakers=b,
                      limits=RateLimits(settings, clock=clock, sleep=clock.sleep))  # fmt: skip
        d._too_many_requests(dest, 5.0)
        http.redox.http.close()
        assert b.blocked() == {dest.name}
        clock.sleep(5.0)
        assert b.blocked() == set()
        assert b.admit(dest.name)  # the next probe
