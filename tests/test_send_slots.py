"""Send slots (daemon/slots.py): ``workers`` documents at the peer at once, while
the other delivery threads prepare the next ones; a thread that waits for a slot
beats its heartbeat, gives its job back unburnt at shutdown, and does not send a
job whose lease ran low while it waited."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, running, wait_until, write_config

from daemon.breaker import AUTH, Breakers
from daemon.config import load_settings
from daemon.delivery import Deliverer
from daemon.fhir import FhirClient
from daemon.filing import Filer
from daemon.http import make_http_client
from daemon.outgoing import Sender
from daemon.queue import JobState, Queue
from daemon.redox import RedoxClient
from daemon.samples import sample_pdf, sample_sidecar
from daemon.slots import InFlightKeys, NotNow, SendSlots, Slot


def _hold(slots: SendSlots, n: int) -> None:
    for _ in range(n):
        assert slots.acquire()


def test_no_more_holders_than_the_limit_and_each_release_lets_one_in() -> None:
    slots = SendSlots(2)
    _hold(slots, 2)
    got: list[int] = []

    def taker(i: int) -> None:
        slots.acquire()
        got.append(i)

    threads = [threading.Thread(target=taker, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: slots.waiting == 3)
    assert got == [] and slots.in_use == 2
    slots.release()
    wait_until(lambda: len(got) == 1)
    assert slots.waiting == 2 and slots.in_use == 2  # the other two wait on
    slots.release()  # the main thread's other slot
    slots.release()  # (the first taker's)
    wait_until(lambda: len(got) == 3)
    assert slots.in_use == 2 and sorted(got) == [0, 1, 2]


def test_resize_up_lets_waiters_in_and_down_holds_new_takers_back() -> None:
    slots = SendSlots(1)
    _hold(slots, 1)
    done = threading.Event()

    def take() -> None:
        slots.acquire()
        done.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    wait_until(lambda: slots.waiting == 1)
    assert not done.is_set()
    slots.resize(2)  # a reload raising workers
    assert done.wait(5)
    slots.resize(1)  # lowering it: the two in use finish, nobody new until below 1
    slots.release()
    assert slots.acquire(stopping=_set_event()) is False
    slots.release()
    assert slots.acquire() and slots.in_use == 1


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def test_a_waiting_thread_beats_and_gives_up_when_stopping() -> None:
    slots = SendSlots(1)
    _hold(slots, 1)
    stopping = threading.Event()
    beats: list[float] = []
    outcome: list[str] = []

    def wait_for_slot() -> None:
        slot = Slot(slots, stopping=stopping, beat=lambda: beats.append(time.monotonic()))
        try:
            slot.take()
            outcome.append("took")
        except NotNow as exc:
            outcome.append(exc.reason)

    t = threading.Thread(target=wait_for_slot, daemon=True)
    t.start()
    wait_until(lambda: len(beats) >= 2, timeout=5)  # one beat per wait step (1 s)
    stopping.set()
    slots.wake_all()
    t.join(5)
    assert outcome == ["the daemon is stopping"]
    assert slots.in_use == 1  # nothing taken by the one that gave up


def test_a_slot_is_given_back_once_and_at_the_end_of_its_block() -> None:
    slots = SendSlots(1)
    with Slot(slots) as slot:
        slot.take()
        slot.take()  # held already: not a second slot
        assert slots.in_use == 1
        slot.give_back()
        slot.give_back()
        assert slots.in_use == 0
        slot.take()
    assert slots.in_use == 0


def test_the_peer_never_has_more_than_workers_documents_while_threads_prepare_ahead(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A real daemon, 2 workers (4 delivery threads), a peer answering in 0.3 s:
    at most 2 requests are ever at the peer, both slots are used, more than 2
    jobs are leased at once (the other threads prepared theirs), and every
    document is delivered exactly once."""
    sandbox.state.set_faults(latency_seconds=0.3)
    leased_most = 0
    with running(write_config(tmp_path, sandbox, workers=2)) as r:
        for i in range(10):
            r.drop(f"doc{i}.pdf", sample_pdf(f"Doc {i}"), sample_sidecar(mrn=f"{i:010d}"))

        def all_done() -> bool:
            nonlocal leased_most
            leased_most = max(leased_most, len(r.jobs(JobState.LEASED)))
            return len(r.jobs(JobState.DONE)) == 10

        wait_until(all_done, timeout=60, interval=0.02)
    assert sandbox.state.most_in_flight == 2
    assert leased_most > 2
    document_ids = [
        x.body["Media"]["DocumentID"] for x in sandbox.state.received() if "Media" in x.body
    ]
    assert len(document_ids) == 10 and len(set(document_ids)) == 10


