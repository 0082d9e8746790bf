# The floor is written with os.* on strings on purpose: pathlib's objects are part
# of what it leaves out.
# ruff: noqa: PTH103, PTH104, PTH108, PTH118
"""The floor: what the durable steps of one document cost in plain Python here.

    uv run python scripts/bench_floor.py [--docs 300] [--reps 2]

Issue 9 asks for at most 4 ms of CPU per 100 KB document. This script measures
how much of a document's CPU is the work no implementation in Python can leave
out, on this machine, side by side with chartdrop in the same run:

- **floor**: one thread, no framework, the steps chartdrop's durability needs,
  written straight: read and parse the sidecar, look at the document's first
  bytes; commit a row (WAL); rename both files into a spool and fsync it; hash
  the document and commit it queued; commit the claim (fsynced); copy the
  document to a private snapshot (read, hash, write, fsync, fsync the folder);
  build the JSON body (base64 of the document spliced into the sidecar's fields);
  POST it over a keep-alive ``http.client`` connection and parse the answer;
  commit ``sent`` (fsynced); rename the snapshot and the sidecar into done/,
  fsync done/ and the spool, unlink the spool copy, commit ``done``. Three commits
  wait for their fsync (the claim, ``sent``, and one more), as in chartdrop.
- **floor, no fsync**: the same with every fsync left out (what the disk costs).
- **chartdrop**: ``chartdrop run`` (the bench's subprocess and config, 4 workers
  and 1) on the same documents.

Every contender sends to the bench's fast peer answering at once
(scripts/fast_peer.py, its own process: its CPU is nobody's). CPU is user +
system of the process from the first document to the last in done/.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench import Daemon, Peer, bearer_token, machine, pdf_of, run_chartdrop, stage

SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, destination TEXT NOT NULL, state TEXT NOT NULL,
    original_name TEXT NOT NULL, spool_document TEXT, spool_sidecar TEXT,
    sha256 TEXT, size INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    document_id TEXT NOT NULL, remote_log_id TEXT, final_path TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL
);
CREATE INDEX jobs_state ON jobs (state, updated_at);
CREATE TABLE events (
    job_id TEXT NOT NULL, at REAL NOT NULL, event TEXT NOT NULL, detail TEXT
);
"""


def fsync_dir(path: str, durable: bool) -> None:
    if not durable:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_of(path: str) -> tuple[bytes, str]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    return data, hashlib.sha256(data).hexdigest()


