"""How the queue's claim and `chartdrop status` scale: 100 rows vs 100,000.

    uv run python scripts/bench_queue.py [--rows 100000] [--claims 200] [--cli-repeats 3]

Builds real queue databases (WAL, the daemon's own schema and migrations) in a
temporary folder, fills them with one SQL statement each, then times, through
the real :class:`daemon.queue.Queue`:

- a claim with 100 due rows, and with ``--rows`` due rows;
- a claim during an outage with ``--rows`` jobs in backoff and none due (what
  every idle worker does twice a second), and with 100 due ones besides;
- a claim while a paused destination has ``--rows`` older due jobs (excluded);
- ``status`` on a read-only connection (what ``chartdrop status`` opens) at 100
  and ``--rows`` rows (a mix of done, failed, queued and in backoff);
- the whole ``chartdrop status`` command on the same databases (a new Python
  process: its start-up and imports are most of its time, at any size).

Prints the median time of each and the ratio to the 100-row case: a ratio near
1 is what "costs the same at any size" means. The CPU is shared, so read the
ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemon.queue import JobState, Queue

T0 = time.time()


# n invented rows of one destination and state, in one statement (bench_status uses it too)
FILL = """
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?)
INSERT INTO jobs (id, destination, state, attempts, next_attempt_at, document_id,
                  original_name, created_at, queued_at, updated_at, sent_at, finished_at)
SELECT lower(hex(randomblob(16))), ?, ?, ?, ? + i * 0.0001, lower(hex(randomblob(16))),
       'bulk.pdf', ? - 86400 + i * 0.0001, ? - 86400 + i * 0.0001, ? - 1,
       CASE WHEN ? = 'done' THEN ? - 60 END, CASE WHEN ? IN ('done', 'failed') THEN ? END
FROM k
"""


def fill(
    q: Queue,
    n: int,
    *,
    destination: str,
    state: JobState = JobState.QUEUED,
    due_in: float = -1.0,
    attempts: int = 0,
) -> None:
    with q._write() as conn:  # the bench's bulk load; every timed call goes through the API
        conn.execute(
            FILL,
            (n, destination, state, attempts, T0 + due_in, T0, T0, T0, state, T0, state, T0 - 1),
        )


def claim_seconds(
    path: Path, claims: int, exclude: set[str], *, expect: bool = True
) -> tuple[float, float]:
    """Median wall and CPU seconds of one claim (the wall time includes the commit's fsync)."""
    wall, cpu = [], []
    with Queue(path) as q:
        for _ in range(claims):
            start, start_cpu = time.perf_counter(), time.process_time()
            job = q.claim(lease_seconds=600, exclude_destinations=exclude)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            assert (job is not None) == expect, "the bench's database is not as built"
    return statistics.median(wall), statistics.median(cpu)


def status_seconds(path: Path, repeats: int = 5) -> tuple[float, float]:
    """Median wall and CPU seconds of opening the database read-only and reading status."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        with Queue.open_readonly(path) as q:
            q.status()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


CONFIG = """state_dir = "state"
[redox]
api_url = "http://127.0.0.1:9"
upload_url = "http://127.0.0.1:9/upload"
[[destination]]
name = "consents"
inbox = "f/inbox"
done = "f/done"
failed = "f/failed"
redox_destination_id = "af394f14-b34a-464f-8d24-895f370af4c9"
[[destination]]
name = "letters"
inbox = "g/inbox"
done = "g/done"
failed = "g/failed"
redox_destination_id = "af394f14-b34a-464f-8d24-895f370af4c9"
"""


def cli_status_seconds(database: Path, repeats: int = 3) -> tuple[float, float]:
    """Median wall and CPU seconds of the whole `chartdrop status` command (a new
    Python process: interpreter start and imports included) on ``database``."""
    root = database.parent / f"{database.stem}-cli"
    for sub in ("state", "f/inbox", "f/done", "f/failed", "g/inbox", "g/done", "g/failed"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "state" / "chartdrop.sqlite3").symlink_to(database)
    (root / "chartdrop.toml").write_text(CONFIG)
    command = [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())"]
    command += ["status", "-c", str(root / "chartdrop.toml")]
    wall, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, check=True)
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        assert b"consents" in done.stdout, done.stdout
    return statistics.median(wall), statistics.median(cpu)


def build(path: Path, parts: list[tuple[int, str, JobState, float, int]]) -> Path:
    with Queue(path) as q:
        for n, dest, state, due_in, attempts in parts:
            fill(q, n, destination=dest, state=state, due_in=due_in, attempts=attempts)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--cli-repeats", type=int, default=3)
    args = parser.parse_args()
    rows, claims = args.rows, args.claims
    due, done, failed, q = JobState.QUEUED, JobState.DONE, JobState.FAILED, JobState.QUEUED
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        d = Path(tmp)
        print(f"building databases ({rows:,} rows)…", file=sys.stderr)
        small = build(d / "small.db", [(100 + claims, "consents", due, -1, 0)])
        big = build(d / "big.db", [(rows, "consents", due, -1, 0)])
        outage = build(d / "outage.db", [(rows, "consents", q, 3600, 4)])
        outage_some = build(
            d / "outage-some.db",
            [(rows, "consents", q, 3600, 4), (100 + claims, "letters", due, -1, 0)],
        )
        # the paused destination's jobs are older: a claim must not wade through them
        paused = build(
            d / "paused.db",
            [(rows, "consents", due, -7200, 0), (100 + claims, "letters", due, -1, 0)],
        )
        mix = [("consents", 0.5, done), ("consents", 0.1, failed), ("letters", 0.2, q)]
        status_small = build(
            d / "status-small.db", [(max(1, int(100 * f)), n, s, -1, 0) for n, f, s in mix]
        )
        status_big = build(
            d / "status-big.db",
            [(int(rows * f), n, s, -1, 0) for n, f, s in mix]
            + [(int(rows * 0.2), "letters", q, 3600, 3)],
        )
        results = [
            ("claim, 100 due rows", claim_seconds(small, claims, set())),
            (f"claim, {rows:,} due rows", claim_seconds(big, claims, set())),
            (
                f"claim, {rows:,} in backoff, none due",
                claim_seconds(outage, claims, set(), expect=False),
            ),
            (f"claim, {rows:,} in backoff + 100 due", claim_seconds(outage_some, claims, set())),
            (f"claim, {rows:,} due of a paused dest.", claim_seconds(paused, claims, {"consents"})),
        ]
        status = [
            ("status, 100 rows", status_seconds(status_small)),
            (f"status, {rows:,} rows", status_seconds(status_big)),
        ]
        cli = [
            (
                "`chartdrop status` command, 100 rows",
                cli_status_seconds(status_small, args.cli_repeats),
            ),
            (
                f"`chartdrop status` command, {rows:,} rows",
                cli_status_seconds(status_big, args.cli_repeats),
            ),
        ]
    print(f"{'':40} {'wall':>10} {'ratio':>6} {'CPU':>10} {'ratio':>6}")
    for rows_of, base in ((results, results[0][1]), (status, status[0][1]), (cli, cli[0][1])):
        for label, (wall, cpu) in rows_of:
            print(
                f"{label:40} {wall * 1000:8.3f}ms {wall / base[0]:6.2f}"
                f" {cpu * 1000:8.3f}ms {cpu / max(base[1], 1e-6):6.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
