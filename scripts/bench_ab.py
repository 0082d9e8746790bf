"""Two (or more) versions of chartdrop side by side, in one run, against one peer.

    uv run python scripts/bench_ab.py OLD=/path/to/other/checkout NEW=.
    uv run python scripts/bench_ab.py --delay 0 --docs 400 --reps 3 OLD=../old NEW=.

Each ``NAME=PATH`` is a checkout of chartdrop (e.g. a ``git worktree`` of the
commit before a change): its ``daemon`` package is put first on ``PYTHONPATH``
of a ``chartdrop run`` subprocess, started fresh for every run (4 workers,
settle 0.5 s, the unit's environment, as ``scripts/bench.py`` runs it). The
versions take turns (``--reps`` rounds, in the order given), against one
``scripts/fast_peer.py`` answering in ``--delay`` seconds; the ceiling (the
same bodies POSTed from memory by 4 keep-alive threads) runs before the first
and after the last round. Prints docs/s, CPU ms per document and the ratio to
the ceiling for each run and the mean of each version. The machine is shared
and noisy: read the side-by-side ratios, and run the rounds again before
trusting a difference under ±5 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench import (
    Daemon,
    Peer,
    bearer_token,
    bodies_like_chartdrop,
    pdf_of,
    run_ceiling,
    run_chartdrop,
)

WORKERS = 4
SETTLE = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("versions", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--docs", type=int, default=300, help="documents per run (300)")
    parser.add_argument("--reps", type=int, default=2, help="rounds (2)")
    parser.add_argument("--delay", type=float, default=0.05, help="peer delay, seconds (0.05)")
    args = parser.parse_args(argv)
    versions = [tuple(v.split("=", 1)) for v in args.versions]
    if any(len(v) != 2 for v in versions):
        parser.error("each version is NAME=PATH")
    root = Path(tempfile.mkdtemp(prefix="chartdrop-ab-"))
    peer = Peer(root, "fast")
    data = pdf_of(100_000, "bench")
    rates: dict[str, list[float]] = {name: [] for name, _ in versions}
    cpus: dict[str, list[float]] = {name: [] for name, _ in versions}
    ceilings: list[float] = []
    print(
        f"peer delay {args.delay * 1000:.0f} ms, {args.docs} documents of 100 KB, {WORKERS} workers"
    )
    try:
        peer.set_delay(args.delay)
        token = bodies = None
        for rep in range(args.reps):
            for name, path in versions:
                env = {"PYTHONPATH": str(Path(path).resolve())}
                d = Daemon(root / f"{name}-{rep}", peer, WORKERS, SETTLE, env)
                d.start()
                try:
                    d.wait_ready()
                    if bodies is None:
                        token = bearer_token(d)
                        bodies = bodies_like_chartdrop(d, args.docs, data)
                        ceilings.append(run_ceiling(peer, bodies, WORKERS, token).rate)
                        print(f"  ceiling {ceilings[-1]:8.1f} docs/s")
                    r = run_chartdrop(d, args.docs, data, f"r{rep}", 300)
                finally:
                    d.stop()
                rates[name].append(r.rate)
                cpus[name].append(r.cpu_ms)
                print(
                    f"  {name:<10} round {rep + 1}: {r.rate:8.1f} docs/s, "
                    f"{r.cpu_ms:6.2f} CPU ms/doc, {r.failed} not delivered"
                )
        assert bodies is not None and token is not None
        ceilings.append(run_ceiling(peer, bodies, WORKERS, token).rate)
        print(f"  ceiling {ceilings[-1]:8.1f} docs/s")
    finally:
        peer.stop()
    ceiling = statistics.mean(ceilings)
    print("mean of each version:")
    for name, _ in versions:
        rate = statistics.mean(rates[name])
        print(
            f"  {name:<10} {rate:8.1f} docs/s  {rate / ceiling:6.3f} x the ceiling  "
            f"{statistics.mean(cpus[name]):6.2f} CPU ms/doc"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