def test_shutdown_gives_a_waiting_job_back_unburnt(tmp_path: Path, sandbox: Sandbox) -> None:
    """1 worker (2 threads), a peer answering in 1.5 s: at a stop, the document at
    the peer finishes within the grace; the one prepared and waiting for the slot
    goes back to the queue with no attempt counted and was never sent."""
    sandbox.state.set_faults(latency_seconds=1.5)
    config = write_config(tmp_path, sandbox, workers=1, shutdown_grace_seconds=10)
    with running(config) as r:
        r.drop("a.pdf", sample_pdf("A"), sample_sidecar(mrn="0000000001"))
        r.drop("b.pdf", sample_pdf("B"), sample_sidecar(mrn="0000000002"))
        wait_until(lambda: len(r.jobs(JobState.LEASED)) == 2 and sandbox.state.most_in_flight)
        r.stop()
    with Queue(r.settings.database_path) as queue:
        jobs = queue.jobs(limit=10)
    assert sorted(j.state for j in jobs) == [JobState.DONE, JobState.QUEUED]
    waiting = next(j for j in jobs if j.state == JobState.QUEUED)
    assert waiting.attempts == 0
    sent = [x.body["Media"]["DocumentID"] for x in sandbox.state.received()]
    assert sent == [next(j for j in jobs if j.state == JobState.DONE).document_id]
    assert waiting.document_id not in sent


@pytest.mark.parametrize("meanwhile", ["lease_ran_low", "circuit_opened"])
def test_a_job_held_back_while_it_waited_for_its_slot_is_not_sent(
    tmp_path: Path, sandbox: Sandbox, meanwhile: str
) -> None:
    """The deliverer on an injected clock, the only slot held elsewhere. While the
    job waits, the clock passes half its lease (another thread may claim it once
    the lease ends: sending it now could send it twice), or its destination's
    circuit opens (refused credentials). Given the slot, the job goes back to the
    queue unburnt and nothing is sent; later it goes under its DocumentID."""
    now = [1_800_000_000.0]
    settings = load_settings(write_config(tmp_path, sandbox, workers=1, lease_seconds=60))
    settings.spool_dir.mkdir(parents=True)
    pdf = sample_pdf("Held")
    (settings.spool_dir / "d").write_bytes(pdf)
    (settings.spool_dir / "s").write_text(json.dumps(sample_sidecar()))
    with Queue(settings.database_path, clock=lambda: now[0]) as queue:
        job = queue.begin_intake(
            destination="consents", original_name="held.pdf", sidecar_name="held.pdf.json",
            spool_document=str(settings.spool_dir / "d"),
            spool_sidecar=str(settings.spool_dir / "s"),
        )  # fmt: skip
        queue.complete_intake(job.id, sha256=hashlib.sha256(pdf).hexdigest(), size=len(pdf))
        http = make_http_client(settings)
        try:
            sender = Sender(
                settings, RedoxClient(settings.redox, http), FhirClient(settings.fhir, http)
            )
            breakers = Breakers(queue, clock=lambda: now[0])
            deliverer = Deliverer(
                settings, queue, sender, Filer(settings, queue), breakers=breakers,
                clock=lambda: now[0],
            )  # fmt: skip
            deliverer.slots.acquire()  # another thread's document is at the peer
            first = queue.claim(lease_seconds=60)
            assert first is not None
            result: list[str] = []
            t = threading.Thread(target=lambda: result.append(deliverer.process(first)))
            t.start()
            wait_until(lambda: deliverer.slots.waiting == 1)
            assert result == []  # waiting for the slot
            dest = settings.destination[0]
            if meanwhile == "lease_ran_low":
                now[0] += 31  # more than half of the 60 s lease
            else:
                breakers.failure(dest, AUTH, "credentials refused")
            deliverer.slots.release()
            t.join(10)
            assert result == ["queued"]
            again = queue.get(job.id)
            assert again is not None and again.state == JobState.QUEUED
            assert again.attempts == 0 and sandbox.state.received() == []
            assert deliverer.slots.in_use == 0
            if meanwhile == "circuit_opened":
                breakers.success(dest.name)  # the credentials were fixed
            leased = queue.claim(lease_seconds=60)
            assert leased is not None and deliverer.process(leased) == "sent"
        finally:
            http.close()
    (received,) = sandbox.state.received()
    assert received.body["Media"]["DocumentID"] == job.document_id


@pytest.mark.parametrize("workers", [1, 3])
def test_the_daemon_runs_threads_per_slot_and_the_slots_follow_workers(
    tmp_path: Path, sandbox: Sandbox, workers: int
) -> None:
    with running(write_config(tmp_path, sandbox, workers=workers)) as r:
        names = {t.name for t in threading.enumerate() if t.name.startswith("worker-")}
        assert len(names) == 2 * workers
        assert r.service.deliverer.slots.limit == workers


def test_a_duplicate_key_is_held_by_one_job_at_a_time() -> None:
    keys = InFlightKeys()
    stopping = threading.Event()
    first, other = ("consents", "ab12", "p1"), ("consents", "ab12", "p2")
    assert keys.acquire(first) and keys.acquire(other)  # another patient: no wait
    got: list[bool] = []
    beats: list[float] = []
    t = threading.Thread(
        target=lambda: got.append(
            keys.acquire(first, stopping=stopping, beat=lambda: beats.append(time.monotonic()))
        ),
        daemon=True,
    )
    t.start()
    wait_until(lambda: keys.waiting == 1 and beats)  # waiting, and beating while it waits
    assert got == []
    keys.release(first)
    t.join(5)
    assert got == [True]
    stopping.set()  # held again (by the waiter): a new waiter gives up at shutdown
    assert keys.acquire(first, stopping=stopping) is False


