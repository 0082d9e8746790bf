"""Fault-injection settings of the sandbox and their validation.

:class:`Faults` holds what the tests (or ``chartdrop sandbox``) asked for;
:class:`InjectedFault` is one error the sandbox decided to answer instead of
processing a request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HTML", "KINDS", "RESET", "Faults", "InjectedFault", "check_fault_value"]

HTML = "html"
"""A ``200 OK`` with an HTML page instead of the API's answer, the way a proxy or a
captive portal answers: the request never reached the API (nothing is stored)."""
RESET = "reset"
"""The request is processed and stored, then the connection is cut before the
answer is complete: the client cannot know it arrived."""
KINDS = (HTML, RESET)


@dataclass
class Faults:
    """Fault-injection settings for the sending routes and the token endpoints.

    The sending routes are ``/endpoint``, ``/upload`` and ``POST /fhir/r4/Media``;
    the token endpoints are ``/v2/auth/token``, ``/auth/authenticate``,
    ``/auth/refreshToken`` and ``/fhir/oauth/token``.

    * ``error_rate`` - probability (0..1) that a sending request answers ``error_status``.
    * ``error_status`` - the status of injected errors (and of every request during
      an ``outage``).
    * ``retry_after`` - sent as the ``Retry-After`` header on injected errors.
    * ``latency_seconds`` - added before every sending route's answer.
    * ``fail_next`` - deterministic: the next requests to the sending routes
      answer these in order, consuming one each: an HTTP error status, or one of
      the :data:`KINDS` below.
    * ``error_mix`` - what an ``error_rate`` hit answers, chosen at random from the
      list (statuses and :data:`KINDS`); empty means ``error_status``.
    * ``outage`` - every sending and token request answers ``error_status``.
    * ``seed`` - seeds the random generator behind ``error_rate``.
    * ``echo_body`` - test-only: every ``/endpoint`` error answer quotes the request
      body back (its text, plus base64) in ``Meta.Errors``, the way a careless
      server might; it proves nothing from an error body reaches chartdrop's
      logs, notes or database.
    """

    error_rate: float = 0.0
    error_status: int = 503
    retry_after: str | None = None
    latency_seconds: float = 0.0
    fail_next: list[int] = field(default_factory=list)
    outage: bool = False
    seed: int | None = None
    echo_body: bool = False
    error_mix: list[int | str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InjectedFault:
    """An error the sandbox decided to answer instead of processing a request."""

    status: int
    retry_after: str | None
    kind: str = "status"  # "status" (an error answer), or one of KINDS


def _check_status(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError(f"{name} must be an HTTP error status (400-599)")
    return value


def check_fault_value(name: str, value: object) -> object:
    """Validate one ``Faults`` field value; returns the normalised value."""
    if name == "error_rate":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError("error_rate must be a number between 0 and 1")
        return float(value)
    if name == "error_status":
        return _check_status(value, name)
    if name == "retry_after":
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        raise ValueError("retry_after must be a string, a non-negative integer or null")
    if name == "latency_seconds":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError("latency_seconds must be a non-negative number")
        return float(value)
    if name in ("fail_next", "error_mix"):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list of HTTP error statuses or {KINDS}")
        return [item if item in KINDS else _check_status(item, f"{name} item") for item in value]
    if name in ("outage", "echo_body"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if name == "seed":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("seed must be an integer or null")
        return value
    raise ValueError(f"unknown fault setting {name!r}")
