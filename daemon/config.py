"""The settings model: the one source of truth for configuration.

One TOML file (``-c FILE``), read by pydantic-settings, overridable by
``CHARTDROP_*`` environment variables (nested keys with ``__``, e.g.
``CHARTDROP_REDOX__API_URL``). Every key has a type, a default and a
description; ``config.example.toml`` is tested to load. A bad file is reported
with every problem at once (:class:`~daemon.errors.ConfigError`).

Paths may be relative to the config file. Secret files may name a systemd
credential: a bare name found in ``$CREDENTIALS_DIRECTORY`` wins.

The timing keys (:class:`Timing`) are declared once and settable at the top
level or in any ``[[destination]]``: Settings inherits them, each destination
gets them as optional overrides made from the same fields, and
``Destination.timing`` resolves them with their types.

Longer than ~400 lines because it is the schema: every key with its type,
default and description (what ``config.example.toml`` is checked against, and
the README's table for the timing keys). The plain-words error messages are
:mod:`daemon.config_errors`.
"""

from __future__ import annotations

import grp
import os
import re
import ssl
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/chartdrop/chartdrop.toml")
LOCK_NAME = "chartdrop.lock"

# The file being loaded: settings sources and path validators read it.
_loading: ContextVar[Path | None] = ContextVar("_loading", default=None)


def _base_dir() -> Path:
    path = _loading.get()
    return path.parent if path is not None else Path.cwd()


