"""Outgoing HTTP: TLS verification always on (a CA bundle can be added), plain http
only to loopback, redirects never followed, answers capped before parsing.

Real servers on 127.0.0.1: the sandbox over TLS (a private CA and certificates made
with trustme), and small stdlib HTTP servers for redirects and huge answers."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from conftest import CLIENT_ID, DEST_ID, KEY_ID, Sandbox, running, wait_until, write_config

from daemon.config import RedoxSettings, Settings, load_settings
from daemon.errors import AuthError, ConfigError, TransientDeliveryError
from daemon.http import MAX_RESPONSE_BYTES, http_client, make_http_client, read_capped, tls_context
from daemon.queue import Job, JobState
from daemon.redox import RedoxClient
from daemon.samples import sample_pdf, sample_sidecar
from daemon.sandbox import SandboxServer, SandboxState, generate_keypair

CHARTDROP = str(Path(sys.executable).with_name("chartdrop"))

# -- certificates -------------------------------------------------------------

CA_NAME = "chartdrop test CA"


def make_pki(tmp_path: Path, *, server_name: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A private CA (trustme) and a server certificate for ``server_name`` signed
    by it, written as PEM files: (ca, cert, key)."""
    ca = trustme.CA(organization_name=CA_NAME)
    issued = ca.issue_cert(server_name)
    paths = (tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server-key.pem")
    ca.cert_pem.write_to_path(str(paths[0]))
    issued.cert_chain_pems[0].write_to_path(str(paths[1]))
    issued.private_key_pem.write_to_path(str(paths[2]))
    return paths


@contextmanager
def tls_sandbox(tmp_path: Path, cert: Path, key: Path) -> Iterator[Sandbox]:
    private, public = generate_keypair()
    client_key = tmp_path / "redox-key.pem"
    client_key.write_bytes(private)
    client_key.chmod(0o600)
    state = SandboxState(blob_dir=tmp_path / "blobs")
    state.register_client(CLIENT_ID, KEY_ID, public)
    with SandboxServer(state, tls=(str(cert), str(key))) as server:
        yield Sandbox(server=server, state=state, private_key=client_key, fhir_secret=client_key)


def client_for(config: Path) -> RedoxClient:
    settings = load_settings(config)
    return RedoxClient(settings.redox, make_http_client(settings))


# -- TLS --------------------------------------------------------------------


def test_tls_is_verified_and_a_ca_bundle_can_be_added(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    with tls_sandbox(tmp_path, cert, key) as sandbox:
        assert sandbox.url.startswith("https://127.0.0.1:")
        config = write_config(tmp_path, sandbox)
        refused = client_for(config)
        with pytest.raises(AuthError, match="unreachable"):  # self-made CA: not trusted
            refused.check_auth()
        refused.http.close()
        assert sandbox.state.token_requests == 0  # the handshake failed: nothing was posted

        config = write_config(tmp_path, sandbox, redox={"ca_bundle": str(ca)})
        with running(config) as r:  # the daemon delivers over verified TLS
            r.drop("tls.pdf", sample_pdf("tls"), sample_sidecar())
            (job,) = r.finished(1)
        assert job.state == JobState.DONE
        assert len(sandbox.state.received()) == 1


def test_ca_bundle_adds_to_the_system_roots(tmp_path: Path) -> None:
    ca, _cert, _key = make_pki(tmp_path)
    system, added = tls_context(None), tls_context(ca)
    roots = system.cert_store_stats()["x509_ca"]
    assert roots > 0  # the machine's trusted roots are loaded
    assert added.cert_store_stats()["x509_ca"] == roots + 1  # one more, none replaced
    names = [
        dict(rdn[0] for rdn in c["subject"]).get("organizationName") for c in added.get_ca_certs()
    ]
    assert CA_NAME in names and len(names) == roots + 1
    assert CA_NAME not in [
        dict(rdn[0] for rdn in c["subject"]).get("organizationName") for c in system.get_ca_certs()
    ]
    assert added.verify_mode == ssl.CERT_REQUIRED and added.check_hostname


# Where the private CA's bundle is set -> (FHIR delivers, Redox delivers).
SCOPED_TRUST = {
    "fhir": (True, False),  # [fhir].ca_bundle
    "destination": (True, False),  # the FHIR [[destination]]'s ca_bundle
    "redox": (False, True),  # [redox].ca_bundle: the wrong service for the FHIR server
    "nowhere": (False, False),  # no bundle: the system roots only
}

LETTERS = f"""
[[destination]]
name = "letters"
inbox = "letters/inbox"
done = "letters/done"
failed = "letters/failed"
model = "Media"
redox_destination_id = "{DEST_ID}"
[destination.defaults]
Media = {{ Availability = "Available" }}
"""


def drop_pair(inbox: Path, name: str, data: bytes, sidecar: dict[str, Any]) -> None:
    """Sidecar first, then the document, each under a temporary name then renamed."""
    for target, write in ((f"{name}.json", json.dumps(sidecar).encode()), (name, data)):
        (inbox / f".{target}.part").write_bytes(write)
        (inbox / f".{target}.part").rename(inbox / target)


@pytest.mark.parametrize("where", list(SCOPED_TRUST))
def test_a_private_ca_is_trusted_only_by_the_service_it_is_set_for(
    tmp_path: Path, sandbox: Sandbox, pdf: bytes, where: str
) -> None:
    """One daemon, a FHIR destination and a Redox one, one HTTPS server on
    127.0.0.1 answering both APIs with a certificate from a private CA (trustme).
    The CA bundle makes that CA trusted for the service it is set on only; the
    other keeps the system roots, refuses the handshake and sends nothing."""
    ca, cert, key = make_pki(tmp_path)
    fhir_ok, redox_ok = SCOPED_TRUST[where]
    for sub in ("inbox", "done", "failed"):
        (tmp_path / "letters" / sub).mkdir(parents=True)
    with SandboxServer(sandbox.state, tls=(str(cert), str(key))) as tls:
        assert tls.url.startswith("https://127.0.0.1:")
        fhir = sandbox.fhir_table(
            base_url=f"{tls.url}/fhir/r4", token_url=f"{tls.url}/fhir/oauth/token"
        )
        redox: dict[str, Any] = {"api_url": tls.url, "upload_url": f"{tls.url}/upload"}
        dest: dict[str, Any] = {}
        if where == "fhir":
            fhir["ca_bundle"] = str(ca)
        elif where == "redox":
            redox["ca_bundle"] = str(ca)
        elif where == "destination":
            dest["ca_bundle"] = str(ca)  # for its base_url; the token URL is [fhir]'s
            fhir["token_url"] = f"{sandbox.url}/fhir/oauth/token"
        config = write_config(
            tmp_path, sandbox, model="FHIR", fhir=fhir, redox=redox, dest=dest, tables=LETTERS
        )
        with running(config) as r:
            r.drop("consent.pdf", pdf, sample_sidecar(model="FHIR"))
            drop_pair(
                tmp_path / "letters" / "inbox", "letter.pdf", sample_pdf("l"), sample_sidecar()
            )

            expected = {"consents": fhir_ok, "letters": redox_ok}

            def settled() -> dict[str, Job] | None:
                """Each destination's job once it is done, or once its destination is
                paused because its server (the token URL) could not be reached."""
                jobs = {j.destination: j for j in r.jobs()}
                refused = {p.destination for p in r.queue.pauses() if "unreachable" in p.reason}
                for name, ok in expected.items():
                    job = jobs.get(name)
                    if job is None or (job.state == JobState.DONE) is not ok:
                        return None
                    if not ok and name not in refused:
                        return None
                return jobs

            wait_until(settled, timeout=30)
    assert len(sandbox.state.fhir_received()) == int(fhir_ok)
    assert len(sandbox.state.received()) == int(redox_ok)
    if not fhir_ok:
        assert sandbox.state.fhir_token_requests == 0  # the handshake failed: nothing posted
    if not redox_ok:
        assert sandbox.state.token_requests == 0


def test_the_redox_client_does_not_trust_the_fhir_servers_ca(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The Redox client built from a config whose [fhir] has a private CA: a TLS
    connection to the FHIR server fails verification (the system roots only)."""
    ca, cert, key = make_pki(tmp_path)
    with SandboxServer(sandbox.state, tls=(str(cert), str(key))) as tls:
        fhir = sandbox.fhir_table(base_url=f"{tls.url}/fhir/r4", ca_bundle=str(ca))
        settings = load_settings(write_config(tmp_path, sandbox, model="FHIR", fhir=fhir))
        with (
            make_http_client(settings) as redox_http,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            redox_http.get(f"{tls.url}/_sandbox/received")
        with http_client(settings, settings.fhir.ca_bundle) as fhir_http:
            assert fhir_http.get(f"{tls.url}/_sandbox/received").json() == []


def test_a_ca_bundle_that_is_not_pem_is_a_config_error(tmp_path: Path, sandbox: Sandbox) -> None:
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("hello\n")
    with pytest.raises(ConfigError, match="not a readable PEM file of CA certificates"):
        load_settings(write_config(tmp_path, sandbox, redox={"ca_bundle": str(bad)}))


def test_a_trusted_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path, server_name="ehr.example")
    with tls_sandbox(tmp_path, cert, key) as sandbox:
        config = write_config(tmp_path, sandbox, redox={"ca_bundle": str(ca)})
        client = client_for(config)
        with pytest.raises(AuthError, match="unreachable"):
            client.check_auth()
        client.http.close()
        assert sandbox.state.token_requests == 0


def test_there_is_no_setting_that_turns_verification_off(tmp_path: Path, sandbox: Sandbox) -> None:
    keys = {*Settings.model_fields, *RedoxSettings.model_fields}
    assert not [k for k in keys if any(w in k for w in ("verify", "insecure", "ssl", "tls"))]
    config = write_config(tmp_path, sandbox)
    for line in ("verify = false", "verify_tls = false", "insecure = true"):
        bad = tmp_path / "bad.toml"
        bad.write_text(config.read_text().replace("[redox]\n", f"[redox]\n{line}\n"))
        with pytest.raises(ConfigError, match="is not a setting chartdrop knows"):
            load_settings(bad)


def test_verification_cannot_be_turned_off_through_the_environment(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTDROP_REDOX__VERIFY", "false")
    with pytest.raises(ConfigError):
        load_settings(write_config(tmp_path, sandbox))


# -- plain http ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.10",
        "http://api.redoxengine.com",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://[::ffff:127.0.0.1]",
    ],
)
def test_plain_http_to_another_host_is_refused_before_any_connection(url: str) -> None:
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200)

    http = httpx.Client(transport=httpx.MockTransport(record))
    for settings in (
        RedoxSettings(api_url=url, client_id="c"),
        RedoxSettings(upload_url=f"{url}/upload", client_id="c"),
    ):
        with pytest.raises(ConfigError, match="must use https"):
            RedoxClient(settings, http)
    assert requests == []


def test_the_daemon_refuses_to_start_with_plain_http_to_another_host(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_config(tmp_path, sandbox)
    config.write_text(config.read_text().replace(sandbox.url, "http://192.0.2.10"))
    started = time.monotonic()
    result = subprocess.run(
        [CHARTDROP, "run", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "must use https://" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20  # no connect timeout was waited out


# -- small local servers ----------------------------------------------------------

Reply = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def http_server(routes: dict[str, Reply]) -> Iterator[tuple[str, list[str]]]:
    """A stdlib HTTP server on 127.0.0.1: POST ``path`` -> ``routes[path](handler)``.
    Yields its base URL and the paths it was asked for."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            hits.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            routes.get(self.path, not_found)(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def send_json(status: int, body: object, headers: dict[str, str] | None = None) -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return reply


def not_found(h: BaseHTTPRequestHandler) -> None:
    send_json(404, {})(h)


TOKEN = send_json(200, {"access_token": "t0ken", "expires_in": 3600})


def redirect_to(url: str) -> Reply:
    return send_json(302, {}, {"Location": url})


def client(base: str, tmp_path: Path) -> RedoxClient:
    private, _ = generate_keypair()
    key = tmp_path / "k.pem"
    key.write_bytes(private)
    settings = RedoxSettings(
        api_url=base, upload_url=f"{base}/upload", client_id="c", key_id="k", private_key_file=key
    )
    return RedoxClient(settings, httpx.Client(timeout=5, follow_redirects=False))


# -- redirects --------------------------------------------------------------------


def test_redirects_are_never_followed(tmp_path: Path) -> None:
    with http_server({"/endpoint": TOKEN, "/upload": TOKEN, "/v2/auth/token": TOKEN}) as (
        elsewhere,
        elsewhere_hits,
    ):
        routes = {
            "/v2/auth/token": redirect_to(f"{elsewhere}/v2/auth/token"),
            "/endpoint": redirect_to(f"{elsewhere}/endpoint"),
            "/upload": redirect_to(f"{elsewhere}/upload"),
        }
        with http_server(routes) as (base, hits):
            c = client(base, tmp_path)
            with pytest.raises(AuthError, match="HTTP 302"):
                c.check_auth()
            routes["/v2/auth/token"] = TOKEN
            with pytest.raises(TransientDeliveryError, match="redirect") as sent:
                c.send({"Meta": {}})
            assert sent.value.status == 302
            with pytest.raises(TransientDeliveryError, match="redirect"):
                (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4")
                with (tmp_path / "doc.pdf").open("rb") as fh:
                    c.upload(fh, upload_name="x.pdf", mime="application/pdf")
            c.http.close()
        assert hits == ["/v2/auth/token", "/v2/auth/token", "/endpoint", "/upload"]
    assert elsewhere_hits == []  # the other host was never asked


def test_the_daemon_client_follows_no_redirect_and_verifies(tmp_path: Path) -> None:
    from types import SimpleNamespace

    fake = SimpleNamespace(url="http://127.0.0.1:9", private_key=tmp_path / "k.pem")
    with make_http_client(load_settings(write_config(tmp_path, fake))) as http:  # type: ignore[arg-type]
        assert http.follow_redirects is False
        assert http.headers["Accept-Encoding"] == "identity"  # so the cap bounds the wire, too


# -- size caps ----------------------------------------------------------------------


def endless(h: BaseHTTPRequestHandler) -> None:
    """200, chunked, never ending: a client that reads it all never returns."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = b'{"access_token": "' + b"x" * 65536
    try:
        while True:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        return  # the client hung up: what we want


def huge_declared(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(50 * MAX_RESPONSE_BYTES))
    h.end_headers()
    try:
        h.wfile.write(b"{" * 65536)
    except OSError:
        return


def test_answers_are_capped_before_parsing(tmp_path: Path) -> None:
    routes = {"/v2/auth/token": endless, "/endpoint": huge_declared}
    with http_server(routes) as (base, _):
        c = client(base, tmp_path)
        started = time.monotonic()
        with pytest.raises(AuthError, match="without an access_token"):
            c.check_auth()
        assert time.monotonic() - started < 5
        routes["/v2/auth/token"] = TOKEN
        # 200 with a 50 MB body: not read, so not Redox's answer: an unknown outcome
        with pytest.raises(TransientDeliveryError, match="without the API's answer") as exc:
            c.send({"Meta": {}})
        assert exc.value.unknown_outcome and exc.value.status == 200
        c.http.close()


def test_read_capped_keeps_bodies_up_to_the_limit(tmp_path: Path) -> None:
    body = {"Meta": {"Logs": [{"ID": "d9f5d293-7110-461e-a875-3beb089e79f3"}]}}
    size = len(json.dumps(body))
    with http_server({"/a": send_json(200, body)}) as (base, _), httpx.Client() as http:
        kept = read_capped(http, http.build_request("POST", f"{base}/a"), limit=size)
        cut = read_capped(http, http.build_request("POST", f"{base}/a"), limit=size - 1)
    assert kept.json() == body and kept.status_code == 200
    assert cut.content == b"" and cut.status_code == 200