def test_a_slot_gives_back_its_duplicate_key_with_it() -> None:
    slots, keys = SendSlots(1), InFlightKeys()
    key = ("consents", "ab12", "p1")
    with Slot(slots, keys=keys) as slot:
        slot.hold_key(key)
        slot.take()
        assert keys.acquire(key, stopping=_set_event()) is False  # held by the slot
        slot.give_back()
        assert slots.in_use == 0 and keys.acquire(key)


def test_a_free_slot_goes_to_the_job_claimed_first() -> None:
    """Threads wait in the order 3, 1, 2 (their jobs' claim order): the slots go
    out 1, 2, 3, so documents prepared ahead keep their arrival order."""
    slots = SendSlots(1)
    _hold(slots, 1)
    granted: list[int] = []
    lock = threading.Lock()

    def waiter(order: int) -> None:
        assert slots.acquire(order=order)
        with lock:
            granted.append(order)

    threads = []
    for order in (103, 101, 102):
        t = threading.Thread(target=waiter, args=(order,), daemon=True)
        t.start()
        threads.append(t)
        wait_until(lambda: slots.waiting == len(threads))  # each waits before the next comes
    for n in range(1, 4):
        slots.release()
        wait_until(lambda n=n: len(granted) == n)  # type: ignore[misc]
    assert granted == [101, 102, 103]


def test_a_job_claimed_first_goes_first_even_when_its_thread_is_slower() -> None:
    """The place in line is taken with the claim (enlist), not when the thread asks:
    on a loaded machine the thread of the job claimed second was ready first and
    sent the probe after an outage ahead of the oldest document."""
    slots = SendSlots(1)
    first, second = slots.enlist(), slots.enlist()
    granted: list[str] = []
    t = threading.Thread(
        target=lambda: granted.append("second") if slots.acquire(order=second) else None,
        daemon=True,
    )
    t.start()
    wait_until(lambda: slots.waiting == 1)
    assert granted == [] and slots.in_use == 0  # a free slot, but the first is still in line
    assert slots.acquire(order=first)  # no wait: first in line
    granted.append("first")
    slots.release()
    t.join(5)
    assert granted == ["first", "second"] and slots.in_line == 0


def test_a_job_that_goes_back_unsent_leaves_the_line() -> None:
    slots = SendSlots(1)
    with Slot(slots):  # claimed first, then put back (nothing taken)
        second = slots.enlist()
        assert slots.in_line == 2
    assert slots.in_line == 1
    assert slots.acquire(order=second, stopping=_set_event())  # free, and first in line now
    slots.release()


def test_a_job_waiting_for_its_duplicate_key_steps_out_of_the_line() -> None:
    """The copy claimed first waits for the key the copy claimed second holds: it
    steps out of the line (else neither would ever go) and back in, at its place,
    once it has the key."""
    slots, keys = SendSlots(1), InFlightKeys()
    key = ("consents", "sha", "patient")
    early, late = Slot(slots, keys=keys), Slot(slots, keys=keys)
    late.hold_key(key)
    early_done: list[bool] = []

    def early_copy() -> None:
        early.hold_key(key)  # waits for the late copy's outcome
        early.take()
        early_done.append(True)
        early.give_back()

    t = threading.Thread(target=early_copy, daemon=True)
    t.start()
    wait_until(lambda: keys.waiting == 1)
    taker = threading.Thread(target=late.take, daemon=True)
    taker.start()
    taker.join(5)
    assert late.held  # not held back by the early copy waiting for the key
    assert early_done == []
    late.give_back()  # its outcome is committed: the key and the slot are free
    t.join(5)
    assert early_done == [True] and slots.in_use == 0 and slots.in_line == 0


def test_a_job_whose_delivery_crashed_leaves_the_line(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job joins the line with its claim; if its delivery fails before it ever
    asks for a slot (a bug: ``worker.crashed_job``), the worker takes it out of
    the line, or every job claimed after it would wait for ever."""
    real = Deliverer.process
    crashed: list[str] = []

    def crash_once(self: Deliverer, job: Any, *, order: int | None = None) -> str:
        if not crashed:
            crashed.append(job.id)
            raise RuntimeError("a bug before the slot")
        return real(self, job, order=order)

    monkeypatch.setattr(Deliverer, "process", crash_once)
    config = write_config(tmp_path, sandbox, workers=1)
    with running(config) as r:
        r.drop("a.pdf", sample_pdf("A"), sample_sidecar(mrn="0000000001"))
        wait_until(lambda: crashed)
        r.drop("b.pdf", sample_pdf("B"), sample_sidecar(mrn="0000000002"))
        wait_until(
            lambda: [j.original_name for j in r.jobs(JobState.DONE)] == ["b.pdf"], timeout=20
        )
    assert [x.body["Media"]["FileName"] for x in sandbox.state.received()] == ["b.pdf"]
