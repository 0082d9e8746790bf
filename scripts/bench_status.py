"""How long the ``chartdrop`` command takes to answer: ``status`` on a 100,000-row
queue, and the start-up of ``--help``, ``status --check`` and ``check``.

    uv run python scripts/bench_status.py [--rows 100000] [--repeats 5] [--against DIR]

Builds one real queue database (the daemon's own schema and migrations, WAL) in a
temporary folder with ``--rows`` jobs (half done today, a tenth failed, the rest
queued, some in backoff) and a two-destination config, then runs each command
as a new Python process, the way an admin or a monitoring plugin does, and
prints the median wall and CPU time (user + system of the child).

``--against DIR`` runs every command also from another source tree (e.g. a
``git archive`` of an older commit), alternately with this one, so that both are
measured under the same load: read the ratio, the CPU is shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_queue import CONFIG as QUEUE_CONFIG
from bench_queue import FILL  # scripts/ is on sys.path when run as a script

from daemon.queue import Queue

# bench_queue's two-destination config, with a signing key for `check`
CONFIG = QUEUE_CONFIG.replace(
    "[[destination]]", 'private_key_file = "redox-key.pem"\n[[destination]]', 1
)


def build(root: Path, rows: int) -> Path:
    """A config and a ``rows``-job database under ``root``; the config's path."""
    for sub in ("state", "f/inbox", "f/done", "f/failed", "g/inbox", "g/done", "g/failed"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    from daemon.keys import new_key

    new_key(root / "redox-key.pem", "bench")  # `check` loads it, as on a real install
    now = time.time()
    # (share of the rows, destination, state, due in seconds, attempts)
    parts = [
        (0.5, "consents", "done", -1, 1),
        (0.1, "consents", "failed", -1, 1),
        (0.2, "letters", "queued", -1, 0),
        (0.2, "letters", "queued", 3600, 3),
    ]
    with Queue(root / "state" / "chartdrop.sqlite3") as q, q._write() as conn:
        for share, dest, state, due_in, attempts in parts:
            args = (int(rows * share), dest, state, attempts, now + due_in, now, now, now)
            conn.execute(FILL, (*args, state, now, state, now - 1))
    config = root / "chartdrop.toml"
    config.write_text(CONFIG)
    return config


def timed(command: list[str], tree: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of ``command`` from ``tree``."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=tree, env=env, capture_output=True, check=False, timeout=120)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another source tree to time alternately")
    args = parser.parse_args()
    trees = [("this tree", Path(__file__).resolve().parents[1])]
    if args.against:
        trees.append((str(args.against), args.against.resolve()))
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        print(f"building the database ({args.rows:,} rows)…", file=sys.stderr)
        config = str(build(Path(tmp), args.rows))
        run = [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())"]
        commands = [
            ("chartdrop --help", [*run, "--help"]),
            (f"chartdrop status ({args.rows:,} rows)", [*run, "status", "-c", config]),
            ("chartdrop status --json", [*run, "status", "--json", "-c", config]),
            ("chartdrop status --check", [*run, "status", "--check", "-c", config]),
            ("chartdrop check (offline)", [*run, "check", "-c", config]),
        ]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeats):
            for label, command in commands:
                for name, tree in trees:  # alternately: the same load for both
                    results.setdefault((label, name), []).append(timed(command, tree))
    print(f"{'median of ' + str(args.repeats):42} {'tree':>12} {'wall':>8} {'CPU':>8}")
    for label, _command in commands:
        for name, _tree in trees:
            runs = results[(label, name)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"{label:42} {name[-12:]:>12} {wall:7.3f}s {cpu:7.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
