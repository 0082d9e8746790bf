"""The retry rules in one place: status classification, Retry-After, backoff, give-up."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import Destination
from daemon.decide import backoff, decide
from daemon.errors import (
    AuthError,
    ConfigError,
    DeliveryError,
    ErrorKind,
    InputError,
    PermanentDeliveryError,
    SidecarError,
    TransientDeliveryError,
)
from daemon.http import check_url, classify, retry_after_seconds
from daemon.queue import Job, JobState


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, request=httpx.Request("POST", "https://x"))


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_raises_nothing_while_every_other_status_raises(status: int) -> None:
    assert classify(_response(status), "Redox") is None
    for other in (199, 300, 302, 400, 401, 429, 500):
        with pytest.raises(DeliveryError):
            classify(_response(other), "Redox")


@pytest.mark.parametrize("status", [400, 403, 404, 409, 413, 422])
def test_client_errors_are_permanent(status: int) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        classify(_response(status), "Redox")
    assert info.value.status == status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_server_errors_and_throttling_are_transient(status: int) -> None:
    with pytest.raises(TransientDeliveryError) as info:
        classify(_response(status, {"Retry-After": "7"}), "Redox")
    assert info.value.retry_after == 7


def test_401_is_an_auth_error_so_documents_wait() -> None:
    with pytest.raises(AuthError):
        classify(_response(401), "Redox")


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after_seconds(later, now) == pytest.approx(90)
    past = format_datetime(now - timedelta(hours=1), usegmt=True)
    assert retry_after_seconds(past, now) == 0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


@given(st.integers(min_value=0, max_value=200), st.floats(0.01, 100), st.floats(0.01, 10_000))
def test_backoff_never_exceeds_the_cap_nor_goes_negative(
    attempts: int, base: float, cap: float
) -> None:
    delay = backoff(attempts, base, cap, random.Random(attempts))
    assert 0 <= delay <= cap


def test_backoff_is_jittered_over_the_whole_window() -> None:
    """Full jitter: the 10th attempt (base 10 s, cap 900 s) spreads over 0..900 s,
    not a fixed delay (herds of retries after an outage would arrive together)."""
    rng = random.Random(3)
    delays = [backoff(10, 10, 900, rng) for _ in range(2000)]
    assert min(delays) < 90 and max(delays) > 810
    assert len({round(d) for d in delays}) > 500


def test_backoff_grows_then_caps() -> None:
    rng = random.Random(1)
    means = [sum(backoff(a, 10, 900, rng) for _ in range(400)) / 400 for a in (0, 3, 20)]
    assert means[0] == pytest.approx(5, rel=0.2)
    assert means[1] == pytest.approx(40, rel=0.2)
    assert means[2] == pytest.approx(450, rel=0.2)


def _job(queued_at: float, attempts: int = 0) -> Job:
    return Job(
        id="j",
        destination="d",
        state=JobState.LEASED,
        attempts=attempts,
        next_attempt_at=0,
        lease_expires_at=1,
        lease_token="t",
        document_id="doc",
        sha256="",
        size=1,
        original_name="x.pdf",
        sidecar_name=None,
        spool_document=None,
        spool_sidecar=None,
        blob_uri=None,
        remote_id=None,
        http_status=None,
        last_error=None,
        error_kind=None,
        final_path=None,
        created_at=queued_at,
        queued_at=queued_at,
        updated_at=queued_at,
        sent_at=None,
        finished_at=None,
    )


DEST = Destination(
    name="d",
    inbox=Path("/i"),
    done=Path("/d"),
    failed=Path("/f"),
    redox_destination_id="x",
    settle_seconds=3,
    rescan_seconds=60,
    sidecar_timeout_seconds=600,
    retry_base_seconds=10,
    retry_cap_seconds=900,
    give_up_after_hours=72,
    embed_max_bytes=200_000,
    upload_max_bytes=30_000_000,
)


def test_decide_retry_honours_retry_after() -> None:
    exc = TransientDeliveryError("busy", status=429, retry_after=600)
    d = decide(exc, _job(queued_at=0), DEST, now=10)
    assert d.action == "retry" and d.delay >= 600 and d.http_status == 429


def test_decide_gives_up_after_the_configured_hours() -> None:
    exc = TransientDeliveryError("down", status=503)
    assert decide(exc, _job(queued_at=0), DEST, now=72 * 3600 - 1).action == "retry"
    d = decide(exc, _job(queued_at=0), DEST, now=72 * 3600)
    assert d.action == "reject" and d.error_kind == "gave_up"


def test_decide_input_and_permanent_errors_are_never_retried() -> None:
    assert decide(SidecarError("x"), _job(0), DEST, now=1).action == "reject"
    d = decide(PermanentDeliveryError("no", status=400), _job(0), DEST, now=1)
    assert (d.action, d.error_kind, d.http_status) == ("reject", "remote_rejected", 400)


def test_decide_unexpected_local_errors_are_retried() -> None:
    d = decide(PermissionError(13, "Permission denied"), _job(0), DEST, now=1)
    assert (d.action, d.error_kind) == ("retry", "local_error")


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.redoxengine.com", True),
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://api.redoxengine.com", False),
        ("http://10.0.0.5", False),
    ],
)
def test_plain_http_only_to_loopback(url: str, ok: bool) -> None:
    if ok:
        check_url(url, "x")
    else:
        with pytest.raises(ConfigError):
            check_url(url, "x")


def test_error_text_never_carries_a_file_name() -> None:
    from daemon.decide import safe_text

    exc = PermissionError(13, "Permission denied", "/srv/inbox/CANARY_Bixby.pdf")
    assert "CANARY" not in str(decide(exc, _job(0), DEST, now=1).error)
    assert safe_text(exc) == "PermissionError: Permission denied"
    assert "CANARY" not in decide(exc, _job(0), DEST, now=10**9).error  # give-up text too
    assert safe_text(ValueError("CANARY value")) == "ValueError"


def test_refused_credentials_wait_unburnt_and_are_decided_in_decide() -> None:
    exc = AuthError("refused", status=401)
    d = decide(exc, _job(queued_at=0, attempts=3), DEST, now=72 * 3600 + 1)
    assert (d.action, d.error_kind, d.http_status) == ("wait", "auth", 401)  # never gives up
    down = decide(AuthError("token endpoint 503", status=503, retry_after=30), _job(0), DEST, now=1)
    assert (down.action, down.delay) == ("wait", 30)


def test_every_error_kind_has_fix_text_and_every_input_error_a_kind() -> None:
    from daemon import errors

    assert all(len(kind.fix) > 20 for kind in ErrorKind)
    assert ErrorKind.of("duplicate") is ErrorKind.DUPLICATE and ErrorKind.of("nope") is None
    inputs = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, InputError)]
    assert len(inputs) >= 10
    kinds = {c.kind for c in inputs}
    assert len(kinds) == len(inputs)  # one kind each: the note tells them apart
    err = errors.MissingSidecarError(["no sidecar", "second line"])
    assert (err.reason, err.fix, err.text) == (
        ErrorKind.MISSING_SIDECAR,
        ErrorKind.MISSING_SIDECAR.fix,
        "no sidecar\nsecond line",
    )
