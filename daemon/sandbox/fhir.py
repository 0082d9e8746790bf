"""The sandbox's FHIR R4 routes: a client-credentials token URL and a Media endpoint.

* ``POST /fhir/oauth/token`` - OAuth 2.0 ``client_credentials`` (RFC 6749 §4.4),
  form-encoded; the client authenticates with ``client_id`` / ``client_secret``
  in the form or with HTTP Basic (§2.3.1), never both. 200
  ``{"access_token", "token_type": "Bearer", "expires_in"}``; 401
  ``{"error": "invalid_client"}``; 400 ``{"error": "unsupported_grant_type"}``
  or ``{"error": "invalid_request"}``.
* ``POST /fhir/r4/Media`` - create a Media (see
  :mod:`daemon.sandbox.fhir_validation`), conditionally with
  ``If-None-Exist: identifier=<system>|<value>``: 201 with the stored resource
  and ``Location: <base>/fhir/r4/Media/<id>/_history/1``; 200 with the existing
  resource when one carries that identifier; 400/422 with an OperationOutcome.
* ``GET /fhir/r4/Media/{id}`` (and ``/_history/1``) - a stored resource.

Only bearer tokens from ``/fhir/oauth/token`` are accepted here (and they are
refused on ``/endpoint``). ``POST /fhir/r4/Media`` is a sending route for
fault injection, like ``/endpoint``; the reads are not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from hmac import compare_digest
from typing import Any
from urllib.parse import unquote_plus

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.sandbox.auth import bearer_owner
from daemon.sandbox.faults import HTML, RESET
from daemon.sandbox.fhir_store import carries_identifier
from daemon.sandbox.fhir_validation import (
    Issue,
    check_content,
    check_log_cdata,
    identifier_value_of,
    parse_if_none_exist,
    validate_media,
)
from daemon.sandbox.http import (
    CutResponse,
    Handler,
    captive_portal,
    guarded,
    inject_fault,
    outage_response,
    read_body,
    read_json,
)
from daemon.sandbox.state import FHIR_TOKENS, InjectedFault, SandboxState

__all__ = ["FHIR_BASE_PATH", "FHIR_JSON", "FHIR_TOKEN_PATH", "fhir_routes"]

FHIR_BASE_PATH = "/fhir/r4"
FHIR_TOKEN_PATH = "/fhir/oauth/token"  # noqa: S105 - a URL path, not a secret
FHIR_JSON = "application/fhir+json"
MEDIA_PATH = f"{FHIR_BASE_PATH}/Media"
_ACCEPTED_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _outcome(issues: list[Issue]) -> dict[str, Any]:
    """A FHIR R4 ``OperationOutcome`` with one error issue per problem."""
    entries = []
    for issue in issues:
        entry: dict[str, Any] = {
            "severity": "error",
            "code": issue.code,
            "diagnostics": issue.diagnostics,
        }
        if issue.expression:
            entry["expression"] = [issue.expression]
        entries.append(entry)
    return {"resourceType": "OperationOutcome", "issue": entries}


def _fhir(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status, headers=headers, media_type=FHIR_JSON)


def _problem(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> Response:
    return _fhir(_outcome([Issue(code, None, text)]), status, headers)


def _unauthorized() -> Response:
    text = "Unauthorized: a bearer token from /fhir/oauth/token is required"
    return _problem(401, "login", text, {"WWW-Authenticate": "Bearer"})


def _injected(fault: InjectedFault) -> Response:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    text = f"Sandbox injected fault: HTTP {fault.status}"
    return _problem(fault.status, "transient", text, headers)


@dataclass(frozen=True)
class _ClientAuth:
    client_id: str | None
    secret: str | None
    basic: bool


def _client_auth(authorization: str | None, form: dict[str, str]) -> _ClientAuth | None:
    """The client's credentials from HTTP Basic (RFC 6749 §2.3.1: each part
    form-urlencoded, then base64) or from the form; None when both are used."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return _ClientAuth(form.get("client_id"), form.get("client_secret"), basic=False)
    if "client_secret" in form:
        return None  # "MUST NOT use more than one authentication method"
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return _ClientAuth(None, None, basic=True)
    raw_id, sep, raw_secret = decoded.partition(":")
    if not sep:
        return _ClientAuth(None, None, basic=True)
    client_id = unquote_plus(raw_id)
    if form.get("client_id", client_id) != client_id:
        return None
    return _ClientAuth(client_id, unquote_plus(raw_secret), basic=True)


