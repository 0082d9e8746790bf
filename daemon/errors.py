"""chartdrop's error vocabulary: :class:`ErrorKind` (why a job failed or waits,
with the fix staff read beside each kind) and the exception tree. Retrying is
decided by the exception's type, in one place (:func:`daemon.decide.decide`),
never by matching messages; HTTP statuses become exceptions in one place too
(:func:`daemon.http.classify`).

    ChartdropError
    ├── ConfigError               the admin's config or folders are wrong; refuse to start
    ├── InputError                the document's fault: never retried, goes to failed/
    │   ├── SidecarError          missing / unparsable / invalid sidecar (lists every problem)
    │   ├── ContentError          incomplete, unrecognised or wrong-type content
    │   ├── TooLargeError         over upload_max_bytes (no network call made)
    │   ├── ChangedError          the file changed after it was queued (sha256 differs)
    │   ├── DuplicateError        the same bytes for the same patient were sent recently
    │   ├── NotRegularFileError   a symlink, FIFO, device or hard link: never read through
    │   ├── MissingSidecarError   no sidecar came (or it left during hand-over)
    │   ├── OrphanSidecarError    a sidecar came without its document
    │   └── UnreadableError       the file could not be read, for too long
    └── DeliveryError             talking to the remote side failed
        ├── TransientDeliveryError  retried with backoff (5xx, 429, 408, network errors)
        │   └── AuthError           credentials refused or token endpoint down:
        │                           the config is wrong, not the document, so it waits queued
        └── PermanentDeliveryError  the remote refused the document (400/403/404/413)

No message in this tree may carry PHI: no patient data, no file names, no file
contents. Messages name fields and statuses, never values.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """Why a job went to failed/, or why it waits: the key stored in the job row,
    the audit trail, the logs and the metrics. Each kind's ``fix`` is what the
    ``.error.txt`` in failed/ tells staff to do about it."""

    fix: str

    def __new__(cls, value: str, fix: str) -> ErrorKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.fix = fix
        return member

    @classmethod
    def of(cls, key: str | None) -> ErrorKind | None:
        """The kind stored as ``key`` in a job row (None for an unknown key)."""
        return next((kind for kind in cls if kind.value == key), None)

    # -- the document's fault: failed/ ---------------------------------------
    INVALID_INPUT = (
        "invalid_input",
        "Correct the document or its sidecar, then move both back into the inbox.",
    )
    INVALID_SIDECAR = (
        "invalid_sidecar",
        "Correct the sidecar JSON file (the fields named above), then move the document "
        "and its sidecar back into the inbox.",
    )
    BAD_CONTENT = (
        "bad_content",
        "Scan or export the document again, then drop it into the inbox with its sidecar.",
    )
    TOO_LARGE = (
        "too_large",
        "Split the document into smaller parts or scan it at a lower resolution, "
        "then drop the parts into the inbox, each with its own sidecar.",
    )
    CHANGED = (
        "changed_after_queued",
        "Something was still writing the file after chartdrop had taken it, so it was not "
        "sent. Check that the document in failed/ is complete (or scan it again), then move "
        "it and its sidecar back into the inbox.",
    )
    DUPLICATE = (
        "duplicate",
        "Nothing needs doing if it was dropped twice by mistake: delete it from failed/. "
        "If it really must be filed again, ask your administrator to run "
        "`chartdrop retry --allow-duplicate` with the job number below.",
    )
    NOT_REGULAR_FILE = (
        "not_a_regular_file",
        "Put the real document file (not a shortcut, link or special file) into the inbox "
        "together with its sidecar.",
    )
    MISSING_SIDECAR = (
        "missing_sidecar",
        "Put the sidecar JSON file (same name as the document, ending in .json) next to "
        "the document, then move both back into the inbox.",
    )
    ORPHAN_SIDECAR = (
        "orphan_sidecar",
        "Move the sidecar back into the inbox together with the document it describes.",
    )
    UNREADABLE = (
        "unreadable",
        "chartdrop was not allowed to read this file (or the disk could not). Ask your "
        "administrator to check its permissions: the scanner must write files chartdrop "
        "can read. Then move the document and its sidecar back into the inbox.",
    )
    # -- the destination's answer or the server: failed/ after retries --------
    REMOTE_REJECTED = (
        "remote_rejected",
        "Ask your administrator to look up this job with `chartdrop show <job>`; the "
        "Redox dashboard has the details. Then correct the sidecar and move both files "
        "back into the inbox.",
    )
    GAVE_UP = (
        "gave_up",
        "The document itself may be fine: the destination could not be reached for too "
        "long. Move both files back into the inbox to try again, or ask your administrator.",
    )
    LOCAL_ERROR = (
        "local_error",
        "chartdrop could not read or prepare this file on the server for a while (a disk "
        "or permission problem). Ask your administrator to look up this job with "
        "`chartdrop show <job>`, then move both files back into the inbox.",
    )
    DESTINATION_REMOVED = (
        "destination_removed",
        "This destination is no longer configured. Ask your administrator where such "
        "documents should go now.",
    )
    # -- retried: the job waits in the queue (``chartdrop jobs --state retrying``)
    TRANSIENT = (
        "transient",
        "Nothing to do: the destination failed for a moment and the job is retried.",
    )
    UNKNOWN_OUTCOME = (
        "unknown_outcome",
        "Nothing to do: the answer was lost, so the job is resent with the same DocumentID.",
    )
    AUTH = (
        "auth",
        "The administrator must fix the credentials (`chartdrop check --online`); the "
        "documents wait in the queue.",
    )
    RATE_LIMITED = (
        "rate_limited",
        "Nothing to do: the request quota is used up for now; the job waits its turn.",
    )


class ChartdropError(Exception):
    """Base of every error chartdrop raises on purpose."""


class ConfigError(ChartdropError):
    """The configuration or the folder layout is wrong. ``problems`` lists every one."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class InputError(ChartdropError):
    """The document (or its sidecar) cannot be sent as it is. Never retried.

    ``kind`` (also ``reason``) is the :class:`ErrorKind` for metrics and the audit
    trail; ``problems`` are plain-language lines for the ``.error.txt`` staff read;
    ``fix`` (the kind's) says what to do about it.
    """

    kind = ErrorKind.INVALID_INPUT

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))

    @property
    def reason(self) -> ErrorKind:
        return self.kind

    @property
    def fix(self) -> str:
        return self.kind.fix

    @property
    def text(self) -> str:
        """The problems, one per line, as the job row and the .error.txt hold them."""
        return "\n".join(self.problems)


class SidecarError(InputError):
    kind = ErrorKind.INVALID_SIDECAR


class ContentError(InputError):
    kind = ErrorKind.BAD_CONTENT


class TooLargeError(InputError):
    kind = ErrorKind.TOO_LARGE


class ChangedError(InputError):
    kind = ErrorKind.CHANGED


class DuplicateError(InputError):
    kind = ErrorKind.DUPLICATE


class NotRegularFileError(InputError):
    kind = ErrorKind.NOT_REGULAR_FILE


class MissingSidecarError(InputError):
    kind = ErrorKind.MISSING_SIDECAR


class OrphanSidecarError(InputError):
    kind = ErrorKind.ORPHAN_SIDECAR


class UnreadableError(InputError):
    kind = ErrorKind.UNREADABLE


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
