"""The sandbox's Starlette app: a local, Redox-compatible HTTP API.

Routes (see :func:`create_app`):

* ``POST /v2/auth/token`` - OAuth 2.0 client credentials with a signed-JWT assertion.
* ``POST /auth/authenticate`` - legacy API key + secret (``{"apiKey", "secret"}``).
* ``POST /auth/refreshToken`` - legacy renewal (``{"apiKey", "refreshToken"}``).
* ``POST /endpoint`` - a Redox data-model request; 200 with ``Meta.Logs`` or 400
  with ``Meta.Errors``.
* ``POST /upload`` - multipart ``file``; 201 ``{"URI": ...}``, 413 over the limit.
* ``GET /blob/{blob_id}`` - an uploaded file's bytes.
* ``/fhir/...`` - a FHIR R4 ``Media`` endpoint and its token URL (:mod:`daemon.sandbox.fhir`).
* ``/_sandbox/...`` - unauthenticated test controls (the sandbox binds loopback only).

Nothing is logged but the type of an unexpected exception: bodies, headers,
tokens and file names are PHI or secrets.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from hmac import compare_digest
from typing import IO, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from daemon.sandbox.auth import (
    ASSERTION_TYPE,
    InvalidAssertionError,
    bearer_owner,
    verify_client_assertion,
)
from daemon.sandbox.faults import HTML, RESET
from daemon.sandbox.fhir import fhir_routes
from daemon.sandbox.http import (
    CutResponse,
    Handler,
    captive_portal,
    declared_length,
    guarded,
    inject_fault,
    outage_response,
    read_body,
    read_json,
)
from daemon.sandbox.state import ANY_TOKEN, InjectedFault, SandboxState, write_private_file
from daemon.sandbox.validation import document_id_of, validate_body

__all__ = ["create_app"]

MULTIPART_OVERHEAD = 64 * 1024
"""Bytes allowed on top of ``upload_max_bytes`` for multipart framing."""

_RECORDED_HEADERS = ("content-type", "redox-source-id")


class _BodyTooLargeError(Exception):
    """The request body went over the size allowed for its route."""


def _errors(
    texts: list[str],
    *,
    error_type: str = "request",
    module: str = "Request",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Redox-style ``{"Meta": {..., "Errors": [...]}}`` body."""
    errors = [
        {"ID": i, "Text": text, "Type": error_type, "Module": module}
        for i, text in enumerate(texts)
    ]
    return {"Meta": {**(meta or {}), "Errors": errors}}


def _logs() -> list[dict[str, str]]:
    """A Redox-style ``Meta.Logs`` entry: real Redox answers errors with log IDs too."""
    return [{"ID": str(uuid.uuid4()), "AttemptID": str(uuid.uuid4())}]


def _echoed(response: Response, raw: bytes | None) -> Response:
    """An error answer that also quotes the request body (the ``echo_body`` fault)."""
    if raw is None or response.status_code < 400:
        return response
    data = json.loads(bytes(response.body))
    text = raw.decode("utf-8", "replace")
    data["Meta"].setdefault("Errors", []).extend(
        [
            {"ID": 98, "Text": f"Could not process: {text}", "Type": "echo", "Module": "Sandbox"},
            {"ID": 99, "Text": base64.b64encode(raw).decode(), "Type": "echo", "Module": "Sandbox"},
        ]
    )
    headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
    return JSONResponse(data, response.status_code, headers=headers)


def _unauthorized() -> JSONResponse:
    return JSONResponse(_errors(["Unauthorized"], error_type="auth", module="Auth"), 401)


def _injected(fault: InjectedFault) -> JSONResponse:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    text = f"Sandbox injected fault: HTTP {fault.status}"
    body = _errors([text], error_type="transport", module="Sandbox", meta={"Logs": _logs()})
    return JSONResponse(body, fault.status, headers=headers)


def _guarded(handler: Handler) -> Handler:
    """Answer 500 on an unexpected exception, logging only its type (never its message)."""
    return guarded(handler, _errors(["Internal sandbox error"], module="Sandbox"))


def _limited_receive(request: Request, limit: int) -> Callable[[], Awaitable[Message]]:
    """A receive channel that raises :class:`_BodyTooLargeError` past ``limit`` body bytes."""
    seen = 0
    receive = request.receive

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLargeError
        return message

    return limited


def _copy_to_blob(source: IO[bytes], fd: int, limit: int) -> int | None:
    """Copy an upload into an open blob file; the size, or None past ``limit``."""
    size = 0
    with os.fdopen(fd, "wb") as out:
        source.seek(0)
        while chunk := source.read(1024 * 1024):
            size += len(chunk)
            if size > limit:
                return None
            out.write(chunk)
    return size