def fhir_routes(state: SandboxState) -> list[Route]:
    """The FHIR routes over ``state``, for :func:`daemon.sandbox.app.create_app`."""

    async def token(request: Request) -> Response:
        state.count_fhir_token_request()
        outage = outage_response(state, {"error": "temporarily_unavailable"})
        if outage is not None:
            return outage
        invalid_request = JSONResponse({"error": "invalid_request"}, 400, headers=_NO_STORE)
        try:
            async with request.form(max_files=0, max_fields=20, max_part_size=64 * 1024) as form:
                if any(len(form.getlist(key)) > 1 for key in form):
                    return invalid_request  # RFC 6749 §3.2: no parameter twice
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
        except HTTPException:
            return invalid_request
        grant_type = fields.get("grant_type")
        if grant_type is None:
            return invalid_request
        if grant_type != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400, headers=_NO_STORE)
        auth = _client_auth(request.headers.get("authorization"), fields)
        if auth is None:
            return invalid_request
        expected = state.fhir_client_secret(auth.client_id) if auth.client_id else None
        if (
            expected is None
            or auth.secret is None
            or not compare_digest(expected.encode(), auth.secret.encode())
        ):
            headers = dict(_NO_STORE)
            if auth.basic:
                headers["WWW-Authenticate"] = 'Basic realm="chartdrop-sandbox-fhir"'
            return JSONResponse({"error": "invalid_client"}, 401, headers=headers)
        body = {
            "access_token": state.issue_token(f"fhir:{auth.client_id}", kind="fhir"),
            "token_type": "Bearer",
            "expires_in": state.token_ttl_seconds,
        }
        return JSONResponse(body, headers=_NO_STORE)

    async def create_media(request: Request) -> Response:
        raw = await read_body(request, state.request_max_bytes)
        parsed = read_json(raw)
        response = await _create_media(request, raw, parsed)
        state.record_attempt(MEDIA_PATH, response.status_code, identifier_value_of(parsed))
        return response

    async def _create_media(request: Request, raw: bytes | None, parsed: object) -> Response:
        owner = bearer_owner(state, request, FHIR_TOKENS)
        if owner is None:
            return _unauthorized()
        fault = await inject_fault(state)
        if fault is not None and fault.kind == HTML:
            return captive_portal()
        if fault is not None and fault.kind != RESET:
            return _injected(fault)
        response = await _store_media(request, raw, parsed, owner)
        return CutResponse(response) if fault is not None else response

    async def _store_media(
        request: Request, raw: bytes | None, parsed: object, owner: str
    ) -> Response:
        if raw is None:
            return _problem(413, "too-long", "Request body too large")
        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if mime not in _ACCEPTED_TYPES:
            text = "Content-Type: must be application/fhir+json (or application/json)"
            return _problem(415, "not-supported", text)
        issues = validate_media(parsed)
        log_issue = check_log_cdata(
            request.headers.get("log-cdata"), request.headers.get("log-cdata-format")
        )
        if log_issue is not None:
            issues.append(log_issue)
        condition: tuple[str, str] | None = None
        header = request.headers.get("if-none-exist")
        if header is not None:
            condition = parse_if_none_exist(header)
            if condition is None:
                text = "If-None-Exist: only identifier=<system>|<value> is supported"
                issues.append(Issue("not-supported", None, text))
            elif isinstance(parsed, dict) and not carries_identifier(parsed, *condition):
                text = "If-None-Exist: names an identifier the resource does not carry"
                issues.append(Issue("invalid", None, text))
        if issues or not isinstance(parsed, dict):
            return _fhir(_outcome(issues), 400)

        base = str(request.base_url).rstrip("/")
        blob_prefix = f"{base}/blob/"

        def blob_digest(url: str) -> tuple[int, bytes] | None:
            blob_id = url[len(blob_prefix) :]
            path = state.blob_path(blob_id)
            if path is None or state.blob_owner(blob_id) != owner:
                return None
            sha1, size = hashlib.sha1(usedforsecurity=False), 0  # Attachment.hash
            with path.open("rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    sha1.update(chunk)
                    size += len(chunk)
            return size, sha1.digest()

        problems = await run_in_threadpool(
            check_content, parsed, blob_prefix=blob_prefix, blob_digest=blob_digest
        )
        if problems:
            return _fhir(_outcome(problems), 422)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        status, resource = state.accept_fhir_media(parsed, headers, condition)
        if resource is None:
            text = "If-None-Exist: more than one Media carries this identifier"
            return _problem(412, "multiple-matches", text)
        location = f"{base}{MEDIA_PATH}/{resource['id']}/_history/1"
        return _fhir(resource, status, {"Location": location, "ETag": 'W/"1"'})

    async def read_media(request: Request) -> Response:
        if bearer_owner(state, request, FHIR_TOKENS) is None:
            return _unauthorized()
        resource = state.fhir_resource(request.path_params["resource_id"])
        if resource is None or request.path_params.get("version_id", "1") != "1":
            return _problem(404, "not-found", "No Media with this id (and version)")
        return _fhir(resource, 200, {"ETag": 'W/"1"'})

    def wrap(handler: Handler) -> Handler:
        error = _outcome([Issue("exception", None, "Internal sandbox error")])
        return guarded(handler, error, media_type=FHIR_JSON)

    return [
        Route(FHIR_TOKEN_PATH, wrap(token), methods=["POST"]),
        Route(MEDIA_PATH, wrap(create_media), methods=["POST"]),
        Route(f"{MEDIA_PATH}/{{resource_id}}", wrap(read_media), methods=["GET"]),
        Route(
            f"{MEDIA_PATH}/{{resource_id}}/_history/{{version_id}}",
            wrap(read_media),
            methods=["GET"],
        ),
    ]
