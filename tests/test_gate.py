"""The gate (daemon.gate): the daemon's local work one thread at a time, and
every wait of that work with the gate free for the others."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Sandbox, running, wait_until, write_config

from daemon import gate as gate_module
from daemon.filing import Filer
from daemon.gate import GATE, Gate
from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar


def _taken_by_another_within(gate: Gate, seconds: float) -> bool:
    """Whether another thread gets ``gate`` within ``seconds``."""
    got = threading.Event()

    def take() -> None:
        with gate.held():
            got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    ok = got.wait(seconds)
    t.join(5)
    return ok


def test_held_is_one_thread_at_a_time_and_reentrant() -> None:
    gate = Gate()
    with gate.held():
        with gate.held():  # re-entrant: no deadlock with itself
            assert gate.mine()
        assert gate.mine()
        assert not _taken_by_another_within(gate, 0.2)
    assert not gate.mine()
    assert _taken_by_another_within(gate, 5)


def test_released_frees_the_gate_for_its_length_and_takes_it_back() -> None:
    gate = Gate()
    with gate.held():
        with gate.released():
            assert not gate.mine()
            assert _taken_by_another_within(gate, 5)
        assert gate.mine()
        assert not _taken_by_another_within(gate, 0.2)
    with gate.released():  # a thread that does not hold it: nothing to free
        assert not gate.mine()


def test_a_gate_aware_lock_is_waited_for_without_the_gate() -> None:
    """A holds a lock across a wait with the gate released (the queue's through a
    commit's fsync, the API token's while a new one is fetched), then needs the
    gate back to finish. B, holding the gate, wants the lock: a lock made with
    ``Gate.lock`` lets B wait for it without the gate, so A finishes; a plain
    lock would leave both waiting for ever."""
    gate = Gate()
    lock = gate.lock()
    a_waits = threading.Event()
    b_asks = threading.Event()
    finished: list[str] = []

    def a() -> None:
        with gate.held(), lock:
            with gate.released():
                a_waits.set()
                b_asks.wait(5)  # the disk answers once B is waiting for the lock
            finished.append("a")

    def b() -> None:
        a_waits.wait(5)
        with gate.held():
            b_asks.set()
            with lock:
                finished.append("b")

    threads = [threading.Thread(target=f, daemon=True) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert finished == ["a", "b"]


def test_a_reentrant_gate_aware_lock_is_taken_again_by_its_holder() -> None:
    gate = Gate()
    lock = gate.lock(reentrant=True)
    with gate.held(), lock, lock:
        assert gate.mine()


def test_the_disk_frees_the_gate_once_it_is_slow_and_not_before() -> None:
    gate = Gate()
    with gate.held():
        with gate.disk_wait():  # a fast disk so far: the gate is kept
            assert gate.mine()
            time.sleep(0.02)  # a slow fsync
        while gate.disk_seconds <= gate_module.SLOW_DISK_SECONDS:
            with gate.disk_wait():
                time.sleep(0.02)
        with gate.disk_wait():  # slow on average now: the gate is free meanwhile
            assert not gate.mine()
            assert _taken_by_another_within(gate, 5)
        assert gate.mine()
        for _ in range(100):  # fast again
            with gate.disk_wait():
                pass
        with gate.disk_wait():
            assert gate.mine()


def test_a_slot_holder_kept_out_stays_out_until_it_rejoins_when_the_peer_is_slow() -> None:
    gate = Gate()
    with gate.held():
        gate.keep_out()  # the peer has been fast: nothing changes
        with gate.released():
            pass
        assert gate.mine()
        gate.rejoin()
        while gate.network_seconds <= gate_module.SLOW_PEER_SECONDS:
            with gate.network_wait():
                time.sleep(0.05)  # slow answers
        assert gate.mine()  # each wait gave the gate back at its end
        gate.keep_out()
        assert gate.mine()  # out only from its next wait on
        with gate.released():  # (a wait that does not move the average)
            assert not gate.mine()
        assert not gate.mine()  # the answer is in: still out (its commit, its slot)
        assert _taken_by_another_within(gate, 5)
        gate.rejoin()
        assert gate.mine()
        assert not _taken_by_another_within(gate, 0.2)
        gate.keep_out()
        with gate.released():
            pass
        assert not gate.mine()  # kept out to the end of the unit of work: no error
    assert not gate.mine()
    assert _taken_by_another_within(gate, 5)
    with gate.held():  # the next unit of work starts as usual
        with gate.released():
            pass
        assert gate.mine()


@pytest.mark.parametrize(("disk", "peer"), [("slow", "fast"), ("fast", "fast"), ("fast", "slow")])
def test_a_running_daemon_does_its_work_holding_the_gate_and_waits_without_it(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, disk: str, peer: str
) -> None:
    """A real daemon against the sandbox: the claims and the filing of its jobs
    run holding the gate; every request runs with the gate free, and so does
    every fsync and fsynced commit when the disk is slow (kept when it is
    fast); while a document is at a slow peer, another thread takes the gate
    at once. When the peer has been slow, a document's send is recorded
    without the gate (its slot waits for no one), and its filing with it."""
    slow = disk == "slow"
    slow_peer = peer == "slow"
    monkeypatch.setattr(gate_module, "SLOW_DISK_SECONDS", -1.0 if slow else 3600.0)
    monkeypatch.setattr(gate_module, "SLOW_PEER_SECONDS", -1.0 if slow_peer else 3600.0)
    holding: dict[str, list[bool]] = {
        "claim": [], "file": [], "request": [], "fsync": [], "sent": []
    }  # fmt: skip
    daemon_threads: set[int] = set()

    def spy(kind: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() in daemon_threads:
                holding[kind].append(GATE.mine())
            return real(*args, **kwargs)

        return call

    real_claim = Queue.claim

    def claim(self: Queue, *args: Any, **kwargs: Any) -> Any:
        daemon_threads.add(threading.get_ident())  # a worker thread
        holding["claim"].append(GATE.mine())
        return real_claim(self, *args, **kwargs)

    monkeypatch.setattr(Queue, "claim", claim)
    monkeypatch.setattr(Filer, "finish_claimed", spy("file", Filer.finish_claimed))
    monkeypatch.setattr(Queue, "record_sent", spy("sent", Queue.record_sent))
    monkeypatch.setattr(httpx.Client, "send", spy("request", httpx.Client.send))
    monkeypatch.setattr(os, "fsync", spy("fsync", os.fsync))
    commits: list[bool] = []

    def traced(statement: str) -> None:
        if statement == "COMMIT" and threading.get_ident() in daemon_threads:
            commits.append(GATE.mine())

    sandbox.state.set_faults(latency_seconds=1.0)
    with running(write_config(tmp_path, sandbox, workers=1)) as r:
        r.queue._conn.set_trace_callback(traced)
        r.drop("a.pdf", sample_pdf("A"), sample_sidecar(mrn="0000000001"))
        wait_until(lambda: sandbox.state.most_in_flight, timeout=20, interval=0.01)
        assert _taken_by_another_within(GATE, 0.5)  # the document is at the peer
        wait_until(lambda: len(r.jobs(JobState.DONE)) == 1, timeout=20)
        r.drop("b.pdf", sample_pdf("B"), sample_sidecar(mrn="0000000002"))
        wait_until(lambda: len(r.jobs(JobState.DONE)) == 2, timeout=20)
    assert holding["claim"] and all(holding["claim"])
    assert len(holding["file"]) == 2 and all(holding["file"])
    assert holding["request"] and not any(holding["request"])  # the token's and the sends
    assert len(holding["fsync"]) >= 4  # snapshots, done/, spool
    assert len(holding["sent"]) == 2
    if slow_peer:  # the slot's holder: out of the gate until its send is recorded
        assert not any(holding["sent"])
        assert commits.count(False) == 2  # `sent`'s
    else:
        assert all(holding["sent"])
    if slow:  # the claims and `sent` wait for their fsync without the gate
        assert not any(holding["fsync"])
        assert commits.count(False) >= 4 and commits.count(True) >= 2  # `done`: no fsync
    elif slow_peer:  # done/'s dated folder, made for the commit of `sent`, too
        assert holding["fsync"].count(True) >= 4  # the snapshots, the filing, the spool
        assert commits.count(True) >= 4  # the claims' and `done`'s
    else:
        assert all(holding["fsync"]) and all(commits)
