"""Prometheus metrics: on a loopback port or a unix socket (``[metrics] listen``)
and/or a file for node_exporter's textfile collector (``[metrics] textfile``),
both off by default.

Most numbers are read from the queue database at scrape time, so they are the
truth of the jobs and survive restarts (a counter never goes back). Only the
send-duration histogram lives in the process. Labels are destination names,
states, outcomes and pause kinds from the config and the code: never a file
name, a patient field or an error text.

    chartdrop_up                                          1 while the daemon runs
    chartdrop_documents_total{destination,outcome}        done, failed
    chartdrop_send_attempts_total{destination,result}     sent, retry, rejected
    chartdrop_queue_jobs{destination,state}               every job state
    chartdrop_oldest_waiting_seconds{destination}
    chartdrop_last_success_timestamp_seconds{destination}
    chartdrop_destination_paused{destination,reason}      auth, outage, folder_missing
    chartdrop_inbox_waiting{destination,reason}           incomplete, awaiting_sidecar
    chartdrop_send_duration_seconds{destination}          histogram of one claimed job's turn
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, MetricsHandler, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.check import count_awaiting_sidecar
from daemon.config import Settings
from daemon.inboxes import REPORT_NAME
from daemon.logs import get_logger, where
from daemon.queue import JobState, Queue

PAUSE_KINDS = ("auth", "outage", "folder_missing")
METRIC_NAMES = (
    "chartdrop_up",
    "chartdrop_documents_total",
    "chartdrop_send_attempts_total",
    "chartdrop_queue_jobs",
    "chartdrop_oldest_waiting_seconds",
    "chartdrop_last_success_timestamp_seconds",
    "chartdrop_destination_paused",
    "chartdrop_inbox_waiting",
    "chartdrop_send_duration_seconds",
)


class QueueCollector(Collector):
    """Reads the numbers from the queue (and the inboxes) at every scrape."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        self.settings = settings
        self.queue = queue
        self.running = True

    def _incomplete(self) -> dict[str, int]:
        import json

        try:
            data = json.loads((self.settings.state_dir / REPORT_NAME).read_text())
            dests = data.get("destinations", {})
            return {name: int(v.get("incomplete", 0)) for name, v in dests.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def collect(self) -> Iterator[Any]:
        settings, queue = self.settings, self.queue
        names = [d.name for d in settings.destination]
        counts = queue.counts_by_destination()
        known = sorted(set(names) | {dest for dest, _ in counts})
        up = GaugeMetricFamily("chartdrop_up", "1 while the chartdrop daemon runs.")
        up.add_metric([], 1 if self.running else 0)
        yield up
        docs = CounterMetricFamily(
            "chartdrop_documents",
            "Documents that reached done/ or failed/.",
            labels=["destination", "outcome"],
        )
        jobs = GaugeMetricFamily(
            "chartdrop_queue_jobs", "Jobs by state.", labels=["destination", "state"]
        )
        for dest in known:
            docs.add_metric([dest, "done"], counts.get((dest, JobState.DONE), 0))
            docs.add_metric([dest, "failed"], counts.get((dest, JobState.FAILED), 0))
            for state in JobState:
                jobs.add_metric([dest, str(state)], counts.get((dest, state), 0))
        yield docs
        yield jobs
        attempts = CounterMetricFamily(
            "chartdrop_send_attempts",
            "Send attempts by how they ended (sent, retry, rejected).",
            labels=["destination", "result"],
        )
        by_result = queue.attempt_counts()
        for dest in known:
            for result in ("sent", "retry", "rejected"):
                attempts.add_metric([dest, result], by_result.get((dest, result), 0))
        yield attempts
        status = queue.status()
        oldest = GaugeMetricFamily(
            "chartdrop_oldest_waiting_seconds",
            "Age of the oldest document waiting to be sent (0 if none).",
            labels=["destination"],
        )
        last = GaugeMetricFamily(
            "chartdrop_last_success_timestamp_seconds",
            "When the destination last accepted a document (Unix time; 0 never).",
            labels=["destination"],
        )
        for dest in known:
            s = status.get(dest)
            oldest.add_metric([dest], (s.oldest_waiting_seconds or 0.0) if s else 0.0)
            last.add_metric([dest], (s.last_success_at or 0.0) if s else 0.0)
        yield oldest
        yield last
        paused = GaugeMetricFamily(
            "chartdrop_destination_paused",
            "1 while the destination is paused for this reason.",
            labels=["destination", "reason"],
        )
        active = {(p.destination, p.kind) for p in queue.pauses()}
        for dest in names:
            for kind in PAUSE_KINDS:
                paused.add_metric([dest, kind], 1 if (dest, kind) in active else 0)
        yield paused
        inbox = GaugeMetricFamily(
            "chartdrop_inbox_waiting",
            "Documents held in the inbox (incomplete, awaiting_sidecar).",
            labels=["destination", "reason"],
        )
        incomplete = self._incomplete()
        for d in settings.destination:
            inbox.add_metric([d.name, "incomplete"], incomplete.get(d.name, 0))
            inbox.add_metric([d.name, "awaiting_sidecar"], count_awaiting_sidecar(d) or 0)
        yield inbox


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = self.socket.accept()
        return conn, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)


