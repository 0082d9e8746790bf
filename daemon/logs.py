"""structlog configuration: JSON lines for the journal, readable text on a terminal.

Log events are names (``job.sent``, ``job.failed``) with keys, never
sentences. No PHI ever: no patient data, no file names, no file contents.
As a second line of defence, only keys on an allow-list are printed; any
other key is replaced by ``"[redacted]"`` so a careless ``log.info(..., name=x)``
cannot leak.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SAFE_KEYS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "job_id",
        "destination",
        "state",
        "attempt",
        "attempts",
        "http_status",
        "error_kind",
        "error",
        "remote_id",
        "retry_in",
        "size",
        "sha256",
        "count",
        "workers",
        "destinations",
        "url",
        "port",
        "path_kind",
        "reason",
        "kind",
        "was",
        "probe_in",
        "step",
        "seconds",
        "queued",
        "version",
        "delivered_via",
        "config",
        "state_dir",
        "unknown_outcome",
        "signal",
        "paused",
        "exc_type",
        "leases_reset",
        "intake_finished",
        "intake_abandoned",
        "moves_finished",
        "stalled",
        "problems",
        "added",
        "changed",
        "removed",
        "client_rebuilt",
        "needs_restart",
        "files_deleted",
        "files_missing",
        "files_kept",
        "rows_scrubbed",
        "files_unknown",
    }
)


def _redact_unknown(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key not in SAFE_KEYS:
            event_dict[key] = "[redacted]"
    return event_dict


class _QuietWatchdogStop(logging.Filter):
    """watchdog logs an error when its emitter thread is stopped mid-read: not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


def configure(*, level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the process. ``fmt`` is auto, json or console."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.getLogger("watchdog.observers.inotify").addFilter(_QuietWatchdogStop())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_unknown,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger().bind(**initial)
