"""``chartdrop jobs``, ``show``, ``retry`` and ``audit``: the jobs by id,
destination, state, size and hash, never by file name or patient data."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from daemon.cli_common import EXIT_INVALID, open_queue, settings_from, ts
from daemon.errors import ChartdropError, ConfigError

if TYPE_CHECKING:
    from daemon.config import Settings


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
        "created": ts(job.created_at),
        "updated": ts(job.updated_at),
    }


JOB_STATES = ("intake", "queued", "retrying", "leased", "sent", "rejected", "done", "failed",
              "abandoned")  # fmt: skip


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    queue = open_queue(settings)
    configured = {d.name for d in settings.destination}
    if (
        args.destination
        and args.destination not in configured
        and not queue.jobs(destination=args.destination, limit=1)  # a removed one's jobs stay
    ):
        raise ChartdropError(f"no destination named {args.destination!r} in the config")
    retrying = args.state == "retrying"  # queued again after at least one failed attempt
    states = ["queued"] if retrying else [args.state] if args.state else []
    found = queue.jobs(states=states, destination=args.destination, limit=args.limit)
    jobs = [_job_dict(j) for j in found if not retrying or j.attempts > 0]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print("no jobs")
    for j in jobs:
        print(
            f"{j['id']}  {j['destination']:<12} {j['state']:<9} attempts={j['attempts']} "
            f"size={j['size']} error={j['error_kind'] or '-'} updated={j['updated']}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from daemon import audit

    queue = open_queue(settings_from(args))
    job = _find_job(queue, args.job)
    data = _job_dict(job)
    data["last_error"] = job.last_error
    data["events"] = queue.events(job.id)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for key in ("id", "destination", "state", "attempts", "document_id", "size", "sha256",
                "remote_id", "http_status", "error_kind", "created", "updated"):  # fmt: skip
        if data[key] not in (None, ""):
            print(f"{key.replace('_', ' ') + ':':<14}{data[key]}")
    if job.last_error:
        print("last error:")
        for line in job.last_error.splitlines():
            print(f"  {line}")
    print("history:")
    for event in data["events"]:
        extra = [
            f"HTTP {event['http_status']}" if event.get("http_status") else "",
            event.get("error_kind") or "",
            f"remote {event['remote_id']}" if event.get("remote_id") else "",
            event.get("detail") or "",
        ]
        print(
            f"  {ts(event['at'])}  {audit.outcome(event):<10} attempt {event['attempt']}"
            + "".join(f"  {x}" for x in extra if x)
        )
    return 0


def _writable_queue(settings: Settings) -> Any:
    from daemon.queue import Queue

    if not settings.database_path.exists():
        raise ConfigError(
            f"no database at {settings.database_path} yet: "
            "has `chartdrop run` started with this config?"
        )
    return Queue(settings.database_path)


def cmd_retry(args: argparse.Namespace) -> int:
    from daemon import audit
    from daemon.retry import retry_job

    if bool(args.jobs) == bool(args.failed):
        raise ChartdropError("name the jobs to retry, or use --failed (not both)")
    if (args.destination or args.since) and not args.failed:
        raise ChartdropError("-d and --since go with --failed")
    settings = settings_from(args)
    if args.destination and args.destination not in {d.name for d in settings.destination}:
        raise ChartdropError(f"no destination named {args.destination!r} in the config")
    queue = _writable_queue(settings)
    if args.failed:
        since = audit.parse_when(args.since) if args.since else None
        jobs = queue.failed_jobs(destination=args.destination, since=since)
        if not jobs:
            print("no failed jobs to retry")
            return 0
    else:
        jobs = [_find_job(queue, key) for key in args.jobs]
    refused = 0
    for job in jobs:
        result = retry_job(settings, queue, job, allow_duplicate=args.allow_duplicate)
        if result.requeued:
            print(
                f"requeued {job.id} ({job.destination}), same DocumentID {job.document_id}; "
                "its note in failed/ was removed"
            )
        else:
            refused += 1
            print(f"not retried {job.id} ({job.destination}):")
            for problem in result.problems:
                print(f"  - {problem}")
    return EXIT_INVALID if refused else 0


def _find_job(queue: Any, key: str) -> Any:
    """A job by id or by a prefix of at least 4 characters; ambiguity lists the matches."""
    job = queue.get(key)
    if job is not None:
        return job
    if len(key.strip()) >= 4:
        matches = queue.find_prefix(key)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listed = ", ".join(j.id for j in matches[:5])
            raise ChartdropError(f"{key} matches more than one job: {listed}")
    elif key.strip():
        raise ChartdropError(f"{key} is too short: give at least 4 characters of the job id")
    raise ChartdropError(f"no job with id {key}")


def cmd_audit(args: argparse.Namespace) -> int:
    from daemon import audit

    since = audit.parse_when(args.since)
    until = audit.parse_when(args.until, end=True) if args.until else None
    queue = open_queue(settings_from(args))
    events = queue.audit_rows(
        since=since, until=until, destination=args.destination, sha256=args.sha256
    )
    audit.write(sys.stdout, "json" if args.json else "csv" if args.csv else "text", events)
    return 0
