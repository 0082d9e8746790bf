"""Shared, thread-safe state of the local Redox-compatible sandbox.

The sandbox app runs on uvicorn's event-loop thread while tests (and the demo)
read and change its state from other threads, so every public method of
:class:`SandboxState` takes one :class:`threading.Lock`. Values handed out are
copies: mutating them never changes the sandbox.

Nothing here logs. Recorded request bodies stay in memory for the tests that
asked for them and are never written anywhere else.

Longer than ~400 lines because it is one lock's worth of state: clients and
keys, tokens, blobs, received bodies, attempts and injected faults are read
and changed together under that lock (a fault decides an attempt's answer and
is recorded with it); split up, each part would need the others' lock.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from hmac import compare_digest
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from daemon.sandbox.faults import Faults, InjectedFault, check_fault_value
from daemon.sandbox.fhir_store import FhirReceived, FhirStore

__all__ = [
    "ANY_TOKEN",
    "FHIR_TOKENS",
    "REDOX_TOKENS",
    "AttemptRecord",
    "Faults",
    "FhirReceived",
    "InjectedFault",
    "Received",
    "SandboxState",
    "TokenKind",
]

TokenKind = Literal["redox", "fhir"]
"""Which API a bearer token was issued for: Redox tokens (``/v2/auth/token``,
``/auth/authenticate``, ``/auth/refreshToken``) are refused on the FHIR routes
and FHIR tokens (``/fhir/oauth/token``) on ``/endpoint``."""

REDOX_TOKENS: tuple[TokenKind, ...] = ("redox",)
FHIR_TOKENS: tuple[TokenKind, ...] = ("fhir",)
ANY_TOKEN: tuple[TokenKind, ...] = ("redox", "fhir")

_BLOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Received:
    """One successfully accepted ``/endpoint`` request.

    ``headers`` holds only the authorization-free headers of interest
    (``content-type``, ``redox-source-id``) that were present.
    """

    log_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    cut: bool = False  # stored, then the answer was cut (the ``reset`` fault)


@dataclass(frozen=True)
class AttemptRecord:
    """One request to ``/endpoint``, ``/upload`` or ``POST /fhir/r4/Media``, whatever its outcome.

    ``document_id`` is the body's ``Media.DocumentID`` / ``Note.DocumentID``
    (for Results, ``Orders[0].ID``; for FHIR, ``identifier[0].value``) when
    the body could be parsed.
    """

    path: str
    status: int
    document_id: str | None
    at: float


@dataclass(frozen=True)
class _Client:
    client_id: str
    public_key: RSAPublicKey


@dataclass(frozen=True)
class _Token:
    owner: str
    kind: TokenKind
    expires_at: float  # time.monotonic()


@dataclass(frozen=True)
class _Blob:
    owner: str
    size: int


class SandboxState:
    """Everything the sandbox knows: clients, tokens, blobs, faults and what it received."""

    def __init__(
        self,
        *,
        blob_dir: Path,
        upload_max_bytes: int = 30_000_000,
        token_ttl_seconds: int = 3600,
        request_max_bytes: int = 10_000_000,
    ) -> None:
        self.blob_dir = Path(blob_dir)
        self.blob_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.upload_max_bytes = upload_max_bytes
        self.token_ttl_seconds = token_ttl_seconds
        self.request_max_bytes = request_max_bytes
        self._lock = threading.Lock()
        self._faults = Faults()
        self._injected: dict[str, int] = {}  # fault ("503", "html", "reset") -> times injected
        self._rng = random.Random()  # noqa: S311 - fault injection, not security
        self._clients: dict[str, _Client] = {}  # by kid
        self._legacy_keys: dict[str, str] = {}  # api key -> secret
        self._refresh_tokens: dict[str, str] = {}  # api key -> its current refresh token
        self._fhir_clients: dict[str, str] = {}  # FHIR client_id -> client_secret
        self._tokens: dict[str, _Token] = {}
        self._seen_jtis: dict[str, float] = {}  # jti -> wall-clock exp, pruned after exp
        self._token_requests = 0
        self._refresh_requests = 0
        self._fhir_token_requests = 0
        self._fhir = FhirStore()
        self._received: list[Received] = []
        self._attempts: list[AttemptRecord] = []
        self._blobs: dict[str, _Blob] = {}
        self._blob_order: list[str] = []
        self._in_flight = 0  # sending requests inside their latency wait now
        self._most_in_flight = 0  # the most there were at once

    # ---- clients and tokens -------------------------------------------------

    def register_client(self, client_id: str, key_id: str, public_key_pem: bytes) -> None:
        """Register a signed-JWT client: assertions with header ``kid == key_id``
        must be signed by ``public_key_pem`` (RSA) and carry ``iss == sub == client_id``."""
        key = load_pem_public_key(public_key_pem)
        if not isinstance(key, RSAPublicKey):
            raise ValueError("client public key must be an RSA key")
        with self._lock:
            self._clients[key_id] = _Client(client_id=client_id, public_key=key)

    def register_legacy_key(self, api_key: str, secret: str) -> None:
        """Register a legacy ``/auth/authenticate`` API key and its secret."""
        with self._lock:
            self._legacy_keys[api_key] = secret

    def register_fhir_client(self, client_id: str, client_secret: str) -> None:
        """Register an OAuth 2.0 client of ``/fhir/oauth/token`` (client credentials)."""
        with self._lock:
            self._fhir_clients[client_id] = client_secret

    def fhir_client_secret(self, client_id: str) -> str | None:
        """The secret registered for a FHIR client, if any."""
        with self._lock:
            return self._fhir_clients.get(client_id)

    def client_for_kid(self, key_id: str) -> tuple[str, RSAPublicKey] | None:
        """The ``(client_id, public_key)`` registered under ``key_id``, if any."""
        with self._lock:
            client = self._clients.get(key_id)
        return None if client is None else (client.client_id, client.public_key)

    def legacy_secret(self, api_key: str) -> str | None:
        """The secret registered for a legacy API key, if any."""
        with self._lock:
            return self._legacy_keys.get(api_key)

    def count_token_request(self) -> None:
        """Count one request to a token endpoint (successful or not)."""
        with self._lock:
            self._token_requests += 1

    @property
    def token_requests(self) -> int:
        """How many ``/v2/auth/token`` and ``/auth/authenticate`` requests were answered.

        Refreshes and FHIR token requests are counted apart
        (:attr:`refresh_requests`, :attr:`fhir_token_requests`).
        """
        with self._lock:
            return self._token_requests

    def count_refresh_request(self) -> None:
        """Count one ``/auth/refreshToken`` request (successful or not)."""
        with self._lock:
            self._refresh_requests += 1

    @property
    def refresh_requests(self) -> int:
        """How many ``/auth/refreshToken`` requests the sandbox has answered."""
        with self._lock:
            return self._refresh_requests

    def count_fhir_token_request(self) -> None:
        """Count one ``/fhir/oauth/token`` request (successful or not)."""
        with self._lock:
            self._fhir_token_requests += 1

    @property
    def fhir_token_requests(self) -> int:
        """How many ``/fhir/oauth/token`` requests the sandbox has answered."""
        with self._lock:
            return self._fhir_token_requests

    def consume_jti(self, jti: str, exp: float) -> bool:
        """Remember an assertion's ``jti``; False if it was seen before (a replay)."""
        now = time.time()
        with self._lock:
            for old in [j for j, old_exp in self._seen_jtis.items() if old_exp < now - 60]:
                del self._seen_jtis[old]
            if jti in self._seen_jtis:
                return False
            self._seen_jtis[jti] = exp
            return True

    def issue_token(self, owner: str, kind: TokenKind = "redox") -> str:
        """Issue a random bearer token for ``owner`` valid for ``token_ttl_seconds``."""
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        expires_at = now + self.token_ttl_seconds
        with self._lock:
            for old in [t for t, tok in self._tokens.items() if tok.expires_at <= now]:
                del self._tokens[old]
            self._tokens[token] = _Token(owner=owner, kind=kind, expires_at=expires_at)
        return token

    def token_owner(self, token: str, kinds: Collection[TokenKind] = REDOX_TOKENS) -> str | None:
        """The owner of an issued, unexpired token of one of ``kinds``; None otherwise."""
        with self._lock:
            tok = self._tokens.get(token)
        if tok is None or tok.kind not in kinds or tok.expires_at <= time.monotonic():
            return None
        return tok.owner

    def issued_tokens(self) -> list[str]:
        """Every access token (Redox and FHIR) not yet expired or revoked, and every
        current legacy refresh token (tests look for them where they must not be)."""
        with self._lock:
            return [*self._tokens, *self._refresh_tokens.values()]

    def revoke_tokens(self) -> None:
        """Forget every issued access token (Redox and FHIR), as if all had expired.

        Refresh tokens stay valid (revoke them with :meth:`revoke_refresh_tokens`),
        so a client can show it renews through ``/auth/refreshToken``.
        """
        with self._lock:
            self._tokens.clear()

    def issue_refresh_token(self, api_key: str) -> str:
        """A new random refresh token for a legacy API key; the key's previous one
        stops working (one refresh token per key)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh_tokens[api_key] = token
        return token

    def redeem_refresh_token(self, api_key: str, refresh_token: str) -> bool:
        """True when ``refresh_token`` is ``api_key``'s current refresh token; it is
        then used up (the caller issues the next one)."""
        with self._lock:
            current = self._refresh_tokens.get(api_key)
            if current is None or not compare_digest(current.encode(), refresh_token.encode()):
                return False
            del self._refresh_tokens[api_key]
            return True

    def revoke_refresh_tokens(self) -> None:
        """Forget every legacy refresh token: ``/auth/refreshToken`` answers 401 until
        the client authenticates again (access tokens are left alone)."""
        with self._lock:
            self._refresh_tokens.clear()

    # ---- faults -------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """A copy of the current fault settings (change them with :meth:`set_faults`)."""
        with self._lock:
            f = self._faults
            return dataclasses.replace(f, fail_next=list(f.fail_next), error_mix=list(f.error_mix))

    def set_faults(self, **kwargs: object) -> Faults:
        """Update fault settings by field name; returns the new settings.

        Raises ValueError on an unknown name or a bad value (and then changes nothing).
        Setting ``seed`` reseeds the generator behind ``error_rate``.
        """
        checked = {name: check_fault_value(name, value) for name, value in kwargs.items()}
        with self._lock:
            self._faults = dataclasses.replace(self._faults, **checked)  # type: ignore[arg-type]
            if "seed" in checked:
                self._rng.seed(self._faults.seed)
        return self.faults

    def reset_faults(self) -> None:
        """Back to no faults at all."""
        with self._lock:
            self._faults = Faults()

    def echo_body(self) -> bool:
        """Whether error answers quote the request body back (see :class:`Faults`)."""
        with self._lock:
            return self._faults.echo_body

    def latency(self) -> float:
        """Seconds to wait before answering a sending route."""
        with self._lock:
            return self._faults.latency_seconds

    def next_fault(self) -> InjectedFault | None:
        """Decide whether this request to a sending route fails.

        An outage wins; otherwise one queued ``fail_next`` status is consumed;
        otherwise ``error_rate`` is rolled.
        """
        with self._lock:
            f = self._faults
            chosen: int | str | None = None
            if f.outage:
                chosen = f.error_status
            elif f.fail_next:
                chosen = f.fail_next.pop(0)
            elif f.error_rate > 0 and self._rng.random() < f.error_rate:
                chosen = self._rng.choice(f.error_mix) if f.error_mix else f.error_status
            if chosen is None:
                return None
            self._injected[str(chosen)] = self._injected.get(str(chosen), 0) + 1
            if isinstance(chosen, str):  # HTML or RESET: the answer's status is 200
                return InjectedFault(200, None, chosen)
            return InjectedFault(chosen, f.retry_after)

    def injected(self) -> dict[str, int]:
        """How many times each fault was injected on a sending route ("503", "html", "reset")."""
        with self._lock:
            return dict(self._injected)

    def outage_fault(self) -> InjectedFault | None:
        """The fault token requests answer during an outage, else None."""
        with self._lock:
            if not self._faults.outage:
                return None
            return InjectedFault(self._faults.error_status, self._faults.retry_after)

    # ---- what was received --------------------------------------------------

    def record_received(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        """Record an accepted ``/endpoint`` body; returns its new log ID."""
        log_id = str(uuid.uuid4())
        with self._lock:
            self._received.append(Received(log_id, body, dict(headers), time.time()))
        return log_id

    def mark_cut(self, log_id: str) -> None:
        """The answer to this accepted request was cut (the ``reset`` fault)."""
        with self._lock:
            self._received = [
                dataclasses.replace(r, cut=True) if r.log_id == log_id else r
                for r in self._received
            ]

    def record_attempt(self, path: str, status: int, document_id: str | None) -> None:
        """Record one request to a sending route and the status it got."""
        with self._lock:
            self._attempts.append(AttemptRecord(path, status, document_id, time.time()))

    def sending_started(self) -> None:
        """A request to a sending route entered its latency wait."""
        with self._lock:
            self._in_flight += 1
            self._most_in_flight = max(self._most_in_flight, self._in_flight)

    def sending_ended(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def most_in_flight(self) -> int:
        """The most sending requests the sandbox held at once (in their latency wait)."""
        with self._lock:
            return self._most_in_flight

    def received(self) -> list[Received]:
        """Every accepted ``/endpoint`` request, oldest first."""
        with self._lock:
            return list(self._received)

    @property
    def attempts(self) -> list[AttemptRecord]:
        """Every request to a sending route with its status, oldest first."""
        with self._lock:
            return list(self._attempts)

    def clear_records(self) -> None:
        """Forget received bodies and attempts (blobs, FHIR resources, tokens and faults stay)."""
        with self._lock:
            self._received.clear()
            self._attempts.clear()
            self._most_in_flight = self._in_flight
        self._fhir.clear_received()

    # ---- FHIR ---------------------------------------------------------------

    def accept_fhir_media(
        self, body: dict[str, Any], headers: dict[str, str], if_none_exist: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any] | None]:
        """Create (conditionally) a validated Media; see :meth:`FhirStore.accept_media`."""
        return self._fhir.accept_media(body, headers, if_none_exist)

    def fhir_received(self) -> list[FhirReceived]:
        """Every accepted ``POST /fhir/r4/Media`` (201 or 200), oldest first."""
        return self._fhir.received()

    def fhir_resources(self) -> list[dict[str, Any]]:
        """Copies of every Media resource the sandbox created, oldest first."""
        return self._fhir.resources()

    def fhir_resource(self, resource_id: str) -> dict[str, Any] | None:
        """A copy of the created Media with this id, or None."""
        return self._fhir.get(resource_id)

    # ---- blobs --------------------------------------------------------------

    def new_blob_path(self) -> tuple[str, Path]:
        """A fresh blob ID and the path its bytes are to be written to."""
        blob_id = uuid.uuid4().hex
        return blob_id, self.blob_dir / blob_id

    def add_blob(self, blob_id: str, owner: str, size: int) -> None:
        """Record a blob whose bytes are completely written."""
        with self._lock:
            self._blobs[blob_id] = _Blob(owner=owner, size=size)
            self._blob_order.append(blob_id)

    def blob_owner(self, blob_id: str) -> str | None:
        """Who uploaded ``blob_id`` (None when there is no such blob)."""
        with self._lock:
            blob = self._blobs.get(blob_id)
        return None if blob is None else blob.owner

    def blob_path(self, blob_id: str) -> Path | None:
        """Path of an uploaded blob, or None for an unknown or malformed ID."""
        if not _BLOB_ID.match(blob_id):
            return None
        with self._lock:
            known = blob_id in self._blobs
        return self.blob_dir / blob_id if known else None

    def blob_bytes(self, uri_or_id: str) -> bytes:
        """The bytes of an uploaded blob, by ID or by the URI ``/upload`` returned.

        Raises KeyError for an unknown blob.
        """
        blob_id = uri_or_id.rstrip("/").rsplit("/", 1)[-1]
        path = self.blob_path(blob_id)
        if path is None:
            raise KeyError(blob_id)
        return path.read_bytes()

    def uploads(self) -> list[str]:
        """Blob IDs in upload order."""
        with self._lock:
            return list(self._blob_order)


def write_private_file(path: Path) -> int:
    """Create ``path`` exclusively with mode 0600; returns the open file descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
