"""The ``chartdrop`` command line. Errors are one clear sentence and a non-zero
exit, never a traceback. Output never contains PHI: jobs are shown by id,
destination, state, size and hash, never by file name or patient data."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.config import Settings, config_path, load_settings
from daemon.errors import ChartdropError, ConfigError, InputError
from daemon.fsutil import fsync_dir, rename_noreplace
from daemon.inboxes import read_report
from daemon.names import suffixed

EXIT_ERROR = 2
EXIT_INVALID = 1


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args.config))


def _open_queue(settings: Settings) -> Any:
    from daemon.queue import Queue

    if not settings.database_path.exists():
        raise ConfigError(
            f"no database at {settings.database_path} yet: "
            "has `chartdrop run` started with this config?"
        )
    return Queue.open_readonly(settings.database_path)


def _ts(value: float | None) -> str:
    return (
        "-"
        if value is None
        else datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
    )


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.service import Service

    path = config_path(args.config)
    settings = load_settings(path)
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    service = Service(settings, config_path=path)
    service.install_signals()
    service.start()
    return service.run()


def cmd_check(args: argparse.Namespace) -> int:
    from daemon.service import Service, folder_problems

    settings = _settings(args)
    problems = folder_problems(settings)
    for key_name, key in secret_files(settings):
        if key is None or not key.is_file():
            problems.append(f"{key_name} ({key}) does not exist")
        elif key.stat().st_mode & 0o077:
            print(f"warning: {key} is readable by group or others; chmod 600 it", file=sys.stderr)
    try:
        sender = Service.make_sender(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
        sender = None
    if problems:
        raise ConfigError(problems)
    if args.online and sender is not None:
        models = {d.model for d in settings.destination}
        if models - {"FHIR"}:
            sender.redox.check_auth()
            print("online: authenticated with Redox")
        if "FHIR" in models:
            sender.fhir.check_auth()
            print("online: authenticated with the FHIR token endpoint")
    print(f"ok: {len(settings.destination)} destination(s), state_dir {settings.state_dir}")
    return 0


def secret_files(settings: Settings) -> list[tuple[str, Path | None]]:
    """The secret files the configured destinations need, with their config keys."""
    models = {d.model for d in settings.destination}
    out: list[tuple[str, Path | None]] = []
    if models - {"FHIR"}:
        if settings.redox.auth == "legacy":
            out.append(("redox.secret_file", settings.redox.secret_file))
        else:
            out.append(("redox.private_key_file", settings.redox.private_key_file))
    if "FHIR" in models:
        out.append(("fhir.client_secret_file", settings.fhir.client_secret_file))
    return out


def _check_readable(path: Path) -> None:
    """status reads only a few pages: damage elsewhere must not look like a normal
    queue. ``PRAGMA quick_check`` on a read-only connection (safe beside the daemon);
    sqlite3.DatabaseError, reported by :func:`main` as damaged or unreadable (exit 2)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    if rows != [("ok",)]:
        raise sqlite3.DatabaseError(f"quick_check found {len(rows)} problem(s)")


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    queue = _open_queue(settings)
    _check_readable(settings.database_path)
    status = queue.status()
    pauses: dict[str, list[dict[str, Any]]] = {}
    for pause in queue.pauses():
        pauses.setdefault(pause.destination, []).append(
            {
                "kind": pause.kind,
                "reason": pause.reason,
                "since": _ts(pause.since),
                "next_try": _ts(pause.until) if pause.until is not None else None,
            }
        )
    intake = read_report(settings.state_dir)  # empty unless the daemon is running
    rows = []
    for dest in settings.destination:
        s = status.get(dest.name)
        seen = intake.get(dest.name, {})
        rows.append(
            {
                "destination": dest.name,
                "queued": s.queued if s else 0,
                "retrying": s.retrying if s else 0,
                "in_flight": s.in_flight if s else 0,
                "awaiting_move": s.awaiting_move if s else 0,
                "done_today": s.done_today if s else 0,
                "failed": s.failed if s else 0,
                "oldest_waiting_seconds": s.oldest_waiting_seconds if s else None,
                "last_success": _ts(s.last_success_at) if s and s.last_success_at else None,
                "paused": pauses.get(dest.name, []),
                "incomplete_in_inbox": seen.get("incomplete", 0),
                "incomplete_since": _ts(seen["incomplete_since"])
                if seen.get("incomplete_since")
                else None,
                "intake_errors": seen.get("errors", 0),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (
        "destination",
        "queued",
        "retrying",
        "in flight",
        "done today",
        "failed",
        "incomplete",
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
            r["failed"],
            r["incomplete_in_inbox"],
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
    return 0


def _job_dict(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "destination": job.destination,
        "state": str(job.state),
        "attempts": job.attempts,
        "document_id": job.document_id,
        "size": job.size,
        "sha256": job.sha256,
        "remote_id": job.remote_id,
        "http_status": job.http_status,
        "error_kind": job.error_kind,
        "created": _ts(job.created_at),
        "updated": _ts(job.updated_at),
    }


def cmd_jobs(args: argparse.Namespace) -> int:
    queue = _open_queue(_settings(args))
    states = [args.state] if args.state else []
    jobs = [
        _job_dict(j)
        for j in queue.jobs(states=states, destination=args.destination, limit=args.limit)
    ]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    for j in jobs:
        print(
            f"{j['id']}  {j['destination']:<12} {j['state']:<9} attempts={j['attempts']} "
            f"size={j['size']} error={j['error_kind'] or '-'} updated={j['updated']}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    queue = _open_queue(_settings(args))
    job = queue.get(args.job)
    if job is None:
        raise ChartdropError(f"no job with id {args.job}")
    data = _job_dict(job)
    data["last_error"] = job.last_error
    data["events"] = queue.events(job.id)
    print(json.dumps(data, indent=2, default=str))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from daemon import audit

    since = audit.parse_when(args.since)
    until = audit.parse_when(args.until, end=True) if args.until else None
    queue = _open_queue(_settings(args))
    events = queue.audit_rows(
        since=since, until=until, destination=args.destination, sha256=args.sha256
    )
    audit.write(sys.stdout, "json" if args.json else "csv" if args.csv else "text", events)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from daemon.outgoing import check_sidecar
    from daemon.sidecar import read_sidecar

    settings = _settings(args)
    try:
        dest = settings.get_destination(args.destination)
    except KeyError:
        raise ChartdropError(f"no destination named {args.destination!r} in the config") from None
    try:
        data = read_sidecar(Path(args.sidecar))
        alone = data.get("EventType") == "Delete"
        check_sidecar(
            dest=dest,
            settings=settings,
            sidecar=data,
            file_name=args.file_name,
            redox_type=None if alone else "PDF",
        )
    except FileNotFoundError:
        raise ChartdropError("the sidecar file does not exist") from None
    except InputError as exc:
        print(f"invalid sidecar for destination {dest.name}:")
        for problem in exc.problems:
            print(f"  - {problem}")
        return EXIT_INVALID
    print(f"ok: the sidecar is valid for destination {dest.name}")
    return 0


def _copy_in(src: Path, inbox: Path) -> Path:
    """Copy ``src`` to a hidden temp name in the inbox (ignored by intake), fsynced."""
    from daemon.fsutil import open_document

    tmp = inbox / f".chartdrop-drop-{uuid.uuid4().hex}.part"
    with open_document(src) as fin:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
    return tmp


def cmd_drop(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        dest = settings.get_destination(args.destination)
    except KeyError:
        raise ChartdropError(f"no destination named {args.destination!r} in the config") from None
    doc, side = Path(args.file), Path(args.sidecar)
    tmp_doc = _copy_in(doc, dest.inbox)
    tmp_side = _copy_in(side, dest.inbox)
    try:
        n = 0
        while True:
            name = suffixed(doc.name, n)
            n += 1
            # The sidecar first, then the document: when the document appears, its pair is complete.
            try:
                rename_noreplace(tmp_side, dest.inbox / f"{name}.json")
            except FileExistsError:
                continue
            try:
                rename_noreplace(tmp_doc, dest.inbox / name)
            except FileExistsError:
                (dest.inbox / f"{name}.json").rename(tmp_side)
                continue
            break
        fsync_dir(dest.inbox)
    finally:
        tmp_doc.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    print(f"dropped into destination {dest.name}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from daemon.demo import run_sandbox

    return run_sandbox(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chartdrop", description=__doc__.split(".")[0] if __doc__ else None
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, func: Any, help_: str, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        if config:
            sp.add_argument(
                "-c",
                "--config",
                help="config file (default $CHARTDROP_CONFIG or /etc/chartdrop/chartdrop.toml)",
            )
        return sp

    cmd("run", cmd_run, "run the daemon (systemd's ExecStart)")
    c = cmd("check", cmd_check, "validate the config, folders and permissions")
    c.add_argument("--online", action="store_true", help="also authenticate with Redox")
    s = cmd(
        "status", cmd_status, "per destination: queued, retrying, in flight, done today, failed"
    )
    s.add_argument("--json", action="store_true")
    j = cmd("jobs", cmd_jobs, "list jobs")
    j.add_argument("--state")
    j.add_argument("-d", "--destination")
    j.add_argument("--limit", type=int, default=100)
    j.add_argument("--json", action="store_true")
    sh = cmd("show", cmd_show, "one job's history")
    sh.add_argument("job")
    au = cmd("audit", cmd_audit, "export the audit trail (every state change, no patient data)")
    au.add_argument(
        "--since", required=True, help="YYYY-MM-DD (local midnight) or an ISO date and time"
    )
    au.add_argument("--until", help="YYYY-MM-DD (that whole day included) or an ISO date and time")
    au.add_argument("-d", "--destination")
    au.add_argument("--sha256", help="only this document (its SHA-256, hex)")
    fmt = au.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    v = cmd("validate", cmd_validate, "check a sidecar offline, every error at once")
    v.add_argument("sidecar")
    v.add_argument("-d", "--destination", required=True)
    v.add_argument(
        "--file-name",
        default="document.pdf",
        help="the document's file name, for filename_pattern fields (default: document.pdf)",
    )
    d = cmd("drop", cmd_drop, "atomic hand-off of a document and its sidecar into an inbox")
    d.add_argument("file")
    d.add_argument("--sidecar", required=True)
    d.add_argument("-d", "--destination", required=True)
    sb = cmd("sandbox", cmd_sandbox, "run the local Redox-compatible API alone", config=False)
    sb.add_argument("--port", type=int, default=8765)
    sb.add_argument("--dir", default="chartdrop-sandbox", help="where keys and blobs are kept")
    sb.add_argument(
        "--public-key", help="PEM public key of the client (default: generate a pair in --dir)"
    )
    sb.add_argument("--client-id", default="chartdrop-demo")
    sb.add_argument("--key-id", default="demo-key")
    sb.add_argument("--fhir-client-id", default="chartdrop-demo")
    sb.add_argument(
        "--fhir-client-secret-file",
        help="file holding the FHIR client's secret (default: generate one in --dir)",
    )
    sb.add_argument("--error-rate", type=float, default=0.0)
    sb.add_argument("--error-status", type=int, default=503)
    sb.add_argument("--retry-after")
    sb.add_argument("--latency", type=float, default=0.0)
    sb.add_argument("--upload-max-bytes", type=int, default=30_000_000)
    dm = cmd("demo", cmd_demo, "the main job against the built-in sandbox", config=False)
    dm.add_argument(
        "--dir", default="chartdrop-demo", help="demo folder tree (default ./chartdrop-demo)"
    )
    dm.add_argument(
        "--exit-when-idle", action="store_true", help="exit 0 once every document has an outcome"
    )
    dm.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="with --exit-when-idle: give up after this many seconds",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        if len(exc.problems) == 1:
            print(f"chartdrop: {exc.problems[0]}", file=sys.stderr)
        else:
            print(
                f"chartdrop: the configuration has {len(exc.problems)} problems:", file=sys.stderr
            )
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
        return EXIT_ERROR
    except ChartdropError as exc:
        print(f"chartdrop: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except sqlite3.DatabaseError as exc:  # SQLite's texts name no documents or patients
        print(
            f"chartdrop: the queue database is damaged or unreadable ({exc}); "
            "restore it from backup",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"chartdrop: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
