"""The ``chartdrop`` command line. Errors are one clear sentence and a non-zero
exit, never a traceback. Output never contains PHI: jobs are shown by id,
destination, state, size and hash, never by file name or patient data.

The parser and the small commands are here; ``status`` is
:mod:`daemon.cli_status`, ``jobs``/``show``/``retry``/``audit``
:mod:`daemon.cli_jobs`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

from daemon.cli_common import EXIT_ERROR, EXIT_INVALID, settings_from, version_text
from daemon.cli_jobs import JOB_STATES, cmd_audit, cmd_jobs, cmd_retry, cmd_show
from daemon.cli_status import cmd_status
from daemon.config import Settings, config_path, load_settings
from daemon.errors import ChartdropError, ConfigError, InputError
from daemon.fsutil import fsync_dir, rename_noreplace
from daemon.names import suffixed


def cmd_run(args: argparse.Namespace) -> int:
    from daemon import logs
    from daemon.service import Service

    path = config_path(args.config)
    settings = load_settings(path)
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    service = Service(settings, config_path=path)
    service.install_signals()
    service.start()
    return service.run()


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP the daemon and wait for its answer (systemd's ExecReload=)."""
    from daemon.reloading import request_reload

    settings = settings_from(args)
    answer = request_reload(settings.state_dir, args.pid, timeout=args.timeout)
    if answer.get("ok"):
        print("reloaded: the daemon runs with the new config")
        return 0
    problems = [str(p) for p in answer.get("problems") or []]
    print(
        "chartdrop: the daemon refused the new config and keeps running with the old one:",
        file=sys.stderr,
    )
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_INVALID


