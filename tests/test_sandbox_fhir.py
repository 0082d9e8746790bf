"""The sandbox's FHIR R4 routes over real HTTP on 127.0.0.1: the client-credentials
token URL, Media validation, conditional create, token kinds and faults."""

from __future__ import annotations

import base64
import copy
import hashlib
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.media import Media
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.sandbox import SandboxServer, SandboxState, generate_keypair, make_client_assertion
from daemon.sandbox.fhir_validation import validate_media

CLIENT_ID = "fhir-client"
SECRET = "s3cr:t/+&=ü"  # needs form-urlencoding inside HTTP Basic
DOC_SYSTEM = "urn:chartdrop:document-id"
PATIENT_SYSTEM = "urn:oid:2.16.840.1.113883.2.4.6.3"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
FHIR_JSON = "application/fhir+json"


# ---- fixtures and helpers ---------------------------------------------------


def make_state(tmp_path: Path, **kwargs: Any) -> SandboxState:
    state = SandboxState(blob_dir=tmp_path / "blobs", **kwargs)
    state.register_fhir_client(CLIENT_ID, SECRET)
    return state


@pytest.fixture
def state(tmp_path: Path) -> SandboxState:
    return make_state(tmp_path)


@pytest.fixture
def server(state: SandboxState) -> Iterator[SandboxServer]:
    with SandboxServer(state) as srv:
        yield srv


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def token_form(**overrides: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def basic(client_id: str, secret: str) -> str:
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def fhir_auth(client: httpx.Client) -> dict[str, str]:
    response = client.post("/fhir/oauth/token", data=token_form())
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def auth(client: httpx.Client) -> dict[str, str]:
    return fhir_auth(client)


def media(data: bytes = PDF, doc_id: str = "doc-1", **content: Any) -> dict[str, Any]:
    attachment: dict[str, Any] = {
        "contentType": "application/pdf",
        "data": base64.b64encode(data).decode(),
        "size": len(data),
        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode(),
        "title": "Consent Form",
        "creation": "2026-11-21T09:30:00Z",
    }
    attachment.update(content)
    return {
        "resourceType": "Media",
        "status": "completed",
        "identifier": [{"system": DOC_SYSTEM, "value": doc_id}],
        "subject": {"identifier": {"system": PATIENT_SYSTEM, "value": "0000000001"}},
        "content": {k: v for k, v in attachment.items() if v is not None},
    }


def post_media(
    client: httpx.Client,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    if_none_exist: str | None = None,
) -> httpx.Response:
    extra = {"Content-Type": FHIR_JSON}
    if if_none_exist is not None:
        extra["If-None-Exist"] = if_none_exist
    return client.post("/fhir/r4/Media", json=body, headers={**headers, **extra})


def condition(doc_id: str = "doc-1") -> str:
    return f"identifier={DOC_SYSTEM}|{doc_id}"


def issues(response: httpx.Response) -> list[dict[str, Any]]:
    """The OperationOutcome's issues, after checking it is a valid FHIR R4 resource."""
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    OperationOutcome.model_validate(body)
    found: list[dict[str, Any]] = body["issue"]
    assert found
    assert all(i["severity"] == "error" for i in found)
    return found


def expressions(response: httpx.Response) -> set[str]:
    return {e for i in issues(response) for e in i.get("expression", [])}


# ---- token URL --------------------------------------------------------------


def test_client_credentials_in_the_form(client: httpx.Client, state: SandboxState) -> None:
    response = client.post("/fhir/oauth/token", data=token_form())
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == state.token_ttl_seconds == 3600
    assert len(body["access_token"]) >= 32
    assert response.headers["Cache-Control"] == "no-store"
    assert state.fhir_token_requests == 1
    assert state.token_requests == 0  # Redox token requests are counted apart


def test_client_credentials_with_http_basic(client: httpx.Client, state: SandboxState) -> None:
    form = {"grant_type": "client_credentials"}
    good = client.post(
        "/fhir/oauth/token", data=form, headers={"Authorization": basic(CLIENT_ID, SECRET)}
    )
    assert good.status_code == 200, good.text
    headers = {"Authorization": f"Bearer {good.json()['access_token']}"}
    assert post_media(client, media(), headers).status_code == 201
    bad = client.post(
        "/fhir/oauth/token", data=form, headers={"Authorization": basic(CLIENT_ID, "nope")}
    )
    assert bad.status_code == 401
    assert bad.json() == {"error": "invalid_client"}
    assert bad.headers["WWW-Authenticate"].startswith("Basic ")
    garbled = client.post("/fhir/oauth/token", data=form, headers={"Authorization": "Basic %%%"})
    assert garbled.status_code == 401
    both = client.post(
        "/fhir/oauth/token",
        data=token_form(),
        headers={"Authorization": basic(CLIENT_ID, SECRET)},
    )
    assert both.status_code == 400  # two client authentication methods at once
    assert both.json() == {"error": "invalid_request"}
    assert state.fhir_token_requests == 4


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (token_form(client_secret="wrong"), 401, "invalid_client"),
        (token_form(client_id="someone-else"), 401, "invalid_client"),
        (token_form(client_secret=None), 401, "invalid_client"),
        (token_form(client_id=None, client_secret=None), 401, "invalid_client"),
        (token_form(grant_type="password"), 400, "unsupported_grant_type"),
        (token_form(grant_type="authorization_code"), 400, "unsupported_grant_type"),
        (token_form(grant_type=None), 400, "invalid_request"),
    ],
)
def test_bad_token_requests(
    client: httpx.Client, state: SandboxState, form: dict[str, str], status: int, error: str
) -> None:
    response = client.post("/fhir/oauth/token", data=form)
    assert response.status_code == status
    assert response.json() == {"error": error}
    assert SECRET not in response.text
    assert state.fhir_token_requests == 1


