"""The HTTP layer chartdrop's API clients share (Redox and FHIR): the client and
its TLS context, capped reads, status classification, bearer tokens.

Statuses are turned into the exception tree here, and only here:

    2xx with the API's answer            success (each client checks its answer's
                                         shape: :func:`not_the_api` otherwise)
    2xx with anything else               TransientDeliveryError, unknown outcome: a
                                         proxy or captive portal answered, the resend
                                         keeps the DocumentID
    3xx                                  TransientDeliveryError (redirects are never
                                         followed: the configured URL is wrong)
    401                                  renew the token once, then AuthError
    400, 403, 404, 413, other 4xx         PermanentDeliveryError
    408, 429, 5xx, connect/read errors   TransientDeliveryError (Retry-After honoured)

Nothing from a response body is put into an exception message: error texts
can echo patient data back. The one value taken from an error body is its log
ID (Redox's ``Meta.Logs[0].ID``), and only if it looks like an ID. Every
response body is read through :func:`read_capped` (at most
``MAX_RESPONSE_BYTES``) before anything parses it.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from daemon.config import Settings
from daemon.errors import (
    AuthError,
    ConfigError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from daemon.gate import GATE

RENEW_BEFORE_SECONDS = 60
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 1_000_000
# A Redox log ID is a UUID, a FHIR resource id [A-Za-z0-9.-]{1,64}: anything else is not kept.
REMOTE_ID = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
# Headers that describe the wire body, not the capped, decoded copy read_capped returns.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> None:
    """https everywhere; plain http only to this machine (the sandbox)."""
    scheme = urlsplit(url).scheme
    if scheme == "https" or (scheme == "http" and is_loopback(url)):
        return
    raise ConfigError(f"{what} must use https:// (plain http is allowed only for 127.0.0.1)")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Parse Retry-After: delta-seconds or an HTTP date. None if absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system's trusted roots, plus ``ca_bundle``'s CAs when given: the bundle
    adds to the roots, it never replaces them (a FHIR server's private CA must not
    break TLS to Redox). Verification is always on. A system without any roots
    (a bare container) falls back to certifi's."""
    context = ssl.create_default_context()
    if context.cert_store_stats()["x509_ca"] == 0:
        import certifi

        context.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def make_http_client(settings: Settings) -> httpx.Client:
    """The client for Redox (``[redox].ca_bundle``)."""
    return http_client(settings, settings.redox.ca_bundle)


def http_client(settings: Settings, ca_bundle: Path | None) -> httpx.Client:
    """An HTTP client with chartdrop's timeouts, trusting the system roots plus ``ca_bundle``."""
    return httpx.Client(
        timeout=httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.read_timeout_seconds,
            write=settings.write_timeout_seconds,
            pool=settings.pool_timeout_seconds,
        ),
        verify=tls_context(ca_bundle),
        follow_redirects=False,
        # Uncompressed answers: read_capped's limit then bounds what is received, too.
        headers={"User-Agent": "chartdrop", "Accept-Encoding": "identity"},
    )


def read_capped(
    http: httpx.Client, request: httpx.Request, limit: int = MAX_RESPONSE_BYTES
) -> httpx.Response:
    """Send ``request`` and read at most ``limit`` bytes of the answer's body.

    Returns a complete, closed response holding the body, or an empty body if
    the server sent (or announced) more than ``limit`` bytes: nothing after the
    limit is read, so an endless or huge answer cannot exhaust memory before
    parsing. Status and headers are kept. Redirects are never followed.
    Raises what ``httpx`` raises for connection and timeout errors. A wait for
    the network: the gate is free meanwhile (:mod:`daemon.gate`).
    """
    with GATE.network_wait():
        return _read_capped(http, request, limit)


def _read_capped(http: httpx.Client, request: httpx.Request, limit: int) -> httpx.Response:
    response = http.send(request, stream=True, follow_redirects=False)
    try:
        declared = response.headers.get("Content-Length", "")
        fits = declared.isdigit() and int(declared) <= limit
        if fits and "Content-Encoding" not in response.headers:
            # Framed by its Content-Length (h11 reads no byte past it) and not
            # decoded: reading it whole stays within the limit. The usual answer.
            response.read()
            return response
        chunks: list[bytes] = []
        size = 0
        if fits or not declared.isdigit():  # decoded or unframed: counted as it comes
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    chunks.clear()
                    break
                chunks.append(chunk)
    finally:
        response.close()
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(
        response.status_code, headers=headers, content=b"".join(chunks), request=request
    )


def remote_log_id(response: httpx.Response) -> str | None:
    """``Meta.Logs[0].ID`` of a Redox answer (success or error), if it looks like an ID."""
    return log_id_of(json_object(response))


def log_id_of(answer: dict[str, Any]) -> str | None:
    """``Meta.Logs[0].ID`` of a parsed Redox answer, if it looks like an ID."""
    meta = answer.get("Meta")
    logs = meta.get("Logs") if isinstance(meta, dict) else None
    first = logs[0] if isinstance(logs, list) and logs else None
    log_id = first.get("ID") if isinstance(first, dict) else None
    return log_id if isinstance(log_id, str) and REMOTE_ID.match(log_id) else None