def cmd_check(args: argparse.Namespace) -> int:
    from daemon.inbox_lock import inbox_conflict
    from daemon.service import Service, folder_problems

    settings = settings_from(args)
    problems = folder_problems(settings)
    for dest in settings.destination:
        conflict = inbox_conflict(dest.name, dest.inbox, settings.state_dir)
        if conflict:
            problems.append(conflict)
    for key_name, key in secret_files(settings):
        if key is None or not key.is_file():
            problems.append(f"{key_name} ({key}) does not exist")
        else:
            if key.stat().st_mode & 0o077:
                print(
                    f"warning: {key} is readable by group or others; chmod 600 it", file=sys.stderr
                )
            if key_name == "redox.private_key_file":
                unusable = private_key_problem(key)
                if unusable:
                    problems.append(f"{key_name} ({key}) {unusable}")
    try:
        sender = Service.make_sender(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
        sender = None
    try:
        if problems:
            raise ConfigError(problems)
        if args.online and sender is not None:
            models = {d.model for d in settings.destination}
            if models - {"FHIR"}:
                sender.redox.check_auth()
                print("online: authenticated with Redox")
            if "FHIR" in models:
                sender.fhir.check_auth()
                print("online: authenticated with the FHIR token endpoint")
    finally:  # its connections (``--online``): closed, not left to the garbage collector
        for client in sender.http_clients() if sender is not None else []:
            client.close()
    print(f"ok: {len(settings.destination)} destination(s), state_dir {settings.state_dir}")
    return 0


def private_key_problem(path: Path) -> str | None:
    """Why ``path`` cannot sign Redox's RS384 client assertions, or None. Offline:
    the file must be an unencrypted PEM RSA private key of at least 2048 bits."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    except TypeError:
        return "is encrypted with a passphrase; chartdrop needs it unencrypted (chmod 600)"
    except (ValueError, UnsupportedAlgorithm):
        return "is not a PEM private key (-----BEGIN PRIVATE KEY-----)"
    if not isinstance(key, RSAPrivateKey):
        return "is not an RSA private key (Redox signs with RS384)"
    if key.key_size < 2048:
        return f"is an RSA key of {key.key_size} bits; Redox needs at least 2048"
    return None


def secret_files(settings: Settings) -> list[tuple[str, Path | None]]:
    """The secret files the configured destinations need, with their config keys."""
    models = {d.model for d in settings.destination}
    out: list[tuple[str, Path | None]] = []
    if models - {"FHIR"}:
        if settings.redox.auth == "legacy":
            out.append(("redox.secret_file", settings.redox.secret_file))
        else:
            out.append(("redox.private_key_file", settings.redox.private_key_file))
    if "FHIR" in models:
        out.append(("fhir.client_secret_file", settings.fhir.client_secret_file))
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    from daemon.outgoing import check_sidecar, effective_sidecar
    from daemon.sidecar import read_sidecar

    settings = settings_from(args)
    try:
        dest = settings.get_destination(args.destination)
    except KeyError:
        raise ChartdropError(f"no destination named {args.destination!r} in the config") from None
    try:
        data = read_sidecar(Path(args.sidecar))
        alone = data.get("EventType") == "Delete"
        check_sidecar(
            dest=dest,
            settings=settings,
            sidecar=data if alone else effective_sidecar(dest, data, args.file_name),
            file_name=args.file_name,
            redox_type=None if alone else "PDF",
        )
    except FileNotFoundError:
        raise ChartdropError("the sidecar file does not exist") from None
    except InputError as exc:
        print(f"invalid sidecar for destination {dest.name}:")
        for problem in exc.problems:
            print(f"  - {problem}")
        return EXIT_INVALID
    print(f"ok: the sidecar is valid for destination {dest.name}")
    return 0


def _copy_in(src: Path, inbox: Path) -> Path:
    """Copy ``src`` to a hidden temp name in the inbox (ignored by intake), fsynced."""
    from daemon.fsutil import open_document

    tmp = inbox / f".chartdrop-drop-{uuid.uuid4().hex}.part"
    with open_document(src) as fin:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
    return tmp


def cmd_drop(args: argparse.Namespace) -> int:
    from daemon.intake import judge

    settings = settings_from(args)
    try:
        dest = settings.get_destination(args.destination)
    except KeyError:
        raise ChartdropError(f"no destination named {args.destination!r} in the config") from None
    doc, side = Path(args.file), Path(args.sidecar)
    for path, what in ((doc, "document"), (side, "sidecar")):
        if not path.is_file():
            raise ChartdropError(f"the {what} {path} does not exist or is not a file")
    verdict = judge(dest, settings, doc, side)  # the daemon's own checks, before any copy
    problems = (
        [f"the document is incomplete: {verdict.incomplete}"] if verdict.incomplete else []
    ) + (verdict.rejection.problems if verdict.rejection else [])
    if problems:
        print(f"not dropped: the pair would fail in destination {dest.name}:")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_INVALID
    tmp_doc = _copy_in(doc, dest.inbox)
    tmp_side = _copy_in(side, dest.inbox)
    try:
        n = 0
        while True:
            name = suffixed(doc.name, n)
            n += 1
            # The sidecar first, then the document: when the document appears, its pair is complete.
            try:
                rename_noreplace(tmp_side, dest.inbox / f"{name}.json")
            except FileExistsError:
                continue
            try:
                rename_noreplace(tmp_doc, dest.inbox / name)
            except FileExistsError:
                (dest.inbox / f"{name}.json").rename(tmp_side)
                continue
            break
        fsync_dir(dest.inbox)
    finally:
        tmp_doc.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    # The caller's own file name, shown to the caller (never logged).
    print(f"dropped into destination {dest.name} as {dest.inbox / name}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from daemon.keys import describe, new_key

    path = Path(args.out)
    jwks = new_key(path, args.kid)
    if args.jwks_only:
        print(json.dumps(jwks, indent=2))
    else:
        print(describe(jwks, path))
    return 0


SANDBOX_MODULES = ("starlette", "uvicorn", "multipart")


def sandbox_missing() -> str | None:
    """Say how to get the sandbox's web framework when this install lacks it."""
    import importlib.util

    missing = [m for m in SANDBOX_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"the sandbox needs the optional extra 'sandbox' (missing: {', '.join(missing)}); "
        "install it with: pip install 'chartdrop[sandbox]' "
        "(a development checkout has it: uv run chartdrop ...)"
    )


def cmd_sandbox(args: argparse.Namespace) -> int:
    if problem := sandbox_missing():
        print(f"chartdrop: {problem}", file=sys.stderr)
        return 2
    from daemon.demo import run_sandbox

    return run_sandbox(args)


def cmd_demo(args: argparse.Namespace) -> int:
    if problem := sandbox_missing():
        print(f"chartdrop: {problem}", file=sys.stderr)
        return 2
    from daemon.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chartdrop",
        description="chartdrop files scanned documents into patient charts through Redox or FHIR.",
    )
    p.add_argument("--version", action="version", version=f"chartdrop {version_text()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, func: Any, help_: str, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        if config:
            sp.add_argument(
                "-c",
                "--config",
                help="config file (default $CHARTDROP_CONFIG or /etc/chartdrop/chartdrop.toml)",
            )
        return sp

    cmd("run", cmd_run, "run the daemon (systemd's ExecStart)")
    rl = cmd("reload", cmd_reload, "reload the running daemon's config and wait for its answer")
    rl.add_argument("--pid", type=int, required=True, help="the daemon's pid (systemd: $MAINPID)")
    rl.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    c = cmd("check", cmd_check, "validate the config, folders and permissions")
    c.add_argument("--online", action="store_true", help="also authenticate with Redox")
    s = cmd(
        "status", cmd_status, "per destination: queued, retrying, in flight, done today, failed"
    )
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--check",
        action="store_true",
        help="one monitoring-plugin line; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
    )
    j = cmd("jobs", cmd_jobs, "list jobs")
    j.add_argument("--state", choices=JOB_STATES, help="retrying: queued after a failed attempt")
    j.add_argument("-d", "--destination")
    j.add_argument("--limit", type=int, default=100)
    j.add_argument("--json", action="store_true")
    sh = cmd("show", cmd_show, "one job's history")
    sh.add_argument("job", help="a job id, or its first 4 or more characters")
    sh.add_argument("--json", action="store_true")
    au = cmd("audit", cmd_audit, "export the audit trail (every state change, no patient data)")
    au.add_argument(
        "--since", required=True, help="YYYY-MM-DD (local midnight) or an ISO date and time"
    )
    au.add_argument("--until", help="YYYY-MM-DD (that whole day included) or an ISO date and time")
    au.add_argument("-d", "--destination")
    au.add_argument("--sha256", help="only this document (its SHA-256, hex)")
    fmt = au.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    rt = cmd("retry", cmd_retry, "requeue failed jobs from failed/, same job and DocumentID")
    rt.add_argument("jobs", nargs="*", metavar="JOB", help="job ids (4 or more characters)")
    rt.add_argument("--failed", action="store_true", help="every failed job (see -d, --since)")
    rt.add_argument("-d", "--destination", help="with --failed: only this destination")
    rt.add_argument("--since", help="with --failed: failed on or after this date (or today)")
    rt.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="send a document held as a duplicate anyway (audited)",
    )
    v = cmd("validate", cmd_validate, "check a sidecar offline, every error at once")
    v.add_argument("sidecar")
    v.add_argument("-d", "--destination", required=True)
    v.add_argument(
        "--file-name",
        default="document.pdf",
        help="the document's file name, for filename_pattern fields (default: document.pdf)",
    )
    d = cmd("drop", cmd_drop, "atomic hand-off of a document and its sidecar into an inbox")
    d.add_argument("file")
    d.add_argument("--sidecar", required=True)
    d.add_argument("-d", "--destination", required=True)
    k = cmd("keys", cmd_keys, "make the Redox signed-JWT key pair", config=False)
    k.add_argument("action", choices=["new"], help="new: write a private key, print the JWKS")
    k.add_argument("--out", default="redox-key.pem", help="private key file (mode 0600)")
    k.add_argument("--kid", help="the key id (default: a new UUID)")
    k.add_argument("--jwks-only", action="store_true", help="print only the public JWKS")
    sb = cmd("sandbox", cmd_sandbox, "run the local Redox-compatible API alone", config=False)
    sb.add_argument("--port", type=int, default=8765)
    sb.add_argument("--dir", default="chartdrop-sandbox", help="where keys and blobs are kept")
    sb.add_argument(
        "--public-key", help="PEM public key of the client (default: generate a pair in --dir)"
    )
    sb.add_argument("--client-id", default="chartdrop-demo")
    sb.add_argument("--key-id", default="demo-key")
    sb.add_argument("--fhir-client-id", default="chartdrop-demo")
    sb.add_argument(
        "--fhir-client-secret-file",
        help="file holding the FHIR client's secret (default: generate one in --dir)",
    )
    sb.add_argument("--error-rate", type=float, default=0.0)
    sb.add_argument("--error-status", type=int, default=503)
    sb.add_argument("--retry-after")
    sb.add_argument("--latency", type=float, default=0.0)
    sb.add_argument("--upload-max-bytes", type=int, default=30_000_000)
    dm = cmd("demo", cmd_demo, "the main job against the built-in sandbox", config=False)
    dm.add_argument(
        "--dir", default="chartdrop-demo", help="demo folder tree (default ./chartdrop-demo)"
    )
    dm.add_argument(
        "--exit-when-idle", action="store_true", help="exit 0 once every document has an outcome"
    )
    dm.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="with --exit-when-idle: give up after this many seconds",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        if len(exc.problems) == 1:
            print(f"chartdrop: {exc.problems[0]}", file=sys.stderr)
        else:
            print(
                f"chartdrop: the configuration has {len(exc.problems)} problems:", file=sys.stderr
            )
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
        return EXIT_ERROR
    except ChartdropError as exc:
        print(f"chartdrop: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except sqlite3.DatabaseError as exc:  # SQLite's texts name no documents or patients
        print(
            f"chartdrop: the queue database is damaged or unreadable ({exc}); "
            "restore it from backup",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `chartdrop audit | head`: the reader has had enough
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not complain
        return 0
    except OSError as exc:
        print(f"chartdrop: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
