"""Where chartdrop's CPU goes per document: cProfile on every daemon thread.

    uv run python scripts/profile_delivery.py [--docs 200] [--top 40]

Runs the daemon's own Service in this process (the sandbox peer in another,
answering at once, so its CPU is not in the profile), with one CPU-time cProfile
per thread (main loop, observer, workers: Python 3.11's profiler is per thread), drops
``--docs`` 100 KB PDFs with sidecars, waits until all are in done/, merges the
profiles and prints the functions by own time and by cumulative time. The CPU
per document printed first is measured with the profiler off (a second run),
as the bench measures it. The documents are synthetic.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench import Daemon, Peer, drop, pdf_of, stage


def run(root: Path, peer: Peer, docs: int, profile: bool) -> tuple[float, list[cProfile.Profile]]:
    from daemon import logs
    from daemon.config import load_settings
    from daemon.service import Service

    d = Daemon(root, peer, workers=4, settle=0.2)
    settings = load_settings(d.config)
    log = (root / "daemon.log").open("w")
    logs.configure(level=settings.log_level, fmt="json", stream=log)
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def boot(_frame: Any, _event: str, _arg: Any) -> None:
        """First call in a new thread: a CPU-time profiler of its own from here on."""
        prof = cProfile.Profile(time.thread_time)  # CPU time, not waiting
        with lock:
            profiles.append(prof)
        prof.enable()

    if profile:
        threading.setprofile(boot)  # every thread started from now on: observer, workers
        boot(None, "", None)  # and this one (the main loop)
    service = Service(settings)
    service.start()
    data = pdf_of(100_000, "profile")
    names = stage(d.staged, "p", docs, data)
    done_dir = root / "done"
    assert service.queue is not None
    cpu: list[float] = []
    split: list[tuple[float, float]] = []

    def dropper() -> None:
        time.sleep(1.0)
        t = os.times()
        cpu.append(t.user + t.system)
        split.append((t.user, t.system))
        for name in names:
            drop(d.staged, d.inbox, name)

    def finished() -> bool:
        n = sum(len(list(p.iterdir())) for p in done_dir.iterdir()) if done_dir.exists() else 0
        if n >= 2 * docs and len(cpu) == 1:
            t = os.times()
            cpu.append(t.user + t.system)
            split.append((t.user, t.system))
        return len(cpu) == 2

    threading.Thread(target=dropper, daemon=True).start()
    service.run(until=finished)
    threading.setprofile(None)  # type: ignore[arg-type]
    log.close()
    user, system = (1000 * (b - a) / docs for a, b in zip(*split, strict=True))
    print(f"user {user:.2f} ms, system {system:.2f} ms per document")
    return 1000 * (cpu[1] - cpu[0]) / docs, profiles


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--docs", type=int, default=200)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--profile", action="store_true", help="profile (else: measure CPU only)")
    p.add_argument("--out", type=Path, help="also write the merged stats here (pstats file)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="chartdrop-profile-") as tmp:
        peer = Peer(Path(tmp))
        try:
            peer.set_delay(0.0)
            per_doc, profiles = run(Path(tmp) / "run", peer, args.docs, args.profile)
        finally:
            peer.stop()
    print(f"CPU per document (whole process, 0 ms peer, {args.docs} docs): {per_doc:.2f} ms")
    if not profiles:
        return 0
    out = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=out)
    for prof in profiles[1:]:
        stats.add(prof)
    if args.out:
        stats.dump_stats(str(args.out))
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
