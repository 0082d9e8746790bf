"""The Redox Data Model API client: signed-JWT (or legacy key/secret) auth, blob
upload, send. The HTTP layer under it (TLS, capped reads, status
classification, bearer tokens) is :mod:`daemon.http`, shared with FHIR.

A 2xx is success only with Redox's answer: a JSON object with ``Meta`` and a
log ID (anything else: :func:`daemon.http.not_the_api`, an unknown outcome).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import jwt

from daemon import killpoints
from daemon.config import RedoxSettings
from daemon.errors import (
    AuthError,
    TransientDeliveryError,
)
from daemon.http import (
    BearerClient,
    SendResult,
    check_url,
    classify,
    expiry_from_iso,
    expiry_from_seconds,
    json_object,
    log_id_of,
    not_the_api,
    read_secret,
)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class Embedded:
    """A file's base64 text (ASCII bytes) to go where a body holds ``marker``."""

    marker: str
    base64: bytes


def encode_body(body: dict[str, Any], file: Embedded | None = None) -> bytes:
    """The JSON bytes httpx's ``json=`` would send (UTF-8, compact, no NaN).

    With ``file``, its base64 bytes replace the one string value ``file.marker``
    *after* encoding: the file's text is never decoded to ``str``, scanned for
    escapes or encoded again (base64 needs no JSON escaping)."""
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    if file is None:
        return raw
    head, found, tail = raw.partition(json.dumps(file.marker).encode())
    if not found or file.marker.encode() in tail:
        raise ValueError("the body must hold the file marker exactly once")
    return b"".join((head, b'"', file.base64, b'"', tail))


class RedoxClient(BearerClient):
    """Thread-safe: workers share one client, one token and one connection pool.

    ``auth = "jwt"``: a signed client assertion at ``/v2/auth/token``.
    ``auth = "legacy"``: API key and secret at ``/auth/authenticate``; the
    access token is renewed with ``/auth/refreshToken`` and, if that is
    refused, by authenticating again.
    """

    service = "Redox"

    def __init__(self, settings: RedoxSettings, http: httpx.Client) -> None:
        for url, what in (
            (settings.api_url, "redox.api_url"),
            (settings.upload_url, "redox.upload_url"),
        ):
            check_url(url, what)
        super().__init__(http)
        self.settings = settings
        self._key: bytes | None = None
        self._refresh_token: str | None = None
        self._endpoint: tuple[RedoxSettings, httpx.URL] | None = None

    def _endpoint_url(self) -> httpx.URL:
        """``{api_url}/endpoint``, parsed once per settings (httpx parses a ``str``
        URL on every request: ≈50 µs of the send)."""
        cached = self._endpoint
        if cached is None or cached[0] is not self.settings:
            url = httpx.URL(f"{self.settings.api_url}/endpoint")
            cached = self._endpoint = (self.settings, url)
        return cached[1]

    # -- auth -------------------------------------------------------------
    def _private_key(self) -> bytes:
        if self._key is None:
            path: Path = self.settings.private_key_file
            try:
                self._key = path.read_bytes()
            except OSError as exc:
                raise AuthError(
                    f"cannot read the Redox private key file ({exc.strerror})"
                ) from None
        return self._key

    def client_assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.settings.client_id,
            "sub": self.settings.client_id,
            "aud": self.settings.token_url,
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        try:
            return jwt.encode(
                claims,
                self._private_key(),
                algorithm="RS384",
                headers={"kid": self.settings.key_id},
            )
        except (ValueError, TypeError, jwt.PyJWTError):
            raise AuthError("the Redox private key file is not a usable RSA private key") from None

    def _fetch_token(self) -> tuple[str, float]:
        if self.settings.auth == "legacy":
            return self._legacy_token()
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        data = self._token_request("Redox token endpoint", self.settings.token_url, data=form)
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError("Redox token endpoint answered without an access_token", status=200)
        return token, expiry_from_seconds(data.get("expires_in"))

    def _legacy_token(self) -> tuple[str, float]:
        api_url, api_key = self.settings.api_url, self.settings.api_key
        if self._refresh_token is not None:
            refresh = {"apiKey": api_key, "refreshToken": self._refresh_token}
            self._refresh_token = None
            try:
                data = self._token_request(
                    "Redox refreshToken", f"{api_url}/auth/refreshToken", json=refresh
                )
                return self._legacy_answer(data)
            except AuthError:
                pass  # an expired or revoked refresh token: authenticate again
        secret = read_secret(self.settings.secret_file, "Redox legacy secret (secret_file)")
        data = self._token_request(
            "Redox authenticate",
            f"{api_url}/auth/authenticate",
            json={"apiKey": api_key, "secret": secret},
        )
        return self._legacy_answer(data)

    def _legacy_answer(self, data: dict[str, Any]) -> tuple[str, float]:
        token = data.get("accessToken")
        if not isinstance(token, str) or not token:
            raise AuthError("Redox authenticate answered without an accessToken", status=200)
        refresh = data.get("refreshToken")
        self._refresh_token = refresh if isinstance(refresh, str) and refresh else None
        return token, expiry_from_iso(data.get("expires"))

    def _headers(self, token: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"}
        if self.settings.source_id:
            headers["Redox-Source-Id"] = self.settings.source_id
        return headers

    # -- API --------------------------------------------------------------
    def upload(self, fh: IO[bytes], *, upload_name: str, mime: str) -> str:
        """Stream a file to the blob endpoint; return its URI."""
        start = fh.tell()
        response = self._post(
            "Redox upload",
            self.settings.upload_url,
            files={"file": (upload_name, killpoints.reading(fh, "mid_upload"), mime)},
            rewind=lambda: fh.seek(start),
        )
        classify(response, "Redox upload")
        uri = json_object(response).get("URI")
        if not isinstance(uri, str) or not uri:
            raise TransientDeliveryError(
                "Redox upload answered without a URI", status=response.status_code
            )
        return uri

    def send(self, body: dict[str, Any], file: Embedded | None = None) -> SendResult:
        """POST ``body`` to ``/endpoint``; ``file``: base64 bytes spliced in where
        the body holds ``file.marker`` (see :func:`encode_body`)."""
        response = self._post(
            "Redox",
            self._endpoint_url(),
            content=encode_body(body, file),
            headers={"Content-Type": "application/json"},
        )
        classify(response, "Redox")
        answer = json_object(response)  # parsed once
        log_id = log_id_of(answer)
        if not isinstance(answer.get("Meta"), dict) or log_id is None:
            raise not_the_api("Redox", response)
        return SendResult(status=response.status_code, log_id=log_id)


__all__ = [
    "ASSERTION_TYPE",
    "Embedded",
    "RedoxClient",
    "encode_body",
]
