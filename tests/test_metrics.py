"""Prometheus metrics from the real daemon on the real sandbox: scraped over
HTTP (TCP loopback and a unix socket) and read from the textfile; the counts
match what happened. And the contrib/ rules and dashboard name only metrics
that exist."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import Sandbox, running, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import MetricsSettings
from daemon.metrics import METRIC_NAMES
from daemon.samples import sample_pdf, sample_sidecar

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_scraped_counts_match_what_happened(tmp_path: Path, sandbox: Sandbox) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        sandbox,
        workers=1,
        tables=f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "m.prom"\n'
        "textfile_seconds = 0.2\n",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with running(config) as r:
        sandbox.state.set_faults(fail_next=[503], retry_after="0")
        r.drop("CANARY_one.pdf", sample_pdf("1"), sample_sidecar(mrn="CANARYMRN"))
        r.finished(1)
        sandbox.state.set_faults(fail_next=[400])
        r.drop("CANARY_two.pdf", sample_pdf("2"), sample_sidecar())
        r.finished(2)
        r.drop("CANARY_three.pdf", sample_pdf("3"), sample_sidecar())
        r.finished(3)
        (r.inbox / "CANARY_alone.pdf").write_bytes(sample_pdf("4"))
        text = wait_until(
            lambda: (
                lambda t: (
                    t
                    if "awaiting_sidecar" in t
                    and value(
                        t,
                        "chartdrop_inbox_waiting",
                        destination="consents",
                        reason="awaiting_sidecar",
                    )
                    == 1
                    else None
                )
            )(httpx.get(url, timeout=10).text)
        )
        (r.inbox / "CANARY_alone.pdf").unlink()
        textfile = wait_until(
            lambda: (tmp_path / "m.prom").read_text() if (tmp_path / "m.prom").exists() else None
        )
    d = {"destination": "consents"}
    assert value(text, "chartdrop_up") == 1
    assert value(text, "chartdrop_documents_total", **d, outcome="done") == 2
    assert value(text, "chartdrop_documents_total", **d, outcome="failed") == 1
    assert value(text, "chartdrop_send_attempts_total", **d, result="sent") == 2
    assert value(text, "chartdrop_send_attempts_total", **d, result="retry") == 1
    assert value(text, "chartdrop_send_attempts_total", **d, result="rejected") == 1
    assert value(text, "chartdrop_queue_jobs", **d, state="done") == 2
    assert value(text, "chartdrop_queue_jobs", **d, state="queued") == 0
    assert value(text, "chartdrop_oldest_waiting_seconds", **d) == 0
    assert value(text, "chartdrop_last_success_timestamp_seconds", **d) > 1e9
    assert value(text, "chartdrop_destination_paused", **d, reason="outage") == 0
    assert value(text, "chartdrop_send_duration_seconds_count", **d) == 4
    assert "CANARY" not in text
    # the textfile has the same families, and says the daemon stopped once it did
    assert set(METRIC_NAMES) <= {f.name for f in text_string_to_metric_families(textfile)} | {
        "chartdrop_documents_total",
        "chartdrop_send_attempts_total",
    }
    final = (tmp_path / "m.prom").read_text()
    assert value(final, "chartdrop_up") == 0
    assert value(final, "chartdrop_documents_total", **d, outcome="done") == 2
    assert "CANARY" not in final
    assert not list(tmp_path.glob("m.prom.*"))  # written by rename, no temp left


def test_a_pause_shows_and_the_unix_socket_serves(tmp_path: Path, sandbox: Sandbox) -> None:
    sock = tmp_path / "metrics.sock"
    config = write_config(tmp_path, sandbox, tables=f'[metrics]\nlisten = "unix:{sock}"\n')
    with running(config) as r:
        sandbox.state.set_faults(outage=True)
        r.drop("a.pdf", sample_pdf("a"), sample_sidecar())
        wait_until(lambda: r.queue.pauses())
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)))
        with client:
            text = client.get("http://localhost/metrics", timeout=10).text
        sandbox.state.set_faults(outage=False)
        r.finished(1)
    d = {"destination": "consents"}
    assert value(text, "chartdrop_destination_paused", **d, reason="outage") == 1
    assert value(text, "chartdrop_oldest_waiting_seconds", **d) > 0
    assert not sock.exists()  # removed at stop


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "192.168.1.5:9464", "9464", ":9464"])
def test_only_loopback_or_a_unix_socket(listen: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|HOST:PORT"):
        MetricsSettings(listen=listen)
    assert MetricsSettings(listen="[::1]:9464").listen == "[::1]:9464"


def _names_in(expr: str) -> set[str]:
    names = set(re.findall(r"\bchartdrop_[a-z_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_contrib_rules_parse_and_name_only_existing_metrics() -> None:
    rules = yaml.safe_load((ROOT / "contrib" / "prometheus-rules.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 5
    named = set().union(*(_names_in(e) for e in exprs))
    assert named, "the rules name no metric"
    assert named <= set(METRIC_NAMES), named - set(METRIC_NAMES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule)


def test_contrib_dashboard_names_only_existing_metrics() -> None:
    dash = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    named = set().union(*(_names_in(e) for e in exprs))
    assert named <= set(METRIC_NAMES), named - set(METRIC_NAMES)
    assert len(named) >= 8
