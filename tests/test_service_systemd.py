"""The daemon as systemd runs it (Type=notify): a real ``chartdrop run``
subprocess, a real AF_UNIX datagram socket as $NOTIFY_SOCKET, the real sandbox
over HTTP; SIGTERM, SIGHUP and a wedged worker."""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from conftest import DEST_ID, Sandbox, wait_until, write_config
from daemonproc import NotifySocket, TricklingPeer, daemon_process

from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar

STATUS_LINE = re.compile(
    r"^\d+ queued, \d+ in flight, \d+ failed(; not responding: [a-z0-9, -]+)?$"
)
LABS_ID = "5a1b7e0c-0000-4000-8000-00000000ab50"


def drop(inbox: Path, name: str, sidecar: dict[str, Any] | None = None) -> None:
    """Sidecar first, then the document, each written under a junk name and renamed."""
    tmp = inbox / f".{name}.json.part"
    tmp.write_text(json.dumps(sidecar or sample_sidecar()))
    tmp.rename(inbox / f"{name}.json")
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(sample_pdf(name))
    tmp.rename(inbox / name)


def pauses(tmp_path: Path) -> list[Any]:
    with Queue.open_readonly(tmp_path / "state" / "chartdrop.sqlite3") as queue:
        return queue.pauses()


def jobs(tmp_path: Path, *states: JobState, destination: str | None = None) -> list[Any]:
    db = tmp_path / "state" / "chartdrop.sqlite3"
    if not db.exists():
        return []
    with Queue.open_readonly(db) as queue:
        found = queue.jobs(states=states, limit=1000)
    return [j for j in found if destination is None or j.destination == destination]


def add_destination(config: Path, name: str, dest_id: str) -> None:
    for sub in ("inbox", "done", "failed"):
        (config.parent / name / sub).mkdir(parents=True, exist_ok=True)
    block = (
        f'\n[[destination]]\nname = "{name}"\ninbox = "{name}/inbox"\ndone = "{name}/done"\n'
        f'failed = "{name}/failed"\nredox_destination_id = "{dest_id}"\n'
        '[destination.defaults]\nMedia = { Availability = "Available" }\n'
    )
    config.write_text(config.read_text() + block)


