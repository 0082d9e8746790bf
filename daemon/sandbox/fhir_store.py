"""The sandbox's FHIR store: the Media resources it created and what it was sent.

Thread-safe like :class:`~daemon.sandbox.state.SandboxState` (which owns one
:class:`FhirStore` and exposes it through ``fhir_*`` methods). Resources are
deep-copied on the way in and out: mutating a value handed out never changes
the store. Nothing here logs.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["FhirReceived", "FhirStore", "carries_identifier"]


@dataclass(frozen=True)
class FhirReceived:
    """One accepted ``POST /fhir/r4/Media``: a 201 (created) or a 200 (conditional match).

    ``body`` is the resource exactly as sent; ``headers`` every request header
    but ``Authorization`` (lower-case names, e.g. ``content-type``,
    ``if-none-exist``, ``log-cdata``, ``log-cdata-format``); ``resource_id`` the
    id of the resource created or matched.
    """

    body: dict[str, Any]
    headers: dict[str, str]
    status: int
    resource_id: str
    at: float


def carries_identifier(resource: dict[str, Any], system: str, value: str) -> bool:
    """Whether any of ``resource.identifier`` has exactly this system and value."""
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return False
    return any(
        isinstance(i, dict) and i.get("system") == system and i.get("value") == value
        for i in identifiers
    )


def _now_instant() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FhirStore:
    """Created ``Media`` resources by id, and every accepted POST."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[str, dict[str, Any]] = {}  # insertion order = creation order
        self._received: list[FhirReceived] = []

    def accept_media(
        self,
        body: dict[str, Any],
        headers: dict[str, str],
        if_none_exist: tuple[str, str] | None,
    ) -> tuple[int, dict[str, Any] | None]:
        """Create a Media from a validated ``body``, conditionally, and record the request.

        Without ``if_none_exist`` a new resource is always created: ``(201, it)``
        with a new ``id``, ``meta.versionId`` "1" and ``meta.lastUpdated``. With
        ``(system, value)``: one stored Media carrying that identifier answers
        ``(200, it)`` and nothing is created; none creates as above; more than
        one answers ``(412, None)`` (FHIR's "multiple matches"). The check and
        the creation happen under one lock, so concurrent resends cannot both
        create.
        """
        with self._lock:
            if if_none_exist is not None:
                system, value = if_none_exist
                matches = [
                    r for r in self._resources.values() if carries_identifier(r, system, value)
                ]
                if len(matches) > 1:
                    return 412, None
                if matches:
                    found = matches[0]
                    self._record(body, headers, 200, found["id"])
                    return 200, copy.deepcopy(found)
            resource = copy.deepcopy(body)
            resource["id"] = uuid.uuid4().hex
            sent_meta = resource.get("meta")
            meta: dict[str, Any] = sent_meta if isinstance(sent_meta, dict) else {}
            resource["meta"] = {**meta, "versionId": "1", "lastUpdated": _now_instant()}
            self._resources[resource["id"]] = resource
            self._record(body, headers, 201, resource["id"])
            return 201, copy.deepcopy(resource)

    def _record(self, body: dict[str, Any], headers: dict[str, str], status: int, rid: str) -> None:
        entry = FhirReceived(copy.deepcopy(body), dict(headers), status, rid, time.time())
        self._received.append(entry)

    def get(self, resource_id: str) -> dict[str, Any] | None:
        """A copy of the resource with this id, or None."""
        with self._lock:
            found = self._resources.get(resource_id)
            return None if found is None else copy.deepcopy(found)

    def resources(self) -> list[dict[str, Any]]:
        """Copies of every created resource, oldest first."""
        with self._lock:
            return copy.deepcopy(list(self._resources.values()))

    def received(self) -> list[FhirReceived]:
        """Every accepted POST, oldest first."""
        with self._lock:
            return list(self._received)

    def clear_received(self) -> None:
        """Forget accepted POSTs (the created resources stay)."""
        with self._lock:
            self._received.clear()