class Metrics:
    """The registry, the HTTP listener and the textfile writer of one daemon."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        self.settings = settings
        self.log = get_logger()
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = QueueCollector(settings, queue)
        self.registry.register(self.collector)
        self.duration = Histogram(
            "chartdrop_send_duration_seconds",
            "Time a worker spent on one claimed job (upload and send included).",
            labelnames=["destination"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def observe_send(self, destination: str, seconds: float) -> None:
        self.duration.labels(destination=destination).observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def start(self) -> None:
        cfg = self.settings.metrics
        if cfg.listen:
            self._server = self._listen(cfg.listen)
            t = threading.Thread(
                target=self._server.serve_forever, name="metrics-http", daemon=True
            )
            t.start()
            self._threads.append(t)
            self.log.info("metrics.listening", url=cfg.listen)
        if cfg.textfile is not None:
            t = threading.Thread(target=self._write_loop, name="metrics-textfile", daemon=True)
            t.start()
            self._threads.append(t)

    def _listen(self, listen: str) -> Any:
        handler = MetricsHandler.factory(self.registry)
        if listen.startswith("unix:"):
            path = Path(listen[len("unix:") :])
            path.unlink(missing_ok=True)
            server: Any = _UnixHTTPServer(str(path), handler)
            path.chmod(0o660)
            return server
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        cls = ThreadingHTTPServer
        if ":" in host:

            class _V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            cls = _V6
        return cls((host, int(port)), handler)

    def write_textfile(self) -> None:
        path = self.settings.metrics.textfile
        assert path is not None
        write_to_textfile(str(path), self.registry)  # a temp file, then rename: atomic

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.write_textfile()
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop the daemon
                self.log.warning(
                    "metrics.textfile_failed", exc_type=type(exc).__name__, frames=where(exc)
                )
            self._stop.wait(self.settings.metrics.textfile_seconds)

    def close(self) -> None:
        """Stop serving; a textfile is left saying ``chartdrop_up 0``."""
        self._stop.set()
        for t in self._threads:
            if t.name == "metrics-textfile":
                t.join(5)
        if self.settings.metrics.textfile is not None:
            self.collector.running = False
            try:
                self.write_textfile()
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                self.log.warning("metrics.textfile_failed", exc_type=type(exc).__name__)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            listen = self.settings.metrics.listen or ""
            if listen.startswith("unix:"):
                Path(listen[len("unix:") :]).unlink(missing_ok=True)
        for t in self._threads:
            t.join(5)


def start_metrics(settings: Settings, queue: Queue) -> Metrics | None:
    """The daemon's metrics, if ``[metrics]`` asks for any."""
    if not settings.metrics.listen and settings.metrics.textfile is None:
        return None
    metrics = Metrics(settings, queue)
    metrics.start()
    return metrics
