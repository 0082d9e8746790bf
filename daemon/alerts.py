"""Alerts without Prometheus: ``[alerts] command`` and/or ``[alerts] webhook_url``.

The main loop calls :meth:`Alerts.check` every few seconds. It looks at the
queue and fires on:

    destination.paused     a destination paused (reason: auth, outage, folder_missing)
    destination.recovered  that pause ended
    document.failed        documents went to failed/ (reason: the error kind, count)
    backlog.old            the oldest waiting document passed oldest_warning_minutes

Each condition (event and destination) fires at most once per
``repeat_minutes``. The command runs without a shell, with a timeout, its
output discarded; the facts are in its environment (``CHARTDROP_EVENT``,
``CHARTDROP_DESTINATION``, ``CHARTDROP_JOB_ID``, ``CHARTDROP_REASON``,
``CHARTDROP_COUNT``, ``CHARTDROP_SECONDS``, ``CHARTDROP_SEVERITY``,
``CHARTDROP_HOST``). The webhook gets the same facts as a JSON object. Facts
are destination names, job ids, kinds and counts from the code: never a file
name, a patient field or an error text. Both run on one background thread, so
a slow pager never holds up intake or delivery.
"""

from __future__ import annotations

import queue as queuelib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from daemon.config import Settings
from daemon.logs import get_logger, where
from daemon.queue import Queue

_PATH = "/usr/local/bin:/usr/bin:/bin"
ALERT_CHECK_SECONDS = 2.0  # how often the main loop looks for alert conditions


class Alerts:
    def __init__(
        self, settings: Settings, queue: Queue, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.clock = clock
        self.log = get_logger()
        self._paused: set[tuple[str, str]] = set()
        self._failed_after = clock()  # failures before this start are not news
        self._last_fired: dict[tuple[str, str], float] = {}
        self._outbox: queuelib.Queue[dict[str, str] | None] = queuelib.Queue()
        self._thread = threading.Thread(target=self._send_loop, name="alerts", daemon=True)
        self._thread.start()

    # -- conditions -------------------------------------------------------
    def check(self) -> None:
        now = self.clock()
        current = {(p.destination, p.kind) for p in self.queue.pauses()}
        for dest, kind in sorted(current - self._paused):
            self.fire("destination.paused", dest, reason=kind, severity="critical")
        for dest, kind in sorted(self._paused - current):
            self.fire("destination.recovered", dest, reason=kind, severity="ok")
        self._paused = current
        failed = [
            j
            for j in self.queue.failed_jobs(since=self._failed_after)
            if j.finished_at is not None and j.finished_at >= self._failed_after
        ]
        if failed:
            self._failed_after = max(j.finished_at or now for j in failed) + 1e-6
            by_dest: dict[str, list[Any]] = {}
            for job in failed:
                by_dest.setdefault(job.destination, []).append(job)
            for dest, jobs in sorted(by_dest.items()):
                last = jobs[-1]
                self.fire(
                    "document.failed",
                    dest,
                    job_id=last.id,
                    reason=last.error_kind or "unknown",
                    count=len(jobs),
                    severity="warning",
                )
        limit = self.settings.alerts.oldest_warning_minutes * 60
        for dest, s in self.queue.status(now=now).items():
            age = s.oldest_waiting_seconds
            if age is not None and age >= limit:
                self.fire("backlog.old", dest, seconds=int(age), severity="warning")

    def fire(
        self,
        event: str,
        destination: str,
        *,
        job_id: str | None = None,
        reason: str | None = None,
        count: int | None = None,
        seconds: int | None = None,
        severity: str = "warning",
    ) -> bool:
        """Queue one alert unless this condition fired within repeat_minutes."""
        now = self.clock()
        key = (event, destination)
        last = self._last_fired.get(key)
        if last is not None and now - last < self.settings.alerts.repeat_minutes * 60:
            return False
        self._last_fired[key] = now
        facts = {
            "event": event,
            "destination": destination,
            "severity": severity,
            "host": socket.gethostname(),
            "job_id": job_id,
            "reason": reason,
            "count": None if count is None else str(count),
            "seconds": None if seconds is None else str(seconds),
        }
        self._outbox.put({k: v for k, v in facts.items() if v is not None})
        return True

    # -- delivery ---------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            facts = self._outbox.get()
            if facts is None:
                return
            self._run_command(facts)
            self._post_webhook(facts)

    def _run_command(self, facts: dict[str, str]) -> None:
        cfg = self.settings.alerts
        if not cfg.command:
            return
        argv = [cfg.command] if isinstance(cfg.command, str) else list(cfg.command)
        env = {"PATH": _PATH, "LANG": "C.UTF-8"}
        env |= {f"CHARTDROP_{k.upper()}": v for k, v in facts.items()}
        try:
            done = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=cfg.command_timeout_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.log.error("alert.failed", kind="command", alert=facts["event"], reason="timeout")
            return
        except OSError as exc:
            self.log.error(
                "alert.failed", kind="command", alert=facts["event"], exc_type=type(exc).__name__
            )
            return
        if done.returncode != 0:
            self.log.error(
                "alert.failed",
                kind="command",
                alert=facts["event"],
                reason=f"exit {done.returncode}",
            )
        else:
            self.log.info("alert.sent", kind="command", alert=facts["event"])

    def _post_webhook(self, facts: dict[str, str]) -> None:
        url = self.settings.alerts.webhook_url
        if not url:
            return
        ca = self.settings.redox.ca_bundle
        try:
            with httpx.Client(
                verify=ssl.create_default_context(cafile=str(ca)) if ca else True,
                timeout=self.settings.alerts.command_timeout_seconds,
                follow_redirects=False,
            ) as client:
                response = client.post(url, json=facts)
            if response.status_code >= 300:
                self.log.error(
                    "alert.failed", kind="webhook", alert=facts["event"],
                    http_status=response.status_code,
                )  # fmt: skip
            else:
                self.log.info("alert.sent", kind="webhook", alert=facts["event"])
        except httpx.HTTPError as exc:
            self.log.error(
                "alert.failed", kind="webhook", alert=facts["event"],
                exc_type=type(exc).__name__, frames=where(exc),
            )  # fmt: skip

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (up to ``timeout``), then stop the thread."""
        self._outbox.put(None)
        self._thread.join(timeout)


def start_alerts(settings: Settings, queue: Queue) -> Alerts | None:
    cfg = settings.alerts
    if not cfg.command and not cfg.webhook_url:
        return None
    return Alerts(settings, queue)