def run_floor(root: Path, peer: Peer, token: str, names: list[str], durable: bool) -> float:
    """Every document of ``names`` (staged in root/inbox) through the durable steps
    in one thread; the CPU seconds it took."""
    inbox, spool, done = (str(root / d) for d in ("inbox", "spool", "done"))
    for d in (spool, done):
        os.makedirs(d, mode=0o700, exist_ok=True)
    db = sqlite3.connect(str(root / "floor.sqlite3"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    db.executescript(SCHEMA)
    conn = http.client.HTTPConnection(str(peer.host), peer.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def commit(sql: str, params: tuple[object, ...], event: str, job: str, wait: bool) -> None:
        """One state change and its audit row in one transaction; ``wait`` for its
        fsync (else it is redone from the files after a crash, as in chartdrop)."""
        if durable:
            db.execute(f"PRAGMA synchronous={'FULL' if wait else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")
        db.execute(sql, params)
        db.execute("INSERT INTO events VALUES (?, ?, ?, NULL)", (job, time.time(), event))
        db.execute("COMMIT")

    t0 = os.times()
    for name in names:
        # intake: the sidecar, the document's first bytes
        doc_in, side_in = os.path.join(inbox, name), os.path.join(inbox, f"{name}.json")
        st = os.lstat(doc_in)
        os.lstat(side_in)
        with open(side_in, "rb") as fh:
            sidecar = json.loads(fh.read())
        with open(doc_in, "rb") as fh:
            if not fh.read(5).startswith(b"%PDF-"):
                raise SystemExit("not a PDF")
        job, document_id, now = uuid.uuid4().hex, str(uuid.uuid4()), time.time()
        spool_doc, spool_side = os.path.join(spool, job), os.path.join(spool, f"{job}.json")
        commit(
            "INSERT INTO jobs (id, destination, state, original_name, spool_document,"
            " spool_sidecar, document_id, created_at, updated_at)"
            " VALUES (?, 'bench', 'intake', ?, ?, ?, ?, ?, ?)",
            (job, name, spool_doc, spool_side, document_id, now, now),
            "intake", job, False,
        )  # fmt: skip
        os.rename(doc_in, spool_doc)
        os.rename(side_in, spool_side)
        fsync_dir(spool, durable)
        _, digest = hash_of(spool_doc)
        commit(
            "UPDATE jobs SET state='queued', sha256=?, size=?, updated_at=? WHERE id=?",
            (digest, st.st_size, time.time(), job), "queued", job, False,
        )  # fmt: skip
        # delivery: claim, snapshot, body, send
        commit(
            "UPDATE jobs SET state='leased', attempts=attempts+1, updated_at=? WHERE id=?",
            (time.time(), job), "claimed", job, True,
        )  # fmt: skip
        data, again = hash_of(spool_doc)
        if again != digest:
            raise SystemExit("the spool copy changed")
        snap = os.path.join(spool, f"{job}.snap")
        fd = os.open(snap, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(spool, durable)
        body = {
            "Meta": {
                "DataModel": "Media", "EventType": "New", "Test": True,
                "Destinations": [{"ID": "bench"}],
            },
            "Patient": sidecar["Patient"],
            "Visit": sidecar.get("Visit", {}),
            "Media": {
                **sidecar.get("Media", {}), "FileType": "PDF", "FileName": f"{document_id}.pdf",
                "DocumentID": document_id, "FileContents": "@",
            },
        }  # fmt: skip
        head, tail = json.dumps(body).encode().split(b'"@"')
        payload = b"".join((head, b'"', base64.b64encode(data), b'"', tail))
        conn.request("POST", "/endpoint", body=payload, headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"peer answered {response.status}")
        log_id = answer["Meta"]["Logs"][0]["ID"]
        commit(
            "UPDATE jobs SET state='sent', remote_log_id=?, updated_at=? WHERE id=?",
            (log_id, time.time(), job), "sent", job, True,
        )  # fmt: skip
        # filing
        final = os.path.join(done, name)
        os.rename(snap, final)
        os.rename(spool_side, f"{final}.json")
        fsync_dir(done, durable)
        os.unlink(spool_doc)
        fsync_dir(spool, durable)
        commit(
            "UPDATE jobs SET state='done', final_path=?, finished_at=?, updated_at=? WHERE id=?",
            (final, time.time(), time.time(), job), "done", job, False,
        )  # fmt: skip
    t1 = os.times()
    conn.close()
    db.close()
    return (t1.user - t0.user) + (t1.system - t0.system)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--docs", type=int, default=300, help="documents per run (300)")
    p.add_argument("--reps", type=int, default=2, help="rounds of every contender (2)")
    args = p.parse_args(argv)
    print(f"chartdrop floor bench on {machine()}")
    print(f"command: scripts/bench_floor.py {' '.join(argv or sys.argv[1:])}")
    data = pdf_of(100_000, "floor")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="chartdrop-floor-") as tmp:
        root = Path(tmp)
        peer = Peer(root, "fast")
        try:
            peer.set_delay(0.0)
            daemons = {w: Daemon(root / f"chartdrop{w}", peer, w, 0.5) for w in (4, 1)}
            token = ""
            for rep in range(args.reps):
                for durable in (True, False):
                    label = "floor" if durable else "floor, no fsync"
                    where = root / f"floor-{rep}-{int(durable)}"
                    names = stage(where / "inbox", "f", args.docs, data)
                    if not token:
                        token = bearer_token(daemons[4])
                    cpu = run_floor(where, peer, token, names, durable)
                    results.setdefault(label, []).append(1000 * cpu / args.docs)
                for workers, d in daemons.items():
                    d.start()
                    try:
                        d.wait_ready()
                        r = run_chartdrop(d, args.docs, data, f"r{rep}", 300)
                    finally:
                        d.stop()
                    if r.failed:
                        raise SystemExit(f"bench: {r.failed} documents not delivered")
                    results.setdefault(f"chartdrop, {workers} workers", []).append(r.cpu_ms)
        finally:
            peer.stop()
    floor = min(results["floor"])
    print(f"\nCPU ms per 100 KB document, 0 ms peer, {args.docs} documents, {args.reps} rounds:")
    for label, values in results.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {label:<22} {min(values):>6.2f}  (x floor {min(values) / floor:.2f}; {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
