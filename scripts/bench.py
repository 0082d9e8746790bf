"""chartdrop's benchmark: the daemon, the ceiling and a naive loop, side by side.

    uv run python scripts/bench.py            # the full run (a 20,000-file backlog)
    uv run python scripts/bench.py --quick    # under 3 minutes (a 1,000-file backlog)

Everything runs on this machine against a Redox-shaped peer started as a
separate process on 127.0.0.1 (its CPU is not counted for anyone):
``scripts/fast_peer.py`` by default, which answers without checking and is never
the bottleneck, or with ``--peer sandbox`` the project's sandbox, which
validates and stores every body and caps everyone at ≈90 requests a second.
Three contenders, with the peer answering in 0 ms and in 50 ms:

- **chartdrop**: ``chartdrop run`` as a real subprocess with a temp config
  (``--workers`` workers, ``--settle`` settle_seconds). Its CPU is read from
  ``/proc/PID/stat`` (utime + stime + cutime + cstime) before the first drop
  and after the last document is in ``done/``.
- **ceiling**: the same HTTP bodies (built by chartdrop's own code, base64 and
  JSON done before the clock starts) POSTed from memory by as many keep-alive
  ``http.client`` threads as chartdrop has workers. CPU: this process's own.
- **naive**: ``inotifywait -m | while read; do … | curl; mv; done`` in bash,
  one document at a time, no settle window, no queue, no durability. CPU: the
  shell and every process it started (``wait4``'s rusage).

docs/s is ``(n - 1) / (last completion - first completion)`` for all three.
Then, on chartdrop alone: drop→done latency of documents dropped one at a time
(p50/p95, minus settle_seconds, 0 ms peer), idle CPU, peak RSS (``VmHWM``,
reset through ``/proc/PID/clear_refs`` between phases) for 1 MB and 29 MB
files, and a start-up backlog (every pair in the inbox before the daemon
starts, ``NOTIFY_SOCKET`` read by this script, ``WATCHDOG_USEC`` set).
Documents are synthetic (no patient data). PASS/FAIL is printed per target.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))
CLIENT_ID = "chartdrop-bench"
KEY_ID = "bench-key"
DEST_ID = "af394f14-b34a-464f-8d24-895f370af4c9"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1 << 20


def unit_environment() -> dict[str, str]:
    """The ``Environment=`` settings of the shipped systemd unit: the daemon is
    measured as it runs in production (e.g. glibc's ``MALLOC_ARENA_MAX``)."""
    unit = Path(__file__).resolve().parent.parent / "systemd" / "chartdrop.service"
    pairs = (
        line.removeprefix("Environment=").split("=", 1)
        for line in unit.read_text().splitlines()
        if line.startswith("Environment=")
    )
    return {name: value for name, value in pairs}


UNIT_ENVIRONMENT = unit_environment()


# --------------------------------------------------------------------------- the peer


def serve_sandbox(directory: Path) -> None:
    """Child-process mode: the sandbox on a free loopback port, its URL on stdout.
    Received bodies are forgotten every second so a long run stays small."""
    from daemon.sandbox import SandboxState, serve_forever

    state = SandboxState(blob_dir=directory / "blobs")
    state.register_client(CLIENT_ID, KEY_ID, (directory / "key.pub.pem").read_bytes())

    def forget() -> None:
        while True:
            time.sleep(1.0)
            state.clear_records()

    threading.Thread(target=forget, daemon=True).start()
    serve_forever(state, on_ready=lambda url: print(url, flush=True))


class Peer:
    """The peer everyone sends to: ``fast`` (scripts/fast_peer.py, answers without
    checking, never the bottleneck) or ``sandbox`` (chartdrop's sandbox, which
    validates and stores every body: ≈90 requests/s on two cores, so it caps
    every contender)."""

    def __init__(self, root: Path, kind: str = "fast") -> None:
        from daemon.sandbox import generate_keypair

        self.dir = root / "peer"
        self.dir.mkdir()
        private, public = generate_keypair()
        self.private_key = root / "key.pem"
        self.private_key.write_bytes(private)
        self.private_key.chmod(0o600)
        (self.dir / "key.pub.pem").write_bytes(public)
        self.kind = kind
        serve = (
            [sys.executable, str(Path(__file__).with_name("fast_peer.py"))]
            if kind == "fast"
            else [sys.executable, __file__, "--serve-sandbox", str(self.dir)]
        )
        self.proc = subprocess.Popen(
            serve,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.proc.kill()
            raise SystemExit(f"bench: the {kind} peer did not start")
        self.host, self.port = urlsplit(self.url).hostname, urlsplit(self.url).port

    def request(self, method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
        conn = http.client.HTTPConnection(str(self.host), self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            return conn.getresponse().read()
        finally:
            conn.close()

    def set_delay(self, seconds: float) -> None:
        body = json.dumps({"latency_seconds": seconds}).encode()
        self.request("POST", "/_sandbox/faults", body, **{"Content-Type": "application/json"})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- documents


def pdf_of(size: int, tag: str) -> bytes:
    from daemon.samples import sample_pdf

    base = len(sample_pdf(tag))
    return sample_pdf(tag, padding=max(0, size - base - 40))


def sidecar_bytes(i: int = 0) -> bytes:
    """A sidecar of invented patient number ``i`` (each document its own patient, as
    in a clinic: nothing can be reused from one document's sidecar for the next)."""
    from daemon.samples import sample_sidecar

    return json.dumps(sample_sidecar(mrn=f"{i:010d}")).encode()


def stage(folder: Path, prefix: str, count: int, data: bytes) -> list[str]:
    """Write ``count`` pairs under ``folder`` (later renamed into an inbox)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"{prefix}-{i:05d}.pdf"
        (folder / name).write_bytes(data)
        (folder / f"{name}.json").write_bytes(sidecar_bytes(i))
        names.append(name)
    return names


def drop(staged: Path, inbox: Path, name: str) -> float:
    """Sidecar first, then the document, each by rename; the wall time of the drop."""
    (staged / f"{name}.json").rename(inbox / f"{name}.json")
    (staged / name).rename(inbox / name)
    return time.time()


# --------------------------------------------------------------------------- processes


def proc_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its waited-for children (utime+stime+cutime+cstime)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    rest = text[text.rindex(")") + 2 :].split()
    return sum(int(x) for x in rest[11:15]) / CLK_TCK


def proc_status(pid: int, key: str) -> float:
    """A ``/proc/PID/status`` value in MB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to VmRSS; False where the kernel does not allow it (the peak
    is then the one since start)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class NotifySocket:
    """systemd's side of sd_notify: datagrams of KEY=VALUE lines, timestamped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            fields = dict(x.split("=", 1) for x in data.decode().split("\n") if "=" in x)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str) -> list[float]:
        return [at for at, fields in list(self.messages) if key in fields]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@dataclass
class Daemon:
    """``chartdrop run`` on a temp tree: one destination, its own state dir."""

    root: Path
    peer: Peer
    workers: int
    settle: float
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def __post_init__(self) -> None:
        for sub in ("inbox", "done", "failed", "stage"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        config = {
            "state_dir": str(self.root / "state"),
            "workers": self.workers,
            "settle_seconds": self.settle,
            "rescan_seconds": 60,
            "sidecar_timeout_seconds": 600,
            "log_format": "json",
            "log_level": "info",
        }
        redox = {
            "api_url": self.peer.url,
            "upload_url": f"{self.peer.url}/upload",
            "client_id": CLIENT_ID,
            "key_id": KEY_ID,
            "private_key_file": str(self.peer.private_key),
            "test": True,
            # The sandbox is not Redox's quota: the default (1,200 a minute, 20 a
            # second) would make this a benchmark of the rate limiter.
            "max_requests_per_minute": 1_000_000,
        }
        dest = {
            "name": "bench",
            "inbox": str(self.inbox),
            "done": str(self.root / "done"),
            "failed": str(self.root / "failed"),
            "model": "Media",
            "redox_destination_id": DEST_ID,
            # The same synthetic documents go out once per peer delay: not duplicates
            # to hold (the hold is measured by the tests, not here).
            "duplicates": "send",
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in config.items()]
        lines += ["[redox]", *(f"{k} = {json.dumps(v)}" for k, v in redox.items())]
        lines += ["[[destination]]", *(f"{k} = {json.dumps(v)}" for k, v in dest.items())]
        lines += ["[destination.defaults]", 'Media = { Availability = "Available" }']
        self.config = self.root / "chartdrop.toml"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def staged(self) -> Path:
        return self.root / "stage"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.log = (self.root / "daemon.log").open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [CHARTDROP, "run", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, **UNIT_ENVIRONMENT, **self.env},
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Ready when its database exists and the process is still alive."""
        db = self.root / "state" / "chartdrop.sqlite3"
        deadline = time.monotonic() + timeout
        while not db.exists() or self._finished() < 0:
            self.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("bench: the daemon did not start")
            time.sleep(0.05)
        time.sleep(1.0)  # start-up work (recovery, the first scan) is not measured

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(
                f"bench: the daemon exited ({self.proc.returncode}); see {self.log.name}"
            )

    def _query(self, sql: str) -> list[Any]:
        db = self.root / "state" / "chartdrop.sqlite3"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                return conn.execute(sql).fetchall()
        except sqlite3.Error:
            return []

    def _finished(self) -> int:
        rows = self._query("SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed')")
        return int(rows[0][0]) if rows else -1

    def wait_finished(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._finished() < n:
            self.check_alive()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def finished_at(self, names: list[str]) -> dict[str, tuple[str, float]]:
        """original_name -> (state, finished_at) for ``names``."""
        wanted = set(names)
        rows = self._query("SELECT original_name, state, finished_at FROM jobs")
        return {r[0]: (r[1], r[2]) for r in rows if r[0] in wanted and r[2] is not None}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def errors(self) -> int:
        text = (self.root / "daemon.log").read_text(errors="replace")
        return sum('"level": "error"' in line for line in text.splitlines())


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    docs: int
    seconds: float  # first to last completion
    cpu: float  # CPU seconds over the run
    failed: int = 0

    @property
    def rate(self) -> float:
        return (self.docs - 1) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.docs


def run_chartdrop(d: Daemon, count: int, data: bytes, tag: str, timeout: float) -> Run:
    names = stage(d.staged, tag, count, data)
    base = d._finished()
    cpu0 = proc_cpu(d.pid)
    for name in names:
        drop(d.staged, d.inbox, name)
    ok = d.wait_finished(base + count, timeout)
    cpu = proc_cpu(d.pid) - cpu0
    done = d.finished_at(names)
    times = sorted(t for _, t in done.values())
    failed = sum(state != "done" for state, _ in done.values()) + (count - len(done))
    if not ok or len(times) < 2:
        return Run(count, float("nan"), cpu, failed)
    return Run(count, times[-1] - times[0], cpu, failed)


def bodies_like_chartdrop(d: Daemon, count: int, data: bytes) -> list[bytes]:
    """The request bodies chartdrop builds for ``data`` (with this sidecar), as bytes."""
    from datetime import UTC, datetime

    from daemon.config import load_settings
    from daemon.outgoing import redox_body
    from daemon.payload import FileFacts, attach

    settings = load_settings(d.config)
    dest = settings.get_destination("bench")
    contents = base64.b64encode(data).decode("ascii")
    out = []
    for i in range(count):
        sidecar = json.loads(sidecar_bytes(i))
        facts = FileFacts(f"ceiling-{i}.pdf", "PDF", datetime.now(UTC))
        body = redox_body(
            dest=dest, settings=settings, sidecar=sidecar, document_id=str(uuid.uuid4()),
            facts=facts,
        )  # fmt: skip
        attach(body, "Media", contents)
        out.append(json.dumps(body).encode())
    return out


def bearer_token(d: Daemon) -> str:
    from daemon.config import load_settings
    from daemon.http import make_http_client
    from daemon.redox import RedoxClient

    settings = load_settings(d.config)
    with make_http_client(settings) as http:
        return RedoxClient(settings.redox, http).token()


def run_ceiling(peer: Peer, bodies: list[bytes], threads: int, token: str) -> Run:
    """POST ``bodies`` from memory over ``threads`` keep-alive connections."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    lock = threading.Lock()
    todo = list(reversed(bodies))
    finished: list[float] = []
    failures = [0]

    def worker() -> None:
        conn = http.client.HTTPConnection(str(peer.host), peer.port, timeout=60)
        while True:
            with lock:
                if not todo:
                    break
                body = todo.pop()
            conn.request("POST", "/endpoint", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            with lock:
                finished.append(time.time())
                failures[0] += response.status != 200
        conn.close()

    t0 = os.times()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    t1 = os.times()
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    finished.sort()
    return Run(len(bodies), finished[-1] - finished[0], cpu, failures[0])


NAIVE = r"""
cd "$INBOX" || exit 1
n=0
inotifywait -m -e moved_to -e close_write --format '%f' . 2>"$WATCHLOG" |
while IFS= read -r f; do
  case "$f" in .*|*.json) continue ;; esac
  read -r id < /proc/sys/kernel/random/uuid
  { cat "$PRE"; printf '%s' "$id"; cat "$MID"; base64 -w0 -- "$f"; cat "$POST"; } |
    curl -sS -o /dev/null --fail -X POST -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' --data-binary @- "$URL/endpoint" &&
    mv -- "$f" "$f.json" "$DONE"/ &&
    printf '%s\n' "$EPOCHREALTIME" >> "$TIMES"
  n=$((n+1))
  [ "$n" -ge "$COUNT" ] && break
done
"""


def run_naive(root: Path, peer: Peer, body: bytes, count: int, data: bytes, token: str) -> Run:
    """The naive loop: each document base64'd into a template and curl'd, one at a time."""
    for sub in ("inbox", "done", "stage"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    template = json.loads(body)
    template["Media"]["DocumentID"] = "@@ID@@"
    template["Media"]["FileContents"] = "@@B64@@"
    text = json.dumps(template)
    pre, rest = text.split('"@@ID@@"')
    mid, post = rest.split('"@@B64@@"')
    (root / "pre").write_text(pre + '"')
    (root / "mid").write_text('"' + mid + '"')
    (root / "post").write_text('"' + post)
    names = stage(root / "stage", "naive", count, data)
    times, watchlog = root / "times", root / "watch.log"
    env = {
        **os.environ,
        "INBOX": str(root / "inbox"),
        "DONE": str(root / "done"),
        "PRE": str(root / "pre"),
        "MID": str(root / "mid"),
        "POST": str(root / "post"),
        "TOKEN": token,
        "URL": peer.url,
        "COUNT": str(count),
        "TIMES": str(times),
        "WATCHLOG": str(watchlog),
    }
    proc = subprocess.Popen(["bash", "-c", NAIVE], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while "Watches established" not in (watchlog.read_text() if watchlog.exists() else ""):
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("bench: inotifywait did not start")
        time.sleep(0.02)
    for name in names:
        drop(root / "stage", root / "inbox", name)
    # The loop breaks after COUNT documents; inotifywait then sees the closed pipe
    # at its next event, so once every document is done (or nothing moves for
    # 10 s: a failed curl) a dotfile the loop ignores is touched until the shell
    # exits. The shell is reaped here with wait4 only (never poll()), for its rusage.
    usage, last, seen = None, time.monotonic(), -1
    while usage is None:
        pid, _, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            usage, proc.returncode = ru, 0
            break
        done = len(times.read_text().split()) if times.exists() else 0
        if done != seen:
            seen, last = done, time.monotonic()
        stalled = time.monotonic() - last
        if done >= count or stalled > 10:
            (root / "inbox" / ".wake").touch()
        if stalled > 60:
            proc.kill()
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = -9
        time.sleep(0.05)
    stamps = sorted(float(x) for x in times.read_text().split()) if times.exists() else []
    cpu = usage.ru_utime + usage.ru_stime
    if len(stamps) < 2:
        return Run(count, float("nan"), cpu, count - len(stamps))
    return Run(count, stamps[-1] - stamps[0], cpu, count - len(stamps))


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    rows: list[tuple[str, str, bool | None]] = field(default_factory=list)

    def line(self, text: str) -> None:
        print(text, flush=True)

    def target(self, what: str, value: str, ok: bool | None) -> None:
        self.rows.append((what, value, ok))
        verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        print(f"  [{verdict}] {what}: {value}", flush=True)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(x: float) -> str:
    return f"{1000 * x:.0f} ms"


@contextlib.contextmanager
def daemon(root: Path, peer: Peer, args: argparse.Namespace, **env: str) -> Iterator[Daemon]:
    d = Daemon(root, peer, args.workers, args.settle, env)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def throughput(report: Report, root: Path, peer: Peer, args: argparse.Namespace) -> None:
    data = pdf_of(100_000, "bench")
    report.line(
        f"\n== throughput: {args.docs} documents of {len(data) // 1000} KB (embedded), "
        f"{args.workers} workers, settle_seconds {args.settle} =="
    )
    naive_ok = shutil.which("inotifywait") is not None and shutil.which("curl") is not None
    if not naive_ok:
        report.line("  inotifywait or curl is not installed (apt install inotify-tools curl): "
                    "the naive column is skipped")  # fmt: skip
    with daemon(root / "chartdrop", peer, args) as d:
        d.wait_ready()
        token = bearer_token(d)
        bodies = bodies_like_chartdrop(d, args.docs, data)
        header = f"  {'peer':>6} {'':<10} {'docs/s':>8} {'CPU ms/doc':>11} {'failed':>7}"
        for delay in (0.0, 0.05):
            peer.set_delay(delay)
            runs: dict[str, Run] = {}
            runs["chartdrop"] = run_chartdrop(d, args.docs, data, f"t{int(delay * 1000)}", 300)
            runs["ceiling"] = run_ceiling(peer, bodies, args.workers, token)
            if naive_ok:
                runs["naive"] = run_naive(
                    root / f"naive{int(delay * 1000)}", peer, bodies[0], args.docs, data, token
                )
            report.line(header)
            for label, r in runs.items():
                report.line(
                    f"  {int(delay * 1000):>4}ms {label:<10} {r.rate:>8.1f} {r.cpu_ms:>11.2f} "
                    f"{r.failed:>7}"
                )
            cd, ce = runs["chartdrop"], runs["ceiling"]
            report.target(
                f"every document delivered, {int(delay * 1000)} ms peer",
                ", ".join(f"{label} {r.failed} not delivered" for label, r in runs.items()),
                all(r.failed == 0 for r in runs.values()),
            )
            need = 0.8 if delay else 0.35
            ratio = cd.rate / ce.rate
            report.target(
                f"chartdrop/ceiling, {int(delay * 1000)} ms peer (>= {need})",
                f"{ratio:.3f}",
                ratio >= need,
            )
            if "naive" in runs:
                ratio = cd.rate / runs["naive"].rate
                report.target(
                    f"chartdrop/naive, {int(delay * 1000)} ms peer (>= 8)",
                    f"{ratio:.1f}",
                    ratio >= 8,
                )
            if delay == 0.0:
                report.target(
                    "chartdrop CPU per 100 KB document, 0 ms peer (<= 4 ms)",
                    f"{cd.cpu_ms:.2f} ms (ceiling {ce.cpu_ms:.2f} ms)",
                    cd.cpu_ms <= 4.0,
                )
        latency(report, d, peer, args, data)
        idle(report, d, args)
        memory(report, d, args)
        report.line(f"  daemon error lines in its log: {d.errors()}")


def latency(report: Report, d: Daemon, peer: Peer, args: argparse.Namespace, data: bytes) -> None:
    peer.set_delay(0.0)
    report.line(
        f"\n== pickup: {args.latency_docs} documents dropped one at a time "
        f"({args.latency_gap:.2f} s apart), 0 ms peer =="
    )
    names = stage(d.staged, "lat", args.latency_docs, data)
    base = d._finished()
    dropped = {}
    for name in names:
        dropped[name] = drop(d.staged, d.inbox, name)
        time.sleep(args.latency_gap)
    d.wait_finished(base + len(names), 60 + 4 * args.settle * len(names))
    done = d.finished_at(names)
    waits = [done[n][1] - dropped[n] - args.settle for n in names if n in done]
    p50, p95 = pct(waits, 50), pct(waits, 95)
    report.line(f"  drop→done minus settle_seconds: p50 {ms(p50)}, p95 {ms(p95)}")
    report.target("p50 pickup <= settle_seconds + 150 ms", f"settle + {ms(p50)}", p50 <= 0.150)


def idle(report: Report, d: Daemon, args: argparse.Namespace) -> None:
    report.line(f"\n== idle: {args.idle:.0f} s with nothing to do (from 5 s after the last one) ==")
    time.sleep(5.0)  # the last document's tail (its log line, the next STATUS=) is not idle
    cpu0, t0 = proc_cpu(d.pid), time.monotonic()
    time.sleep(args.idle)
    share = 100 * (proc_cpu(d.pid) - cpu0) / (time.monotonic() - t0)
    report.target("idle CPU <= 0.5 % of a core", f"{share:.2f} %", share <= 0.5)


def memory(report: Report, d: Daemon, args: argparse.Namespace) -> None:
    report.line("\n== memory: peak RSS (VmHWM) while sending large files (blob upload) ==")
    peaks = {}
    for size, count in ((1 * MB, 3), (29 * MB, 2)):
        if not reset_peak(d.pid):
            report.line("  (cannot reset VmHWM here: peaks are since the daemon started)")
        before = proc_status(d.pid, "VmRSS")
        data = pdf_of(size, f"m{size}")
        names = stage(d.staged, f"mem{size // MB}", count, data)
        base = d._finished()
        for name in names:
            drop(d.staged, d.inbox, name)
        d.wait_finished(base + count, 120)
        peaks[size] = proc_status(d.pid, "VmHWM")
        report.line(
            f"  {size // MB:>2} MB files x{count}: RSS before {before:.0f} MB, "
            f"peak {peaks[size]:.0f} MB"
        )
    top = max(peaks.values())
    report.target("peak RSS <= 100 MB", f"{top:.0f} MB", top <= 100)
    growth = peaks[29 * MB] - peaks[1 * MB]
    report.target(
        "RSS flat from 1 MB to 29 MB files (grows <= 15 MB)", f"+{growth:.0f} MB", growth <= 15
    )


def backlog(report: Report, root: Path, peer: Peer, args: argparse.Namespace) -> None:
    n = args.backlog
    peer.set_delay(args.backlog_delay)
    report.line(
        f"\n== start-up backlog: {n:,} pairs waiting when `chartdrop run` starts, "
        f"{int(args.backlog_delay * 1000)} ms peer =="
    )
    folder = root / "backlog"
    data = pdf_of(2_000, "backlog")
    t0 = time.monotonic()
    names = stage(folder / "inbox", "b", n, data)
    report.line(f"  wrote {2 * n:,} files in {time.monotonic() - t0:.1f} s")
    sock = NotifySocket(root / "notify.sock")
    env = {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "2000000"}  # a ping every 1 s
    rss: list[float] = []
    with daemon(folder, peer, args, **env) as d:
        start, wall0 = d.started, time.time()
        deadline = start + args.backlog_timeout
        drained = False
        while time.monotonic() < deadline:
            d.check_alive()
            if sock.times("READY") and not rss:
                time.sleep(0.5)
                rss.append(proc_status(d.pid, "VmRSS"))
            if d.wait_finished(n, 1.0):
                drained = True
                break
        ended = time.monotonic()
        rss.append(proc_status(d.pid, "VmRSS"))
        hwm = proc_status(d.pid, "VmHWM")
        done = d.finished_at(names)
        errors = d.errors()
    sock.close()
    ready = sock.times("READY")
    pings = sock.times("WATCHDOG")
    ready_s = ready[0] - start if ready else float("nan")
    marks = ([ready[0]] if ready else [start]) + pings + [ended]  # silence until the end counts
    gap = max((b - a for a, b in itertools.pairwise(marks)), default=float("nan"))
    times = sorted(t for _, t in done.values())
    first = times[0] - wall0 if times else float("nan")
    k = max(2, n // 5)
    first_rate = (k - 1) / (times[k - 1] - times[0]) if len(times) >= k else float("nan")
    last_rate = (k - 1) / (times[-1] - times[-k]) if len(times) >= k else float("nan")
    total = times[-1] - wall0 if times else float("nan")
    first_text = f"{first:.1f} s" if times else "never"
    report.line(
        f"  READY after {ready_s:.1f} s; {len(pings)} watchdog pings, longest gap {gap:.1f} s; "
        f"first done after {first_text}; {len(times):,}/{n:,} finished"
        + (f" in {total:.0f} s" if drained else f" (gave up after {args.backlog_timeout:.0f} s)")
    )
    report.line(
        f"  drain rate: first 20 % {first_rate:.1f} docs/s, last 20 % {last_rate:.1f} docs/s; "
        f"RSS {rss[0]:.0f} MB after READY, {rss[-1]:.0f} MB at the end (peak {hwm:.0f} MB); "
        f"error lines in the log: {errors}"
    )
    report.target("READY within 5 s", f"{ready_s:.1f} s", ready_s <= 5)
    report.target("longest watchdog gap <= 5 s", f"{gap:.1f} s", gap <= 5)
    report.target("first document done within 10 s", first_text, bool(times) and first <= 10)
    if drained:
        report.target(
            "drain rate last 20 % >= 0.8 x first 20 %",
            f"{last_rate / first_rate:.2f}",
            last_rate >= 0.8 * first_rate,
        )
    else:
        report.target("drain rate last 20 % >= 0.8 x first 20 %", "not drained", None)
    report.target(
        "RSS <= 100 MB and flat over the backlog (grows <= 15 MB)",
        f"{rss[0]:.0f} -> {rss[-1]:.0f} MB" + ("" if drained else " (not drained: not judged)"),
        (hwm <= 100 and rss[-1] - rss[0] <= 15) if drained else None,
    )
    report.target("backlog drained", f"{len(times):,}/{n:,}", drained)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPUs ({model}), load average {load:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller runs, under 3 minutes")
    p.add_argument("--docs", type=int, help="documents per throughput run (400; quick 100)")
    p.add_argument("--workers", type=int, default=4, help="chartdrop workers = ceiling threads")
    p.add_argument("--settle", type=float, default=0.5, help="settle_seconds (0.5)")
    p.add_argument("--latency-docs", type=int, help="documents in the pickup run (40; quick 15)")
    p.add_argument("--latency-gap", type=float, default=0.3, help="seconds between them")
    p.add_argument(
        "--idle",
        type=float,
        default=30.0,
        help="idle measurement, seconds (30: /proc counts CPU in 10 ms ticks)",
    )
    p.add_argument("--backlog", type=int, help="pairs in the start-up backlog (20000; quick 1000)")
    p.add_argument("--backlog-delay", type=float, default=0.0, help="peer delay for the backlog")
    p.add_argument("--backlog-timeout", type=float, help="give up after (900 s; quick 90 s)")
    p.add_argument("--skip", action="append", default=[], choices=["throughput", "backlog"])
    p.add_argument(
        "--peer",
        choices=["fast", "sandbox"],
        default="fast",
        help="fast: scripts/fast_peer.py (default); sandbox: chartdrop's sandbox (caps at ≈90/s)",
    )
    p.add_argument("--serve-sandbox", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_sandbox is not None:
        serve_sandbox(args.serve_sandbox)
        return 0
    args.docs = args.docs or (100 if args.quick else 400)
    args.latency_docs = args.latency_docs or (15 if args.quick else 40)
    args.backlog = args.backlog or (1000 if args.quick else 20_000)
    args.backlog_timeout = args.backlog_timeout or (90.0 if args.quick else 900.0)
    report = Report()
    report.line(f"chartdrop bench on {machine()}")
    report.line(f"command: {' '.join(['scripts/bench.py', *(argv or sys.argv[1:])])}")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chartdrop-bench-") as tmp:
        root = Path(tmp)
        peer = Peer(root, args.peer)
        report.line(f"peer: {args.peer} at {peer.url}")
        unit_env = " ".join(f"{k}={v}" for k, v in UNIT_ENVIRONMENT.items())
        report.line(f"chartdrop runs with the unit's environment: {unit_env or '(none)'}")
        try:
            steps: list[tuple[str, Callable[..., None]]] = [
                ("throughput", throughput),
                ("backlog", backlog),
            ]
            for name, step in steps:
                if name not in args.skip:
                    step(report, root, peer, args)
        finally:
            peer.stop()
    failed = [what for what, _, ok in report.rows if ok is False]
    report.line(
        f"\n{len(report.rows) - len(failed)} of {len(report.rows)} targets met "
        f"in {time.monotonic() - began:.0f} s" + (f"; FAIL: {'; '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