def create_app(state: SandboxState) -> Starlette:
    """Build the sandbox app over ``state``."""

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    # ---- authentication ---------------------------------------------------

    async def token(request: Request) -> Response:
        state.count_token_request()
        outage = outage_response(state, {"error": "temporarily_unavailable"})
        if outage is not None:
            return outage
        try:
            async with request.form(max_files=0, max_fields=20, max_part_size=64 * 1024) as form:
                grant_type = form.get("grant_type")
                assertion_type = form.get("client_assertion_type")
                assertion = form.get("client_assertion")
        except HTTPException:
            return JSONResponse({"error": "invalid_request"}, 400)
        if grant_type != "client_credentials" or assertion_type != ASSERTION_TYPE:
            return JSONResponse({"error": "invalid_request"}, 400)
        if not isinstance(assertion, str) or not assertion:
            return JSONResponse({"error": "invalid_request"}, 400)
        audience = str(request.url.replace(query="", fragment=""))
        try:
            client_id = verify_client_assertion(state, assertion, audience)
        except InvalidAssertionError as exc:
            body = {"error": "invalid_client", "error_description": exc.description}
            return JSONResponse(body, 401)
        return JSONResponse(
            {
                "access_token": state.issue_token(client_id),
                "token_type": "bearer",
                "expires_in": state.token_ttl_seconds,
                "scope": "*",
            }
        )

    async def legacy_authenticate(request: Request) -> Response:
        state.count_token_request()
        outage = outage_response(state, _errors(["Service unavailable"]))
        if outage is not None:
            return outage
        body = read_json(await read_body(request, 64 * 1024))
        api_key = body.get("apiKey") if isinstance(body, dict) else None
        secret = body.get("secret") if isinstance(body, dict) else None
        if not isinstance(api_key, str) or not isinstance(secret, str):
            return JSONResponse(_errors(["apiKey and secret are required"]), 400)
        expected = state.legacy_secret(api_key)
        if expected is None or not compare_digest(expected.encode(), secret.encode()):
            return _unauthorized()
        return _legacy_tokens(api_key)

    async def legacy_refresh(request: Request) -> Response:
        state.count_refresh_request()
        outage = outage_response(state, _errors(["Service unavailable"]))
        if outage is not None:
            return outage
        body = read_json(await read_body(request, 64 * 1024))
        api_key = body.get("apiKey") if isinstance(body, dict) else None
        refresh = body.get("refreshToken") if isinstance(body, dict) else None
        if not isinstance(api_key, str) or not isinstance(refresh, str):
            return JSONResponse(_errors(["apiKey and refreshToken are required"]), 400)
        if not state.redeem_refresh_token(api_key, refresh):
            return _unauthorized()
        return _legacy_tokens(api_key)

    def _legacy_tokens(api_key: str) -> Response:
        """A new access token and a new (rotated) refresh token for a legacy key."""
        expires = datetime.now(UTC) + timedelta(seconds=state.token_ttl_seconds)
        return JSONResponse(
            {
                "accessToken": state.issue_token(api_key),
                "expires": expires.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "refreshToken": state.issue_refresh_token(api_key),
            }
        )

    # ---- data model requests ------------------------------------------------

    async def endpoint(request: Request) -> Response:
        raw = await read_body(request, state.request_max_bytes)
        parsed = read_json(raw)
        response = await _endpoint(request, raw, parsed)
        state.record_attempt("/endpoint", response.status_code, document_id_of(parsed))
        return _echoed(response, raw) if state.echo_body() else response

    async def _endpoint(request: Request, raw: bytes | None, parsed: object) -> Response:
        owner = bearer_owner(state, request)
        if owner is None:
            return _unauthorized()
        fault = await inject_fault(state)
        if fault is not None and fault.kind == HTML:
            return captive_portal()
        if fault is not None and fault.kind != RESET:
            return _injected(fault)
        response = _process(request, raw, parsed, owner)
        if fault is None:
            return response
        if response.status_code == 200:
            state.mark_cut(json.loads(bytes(response.body))["Meta"]["Logs"][0]["ID"])
        return CutResponse(response)

    def _process(request: Request, raw: bytes | None, parsed: object, owner: str) -> Response:
        if raw is None:
            return JSONResponse(_errors(["Request body too large"]), 413)
        if not isinstance(parsed, dict):
            return JSONResponse(_errors(["Request body must be a JSON object"]), 400)

        blob_prefix = f"{base_url(request)}/blob/"

        def resolve(uri: str) -> bool:
            blob_id = uri[len(blob_prefix) :]
            return state.blob_path(blob_id) is not None and state.blob_owner(blob_id) == owner

        dm, et, problems = validate_body(parsed, blob_prefix=blob_prefix, resolve_blob=resolve)
        meta = {"DataModel": dm, "EventType": et}
        if problems:
            return JSONResponse(_errors(problems, meta={**meta, "Logs": _logs()}), 400)
        headers = {h: request.headers[h] for h in _RECORDED_HEADERS if h in request.headers}
        log_id = state.record_received(parsed, headers)
        logs = [{"ID": log_id, "AttemptID": str(uuid.uuid4())}]
        return JSONResponse({"Meta": {**meta, "Logs": logs}})

    # ---- blobs --------------------------------------------------------------

    async def upload(request: Request) -> Response:
        response = await _upload(request)
        state.record_attempt("/upload", response.status_code, None)
        return response

    async def _upload(request: Request) -> Response:
        owner = bearer_owner(state, request, ANY_TOKEN)
        if owner is None:
            return _unauthorized()
        fault = await inject_fault(state)
        if fault is not None and fault.kind == HTML:
            return captive_portal()
        if fault is not None and fault.kind != RESET:
            return _injected(fault)
        response = await _receive_upload(request, owner)
        return CutResponse(response) if fault is not None else response

    async def _receive_upload(request: Request, owner: str) -> Response:
        too_large = JSONResponse(_errors(["File too large"], module="Upload"), 413)
        body_limit = state.upload_max_bytes + MULTIPART_OVERHEAD
        declared = declared_length(request)
        if declared is not None and declared > body_limit:
            return too_large
        limited = Request(request.scope, _limited_receive(request, body_limit))
        try:
            # max_part_size bounds the non-file fields only; the file part is
            # bounded by the counting receive channel and the size check below.
            async with limited.form(max_files=1, max_fields=10, max_part_size=64 * 1024) as form:
                file = form.get("file")
                if not isinstance(file, UploadFile):
                    return JSONResponse(_errors(["Multipart field 'file' is required"]), 400)
                return await _store(file, owner, base_url(request), too_large)
        except _BodyTooLargeError:
            return too_large
        except HTTPException:
            return JSONResponse(_errors(["Malformed multipart/form-data body"]), 400)

    async def _store(file: UploadFile, owner: str, base: str, too_large: Response) -> Response:
        """Write an upload under ``blob_dir`` (mode 0600) and answer its URI."""
        if file.size is not None and file.size > state.upload_max_bytes:
            return too_large
        blob_id, path = state.new_blob_path()
        fd = write_private_file(path)
        try:
            size = await run_in_threadpool(_copy_to_blob, file.file, fd, state.upload_max_bytes)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size is None:
            path.unlink(missing_ok=True)
            return too_large
        state.add_blob(blob_id, owner, size)
        return JSONResponse({"URI": f"{base}/blob/{blob_id}"}, 201)

    async def get_blob(request: Request) -> Response:
        owner = bearer_owner(state, request, ANY_TOKEN)
        if owner is None:
            return _unauthorized()
        blob_id = request.path_params["blob_id"]
        path = state.blob_path(blob_id)
        if path is None or state.blob_owner(blob_id) != owner:
            return JSONResponse(_errors(["Not found"]), 404)
        return FileResponse(path, media_type="application/octet-stream")

    # ---- test controls ------------------------------------------------------

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def received(request: Request) -> Response:
        items = [{"log_id": r.log_id, "body": r.body, "at": r.at} for r in state.received()]
        return JSONResponse(items)

    async def attempts(request: Request) -> Response:
        items = [
            {"path": a.path, "status": a.status, "document_id": a.document_id, "at": a.at}
            for a in state.attempts
        ]
        return JSONResponse(items)

    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(state.faults.to_dict())
        raw = await read_body(request, 64 * 1024)
        try:
            settings = json.loads(raw) if raw is not None else None
        except ValueError:
            settings = None
        if not isinstance(settings, dict):
            return JSONResponse({"error": "body must be a JSON object of fault settings"}, 400)
        try:
            updated = state.set_faults(**settings)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(updated.to_dict())

    routes = [
        Route("/v2/auth/token", _guarded(token), methods=["POST"]),
        Route("/auth/authenticate", _guarded(legacy_authenticate), methods=["POST"]),
        Route("/auth/refreshToken", _guarded(legacy_refresh), methods=["POST"]),
        Route("/endpoint", _guarded(endpoint), methods=["POST"]),
        Route("/upload", _guarded(upload), methods=["POST"]),
        Route("/blob/{blob_id}", _guarded(get_blob), methods=["GET"]),
        Route("/_sandbox/health", _guarded(health), methods=["GET"]),
        Route("/_sandbox/received", _guarded(received), methods=["GET"]),
        Route("/_sandbox/attempts", _guarded(attempts), methods=["GET"]),
        Route("/_sandbox/faults", _guarded(faults), methods=["GET", "POST"]),
        *fhir_routes(state),
    ]
    return Starlette(routes=routes)
