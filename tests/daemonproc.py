"""Test helpers for the daemon as systemd runs it: a real ``chartdrop run``
subprocess, a real AF_UNIX datagram socket standing in for systemd's notify
socket, and a real TCP peer that answers one byte at a time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))


@dataclass
class Message:
    at: float  # time.monotonic()
    fields: dict[str, str]


class NotifySocket:
    """What systemd listens on: one datagram per sd_notify() call, KEY=VALUE lines."""

    def __init__(self, address: str) -> None:
        self.address = address  # as put in $NOTIFY_SOCKET ("@name" is abstract)
        bind_to: str | bytes = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.1)
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            lines = data.decode("utf-8").split("\n")
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            with self._lock:
                self.messages.append(Message(time.monotonic(), fields))

    def all(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def with_key(self, key: str, value: str | None = None, *, since: float = 0.0) -> list[Message]:
        return [
            m
            for m in self.all()
            if m.at >= since and key in m.fields and (value is None or m.fields[key] == value)
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


class DaemonProcess:
    """``chartdrop run -c CONFIG`` with its JSON log lines collected from stderr."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [*(prefix or []), CHARTDROP, "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="daemon-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.raw.append(line)
                if line.startswith("{"):
                    self.lines.append(json.loads(line))

    def logs(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [line for line in self.lines if line.get("event") == event]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._reader.join(10)
            if self.proc.stderr is not None and not self._reader.is_alive():
                self.proc.stderr.close()
        return code

    def stderr(self) -> str:
        with self._lock:
            return "".join(self.raw)


@contextmanager
def daemon_process(
    config: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> Iterator[DaemonProcess]:
    """The daemon for the length of a ``with`` block; always stopped (SIGTERM, then kill).
    ``prefix`` runs it through a launcher (setpriv, tests/confine.py)."""
    d = DaemonProcess(config, env, prefix)
    try:
        yield d
    finally:
        d.stop()


@dataclass
class TricklingPeer:
    """An HTTP peer on 127.0.0.1 that sends its response headers one byte every
    ``every`` seconds and never finishes: each read completes within httpx's
    read timeout, so no timeout ever fires. ``release()`` makes it answer
    503 at once from then on (and end the trickling connections)."""

    every: float = 0.3
    released: threading.Event = field(default_factory=threading.Event)
    connections: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="trickle-accept", daemon=True)
        self._accept.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            t = threading.Thread(target=self._answer, args=(conn,), name="trickle", daemon=True)
            t.start()
            self._threads.append(t)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            if self.released.is_set():
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nx-slow: ")
            deadline = time.monotonic() + 120  # bounded, whatever happens
            while not (self._stop.is_set() or self.released.is_set()):
                if time.monotonic() > deadline:
                    return
                try:
                    conn.sendall(b"a")
                except OSError:
                    return
                self._stop.wait(self.every)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)
        self._server.close()


@contextmanager
def tls_sandbox(state: Any, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The sandbox app served over HTTPS on 127.0.0.1 with a test CA (trustme):
    yields the base URL and the CA bundle to put in ``redox.ca_bundle``."""
    import trustme
    import uvicorn

    from daemon.sandbox.app import create_app

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file = tmp_path / "test-ca.pem", tmp_path / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    config = uvicorn.Config(
        create_app(state),
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(cert_file),
    )
    server = uvicorn.Server(config)
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tls-sandbox", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the TLS sandbox did not start")
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}", ca_file
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
