"""[alerts] command and webhook_url, fired by the real daemon on the real
sandbox: once per condition, with the facts, without PHI."""

from __future__ import annotations

import io
import json
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, events, running, wait_until, write_config

from daemon.config import AlertsSettings
from daemon.samples import sample_pdf, sample_sidecar

RECORDER = """
import json, os, sys
facts = {k: v for k, v in os.environ.items() if k.startswith("CHARTDROP_")}
facts["_other_env"] = sorted(k for k in os.environ if not k.startswith("CHARTDROP_"))
with open(sys.argv[1], "a") as fh:
    fh.write(json.dumps(facts) + "\\n")
"""


def _bad_sidecar() -> dict[str, Any]:
    bad = sample_sidecar(last="CANARYLAST", mrn="CANARYMRN")
    del bad["Patient"]["Identifiers"]
    return bad


def _recorded(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_command_fires_once_per_condition_with_the_facts(
    tmp_path: Path, sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    script, out = tmp_path / "page-admin.py", tmp_path / "pages.jsonl"
    script.write_text(RECORDER)
    tables = (
        f"[alerts]\ncommand = {json.dumps([sys.executable, str(script), str(out)])}\n"
        "repeat_minutes = 60\n"
    )
    config = write_config(tmp_path, sandbox, tables=tables)
    with running(config) as r:
        r.drop("CANARY_a.pdf", sample_pdf("a"), _bad_sidecar())
        (first,) = r.finished(1)
        wait_until(lambda: _recorded(out))
        r.drop("CANARY_b.pdf", sample_pdf("b"), _bad_sidecar())
        r.finished(2)
        sandbox.state.set_faults(outage=True)
        r.drop("c.pdf", sample_pdf("c"), sample_sidecar())
        wait_until(
            lambda: any(p["CHARTDROP_EVENT"] == "destination.paused" for p in _recorded(out))
        )
        sandbox.state.set_faults(outage=False)
        r.finished(3)
        wait_until(
            lambda: any(p["CHARTDROP_EVENT"] == "destination.recovered" for p in _recorded(out)),
            timeout=30,
        )
    pages = _recorded(out)
    kinds = [p["CHARTDROP_EVENT"] for p in pages]
    assert kinds.count("document.failed") == 1  # the second failure is within repeat_minutes
    assert kinds.count("destination.paused") == 1
    assert kinds.count("destination.recovered") == 1
    failed = next(p for p in pages if p["CHARTDROP_EVENT"] == "document.failed")
    assert failed["CHARTDROP_DESTINATION"] == "consents"
    assert failed["CHARTDROP_JOB_ID"] == first.id
    assert failed["CHARTDROP_REASON"] == "invalid_sidecar"
    assert failed["CHARTDROP_SEVERITY"] == "warning"
    paused = next(p for p in pages if p["CHARTDROP_EVENT"] == "destination.paused")
    assert paused["CHARTDROP_REASON"] == "outage"
    assert set(failed["_other_env"]) <= {"PATH", "LANG", "LC_CTYPE"}  # no inherited secrets
    assert "CANARY" not in out.read_text()
    assert len(events(log_stream, "alert.sent")) == len(pages)


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def https_receiver(tmp_path: Path) -> Iterator[tuple[str, Path, list[dict[str, Any]]]]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "hook-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="hook", daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/hook", ca_file, received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_webhook_gets_the_same_facts_as_json(tmp_path: Path, sandbox: Sandbox) -> None:
    with https_receiver(tmp_path) as (url, ca_file, received):
        tables = f'[alerts]\nwebhook_url = "{url}"\noldest_warning_minutes = 0.001\n'
        config = write_config(tmp_path, sandbox, redox={"ca_bundle": str(ca_file)}, tables=tables)
        with running(config) as r:
            r.drop("CANARY_x.pdf", sample_pdf("x"), _bad_sidecar())
            r.finished(1)
            sandbox.state.set_faults(outage=True)
            r.drop("y.pdf", sample_pdf("y"), sample_sidecar())
            wait_until(lambda: {"document.failed", "backlog.old"} <= {x["event"] for x in received})
            sandbox.state.set_faults(outage=False)
            r.finished(2)
        failed = next(x for x in received if x["event"] == "document.failed")
        assert failed["destination"] == "consents" and failed["reason"] == "invalid_sidecar"
        old = next(x for x in received if x["event"] == "backlog.old")
        assert int(old["seconds"]) >= 0
        assert "CANARY" not in json.dumps(received)


def test_a_plain_http_webhook_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        AlertsSettings(webhook_url="http://alerts.example.org/x")


def test_a_hanging_command_is_killed_after_its_timeout(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    from daemon.alerts import Alerts
    from daemon.config import Settings
    from daemon.queue import Queue

    (tmp_path / "in").mkdir()
    settings = Settings(
        state_dir=tmp_path / "state",
        destination=[
            {
                "name": "d",
                "inbox": tmp_path / "in",
                "done": tmp_path / "o",
                "failed": tmp_path / "f",
                "redox_destination_id": "x",
            }
        ],
        alerts={
            "command": [sys.executable, "-c", "import time; time.sleep(30)"],
            "command_timeout_seconds": 0.5,
        },
    )
    with Queue(tmp_path / "q.sqlite3") as queue:
        alerts = Alerts(settings, queue)
        assert alerts.fire("destination.paused", "d", reason="outage")
        assert not alerts.fire("destination.paused", "d", reason="outage")  # repeat_minutes
        alerts.close(timeout=10)
    (failed,) = events(log_stream, "alert.failed")
    assert (failed["kind"], failed["reason"], failed["alert"]) == (
        "command",
        "timeout",
        "destination.paused",
    )
