"""structlog configuration: JSON lines for the journal, readable text on a terminal.

Log events are names (``job.sent``, ``job.failed``) with keys, never
sentences. No PHI ever: no patient data, no file names, no file contents.
As a second line of defence, only keys on an allow-list are printed; any
other key is replaced by ``"[redacted]"`` so a careless ``log.info(..., name=x)``
cannot leak.

Priorities: when stderr is the journal (``$JOURNAL_STREAM`` names it) every
line starts with its syslog priority, ``<3>`` error … ``<7>`` debug, which
journald strips and stores as ``PRIORITY`` (so ``journalctl -p err`` finds
daemon problems and ``-p warning`` finds ``job.failed``). A few outcome
events are raised to the level an admin needs them at (:data:`EVENT_LEVELS`),
wherever they are logged.

Unexpected exceptions (an uncaught one in any thread, and the ones the daemon
catches to stay alive) are logged with :func:`where`: ``file:line:function``
of every frame, never the message or the locals, which may hold PHI.
Standard-library loggers (httpx, watchdog) go through the same allow-list:
their logger name and level are kept, their message is not (it may carry a
path or URL).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import syslog
import threading
import traceback
from collections.abc import Callable, MutableMapping
from pathlib import Path
from types import TracebackType
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
        "temp_files_removed",
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
        "frames",
        "thread",
        "alert",
        "requeued",
        "moved_to_failed",
        "unknown_files",
    }
)

# Outcome events whose level an admin relies on, whatever the call site says.
EVENT_LEVELS = {"job.failed": "warning"}
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
_RANK = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def where(exc: BaseException | TracebackType | None) -> list[str]:
    """``file:line:function`` of every frame of ``exc``'s traceback, innermost last.
    Files are shown as their last two path parts (``daemon/delivery.py``): no
    message, no locals, no arguments."""
    tb = exc.__traceback__ if isinstance(exc, BaseException) else exc
    out = []
    for frame in traceback.extract_tb(tb):
        parts = Path(frame.filename).parts[-2:]
        out.append(f"{'/'.join(parts)}:{frame.lineno}:{frame.name}")
    return out[-30:]


def _raise_level(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    wanted = EVENT_LEVELS.get(str(event_dict.get("event")))
    level = str(event_dict.get("level", "info"))
    if wanted is not None and _RANK.get(wanted, 0) > _RANK.get(level, 0):
        event_dict["level"] = wanted
    return event_dict


def journal_is_stderr(stream: TextIO) -> bool:
    """True if ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(dev and ino) and (str(st.st_dev), str(st.st_ino)) == (dev, ino)


def _with_priority(renderer: Callable[..., Any]) -> Callable[..., Any]:
    def render(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        priority = PRIORITIES.get(str(event_dict.get("level", "info")), 6)
        return f"<{priority}>{renderer(logger, name, event_dict)}"

    return render


class _StdlibToStructlog(logging.Handler):
    """httpx, watchdog and other standard-library loggers: name and level only."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger()
            keys: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                keys["exc_type"] = type(record.exc_info[1]).__name__
                keys["frames"] = where(record.exc_info[1])
            level = record.levelname.lower()
            method = getattr(log, level if level in _RANK else "warning")
            method("library.log", **keys)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _install_exception_hooks() -> None:
    """Uncaught exceptions in any thread: logged with :func:`where`, no message."""

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        structlog.get_logger().error(
            "daemon.unexpected_exception",
            exc_type=args.exc_type.__name__,
            thread=args.thread.name if args.thread is not None else None,
            frames=where(args.exc_traceback),
        )

    def main_hook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        structlog.get_logger().critical(
            "daemon.unexpected_exception",
            exc_type=exc_type.__name__,
            thread="MainThread",
            frames=where(tb),
        )

    threading.excepthook = thread_hook
    sys.excepthook = main_hook


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
    if journal_is_stderr(out):
        renderer = _with_priority(renderer)
    logging.getLogger("watchdog.observers.inotify").addFilter(_QuietWatchdogStop())
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibToStructlog)]:
        root.removeHandler(handler)
    bridge = _StdlibToStructlog(logging.WARNING)
    bridge.addFilter(_QuietWatchdogStop())
    root.addHandler(bridge)
    _install_exception_hooks()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _raise_level,
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
