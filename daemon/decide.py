"""Retrying is decided here, by the exception's type, and only here
(:func:`decide`): fail now (the document's fault, or the destination refused
it), retry later with backoff (an outage, an unknown outcome, a local error for
a while), wait unburnt with the destination paused (refused credentials), or
give up after ``give_up_after_hours`` of waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from daemon.config import Destination
from daemon.errors import (
    AuthError,
    ChartdropError,
    ErrorKind,
    InputError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from daemon.queue import Job

# A local error (the spool copy cannot be read, or an unexpected exception) is
# not an outage: retried with backoff for this many attempts in a row (about ten
# minutes with the default backoff), then the job fails with the reason.
LOCAL_ERROR_ATTEMPTS = 8
# Waiting time towards give_up_after_hours is summed over the gaps between a
# job's events, each gap counted at most this long (or twice retry_cap_seconds):
# a wall clock that jumps forward by days must not fail the queue at once.
GAP_CAP_SECONDS = 3600.0


def backoff(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempts))."""
    ceiling = min(cap, base * (2 ** min(attempts, 32)))
    return (rng or random).uniform(0, ceiling)


def safe_text(exc: BaseException) -> str:
    """An error's text for the job row and logs. Our own errors are PHI-free by
    construction; anything else (an OSError can carry a file name) gives only its
    type and errno text."""
    if isinstance(exc, ChartdropError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


@dataclass(frozen=True)
class Decision:
    action: str  # "retry" | "reject" | "wait" (back to the queue unburnt, destination paused)
    delay: float = 0.0
    error_kind: str = ""
    error: str = ""
    http_status: int | None = None
    remote_id: str | None = None  # the log ID the remote side gave the failed request


def gap_cap(dest: Destination) -> float:
    """The most one gap between a job's events counts towards give_up_after_hours."""
    return max(GAP_CAP_SECONDS, 2 * dest.timing.retry_cap_seconds)


def decide(
    exc: Exception,
    job: Job,
    dest: Destination,
    *,
    now: float,
    waited: float | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """The one place that decides between retrying and failing. ``waited`` is how
    long the job has been waiting (see :meth:`Queue.waited_seconds`); without it,
    the wall-clock time since it was queued."""
    if isinstance(exc, AuthError):
        # The credentials or the token endpoint, not the document: it waits, unburnt,
        # and the destination pauses (see Deliverer._wait).
        return Decision(
            "wait",
            delay=exc.retry_after or 0.0,
            error_kind=ErrorKind.AUTH,
            error=safe_text(exc),
            http_status=exc.status,
        )
    if isinstance(exc, InputError):
        return Decision("reject", error_kind=exc.kind, error=exc.text)
    if isinstance(exc, PermanentDeliveryError):
        return Decision(
            "reject",
            error_kind=ErrorKind.REMOTE_REJECTED,
            error=f"the destination refused the document (HTTP {exc.status})",
            http_status=exc.status,
            remote_id=exc.remote_id,
        )
    status = exc.status if isinstance(exc, TransientDeliveryError) else None
    remote_id = exc.remote_id if isinstance(exc, TransientDeliveryError) else None
    started = job.queued_at or job.created_at
    give_up = dest.timing.give_up_after_hours * 3600
    if (now - started if waited is None else waited) >= give_up:
        return Decision(
            "reject",
            error_kind=ErrorKind.GAVE_UP,
            error=(
                f"the destination could not be reached for {give_up / 3600:g} hours "
                f"(last problem: {safe_text(exc)})"
            ),
            http_status=status,
            remote_id=remote_id,
        )
    delay = backoff(
        job.attempts,
        dest.timing.retry_base_seconds,
        dest.timing.retry_cap_seconds,
        rng,
    )
    if isinstance(exc, TransientDeliveryError) and exc.retry_after is not None:
        delay = max(delay, exc.retry_after)
    kind = ErrorKind.TRANSIENT
    if isinstance(exc, TransientDeliveryError) and exc.unknown_outcome:
        kind = ErrorKind.UNKNOWN_OUTCOME  # it may have arrived: resent with the same DocumentID
    if not isinstance(exc, TransientDeliveryError):
        kind = ErrorKind.LOCAL_ERROR  # e.g. an unreadable spool file: retried, then reported
        if job.error_kind == kind and job.attempts + 1 >= LOCAL_ERROR_ATTEMPTS:
            return Decision(
                "reject",
                error_kind=kind,
                error=(
                    f"chartdrop could not read or prepare the file on this server "
                    f"({safe_text(exc)}), {job.attempts + 1} attempts in a row"
                ),
            )
    return Decision(
        "retry",
        delay=delay,
        error_kind=kind,
        error=safe_text(exc),
        http_status=status,
        remote_id=remote_id,
    )