def classify(response: httpx.Response, what: str) -> None:
    """Raise the right error for a non-2xx response."""
    status = response.status_code
    if 200 <= status < 300:
        return
    remote_id = remote_log_id(response)
    if 300 <= status < 400:
        raise TransientDeliveryError(
            f"{what} answered with a redirect (HTTP {status}), which chartdrop does not "
            "follow: check the configured URL",
            status=status,
        )
    if status in TRANSIENT_STATUSES or status >= 500:
        raise TransientDeliveryError(
            f"{what} answered HTTP {status}",
            status=status,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            remote_id=remote_id,
        )
    if status == 401:
        raise AuthError(f"{what} refused the access token (HTTP 401)", status=status)
    raise PermanentDeliveryError(
        f"{what} refused the request (HTTP {status})", status=status, remote_id=remote_id
    )


def not_the_api(what: str, response: httpx.Response) -> TransientDeliveryError:
    """A 2xx whose body is not what the API answers (an HTML page from a proxy or a
    captive portal, an empty or cut body): whether the request reached the API is
    unknown, so it is retried with the same DocumentID and counts as a failure."""
    return TransientDeliveryError(
        f"{what} answered HTTP {response.status_code} without the API's answer "
        "(a proxy or captive portal in the way?)",
        status=response.status_code,
        unknown_outcome=True,
    )


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object, or {} (bodies come capped from :func:`read_capped`)."""
    if len(response.content) > MAX_RESPONSE_BYTES:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class SendResult:
    status: int
    log_id: str | None  # Redox's Meta.Logs[0].ID, or the FHIR resource id


def expiry_from_iso(value: object, *, default_ttl: float = 300.0) -> float:
    """A monotonic deadline from an ISO 8601 expiry time (legacy auth's ``expires``)."""
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return time.monotonic() + (when - datetime.now(UTC)).total_seconds()
    return time.monotonic() + default_ttl


def expiry_from_seconds(value: object, *, default_ttl: float = 300.0) -> float:
    """A monotonic deadline from OAuth's ``expires_in``."""
    ttl = float(value) if isinstance(value, int | float) and value > 0 else default_ttl
    return time.monotonic() + ttl


class BearerClient:
    """An API client holding one bearer token for all worker threads: fetched on
    first use, renewed ``RENEW_BEFORE_SECONDS`` before it expires, and renewed
    once more when a request answers 401. Subclasses say how to get a token."""

    service = "the API"

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self._lock = GATE.lock()  # held while a new token is fetched (daemon.gate)
        self._token: str | None = None
        self._expires_at = 0.0  # monotonic

    def _fetch_token(self) -> tuple[str, float]:
        """A new token and its monotonic expiry; AuthError when refused or unreachable."""
        raise NotImplementedError

    def _token_request(self, what: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """POST to a token endpoint: the JSON answer, or AuthError (never its body)."""
        try:
            response = read_capped(self.http, self.http.build_request("POST", url, **kwargs))
        except httpx.HTTPError as exc:
            raise AuthError(f"{what} unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            status = response.status_code
            down = status in TRANSIENT_STATUSES or status >= 500
            raise AuthError(
                f"{what} is unavailable (HTTP {status})"
                if down
                else f"{what} refused the credentials (HTTP {status})",
                status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        return json_object(response)

    def token(self) -> str:
        with self._lock:  # held while a new token is fetched
            if self._token is None or time.monotonic() > self._expires_at - RENEW_BEFORE_SECONDS:
                self._token, self._expires_at = self._fetch_token()
            return self._token

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def check_auth(self) -> None:
        """Authenticate now (``check --online``); raises AuthError."""
        with self._lock:
            self._token, self._expires_at = self._fetch_token()

    def _headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def _post(self, what: str, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        """POST with a bearer token; on 401 renew the token once and try again."""
        rewind = kwargs.pop("rewind", None)
        extra_headers = kwargs.pop("headers", {})
        http: httpx.Client = kwargs.pop("client", None) or self.http  # a per-service TLS trust
        for attempt in (1, 2):
            token = self.token()
            try:
                request = http.build_request(
                    "POST", url, headers=self._headers(token) | extra_headers, **kwargs
                )
                response = read_capped(http, request)
            except httpx.TimeoutException as exc:
                sent = not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
                raise TransientDeliveryError(
                    f"{what} timed out ({type(exc).__name__})", unknown_outcome=sent
                ) from None
            except httpx.HTTPError as exc:
                unknown = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)
                raise TransientDeliveryError(
                    f"{what} failed ({type(exc).__name__})", unknown_outcome=unknown
                ) from None
            if response.status_code == 401 and attempt == 1:
                self.invalidate(token)
                if rewind is not None:
                    rewind()
                continue
            return response
        return response


def read_secret(path: Path | None, what: str) -> str:
    """A secret from its file (trailing newline dropped); AuthError names the key, not the value."""
    if path is None:
        raise AuthError(f"no {what} is configured")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise AuthError(f"cannot read the {what} ({reason})") from None
    if not value:
        raise AuthError(f"the {what} is empty")
    return value


__all__ = [
    "MAX_RESPONSE_BYTES",
    "REMOTE_ID",
    "BearerClient",
    "SendResult",
    "check_url",
    "classify",
    "expiry_from_iso",
    "expiry_from_seconds",
    "http_client",
    "is_loopback",
    "json_object",
    "log_id_of",
    "make_http_client",
    "not_the_api",
    "read_capped",
    "read_secret",
    "remote_log_id",
    "retry_after_seconds",
    "tls_context",
]