def test_notify_ready_status_watchdog_and_stopping(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    notify = NotifySocket(f"@chartdrop-test-{uuid.uuid4().hex}")  # abstract namespace
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"}
    try:
        with daemon_process(config, env) as daemon:
            (ready,) = wait_until(lambda: notify.with_key("READY", "1"))
            assert ready.fields["STATUS"] == "0 queued, 0 in flight, 0 failed"
            # pings every WATCHDOG_USEC / 2 from the main loop
            wait_until(lambda: len(notify.with_key("WATCHDOG", "1", since=ready.at)) >= 4)
            drop(tmp_path / "consents" / "inbox", "Bixby_Timothy_2008-01-06.pdf")
            wait_until(lambda: jobs(tmp_path, JobState.DONE))
            daemon.signal(signal.SIGTERM)
            assert daemon.stop() == 0, daemon.stderr()
        stopping = notify.with_key("STOPPING", "1")
        assert len(stopping) == 1
        assert not notify.with_key("WATCHDOG", since=stopping[0].at + 0.01)
        statuses = [m.fields["STATUS"] for m in notify.with_key("STATUS")]
        assert len(statuses) >= 2
        for text in statuses[:-1]:  # the last one says it is stopping
            assert STATUS_LINE.match(text), text
        every = " ".join(str(m.fields) for m in notify.all())
        assert "Bixby" not in every and "Timothy" not in every
    finally:
        notify.close()


def test_a_wedged_worker_stops_the_watchdog_pings_until_it_recovers(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A peer that answers one byte every 0.3 s never trips httpx's 1 s read
    timeout: the worker is stuck in that request for as long as the peer likes.
    Its heartbeat goes stale after its allowance (longest timeout or the database's
    10 s busy timeout, plus 5 s); the main loop stops pinging; systemd would kill
    and restart the service. When the peer lets go, the pings resume."""
    peer = TricklingPeer(every=0.3)
    config = write_config(
        tmp_path,
        sandbox,
        workers=1,
        connect_timeout_seconds=1,
        read_timeout_seconds=1,
        write_timeout_seconds=1,
        pool_timeout_seconds=1,
        shutdown_grace_seconds=1,
    )
    text = config.read_text().replace(sandbox.url, peer.url)
    config.write_text(text)
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"}
    try:
        with daemon_process(config, env) as daemon:
            wait_until(lambda: notify.with_key("READY", "1"))
            wait_until(lambda: len(notify.with_key("WATCHDOG", "1")) >= 2)
            drop(tmp_path / "consents" / "inbox", "scan.pdf")
            wait_until(lambda: peer.connections >= 1)
            (unhealthy,) = wait_until(lambda: daemon.logs("daemon.unhealthy"), timeout=30)
            (stalled,) = unhealthy["stalled"]  # one of the two delivery threads (1 worker)
            assert stalled in ("worker-0", "worker-1")
            stalled_at = time.monotonic()
            time.sleep(3)  # six ping intervals
            late = notify.with_key("WATCHDOG", since=stalled_at + 0.6)
            assert late == [], "pinged the watchdog while a worker was wedged"
            assert any(
                f"not responding: {stalled}" in m.fields["STATUS"]
                for m in notify.with_key("STATUS")
            )
            assert daemon.proc.poll() is None  # still running: systemd decides what to do
            peer.release()
            wait_until(lambda: daemon.logs("daemon.healthy"), timeout=20)
            healthy_at = time.monotonic()
            wait_until(lambda: len(notify.with_key("WATCHDOG", "1", since=healthy_at)) >= 2)
            # nothing lost: the document waits in the queue for the peer to come back
            assert len(jobs(tmp_path, JobState.QUEUED, JobState.LEASED)) == 1
            assert not jobs(tmp_path, JobState.FAILED)
    finally:
        notify.close()
        peer.close()


def test_sighup_adds_removes_and_refuses_destinations_without_losing_jobs(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    original = config.read_text()
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    env = {"NOTIFY_SOCKET": notify.address}

    def reload(expect: str) -> dict[str, Any]:
        before = len(daemon.logs(expect))
        since = time.monotonic()
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: len(daemon.logs(expect)) > before)
        wait_until(lambda: notify.with_key("READY", "1", since=since))
        assert notify.with_key("RELOADING", "1", since=since)
        return daemon.logs(expect)[-1]

    try:
        with daemon_process(config, env) as daemon:
            wait_until(lambda: notify.with_key("READY", "1"))

            # added: a new destination is watched and delivered to
            add_destination(config, "labs", LABS_ID)
            assert reload("daemon.reloaded")["added"] == ["labs"]
            drop(tmp_path / "labs" / "inbox", "lab.pdf")
            wait_until(lambda: jobs(tmp_path, JobState.DONE, destination="labs"))
            sent_to = [r.body["Meta"]["Destinations"][0]["ID"] for r in sandbox.state.received()]
            assert sent_to == [LABS_ID]
            assert list((tmp_path / "labs" / "done").rglob("lab.pdf"))

            # removed while it has queued jobs: they stay queued, and are reported
            sandbox.state.set_faults(outage=True)
            drop(tmp_path / "consents" / "inbox", "a.pdf")
            drop(tmp_path / "consents" / "inbox", "b.pdf")
            wait_until(lambda: len([j for j in jobs(tmp_path, JobState.QUEUED) if j.attempts]) == 2)
            wait_until(lambda: pauses(tmp_path))  # the outage paused it
            consents_block = original[original.index("[[destination]]") :]
            config.write_text(config.read_text().replace(consents_block, ""))
            assert reload("daemon.reloaded")["removed"] == ["consents"]
            assert pauses(tmp_path) == []  # no pause outlives its destination
            report = daemon.logs("daemon.destination_not_configured")[-1]
            assert report["destination"] == "consents" and report["count"] == 2
            sandbox.state.reset_faults()
            time.sleep(1.0)  # several retry rounds for a configured destination
            waiting = jobs(tmp_path, JobState.QUEUED, JobState.LEASED, destination="consents")
            assert len(waiting) == 2
            assert not jobs(tmp_path, JobState.FAILED)
            assert len(list((tmp_path / "state" / "spool").glob("*.document"))) == 2

            # a bad file is refused, every problem logged, the running config kept
            good = config.read_text()
            config.write_text("bogus = 1\n" + good.replace("workers = 2", 'workers = "many"'))
            refused = reload("daemon.reload_refused")
            assert any(p.startswith("workers:") for p in refused["problems"])
            assert any(p.startswith("bogus:") for p in refused["problems"])
            drop(tmp_path / "labs" / "inbox", "lab2.pdf")
            wait_until(lambda: len(jobs(tmp_path, JobState.DONE, destination="labs")) == 2)

            # configured again: the waiting jobs go out
            config.write_text(good + "\n" + consents_block)
            assert reload("daemon.reloaded")["added"] == ["consents"]
            wait_until(lambda: len(jobs(tmp_path, JobState.DONE, destination="consents")) == 2)
            assert daemon.stop() == 0, daemon.stderr()
        dest_ids = [r.body["Meta"]["Destinations"][0]["ID"] for r in sandbox.state.received()]
        assert dest_ids.count(DEST_ID) == 2
        assert "Traceback" not in daemon.stderr()
    finally:
        notify.close()