def test_token_request_must_be_form_encoded(client: httpx.Client) -> None:
    response = client.post("/fhir/oauth/token", json=token_form())
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request"}
    twice = client.post(
        "/fhir/oauth/token",
        content=urllib.parse.urlencode([*token_form().items(), ("client_id", CLIENT_ID)]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert twice.status_code == 400


# ---- token kinds ------------------------------------------------------------


def test_tokens_work_only_on_their_own_api(
    client: httpx.Client, server: SandboxServer, state: SandboxState, auth: dict[str, str]
) -> None:
    private, public = generate_keypair()
    state.register_client("redox-client", "kid", public)
    assertion = make_client_assertion(
        private, client_id="redox-client", key_id="kid", audience=f"{server.url}/v2/auth/token"
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    jwt_token = client.post("/v2/auth/token", data=form).json()["access_token"]
    state.register_legacy_key("api-key", "s3cret")
    legacy = client.post("/auth/authenticate", json={"apiKey": "api-key", "secret": "s3cret"})
    for token in (jwt_token, legacy.json()["accessToken"], "not-a-token"):
        refused = post_media(client, media(), {"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401
        assert issues(refused)[0]["code"] == "login"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert post_media(client, media(), {}).status_code == 401
    redox_body = {"Meta": {"DataModel": "Media", "EventType": "New", "Destinations": [{}]}}
    assert client.post("/endpoint", json=redox_body, headers=auth).status_code == 401
    assert state.fhir_resources() == []
    assert post_media(client, media(), auth).status_code == 201
    statuses = [(a.path, a.status, a.document_id) for a in state.attempts]
    assert statuses[-1] == ("/fhir/r4/Media", 201, "doc-1")
    assert ("/endpoint", 401, None) in statuses


def test_expired_and_revoked_fhir_tokens_are_refused(tmp_path: Path) -> None:
    state = make_state(tmp_path, token_ttl_seconds=0)
    with SandboxServer(state) as srv, httpx.Client(base_url=srv.url) as c:
        assert post_media(c, media(), fhir_auth(c)).status_code == 401  # expired at once
    state2 = make_state(tmp_path / "2")
    with SandboxServer(state2) as srv, httpx.Client(base_url=srv.url) as c:
        headers = fhir_auth(c)
        assert post_media(c, media(), headers).status_code == 201
        state2.revoke_tokens()
        assert post_media(c, media(), headers).status_code == 401
        assert (
            c.get(f"/fhir/r4/Media/{state2.fhir_resources()[0]['id']}", headers=headers).status_code
            == 401
        )


# ---- creating and reading Media ---------------------------------------------


def test_valid_media_is_created_read_back_and_recorded(
    client: httpx.Client, server: SandboxServer, state: SandboxState, auth: dict[str, str]
) -> None:
    body = media()
    headers = {**auth, "log-cdata": '{"site": "demo"}', "log-cdata-format": "json"}
    response = post_media(client, body, headers)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    created = response.json()
    Media.model_validate(created)
    rid = created["id"]
    assert response.headers["Location"] == f"{server.url}/fhir/r4/Media/{rid}/_history/1"
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"].endswith("Z")
    assert {k: v for k, v in created.items() if k not in ("id", "meta")} == body
    [stored] = state.fhir_resources()
    assert stored == created
    assert state.fhir_resource(rid) == created
    [received] = state.fhir_received()
    assert (received.body, received.status, received.resource_id) == (body, 201, rid)
    assert received.headers["log-cdata"] == '{"site": "demo"}'
    assert received.headers["log-cdata-format"] == "json"
    assert received.headers["content-type"] == FHIR_JSON
    assert "authorization" not in {k.lower() for k in received.headers}
    assert base64.b64decode(received.body["content"]["data"]) == PDF

    read = client.get(f"/fhir/r4/Media/{rid}", headers=auth)
    assert read.status_code == 200
    assert read.json() == created
    assert client.get(f"/fhir/r4/Media/{rid}/_history/1", headers=auth).json() == created
    assert client.get(f"/fhir/r4/Media/{rid}/_history/2", headers=auth).status_code == 404
    missing = client.get("/fhir/r4/Media/no-such-id", headers=auth)
    assert missing.status_code == 404
    assert issues(missing)[0]["code"] == "not-found"
    assert client.get(f"/fhir/r4/Media/{rid}").status_code == 401


def test_plain_application_json_is_accepted_other_types_are_not(
    client: httpx.Client, auth: dict[str, str]
) -> None:
    ok = client.post("/fhir/r4/Media", json=media(), headers=auth)  # httpx: application/json
    assert ok.status_code == 201
    text = client.post(
        "/fhir/r4/Media", json=media(), headers={**auth, "Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    assert issues(text)[0]["code"] == "not-supported"


def test_invalid_media_names_paths_and_never_echoes_values(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    body = media(size="CANARY-SIZE", contentType=None)
    body["status"] = "CANARY-STATUS"
    body["subject"] = {"identifier": {"system": PATIENT_SYSTEM, "value": ["CANARY-MRN"]}}
    body["identifier"] = [{"system": DOC_SYSTEM}]
    body["bogusElement"] = "CANARY-EXTRA"
    body["createdDateTime"] = "CANARY-DATE"
    response = post_media(client, body, auth)
    assert response.status_code == 400
    assert "CANARY" not in response.text
    paths = expressions(response)
    assert {
        "Media.status",
        "Media.subject.identifier.value",
        "Media.identifier[0].value",
        "Media.content.size",
        "Media.content.contentType",
        "Media.bogusElement",
        "Media.createdDateTime",
    } <= paths
    assert all(i["diagnostics"].split(":")[0] in paths for i in issues(response))
    assert state.fhir_resources() == []
    assert state.fhir_received() == []
    assert state.attempts[-1].status == 400


@pytest.mark.parametrize(
    ("drop", "path"),
    [
        (("status",), "Media.status"),
        (("subject",), "Media.subject.identifier.system"),
        (("identifier",), "Media.identifier[0].system"),
        (("content", "size"), "Media.content.size"),
        (("content", "hash"), "Media.content.hash"),
        (("content", "data"), "Media.content"),
        (("content",), "Media.content"),
    ],
)
def test_each_required_element(
    client: httpx.Client, auth: dict[str, str], drop: tuple[str, ...], path: str
) -> None:
    body = media()
    parent = body
    for key in drop[:-1]:
        parent = parent[key]
    del parent[drop[-1]]
    response = post_media(client, body, auth)
    assert response.status_code == 400
    assert path in expressions(response)


def test_wrong_resource_type_and_bad_json(client: httpx.Client, auth: dict[str, str]) -> None:
    patient = {**media(), "resourceType": "Patient"}
    response = post_media(client, patient, auth)
    assert response.status_code == 400
    assert issues(response)[0]["diagnostics"] == "resourceType: must be 'Media'"
    garbage = client.post(
        "/fhir/r4/Media", content=b"{nope", headers={**auth, "Content-Type": FHIR_JSON}
    )
    assert garbage.status_code == 400
    assert issues(garbage)[0]["code"] == "structure"
    broken = media()
    broken["content"]["data"] = "%%%%"
    bad_b64 = post_media(client, broken, auth)
    assert bad_b64.status_code == 400
    assert "Media.content.data" in expressions(bad_b64)


@pytest.mark.parametrize(
    ("content", "path"),
    [
        ({"hash": base64.b64encode(hashlib.sha1(b"other").digest()).decode()}, "hash"),
        ({"size": len(PDF) + 1}, "size"),
    ],
)
def test_hash_or_size_mismatch_is_422(
    client: httpx.Client, state: SandboxState, auth: dict[str, str], content: Any, path: str
) -> None:
    response = post_media(client, media(**content), auth)
    assert response.status_code == 422
    assert expressions(response) == {f"Media.content.{path}"}
    assert state.fhir_resources() == []


@pytest.mark.parametrize(
    ("value", "fmt", "ok"),
    [("site=demo", "kv", True), ("site=demo", None, True), ("{not json", "json", False)],
)
def test_log_cdata_headers(
    client: httpx.Client, auth: dict[str, str], value: str, fmt: str | None, ok: bool
) -> None:
    headers = {**auth, "log-cdata": value}
    if fmt is not None:
        headers["log-cdata-format"] = fmt
    assert post_media(client, media(), headers).status_code == (201 if ok else 400)
    wrong_format = post_media(client, media(), {**auth, "log-cdata-format": "xml"})
    assert wrong_format.status_code == 400


def test_request_size_limit(tmp_path: Path) -> None:
    state = make_state(tmp_path, request_max_bytes=5000)
    with SandboxServer(state) as srv, httpx.Client(base_url=srv.url) as c:
        headers = fhir_auth(c)
        assert post_media(c, media(), headers).status_code == 201
        big = post_media(c, media(data=b"a" * 6000), headers)
        assert big.status_code == 413
        assert issues(big)[0]["code"] == "too-long"
    assert [a.status for a in state.attempts] == [201, 413]


# ---- conditional create -----------------------------------------------------


@pytest.mark.parametrize("encode", [False, True])
def test_conditional_create_returns_the_existing_resource(
    client: httpx.Client, state: SandboxState, auth: dict[str, str], encode: bool
) -> None:
    header = condition()
    if encode:
        header = "identifier=" + urllib.parse.quote(f"{DOC_SYSTEM}|doc-1", safe="")
        assert "%7C" in header
    first = post_media(client, media(), auth, if_none_exist=header)
    assert first.status_code == 201, first.text
    second = post_media(client, media(), auth, if_none_exist=header)
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    assert second.headers["Location"] == first.headers["Location"]
    assert len(state.fhir_resources()) == 1
    received = state.fhir_received()
    rid = first.json()["id"]
    assert [(r.status, r.resource_id) for r in received] == [(201, rid), (200, rid)]
    assert {r.body["identifier"][0]["value"] for r in received} == {"doc-1"}
    assert all(r.headers["if-none-exist"] == header for r in received)
    other = post_media(client, media(doc_id="doc-2"), auth, if_none_exist=condition("doc-2"))
    assert other.status_code == 201
    assert len(state.fhir_resources()) == 2


def test_without_if_none_exist_every_post_creates(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    ids = {post_media(client, media(), auth).json()["id"] for _ in range(2)}
    assert len(ids) == 2
    assert len(state.fhir_resources()) == 2
    # Two resources now carry doc-1: a conditional create cannot pick one.
    ambiguous = post_media(client, media(), auth, if_none_exist=condition())
    assert ambiguous.status_code == 412
    assert issues(ambiguous)[0]["code"] == "multiple-matches"
    assert len(state.fhir_resources()) == 2


@pytest.mark.parametrize(
    "header",
    [
        "status=completed",
        "identifier=doc-1",
        f"identifier={DOC_SYSTEM}|",
        f"identifier={DOC_SYSTEM}|doc-1&status=completed",
        f"identifier={DOC_SYSTEM}|other-doc",  # not an identifier the resource carries
    ],
)
def test_unusable_if_none_exist_is_refused(
    client: httpx.Client, state: SandboxState, auth: dict[str, str], header: str
) -> None:
    response = post_media(client, media(), auth, if_none_exist=header)
    assert response.status_code == 400
    assert issues(response)[0]["diagnostics"].startswith("If-None-Exist:")
    assert "doc-1" not in response.text
    assert state.fhir_resources() == []


def test_concurrent_conditional_creates_make_one_resource(
    server: SandboxServer, state: SandboxState, auth: dict[str, str]
) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            r = post_media(c, media(), auth, if_none_exist=condition())
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(statuses) == [200] * 7 + [201]
    assert len(state.fhir_resources()) == 1


# ---- content by URL (uploaded blobs) ----------------------------------------


def test_content_url_must_name_an_uploaded_blob_with_matching_hash(
    client: httpx.Client, server: SandboxServer, state: SandboxState, auth: dict[str, str]
) -> None:
    data = PDF * 5000
    uploaded = client.post("/upload", headers=auth, files={"file": ("doc-1.pdf", data)})
    assert uploaded.status_code == 201, uploaded.text
    uri = uploaded.json()["URI"]
    by_url = media(data=data, url=uri)
    del by_url["content"]["data"]
    created = post_media(client, by_url, auth)
    assert created.status_code == 201, created.text
    assert state.blob_bytes(created.json()["content"]["url"]) == data

    wrong = copy.deepcopy(by_url)
    wrong["content"]["hash"] = media(data=b"x")["content"]["hash"]
    assert expressions(post_media(client, wrong, auth)) == {"Media.content.hash"}
    for url in (f"{server.url}/blob/{'0' * 32}", "https://example.org/scan.pdf"):
        elsewhere = copy.deepcopy(by_url)
        elsewhere["content"]["url"] = url
        response = post_media(client, elsewhere, auth)
        assert response.status_code == 422
        assert expressions(response) == {"Media.content.url"}
        assert url not in response.text
    # A blob uploaded by another client is not this client's to reference.
    state.register_fhir_client("other", "other-secret")
    token = client.post(
        "/fhir/oauth/token", data=token_form(client_id="other", client_secret="other-secret")
    ).json()["access_token"]
    assert post_media(client, by_url, {"Authorization": f"Bearer {token}"}).status_code == 422
    assert len(state.fhir_resources()) == 1


# ---- faults -----------------------------------------------------------------


def test_fail_next_and_retry_after_on_media(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    state.set_faults(fail_next=[503, 429], retry_after="2")
    statuses = []
    for _ in range(3):
        response = post_media(client, media(), auth, if_none_exist=condition())
        statuses.append(response.status_code)
        if response.status_code >= 400:
            assert response.headers["Retry-After"] == "2"
            assert issues(response)[0]["code"] == "transient"
    assert statuses == [503, 429, 201]
    assert [(a.path, a.status, a.document_id) for a in state.attempts] == [
        ("/fhir/r4/Media", 503, "doc-1"),
        ("/fhir/r4/Media", 429, "doc-1"),
        ("/fhir/r4/Media", 201, "doc-1"),
    ]
    assert len(state.fhir_received()) == 1


def test_outage_error_rate_and_latency_on_fhir_routes(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    state.set_faults(outage=True, error_status=502, retry_after="30")
    assert post_media(client, media(), auth).status_code == 502
    token = client.post("/fhir/oauth/token", data=token_form())
    assert token.status_code == 502
    assert token.headers["Retry-After"] == "30"
    state.set_faults(outage=False, error_rate=1.0, error_status=500)
    assert post_media(client, media(), auth).status_code == 500
    state.set_faults(error_rate=0.0, latency_seconds=0.3)
    started = time.monotonic()
    assert post_media(client, media(), auth).status_code == 201
    assert time.monotonic() - started >= 0.3
    assert [a.status for a in state.attempts] == [502, 500, 201]


# ---- validation, directly ---------------------------------------------------


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(secret=st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=6, max_size=30))
def test_diagnostics_never_contain_the_values_sent(secret: str) -> None:
    body = media(size=secret, contentType=[secret], title={"x": secret}, creation=secret)
    body["status"] = secret
    body["identifier"] = [{"system": 7, "value": [secret]}]
    body["subject"] = {"identifier": {"system": secret, "value": {"v": secret}}}
    found = validate_media(body)
    assert len(found) >= 6
    assert not any(secret in i.diagnostics or secret in (i.expression or "") for i in found)
