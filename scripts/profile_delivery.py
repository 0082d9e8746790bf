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

from bench import CLK_TCK, Daemon, Peer, drop, pdf_of, stage

# (module, class or None, function): CPU time spent inside each, summed over threads.
STAGES = [
    ("daemon.intake.events", "InboxEvents", "on_any_event"),
    ("daemon.intake.loop", "Intake", "tick"),
    ("daemon.intake.loop", None, "judge"),
    ("daemon.intake.handover", "HandOver", "hand_over_many"),
    ("daemon.intake.handover", "HandOver", "complete_many"),
    ("daemon.queue", "Queue", "begin_intake_many"),
    ("daemon.queue", "Queue", "complete_intake_many"),
    ("daemon.delivery", "Deliverer", "process"),
    ("daemon.delivery", "Deliverer", "_deliver"),
    ("daemon.delivery", "Deliverer", "_sidecar"),
    ("daemon.delivery", "Deliverer", "_hold_duplicates"),
    ("daemon.delivery", None, "snapshot"),
    ("daemon.outgoing", "Sender", "send"),
    ("daemon.outgoing", None, "redox_body"),
    ("daemon.redox", "RedoxClient", "send"),
    ("daemon.http", None, "read_capped"),
    ("daemon.filing", "Filer", "_file"),
    ("daemon.queue", "Queue", "begin_intake"),
    ("daemon.queue", "Queue", "complete_intake"),
    ("daemon.queue", "Queue", "claim"),
    ("daemon.queue", "Queue", "mark_sent"),
    ("daemon.queue", "Queue", "record_sent"),
    ("daemon.filing", "Filer", "done_target"),
    ("daemon.queue", "Queue", "set_final_path"),
    ("daemon.queue", "Queue", "mark_done"),
    ("daemon.queue", "Queue", "get"),
    ("daemon.filing", None, "remove_earlier_note"),
    ("daemon.filing", None, "fsync_dir"),
    ("daemon.intake.handover", None, "fsync_dir"),
    ("daemon.delivery", None, "sha256_file"),
    ("daemon.intake.handover", None, "sha256_file"),
    ("structlog._base", "BoundLoggerBase", "_proxy_to_logger"),
]
SPENT: dict[str, list[float]] = {}  # name -> [seconds, calls]


def timed(module: str, owner: str | None, name: str) -> None:
    """Wrap one function so the CPU time of every call (this thread's) is summed."""
    import importlib

    mod = importlib.import_module(module)
    target = getattr(mod, owner) if owner else mod
    real = getattr(target, name)
    label = f"{module.rsplit('.', 1)[-1]}.{owner + '.' if owner else ''}{name}"
    slot = SPENT.setdefault(label, [0.0, 0])

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.thread_time()
        try:
            return real(*args, **kwargs)
        finally:
            slot[0] += time.thread_time() - t
            slot[1] += 1

    static = isinstance(vars(target).get(name), staticmethod)  # (a module has no such)
    setattr(target, name, staticmethod(wrapper) if static else wrapper)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread, by its name (from /proc/self/task)."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            text = Path(f"/proc/self/task/{t.native_id}/stat").read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2 :].split()
        kind = t.name.rstrip("0123456789-") or t.name
        out[kind] = out.get(kind, 0.0) + (int(rest[11]) + int(rest[12])) / CLK_TCK
    return out


def run(
    root: Path, peer: Peer, docs: int, profile: bool, workers: int = 4
) -> tuple[float, list[cProfile.Profile]]:
    from daemon import logs
    from daemon.config import load_settings
    from daemon.service import Service

    d = Daemon(root, peer, workers=workers, settle=0.2)
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

    if not profile:
        for module, owner, name in STAGES:
            timed(module, owner, name)
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
    threads: list[dict[str, float]] = []

    def dropper() -> None:
        time.sleep(1.0)
        t = os.times()
        cpu.append(t.user + t.system)
        split.append((t.user, t.system))
        threads.append(thread_cpu())
        for slot in SPENT.values():
            slot[:] = [0.0, 0]
        for name in names:
            drop(d.staged, d.inbox, name)

    def finished() -> bool:
        n = sum(len(list(p.iterdir())) for p in done_dir.iterdir()) if done_dir.exists() else 0
        if n >= 2 * docs and len(cpu) == 1:
            t = os.times()
            cpu.append(t.user + t.system)
            split.append((t.user, t.system))
            threads.append(thread_cpu())
        return len(cpu) == 2

    threading.Thread(target=dropper, daemon=True).start()
    service.run(until=finished)
    threading.setprofile(None)  # type: ignore[arg-type]
    log.close()
    user, system = (1000 * (b - a) / docs for a, b in zip(*split, strict=True))
    print(f"user {user:.2f} ms, system {system:.2f} ms per document")
    if not profile:
        print("CPU per document by thread (ms):")
        for kind, seconds in sorted(threads[1].items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<28} {1000 * (seconds - threads[0].get(kind, 0.0)) / docs:7.2f}")
        print("CPU per document inside each function, callees included (ms, calls per doc):")
        for label, (seconds, calls) in SPENT.items():
            print(f"  {label:<40} {1000 * seconds / docs:7.2f} {calls / docs:6.1f}")
    return 1000 * (cpu[1] - cpu[0]) / docs, profiles


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--docs", type=int, default=200)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--profile", action="store_true", help="profile (else: measure CPU only)")
    p.add_argument("--workers", type=int, default=4, help="the daemon's workers")
    p.add_argument("--out", type=Path, help="also write the merged stats here (pstats file)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="chartdrop-profile-") as tmp:
        peer = Peer(Path(tmp))
        try:
            peer.set_delay(0.0)
            per_doc, profiles = run(Path(tmp) / "run", peer, args.docs, args.profile, args.workers)
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
