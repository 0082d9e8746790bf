"""HTTP helpers shared by the sandbox's Redox and FHIR routes.

Nothing here logs more than the type of an unexpected exception: bodies,
headers, tokens and file names are PHI or secrets.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from daemon.sandbox.state import InjectedFault, SandboxState

__all__ = [
    "CAPTIVE_PORTAL",
    "CutResponse",
    "Handler",
    "declared_length",
    "guarded",
    "inject_fault",
    "outage_response",
    "read_body",
    "read_json",
]

log = logging.getLogger("daemon.sandbox.app")

Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler, error_body: dict[str, Any], media_type: str | None = None) -> Handler:
    """Answer 500 with ``error_body`` on an unexpected exception, logging only its
    type (never its message, which may quote a request)."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - never let a traceback (maybe PHI) reach a log
            log.error(
                "sandbox: unhandled %s on %s %s",
                type(exc).__name__,
                request.method,
                request.url.path,
            )
            return JSONResponse(error_body, 500, media_type=media_type)

    return wrapper


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length``, or None when absent or malformed."""
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None (without reading it all) if it is over ``limit``."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def read_json(raw: bytes | None) -> object:
    """``raw`` parsed as JSON, or None when it is absent or not JSON."""
    if raw is None:
        return None
    try:
        parsed: object = json.loads(raw)
    except ValueError:
        return None
    return parsed


async def inject_fault(state: SandboxState) -> InjectedFault | None:
    """Wait the configured latency, then decide whether this sending request fails."""
    latency = state.latency()
    state.sending_started()
    try:
        if latency > 0:
            await asyncio.sleep(latency)
    finally:
        state.sending_ended()
    return state.next_fault()


def outage_response(state: SandboxState, body: dict[str, Any]) -> Response | None:
    """During an injected outage, the token endpoints answer ``body`` with the
    outage's status (and Retry-After); otherwise None."""
    fault = state.outage_fault()
    if fault is None:
        return None
    headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
    return JSONResponse(body, fault.status, headers=headers)


CAPTIVE_PORTAL = (
    "<!DOCTYPE html><html><head><title>Sign in to the network</title></head>"
    "<body><h1>Welcome</h1><p>Please accept the terms to continue.</p></body></html>"
)


def captive_portal() -> Response:
    """The ``html`` fault: 200 with a web page, as a proxy or captive portal answers."""
    return HTMLResponse(CAPTIVE_PORTAL, 200)


class CutResponse(Response):
    """The ``reset`` fault: the headers and half of ``real``'s body are sent, then
    the answer stops and the connection is closed (the request was processed)."""

    def __init__(self, real: Response) -> None:
        super().__init__(status_code=real.status_code)
        self.real = real

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytes(self.real.body)
        await send(
            {
                "type": "http.response.start",
                "status": self.real.status_code,
                "headers": self.real.raw_headers,
            }
        )
        half = body[: len(body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        # Returning with more_body still set: the server closes the connection.
