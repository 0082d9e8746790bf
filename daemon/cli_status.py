"""``chartdrop status`` (plain, ``--json``) and ``status --check`` (a
monitoring-plugin line). The numbers come from :mod:`daemon.check`."""

from __future__ import annotations

import argparse
import json
import sqlite3
from typing import Any

from daemon.cli_common import QuickCheck, open_queue, settings_from, ts
from daemon.errors import ConfigError
from daemon.inboxes import read_report


def cmd_status(args: argparse.Namespace) -> int:
    early = QuickCheck.early(args.config)  # before the config's imports, beside them
    if args.check:
        return _status_check(args, early)
    settings = settings_from(args)
    queue = open_queue(settings)
    from daemon.check import take_snapshot

    snap = take_snapshot(settings, queue)
    QuickCheck.wait(early, settings.database_path)  # nothing is printed before it passes
    pauses: dict[str, list[dict[str, Any]]] = {}
    for pause in snap.pauses if snap.running else []:  # a dead daemon's pauses are stale
        pauses.setdefault(pause.destination, []).append(
            {
                "kind": pause.kind,
                "reason": pause.reason,
                "since": ts(pause.since),
                "next_try": ts(pause.until) if pause.until is not None else None,
            }
        )
    intake = read_report(settings.state_dir)  # empty unless the daemon is running
    rows = []
    names = [d.name for d in settings.destination] + sorted(snap.unconfigured)
    for name in names:
        s = snap.status.get(name)
        seen = intake.get(name, {})
        rows.append(
            {
                "destination": name,
                "configured": name not in snap.unconfigured,
                "daemon_running": snap.running,
                "queued": s.queued if s else 0,
                "retrying": s.retrying if s else 0,
                "in_flight": s.in_flight if s else 0,
                "awaiting_move": s.awaiting_move if s else 0,
                "done_today": s.done_today if s else 0,
                "failed": s.failed if s else 0,
                "failed_24h": snap.failed_24h.get(name, 0),
                "in_failed_folder": snap.in_failed_folder.get(name),
                "awaiting_sidecar": snap.awaiting_sidecar.get(name),
                "oldest_waiting_seconds": s.oldest_waiting_seconds if s else None,
                "last_success": ts(s.last_success_at) if s and s.last_success_at else None,
                "paused": pauses.get(name, []),
                "incomplete_in_inbox": seen.get("incomplete", 0),
                "incomplete_since": ts(seen["incomplete_since"])
                if seen.get("incomplete_since")
                else None,
                "intake_errors": seen.get("errors", 0),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not snap.running:
        print(
            "chartdrop is NOT RUNNING (no daemon holds the lock in "
            f"{settings.state_dir}): nothing is taken in or sent. "
            "The counts below are what the database holds."
        )
    header = (
        "destination",
        "queued",
        "retrying",
        "in flight",
        "done today",
        "failed 24h",
        "in failed/",
        "incomplete",
        "no sidecar",
        "oldest waiting",
        "last success",
    )
    print("  ".join(f"{h:>12}" for h in header))
    for r in rows:
        oldest = r["oldest_waiting_seconds"]
        cells = (
            r["destination"],
            r["queued"],
            r["retrying"],
            r["in_flight"],
            r["done_today"],
            r["failed_24h"],
            "?" if r["in_failed_folder"] is None else r["in_failed_folder"],
            r["incomplete_in_inbox"],
            "?" if r["awaiting_sidecar"] is None else r["awaiting_sidecar"],
            "-" if oldest is None else f"{oldest:.0f}s",
            r["last_success"] or "-",
        )
        print("  ".join(f"{c!s:>12}" for c in cells))
    for name, items in pauses.items():
        for p in items:
            retry = f"; next try {p['next_try']}" if p["next_try"] else ""
            waiting = (
                "New documents wait in the inbox"
                if p["kind"] == "folder_missing"
                else "Documents wait in the queue"
            )
            print(
                f"PAUSED {name} ({p['kind']}, since {p['since']}): {p['reason']}{retry}. {waiting}."
            )
    for r in rows:
        if r["awaiting_sidecar"]:
            print(
                f"WAITING {r['destination']}: {r['awaiting_sidecar']} document(s) in the inbox "
                "have no sidecar yet (sent to failed/ after sidecar_timeout_seconds)."
            )
    for name, n in sorted(snap.unconfigured.items()):
        print(
            f"NOT CONFIGURED {name}: {n} job(s) wait for a destination that is no longer "
            "in the config; they go out when it is configured again."
        )
    return 0


def _status_check(args: argparse.Namespace, early: QuickCheck | None) -> int:
    """``status --check``: one monitoring-plugin line; UNKNOWN (3) when nothing can be read."""
    from daemon.check import UNKNOWN, can_tell_if_running, evaluate, take_snapshot
    from daemon.queue import Queue

    try:
        settings = settings_from(args)
        if not can_tell_if_running(settings):
            print(
                f"CHARTDROP UNKNOWN - no permission to read {settings.lock_path}; "
                "run the check as the chartdrop user"
            )
            return UNKNOWN
        queue = None
        if settings.database_path.exists():
            queue = Queue.open_readonly(settings.database_path)
        snapshot = take_snapshot(settings, queue)
        if queue is not None:
            QuickCheck.wait(early, settings.database_path)
        result = evaluate(settings, snapshot)
    except ConfigError as exc:
        print(f"CHARTDROP UNKNOWN - {exc.problems[0]}")
        return UNKNOWN
    except (sqlite3.DatabaseError, OSError) as exc:
        print(f"CHARTDROP UNKNOWN - the queue database cannot be read ({type(exc).__name__})")
        return UNKNOWN
    print(result.line())
    return result.code
