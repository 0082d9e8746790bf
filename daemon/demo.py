"""``chartdrop demo`` and ``chartdrop sandbox``: the whole job on this machine.

The demo starts the sandbox on a free loopback port, makes a key pair and a
folder tree under ``./chartdrop-demo/``, writes a config, runs the real daemon
on it, drops sample documents and prints where each went: into a Redox Media
destination a small PDF that is embedded, a large one that is uploaded and one
with a broken sidecar that lands in failed/; one into a Redox Notes
destination; one into a FHIR R4 Media destination. It keeps watching until
Ctrl-C, or with ``--exit-when-idle`` exits 0 once every document has an outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

from daemon import logs
from daemon.config import load_settings
from daemon.fsutil import ensure_dir, fsync_dir, rename_noreplace
from daemon.queue import JobState
from daemon.samples import sample_pdf, sample_sidecar
from daemon.sandbox import SandboxServer, SandboxState, generate_keypair, serve_forever

CLIENT_ID = "chartdrop-demo"
KEY_ID = "demo-key"
FHIR_CLIENT_ID = "chartdrop-demo-fhir"
DESTINATION_ID = "af394f14-b34a-464f-8d24-895f370af4c9"
DESTINATIONS = ("consents", "letters", "gateway")
ACTIVE = (JobState.INTAKE, JobState.QUEUED, JobState.LEASED, JobState.SENT, JobState.REJECTED)


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _keys(base: Path) -> bytes:
    private, public = generate_keypair()
    _write_private(base / "redox-key.pem", private)
    (base / "redox-key.pub.pem").write_bytes(public)
    return public


def demo_config(base: Path, url: str) -> str:
    return f"""\
# Written by `chartdrop demo`: the daemon's config for this demo tree.
state_dir = "state"
workers = 2
settle_seconds = 1
rescan_seconds = 5
sidecar_timeout_seconds = 60
retry_base_seconds = 1
retry_cap_seconds = 10

[redox]
api_url = "{url}"
upload_url = "{url}/upload"
client_id = "{CLIENT_ID}"
key_id = "{KEY_ID}"
private_key_file = "redox-key.pem"
test = true

[fhir]
base_url = "{url}/fhir/r4"
token_url = "{url}/fhir/oauth/token"
client_id = "{FHIR_CLIENT_ID}"
client_secret_file = "fhir-client-secret"
log_cdata = "site=chartdrop-demo"
log_cdata_format = "kv"

[[destination]]
name = "consents"
inbox = "consents/inbox"
done = "consents/done"
failed = "consents/failed"
model = "Media"
redox_destination_id = "{DESTINATION_ID}"
[destination.defaults]
Media = {{ Availability = "Available" }}

[[destination]]
name = "letters"
inbox = "letters/inbox"
done = "letters/done"
failed = "letters/failed"
model = "Notes"
redox_destination_id = "{DESTINATION_ID}"

