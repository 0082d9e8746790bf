"""``chartdrop audit``: the audit trail (the append-only ``events`` table) as an export.

One row per state change of a job: when, which job and destination, the
document's fixed DocumentID, SHA-256 and size, the change and its outcome,
the HTTP status and the remote side's ID (Redox log ID, or the FHIR resource
id), the error kind and a short PHI-free detail. Enough to answer "was this
document sent, when, and what did Redox say" from its hash, months later,
without a single patient value or file name: those columns are never in
``events``, and nothing here reads the jobs table's name or path columns.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, TextIO

from daemon.errors import ChartdropError

FIELDS = (
    "at",
    "job_id",
    "destination",
    "document_id",
    "from_state",
    "to_state",
    "outcome",
    "attempt",
    "http_status",
    "remote_id",
    "error_kind",
    "detail",
    "sha256",
    "size",
)

# (from_state, to_state) -> outcome; anything else is the new state's name.
_OUTCOMES = {
    (None, "intake"): "received",
    ("intake", "queued"): "queued",
    ("intake", "rejected"): "refused_at_intake",
    ("intake", "abandoned"): "abandoned",
    ("queued", "leased"): "claimed",
    ("leased", "leased"): "uploaded",
    ("leased", "sent"): "accepted",
    ("leased", "rejected"): "refused",
    ("sent", "done"): "filed_in_done",
    ("rejected", "failed"): "filed_in_failed",
    ("failed", "queued"): "requeued",
    ("done", "done"): "retention",
}


def outcome(event: dict[str, Any]) -> str:
    """A one-word reading of an event: ``accepted``, ``retry``, ``refused``, …"""
    pair = (event["from_state"], event["to_state"])
    if pair == ("leased", "queued"):
        return "retry" if event["error_kind"] else "released"
    return _OUTCOMES.get(pair, str(event["to_state"]))


def parse_when(text: str, *, end: bool = False) -> float:
    """Epoch seconds of ``YYYY-MM-DD`` (local midnight; with ``end``, the next
    midnight, so the whole day is included) or of an ISO 8601 date and time
    (local time unless it carries an offset); ``today`` and ``yesterday`` too."""
    words = {"today": 0, "yesterday": -1}
    if text.strip().lower() in words:
        midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0)
        day = midnight + timedelta(days=words[text.strip().lower()])
        return (day + timedelta(days=1 if end else 0)).timestamp()
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d")  # local midnight, on purpose
            return (day + timedelta(days=1 if end else 0)).timestamp()
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ChartdropError(
            f"{text!r} is not a date (YYYY-MM-DD, today, yesterday) or an ISO date and time"
        ) from None


def _row(event: dict[str, Any]) -> dict[str, Any]:
    row = {field: event.get(field) for field in FIELDS}
    row["at"] = datetime.fromtimestamp(event["at"]).astimezone().isoformat(timespec="milliseconds")
    row["outcome"] = outcome(event)
    return row


def rows(events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (_row(event) for event in events)


def _text(row: dict[str, Any]) -> str:
    def show(value: object) -> object:
        return "-" if value is None or value == "" else value

    return (
        f"{row['at']}  {row['job_id']}  {row['destination']:<12} {row['outcome']:<17} "
        f"http={show(row['http_status'])} remote_id={show(row['remote_id'])} "
        f"sha256={show(row['sha256'])} size={show(row['size'])}\n"
    )


def write(out: TextIO, fmt: str, events: Iterable[dict[str, Any]]) -> int:
    """Write the rows as ``json`` (one array), ``csv`` (with a header) or ``text``;
    returns how many. Streams: an export of years holds one row at a time."""
    count = 0
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    if fmt == "csv":
        writer.writeheader()
    elif fmt == "json":
        out.write("[")
    for row in rows(events):
        count += 1
        if fmt == "csv":
            writer.writerow(row)
        elif fmt == "json":
            out.write(("\n  " if count == 1 else ",\n  ") + json.dumps(row))
        else:
            out.write(_text(row))
    if fmt == "json":
        out.write("\n]\n" if count else "]\n")
    return count
