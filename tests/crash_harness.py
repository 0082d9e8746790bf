"""The crash harness: the real daemon as a subprocess, killed with SIGKILL at random
moments while documents keep arriving, against the sandbox with transient errors.

Used by tests/test_crash.py (a short run in the default suite, the full run with
``-m slow``), and runnable on its own:

    uv run python tests/crash_harness.py --documents 1000 --kills 100

It prints its figures (documents, kills, deliveries, duplicates, lost, failed,
elapsed seconds) and exits non-zero if any check fails. The checks, after the
last restart has drained the queue:

* every document is in done/ or failed/ exactly once, with its sidecar; nothing
  is left in the inbox or the spool; no job is left unfinished in the database;
* only the deliberately bad documents (a sidecar without the patient) are in
  failed/, and none for a transient cause;
* every delivery the sandbox accepted carries the bytes of the original (sha256
  of the base64 body or of the uploaded blob), each document was delivered under
  exactly one DocumentID, and resends (deliveries beyond the first per
  DocumentID) are at most one per kill;
* no daemon log line contains a file name, and none holds a traceback;
* nothing is in done/ that the sandbox did not receive (``wrongly_in_done``).

The sandbox's injected errors are a mix (``error_mix``): 503s, 200s with an HTML
page (a proxy or captive portal: never success) and resets after storing (the
document arrived but the answer was cut: resent with the same DocumentID, a
resend the check attributes to the cut, not to a kill).
"""

from __future__ import annotations

import argparse
import base64
import bisect
import hashlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest, when run as a script

from conftest import CLIENT_ID, KEY_ID, Sandbox, counts_by_state, in_inbox, wait_until, write_config

from daemon.killpoints import ENV as KILLPOINT_ENV
from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar
from daemon.sandbox import SandboxServer, SandboxState, generate_keypair

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))
CANARY = "CANARY"  # in every dropped file name: must never reach a log line
UNFINISHED = (JobState.INTAKE, JobState.QUEUED, JobState.LEASED, JobState.SENT, JobState.REJECTED)
RECOVERED_WORK = ("leases_reset", "intake_finished", "intake_abandoned", "moves_finished")
TRANSIENT_KINDS = frozenset({"transient", "auth", "gave_up", "local_error", "destination_removed"})

# Small timings so a run takes seconds, not hours.
FAST = {
    "settle_seconds": 0.2,
    "rescan_seconds": 0.5,
    "retry_base_seconds": 0.05,
    "retry_cap_seconds": 0.5,
    "lease_seconds": 15,
    "shutdown_grace_seconds": 5,
    "workers": 2,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """``chartdrop run -c CONFIG`` as a real subprocess; its log goes to a file (a
    pipe nobody reads would fill and block it)."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.killed_at: list[float] = []  # wall clock, like the sandbox's records
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"run-{self.runs:04d}.log"

    def start(self, killpoint: str | None = None, env: Mapping[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        full_env = {k: v for k, v in os.environ.items() if k != KILLPOINT_ENV}
        full_env.update(env or {})
        if killpoint is not None:
            full_env[KILLPOINT_ENV] = killpoint
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [CHARTDROP, "run", "-c", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def wait_started(self, timeout: float = 60) -> bool:
        """Wait until this run logged ``daemon.started``; False if it died first."""
        path = self.log_path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b'"daemon.started"' in path.read_bytes():
                return True
            if not self.alive():
                return False
            time.sleep(0.02)
        raise AssertionError(f"the daemon did not start within {timeout}s")

    def wait_database_open(self, timeout: float = 60) -> bool:
        """Wait until the process has its database open: it is in start-up, past
        the lock and before (or in) recovery. False if it died first."""
        assert self.proc is not None
        fds = Path(f"/proc/{self.proc.pid}/fd")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                targets = [os.readlink(fd) for fd in fds.iterdir()]
            except OSError:  # gone, or an fd closed while we looked
                targets = []
            if any(t.endswith("chartdrop.sqlite3") for t in targets):
                return True
            if not self.alive():
                return False
            time.sleep(0.005)
        raise AssertionError(f"the daemon did not open its database within {timeout}s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL and reap; the return code (-9, or the code if it had exited)."""
        assert self.proc is not None
        self.killed_at.append(time.time())
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self._reap(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for a clean exit; the return code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        finally:
            if self._log is not None and self.proc.poll() is not None:
                self._log.close()
                self._log = None
        return code

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob("run-*.log"))
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by SIGKILL
        return out

    def close(self) -> None:
        """Never leave a daemon behind (test teardown)."""
        if self.alive():
            self.kill()


@contextmanager
def daemon(config: Path, log_dir: Path) -> Iterator[Daemon]:
    d = Daemon(config, log_dir)
    try:
        yield d
    finally:
        d.close()


# --------------------------------------------------------------------------- what arrived


def received_contents(state: SandboxState) -> list[tuple[str, str]]:
    """(DocumentID, sha256 of the document's bytes) for every accepted delivery,
    decoding base64 bodies and fetching uploaded blobs."""
    out = []
    for rec in state.received():
        media = rec.body["Media"]
        contents = media["FileContents"]
        if contents.startswith("http"):
            data = state.blob_bytes(contents)
        else:
            data = base64.b64decode(contents, validate=True)
        out.append((media["DocumentID"], sha(data)))
    return out


def filed(folder: Path) -> dict[str, list[Path]]:
    """sha256 -> paths of the documents (not sidecars or notes) under ``folder``."""
    out: dict[str, list[Path]] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.endswith((".json", ".error.txt")):
            out.setdefault(sha(path.read_bytes()), []).append(path)
    return out


def count_filed(folder: Path) -> int:
    return sum(
        1
        for path in folder.rglob("*")
        if path.is_file() and not path.name.endswith((".json", ".error.txt"))
    )


@contextmanager
def _joined(thread: threading.Thread, stop: threading.Event) -> Iterator[None]:
    """Stop and join ``thread`` however the block ends (a failed run included)."""
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(30)


def has_sidecar(doc: Path) -> bool:
    stem = doc.name.rsplit(".", 1)[0]
    return (doc.parent / f"{doc.name}.json").is_file() or (doc.parent / f"{stem}.json").is_file()


def db_jobs(db: Path) -> dict[str, list[Any]]:
    with Queue.open_readonly(db) as queue:
        jobs = queue.jobs(limit=1_000_000)
    by_state: dict[str, list[Any]] = {}
    for job in jobs:
        by_state.setdefault(str(job.state), []).append(job)
    return by_state


def unfinished(db: Path) -> int:
    if not db.exists():
        return 1
    with Queue.open_readonly(db) as queue:
        counts = counts_by_state(queue.path)
    return sum(counts[str(s)] for s in UNFINISHED)


def wait_leased(db: Path, timeout: float) -> bool:
    """Wait until a job is leased (a worker is sending it); False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists() and counts_by_state(db)[str(JobState.LEASED)]:
            return True
        time.sleep(0.005)
    return False


# --------------------------------------------------------------------------- the soak run


@dataclass
class Doc:
    name: str
    data: bytes
    sidecar: dict[str, Any]
    sidecar_name: str
    bad: bool
    in_place: bool

    @property
    def sha(self) -> str:
        return sha(self.data)


@dataclass
class Figures:
    documents: int = 0
    kills: int = 0
    deliveries: int = 0
    duplicates: int = 0
    lost: int = 0
    failed: int = 0
    uploads: int = 0
    attempts: int = 0
    injected_errors: int = 0
    html_200s: int = 0  # 200 with a web page, as a proxy or captive portal answers
    resets: int = 0  # stored, then the connection cut before the answer
    wrongly_in_done: int = 0  # in done/ but never delivered (or a bad document)
    most_resends_per_kill: int = 0
    # restarts whose recovery found work a kill had interrupted (a lease, a hand-over,
    # a move), from the daemon's own ``daemon.recovered`` lines: what the kills hit
    interrupted: int = 0
    elapsed_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        shown = {k: v for k, v in asdict(self).items() if k != "problems"}
        return "crash soak: " + ", ".join(f"{k}={v}" for k, v in shown.items())


def make_documents(
    rng: random.Random, n: int, *, big_fraction: float, bad_fraction: float
) -> list[Doc]:
    docs = []
    for i in range(n):
        big = rng.random() < big_fraction
        bad = rng.random() < bad_fraction
        name = f"{CANARY} scan {i:05d}.pdf"
        data = sample_pdf(f"document {i}", padding=rng.randint(30_000, 120_000) if big else 0)
        side = sample_sidecar(mrn=f"{i:010d}")
        if bad:
            del side["Patient"]["Identifiers"]
        side_name = f"{name}.json" if rng.random() < 0.5 else name.rsplit(".", 1)[0] + ".json"
        docs.append(Doc(name, data, side, side_name, bad, in_place=rng.random() < 0.3))
    return docs


def drop(inbox: Path, doc: Doc) -> None:
    """Sidecar first, then the document: written in place (the way some scanners
    do) or under a temp name and renamed (the way integrators should)."""
    for name, data in ((doc.sidecar_name, json.dumps(doc.sidecar).encode()), (doc.name, doc.data)):
        if doc.in_place:
            with (inbox / name).open("wb") as fh:
                half = len(data) // 2
                fh.write(data[:half])
                fh.flush()
                fh.write(data[half:])
        else:
            tmp = inbox / f"{name}.part"
            tmp.write_bytes(data)
            tmp.rename(inbox / name)


def soak_config(root: Path, sandbox: Sandbox, **top: Any) -> Path:
    return write_config(root, sandbox, **{**FAST, "embed_max_bytes": 20_000, **top})


def run_soak(
    root: Path,
    sandbox: Sandbox,
    *,
    documents: int,
    kills: int,
    seed: int = 1,
    workers: int = 2,
    error_rate: float = 0.1,
    error_mix: tuple[int | str, ...] = (503, "html", "reset"),
    latency_seconds: float = 0.02,
    max_up: float = 2.0,
    startup_kill_fraction: float = 0.15,
    busy_kill_fraction: float = 0.0,
    big_fraction: float = 0.2,
    bad_fraction: float = 0.03,
    drain_timeout: float = 120.0,
    out: IO[str] | None = None,
) -> Figures:
    """Drop ``documents`` while killing the daemon ``kills`` times, drain, check.
    Returns the figures; ``figures.problems`` lists every check that failed."""
    rng = random.Random(seed)
    config = soak_config(root, sandbox, workers=workers)
    inbox, done, failed = (root / "consents" / sub for sub in ("inbox", "done", "failed"))
    spool, db = root / "state" / "spool", root / "state" / "chartdrop.sqlite3"
    docs = make_documents(rng, documents, big_fraction=big_fraction, bad_fraction=bad_fraction)
    sandbox.state.set_faults(
        error_rate=error_rate,
        error_mix=list(error_mix),
        latency_seconds=latency_seconds,
        seed=seed,
    )
    figures = Figures(documents=documents)
    started = time.monotonic()

    # The dropper spreads the documents over the kills: it never runs ahead of
    # them (document j waits for kill j * kills / documents), and between drops it
    # sleeps about the time a kill cycle (~1.5 s start-up, then up to max_up) takes
    # per document, so documents keep arriving while the daemon runs and restarts.
    pace = (1.5 + max_up / 2) * kills / max(1, documents)
    dropper_error: list[BaseException] = []
    stop = threading.Event()
    kills_done = [0]

    def dropper() -> None:
        try:
            for j, doc in enumerate(docs):
                while kills_done[0] < j * kills / documents and not stop.wait(0.02):
                    pass
                drop(inbox, doc)
                if stop.wait(pace * rng.uniform(0.2, 1.8)):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            dropper_error.append(exc)

    thread = threading.Thread(target=dropper, name="dropper", daemon=True)
    with daemon(config, root / "logs") as d, _joined(thread, stop):
        thread.start()
        killer = random.Random(seed + 1)
        d.start()
        while figures.kills < kills:
            roll = killer.random()
            if roll < startup_kill_fraction:
                if d.wait_database_open():  # during start-up recovery
                    time.sleep(killer.uniform(0, 0.2))
            elif d.wait_started():
                if roll < startup_kill_fraction + busy_kill_fraction:
                    wait_leased(db, timeout=max_up)  # aimed: while a send is in flight
                else:
                    time.sleep(killer.uniform(0, max_up))
            code = d.kill()
            if code != -signal.SIGKILL:
                figures.problems.append(f"daemon run {d.runs} exited on its own with {code}")
            figures.kills += 1
            kills_done[0] = figures.kills
            d.start()
        thread.join()
        if not d.wait_started():  # drain with a daemon that really runs
            figures.problems.append("the last daemon did not start")
        if dropper_error:
            raise dropper_error[0]

        def drained() -> bool:
            return (
                not in_inbox(inbox)
                and not any(spool.iterdir())
                and unfinished(db) == 0
                and count_filed(done) + count_filed(failed) >= documents
            )

        try:
            wait_until(drained, timeout=drain_timeout, interval=0.25)
        except AssertionError:
            figures.problems.append("the queue did not drain")
        code = d.terminate()
        if code != 0:
            figures.problems.append(f"the last daemon exited with {code} on SIGTERM")
        kill_times = list(d.killed_at)
        log_text = d.log_text()
        events = d.events()

    figures.elapsed_seconds = round(time.monotonic() - started, 1)
    _check(
        figures,
        docs,
        root,
        sandbox,
        log_text,
        events,
        kill_times=kill_times,
        workers=workers,
        slack=latency_seconds + 0.5,  # well under the ~1 s a restart takes
    )
    out = out or sys.stdout
    print(figures.line(), file=out)
    for problem in figures.problems[:20]:
        print(f"  problem: {problem}", file=out)
    return figures


def _check(
    figures: Figures,
    docs: list[Doc],
    root: Path,
    sandbox: Sandbox,
    log_text: str,
    events: list[dict[str, Any]],
    *,
    kill_times: list[float],
    workers: int,
    slack: float,
) -> None:
    p = figures.problems
    inbox, done, failed = (root / "consents" / sub for sub in ("inbox", "done", "failed"))
    spool, db = root / "state" / "spool", root / "state" / "chartdrop.sqlite3"
    in_done, in_failed = filed(done), filed(failed)
    left_inbox = in_inbox(inbox)
    left_spool = sorted(x.name for x in spool.iterdir())
    if left_inbox:
        p.append(f"{len(left_inbox)} files left in the inbox")
    if left_spool:
        p.append(f"{len(left_spool)} files left in the spool")

    # every document in exactly one place, with its sidecar
    for doc in docs:
        where_ok, where_wrong = (in_failed, in_done) if doc.bad else (in_done, in_failed)
        here, there = where_ok.get(doc.sha, []), where_wrong.get(doc.sha, [])
        if not here and not there:
            figures.lost += 1
            p.append(f"lost: document {doc.sha[:12]}")
        elif len(here) + len(there) > 1:
            p.append(f"document {doc.sha[:12]} filed {len(here) + len(there)} times")
        elif there:
            p.append(f"document {doc.sha[:12]} in the wrong folder ({there[0].parent.name})")
        elif not has_sidecar(here[0]):
            p.append(f"document {doc.sha[:12]} filed without its sidecar")
        if doc.bad and here and not (here[0].parent / f"{here[0].name}.error.txt").is_file():
            p.append(f"document {doc.sha[:12]} in failed/ without its .error.txt")
    originals = {doc.sha for doc in docs}
    strays = (set(in_done) | set(in_failed)) - originals
    if strays:
        p.append(f"{len(strays)} files in done/ or failed/ that nobody dropped")
    figures.failed = sum(len(v) for v in in_failed.values())

    # the database agrees: nothing unfinished, no failure for a transient cause
    by_state = db_jobs(db)
    for state in UNFINISHED:
        if by_state.get(str(state)):
            p.append(f"{len(by_state[str(state)])} jobs left in state {state}")
    listed = subprocess.run(
        [
            CHARTDROP,
            "jobs",
            "-c",
            str(root / "chartdrop.toml"),
            "--state",
            "failed",
            "--json",
            "--limit",
            "1000000",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    failed_jobs = json.loads(listed.stdout) if listed.returncode == 0 else []
    if listed.returncode != 0:
        p.append(f"chartdrop jobs failed: {listed.stderr.strip()}")
    kinds = {job.get("error_kind") for job in failed_jobs}
    if kinds & TRANSIENT_KINDS:
        p.append(
            f"failed/ holds documents for a transient cause: {sorted(kinds & TRANSIENT_KINDS)}"
        )
    if kinds - {"invalid_sidecar"}:
        p.append(f"unexpected failure kinds: {sorted(k or '' for k in kinds)}")
    if len(failed_jobs) != sum(doc.bad for doc in docs):
        p.append(f"{len(failed_jobs)} failed jobs, {sum(doc.bad for doc in docs)} bad documents")

    # what the sandbox received: the original bytes, one DocumentID per document
    deliveries = received_contents(sandbox.state)
    figures.deliveries = len(deliveries)
    ids_per_doc: dict[str, set[str]] = {}
    shas_per_id: dict[str, set[str]] = {}
    for document_id, digest in deliveries:
        ids_per_doc.setdefault(digest, set()).add(document_id)
        shas_per_id.setdefault(document_id, set()).add(digest)
    if set(ids_per_doc) - originals:
        p.append(f"{len(set(ids_per_doc) - originals)} deliveries whose bytes match no original")
    for doc in docs:
        ids = ids_per_doc.get(doc.sha, set())
        if doc.bad and ids:
            p.append(f"bad document {doc.sha[:12]} was delivered")
        elif not doc.bad and len(ids) != 1:
            p.append(f"document {doc.sha[:12]} delivered under {len(ids)} DocumentIDs")
    if any(len(s) > 1 for s in shas_per_id.values()):
        p.append("one DocumentID carried different bytes")
    done_ids = {job.document_id for job in by_state.get("done", [])}
    if done_ids != set(shas_per_id):
        p.append("the DocumentIDs of the done jobs differ from those delivered")
    delivered = set(ids_per_doc)
    for digest, paths in in_done.items():
        if digest not in delivered or digest not in {d.sha for d in docs if not d.bad}:
            figures.wrongly_in_done += len(paths)
            p.append(f"document {digest[:12]} in done/ but never delivered")
    figures.duplicates = len(deliveries) - len(shas_per_id)
    kills = len(kill_times)
    cut = sum(1 for rec in sandbox.state.received() if rec.cut)
    if figures.duplicates > kills + cut:
        p.append(f"{figures.duplicates} resends for {kills} kills and {cut} cut answers")
    # Every resend has a kill between it and the delivery before it, and a kill
    # causes at most one resend per send it interrupted (at most one per worker).
    # The sandbox may record a request whose sender was killed a moment before
    # (it was already being answered): ``slack`` allows for that.
    # A delivery whose answer the sandbox cut (the reset fault) is resent without a
    # kill: that resend is explained by the cut, not counted against a kill.
    per_kill = [0] * (kills + 1)
    times_per_id: dict[str, list[tuple[float, bool]]] = {}
    for rec in sandbox.state.received():
        times_per_id.setdefault(rec.body["Media"]["DocumentID"], []).append((rec.at, rec.cut))
    for times in times_per_id.values():
        for (earlier, was_cut), (later, _) in itertools.pairwise(sorted(times)):
            if was_cut:
                continue
            k = bisect.bisect_left(kill_times, earlier - slack)
            if k >= kills or kill_times[k] > later:
                p.append("a resend without a kill before it")
            per_kill[k] += 1
    figures.most_resends_per_kill = max(per_kill)
    if figures.most_resends_per_kill > workers:
        p.append(f"one kill caused {figures.most_resends_per_kill} resends ({workers} workers)")
    attempts = sandbox.state.attempts
    figures.attempts = len(attempts)
    figures.uploads = sum(1 for a in attempts if a.path == "/upload" and a.status == 201)
    injected = sandbox.state.injected()
    figures.injected_errors = sum(injected.values())
    figures.html_200s = injected.get("html", 0)
    figures.resets = injected.get("reset", 0)

    # the logs: no file names, no tracebacks
    if CANARY in log_text:
        p.append("a file name reached the daemon's log")
    if "Traceback" in log_text:
        p.append("a traceback in the daemon's log")
    recovered = [e for e in events if e.get("event") == "daemon.recovered"]
    figures.interrupted = sum(1 for e in recovered if any(e.get(k) for k in RECOVERED_WORK))
    crashed = [e["event"] for e in events if e.get("event") in ("worker.crashed_job",)]
    if crashed:
        p.append(f"{len(crashed)} worker.crashed_job events")


# --------------------------------------------------------------------------- as a script


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--documents", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--error-rate", type=float, default=0.1)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder for a look")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="chartdrop-soak-"))
    private, public = generate_keypair()
    key = root / "redox-key.pem"
    key.write_bytes(private)
    key.chmod(0o600)
    state = SandboxState(blob_dir=root / "sandbox-blobs")
    state.register_client(CLIENT_ID, KEY_ID, public)
    fhir_secret = root / "fhir-secret"  # unused: the soak sends Redox Media only
    fhir_secret.write_text("unused\n")
    with SandboxServer(state) as server:
        figures = run_soak(
            root,
            Sandbox(server=server, state=state, private_key=key, fhir_secret=fhir_secret),
            documents=args.documents,
            kills=args.kills,
            seed=args.seed,
            workers=args.workers,
            error_rate=args.error_rate,
            latency_seconds=args.latency,
            drain_timeout=600,
        )
    if args.keep:
        print(f"kept: {root}")
    else:
        import shutil

        shutil.rmtree(root)
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