[[destination]]
name = "gateway"
inbox = "gateway/inbox"
done = "gateway/done"
failed = "gateway/failed"
model = "FHIR"
"""


def _drop(inbox: Path, name: str, data: bytes) -> None:
    """Write under a temp name the daemon ignores, then rename into place."""
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    rename_noreplace(tmp, inbox / name)


def drop_samples(inbox: Path, stamp: str) -> list[str]:
    small, large, broken = (
        f"{stamp}-consent.pdf",
        f"{stamp}-lab-report.pdf",
        f"{stamp}-broken.pdf",
    )
    _drop(inbox, small + ".json", json.dumps(sample_sidecar()).encode())
    _drop(inbox, small, sample_pdf("Consent form (demo)"))
    _drop(inbox, large + ".json", json.dumps(sample_sidecar(document_type="Lab Report")).encode())
    _drop(inbox, large, sample_pdf("Lab report (demo)", padding=300_000))
    bad = sample_sidecar()
    del bad["Patient"]["Identifiers"]
    bad["Media"]["DocumentTyp"] = "Consent Form"  # a typo staff would make
    _drop(inbox, broken + ".json", json.dumps(bad).encode())
    _drop(inbox, broken, sample_pdf("Consent form with a broken sidecar (demo)"))
    fsync_dir(inbox)
    return [small, large, broken]


def drop_more_samples(base: Path, stamp: str) -> list[str]:
    """One document for the Notes destination and one for the FHIR destination."""
    letter, scan = f"{stamp}-referral.pdf", f"{stamp}-consent.pdf"
    letters, gateway = base / "letters" / "inbox", base / "gateway" / "inbox"
    notes = sample_sidecar(document_type="Referral Letter", model="Notes")
    _drop(letters, letter + ".json", json.dumps(notes).encode())
    _drop(letters, letter, sample_pdf("Referral letter (demo)"))
    _drop(gateway, scan + ".json", json.dumps(sample_sidecar(model="FHIR")).encode())
    _drop(gateway, scan, sample_pdf("Consent form for FHIR (demo)"))
    fsync_dir(letters)
    fsync_dir(gateway)
    return [letter, scan]


def run_demo(args: argparse.Namespace) -> int:
    from daemon.service import Service

    base = Path(args.dir).absolute()
    for dest in DESTINATIONS:
        for sub in ("inbox", "done", "failed"):
            ensure_dir(base / dest / sub, mode=0o750)
    ensure_dir(base / "state", mode=0o700)
    public = _keys(base)
    fhir_secret = secrets.token_urlsafe(32)
    _write_private(base / "fhir-client-secret", fhir_secret.encode())
    state = SandboxState(blob_dir=base / "sandbox-blobs")
    state.register_client(CLIENT_ID, KEY_ID, public)
    state.register_fhir_client(FHIR_CLIENT_ID, fhir_secret)
    logs.configure(level="warning", fmt="console")
    with SandboxServer(state) as sandbox:
        config = base / "chartdrop.toml"
        config.write_text(demo_config(base, sandbox.url))
        settings = load_settings(config)
        service = Service(settings)
        service.start()
        assert service.queue is not None
        started = time.time()
        stamp = time.strftime("%H%M%S")
        dropped = drop_samples(base / "consents" / "inbox", stamp)
        dropped += drop_more_samples(base, stamp)
        print(f"sandbox: {sandbox.url} (Redox and FHIR compatible, on this machine only)")
        print(f"config:  {config}")
        print(
            f"dropped {len(dropped)} sample documents into {base}/{{{','.join(DESTINATIONS)}}}"
            "/inbox (Redox Media, Redox Notes, FHIR)"
        )
        printed: set[str] = set()
        deadline = time.monotonic() + args.timeout
        inbox = base / "consents" / "inbox"

        def report() -> bool:
            assert service.queue is not None
            before = len(printed)
            for job in service.queue.jobs(states=(JobState.DONE, JobState.FAILED), limit=1000):
                if job.id in printed or job.created_at < started - 1:
                    continue
                printed.add(job.id)
                where = os.path.relpath(job.final_path or "?", Path.cwd())
                label = f"{job.destination:<8} {job.original_name:<24}"
                if job.state == JobState.DONE:
                    fhir = settings.get_destination(job.destination).model == "FHIR"
                    note = (
                        f"FHIR Media/{job.remote_id}" if fhir else f"Redox log ID {job.remote_id}"
                    )
                    print(f"  {label} -> {where}   {note}")
                    continue
                print(f"  {label} -> {where}   ({job.error_kind})")
                note_path = Path(f"{job.final_path}.error.txt")
                if note_path.exists():
                    problems = note_path.read_text().split("What is wrong:")[-1].split("How to")[0]
                    print(f"      the note beside it says what is wrong:{problems.rstrip()}")
            if before < len(dropped) <= len(printed):
                print("\nall samples have an outcome.")
                if not args.exit_when_idle:
                    print(f"Drop more documents, each with a .json sidecar, into {inbox}")
                    print("(or into letters/inbox for Notes, gateway/inbox for FHIR)")
                    print("and watch them appear in done/ or failed/. Ctrl-C to stop.")
            if not args.exit_when_idle:
                return False
            idle = len(printed) >= len(dropped) and not service.queue.jobs(states=ACTIVE, limit=1)
            if not idle and time.monotonic() > deadline:
                raise TimeoutError
            return idle

        try:
            code = service.run(until=report)
        except TimeoutError:
            service.shutdown()
            print(
                f"chartdrop: the demo did not finish within {args.timeout:.0f} seconds",
                file=sys.stderr,
            )
            return 1
    if len(printed) < len(dropped):
        return 1
    return code


def run_sandbox(args: argparse.Namespace) -> int:
    base = Path(args.dir).absolute()
    ensure_dir(base, mode=0o700)
    if args.public_key:
        public = Path(args.public_key).read_bytes()
        key_note = "using the public key given"
    else:
        public = _keys(base)
        key_note = f"private key for clients: {base / 'redox-key.pem'}"
    if args.fhir_client_secret_file:
        secret_file = Path(args.fhir_client_secret_file).absolute()
        fhir_secret = secret_file.read_text().strip()
    else:
        secret_file = base / "fhir-client-secret"
        fhir_secret = secrets.token_urlsafe(32)
        _write_private(secret_file, fhir_secret.encode())
    state = SandboxState(blob_dir=base / "blobs", upload_max_bytes=args.upload_max_bytes)
    state.register_client(args.client_id, args.key_id, public)
    state.register_fhir_client(args.fhir_client_id, fhir_secret)
    state.set_faults(
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after=args.retry_after,
        latency_seconds=args.latency,
    )

    def ready(url: str) -> None:
        print(f"sandbox listening on {url}")
        print(f"  client_id = {args.client_id!r}, key_id = {args.key_id!r}; {key_note}")
        print(f"  api_url = {url!r}, upload_url = '{url}/upload'")
        print(f"  [fhir] base_url = '{url}/fhir/r4', token_url = '{url}/fhir/oauth/token'")
        print(f"  [fhir] client_id = {args.fhir_client_id!r}, client_secret_file = '{secret_file}'")
        print("Ctrl-C to stop.", flush=True)

    serve_forever(state, port=args.port, on_ready=ready)
    return 0