def _resolve(path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (_base_dir() / path).absolute()


def resolve_secret(value: Path) -> Path:
    """A systemd credential of that name if one exists, else a path (relative to the config)."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and len(value.parts) == 1:
        credential = Path(cred_dir) / value
        try:
            if credential.is_file():
                return credential
        except PermissionError:  # there, but not for this process (systemd runs
            return credential  # `chartdrop reload` as ExecReload= without access)
    return _resolve(value)


# File types chartdrop can recognise by content (Redox FileType names).
FileTypeName = Literal["PDF", "TIFF", "JPG", "PNG", "GIF", "TXT", "RTF"]
FILE_TYPES: tuple[FileTypeName, ...] = ("PDF", "TIFF", "JPG", "PNG", "GIF", "TXT", "RTF")


_CA_BUNDLE_HELP = (
    "PEM file of CA certificates trusted in addition to the system's roots (e.g. a "
    "proxy's or a private CA); TLS verification is always on."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timing(_Strict):
    """The timing keys, each declared here once: type, default, bound and
    description. Settings inherits them as top-level keys; every
    ``[[destination]]`` may override them (:data:`TimingOverrides`, made from
    these fields); ``Destination.timing`` is a destination's resolved Timing."""

    settle_seconds: float = Field(
        3, ge=0, description="Seconds a document's size and mtime must be unchanged."
    )
    rescan_seconds: float = Field(
        60, gt=0, description="Seconds between full rescans of each inbox."
    )
    sidecar_timeout_seconds: float = Field(
        600, gt=0, description="Seconds to wait for a missing sidecar before failing the document."
    )
    retry_base_seconds: float = Field(10, gt=0, description="First retry delay (backoff base).")
    retry_cap_seconds: float = Field(900, gt=0, description="Longest retry delay (backoff cap).")
    give_up_after_hours: float = Field(
        72, gt=0, description="Hours of transient failures after which a document is failed."
    )
    embed_max_bytes: int = Field(
        200_000,
        ge=0,
        description="Files up to this size are base64-embedded; larger ones are uploaded.",
    )
    upload_max_bytes: int = Field(
        30_000_000, gt=0, description="Files over this size fail before any network call."
    )


TIMING_KEYS = tuple(Timing.model_fields)


def _overrides(defaults: type[BaseModel]) -> type[_Strict]:
    """The same keys, types, bounds and descriptions, each optional (None: the
    top level's value)."""
    fields: dict[str, Any] = {}
    for name, info in defaults.model_fields.items():
        kind: Any = info.annotation
        optional = Annotated[kind | None, *info.metadata]
        fields[name] = (optional, Field(None, description=info.description))
    return create_model("TimingOverrides", __base__=_Strict, **fields)


# A model made at run time cannot be a base class mypy follows; to mypy the
# overrides are plain _Strict (daemon code reads them through Destination.timing).
if TYPE_CHECKING:
    TimingOverrides = _Strict
else:
    TimingOverrides = _overrides(Timing)


class Destination(TimingOverrides):
    """One watched inbox and where its documents go."""

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Short name, used in logs."
    )
    inbox: Path = Field(..., description="Folder scanners drop documents and sidecars into.")
    done: Path = Field(..., description="Delivered documents move to done/YYYY-MM-DD/.")
    failed: Path = Field(..., description="Refused documents move here with <name>.error.txt.")
    model: Literal["Media", "Notes", "Results", "FHIR"] = Field(
        "Media", description="Redox data model to send, or FHIR (a FHIR R4 Media resource)."
    )
    redox_destination_id: str | None = Field(
        None,
        min_length=1,
        description="Redox destination UUID (Meta.Destinations[0].ID); required for Redox models.",
    )
    redox_destination_name: str | None = Field(
        None, description="Optional Meta.Destinations[0].Name."
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Merged under every sidecar (the sidecar wins)."
    )
    base_url: str | None = Field(
        None, description="FHIR destinations: overrides [fhir].base_url for this destination."
    )
    accepted_types: list[FileTypeName] = Field(
        default_factory=lambda: list(FILE_TYPES),
        min_length=1,
        description="File types (judged by content) this destination accepts.",
    )
    filename_pattern: str | None = Field(
        None,
        description="Regex with named groups, matched against the whole file name; "
        "lets a document arrive without a sidecar.",
    )
    from_filename: dict[str, str] = Field(
        default_factory=dict,
        description="Maps each named group to a sidecar field, "
        'e.g. mrn = "Patient.Identifiers[0].ID".',
    )
    max_requests_per_minute: int | None = Field(
        None,
        ge=1,
        description=(
            "model = 'FHIR' only: this destination's own request quota per minute (none: no "
            "limit; a 429 still pauses it). Redox destinations share [redox] "
            "max_requests_per_minute."
        ),
    )
    ca_bundle: Path | None = Field(
        None,
        description=_CA_BUNDLE_HELP + " FHIR destinations: for this destination's base_url "
        "(else [fhir].ca_bundle).",
    )
    duplicates: Literal["send", "hold"] = Field(
        "hold",
        description='"hold": a document whose bytes (sha256) and patient identifier match one '
        "sent to this destination within duplicate_window_days goes to failed/ with a note "
        'naming the earlier job; "send": send it again.',
    )
    duplicate_window_days: float = Field(
        30, gt=0, description="How far back the duplicate hold looks, in days."
    )
    polling: bool = Field(
        False,
        description=(
            "Watch the inbox by polling its listing every second instead of inotify: for "
            "SMB/NFS mounts, where inotify does not see what other machines write."
        ),
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url_shape(value)

    @field_validator("ca_bundle")
    @classmethod
    def _ca(cls, value: Path | None) -> Path | None:
        return _ca_bundle(value)

    @field_validator("filename_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc.msg})") from None
        if not compiled.groupindex:
            raise ValueError("needs at least one named group, e.g. (?P<mrn>[0-9]+)")
        return value

    @model_validator(mode="after")
    def _model_fields(self) -> Destination:
        problems = destination_rules({k: getattr(self, k) for k in type(self).model_fields})
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @field_validator("inbox", "done", "failed")
    @classmethod
    def _relative_to_config(cls, value: Path) -> Path:
        return _resolve(value)

    @property
    def timing(self) -> Timing:
        """This destination's timing; every key is filled from the top level when
        the settings are loaded (:meth:`Settings._fill_destinations`)."""
        values = {key: getattr(self, key) for key in TIMING_KEYS}
        assert None not in values.values(), "timing is filled from the top level when loading"
        return Timing.model_construct(**values)  # each value was validated on loading


def _ca_bundle(value: Path | None) -> Path | None:
    """A CA bundle path (relative to the config) that loads as PEM certificates."""
    if value is None:
        return None
    path = _resolve(value)
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise ValueError(f"the CA bundle {path} does not exist") from None
    except (OSError, ssl.SSLError):
        raise ValueError(f"{path} is not a readable PEM file of CA certificates") from None
    return path


def _check_url_shape(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


_PATH_PART = re.compile(r"([A-Za-z][A-Za-z0-9]*)((?:\[[0-9]+\])*)")


def parse_field_path(path: str) -> tuple[str | int, ...]:
    """ "Patient.Identifiers[0].ID" -> ("Patient", "Identifiers", 0, "ID")."""
    out: list[str | int] = []
    for part in path.split("."):
        match = _PATH_PART.fullmatch(part)
        if match is None:
            raise ValueError(f"{path!r} is not a field path like Patient.Identifiers[0].ID")
        out.append(match.group(1))
        out.extend(int(i) for i in re.findall(r"\[([0-9]+)\]", match.group(2)))
    return tuple(out)


class RedoxSettings(_Strict):
    api_url: str = Field(
        "https://api.redoxengine.com",
        description="Base URL; /endpoint and /v2/auth/token live under it.",
    )
    upload_url: str = Field(
        "https://blob.redoxengine.com/upload", description="Blob upload endpoint for large files."
    )
    auth: Literal["jwt", "legacy"] = Field(
        "jwt",
        description='"jwt": OAuth signed client assertion (RS384); '
        '"legacy": API key and secret at /auth/authenticate.',
    )
    client_id: str = Field("", description="OAuth API key client ID.")
    key_id: str = Field("", description="The JWT header's kid (the public key's ID in Redox).")
    private_key_file: Path = Field(
        Path("redox-key.pem"),
        description="PEM private key; a path or a systemd credential name.",
        validate_default=True,
    )
    api_key: str = Field("", description='auth = "legacy": the API key.')
    secret_file: Path | None = Field(
        None, description='auth = "legacy": file holding the secret; a path or a credential name.'
    )
    source_id: str | None = Field(
        None, description="Optional Redox-Source-Id header and Meta.Source.ID."
    )
    source_name: str | None = Field(None, description="Optional Meta.Source.Name.")
    test: bool = Field(False, description="Meta.Test on every message.")
    max_requests_per_minute: int = Field(
        1200,
        ge=1,
        description=(
            "Requests per minute to Redox (/endpoint and /upload together), shared by every "
            "worker and Redox destination. 1200 keeps under Redox's 7,500 per 5 minutes; "
            "several daemons sharing one Redox source split the quota between them."
        ),
    )
    ca_bundle: Path | None = Field(None, description=_CA_BUNDLE_HELP + " For Redox.")

    @field_validator("private_key_file", "secret_file")
    @classmethod
    def _secret(cls, value: Path | None) -> Path | None:
        return None if value is None else resolve_secret(value)

    @field_validator("ca_bundle")
    @classmethod
    def _ca(cls, value: Path | None) -> Path | None:
        return _ca_bundle(value)

    @field_validator("api_url", "upload_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url_shape(value)

    @model_validator(mode="after")
    def _legacy_needs_secret(self) -> RedoxSettings:
        if self.auth == "legacy" and (not self.api_key or self.secret_file is None):
            raise ValueError('auth = "legacy" needs api_key and secret_file')
        return self

    @property
    def token_url(self) -> str:
        return f"{self.api_url}/v2/auth/token"


class FhirSettings(_Strict):
    """The FHIR R4 server for destinations with model = "FHIR"."""

    base_url: str | None = Field(
        None, description="FHIR R4 base URL; Media resources are POSTed to {base_url}/Media."
    )
    token_url: str | None = Field(None, description="OAuth 2.0 client-credentials token URL.")
    client_id: str = Field("", description="OAuth client ID.")
    client_secret_file: Path | None = Field(
        None, description="File holding the client secret; a path or a systemd credential name."
    )
    scope: str | None = Field(None, description="Optional OAuth scope to ask for.")
    patient_identifier_system: str | None = Field(
        None,
        description="Identifier system of the patient ID (e.g. the MRN's OID URI); "
        "a sidecar's Patient.Identifiers[0].IDType that is a URI wins.",
    )
    visit_identifier_system: str | None = Field(
        None,
        description="Identifier system of Visit.VisitNumber (Media.encounter.identifier); "
        "unset: the encounter identifier is sent with its value only.",
    )
    document_identifier_system: str = Field(
        "urn:ietf:rfc:3986",
        description="Identifier system of the document ID (Media.identifier, If-None-Exist).",
    )
    log_cdata: str | None = Field(
        None, description="Optional log-cdata header (never PHI: e.g. a site or source name)."
    )
    log_cdata_format: Literal["kv", "json"] | None = Field(
        None, description="Optional log-cdata-format header: kv or json."
    )
    ca_bundle: Path | None = Field(
        None, description=_CA_BUNDLE_HELP + " For the FHIR token URL and base_url."
    )

    @field_validator("ca_bundle")
    @classmethod
    def _ca(cls, value: Path | None) -> Path | None:
        return _ca_bundle(value)

    @field_validator("client_secret_file")
    @classmethod
    def _secret(cls, value: Path | None) -> Path | None:
        return None if value is None else resolve_secret(value)

    @field_validator("base_url", "token_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url_shape(value)


class AlertsSettings(_Strict):
    """[alerts]: thresholds for ``chartdrop status --check`` and the alert command."""

    paused_warning_minutes: float = Field(
        10, gt=0, description="WARNING when a destination has been paused this long."
    )
    paused_critical_minutes: float = Field(
        30, gt=0, description="CRITICAL when a destination has been paused this long."
    )
    oldest_warning_minutes: float = Field(
        30, gt=0, description="WARNING when the oldest waiting document is this old."
    )
    oldest_critical_minutes: float = Field(
        120, gt=0, description="CRITICAL when the oldest waiting document is this old."
    )
    failed_window_hours: float = Field(
        24, gt=0, description="WARNING when a document went to failed/ within this many hours."
    )
    command: list[str] | str | None = Field(
        None,
        description="Program run (no shell) on a pause, a recovery, a failure or an old backlog.",
    )
    command_timeout_seconds: float = Field(
        30, gt=0, description="The alert command is killed after this long."
    )
    webhook_url: str | None = Field(
        None, description="https URL that gets the same facts as JSON (POST)."
    )
    repeat_minutes: float = Field(
        60, gt=0, description="The same alert (event and destination) at most this often."
    )

    @field_validator("webhook_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value


class MetricsSettings(_Strict):
    """[metrics]: Prometheus text over HTTP on loopback and/or a textfile."""

    listen: str | None = Field(
        None,
        description='Serve /metrics here: "127.0.0.1:9464", "[::1]:9464" or "unix:/path". Off.',
    )
    textfile: Path | None = Field(
        None, description="Write the metrics to this file (node_exporter textfile collector)."
    )
    textfile_seconds: float = Field(15, gt=0, description="How often the textfile is rewritten.")

    @field_validator("listen")
    @classmethod
    def _loopback(cls, value: str | None) -> str | None:
        if value is None or value.startswith("unix:"):
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError('must be "HOST:PORT" or "unix:/path"')
        if host.strip("[]") not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("must be a loopback address (127.0.0.1, [::1]) or a unix socket")
        return value

    @field_validator("textfile")
    @classmethod
    def _relative(cls, value: Path | None) -> Path | None:
        return None if value is None else _resolve(value)


class Settings(BaseSettings, Timing):
    """The whole configuration file (the timing keys are :class:`Timing`'s)."""

    model_config = SettingsConfigDict(
        env_prefix="CHARTDROP_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Field(
        Path("/var/lib/chartdrop"), description="SQLite database (and the spool by default), 0700."
    )
    spool_dir: Path = Field(
        Path("/var/lib/chartdrop/spool"),
        description="Where queued documents wait (0700); default state_dir/spool. Documents "
        "move in and out by rename, so it must be on the same mount as the inboxes.",
    )
    workers: int = Field(
        4,
        ge=1,
        le=64,
        description="Documents sent at once (requests in flight); two delivery threads each.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON unless stderr is a terminal."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    lease_seconds: float = Field(
        900, gt=0, description="How long a worker holds a job before it may be claimed again."
    )
    shutdown_grace_seconds: float = Field(
        30, ge=0, description="On SIGTERM, how long in-flight sends may take to finish."
    )
    connect_timeout_seconds: float = Field(10, gt=0, description="HTTP connect timeout.")
    read_timeout_seconds: float = Field(60, gt=0, description="HTTP read timeout.")
    write_timeout_seconds: float = Field(60, gt=0, description="HTTP write timeout.")
    pool_timeout_seconds: float = Field(10, gt=0, description="HTTP connection-pool timeout.")

    keep_done_days: int = Field(
        30,
        ge=1,
        le=36_500,
        description=(
            "Documents (and sidecars) in done/ are deleted this many days after they were "
            "delivered, and their job rows keep only non-PHI facts. failed/ is never cleaned."
        ),
    )
    keep_failed_days: int = Field(
        90,
        ge=1,
        le=36_500,
        description=(
            "Failed and abandoned job rows lose their file names and paths this many days "
            "after they finished (the files in failed/ are not touched)."
        ),
    )
    keep_events_days: int = Field(
        2190,
        ge=365,
        le=36_500,
        description=(
            "The audit trail (the events table, PHI-free) is kept this many days (six "
            "years by default), then pruned. At least a year."
        ),
    )
    files_group: int | str | None = Field(
        None,
        description=(
            "Group (name or gid) given to documents, sidecars, .error.txt notes and the "
            "done/YYYY-MM-DD folders chartdrop creates, so staff can read them."
        ),
    )
    files_mode: int = Field(
        0o640,
        description="Mode of documents, sidecars and notes moved to done/ and failed/ (octal).",
    )
    dirs_mode: int = Field(
        0o750,
        description="Mode of the done/YYYY-MM-DD folders chartdrop creates (octal).",
    )

    redox: RedoxSettings = Field(default_factory=RedoxSettings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)
    alerts: AlertsSettings = Field(
        default_factory=AlertsSettings, description="status --check thresholds and alerts."
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Prometheus metrics (off by default)."
    )
    destination: list[Destination] = Field(
        ..., min_length=1, description="One [[destination]] table per watched inbox."
    )

    @field_validator("state_dir", "spool_dir")
    @classmethod
    def _state_dir(cls, value: Path) -> Path:
        return _resolve(value)

    @model_validator(mode="before")
    @classmethod
    def _default_spool(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("spool_dir") is None:
            state = data.get("state_dir", cls.model_fields["state_dir"].default)
            data = data | {"spool_dir": Path(state) / "spool"}
        return data

    @field_validator("files_mode", "dirs_mode")
    @classmethod
    def _private_mode(cls, value: int, info: ValidationInfo) -> int:
        if not 0 <= value <= 0o777:
            raise ValueError("must be a permission mode between 0o000 and 0o777 (e.g. 0o640)")
        if info.field_name == "dirs_mode" and value & 0o700 != 0o700:
            raise ValueError(f"{value:#o} must give chartdrop (the owner) full access, e.g. 0o750")
        if value & 0o007:
            raise ValueError(
                f"{value:#o} gives other users access; documents are patient data "
                "(use the group bits and files_group instead)"
            )
        return value

    @field_validator("files_group")
    @classmethod
    def _group(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            group_id(value)  # raises ValueError for an unknown group
        return value

    @property
    def files_gid(self) -> int | None:
        """``files_group`` as a gid (None: leave the group alone)."""
        return None if self.files_group is None else group_id(self.files_group)

    @model_validator(mode="after")
    def _fill_destinations(self) -> Settings:
        data = {
            "destination": [dict(d) for d in self.destination],
            "fhir": dict(self.fhir),
        }
        problems = settings_rules(data)
        if problems:
            raise ValueError("\n".join(problems))
        filled = []
        for dest in self.destination:
            updates = {k: getattr(self, k) for k in TIMING_KEYS if getattr(dest, k) is None}
            filled.append(dest.model_copy(update=updates))
        object.__setattr__(self, "destination", filled)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _loading.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def database_path(self) -> Path:
        return self.state_dir / "chartdrop.sqlite3"

    @property
    def lock_path(self) -> Path:
        """Held (flock) by the one daemon running on this state_dir."""
        return self.state_dir / LOCK_NAME

    def get_destination(self, name: str) -> Destination:
        for dest in self.destination:
            if dest.name == name:
                return dest
        raise KeyError(name)


# -- cross-field rules ------------------------------------------------------------
# Plain functions of plain dicts: the model validators call them on valid
# fields, and load_settings calls them on the file's raw tables when other
# keys failed (pydantic then skips the validators), so every problem is
# reported in one run.


def destination_rules(d: dict[str, Any]) -> list[str]:
    """What one [[destination]] table's keys require of each other."""
    problems = []
    model = d.get("model") or "Media"
    if model != "FHIR" and d.get("redox_destination_id") is None:
        problems.append(f"redox_destination_id is required for model = {model!r}")
    for key in ("base_url", "ca_bundle"):
        if model != "FHIR" and d.get(key) is not None:
            problems.append(f"{key} is only for model = 'FHIR'")
    if model != "FHIR" and d.get("max_requests_per_minute") is not None:
        problems.append(
            "max_requests_per_minute is only for model = 'FHIR' "
            "(Redox destinations share [redox] max_requests_per_minute)"
        )
    pattern, mapping = d.get("filename_pattern"), d.get("from_filename") or {}
    try:
        groups = set(re.compile(pattern).groupindex) if isinstance(pattern, str) else set()
    except re.error:
        return problems  # the pattern's own error is reported
    if not isinstance(mapping, dict):
        return problems
    if mapping and not groups and pattern is None:
        problems.append("from_filename needs a filename_pattern")
    elif groups:
        unknown = sorted(set(mapping) - groups)
        if unknown:
            problems.append(
                f"from_filename names groups the pattern does not have: {', '.join(unknown)}"
            )
        unused = sorted(groups - set(mapping))
        if unused:
            problems.append(
                f"filename_pattern groups not mapped in from_filename: {', '.join(unused)}"
            )
    for target in mapping.values():
        try:
            parse_field_path(str(target))
        except ValueError as exc:
            problems.append(f"from_filename: {exc}")
    return problems


def settings_rules(data: dict[str, Any]) -> list[str]:
    """What the whole file's tables require of each other."""
    problems = []
    dests = [d for d in data.get("destination") or [] if isinstance(d, dict)]
    names = [str(d["name"]) for d in dests if isinstance(d.get("name"), str)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"destination names must be unique (repeated: {', '.join(dupes)})")
    fhir: dict[str, Any] = data["fhir"] if isinstance(data.get("fhir"), dict) else {}
    for dest in dests:
        if dest.get("model") != "FHIR":
            continue
        where = f"[[destination]] \"{dest.get('name')}\" (model = 'FHIR')"
        if (dest.get("base_url") or fhir.get("base_url")) is None:
            problems.append(f"{where} needs [fhir].base_url or its own base_url")
        if fhir.get("token_url") is None or fhir.get("client_secret_file") is None:
            problems.append(f"{where} needs [fhir].token_url and client_secret_file")
    return problems


def group_id(group: int | str) -> int:
    """A gid from a group name or number; ValueError if there is no such group."""
    if isinstance(group, int):
        if group < 0:
            raise ValueError("a gid cannot be negative")
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"there is no group named {group!r} on this machine") from None


def key_path(loc: tuple[int | str, ...]) -> str:
    """("destination", 0, "inbox") -> "destination[0].inbox"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_settings(path: Path) -> Settings:
    """Load and validate ``path``; raise ConfigError listing every problem."""
    path = path.expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist or is not a file")
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    token = _loading.set(path)
    try:
        return Settings()
    except ValidationError as exc:
        from daemon.config_errors import plain_problems

        raise ConfigError(plain_problems(exc, raw)) from None
    finally:
        _loading.reset(token)


def config_path(cli_value: str | None) -> Path:
    """-c FILE, else $CHARTDROP_CONFIG, else /etc/chartdrop/chartdrop.toml."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get("CHARTDROP_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG
