"""The local Redox-compatible sandbox, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.payload import REDOX_MODELS
from daemon.sandbox import (
    Faults,
    SandboxServer,
    SandboxState,
    generate_keypair,
    make_client_assertion,
)
from daemon.sandbox.server import serve_forever
from daemon.sandbox.validation import SCHEMAS, schema_validator, validate_body

CLIENT_ID = "client-1"
KID = "kid-1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


# ---- fixtures and helpers ---------------------------------------------------


@pytest.fixture(scope="module")
def keypair() -> tuple[bytes, bytes]:
    return generate_keypair()


@pytest.fixture(scope="module")
def other_keypair() -> tuple[bytes, bytes]:
    return generate_keypair()


def make_state(tmp_path: Path, keypair: tuple[bytes, bytes], **kwargs: Any) -> SandboxState:
    state = SandboxState(blob_dir=tmp_path / "blobs", **kwargs)
    state.register_client(CLIENT_ID, KID, keypair[1])
    return state


@pytest.fixture
def state(tmp_path: Path, keypair: tuple[bytes, bytes]) -> SandboxState:
    return make_state(tmp_path, keypair)


@pytest.fixture
def server(state: SandboxState) -> Iterator[SandboxServer]:
    with SandboxServer(state) as srv:
        yield srv


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def token_url(server: SandboxServer) -> str:
    return f"{server.url}/v2/auth/token"


def sign(private_pem: bytes, claims: dict[str, Any], kid: str = KID, alg: str = "RS384") -> str:
    return jwt.encode(claims, private_pem, algorithm=alg, headers={"kid": kid})


def claims_for(server: SandboxServer, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": token_url(server),
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def request_token(client: httpx.Client, assertion: str, **form: str) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **form,
    }
    return client.post("/v2/auth/token", data=data)


def get_token(client: httpx.Client, server: SandboxServer, private_pem: bytes) -> str:
    assertion = make_client_assertion(
        private_pem, client_id=CLIENT_ID, key_id=KID, audience=token_url(server)
    )
    response = request_token(client, assertion)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


@pytest.fixture
def auth(
    client: httpx.Client, server: SandboxServer, keypair: tuple[bytes, bytes]
) -> dict[str, str]:
    return {"Authorization": f"Bearer {get_token(client, server, keypair[0])}"}


def media_body(**media_overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Meta": {"DataModel": "Media", "EventType": "New", "Destinations": [{"ID": "x"}]},
        "Patient": {
            "Identifiers": [{"ID": "0000000001", "IDType": "MR"}],
            "Demographics": {"FirstName": "Timothy", "LastName": "Bixby", "DOB": "2008-01-06"},
        },
        "Visit": {"VisitNumber": "1234"},
        "Media": {
            "FileType": "PDF",
            "FileName": "scan.pdf",
            "FileContents": base64.b64encode(PDF).decode(),
            "DocumentType": "Consent Form",
            "DocumentID": "doc-1",
            "Provider": {"ID": "4356789876", "IDType": "NPI"},
            "Availability": "Available",
        },
    }
    body["Media"].update(media_overrides)
    return body


def error_texts(response: httpx.Response) -> list[str]:
    errors = response.json()["Meta"]["Errors"]
    assert [e["ID"] for e in errors] == list(range(len(errors)))
    return [e["Text"] for e in errors]


def upload(client: httpx.Client, headers: dict[str, str], data: bytes) -> httpx.Response:
    files = {"file": ("scan.pdf", data, "application/pdf")}
    return client.post("/upload", headers=headers, files=files)


# ---- token endpoint ---------------------------------------------------------


def test_valid_assertion_gets_a_bearer_token(
    client: httpx.Client, server: SandboxServer, state: SandboxState, keypair: tuple[bytes, bytes]
) -> None:
    response = request_token(client, sign(keypair[0], claims_for(server)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "*"
    assert len(body["access_token"]) >= 32
    assert state.token_requests == 1
    accepted = client.post(
        "/endpoint", json=media_body(), headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert accepted.status_code == 200


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_key", "signature"),
        ("wrong_kid", "kid"),
        ("wrong_aud", "aud"),
        ("expired", "expired"),
        ("hs256", "RS384"),
        ("wrong_iss", "iss"),
        ("too_long_lived", "5 minutes"),
        ("no_jti", "jti"),
        ("not_a_jwt", "well-formed"),
    ],
)
def test_bad_assertions_are_refused(
    client: httpx.Client,
    server: SandboxServer,
    state: SandboxState,
    keypair: tuple[bytes, bytes],
    other_keypair: tuple[bytes, bytes],
    case: str,
    expected: str,
) -> None:
    now = int(time.time())
    private = keypair[0]
    if case == "wrong_key":
        assertion = sign(other_keypair[0], claims_for(server))
    elif case == "wrong_kid":
        assertion = sign(private, claims_for(server), kid="no-such-kid")
    elif case == "wrong_aud":
        assertion = sign(
            private, claims_for(server, aud="https://api.redoxengine.com/v2/auth/token")
        )
    elif case == "expired":
        assertion = sign(private, claims_for(server, iat=now - 600, exp=now - 300))
    elif case == "hs256":
        assertion = jwt.encode(
            claims_for(server), "x" * 32, algorithm="HS256", headers={"kid": KID}
        )
    elif case == "wrong_iss":
        assertion = sign(private, claims_for(server, iss="someone-else"))
    elif case == "too_long_lived":
        assertion = sign(private, claims_for(server, exp=now + 3600))
    elif case == "no_jti":
        assertion = sign(private, claims_for(server, jti=None))
    else:
        assertion = "not.a.jwt"
    response = request_token(client, assertion)
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert expected in body["error_description"]
    assert "access_token" not in body
    assert assertion not in response.text


def test_replayed_jti_is_refused(
    client: httpx.Client, server: SandboxServer, keypair: tuple[bytes, bytes]
) -> None:
    claims = claims_for(server)
    assert request_token(client, sign(keypair[0], claims)).status_code == 200
    again = request_token(client, sign(keypair[0], claims))
    assert again.status_code == 401
    assert "already been used" in again.json()["error_description"]


@pytest.mark.parametrize(
    "form", [{"grant_type": "password"}, {"client_assertion_type": "urn:other"}]
)
def test_wrong_grant_or_assertion_type_is_invalid_request(
    client: httpx.Client, server: SandboxServer, keypair: tuple[bytes, bytes], form: dict[str, str]
) -> None:
    response = request_token(client, sign(keypair[0], claims_for(server)), **form)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request"}


def test_legacy_authenticate(client: httpx.Client, state: SandboxState) -> None:
    state.register_legacy_key("api-key", "s3cret")
    bad = client.post("/auth/authenticate", json={"apiKey": "api-key", "secret": "nope"})
    assert bad.status_code == 401
    good = client.post("/auth/authenticate", json={"apiKey": "api-key", "secret": "s3cret"})
    assert good.status_code == 200
    token = good.json()["accessToken"]
    assert good.json()["expires"].endswith("Z")
    ok = client.post("/endpoint", json=media_body(), headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200


def legacy_login(client: httpx.Client, api_key: str, secret: str) -> dict[str, Any]:
    response = client.post("/auth/authenticate", json={"apiKey": api_key, "secret": secret})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"accessToken", "expires", "refreshToken"}
    return body


def refresh(client: httpx.Client, api_key: str, token: str) -> httpx.Response:
    return client.post("/auth/refreshToken", json={"apiKey": api_key, "refreshToken": token})


def test_legacy_refresh_token_renews_and_rotates(client: httpx.Client, state: SandboxState) -> None:
    state.register_legacy_key("api-key", "s3cret")
    first = legacy_login(client, "api-key", "s3cret")
    second = legacy_login(client, "api-key", "s3cret")
    assert len(first["refreshToken"]) >= 32
    assert first["refreshToken"] != second["refreshToken"]
    # One refresh token per key: authenticating again replaced the first.
    assert refresh(client, "api-key", first["refreshToken"]).status_code == 401
    state.revoke_tokens()  # access tokens only: the refresh token still works
    stale = {"Authorization": f"Bearer {second['accessToken']}"}
    assert client.post("/endpoint", json=media_body(), headers=stale).status_code == 401
    renewed = refresh(client, "api-key", second["refreshToken"])
    assert renewed.status_code == 200, renewed.text
    body = renewed.json()
    assert set(body) == {"accessToken", "expires", "refreshToken"}
    assert body["expires"].endswith("Z")
    assert body["refreshToken"] != second["refreshToken"]  # rotated
    fresh = {"Authorization": f"Bearer {body['accessToken']}"}
    assert client.post("/endpoint", json=media_body(), headers=fresh).status_code == 200
    assert upload(client, fresh, PDF).status_code == 201
    # A used refresh token cannot be used again; the rotated one can.
    assert refresh(client, "api-key", second["refreshToken"]).status_code == 401
    assert refresh(client, "api-key", body["refreshToken"]).status_code == 200
    assert state.refresh_requests == 4
    assert state.token_requests == 2  # the two authentications; refreshes count apart


def test_revoked_or_mismatched_refresh_tokens_are_refused(
    client: httpx.Client, state: SandboxState
) -> None:
    state.register_legacy_key("key-a", "secret-a")
    state.register_legacy_key("key-b", "secret-b")
    a = legacy_login(client, "key-a", "secret-a")
    b = legacy_login(client, "key-b", "secret-b")
    assert refresh(client, "key-b", a["refreshToken"]).status_code == 401  # another key's
    assert refresh(client, "nobody", a["refreshToken"]).status_code == 401
    assert refresh(client, "key-a", "guessed-token").status_code == 401
    state.revoke_refresh_tokens()
    refused = refresh(client, "key-a", a["refreshToken"])
    assert refused.status_code == 401
    assert refused.json()["Meta"]["Errors"][0]["Text"] == "Unauthorized"
    assert a["refreshToken"] not in refused.text
    # Access tokens are left alone; authenticating again gives a working refresh token.
    live = {"Authorization": f"Bearer {b['accessToken']}"}
    assert client.post("/endpoint", json=media_body(), headers=live).status_code == 200
    again = legacy_login(client, "key-a", "secret-a")
    assert refresh(client, "key-a", again["refreshToken"]).status_code == 200
    missing = client.post("/auth/refreshToken", json={"apiKey": "key-a"})
    assert missing.status_code == 400
    assert client.post("/auth/refreshToken", content=b"{nope").status_code == 400


def test_legacy_endpoints_answer_an_outage(client: httpx.Client, state: SandboxState) -> None:
    state.register_legacy_key("api-key", "s3cret")
    token = legacy_login(client, "api-key", "s3cret")["refreshToken"]
    state.set_faults(outage=True, error_status=503, retry_after="7")
    refused = refresh(client, "api-key", token)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "7"
    login = client.post("/auth/authenticate", json={"apiKey": "api-key", "secret": "s3cret"})
    assert login.status_code == 503
    state.set_faults(outage=False)
    assert refresh(client, "api-key", token).status_code == 200  # not used up by the outage


# ---- /endpoint --------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic abc", "Bearer"])
def test_endpoint_requires_an_issued_token(
    client: httpx.Client, state: SandboxState, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = client.post("/endpoint", json=media_body(), headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "Meta": {"Errors": [{"ID": 0, "Text": "Unauthorized", "Type": "auth", "Module": "Auth"}]}
    }
    assert state.received() == []
    assert [(a.path, a.status, a.document_id) for a in state.attempts] == [
        ("/endpoint", 401, "doc-1")
    ]


def test_revoked_and_expired_tokens_are_refused(
    tmp_path: Path, keypair: tuple[bytes, bytes]
) -> None:
    state = make_state(tmp_path, keypair, token_ttl_seconds=0)
    with SandboxServer(state) as srv, httpx.Client(base_url=srv.url) as c:
        token = get_token(c, srv, keypair[0])  # expires the moment it is issued
        headers = {"Authorization": f"Bearer {token}"}
        assert c.post("/endpoint", json=media_body(), headers=headers).status_code == 401
    state2 = make_state(tmp_path / "2", keypair)
    with SandboxServer(state2) as srv, httpx.Client(base_url=srv.url) as c:
        headers = {"Authorization": f"Bearer {get_token(c, srv, keypair[0])}"}
        assert c.post("/endpoint", json=media_body(), headers=headers).status_code == 200
        state2.revoke_tokens()
        assert c.post("/endpoint", json=media_body(), headers=headers).status_code == 401


def test_valid_media_new_is_accepted_and_recorded(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    body = media_body()
    response = client.post("/endpoint", json=body, headers={**auth, "Redox-Source-Id": "src"})
    assert response.status_code == 200, response.text
    meta = response.json()["Meta"]
    assert meta["DataModel"] == "Media"
    assert meta["EventType"] == "New"
    log = meta["Logs"][0]
    assert uuid.UUID(log["ID"]).version == 4
    assert uuid.UUID(log["AttemptID"]).version == 4
    [received] = state.received()
    assert received.log_id == log["ID"]
    assert received.body == body
    assert received.headers == {"content-type": "application/json", "redox-source-id": "src"}
    assert "authorization" not in received.headers
    listed = client.get("/_sandbox/received").json()
    assert [(r["log_id"], r["body"]) for r in listed] == [(log["ID"], body)]


def test_missing_fields_are_each_listed(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    body = media_body()
    del body["Media"]["FileName"]
    del body["Media"]["DocumentType"]
    del body["Patient"]["Identifiers"]
    response = client.post("/endpoint", json=body, headers=auth)
    assert response.status_code == 400
    meta = response.json()["Meta"]
    assert (meta["DataModel"], meta["EventType"]) == ("Media", "New")
    texts = error_texts(response)
    assert "Media.FileName: Field required" in texts
    assert "Media.DocumentType: Field required" in texts
    assert "Patient.Identifiers: Field required" in texts
    assert len(texts) == 3
    assert all(e["Type"] == "request" for e in response.json()["Meta"]["Errors"])
    assert state.received() == []
    assert state.attempts[-1].status == 400


def test_validation_errors_never_echo_input_values(
    client: httpx.Client, auth: dict[str, str]
) -> None:
    body = media_body()
    body["Patient"]["Demographics"] = {
        "FirstName": "CANARYNAME",
        "LastName": ["CANARYLAST"],
        "DOB": {"CANARYKEY": "CANARYDOB"},
    }
    body["Meta"]["Test"] = "CANARYBOOL"
    body["Media"]["FileName"] = 12.5e300  # a number where a string is coerced: still accepted
    del body["Media"]["DocumentID"]
    response = client.post("/endpoint", json=body, headers=auth)
    assert response.status_code == 400
    assert "CANARY" not in response.text
    locs = {t.split(":")[0] for t in error_texts(response)}
    assert {"Patient.Demographics.LastName", "Patient.Demographics.DOB", "Meta.Test"} <= locs
    assert "Media.DocumentID" in locs


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(secret=st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=6, max_size=30))
def test_error_texts_never_contain_the_values_sent(secret: str) -> None:
    body = media_body(FileName=[secret], DocumentType={"x": secret}, Availability=None)
    body["Patient"]["Demographics"]["FirstName"] = secret
    body["Patient"]["Identifiers"] = [{"ID": secret, "IDType": [secret]}]
    body["Meta"]["Test"] = secret
    _, _, errors = validate_body(body, blob_prefix="http://x/blob/", resolve_blob=lambda _: False)
    assert len(errors) >= 5
    assert not any(secret in text for text in errors)


def test_keys_the_schema_does_not_list_are_let_through(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    """The published schemas allow unlisted keys (see validation.py's docstring):
    the sandbox does not refuse a field Redox added after them, or a misspelt one."""
    body = media_body(Extensions={"x": {}}, Bogus="value")
    response = client.post("/endpoint", json=body, headers=auth)
    assert response.status_code == 200, response.text
    assert state.received()[0].body["Media"]["Bogus"] == "value"


def results_body() -> dict[str, Any]:
    base = media_body()
    return {
        "Meta": {**base["Meta"], "DataModel": "Results"},
        "Patient": base["Patient"],
        "Orders": [
            {
                "ID": "order-1",
                "Status": "Resulted",
                "Results": [
                    {
                        "Code": "PDF Report",
                        "Status": "Final",
                        "Value": base["Media"]["FileContents"],
                        "ValueType": "Encapsulated Data",
                        "FileType": "PDF",
                    }
                ],
            }
        ],
    }


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (None, "Orders[0].Results[0].Status: Field required"),  # key left out
        ("null", "Orders[0].Results[0].Status: must be of type string"),
    ],
)
def test_the_schema_refuses_what_the_redox_models_let_through(
    client: httpx.Client, state: SandboxState, auth: dict[str, str], status: str | None, error: str
) -> None:
    """Redox's Results schema requires a result's Status (a string); the redox
    package's model, which chartdrop builds and checks its bodies with, leaves it
    optional. The sandbox, checking against the schema, catches that gap."""
    body = results_body()
    result = body["Orders"][0]["Results"][0]
    del result["Status"]
    if status == "null":
        result["Status"] = None
    REDOX_MODELS["Results", "New"].model_validate(body, strict=True)  # production: fine
    response = client.post("/endpoint", json=body, headers=auth)
    assert response.status_code == 400
    assert error_texts(response) == [error]
    assert state.received() == []
    fixed = client.post("/endpoint", json=results_body(), headers=auth)
    assert fixed.status_code == 200, fixed.text


@pytest.mark.parametrize(("data_model", "event_type"), sorted(SCHEMAS))
def test_every_schema_names_a_wrong_type_and_a_missing_field_by_path(
    client: httpx.Client, auth: dict[str, str], data_model: str, event_type: str
) -> None:
    body = media_body() if data_model != "Results" else results_body()
    if data_model == "Notes":
        body["Note"] = body.pop("Media") | {"ContentType": "Base64 Encoded"}
        for key in ("FileType", "Availability"):
            del body["Note"][key]
    body["Meta"] |= {"DataModel": data_model, "EventType": event_type}
    if event_type == "Replace":
        body["Media" if data_model == "Media" else "Note"]["OriginalDocumentID"] = "doc-0"
    if event_type == "Delete":
        body["Media" if data_model == "Media" else "Note"].pop("FileContents")
    assert client.post("/endpoint", json=body, headers=auth).status_code == 200

    body["Patient"]["Identifiers"][0]["ID"] = 4815162342  # an MRN as a number
    del body["Patient"]["Identifiers"][0]["IDType"]
    body["Meta"]["Test"] = "CANARY-TEST"
    response = client.post("/endpoint", json=body, headers=auth)
    assert response.status_code == 400
    assert error_texts(response) == [
        "Meta.Test: must be of type boolean or null",
        "Patient.Identifiers[0].ID: must be of type string",
        "Patient.Identifiers[0].IDType: Field required",
    ]
    assert "4815162342" not in response.text and "CANARY" not in response.text


def test_the_sandbox_pairs_are_the_ones_chartdrop_sends() -> None:
    assert set(SCHEMAS) == set(REDOX_MODELS)


def test_the_shipped_schemas_are_the_published_ones() -> None:
    """daemon/sandbox/schemas/ holds the same files as tests/redox-schemas/ (the
    copy of redox-contrib/models the tests check chartdrop's bodies with), with
    their licence, and every one is a valid draft-04 schema."""
    shipped = files("daemon.sandbox") / "schemas"
    published = Path(__file__).parent / "redox-schemas"
    for name in SCHEMAS.values():
        assert json.loads(shipped.joinpath(name).read_text()) == json.loads(
            (published / name).read_text()
        )
    assert shipped.joinpath("LICENSE").read_text() == (published / "LICENSE").read_text()
    assert "MIT" in shipped.joinpath("LICENSE").read_text()
    for pair in SCHEMAS:
        assert (
            schema_validator(*pair).schema["$schema"].startswith("http://json-schema.org/draft-04/")
        )


def test_validation_does_not_use_the_redox_models() -> None:
    """With the redox package (production's models) unimportable, the sandbox
    still validates: it depends on the schemas only."""
    code = (
        "import sys\n"
        "sys.modules['redox'] = None\n"
        "from daemon.sandbox.validation import validate_body\n"
        "import json\n"
        "body = json.loads(sys.argv[1])\n"
        "print(json.dumps(validate_body(body, blob_prefix='x', resolve_blob=bool)[2]))\n"
    )
    body = results_body()
    del body["Orders"][0]["ID"]
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(body)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["Orders[0].ID: Field required"]


@pytest.mark.parametrize("destinations", [None, []])
def test_destinations_are_required(
    client: httpx.Client, auth: dict[str, str], destinations: list[Any] | None
) -> None:
    body = media_body()
    body["Meta"].pop("Destinations")
    if destinations is not None:
        body["Meta"]["Destinations"] = destinations
    response = client.post("/endpoint", json=body, headers=auth)
    assert response.status_code == 400
    assert any(t.startswith("Meta.Destinations:") for t in error_texts(response))


def test_unsupported_model_and_bad_json_are_refused(
    client: httpx.Client, auth: dict[str, str]
) -> None:
    body = media_body()
    body["Meta"]["DataModel"] = "Scheduling"
    response = client.post("/endpoint", json=body, headers=auth)
    assert response.status_code == 400
    assert "'Scheduling'/'New'" in error_texts(response)[0]
    not_json = client.post("/endpoint", content=b"{nope", headers=auth)
    assert not_json.status_code == 400
    array = client.post("/endpoint", json=[1, 2], headers=auth)
    assert array.status_code == 400
    no_meta = client.post("/endpoint", json={"Media": {}}, headers=auth)
    assert no_meta.status_code == 400
    assert error_texts(no_meta)[0].startswith("Meta:")


@pytest.mark.parametrize("contents", ["not base64!", "", "QUJD=", "ftp://elsewhere/blob/1"])
def test_file_contents_must_be_base64_or_a_blob_uri(
    client: httpx.Client, auth: dict[str, str], contents: str
) -> None:
    response = client.post("/endpoint", json=media_body(FileContents=contents), headers=auth)
    assert response.status_code == 400
    assert error_texts(response)[0].startswith("Media.FileContents:")


def test_other_models_and_events(client: httpx.Client, auth: dict[str, str]) -> None:
    b64 = base64.b64encode(PDF).decode()
    base = media_body()
    patient, meta = base["Patient"], base["Meta"]
    note = {
        "Meta": {**meta, "DataModel": "Notes"},
        "Patient": patient,
        "Note": {
            "ContentType": "Base64 Encoded",
            "FileContents": b64,
            "FileName": "scan.pdf",
            "FileType": "PDF",
            "DocumentType": "Consent Form",
            "DocumentID": "note-1",
            "Provider": {"ID": "1"},
        },
    }
    result = {
        "Meta": {**meta, "DataModel": "Results"},
        "Patient": patient,
        "Orders": [
            {
                "ID": "order-1",
                "Status": "Final",
                "Results": [
                    {
                        "Code": "PDF",
                        "Value": b64,
                        "ValueType": "Encapsulated Data",
                        "FileType": "PDF",
                        "Status": "Final",
                    }
                ],
            }
        ],
    }
    replace = media_body(OriginalDocumentID="doc-0")
    replace["Meta"]["EventType"] = "Replace"
    delete = media_body()
    delete["Meta"]["EventType"] = "Delete"
    del delete["Media"]["FileContents"]
    for body in (note, result, replace, delete):
        response = client.post("/endpoint", json=body, headers=auth)
        assert response.status_code == 200, response.text
    plain = copy.deepcopy(note)
    plain["Note"].update(ContentType="Plain Text", FileContents="just some text!")
    assert client.post("/endpoint", json=plain, headers=auth).status_code == 200
    broken = copy.deepcopy(result)
    broken["Orders"][0]["Results"][0]["Value"] = "%%% not base64"
    bad = client.post("/endpoint", json=broken, headers=auth)
    assert bad.status_code == 400
    assert error_texts(bad)[0].startswith("Orders[0].Results[0].Value:")


# ---- /upload and blobs ------------------------------------------------------


def test_upload_then_reference_the_blob(
    client: httpx.Client, server: SandboxServer, state: SandboxState, auth: dict[str, str]
) -> None:
    data = os.urandom(300_000)
    response = upload(client, auth, data)
    assert response.status_code == 201, response.text
    uri = response.json()["URI"]
    assert uri.startswith(f"{server.url}/blob/")
    blob_id = uri.rsplit("/", 1)[1]
    assert state.uploads() == [blob_id]
    assert state.blob_bytes(uri) == data
    assert state.blob_bytes(blob_id) == data
    assert stat.S_IMODE((state.blob_dir / blob_id).stat().st_mode) == 0o600
    fetched = client.get(f"/blob/{blob_id}", headers=auth)
    assert fetched.status_code == 200
    assert fetched.content == data
    assert client.get(f"/blob/{blob_id}").status_code == 401
    assert client.get(f"/blob/{uuid.uuid4().hex}", headers=auth).status_code == 404
    assert client.get("/blob/..%2F..%2Fetc%2Fpasswd", headers=auth).status_code == 404

    ok = client.post("/endpoint", json=media_body(FileContents=uri), headers=auth)
    assert ok.status_code == 200, ok.text
    unknown = f"{server.url}/blob/{uuid.uuid4().hex}"
    bad = client.post("/endpoint", json=media_body(FileContents=unknown), headers=auth)
    assert bad.status_code == 400
    assert "blob" in error_texts(bad)[0]
    assert unknown not in bad.text
    assert [a.path for a in state.attempts] == ["/upload", "/endpoint", "/endpoint"]


def test_blobs_belong_to_the_client_that_uploaded_them(
    client: httpx.Client,
    server: SandboxServer,
    state: SandboxState,
    auth: dict[str, str],
    other_keypair: tuple[bytes, bytes],
) -> None:
    uri = upload(client, auth, PDF).json()["URI"]
    state.register_client("client-2", "kid-2", other_keypair[1])
    assertion = make_client_assertion(
        other_keypair[0], client_id="client-2", key_id="kid-2", audience=token_url(server)
    )
    other = {"Authorization": f"Bearer {request_token(client, assertion).json()['access_token']}"}
    response = client.post("/endpoint", json=media_body(FileContents=uri), headers=other)
    assert response.status_code == 400
    assert client.get(f"/blob/{uri.rsplit('/', 1)[1]}", headers=other).status_code == 404


def test_upload_needs_auth_and_a_file_field(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    assert upload(client, {}, PDF).status_code == 401
    wrong_field = client.post("/upload", headers=auth, files={"document": ("a", PDF)})
    assert wrong_field.status_code == 400
    not_multipart = client.post("/upload", headers=auth, content=PDF)
    assert not_multipart.status_code == 400
    assert state.uploads() == []
    assert [a.status for a in state.attempts] == [401, 400, 400]


def test_upload_size_limit(tmp_path: Path, keypair: tuple[bytes, bytes]) -> None:
    state = make_state(tmp_path, keypair, upload_max_bytes=1000)
    with SandboxServer(state) as srv, httpx.Client(base_url=srv.url) as c:
        auth = {"Authorization": f"Bearer {get_token(c, srv, keypair[0])}"}
        at_limit = upload(c, auth, b"a" * 1000)
        assert at_limit.status_code == 201
        over = upload(c, auth, b"a" * 1001)
        assert over.status_code == 413
        assert over.json()["Meta"]["Errors"][0]["Text"] == "File too large"
        # Declared Content-Length over the limit: refused without reading the body.
        assert upload(c, auth, b"a" * 200_000).status_code == 413
        # Chunked (no Content-Length): cut off while streaming.
        boundary = "sandboxboundary"
        payload = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + b"a" * 200_000
            + f"\r\n--{boundary}--\r\n".encode()
        )
        chunked = c.post(
            "/upload",
            headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=iter([payload[i : i + 8192] for i in range(0, len(payload), 8192)]),
        )
        assert chunked.status_code == 413
    assert len(state.uploads()) == 1
    assert sorted(p.name for p in state.blob_dir.iterdir()) == state.uploads()


def test_declared_oversize_upload_is_refused_before_the_body_is_read(
    tmp_path: Path, keypair: tuple[bytes, bytes]
) -> None:
    state = make_state(tmp_path, keypair, upload_max_bytes=1000)
    with SandboxServer(state) as srv, httpx.Client(base_url=srv.url) as c:
        token = get_token(c, srv, keypair[0])
        host, port = srv.url.removeprefix("http://").split(":")
        head = (
            f"POST /upload HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 50000000\r\n\r\n"
        )
        # Only the headers are sent: a server that waited for the 50 MB body
        # would never answer, and the socket timeout would fail the test.
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(head.encode())
            answer = sock.recv(4096).decode("latin-1")
        assert answer.startswith("HTTP/1.1 413 ")
    assert state.uploads() == []


def test_endpoint_request_size_limit(tmp_path: Path, keypair: tuple[bytes, bytes]) -> None:
    state = make_state(tmp_path, keypair, request_max_bytes=5000)
    with SandboxServer(state) as srv, httpx.Client(base_url=srv.url) as c:
        auth = {"Authorization": f"Bearer {get_token(c, srv, keypair[0])}"}
        assert c.post("/endpoint", json=media_body(), headers=auth).status_code == 200
        big = media_body(FileContents=base64.b64encode(b"a" * 6000).decode())
        assert c.post("/endpoint", json=big, headers=auth).status_code == 413
    assert [a.status for a in state.attempts] == [200, 413]
    assert len(state.received()) == 1


# ---- fault injection --------------------------------------------------------


def test_fail_next_then_success_with_retry_after(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    state.set_faults(fail_next=[503, 429], retry_after="2")
    statuses = []
    for _ in range(3):
        response = client.post("/endpoint", json=media_body(), headers=auth)
        statuses.append(response.status_code)
        if response.status_code != 200:
            assert response.headers["Retry-After"] == "2"
            assert response.json()["Meta"]["Errors"][0]["Type"] == "transport"
    assert statuses == [503, 429, 200]
    assert state.faults.fail_next == []
    assert [(a.status, a.document_id) for a in state.attempts] == [
        (503, "doc-1"),
        (429, "doc-1"),
        (200, "doc-1"),
    ]
    assert len(state.received()) == 1


def test_fail_next_applies_to_uploads(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    state.set_faults(fail_next=[500])
    assert upload(client, auth, PDF).status_code == 500
    assert "Retry-After" not in upload(client, auth, PDF).headers
    assert len(state.uploads()) == 1


def test_outage(
    client: httpx.Client,
    server: SandboxServer,
    state: SandboxState,
    auth: dict[str, str],
    keypair: tuple[bytes, bytes],
) -> None:
    state.set_faults(outage=True, error_status=502, retry_after="30")
    assert client.post("/endpoint", json=media_body(), headers=auth).status_code == 502
    assert upload(client, auth, PDF).status_code == 502
    token = request_token(client, sign(keypair[0], claims_for(server)))
    assert token.status_code == 502
    assert token.headers["Retry-After"] == "30"
    state.set_faults(outage=False)
    assert client.post("/endpoint", json=media_body(), headers=auth).status_code == 200


def test_error_rate_is_seeded_and_deterministic(
    client: httpx.Client, state: SandboxState, auth: dict[str, str]
) -> None:
    def run() -> list[int]:
        state.set_faults(error_rate=0.5, seed=1234)
        return [
            client.post("/endpoint", json=media_body(), headers=auth).status_code for _ in range(12)
        ]

    first = run()
    assert set(first) == {200, 503}
    assert run() == first
    state.set_faults(error_rate=1.0)
    assert client.post("/endpoint", json=media_body(), headers=auth).status_code == 503


def test_latency_is_added(client: httpx.Client, state: SandboxState, auth: dict[str, str]) -> None:
    state.set_faults(latency_seconds=0.3)
    started = time.monotonic()
    response = client.post("/endpoint", json=media_body(), headers=auth)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_set_faults_validates(state: SandboxState) -> None:
    with pytest.raises(ValueError, match="unknown"):
        state.set_faults(nope=1)
    with pytest.raises(ValueError):
        state.set_faults(error_rate=2)
    with pytest.raises(ValueError):
        state.set_faults(fail_next=[200])
    assert state.faults == Faults()
    copy_of = state.faults
    copy_of.fail_next.append(503)
    assert state.faults.fail_next == []


# ---- control routes, concurrency and the server itself ----------------------


def test_control_routes(client: httpx.Client, state: SandboxState, auth: dict[str, str]) -> None:
    assert client.get("/_sandbox/health").json() == {"ok": True}
    updated = client.post("/_sandbox/faults", json={"fail_next": [503], "retry_after": 5})
    assert updated.status_code == 200
    assert updated.json()["fail_next"] == [503]
    assert updated.json()["retry_after"] == "5"
    assert state.faults.fail_next == [503]
    assert client.get("/_sandbox/faults").json()["fail_next"] == [503]
    assert client.post("/_sandbox/faults", json={"bogus": 1}).status_code == 400
    assert client.post("/_sandbox/faults", json=[1]).status_code == 400
    assert client.post("/endpoint", json=media_body(), headers=auth).status_code == 503
    assert client.post("/endpoint", json=media_body(), headers=auth).status_code == 200
    attempts = client.get("/_sandbox/attempts").json()
    assert [(a["path"], a["status"], a["document_id"]) for a in attempts] == [
        ("/endpoint", 503, "doc-1"),
        ("/endpoint", 200, "doc-1"),
    ]
    assert len(client.get("/_sandbox/received").json()) == 1


def test_concurrent_requests_are_all_recorded(
    server: SandboxServer, state: SandboxState, auth: dict[str, str]
) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            r = c.post("/endpoint", json=media_body(DocumentID=f"doc-{i}"), headers=auth)
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert statuses == [200] * 16
    ids = sorted(r.body["Media"]["DocumentID"] for r in state.received())
    assert ids == sorted(f"doc-{i}" for i in range(16))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com", ""])
def test_non_loopback_hosts_are_refused(state: SandboxState, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        SandboxServer(state, host=host)
    with pytest.raises(ValueError, match="loopback"):
        serve_forever(state, host=host, port=0)


def test_server_start_stop(state: SandboxState) -> None:
    srv = SandboxServer(state)
    with pytest.raises(RuntimeError):
        _ = srv.url
    srv.start()
    url = srv.url
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{url}/_sandbox/health").json() == {"ok": True}
    srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_sandbox/health", timeout=2)
    srv.stop()  # idempotent


def test_serve_forever_runs_until_sigterm(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib\n"
        "from daemon.sandbox import SandboxState, serve_forever\n"
        "state = SandboxState(blob_dir=pathlib.Path(sys.argv[1]))\n"
        "serve_forever(state, '127.0.0.1', 0, on_ready=lambda url: print(url, flush=True))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "blobs")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # blocks until on_ready fires
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/_sandbox/health", timeout=5).json() == {"ok": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
