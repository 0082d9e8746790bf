"""structlog configuration: JSON lines for the journal, readable text on a terminal.

Log events are names (``job.sent``, ``job.failed``) with keys, never
sentences. No PHI ever: no patient data, no file names, no file contents.
As a second line of defence, only keys on an allow-list are printed; any
other key is replaced by ``"[redacted]"`` so a careless ``log.info(..., name=x)``
cannot leak.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import syslog
import threading
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
        "requeued",
        "moved_to_failed",
        "unknown_files",
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


class _TolerantPrintLogger(structlog.PrintLogger):
    """A PrintLogger whose sink may fail (``/dev/full``, a pipe whose reader is gone,
    a closed file) without the error reaching the code that logged: logging must
    never stop the pipeline. The first failure is reported once to syslog (the
    journal, where there is one); lines are dropped and counted meanwhile, and the
    count is logged as ``log.lines_dropped`` once the sink works again."""

    dropped = 0  # shared by every logger of the process: there is one sink
    _report_lock = threading.Lock()

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except (OSError, ValueError) as exc:  # ValueError: the sink was closed
            self._failed(exc)
            return
        if _TolerantPrintLogger.dropped:
            with _TolerantPrintLogger._report_lock:
                count, _TolerantPrintLogger.dropped = _TolerantPrintLogger.dropped, 0
            if count:
                self.msg(json.dumps({"event": "log.lines_dropped", "count": count}))

    @staticmethod
    def _failed(exc: BaseException) -> None:
        with _TolerantPrintLogger._report_lock:
            first = _TolerantPrintLogger.dropped == 0
            _TolerantPrintLogger.dropped += 1
        if first:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "closed"
            with contextlib.suppress(OSError):
                syslog.syslog(
                    syslog.LOG_ERR,
                    f"chartdrop: writing the log failed ({reason}); lines are dropped "
                    "until it works again",
                )

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


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
        logger_factory=lambda *_args: _TolerantPrintLogger(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger().bind(**initial)
