"""chartdrop's exception tree. Retrying is decided by the type, in one place
(:func:`daemon.delivery.classify`), never by matching messages.

    ChartdropError
    ├── ConfigError               the admin's config or folders are wrong; refuse to start
    ├── InputError                the document's fault: never retried, goes to failed/
    │   ├── SidecarError          missing / unparsable / invalid sidecar (lists every problem)
    │   ├── ContentError          incomplete, unrecognised or wrong-type content
    │   ├── TooLargeError         over upload_max_bytes (no network call made)
    │   ├── ChangedError          the file changed after it was queued (sha256 differs)
    │   ├── DuplicateError        the same bytes for the same patient were sent recently
    │   └── NotRegularFileError   a symlink, FIFO, device or hard link: never read through
    └── DeliveryError             talking to the remote side failed
        ├── TransientDeliveryError  retried with backoff (5xx, 429, 408, network errors)
        │   └── AuthError           credentials refused or token endpoint down:
        │                           the config is wrong, not the document, so it waits queued
        └── PermanentDeliveryError  the remote refused the document (400/403/404/413)

No message in this tree may carry PHI: no patient data, no file names, no file
contents. Messages name fields and statuses, never values.
"""

from __future__ import annotations


class ChartdropError(Exception):
    """Base of every error chartdrop raises on purpose."""


class ConfigError(ChartdropError):
    """The configuration or the folder layout is wrong. ``problems`` lists every one."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class InputError(ChartdropError):
    """The document (or its sidecar) cannot be sent as it is. Never retried.

    ``reason`` is a short machine key for metrics and the audit trail;
    ``problems`` are plain-language lines for the ``.error.txt`` staff read;
    ``fix`` says what to do about it.
    """

    reason = "invalid_input"
    fix = "Correct the document or its sidecar, then move both back into the inbox."

    def __init__(self, problems: list[str] | str, *, fix: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if fix is not None:
            self.fix = fix
        super().__init__("; ".join(self.problems))


class SidecarError(InputError):
    reason = "invalid_sidecar"
    fix = (
        "Correct the sidecar JSON file (the fields named above), then move the document "
        "and its sidecar back into the inbox."
    )


class ContentError(InputError):
    reason = "bad_content"
    fix = "Scan or export the document again, then drop it into the inbox with its sidecar."


class TooLargeError(InputError):
    reason = "too_large"
    fix = (
        "Split the document into smaller parts or scan it at a lower resolution, "
        "then drop the parts into the inbox, each with its own sidecar."
    )


class ChangedError(InputError):
    reason = "changed_after_queued"
    fix = (
        "Something was still writing the file after chartdrop had taken it, so it was not "
        "sent. Check that the document in failed/ is complete (or scan it again), then move "
        "it and its sidecar back into the inbox."
    )


class DuplicateError(InputError):
    reason = "duplicate"
    fix = (
        "Nothing needs doing if it was dropped twice by mistake: delete it from failed/. "
        "If it really must be filed again, ask your administrator to run "
        "`chartdrop retry --allow-duplicate` with the job number below."
    )


class NotRegularFileError(InputError):
    reason = "not_a_regular_file"
    fix = (
        "Put the real document file (not a shortcut, link or special file) into the inbox "
        "together with its sidecar."
    )


class DeliveryError(ChartdropError):
    """Talking to the remote API failed. ``status`` is the HTTP status, if any;
    ``remote_id`` the log ID the remote side gave the failed request, if any."""

    def __init__(
        self, message: str, *, status: int | None = None, remote_id: str | None = None
    ) -> None:
        self.status = status
        self.remote_id = remote_id
        super().__init__(message)


class TransientDeliveryError(DeliveryError):
    """Worth retrying later. ``retry_after`` (seconds) comes from the server, if it said."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unknown_outcome: bool = False,
        remote_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, remote_id=remote_id)
        self.retry_after = retry_after
        # True when the request may have reached the server (e.g. a read
        # timeout after sending): the resend carries the same DocumentID.
        self.unknown_outcome = unknown_outcome


class AuthError(TransientDeliveryError):
    """Credentials were refused or the token endpoint failed. Documents stay queued."""


class PermanentDeliveryError(DeliveryError):
    """The remote side refused this document; resending it unchanged cannot help."""
